"""Spatial metrics: hand-worked golden values, closed forms, brute-force definitions, properties."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spatialprobe.errors import ConfigError, DataError
from spatialprobe.metrics import aggregate, paper_radii, spatial_metrics, spatial_metrics_multi, spatial_norm

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- brute-force definitions
def brute(tokens: np.ndarray, grid, fg=None, near=1, far=6, dmax=8, pos=1, neg=6) -> dict[str, float]:
    """Metrics of ONE image straight from the definitions (irepa-spec §2), pair by pair, in float64."""
    h, w = grid
    x = tokens.astype(np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
    t = h * w
    rc = [(i // w, i % w) for i in range(t)]
    dist = lambda i, j: abs(rc[i][0] - rc[j][0]) + abs(rc[i][1] - rc[j][1])  # noqa: E731
    cos = lambda i, j: float(x[i] @ x[j])  # noqa: E731
    by_d: dict[int, list[float]] = {}
    for i in range(t):
        for j in range(t):
            by_d.setdefault(dist(i, j), []).append(cos(i, j))
    near_v = [v for d, vs in by_d.items() if 1 <= d <= near for v in vs]
    far_v = [v for d, vs in by_d.items() if d >= far and d > 0 for v in vs]
    # no near pair or no far pair (a radius beyond the grid) -> undefined (the official code: far term 0)
    lds = (np.mean(near_v) - np.mean(far_v)) if near_v and far_v else math.nan
    ds = [d for d in range(1, dmax + 1) if d in by_d]
    if len(ds) >= 2:
        s = [np.mean(by_d[d]) for d in ds]
        cds = -np.polyfit(ds, s, 1)[0]
    else:
        cds = math.nan  # no slope through fewer than two points (the official code: 0)
    mean = x.mean(0)
    rmsc = math.sqrt(np.mean([np.sum((x[i] - mean) ** 2) for i in range(t)]))
    out = {"lds": lds, "cds": cds, "rmsc": rmsc}
    if fg is not None:
        fgs = [i for i in range(t) if fg[i]]
        bgs = [i for i in range(t) if not fg[i]]
        if len(fgs) < 2 or len(bgs) < 1:
            out["srss"] = math.nan
        else:
            diffs = []
            for a in fgs:
                p = [cos(a, j) for j in fgs if 1 <= dist(a, j) <= pos]
                n = [cos(a, j) for j in bgs if dist(a, j) >= neg]
                if p and n:
                    diffs.append(np.mean(p) - np.mean(n))
            out["srss"] = float(np.mean(diffs)) if diffs else math.nan
    return out


def close(a: float, b: float, tol: float = 1e-5) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


# ----------------------------------------------------------------------------- hand-worked 2x3 grid
#   row 0:  A A B        A = (1, 0), B = (0.6, 0.8): cos(A, A) = cos(B, B) = 1, cos(A, B) = 0.6
#   row 1:  A B B
A, B = [1.0, 0.0], [0.6, 0.8]
HAND = torch.tensor([[A, A, B, A, B, B]])


def test_hand_worked_2x3_lds_cds_rmsc():
    # 4-neighbour pairs: horizontal AA, AB, AB, BB; vertical AA, AB, BB  -> (4·1 + 3·0.6)/7 = 5.8/7
    # d=2 pairs: (0,2) .6, (3,5) .6, (0,4) .6, (1,3) 1, (1,5) .6, (2,4) 1 -> 4.4/6;  d=3: (0,5), (2,3) -> .6
    near, s2, s3 = 5.8 / 7, 4.4 / 6, 0.6
    m = spatial_metrics(HAND, (2, 3), lds_far=2)
    assert m["lds"].item() == pytest.approx(near - (4.4 + 1.2) / 8, abs=1e-6)  # = 9/70
    assert m["lds"].item() == pytest.approx(9 / 70, abs=1e-6)
    assert spatial_metrics(HAND, (2, 3), lds_far=3)["lds"].item() == pytest.approx(near - s3, abs=1e-6)
    # OLS slope over d = 1, 2, 3 (d̄ = 2, Σ(d − d̄)² = 2): (s3 − near)/2; CDS = −slope = 4/35
    assert m["cds"].item() == pytest.approx(-(s3 - near) / 2, abs=1e-6)
    assert m["cds"].item() == pytest.approx(4 / 35, abs=1e-6)
    assert s2 > s3  # sanity of the hand table: similarity decays with distance
    # mean token (A + B)/2, |mean|² = (1 + 1 + 1.2)/4 = 0.8 -> RMSC = sqrt(0.2)
    assert m["rmsc"].item() == pytest.approx(math.sqrt(0.2), abs=1e-6)
    # the official far radius 6 does not exist on a 2x3 grid: no far pair, so LDS is undefined (the
    # official code clamps the far count and silently returns the near mean, 0.83)
    assert math.isnan(spatial_metrics(HAND, (2, 3))["lds"].item())
    # a 1x1 grid has no near pair: LDS undefined
    assert math.isnan(spatial_metrics(torch.randn(1, 1, 3), (1, 1))["lds"].item())


def test_hand_worked_2x3_srss():
    # FG = top row {0: A, 1: A, 2: B}; positives d = 1 (FG), negatives d >= 2 (BG)
    # anchor 0: pos {1} -> 1,          neg {4: B .6, 5: B .6} -> .6   diff  .4
    # anchor 1: pos {0, 2} -> .8,      neg {3: A 1, 5: B .6} -> .8    diff  0
    # anchor 2: pos {1} -> .6,         neg {3: A .6, 4: B 1} -> .8    diff -.2      SRSS = .2/3
    fg = torch.tensor([[True, True, True, False, False, False]])
    m = spatial_metrics(HAND, (2, 3), fg, srss_pos=1, srss_neg=2)
    assert m["srss"].item() == pytest.approx(1 / 15, abs=1e-6)


def test_hand_worked_3x3_cds_linear_decay():
    # token angle = 0.2·column, so cos(i, j) = cos(0.2·|Δc|) (1 along a column)
    ang = torch.tensor([0.0, 0.2, 0.4] * 3)
    tok = torch.stack([ang.cos(), ang.sin()], -1)[None]
    m = spatial_metrics(tok, (3, 3), lds_far=3, cds_dmax=4)
    # pairs per distance (ordered) and their cosines by |Δc|:
    # d=1: vertical 12 pairs cos 1, horizontal 12 pairs cos(.2)
    # d=2: |Δr|=2,Δc=0: 6 cos 1; |Δr|=1,|Δc|=1: 16 cos(.2); Δr=0,|Δc|=2: 6 cos(.4)
    # d=3: |Δr|=2,|Δc|=1: 8 cos(.2); |Δr|=1,|Δc|=2: 8 cos(.4)
    # d=4: |Δr|=2,|Δc|=2: 4 cos(.4)
    c1, c2 = math.cos(0.2), math.cos(0.4)
    s = {1: (12 + 12 * c1) / 24, 2: (6 + 16 * c1 + 6 * c2) / 28, 3: (8 * c1 + 8 * c2) / 16, 4: c2}
    slope = sum((d - 2.5) * s[d] for d in s) / sum((d - 2.5) ** 2 for d in s)
    assert m["cds"].item() == pytest.approx(-slope, abs=1e-6)
    assert m["lds"].item() == pytest.approx(s[1] - (16 * s[3] + 4 * s[4]) / 20, abs=1e-6)


# ----------------------------------------------------------------------------- closed forms and edge cases
def test_constant_tokens_are_zero():
    tok = torch.randn(1, 1, 12).repeat(3, 256, 1) * torch.tensor([1.0, 3.0, 0.01])[:, None, None]
    m = spatial_metrics(tok, (16, 16))
    for k in ("lds", "cds", "rmsc"):
        assert torch.allclose(m[k], torch.zeros(3), atol=1e-6), (k, m[k])


def test_rmsc_identity_against_mean_norm():
    tok = torch.randn(5, 64, 16) + 0.5
    xh = tok.double() / tok.double().norm(dim=-1, keepdim=True)
    expect = (1 - xh.mean(1).pow(2).sum(-1)).sqrt()
    assert torch.allclose(spatial_metrics(tok, (8, 8), metrics=["rmsc"])["rmsc"].double(), expect, atol=1e-6)
    assert torch.allclose(spatial_metrics(tok, (8, 8))["rmsc"].double(), expect, atol=1e-6)


def test_srss_nan_rules():
    tok = torch.randn(5, 16, 8)
    fg = torch.zeros(5, 16, dtype=torch.bool)
    fg[1] = True  # no background
    fg[2, 0] = True  # a single FG token
    fg[3, [0, 15]] = True  # two FG tokens far apart: no positive at d = 1 -> no valid anchor
    fg[4, :8] = True  # top half: defined
    s = spatial_metrics(tok, (4, 4), fg, srss_neg=2)["srss"]
    assert torch.isnan(s[:4]).all()
    assert not torch.isnan(s[4])


def test_srss_skipped_without_masks_and_error_when_only_srss():
    assert set(spatial_metrics(torch.randn(2, 16, 4), (4, 4))) == {"lds", "cds", "rmsc"}
    with pytest.raises(DataError, match="masks"):
        spatial_metrics(torch.randn(2, 16, 4), (4, 4), metrics=["srss"])


def test_cds_undefined_when_fewer_than_two_distances():
    # a 1x1 grid has no pair at d >= 1; a 1x2 grid has one distance only: no slope (the official code gives 0)
    assert torch.isnan(spatial_metrics(torch.randn(2, 1, 4), (1, 1))["cds"]).all()
    assert torch.isnan(spatial_metrics(torch.randn(2, 2, 4), (1, 2))["cds"]).all()
    assert torch.isnan(spatial_metrics(torch.randn(2, 256, 4), (16, 16), cds_dmax=1)["cds"]).all()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(DataError, match="T=15"):
        spatial_metrics(torch.randn(1, 15, 4), (4, 4))
    with pytest.raises(DataError, match="masks"):
        spatial_metrics(torch.randn(1, 16, 4), (4, 4), torch.ones(1, 15, dtype=torch.bool))
    with pytest.raises(ConfigError, match="Unknown metric"):
        spatial_metrics(torch.randn(1, 16, 4), (4, 4), metrics=["ldx"])
    with pytest.raises(ConfigError, match=">= 1"):
        spatial_metrics(torch.randn(1, 16, 4), (4, 4), lds_far=0)


def test_paper_radii():
    assert paper_radii((16, 16)) == {"lds_near": 7, "lds_far": 8, "cds_dmax": 8, "srss_pos": 8, "srss_neg": 8}
    assert paper_radii((8, 12))["lds_far"] == 4


def test_real_image_pixels_have_local_structure():
    """Raw-pixel patch tokens of a real photo: neighbours are more alike than far patches (LDS > 0,
    CDS > 0); shuffling token positions destroys that while RMSC (position-free) stays the same."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()[:256, 128:384].copy()).float()  # [256, 256, 3]
    tok = img.reshape(16, 16, 16, 16, 3).permute(0, 2, 1, 3, 4).reshape(1, 256, 768)
    tok = tok - tok.mean(dim=(0, 1))  # centre colours so cosines are not all ~1
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    m = spatial_metrics(torch.cat([tok, tok[:, perm]]), (16, 16))
    assert m["lds"][0] > 0.1 and m["cds"][0] > 0
    assert abs(m["lds"][1]) < 0.5 * m["lds"][0]
    assert m["rmsc"][0].item() == pytest.approx(m["rmsc"][1].item(), abs=1e-5)
    ref = brute(tok[0].numpy(), (16, 16))
    for k in ("lds", "cds", "rmsc"):
        assert close(m[k][0].item(), ref[k]), k


