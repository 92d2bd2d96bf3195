"""The headline of a result folder in words: which property predicts quality best under each method
(Pearson r with its CI, or the small-n note), and REPA against iREPA per teacher.

Plain pandas, no notebook: the report's first section ("What was found") and the closing lines of
``spatialprobe study run`` both read it, so they say the same thing.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

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


def method_label(y: str) -> str:
    """``fd_digits_repa`` -> ``REPA``; ``gfid_repa_minus_irepa`` -> ``REPA − iREPA``; ``gfid`` -> ``gfid``."""
    if y.endswith("_repa_minus_irepa"):
        return "REPA − iREPA"
    for suffix, name in (("_irepa", "iREPA"), ("_repa", "REPA"), ("_none", "no alignment")):
        if y.endswith(suffix):
            return name
    return y


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
    order = {"REPA": 0, "iREPA": 1, "REPA − iREPA": 2}
    ys = sorted(stats["y"].astype(str).unique(), key=lambda y: (order.get(method_label(y), 3), y))
    for y in ys:
        g = stats[stats["y"].astype(str) == y]
        g = g.assign(_abs=pd.to_numeric(g["pearson_r"], errors="coerce").abs())
        g = g[g["_abs"].notna()]
        if not len(g):
            continue
        best = g.sort_values("_abs", ascending=False, kind="stable").iloc[0]
        q, r = quality_of(str(y)), float(best["pearson_r"])
        if str(y).endswith("_repa_minus_irepa"):
            direction = f"higher {best['x']} goes with a {'larger' if r > 0 else 'smaller'} REPA − iREPA gap"
        else:
            good = (r < 0) == (q in LOWER_IS_BETTER)
            direction = (f"higher {best['x']} goes with {'better' if good else 'worse'} {q} "
                         f"({'lower' if r < 0 else 'higher'} values)")
        rows.append({"method": method_label(str(y)), "y": y, "x": best["x"], "n": int(best["n"]), "r": r,
                     "text": r_text(best), "direction": direction})
    return pd.DataFrame(rows)


def repa_vs_irepa(results: pd.DataFrame, quality: str | None = None) -> pd.DataFrame | None:
    """Per teacher: mean quality under REPA and iREPA (over seeds), the difference and which is better.
    None when the table lacks either method."""
    if results is None or "method" not in results.columns:
        return None
    q = quality or next((c for c in (*LOWER_IS_BETTER, "is", "precision", "recall") if c in results.columns
                         and pd.to_numeric(results[c], errors="coerce").notna().any()), None)
    if q is None or not {"repa", "irepa"} <= set(results["method"].astype(str)):
        return None
    keys = ["encoder"] + (["family"] if "family" in results.columns else [])
    sub = results[results["method"].isin(["repa", "irepa"])]
    wide = sub.pivot_table(index=keys, columns="method", values=q, aggfunc="mean").reset_index()
    wide.columns.name = None
    wide = wide[keys + ["repa", "irepa"]].dropna(subset=["repa", "irepa"])
    wide["repa_minus_irepa"] = wide["repa"] - wide["irepa"]
    lower = q in LOWER_IS_BETTER
    wide["better"] = [("iREPA" if (d > 0) == lower else "REPA") if d != 0 else "tie" for d in wide["repa_minus_irepa"]]
    wide = wide.rename(columns={"repa": f"{q} REPA", "irepa": f"{q} iREPA", "repa_minus_irepa": "REPA − iREPA"})
    wide.attrs["quality"] = q
    return wide.reset_index(drop=True)


def headline_lines(stats: pd.DataFrame | None, results: pd.DataFrame | None = None) -> list[str]:
    """The finding in a few plain lines (what ``study run`` prints at the end)."""
    lines = []
    best = best_predictors(stats) if stats is not None else None
    if best is not None and len(best):
        for _, b in best.iterrows():
            target = "the REPA − iREPA gap" if b["method"] == "REPA − iREPA" else quality_of(str(b["y"]))
            lines.append(f"{b['method']}: {b['x']} predicts {target} best, {b['text']} ({b['direction']})")
    else:
        lines.append("no correlations (too few encoders with a quality number, or none measured)")
    cmp_ = repa_vs_irepa(results) if results is not None else None
    if cmp_ is not None and len(cmp_):
        n_i = int((cmp_["better"] == "iREPA").sum())
        lines.append(f"iREPA beats REPA with {n_i} of {len(cmp_)} teacher(s) on {cmp_.attrs['quality']} "
                     f"(mean REPA − iREPA {cmp_['REPA − iREPA'].mean():.3g})".replace("-", "−"))
    return lines
