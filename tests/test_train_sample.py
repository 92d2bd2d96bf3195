"""Samplers against closed forms: Gaussian data N(μ, σ²) has the optimal denoiser in closed form, and the exact
probability-flow map sends the starting noise n to μ + σ·n. Each sampler must reproduce that in its own family's
time convention (SiT: t = 1 noise; JiT: t = 0 noise)."""

import numpy as np
import pytest
import torch

from spatialprobe.train import sample as S
from spatialprobe.train.loop import train
from train_stubs import PatchTeacher, digits_source

MU, SIGMA = 1.5, 0.5


class SiTGaussian(torch.nn.Module):
    """Optimal SiT velocity for x0 ~ N(MU, SIGMA²): x_t = (1−t)x0 + tε, v = E[ε − x0 | x_t]."""

    def forward(self, x, t, y, project=True):
        tb = t.view(-1, *[1] * (x.dim() - 1)).double()
        a, b = 1 - tb, tb
        s2 = a ** 2 * SIGMA ** 2 + b ** 2
        r = x.double() - a * MU
        e_x0 = MU + a * SIGMA ** 2 / s2 * r
        e_eps = b / s2 * r
        return (e_eps - e_x0).to(x.dtype), []


class JiTGaussian(torch.nn.Module):
    """Optimal JiT x̂ for x ~ N(MU, SIGMA²): z = t·x + (1−t)ε, x̂ = E[x | z]."""

    def forward(self, z, t, y, project=True):
        tb = t.view(-1, *[1] * (z.dim() - 1)).double()
        s2 = tb ** 2 * SIGMA ** 2 + (1 - tb) ** 2
        return (MU + tb * SIGMA ** 2 / s2 * (z.double() - tb * MU)).to(z.dtype), []


def _noise(n=4000, seed=0):
    return torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_sit_ode_heun_follows_the_exact_flow_map():
    n = _noise()
    fn = S.sit_velocity_fn(SiTGaussian(), torch.zeros(len(n), dtype=torch.long), null_class=1)
    x = S.sit_ode(fn, n.clone(), steps=50, heun=True)
    assert (x - (MU + SIGMA * n)).abs().max().item() < 2e-3
    # Euler is first order: 4x the steps, about 1/4 of the error
    e50 = (S.sit_ode(fn, n.clone(), steps=50, heun=False) - (MU + SIGMA * n)).abs().max().item()
    e200 = (S.sit_ode(fn, n.clone(), steps=200, heun=False) - (MU + SIGMA * n)).abs().max().item()
    assert e50 < 0.1 and 0.2 < e200 / e50 < 0.3


def test_sit_sde_samples_the_data_distribution():
    n = _noise(20000)
    fn = S.sit_velocity_fn(SiTGaussian(), torch.zeros(len(n), dtype=torch.long), null_class=1)
    x = S.sit_sde(fn, n, steps=250, generator=torch.Generator().manual_seed(1))
    assert x.mean().item() == pytest.approx(MU, abs=4 * SIGMA / len(n) ** 0.5)
    assert x.std().item() == pytest.approx(SIGMA, abs=0.02)
    # stochastic: not the deterministic flow map of the starting noise
    assert (x - (MU + SIGMA * n)).abs().mean().item() > 0.1


def test_sit_score_of_the_linear_path():
    # for N(0, 1) data x_t ~ N(0, (1−t)² + t²): score = −x/((1−t)² + t²)
    class Std(torch.nn.Module):
        def forward(self, x, t, y, project=True):
            tb = t.view(-1, 1)
            s2 = (1 - tb) ** 2 + tb ** 2
            return (tb / s2 - (1 - tb) / s2) * x, []

    x = torch.linspace(-2, 2, 9, dtype=torch.float64).view(-1, 1)
    for t in (0.2, 0.5, 0.9):
        v = Std()(x, torch.full((9,), t, dtype=torch.float64), None)[0]
        torch.testing.assert_close(S.sit_score(v, x, t), -x / ((1 - t) ** 2 + t ** 2))


def test_jit_heun_follows_the_exact_flow_map_from_t0():
    n = _noise()
    fn = S.jit_velocity_fn(JiTGaussian(), torch.zeros(len(n), dtype=torch.long), null_class=1)
    z = S.jit_ode(fn, n.clone(), steps=50, method="heun")
    # the clamp max(1−t, 0.05) slows the steps with t ≥ 0.96 (1−t ≤ 0.04): the last 4 % of the path is covered
    # only in part, leaving a gap of order 0.04·|x − ε| (≤ 0.04·(|x| + |ε|) ≈ 0.04·4 here)
    err = (z - (MU + SIGMA * n)).abs()
    assert err.max().item() < 0.2 and err.mean().item() < 0.05
    # without the clamp (t_eps → 0) the same sampler is accurate to Heun order
    fn0 = S.jit_velocity_fn(JiTGaussian(), torch.zeros(len(n), dtype=torch.long), null_class=1, t_eps=1e-9)
    z0 = S.jit_ode(fn0, n.clone(), steps=50, method="heun")
    assert (z0 - (MU + SIGMA * n)).abs().max().item() < 2e-3