# ----------------------------------------------------------------------------- properties (hypothesis)
grids = st.tuples(st.integers(1, 5), st.integers(1, 6))


@FAST
@given(grid=grids, d=st.integers(1, 6), seed=st.integers(0, 2 ** 16), near=st.integers(1, 3),
       far=st.integers(1, 5), dmax=st.integers(1, 8), pos=st.integers(1, 3), neg=st.integers(1, 5))
def test_matches_definitions(grid, d, seed, near, far, dmax, pos, neg):
    h, w = grid
    gen = torch.Generator().manual_seed(seed)
    tok = torch.randn(3, h * w, d, generator=gen)
    fg = torch.rand(3, h * w, generator=gen) > 0.5
    m = spatial_metrics(tok, grid, fg, lds_near=near, lds_far=far, cds_dmax=dmax, srss_pos=pos, srss_neg=neg)
    for b in range(3):
        ref = brute(tok[b].numpy(), grid, fg[b].numpy(), near, far, dmax, pos, neg)
        for k, v in ref.items():
            assert close(m[k][b].item(), v), (k, m[k][b].item(), v)


@FAST
@given(seed=st.integers(0, 2 ** 16), grid=st.sampled_from([(4, 4), (3, 5), (6, 2)]))
def test_invariant_to_positive_per_token_rescaling(seed, grid):
    gen = torch.Generator().manual_seed(seed)
    t = grid[0] * grid[1]
    tok = torch.randn(2, t, 8, generator=gen)
    scale = torch.exp(torch.randn(2, t, 1, generator=gen) * 2)  # factors ~ e^±4
    fg = torch.rand(2, t, generator=gen) > 0.4
    a = spatial_metrics(tok, grid, fg, lds_far=2, srss_neg=2)
    b = spatial_metrics(tok * scale, grid, fg, lds_far=2, srss_neg=2)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, equal_nan=True), k


