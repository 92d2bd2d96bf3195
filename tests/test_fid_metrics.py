"""Closed-form checks of the ADM-protocol metrics (no Inception involved)."""

from __future__ import annotations

import numpy as np
import pytest

from spatialprobe import fid
from spatialprobe.errors import DataError
from spatialprobe.fid import metrics as M


def _rand_spd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_distance_closed_forms(method):
    # 1-D Gaussians: (m1-m2)^2 + (s1-s2)^2
    assert fid.frechet_distance([1.0], [[4.0]], [4.0], [[9.0]], method=method) == pytest.approx(9 + 1, abs=1e-9)
    # commuting diagonal covariances: |dmu|^2 + sum (sqrt a_i - sqrt b_i)^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([16.0, 1.0, 9.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([3.0, 1.0, -2.0])
    want = 9 + 16 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # = 25 + 9 + 1 + 0
    assert want == 35
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method) == pytest.approx(35, abs=1e-9)
    # a rotated pair: FD is invariant to a common orthogonal change of basis
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    got = fid.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T, method=method)
    assert got == pytest.approx(35, abs=1e-8)


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_distance_identical_stats_is_zero(method):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 64)) @ rng.standard_normal((64, 64))
    mu, sigma = fid.feature_statistics(x)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma, method=method)) < 1e-6


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_distance_singular_covariances(method):
    # rank-1 covariances along the same axis: FD = |dmu|^2 + (sqrt 1 - sqrt 4)^2 = 9 + 1
    got = fid.frechet_distance([0, 0], [[1, 0], [0, 0]], [0, 3], [[4, 0], [0, 0]], method=method)
    assert got == pytest.approx(10.0, abs=1e-6)
    # fewer samples than dimensions (rank 9 in 40-d), checked against Tr Σ1 + Tr Σ2 − 2 Σ sqrt(eig(Σ1 Σ2))
    rng = np.random.default_rng(2)
    s1, s2 = _rand_spd(rng, 40, 9), _rand_spd(rng, 40, 9)
    ev = np.linalg.eigvals(s1 @ s2)  # real, >= 0 up to round-off (similar to a PSD matrix)
    want = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev.real, 0, None)).sum()
    assert fid.frechet_distance(np.zeros(40), s1, np.zeros(40), s2, method=method) == pytest.approx(want, rel=1e-6)


def test_frechet_distance_eps_retry(monkeypatch):
    """When sqrtm(Σ1Σ2) is not finite the ADM retry adds eps·I to both covariances."""
    import scipy.linalg

    real_sqrtm, calls = scipy.linalg.sqrtm, []

    def flaky(a):
        calls.append(a.copy())
        return np.full_like(a, np.inf) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(scipy.linalg, "sqrtm", flaky)
    eps = 1e-2
    got = fid.frechet_distance([0.0, 0.0], np.diag([1.0, 0.0]), [0.0, 0.0], np.diag([0.0, 1.0]), eps=eps)
    # retry: Tr sqrt(diag((1+e)e, e(1+e))) = 2 sqrt(e(1+e)); FD = 1 + 1 − 4 sqrt(e(1+e))
    assert len(calls) == 2
    assert got == pytest.approx(2 - 4 * np.sqrt(eps * (1 + eps)), abs=1e-9)


def test_frechet_distance_bad_input():
    with pytest.raises(DataError, match="different dimensions"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(DataError, match="sigma1"):
        fid.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(DataError, match="NaN"):
        fid.frechet_distance([np.nan], [[1.0]], [0.0], [[1.0]])


def test_running_stats_equal_numpy_cov_and_need_two_samples():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((301, 17)) * 0.01 + 100.0  # large offset: raw second moments would cancel
    rs = M.RunningStats(17)
    for s in range(0, 301, 64):
        rs.update(x[s:s + 64].astype(np.float32))
    mu, sigma = rs.finalize()
    xf = x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(mu, xf.mean(0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(sigma, np.cov(xf, rowvar=False), rtol=1e-7, atol=1e-12)
    one = M.RunningStats(4)
    one.update(np.ones((1, 4)))
    with pytest.raises(DataError, match="at least 2 samples, got 1"):
        one.finalize()
    with pytest.raises(DataError, match="at least 2 samples, got 0"):
        M.RunningStats(4).finalize()


def test_inception_score_known_answers():
    # uniform predictions: p(y|x) = p(y) -> KL 0 -> IS 1
    assert fid.inception_score(np.zeros((40, 10))) == pytest.approx(1.0, abs=1e-12)
    # confident predictions over k equally frequent classes -> IS = k
    for k in (2, 5, 8):
        logits = np.repeat(np.eye(k) * 80.0, 6, axis=0)
        assert fid.inception_score(logits) == pytest.approx(k, rel=1e-9)
        probs = np.repeat(np.eye(k), 6, axis=0)  # exact one-hot: 0·log 0 = 0
        assert fid.inception_score(probs, from_probs=True) == pytest.approx(k, rel=1e-12)


def test_inception_score_splits_in_order():
    # first split: all samples of class 0 (IS 1); second: 4 balanced classes (IS 4); mean 2.5.
    # A shuffled or 10-way split would mix them, so this pins ADM's in-order split of split_size.
    a = np.tile(np.eye(8)[0], (8, 1))
    b = np.repeat(np.eye(8)[:4], 2, axis=0)
    probs = np.concatenate([a, b])
    assert fid.inception_score(probs, split_size=8, from_probs=True) == pytest.approx(2.5, rel=1e-12)
    # streaming in odd-sized batches gives the same answer
    s = M.StreamingInceptionScore(8, from_probs=True)
    for i in range(0, 16, 3):
        s.update(probs[i:i + 3])
    assert s.finalize() == pytest.approx(2.5, rel=1e-12) and len(s.scores) == 2
    # a shorter last split is scored on its own (ADM's chunking): 16 samples in splits of 10 -> [10, 6]
    s = M.StreamingInceptionScore(10, from_probs=True)
    s.update(probs)
    assert len(s.scores) == 1  # the full split of 10 is scored as soon as it is complete
    s.finalize()
    assert len(s.scores) == 2


def test_precision_recall_hand_worked_points():
    line = lambda xs: np.c_[np.asarray(xs, float), np.zeros(len(xs))]  # noqa: E731
    real = line(range(10))
    # real radii (3rd neighbour): 3 at the ends, 2 inside. Fake {0.5,100,200,300}: only 0.5 is inside a real
    # ball -> precision 1/4; fake radii 299.5, 200, 199.5, 299.5 -> the ball of 0.5 covers all real -> recall 1
    assert fid.precision_recall(real, line([0.5, 100, 200, 300])) == pytest.approx((0.25, 1.0))
    # fake {0,1,2,3}: radii 3,2,2,3 cover real 0..6 (6 is at exactly 3 from 3: '<=' counts) -> recall 0.7
    assert fid.precision_recall(real, line([0, 1, 2, 3])) == pytest.approx((1.0, 0.7))
    # far apart sets: nothing inside anything
    assert fid.precision_recall(real, line([1000, 1001, 1002, 1003])) == pytest.approx((0.0, 0.0))
    # blocks smaller than the sets give the same answer
    assert fid.precision_recall(real, line([0, 1, 2, 3]), block_size=3) == pytest.approx((1.0, 0.7))


def test_precision_recall_errors():
    with pytest.raises(DataError, match="k = 3 needs at least 4"):
        fid.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
    with pytest.raises(DataError, match=r"\[N, D\]"):
        fid.precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))