def _recorder(kind):
    seen = []

    class Net(torch.nn.Module):
        def forward(self, x, t, y, project=True):
            seen.append((float(t[0]), x.shape[0]))
            return torch.zeros_like(x), []

    fn_maker = S.sit_velocity_fn if kind == "sit" else S.jit_velocity_fn
    return Net(), fn_maker, seen


def test_guidance_interval_uses_each_family_time_convention():
    y = torch.zeros(2, dtype=torch.long)
    # SiT: cfg with guidance_high 0.75 -> guided (doubled batch) only for t ≤ 0.75, i.e. late, low noise
    net, mk, seen = _recorder("sit")
    S.sit_ode(mk(net, y, null_class=1, cfg=1.8, interval=(0.0, 0.75)), torch.zeros(2, 1), steps=10, heun=False)
    assert [b for _, b in seen] == [4 if t <= 0.75 else 2 for t, _ in seen]
    assert seen[0] == (1.0, 2)  # the noisiest step is unguided
    # JiT: interval [0.15, 1.0] -> guided for t > 0.15; t = 0 is noise and is unguided
    net, mk, seen = _recorder("jit")
    S.jit_ode(mk(net, y, null_class=1, cfg=3.0, interval=(0.15, 1.0)), torch.zeros(2, 1), steps=10, method="euler")
    assert [b for _, b in seen] == [4 if t > 0.15 else 2 for t, _ in seen]
    assert seen[0] == (0.0, 2) and seen[-1][1] == 4
    assert S.jit_guidance_active(0.05, (0.0, 1.0)) and not S.jit_guidance_active(1.0, (0.0, 1.0))


def test_cfg_combines_conditional_and_unconditional():
    class Net(torch.nn.Module):
        def forward(self, x, t, y, project=True):  # conditional velocity 1, unconditional (null = 7) velocity 0
            return (y != 7).double().view(-1, 1).expand_as(x).clone(), []

    y = torch.zeros(3, dtype=torch.long)
    fn = S.sit_velocity_fn(Net(), y, null_class=7, cfg=2.5)
    assert fn(torch.zeros(3, 1, dtype=torch.float64), 0.5).flatten().tolist() == [2.5] * 3
    fnj = S.jit_velocity_fn(Net(), y, null_class=7, cfg=2.5, interval=(0.0, 1.0))
    # x̂ = 0 + 2.5·(1 − 0) = 2.5 at z = 0, t = 0.5: v = 2.5/0.5
    assert fnj(torch.zeros(3, 1, dtype=torch.float64), 0.5).flatten().tolist() == [5.0] * 3


def test_balanced_labels():
    lab = S.balanced_labels(25, 10)
    assert np.bincount(lab.numpy()).tolist() == [3] * 5 + [2] * 5


@pytest.mark.parametrize("model,sampler", [("jit-tiny", "heun"), ("sit-tiny", "ode-heun")])
def test_sample_command_writes_adm_npz_and_pngs(tmp_path, model, sampler):
    src = digits_source(64, 32)
    train(model=model, method="irepa", teacher="stub", images="x", out=str(tmp_path / "run"), steps=2, workers=0,
          batch_size=8, source=src, teachers=[PatchTeacher(16, input_res=64, patch=8)], teacher_resolution=64)
    out = S.sample(run=str(tmp_path / "run"), n=12, batch_size=8, steps=3, sampler=sampler, cfg=1.5,
                   out=str(tmp_path / "s"))
    d = np.load(out / "samples.npz")
    side = 32 if model == "jit-tiny" else 64
    assert d["arr_0"].shape == (12, side, side, 3) and d["arr_0"].dtype == np.uint8
    if model == "jit-tiny":  # JiT's evaluation: class-balanced
        assert d["labels"].tolist() == [i % 10 for i in range(12)]
    else:  # REPA's generate.py: randint(0, C), seeded by --seed
        assert d["labels"].tolist() == S.random_labels(12, 10, seed=0).tolist()
    assert len(list((out / "png").glob("*.png"))) == 12


@pytest.mark.parametrize("name", ["sit-tiny", "jit-tiny"])
def test_sampling_never_runs_the_alignment_projectors(name):
    """The REPA projector (an MLP of a few M parameters) is training-only: a sampler's velocity calls skip it,
    and the prediction equals the training forward's."""
    from spatialprobe.train.models import build

    torch.manual_seed(0)
    net = build(name, z_dims=[32, 16], projector="mlp").eval()
    calls = []
    for proj in net.projectors:
        proj.register_forward_hook(lambda *_: calls.append(1))
    size = net.cfg.input_size
    x = torch.randn(2, 4 if name == "sit-tiny" else 3, size, size)
    t, y = torch.full((2,), 0.5), torch.tensor([1, 2])
    with torch.no_grad():
        full, zs = net(x, t, y)
        assert len(zs) == 2 and len(calls) == 2
        fn = (S.sit_velocity_fn if name == "sit-tiny" else S.jit_velocity_fn)(net, y, null_class=net.null_class)
        v = fn(x, 0.5)
    assert len(calls) == 2, "a sampling step ran a projector"
    expected = full if name == "sit-tiny" else (full - x) / 0.5
    torch.testing.assert_close(v, expected)