@FAST
@given(seed=st.integers(0, 2 ** 16), chunk=st.integers(1, 7))
def test_chunked_equals_unchunked(seed, chunk):
    gen = torch.Generator().manual_seed(seed)
    tok = torch.randn(9, 36, 10, generator=gen)
    fg = torch.rand(9, 36, generator=gen) > 0.5
    a = spatial_metrics(tok, (6, 6), fg, srss_neg=3)
    b = spatial_metrics(tok, (6, 6), fg, srss_neg=3, chunk_size=chunk)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, equal_nan=True), k


def test_dtypes_and_settings_share_one_pass():
    tok = torch.randn(4, 64, 16)
    fg = torch.rand(4, 64) > 0.5
    a = spatial_metrics(tok, (8, 8), fg)
    h = spatial_metrics(tok.half(), (8, 8), fg)
    assert all(v.dtype == torch.float32 for v in h.values())
    assert torch.allclose(a["lds"], h["lds"], atol=5e-3)
    sets = [{"lds_far": f, "srss_neg": n} for f in (2, 4, 6) for n in (3, 6)]
    multi = spatial_metrics_multi(tok, (8, 8), fg, settings=sets)
    for s, m in zip(sets, multi):
        single = spatial_metrics(tok, (8, 8), fg, **s)
        for k in single:
            assert torch.allclose(m[k], single[k], atol=1e-7, equal_nan=True)


