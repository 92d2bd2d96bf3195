"""Injection ablation on synthetic tokens with a known construction.

Patch tokens: p_t = [cos(θx+φ), sin(θx+φ), cos(θy+ψ), sin(θy+ψ), 0…] / √2 on a 16×16 grid, θ = 2π/16, a
random phase per image. |p_t| = 1, cos(p_s, p_t) = (cos θΔx + cos θΔy)/2, and the patch mean is exactly 0,
so mean-pooled patch tokens carry no label. CLS: a unit vector in the other coordinates, (class one-hot +
noise) normalised, hence c ⊥ p_t and |c| = 1. Then

- additive p + α·c:        cos = (ρ + α²)/(1 + α²)                 ⇒ LDS(α) = LDS(0)/(1 + α²)
- official α·c + (1−α)·p:   cos = ((1−α)²ρ + α²)/((1−α)² + α²)      ⇒ LDS(α) = LDS(0)(1−α)²/((1−α)² + α²)

and the pooled feature becomes α·c (resp. α·c), which carries the label: LP goes from chance to ~100 %.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from spatialprobe.inject import InjectConfig, accumulate, inject, injection_table

H = W = 16
K = 4  # classes
FAST = dict(lrs=(1e-2, 1e-1), weight_decays=(0.0,), epochs=5, min_steps=60, device="cpu")


def synthetic(n=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    th = 2 * math.pi / 16
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    d = 4 + 12
    phi = torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 * math.pi
    patch = torch.zeros(n, H * W, d, dtype=torch.float64)
    patch[..., 0] = torch.cos(th * xx + phi[:, :1])
    patch[..., 1] = torch.sin(th * xx + phi[:, :1])
    patch[..., 2] = torch.cos(th * yy + phi[:, 1:])
    patch[..., 3] = torch.sin(th * yy + phi[:, 1:])
    patch /= math.sqrt(2)
    y = torch.arange(n) % K
    cls = torch.zeros(n, d, dtype=torch.float64)
    cls[torch.arange(n), 4 + y] = 1.0
    cls[:, 4:] += 0.15 * torch.randn(n, 12, generator=g, dtype=torch.float64)
    cls = torch.nn.functional.normalize(cls, dim=1)
    return patch.float(), cls.float(), y.numpy()


def lds_by_hand() -> float:
    """LDS(0) of the construction by enumerating ordered token pairs (near: d = 1, far: d ≥ 6)."""
    th = 2 * math.pi / 16
    near, far = [], []
    for dx in range(-(W - 1), W):
        for dy in range(-(H - 1), H):
            d = abs(dx) + abs(dy)
            if d == 0:
                continue
            pairs = (W - abs(dx)) * (H - abs(dy))  # ordered pairs at this offset
            rho = (math.cos(th * dx) + math.cos(th * dy)) / 2
            if d == 1:
                near.append((rho, pairs))
            elif d >= 6:
                far.append((rho, pairs))
    mean = lambda v: sum(r * c for r, c in v) / sum(c for _, c in v)  # noqa: E731
    return mean(near) - mean(far)


def chunks(patch, cls, size=64):
    for s in range(0, len(patch), size):
        yield [f"im{i}" for i in range(s, min(s + size, len(patch)))], patch[s:s + size], cls[s:s + size], None


ALPHAS = (0.0, 0.25, 0.5)


@pytest.mark.parametrize("form", ["additive", "official"])
def test_mixing_raises_lp_and_lowers_lds_as_derived(form):
    patch, cls, y = synthetic()
    ids, pooled, mets, used = accumulate(chunks(patch, cls), (H, W), ALPHAS, form=form)
    assert used == "cls" and len(ids) == len(y)
    lds0 = lds_by_hand()
    assert lds0 > 0.3
    for a in ALPHAS:
        ratio = 1 / (1 + a * a) if form == "additive" else (1 - a) ** 2 / ((1 - a) ** 2 + a * a)
        np.testing.assert_allclose(mets[a]["lds"].numpy(), lds0 * ratio, atol=2e-4)
        assert torch.isnan(mets[a]["srss"]).all()  # no masks -> undefined, never faked
    labels = {i: int(v) for i, v in zip(ids, y)}
    table = injection_table(ids, pooled, mets, labels, InjectConfig(features="x", alphas=ALPHAS, **FAST))
    lp, lds = table["lp_acc"].to_numpy(), table["lds"].to_numpy()
    assert lp[0] <= 0.5 and lp[-1] >= 0.95         # chance (0.25) -> label read off the CLS
    assert np.all(np.diff(lds) < 0)               # LDS strictly falls with α
    assert np.all(np.diff(table["rmsc"].to_numpy()) < 0)  # a common vector pulls tokens to their mean


def test_mean_mix_official_keeps_mean_pooled_lp_but_lowers_lds():
    patch, cls, y = synthetic(n=64)
    noisy = patch + 0.05 * torch.randn(patch.shape, generator=torch.Generator().manual_seed(1))
    ids, pooled, mets, used = accumulate(((i, p, None, m) for i, p, _, m in chunks(noisy, cls)), (H, W), ALPHAS)
    assert used == "mean"
    torch.testing.assert_close(pooled[0.5], pooled[0.0], atol=1e-6, rtol=1e-5)  # α·m + (1−α)·mean(p) = m
    assert mets[0.5]["lds"].mean() < mets[0.0]["lds"].mean()


def test_inject_from_store_writes_table_and_figure(tmp_path):
    from spatialprobe.store import write_store

    patch, cls, y = synthetic(n=120)
    st = write_store(tmp_path / "s", [f"im{i}" for i in range(120)], patch=patch, prefix=cls[:, None], grid=(H, W),
                     encoder="toy", labels=y.tolist())
    table = inject(features=str(st), alphas=(0.0, 0.5), form="additive", out=str(tmp_path / "out"), **FAST)
    assert list(table["alpha"]) == [0.0, 0.5]
    assert table["lp_acc"].iloc[1] > table["lp_acc"].iloc[0] and table["lds"].iloc[1] < table["lds"].iloc[0]
    for f in ("injection.csv", "injection.png", "injection.pdf", "result.json", "config.json"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    rec = json.loads((tmp_path / "out" / "result.json").read_text())
    assert rec["mix"] == "cls" and rec["form"] == "additive" and len(rec["rows"]) == 2


def test_encoder_runs_once_for_all_alphas(tmp_path, monkeypatch):
    """Encoder path with a real weight-free encoder on real photos; forward calls are counted."""
    import skimage.data
    from PIL import Image

    from spatialprobe.encoders import get as real_get

    for k, name in enumerate(["astronaut", "coffee", "chelsea", "rocket"]):
        img = getattr(skimage.data, name)()
        for j in range(3):
            d = tmp_path / "imgs" / f"c{k % 2}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(np.rot90(img, j))).save(d / f"{name}{j}.png")
    calls = []

    def counting_get(*a, **kw):
        enc = real_get(*a, **kw)
        orig = enc.__call__

        class Wrapped:
            name, grid, embed_dim = enc.name, enc.grid, enc.embed_dim

            def __call__(self, images):
                calls.append(len(images))
                return orig(images)

        return Wrapped()

    monkeypatch.setattr("spatialprobe.encoders.get", counting_get)
    table = inject(encoder="pixels", images=str(tmp_path / "imgs"), alphas=(0.0, 0.2, 0.4), batch_size=8,
                   resolution=64, figure=False, **FAST)
    assert sum(calls) == 12 and len(calls) == 2  # 12 images, batch 8: two forwards for three α
    assert len(table) == 3 and table["mix"].iloc[0] == "mean"
    assert table["lds"].iloc[2] < table["lds"].iloc[0]
