"""Statistics with answers known independently of the code under test."""

import math

import numpy as np
import pandas as pd
import pytest

from spatialprobe import stats
from spatialprobe.errors import ColumnError, DataError


def test_textbook_example_r_rho_tau():
    # x = 1..5, y = (2,1,4,3,5): deviations dx=(-2,-1,0,1,2), dy=(-1,-2,1,0,2)
    # sum dx*dy = 8, sum dx^2 = sum dy^2 = 10 -> r = 0.8; ranks equal the values -> rho = 0.8;
    # of the 10 pairs, (1,2) and (3,4) are discordant -> tau = (8 - 2) / 10 = 0.6
    df = pd.DataFrame({"x": [1, 2, 3, 4, 5], "y": [2, 1, 4, 3, 5]})
    row = stats.correlate_pair(df, "x", "y", n_resamples=2000).row
    assert row["n"] == 5
    assert row["pearson_r"] == pytest.approx(0.8, abs=1e-12)
    assert row["spearman_rho"] == pytest.approx(0.8, abs=1e-12)
    assert row["kendall_tau"] == pytest.approx(0.6, abs=1e-12)


def test_exactly_linear_data():
    x = np.arange(10.0)
    df = pd.DataFrame({"x": x, "y": 3 - 2 * x})
    row = stats.correlate_pair(df, "x", "y", n_resamples=2000).row
    assert row["pearson_r"] == pytest.approx(-1.0)
    assert row["spearman_rho"] == pytest.approx(-1.0)
    assert row["kendall_tau"] == pytest.approx(-1.0)
    assert row["loo_min"] == pytest.approx(-1.0) and row["loo_max"] == pytest.approx(-1.0)


def test_exact_permutation_p_for_tiny_sample():
    # n = 5 and 10,000 resamples > 5! = 120 orderings: the test enumerates them exactly.
    # |r| >= 1 only for the identity and the reversal -> p = 2/120.
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert stats.permutation_p(x, x, n_resamples=10_000) == pytest.approx(2 / 120)


def test_leave_one_out_and_family_out_remove_the_outlier():
    df = pd.DataFrame({"x": [1, 2, 3, 4, 10], "y": [1, 2, 3, 4, 0],
                       "family": ["A", "A", "B", "B", "C"]})
    row = stats.correlate_pair(df, "x", "y", family_col="family", n_resamples=2000).row
    assert row["loo_max"] == pytest.approx(1.0)  # dropping the point (10, 0) leaves a perfect line
    assert row["lofo_max"] == pytest.approx(1.0)  # so does dropping family C
    assert row["n_families"] == 3
    assert row["loo_min"] <= row["pearson_r"] <= row["loo_max"]


def test_rows_without_family_always_stay():
    x = np.array([1.0, 2, 3, 4, 5, 6])
    y = np.array([2.0, 1, 4, 3, 6, 5])
    lo, hi, k = stats.leave_one_family_out(x, y, ["A", "A", None, None, "B", "B"])
    r_without_a = np.corrcoef(x[2:], y[2:])[0, 1]
    r_without_b = np.corrcoef(x[:4], y[:4])[0, 1]
    assert k == 2
    assert lo == pytest.approx(min(r_without_a, r_without_b))
    assert hi == pytest.approx(max(r_without_a, r_without_b))


def test_partial_correlation_matches_textbook_formula():
    rng = np.random.default_rng(3)
    z = rng.normal(size=200)
    x = z + rng.normal(size=200)
    y = 0.5 * z + 0.3 * x + rng.normal(size=200)
    r = np.corrcoef([x, y, z])
    expected = (r[0, 1] - r[0, 2] * r[1, 2]) / math.sqrt((1 - r[0, 2] ** 2) * (1 - r[1, 2] ** 2))
    assert stats.partial_correlation(x, y, z) == pytest.approx(expected, abs=1e-10)


def test_ci_covers_true_r_for_large_sample_and_is_seeded():
    rng = np.random.default_rng(0)
    rho = 0.6
    cov = [[1, rho], [rho, 1]]
    xy = rng.multivariate_normal([0, 0], cov, size=3000)
    lo, hi = stats.bootstrap_ci(xy[:, 0], xy[:, 1], n_resamples=10_000, seed=1)
    assert lo < rho < hi
    assert hi - lo < 0.08  # Fisher-z width at n=3000 is about 0.046
    assert stats.bootstrap_ci(xy[:, 0], xy[:, 1], n_resamples=10_000, seed=1) == (lo, hi)
    assert stats.bootstrap_ci(xy[:, 0], xy[:, 1], n_resamples=10_000, seed=2) != (lo, hi)


def test_ci_of_five_points_is_defined_and_brackets_r():
    # with n = 5 some resamples repeat one row (r = 0/0) and scipy's BCa and percentile both give NaN
    x = np.array([63.3, 67.5, 31.7, 29.2, 69.2])
    y = np.array([745.3, 701.4, 748.4, 805.9, 674.8])
    r = stats.pearson(x, y)
    lo, hi = stats.bootstrap_ci(x, y, n_resamples=2000, seed=0)
    assert np.isfinite(lo) and np.isfinite(hi)
    assert -1.0 <= lo <= r <= hi <= 1.0 and hi - lo > 0.1
    assert np.isnan(stats.bootstrap_ci(np.ones(5), y)[0])  # a constant column has no r at all


def test_permutation_p_small_for_strong_and_large_for_no_correlation():
    rng = np.random.default_rng(5)
    x = rng.normal(size=40)
    assert stats.permutation_p(x, x + 0.1 * rng.normal(size=40)) < 1e-3
    assert stats.permutation_p(x, rng.normal(size=40)) > 0.01


def test_nan_rows_dropped_and_named(caplog):
    df = pd.DataFrame({"encoder": ["a", "b", "c", "d", "e"], "x": [1, 2, np.nan, 4, 5],
                       "y": [1, 3, 2, 5, np.nan]})
    with caplog.at_level("WARNING", logger="spatialprobe"):
        res = stats.correlate_pair(df, "x", "y", id_col="encoder", n_resamples=2000)
    assert res.row["n"] == 3
    assert res.dropped == ["c", "e"]
    assert "dropped 2 row(s)" in caplog.text and "c, e" in caplog.text


@pytest.mark.parametrize("frame, col, err, words", [
    (pd.DataFrame({"x": [1, 2, 3], "y": [1, 2, 4]}), "z", ColumnError, "not in the table"),
    (pd.DataFrame({"x": ["1", "two", "3"], "y": [1, 2, 4]}), "x", ColumnError, "not numeric"),
    (pd.DataFrame({"x": [1, 2], "y": [1, 2]}), "x", DataError, "at least 3"),
    (pd.DataFrame({"x": [1, 1, 1, 1], "y": [1, 2, 3, 4]}), "x", DataError, "constant"),
])
def test_bad_columns(frame, col, err, words):
    with pytest.raises(err, match=words):
        stats.correlate_pair(frame, col, "y", n_resamples=2000)