def test_matches_official_structure_baseline():
    """The shared pass equals the per-metric baseline of the benchmark (official code structure)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_metrics.py"
    spec = importlib.util.spec_from_file_location("bench_metrics", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tok, fg = mod.make_tokens(6, d=32)
    ref = mod.baseline(tok, (16, 16), fg)
    got = spatial_metrics(tok, (16, 16), fg)
    for k in ref:
        assert torch.allclose(got[k], ref[k], atol=1e-5, equal_nan=True), k


@pytest.mark.gpu
def test_gpu_equals_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gen = torch.Generator().manual_seed(0)
    tok = torch.randn(40, 256, 384, generator=gen)
    fg = torch.rand(40, 256, generator=gen) > 0.5
    cpu = spatial_metrics(tok, (16, 16), fg)
    gpu = spatial_metrics(tok.cuda(), (16, 16), fg.cuda())
    for k in cpu:
        assert gpu[k].is_cuda
        assert torch.allclose(gpu[k].cpu(), cpu[k], atol=1e-5, equal_nan=True), k


# ----------------------------------------------------------------------------- spatial_norm and aggregation
@FAST
@given(seed=st.integers(0, 2 ** 16), t=st.integers(2, 40), d=st.integers(1, 9))
def test_spatial_norm_moments(seed, t, d):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, t, d, generator=gen) * 3 + 5).to(torch.bfloat16)
    z = spatial_norm(x, 1.0)
    assert z.dtype == torch.float32
    assert torch.allclose(z.mean(1), torch.zeros(2, d), atol=1e-5)
    std = x.float().std(1, unbiased=True)
    # unbiased std of the output is std/(std + 1e-6), i.e. 1 up to the epsilon
    assert torch.allclose(z.std(1, unbiased=True), std / (std + 1e-6), atol=1e-5)
    # so 1 wherever the channel varies; bf16 rounding can make all t tokens of a channel equal (seen at t = 2),
    # and then the output is 0, not 1 (the line above holds there too)
    varies = std > 1e-3
    assert torch.allclose(z.std(1, unbiased=True)[varies], torch.ones(2, d)[varies], atol=1e-4)


def test_spatial_norm_gamma_by_hand():
    x = torch.tensor([[[1.0], [2.0], [6.0]]])  # mean 3, unbiased std sqrt(((−2)² + (−1)² + 3²)/2) = sqrt(7)
    z = spatial_norm(x, 0.6)
    expect = (torch.tensor([1.0, 2.0, 6.0]) - 0.6 * 3) / (math.sqrt(7) + 1e-6)
    assert torch.allclose(z[0, :, 0], expect, atol=1e-6)
    assert torch.allclose(spatial_norm(x[0], 0.6), z[0])  # [T, D] input
    with pytest.raises(DataError):
        spatial_norm(torch.randn(2, 1, 4), 1.0)


def test_aggregate_is_nanmean_with_count():
    a = aggregate(torch.tensor([1.0, float("nan"), 3.0, float("nan")]))
    assert a == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "n": 2, "n_nan": 2}
    assert math.isnan(aggregate(torch.tensor([float("nan")]))["mean"])


def test_window_reach_does_not_change_values(monkeypatch):
    """The pass gathers only the cosines within the largest radius it needs and takes the far sets as
    totals minus that window; a window over the whole grid (every pair gathered) gives the same values."""
    from spatialprobe.metrics import spatial as sp

    gen = torch.Generator().manual_seed(3)
    tok = torch.randn(3, 20 * 24, 6, generator=gen)
    fg = torch.rand(3, 20 * 24, generator=gen) > 0.5
    sets = [{}, {"lds_far": 3, "srss_neg": 3}, paper_radii((20, 24))]
    a = spatial_metrics_multi(tok, (20, 24), fg, settings=sets)
    monkeypatch.setattr(sp, "_reach", lambda sets, wanted, grid_max: grid_max)
    b = spatial_metrics_multi(tok, (20, 24), fg, settings=sets)
    for ma, mb in zip(a, b):
        for k in ma:
            assert torch.allclose(ma[k], mb[k], atol=1e-6, equal_nan=True), k


def _normalise_then_gram(x, out=None):
    """The textbook path: an L2-normalised copy of the tokens (F.normalize, eps 1e-8), then its Gram."""
    xh = torch.nn.functional.normalize(x, dim=-1, eps=1e-8)
    return torch.bmm(xh, xh.transpose(1, 2)), x.pow(2).sum(-1)


def test_raw_gram_equals_normalise_then_gram(monkeypatch):
    """Cosines from the raw Gram and its diagonal equal normalise-then-Gram to 1e-6, zero tokens included
    (a zero token has cosine 0 with everything; a norm below eps is clamped the same way)."""
    from spatialprobe.metrics import spatial as sp

    gen = torch.Generator().manual_seed(5)
    tok = torch.randn(6, 64, 24, generator=gen) * torch.exp(torch.randn(6, 64, 1, generator=gen) * 3)
    tok[0, [3, 17, 40]] = 0  # single zero tokens inside an image
    tok[1] = 0  # an all-zero token map: every metric undefined
    tok[2, 5] *= 1e-9 / tok[2, 5].norm()  # a norm below eps: clamped, not normalised to 1
    tok[3, :32] = tok[3, :1]  # identical tokens
    fg = torch.rand(6, 64, generator=gen) > 0.5
    raw_g, raw_sq = sp._cosine_gram(tok.clone())
    ref_g, ref_sq = _normalise_then_gram(tok)
    assert torch.allclose(raw_g, ref_g, atol=1e-6, rtol=0)
    assert raw_g[0, 3].abs().max() == 0 and raw_g[0, :, 17].abs().max() == 0
    assert torch.allclose(raw_sq, ref_sq, rtol=1e-5)
    raw = spatial_metrics(tok, (8, 8), fg, lds_far=4, srss_neg=4)
    monkeypatch.setattr(sp, "_cosine_gram", _normalise_then_gram)
    ref = spatial_metrics(tok, (8, 8), fg, lds_far=4, srss_neg=4)
    for k in ref:
        assert torch.isnan(raw[k][1]) and torch.isnan(ref[k][1]), k
        assert torch.allclose(raw[k], ref[k], atol=1e-6, rtol=0, equal_nan=True), k


def test_nonfinite_tokens_fail_and_huge_finite_tokens_are_scaled():
    tok = torch.randn(4, 16, 8)
    bad = tok.clone()
    bad[2, 3, 1] = float("nan")
    bad[3, 0, 0] = float("inf")
    with pytest.raises(DataError, match="2 of 4 image.*batch index 2, 3"):
        spatial_metrics(bad, (4, 4), chunk_size=2)
    # finite tokens whose squared norm overflows fp32 keep their (scale-free) cosines
    big = tok.clone()
    big[1, 5] *= 3e19
    big[2] *= 1e20
    a = spatial_metrics(tok, (4, 4), lds_far=2)
    b = spatial_metrics(big, (4, 4), lds_far=2)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_cpu_gram_is_symmetric_and_matches_bmm():
    """The CPU Gram (numpy's symmetric rank-k update) equals the batched GEMM to fp32 rounding and is
    exactly symmetric."""
    from spatialprobe.metrics import spatial as sp

    x = torch.randn(5, 64, 48, generator=torch.Generator().manual_seed(1)) * 3
    g = sp._raw_gram(x)
    ref = torch.bmm(x.double(), x.double().transpose(1, 2))
    assert torch.allclose(g.double(), ref, rtol=1e-5, atol=1e-3)
    assert torch.equal(g, g.transpose(1, 2))


@pytest.mark.parametrize("chunk", [None, 3])
def test_cpu_chunks_on_threads_match_one_thread_and_restore_blas(chunk):
    """Chunks run on torch's threads (one BLAS thread each) give the one-thread values, and BLAS's and
    torch's thread counts are what they were before."""
    from threadpoolctl import threadpool_info

    gen = torch.Generator().manual_seed(2)
    tok = torch.randn(10, 36, 16, generator=gen)
    tok[4] = 0
    fg = torch.rand(10, 36, generator=gen) > 0.5

    def blas_threads():
        return [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]

    before, before_blas = torch.get_num_threads(), blas_threads()
    out = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out[n] = spatial_metrics(tok, (6, 6), fg, lds_far=3, srss_neg=3, chunk_size=chunk)
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before and blas_threads() == before_blas
    for k in out[1]:
        assert torch.allclose(out[1][k], out[2][k], atol=1e-6, equal_nan=True), k
        assert torch.isnan(out[2][k][4]) and torch.isfinite(out[2][k][:4]).all(), k


def test_all_zero_count_checks_only_undefined_images_and_counts_exactly(tmp_path, caplog):
    """compute_metrics counts all-zero token maps without a pass over every chunk: only images whose
    metrics are all NaN are checked, and one whose metrics are NaN for another reason is not counted."""
    import logging

    from spatialprobe.metrics import compute_metrics

    x = torch.randn(3, 16, 8)
    x[1] = 0
    np.savez(tmp_path / "z.npz", ids=np.array(["p", "q", "r"]), patch=x.numpy())
    with caplog.at_level(logging.WARNING, logger="spatialprobe"):  # LDS far radius beyond the 4x4 grid: all NaN
        s = compute_metrics(features=[str(tmp_path / "z.npz")], metrics=["lds"], lds_far=7).summary.iloc[0]
    assert s["lds_nan"] == 3
    assert "1 of 3 image(s) have all-zero tokens" in caplog.text


def _lds_in_child(queue, tok, fg):
    queue.put(spatial_metrics(tok, (6, 6), fg, lds_far=3, chunk_size=3)["lds"].tolist())


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_metrics_run_in_a_forked_child_after_threads_ran_in_the_parent():
    """A forked child (a DataLoader or launcher worker) computes metrics although the parent's chunk
    threads do not exist there: the child gets its own threads instead of waiting on dead ones."""
    import multiprocessing as mp

    tok = torch.randn(8, 36, 8, generator=torch.Generator().manual_seed(4))
    fg = torch.rand(8, 36, generator=torch.Generator().manual_seed(5)) > 0.5
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parent = spatial_metrics(tok, (6, 6), fg, lds_far=3, chunk_size=3)["lds"]
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_lds_in_child, args=(q, tok, fg))
        p.start()
        try:
            child = q.get(timeout=60)
        finally:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    finally:
        torch.set_num_threads(before)
    assert torch.allclose(torch.tensor(child), parent, atol=1e-6)
