"""The JiT evaluation protocol (torch-fidelity style) against an independent computation of its formulas."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from spatialprobe.errors import DataError, InputFileError
from spatialprobe.fid.fidelity import evaluate_jit, frechet_distance, inception_score, load_stats, protocol_id
from spatialprobe.fid.inception import build_inception


def _is_reference(logits: np.ndarray, splits: int = 10, seed: int = 2020, shuffle: bool = True) -> float:
    """IS as torch-fidelity's isc_features_to_metric: shuffled rows, float64 softmax, chunk KL
    (``shuffle=False``: the ADM evaluator's in-order chunks)."""
    x = torch.from_numpy(logits).double()
    if shuffle:
        x = x[np.random.RandomState(seed).permutation(len(logits))]
    p, log_p = x.softmax(1), x.log_softmax(1)
    n = len(x)
    out = []
    for i in range(splits):
        pc, lc = p[i * n // splits:(i + 1) * n // splits], log_p[i * n // splits:(i + 1) * n // splits]
        q = pc.mean(0, keepdim=True)
        out.append((pc * (lc - q.log())).sum(1).mean().exp().item())
    return float(np.mean(out))


def _fid_reference(mu1, s1, mu2, s2) -> float:
    """The sqrtm form (torch-fidelity 0.3.0 / TTUR)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # 10 samples: a rank-deficient covariance
def test_jit_protocol_equals_an_independent_computation(tmp_path):
    rng = np.random.default_rng(0)
    imgs = torch.from_numpy(rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8))
    model = build_inception(pretrained=False, seed=0)
    feats = model(imgs)
    pool, logits = feats["pool"].double().numpy(), feats["logits"].double().numpy()
    # a synthetic statistics file with torch-fidelity's keys
    ref = rng.normal(size=(300, pool.shape[1])) * 0.1 + pool.mean(0)
    mu_r, sigma_r = ref.mean(0), np.cov(ref, rowvar=False)
    stats = tmp_path / "jit_in256_stats.npz"
    np.savez(stats, mu=mu_r, sigma=sigma_r)

    rec = evaluate_jit(imgs, stats, out=tmp_path / "eval", model=model, batch_size=5, progress=False)
    want_fid = _fid_reference(pool.mean(0), np.cov(pool, rowvar=False), mu_r, sigma_r)
    assert rec["metrics"]["fid"] == pytest.approx(want_fid, rel=1e-6)
    assert rec["metrics"]["is"] == pytest.approx(_is_reference(logits), rel=1e-9)
    assert rec["protocol"] == "jit-fidelity-in256-10" == protocol_id(stats, 10)
    assert json.loads((tmp_path / "eval" / "fid.json").read_text())["settings"]["is_seed"] == 2020
    # the shuffle matters: in-order splits give another number (40 rows: 4 per split; with 10 rows every
    # split holds one sample and scores exactly 1 in any order)
    many = np.random.default_rng(2).normal(size=(40, logits.shape[1])) * 3
    assert inception_score(many)[0] == pytest.approx(_is_reference(many), rel=1e-9)
    assert inception_score(many)[0] != pytest.approx(_is_reference(many, shuffle=False), rel=1e-6)


def test_fid_formula_and_stats_keys(tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 6)), rng.normal(size=(60, 6)) + 0.3
    args = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet_distance(*args) == pytest.approx(_fid_reference(*args), rel=1e-8)
    bad = tmp_path / "adm.npz"
    np.savez(bad, arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(InputFileError, match="mu and sigma"):
        load_stats(bad)
    with pytest.raises(InputFileError, match="not found"):
        load_stats(tmp_path / "missing.npz")
    with pytest.raises(DataError, match="at least 10"):
        inception_score(np.zeros((5, 3)))
