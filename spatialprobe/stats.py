"""Correlations with the uncertainty a 27-point study needs.

For each (x, y) pair: n, Pearson r with a seeded bootstrap CI over rows, a two-sided permutation
p-value, Spearman rho, Kendall tau, leave-one-out and leave-one-family-out ranges of r, and an
optional partial correlation controlling for another column.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from .errors import ColumnError, DataError

log = logging.getLogger(__name__)

#: Column order of the correlation table (the first 13 are a stable contract).
COLUMNS = [
    "x", "y", "n", "pearson_r", "pearson_ci_low", "pearson_ci_high", "pearson_p_perm",
    "spearman_rho", "kendall_tau", "loo_min", "loo_max", "lofo_min", "lofo_max",
    "pearson_p", "spearman_p", "kendall_p", "n_families", "control", "partial_r", "note",
]

#: Below this many rows a correlation reports r (and Spearman, Kendall with their exact p) but no
#: interval and no Pearson p. Why 5:
#: - the permutation test: n rows have n! pairings, so the smallest two-sided p it can give is 2/n!
#:   (the observed pairing and its mirror): 2/6 = 0.33 at n = 3, 2/24 = 0.083 at n = 4, 2/120 = 0.017
#:   at n = 5. Below 5 no data can reach p < 0.05.
#: - the bootstrap over rows: a resample that draws at most 2 distinct rows has r = ±1 or none. That is
#:   78 % of resamples at n = 3 (21 of 27), 34 % at n = 4 (88 of 256), 9.8 % at n = 5 (305 of 3125), so
#:   below 5 both 2.5 % tails of a 95 % interval are such degenerate resamples: the "interval" reports
#:   the resampling, not the data (n = 3 gave [-1.000, -0.994] for r = -0.994).
#: - the t-based Pearson p rests on normality that 3 or 4 points cannot show either.
MIN_N_FOR_CI = 5
#: leave-one-out fits of n - 1 < 3 points are r = ±1 by construction, so they are not reported
MIN_N_FOR_LOO = 4
SMALL_N_NOTE = "n too small for a CI / permutation p"


def small_n_note(n: int) -> str:
    """The table's ``note`` for a pair with ``n`` rows: empty from :data:`MIN_N_FOR_CI` on."""
    return f"{SMALL_N_NOTE} (n = {int(n)} < {MIN_N_FOR_CI}): r only" if int(n) < MIN_N_FOR_CI else ""


def describe_r(row, *, digits: int = 3, ci_digits: int = 2, sep: str = "  ") -> str:
    """``r = -0.812  [-0.95, -0.41]`` for one row of the correlation table, or ``r = -0.994  (n too
    small for a CI / permutation p)`` below :data:`MIN_N_FOR_CI` (also for tables written before the
    ``note`` column, whose CI is then shown as recorded only when n allows it)."""
    get = row.get if hasattr(row, "get") else lambda k, d=None: getattr(row, k, d)
    r, n = get("pearson_r"), get("n")
    head = f"r = {float(r):.{digits}f}"
    lo, hi = get("pearson_ci_low"), get("pearson_ci_high")
    small = n is not None and pd.notna(n) and int(n) < MIN_N_FOR_CI
    if small or lo is None or hi is None or not (np.isfinite(float(lo)) and np.isfinite(float(hi))):
        return f"{head}{sep}({SMALL_N_NOTE})" if small else f"{head}{sep}(no CI)"
    return f"{head}{sep}[{float(lo):.{ci_digits}f}, {float(hi):.{ci_digits}f}]"


