"""The headline of a result folder in words: which property predicts quality best under each method
(Pearson r with its CI, or the small-n note), and REPA against iREPA and PixelREPA per teacher.

Plain pandas, no notebook: the report's first section ("What was found") and the closing lines of
``spatialprobe study run`` both read it, so they say the same thing.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ..schema import COMPARED_WITH_REPA, METHOD_LABELS

try:
    from ..stats import MIN_N_FOR_CI
except ImportError:  # the same rule as stats.MIN_N_FOR_CI: below 5 points no CI or permutation p is shown
    MIN_N_FOR_CI = 5

SMALL_N = "n too small for a CI / permutation p"
#: quality columns where lower is better (FID-like); the others (IS, precision, recall) are higher-better
LOWER_IS_BETTER = ("gfid", "fd_digits", "sfid")


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def gap_method(y: str) -> str | None:
    """The method m of a ``<q>_repa_minus_<m>`` column (``gfid_repa_minus_pixelrepa`` -> ``pixelrepa``), else None."""
    return next((m for m in COMPARED_WITH_REPA if y.endswith(f"_repa_minus_{m}")), None)


def gap_label(method: str) -> str:
    """``irepa`` -> ``REPA − iREPA``."""
    return f"REPA − {METHOD_LABELS.get(method, method)}"


def method_label(y: str) -> str:
    """``fd_digits_repa`` -> ``REPA``; ``gfid_repa_minus_irepa`` -> ``REPA − iREPA``; ``gfid`` -> ``gfid``."""
    gap = gap_method(y)
    if gap:
        return gap_label(gap)
    for key in sorted(METHOD_LABELS, key=len, reverse=True):  # the longest suffix first (pixelrepa before repa)
        if y.endswith("_" + key):
            return METHOD_LABELS[key]
    return y


#: the order methods are listed in: each method, then each gap to REPA
METHOD_ORDER = [METHOD_LABELS[m] for m in ("repa", *COMPARED_WITH_REPA, "none")] + [gap_label(m)
                                                                                    for m in COMPARED_WITH_REPA]


def target_words(method: str, y: str) -> str:
    """What a best predictor predicts: ``the REPA − iREPA gap`` or the quality metric (``fd_digits``)."""
    return f"the {method} gap" if gap_method(y) else quality_of(y)


def quality_of(y: str) -> str:
    """The quality metric a y column holds (``fd_digits_repa`` -> ``fd_digits``)."""
    for q in (*LOWER_IS_BETTER, "is", "precision", "recall"):
        if y == q or y.startswith(q + "_"):
            return q
    return y


def r_text(row: pd.Series | dict, *, with_n: bool = True) -> str:
    """``r = −0.85, 95 % CI [−0.91, −0.76], n = 27`` or, below :data:`MIN_N_FOR_CI` points,
    ``r = −0.99, n = 3 (n too small for a CI / permutation p)``."""
    r, n = _num(row.get("pearson_r")), _num(row.get("n"))
    if r is None:
        return "r undefined" + (f", n = {int(n)}" if n is not None and with_n else "")
    head = f"r = {r:+.2f}".replace("+", "").replace("-", "−")
    if n is not None and n < MIN_N_FOR_CI:
        return f"{head}, n = {int(n)} ({SMALL_N}; needs n ≥ {MIN_N_FOR_CI})"
    lo, hi = _num(row.get("pearson_ci_low")), _num(row.get("pearson_ci_high"))
    ci = "" if lo is None or hi is None else f", CI [{lo:.2f}, {hi:.2f}]".replace("-", "−")
    return head + ci + (f", n = {int(n)}" if n is not None and with_n else "")


def best_predictors(stats: pd.DataFrame) -> pd.DataFrame:
    """Per y (one per method): the property with the largest |Pearson r|, with r, its CI (or the small-n
    note), n and the direction in words. Columns: method, y, x, n, r, text, direction."""
    rows = []
    if stats is None or not len(stats):
        return pd.DataFrame(columns=["method", "y", "x", "n", "r", "text", "direction"])
    order = {label: i for i, label in enumerate(METHOD_ORDER)}
    ys = sorted(stats["y"].astype(str).unique(), key=lambda y: (order.get(method_label(y), len(order)), y))
    for y in ys:
        g = stats[stats["y"].astype(str) == y]
        g = g.assign(_abs=pd.to_numeric(g["pearson_r"], errors="coerce").abs())
        g = g[g["_abs"].notna()]
        if not len(g):
            continue
        best = g.sort_values("_abs", ascending=False, kind="stable").iloc[0]
        q, r = quality_of(str(y)), float(best["pearson_r"])
        if gap_method(str(y)):
            direction = (f"higher {best['x']} goes with a {'larger' if r > 0 else 'smaller'} "
                         f"{method_label(str(y))} gap")
        else:
            good = (r < 0) == (q in LOWER_IS_BETTER)
            direction = (f"higher {best['x']} goes with {'better' if good else 'worse'} {q} "
                         f"({'lower' if r < 0 else 'higher'} values)")
        rows.append({"method": method_label(str(y)), "y": y, "x": best["x"], "n": int(best["n"]), "r": r,
                     "text": r_text(best), "direction": direction})
    return pd.DataFrame(rows)


def repa_vs(results: pd.DataFrame, method: str = "irepa", quality: str | None = None) -> pd.DataFrame | None:
    """Per teacher: mean quality under REPA and ``method`` (iREPA, PixelREPA; over seeds), the difference
    ``REPA − <method>`` and which is better. None when the table lacks either method."""
    if results is None or "method" not in results.columns:
        return None
    q = quality or next((c for c in (*LOWER_IS_BETTER, "is", "precision", "recall") if c in results.columns
                         and pd.to_numeric(results[c], errors="coerce").notna().any()), None)
    if q is None or not {"repa", method} <= set(results["method"].astype(str)):
        return None
    keys = ["encoder"] + (["family"] if "family" in results.columns else [])
    label, gap = METHOD_LABELS.get(method, method), gap_label(method)
    sub = results[results["method"].isin(["repa", method])]
    wide = sub.pivot_table(index=keys, columns="method", values=q, aggfunc="mean").reset_index()
    wide.columns.name = None
    wide = wide[keys + ["repa", method]].dropna(subset=["repa", method])
    wide[gap] = wide["repa"] - wide[method]
    lower = q in LOWER_IS_BETTER
    wide["better"] = [(label if (d > 0) == lower else "REPA") if d != 0 else "tie" for d in wide[gap]]
    wide = wide.rename(columns={"repa": f"{q} REPA", method: f"{q} {label}"})
    wide.attrs["quality"] = q
    wide.attrs["method"] = method
    return wide.reset_index(drop=True)


def repa_vs_irepa(results: pd.DataFrame, quality: str | None = None) -> pd.DataFrame | None:
    """:func:`repa_vs` for iREPA."""
    return repa_vs(results, "irepa", quality)


def versus_line(cmp_: pd.DataFrame) -> str:
    """``iREPA beats REPA with 2 of 3 teacher(s) on fd_digits (mean REPA − iREPA 12.5)``."""
    m = cmp_.attrs["method"]
    label, gap = METHOD_LABELS.get(m, m), gap_label(m)
    n_better = int((cmp_["better"] == label).sum())
    return (f"{label} beats REPA with {n_better} of {len(cmp_)} teacher(s) on {cmp_.attrs['quality']} "
            f"(mean {gap} {cmp_[gap].mean():.3g})".replace("-", "−"))


def headline_lines(stats: pd.DataFrame | None, results: pd.DataFrame | None = None) -> list[str]:
    """The finding in a few plain lines (what ``study run`` prints at the end)."""
    lines = []
    best = best_predictors(stats) if stats is not None else None
    if best is not None and len(best):
        for _, b in best.iterrows():
            lines.append(f"{b['method']}: {b['x']} predicts {target_words(b['method'], str(b['y']))} best, "
                         f"{b['text']} ({b['direction']})")
    else:
        lines.append("no correlations (too few encoders with a quality number, or none measured)")
    for m in COMPARED_WITH_REPA:
        cmp_ = repa_vs(results, m) if results is not None else None
        if cmp_ is not None and len(cmp_):
            lines.append(versus_line(cmp_))
    return lines