def _pearson_along(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    xm = x - x.mean(axis=axis, keepdims=True)
    ym = y - y.mean(axis=axis, keepdims=True)
    num = (xm * ym).sum(axis=axis)
    den = np.sqrt((xm * xm).sum(axis=axis) * (ym * ym).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def pearson(x, y) -> float:
    """Plain Pearson r of two 1-D sequences."""
    return float(_pearson_along(np.asarray(x, float), np.asarray(y, float)))


def bootstrap_ci(x, y, *, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0,
                 method: str = "BCa") -> tuple[float, float]:
    """Bootstrap CI of Pearson r, resampling (x, y) rows together."""
    with warnings.catch_warnings():  # BCa warns on degenerate (e.g. perfectly linear) data; handled below
        warnings.simplefilter("ignore")
        res = sps.bootstrap((np.asarray(x, float), np.asarray(y, float)), _pearson_along, paired=True,
                            vectorized=True, n_resamples=n_resamples, confidence_level=confidence,
                            method=method, rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        lo, hi = _percentile_ci_of_defined(np.asarray(x, float), np.asarray(y, float), n_resamples, confidence, seed)
    return lo, hi


def _percentile_ci_of_defined(x: np.ndarray, y: np.ndarray, n_resamples: int, confidence: float,
                              seed: int) -> tuple[float, float]:
    """Percentile CI over the resamples whose r is defined.

    BCa degenerates on small n (with n = 5, 0.16 % of resamples draw one row five times, so r is 0/0 and
    scipy returns NaN for the whole interval, percentile included) and on perfectly linear data. Dropping
    the undefined resamples keeps an honest, wide interval instead of none; NaN when fewer than half are
    defined (e.g. a constant column).
    """
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_resamples, len(x)))
    r = _pearson_along(x[idx], y[idx])
    r = r[np.isfinite(r)]
    if len(r) < n_resamples / 2:
        return float("nan"), float("nan")
    a = (1.0 - confidence) / 2.0
    lo, hi = np.clip(np.quantile(r, [a, 1.0 - a]), -1.0, 1.0)  # |r| <= 1 up to rounding
    return float(lo), float(hi)


def permutation_p(x, y, *, n_resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Pearson r (y shuffled against x)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    res = sps.permutation_test((x,), lambda xs, axis=-1: _pearson_along(xs, y, axis=axis),
                               permutation_type="pairings", n_resamples=n_resamples,
                               alternative="two-sided", vectorized=True,
                               rng=np.random.default_rng(seed))
    return float(res.pvalue)


def leave_one_out(x, y) -> tuple[float, float]:
    """Min and max of Pearson r over the n fits that each drop one row."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    keep = ~np.eye(len(x), dtype=bool)
    rs = _pearson_along(np.broadcast_to(x, keep.shape)[keep].reshape(len(x), -1),
                        np.broadcast_to(y, keep.shape)[keep].reshape(len(x), -1))
    return float(np.nanmin(rs)), float(np.nanmax(rs))


def leave_one_family_out(x, y, families) -> tuple[float, float, int]:
    """Min/max of r over fits that each drop one known family (rows without family always stay)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    fam = pd.Series(list(families), dtype="object")
    known = [f for f in pd.unique(fam.dropna()) if str(f).strip()]
    rs = []
    for f in known:
        keep = (fam != f).to_numpy()
        if keep.sum() >= 3:
            rs.append(pearson(x[keep], y[keep]))
    rs = [r for r in rs if np.isfinite(r)]
    if not rs:
        return float("nan"), float("nan"), len(known)
    return float(min(rs)), float(max(rs)), len(known)


#: residuals smaller than this fraction of the centred input mean z explains (almost) all of it
RESIDUAL_TOL = 1e-8


def partial_correlation(x, y, z) -> float:
    """Pearson r of x and y after removing a linear fit on z (with intercept) from each.

    NaN when z explains x or y completely (e.g. z is x itself): the residuals are rounding noise and their
    correlation means nothing."""
    z = np.column_stack([np.ones(len(z)), np.asarray(z, float)])
    out = []
    for v in (np.asarray(x, float), np.asarray(y, float)):
        res = v - z @ np.linalg.lstsq(z, v, rcond=None)[0]
        scale = np.linalg.norm(v - v.mean())
        if not scale > 0 or np.linalg.norm(res) <= RESIDUAL_TOL * scale:
            return float("nan")
        out.append(res)
    return pearson(*out)


#: LP accuracy scale, per value: 0 <= v <= 1 is a fraction (``probe`` writes 0.69), 1 < v <= 100 a percent
#: (the paper's tables, 69.1). A column must use one scale: a mix is an error naming the rows of each.
LP_SCALE_RULE = "values <= 1 are read as fractions, values in (1, 100] as percents"


def lp_acc_scale(values, labels, *, what: str, column: str = "lp_acc") -> str | None:
    """``"fraction"`` or ``"percent"``: the one scale of a column of LP accuracies (NaN/inf ignored; None
    when no value is finite). Values outside [0, 100], or fractions beside percents, are a
    :class:`DataError` naming the rows (``labels``, one per value) and the fix."""
    v = pd.Series(np.asarray(values, float))
    lab = pd.Series([str(x) for x in labels])
    fin = np.isfinite(v.to_numpy())

    def show(mask) -> str:
        names = [f"{lab[i]} ({v[i]:g})" for i in np.flatnonzero(mask)]
        return ", ".join(names[:6]) + (f" … (+{len(names) - 6} more)" if len(names) > 6 else "")

    out = fin & ((v < 0) | (v > 100)).to_numpy()
    if out.any():
        raise DataError(f"{column} of {what} is not an accuracy for {show(out)}: an LP accuracy is a fraction "
                        "(0-1) or a percent (0-100). Fix those values.")
    frac = fin & (v <= 1).to_numpy()
    pct = fin & (v > 1).to_numpy()
    if frac.any() and pct.any():
        raise DataError(f"{column} of {what} mixes fractions and percents ({LP_SCALE_RULE}): fractions "
                        f"{show(frac)}; percents {show(pct)}. Write every {column} in one scale, e.g. "
                        f"{v[np.flatnonzero(frac)[0]] * 100:g} instead of {v[np.flatnonzero(frac)[0]]:g}.")
    return "fraction" if frac.any() else "percent" if pct.any() else None


@dataclass
class PairResult:
    row: dict
    dropped: list[str]


def numeric_column(df: pd.DataFrame, col: str, *, what: str = "the table",
                   labels: pd.Series | None = None) -> pd.Series:
    """Column ``col`` as floats. Empty cells become NaN (the caller drops and names them); a text cell
    (``0.3O``) or a boolean column is a :class:`ColumnError` naming the value and its row."""
    if col not in df.columns:
        raise ColumnError(f"Column {col!r} is not in {what}. Columns: {', '.join(map(str, df.columns))}.")
    s = df[col]
    if pd.api.types.is_bool_dtype(s):
        raise ColumnError(f"Column {col!r} of {what} is not numeric (dtype {s.dtype}).")
    if not pd.api.types.is_numeric_dtype(s):  # object or str: numbers written as text are fine, words are not
        text = s.where(s.isna(), s.astype(str).str.strip())
        conv = pd.to_numeric(text.replace("", np.nan), errors="coerce")
        bad = s[conv.isna() & text.notna() & (text != "")]
        if len(bad):
            where = labels[bad.index[0]] if labels is not None else f"row {bad.index[0]}"
            raise ColumnError(
                f"Column {col!r} of {what} is not numeric: {bad.iloc[0]!r} in {where}"
                f"{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}. Fix the value(s) or choose "
                "another column.")
        s = conv
    return s.astype(float)


def correlate_pair(df: pd.DataFrame, x: str, y: str, *, family_col: str | None = None,
                   control: str | None = None, id_col: str | None = None, n_resamples: int = 10_000,
                   confidence: float = 0.95, seed: int = 0) -> PairResult:
    """All statistics for one (x, y) pair; rows with NaN in x, y (or control) are dropped and named."""
    labels = df[id_col].astype(str) if id_col and id_col in df.columns else pd.Series(df.index.astype(str), index=df.index)
    named = ("row " + labels) if not (id_col and id_col in df.columns) else (f"{id_col} " + labels)
    cols = {"x": numeric_column(df, x, labels=named), "y": numeric_column(df, y, labels=named)}
    if control:
        cols["z"] = numeric_column(df, control, labels=named)
    data = pd.DataFrame(cols, index=df.index)
    bad = ~np.isfinite(data.to_numpy(float)).all(axis=1)  # NaN and ±inf alike: no value to correlate
    bad = pd.Series(bad, index=df.index)
    dropped = labels[bad].tolist()
    if dropped:
        log.warning("%s vs %s: dropped %d row(s) with NaN or inf: %s", x, y, len(dropped), ", ".join(dropped))
    data = data[~bad]
    n = len(data)
    if n < 3:
        raise DataError(f"{x} vs {y}: only {n} usable row(s) of {len(df)} after dropping those with NaN or inf"
                        f"{' (' + ', '.join(dropped[:10]) + ')' if dropped else ''}; a correlation needs at least 3. "
                        "Fill in the values or pass a table with more rows.")
    for name, key in ((x, "x"), (y, "y")) + (((control, "z"),) if control else ()):
        if np.ptp(data[key].to_numpy()) == 0:
            raise DataError(f"Column {name!r} is constant over the {n} usable rows, so r is undefined. "
                            "Drop it from --x/--y.")
    xv, yv = data["x"].to_numpy(), data["y"].to_numpy()
    r, p = sps.pearsonr(xv, yv)
    rho, rho_p = sps.spearmanr(xv, yv)
    tau, tau_p = sps.kendalltau(xv, yv)
    nan = float("nan")
    small = n < MIN_N_FOR_CI
    if small:
        log.warning("%s vs %s: r = %.3f over n = %d rows, %s (n >= %d needed).", x, y, r, n, SMALL_N_NOTE,
                    MIN_N_FOR_CI)
        lo, hi, p_perm, p = nan, nan, nan, nan
    else:
        lo, hi = bootstrap_ci(xv, yv, n_resamples=n_resamples, confidence=confidence, seed=seed)
        p_perm = permutation_p(xv, yv, n_resamples=n_resamples, seed=seed)
    loo = leave_one_out(xv, yv) if n >= MIN_N_FOR_LOO else (nan, nan)
    lofo = (float("nan"), float("nan"), 0)
    if family_col:
        if family_col not in df.columns:
            raise ColumnError(f"Family column {family_col!r} is not in the table. Columns: {', '.join(map(str, df.columns))}.")
        lofo = leave_one_family_out(xv, yv, df.loc[data.index, family_col].where(lambda s: s.notna(), None))
    row = {
        "x": x, "y": y, "n": n, "pearson_r": float(r), "pearson_ci_low": lo, "pearson_ci_high": hi,
        "pearson_p_perm": p_perm,
        "spearman_rho": float(rho), "kendall_tau": float(tau), "loo_min": loo[0], "loo_max": loo[1],
        "lofo_min": lofo[0], "lofo_max": lofo[1], "pearson_p": float(p), "spearman_p": float(rho_p),
        "kendall_p": float(tau_p), "n_families": lofo[2] if family_col else None,
        "control": control, "partial_r": _partial(x, y, control, xv, yv, data) if control else float("nan"),
        "note": small_n_note(n),
    }
    return PairResult(row, dropped)


def _partial(x: str, y: str, control: str, xv: np.ndarray, yv: np.ndarray, data: pd.DataFrame) -> float:
    if control in (x, y):
        log.warning("partial r of %s vs %s controlling for %s is undefined (the control is the %s column "
                    "itself): reported as NaN.", x, y, control, "x" if control == x else "y")
        return float("nan")
    r = partial_correlation(xv, yv, data["z"].to_numpy())
    if not np.isfinite(r):
        log.warning("partial r of %s vs %s controlling for %s is undefined (%s explains %s or %s linearly): "
                    "reported as NaN.", x, y, control, control, x, y)
    return r


def correlation_table(df: pd.DataFrame, xs: list[str], ys: list[str], **kw) -> pd.DataFrame:
    """One row per (x, y) pair, columns :data:`COLUMNS`."""
    if not df.index.is_unique:  # rows are addressed by index label below
        df = df.reset_index(drop=True)
    rows = [correlate_pair(df, x, y, **kw).row for y in ys for x in xs]
    return pd.DataFrame(rows, columns=COLUMNS)
