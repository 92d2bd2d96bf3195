"""``predict``: where would a new encoder land on the published property-vs-gFID scatter?

For each property x (LP accuracy, LDS, CDS, SRSS, RMSC) an ordinary least-squares line gFID = a + b·x is
fitted on the reference points (by default the 27 SiT-XL/2 points of the paper, ``sit-xl-100k``). A new
encoder's value of x then gives

- ``pred_gfid``: the fitted line at x;
- ``pi_low``/``pi_high``: the t-based prediction interval of a *new observation*,
  ŷ ± t(n−2) · s · sqrt(1 + 1/n + (x − x̄)² / Sxx);
- ``boot_low``/``boot_high``: a bootstrap prediction interval over reference rows (rows resampled with
  replacement, line refitted, a residual of the refit added, percentiles of the result);
- ``rank``: where the predicted gFID would place the encoder among the reference encoders
  (1 = better than every reference point; n+1 = worse than all).

The new encoders' measurement protocol (images, resolution, radii, masks) is compared with the
reference's, and every difference is reported as a caveat: a prediction from a different protocol is a
prediction from a different x-axis.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import reference as _reference
from .config import comma_list, resolve, sha256_file, write_config
from .errors import ColumnError, ConfigError, DataError, InputFileError
from .io import read_table
from .schema import (CONFIG_JSON, MANIFEST_JSON, OFFICIAL_TABLE_CSV, PREDICTIONS_CSV, PROPERTIES, RESULTS_CSV,
                     SUMMARY_CSV)
from .stats import LP_SCALE_RULE, lp_acc_scale, numeric_column

log = logging.getLogger(__name__)

COLUMNS = ("encoder", "x", "value", "pred_gfid", "pi_low", "pi_high", "rank")
EXTRA_COLUMNS = ("boot_low", "boot_high", "n_ref", "ref_r")
PROTOCOL_FIELDS = ("images", "resolution", "radii", "masks")

#: The measurement protocol behind each packaged reference table (irepa-spec §2: the official script
#: scores the collection's images at 256 px with LDS 1/6, CDS d=1..8, SRSS 1/6 and keeps images with
#: >= 64 FG and >= 64 BG patches of 256, FG = any pixel).
REFERENCE_PROTOCOLS: dict[str, dict[str, str]] = {
    "sit-xl-100k": {
        "images": "irepa-collection",
        "resolution": "256",
        "radii": "lds_near=1,lds_far=6,cds_dmax=8,srss_pos=1,srss_neg=6",
        "masks": "irepa-collection,rule=any,filter>=64/64",
    },
}


@dataclass
class PredictConfig:
    """Options of :func:`predict` (and ``spatialprobe predict``)."""

    table: str | None = None  #: CSV/parquet with an ``encoder`` column, or a metrics/study output folder
    reference: str = "sit-xl-100k"  #: packaged table name or a CSV/parquet with the properties and gfid
    x: list[str] = field(default_factory=lambda: list(PROPERTIES))
    y: str = "gfid"
    confidence: float = 0.95
    n_boot: int = 4000
    seed: int = 0
    out: str | None = None
    figure: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.x, str):
            self.x = comma_list(self.x)
        if not self.table:
            raise ConfigError("Give the new encoders' properties: --table new.csv (an 'encoder' column and "
                              "some of lp_acc,lds,cds,srss,rmsc) or a `spatialprobe metrics` output folder.")
        if not self.x:
            raise ConfigError("--x names no property; use e.g. --x lds,cds.")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence={self.confidence} must lie in (0, 1), e.g. 0.95.")
        if self.n_boot < 500:
            raise ConfigError(f"n_boot={self.n_boot} is too few for a stable interval; use >= 500.")


@dataclass
class PredictResult:
    """``predictions`` (one row per encoder and property), the protocols compared and the caveats."""

    predictions: pd.DataFrame
    caveats: list[str]
    protocol_new: dict[str, str | None]
    protocol_reference: dict[str, str | None]
    fits: pd.DataFrame  #: per property: n, slope, intercept, residual s, Pearson r of the reference
    dropped: list[str] = field(default_factory=list)  #: values left out (NaN/inf), one sentence each


# ----------------------------------------------------------------------------- statistics

def ols_fit(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Least-squares line y = a + b·x with what a prediction interval needs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 3:
        raise DataError(f"A prediction interval needs at least 3 reference points; got {n}.")
    xbar, ybar = x.mean(), y.mean()
    sxx = float(((x - xbar) ** 2).sum())
    if sxx <= 0:
        raise DataError("The reference property is constant; no line can be fitted.")
    b = float(((x - xbar) * (y - ybar)).sum() / sxx)
    a = float(ybar - b * xbar)
    resid = y - (a + b * x)
    s = float(np.sqrt((resid ** 2).sum() / (n - 2)))
    r = float(np.corrcoef(x, y)[0, 1])
    return {"n": n, "intercept": a, "slope": b, "s": s, "xbar": float(xbar), "sxx": sxx, "r": r}


def t_interval(fit: dict[str, float], x0: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prediction ŷ and the t-based prediction interval of a new observation at ``x0``."""
    from scipy import stats

    x0 = np.asarray(x0, float)
    n = fit["n"]
    yhat = fit["intercept"] + fit["slope"] * x0
    se = fit["s"] * np.sqrt(1 + 1 / n + (x0 - fit["xbar"]) ** 2 / fit["sxx"])
    t = stats.t.ppf(0.5 + confidence / 2, n - 2)
    return yhat, yhat - t * se, yhat + t * se


def bootstrap_interval(x: np.ndarray, y: np.ndarray, x0: np.ndarray, *, confidence: float = 0.95,
                       n_boot: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap prediction interval over reference rows (pairs bootstrap).

    Each replicate resamples the n rows with replacement, refits the line, and adds to its prediction at
    ``x0`` one residual drawn from the refit, inflated by sqrt(n / (n − 2)) (residuals of a fitted line
    are smaller than the errors). Replicates whose x is constant are redrawn. Returns percentile bounds.
    """
    x, y, x0 = np.asarray(x, float), np.asarray(y, float), np.atleast_1d(np.asarray(x0, float))
    n = len(x)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    xs, ys = x[idx], y[idx]
    bad = np.ptp(xs, axis=1) == 0
    while bad.any():  # only for tiny references
        idx[bad] = rng.integers(0, n, size=(int(bad.sum()), n))
        xs, ys = x[idx], y[idx]
        bad = np.ptp(xs, axis=1) == 0
    xm, ym = xs.mean(1, keepdims=True), ys.mean(1, keepdims=True)
    b = ((xs - xm) * (ys - ym)).sum(1) / ((xs - xm) ** 2).sum(1)
    a = ym[:, 0] - b * xm[:, 0]
    resid = ys - (a[:, None] + b[:, None] * xs)
    # one residual index per replicate, shared by every x0: an encoder's interval then does not depend on
    # which other encoders are predicted in the same call
    pick = resid[np.arange(n_boot), rng.integers(0, n, size=n_boot)][:, None]
    pred = a[:, None] + b[:, None] * x0[None, :] + pick * np.sqrt(n / (n - 2))
    lo, hi = np.percentile(pred, [50 * (1 - confidence), 50 * (1 + confidence)], axis=0)
    return lo, hi


def rank_among(ref_y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """1 + the number of reference points with a lower (better) gFID than each prediction."""
    ref_y = np.sort(np.asarray(ref_y, float))
    return np.searchsorted(ref_y, np.asarray(pred, float), side="left") + 1


# ----------------------------------------------------------------------------- inputs and protocols

def _radii_of(row: pd.Series | dict) -> str | None:
    keys = ("lds_near", "lds_far", "cds_dmax", "srss_pos", "srss_neg")
    if not all(k in row and pd.notna(row[k]) for k in keys):
        return None
    return ",".join(f"{k}={int(row[k])}" for k in keys)


def _store_protocol(path: str) -> dict[str, str | None]:
    """Images and resolution of a feature store, from its manifest (None when it is gone)."""
    p = Path(path)
    manifest = p / MANIFEST_JSON
    if not manifest.is_file():
        found = sorted(p.glob("*/manifest.json")) if p.is_dir() else []
        if len(found) != 1:
            return {"images": None, "resolution": None}
        manifest = found[0]
    try:
        m = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"images": None, "resolution": None}
    fin = m.get("fingerprint_inputs", {})
    src = m.get("source", {}) or {}
    spec = src.get("spec") or src.get("kind") or "?"
    fp = str(fin.get("source") or "")[:12]
    images = f"{spec}:{fp}" if fp else spec
    if src.get("kind") == "irepa-collection":  # extracted from official:DIR, the reference's images
        images = "irepa-collection"
    return {"images": images,
            "resolution": None if fin.get("resolution") is None else str(fin["resolution"])}


def metrics_protocol(folder: str | Path, summary: pd.DataFrame | None = None) -> dict[str, str | None]:
    """The protocol ids of a ``spatialprobe metrics`` output folder (from its ``config.json``,
    ``summary.csv`` and the input stores' manifests): images, resolution, radii, masks.

    Fields that were not recorded (e.g. a store that was moved) are None. When the inputs disagree among
    themselves the field lists every value, separated by ``|``.
    """
    folder = Path(folder)
    cfg_path = folder / CONFIG_JSON
    rec = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    cfg = rec.get("config", {})
    proto: dict[str, str | None] = {k: None for k in PROTOCOL_FIELDS}
    if "protocol" in rec and isinstance(rec["protocol"], dict):  # recorded by the writer itself
        proto.update({k: (None if v is None else str(v)) for k, v in rec["protocol"].items() if k in proto})
        return proto
    per_input = [_store_protocol(i["path"]) for i in rec.get("inputs", []) if i.get("store")]
    for k in ("images", "resolution"):
        vals = sorted({p[k] for p in per_input if p[k] is not None})
        proto[k] = "|".join(vals) if vals else None
    if summary is not None:
        vals = sorted({r for r in (_radii_of(row) for _, row in summary.iterrows()) if r})
        proto["radii"] = "|".join(vals) if vals else None
    if cfg:
        masks = cfg.get("masks")
        if masks is None:
            proto["masks"] = "none"
        else:
            filt = f",filter>={cfg.get('mask_min_fraction', 0.25):g}" if cfg.get("mask_filter") else ",no-filter"
            proto["masks"] = f"{masks},rule={cfg.get('mask_rule', 'any')}{filt}"
    return proto


def load_new(table: str | Path) -> tuple[pd.DataFrame, dict[str, str | None], dict[str, Any]]:
    """The new encoders' properties (one row per encoder), their protocol ids and a source record.

    ``table`` is a CSV/parquet file with an ``encoder`` column, or a folder written by
    ``spatialprobe metrics`` (``summary.csv`` + ``config.json``), by ``correlate --official``
    (``official_table.csv``) or by a study (``results.csv``).
    """
    p = Path(table)
    if not p.exists():
        raise InputFileError(f"New-encoder input {str(p)!r} does not exist; pass a CSV/parquet with an "
                             "'encoder' column or a `spatialprobe metrics` output folder.")
    proto: dict[str, str | None] = {k: None for k in PROTOCOL_FIELDS}
    if p.is_dir():
        for name in (RESULTS_CSV, OFFICIAL_TABLE_CSV, SUMMARY_CSV):
            if (p / name).is_file():
                df = read_table(p / name)
                proto = metrics_protocol(p, df)
                source = {"folder": str(p), "file": name, "sha256": sha256_file(p / name)}
                break
        else:
            raise InputFileError(f"Folder {str(p)!r} holds no summary.csv (a `spatialprobe metrics` output), "
                                 "official_table.csv (`correlate --official`) or results.csv (a study); pass one "
                                 "of those or a CSV file.")
        if name == "results.csv" and {"encoder", "method"} <= set(df.columns):
            df = _one_row_per_encoder(df, p / name)
        if "setting" in df.columns and df["setting"].nunique() > 1:
            default = df[df["setting"] == "default"]
            if default.empty:
                raise DataError(f"{str(p)!r} holds a radius sweep ({', '.join(map(str, df['setting'].unique()))}); "
                                "predict needs one value per encoder: rerun metrics without --sweep.")
            log.info("%s: using the 'default' radius setting of the sweep", p)
            df = default
    else:
        df = read_table(p)
        source = {"table": str(p), "sha256": sha256_file(p)}
        side = p.with_name(CONFIG_JSON)
        if side.is_file():  # a table written next to its metrics config
            proto = metrics_protocol(p.parent, df)
        else:
            proto["radii"] = "|".join(sorted({r for r in (_radii_of(row) for _, row in df.iterrows()) if r})) or None
    if "encoder" not in df.columns:
        raise ColumnError(f"{str(p)!r} has no 'encoder' column (columns: {', '.join(map(str, df.columns))}).")
    if df["encoder"].duplicated().any():
        dup = sorted(df.loc[df["encoder"].duplicated(), "encoder"].astype(str).unique())
        raise DataError(f"{str(p)!r} lists encoder(s) {', '.join(dup)} more than once; keep one row each.")
    return df.reset_index(drop=True), proto, source


def _one_row_per_encoder(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A study's ``results.csv`` has one row per encoder × method × seed, each repeating the encoder's
    properties: keep one row per encoder (the properties), without the teacher-free baseline rows, which
    have none. Rows of one encoder whose properties differ are an error naming them."""
    props = [c for c in PROPERTIES if c in df.columns]
    keep = [c for c in ("encoder", "family") if c in df.columns] + props
    values = df[props].apply(pd.to_numeric, errors="coerce") if props else df[props]
    no_props = values.isna().all(axis=1) if props else pd.Series(True, index=df.index)
    baseline = df["method"].astype(str).eq("none") | df["encoder"].astype(str).eq("none")
    dropped = sorted(set(df.loc[no_props & baseline, "encoder"].astype(str)))
    if dropped:
        log.info("%s: rows of %s (no teacher, no properties) are not predicted", path, ", ".join(dropped))
    out = df.loc[~(no_props & baseline), keep].drop_duplicates()
    dup = out["encoder"][out["encoder"].duplicated()].astype(str).unique()
    if len(dup):
        raise DataError(f"{str(path)!r}: the properties of encoder(s) {', '.join(sorted(dup))} differ between their "
                        "method/seed rows, so there is no one value to predict from; pass a table with one row "
                        "per encoder.")
    return out.reset_index(drop=True)


def load_reference(name: str) -> tuple[pd.DataFrame, dict[str, str | None], dict[str, Any]]:
    """A packaged table (``sit-xl-100k``) or a CSV/parquet path, its protocol ids and a source record."""
    if name in _reference.names():
        proto: dict[str, str | None] = {k: None for k in PROTOCOL_FIELDS}
        proto.update(REFERENCE_PROTOCOLS.get(name, {}))
        return _reference.load(name), proto, {"reference": name}
    p = Path(name)
    if p.suffix.lower() in (".csv", ".tsv", ".parquet") or p.exists():
        if p.is_dir():
            df, proto, source = load_new(p)
            return df, proto, source
        df = read_table(p)
        proto = {k: None for k in PROTOCOL_FIELDS}
        if p.with_name(CONFIG_JSON).is_file():
            proto = metrics_protocol(p.parent, df)
        return df, proto, {"table": str(p), "sha256": sha256_file(p)}
    from .errors import UnknownNameError, did_you_mean

    raise UnknownNameError(f"Unknown reference {name!r}: neither a packaged table ({', '.join(_reference.names())}) "
                           f"nor a file.{did_you_mean(name, _reference.names())}")


def relevant_fields(properties) -> list[str]:
    """Protocol fields a prediction from ``properties`` depends on: images and resolution always, radii
    for LDS/CDS/SRSS, masks for SRSS."""
    props = set(properties)
    out = ["images", "resolution"]
    if props & {"lds", "cds", "srss"}:
        out.append("radii")
    if "srss" in props:
        out.append("masks")
    return out


def protocol_caveats(new: dict[str, str | None], ref: dict[str, str | None],
                     fields: list[str] | tuple[str, ...] = PROTOCOL_FIELDS) -> list[str]:
    """One sentence per protocol field where the new encoders differ from the reference (or where either
    side did not record it)."""
    out = []
    for k in fields:
        a, b = new.get(k), ref.get(k)
        if a is None and b is None:
            out.append(f"{k}: recorded for neither the new encoders nor the reference; the comparison is unchecked.")
        elif a is None:
            out.append(f"{k}: not recorded for the new encoders (reference: {b}); check it matches.")
        elif b is None:
            out.append(f"{k}: not recorded for the reference (new encoders: {a}); check it matches.")
        elif a != b:
            out.append(f"{k} differ: new encoders {a}, reference {b}.")
    return out


# ----------------------------------------------------------------------------- main entry

def _as_reference_scale(col: str, new: pd.Series, ref: pd.Series, new_labels, ref_labels, *,
                        new_what: str, ref_what: str) -> pd.Series:
    """LP accuracy of the new encoders in the reference's scale. Each side must use one scale
    (:func:`spatialprobe.stats.lp_acc_scale`: a fraction beside percents is an error naming the rows);
    a fraction table (``probe`` writes 0.69) against a percent reference (69.1) is multiplied by 100, and
    the other way round divided, with a log line saying so."""
    if col != "lp_acc":
        return new
    s_new = lp_acc_scale(new, new_labels, what=new_what)
    s_ref = lp_acc_scale(ref, ref_labels, what=ref_what)
    if s_new and s_ref and s_new != s_ref:
        log.info("lp_acc of the new encoders is a %s and the reference's a %s (%s): %s by 100", s_new, s_ref,
                 LP_SCALE_RULE, "multiplying" if s_new == "fraction" else "dividing")
        return new * 100 if s_new == "fraction" else new / 100
    return new


def _finite_values(values: pd.Series, labels: pd.Series, col: str, what: str) -> tuple[pd.Series, list[str]]:
    """``values`` with NaN and ±inf masked out, and one sentence per kind naming the rows left out."""
    arr = values.to_numpy(float)
    notes = []
    for kind, mask in (("inf", np.isinf(arr)), ("missing (NaN or empty)", np.isnan(arr))):
        if mask.any():
            names = labels[mask].astype(str).tolist()
            notes.append(f"{what}: {col} is {kind} for {', '.join(names[:10])}"
                         f"{f' (+{len(names) - 10} more)' if len(names) > 10 else ''}: left out")
    return values.where(np.isfinite(arr)), notes


def predict(table: pd.DataFrame | str | Path | None = None, *, config: str | Path | None = None,
            **options) -> PredictResult:
    """Predict gFID for new encoders from each property, with prediction intervals and ranks.

    ``table`` is a DataFrame with an ``encoder`` column, a CSV/parquet path or a metrics/study folder.
    Options are the fields of :class:`PredictConfig`. With ``out=DIR`` it writes ``predictions.csv``
    (columns ``encoder,x,value,pred_gfid,pi_low,pi_high,rank`` then ``boot_low,boot_high,n_ref,ref_r``),
    ``prediction_panel.png/.pdf`` and ``config.json``.

    Example:
        >>> predict("out/metrics", reference="sit-xl-100k", out="out/predict").predictions
    """
    frame = table if isinstance(table, pd.DataFrame) else None
    if table is not None and frame is None:
        options["table"] = str(table)
    if frame is not None:
        options.setdefault("table", "<DataFrame>")
    cfg = resolve(PredictConfig, config, **options)
    if frame is not None:
        if "encoder" not in frame.columns:
            raise ColumnError("The new-encoder table has no 'encoder' column.")
        new, proto_new, source = frame.reset_index(drop=True), {k: None for k in PROTOCOL_FIELDS}, {"table": "<DataFrame>"}
        proto_new["radii"] = "|".join(sorted({r for r in (_radii_of(row) for _, row in new.iterrows()) if r})) or None
    else:
        new, proto_new, source = load_new(cfg.table)
    new_what = source.get("table") or f"{source.get('folder')}/{source.get('file')}"
    if new.empty:
        raise DataError(f"The new-encoder input {new_what!r} has no rows (a header only?): nothing to predict. "
                        "Pass a table with one row per encoder.")
    ref, proto_ref, ref_source = load_reference(cfg.reference)
    ref_what = f"reference {cfg.reference!r}"
    if ref.empty:
        raise DataError(f"The {ref_what} has no rows (a header only?); pass a table of reference points.")
    if cfg.y not in ref.columns:
        raise ColumnError(f"Reference {cfg.reference!r} has no {cfg.y!r} column (columns: {', '.join(map(str, ref.columns))}).")
    missing_ref = [c for c in cfg.x if c not in ref.columns]
    if missing_ref:
        raise ColumnError(f"Reference {cfg.reference!r} lacks the propert(y/ies) {', '.join(missing_ref)}.")
    xs = [c for c in cfg.x if c in new.columns]
    if not xs:
        raise ColumnError(f"The new-encoder table has none of the properties {', '.join(cfg.x)} "
                          f"(columns: {', '.join(map(str, new.columns))}).")
    skipped = [c for c in cfg.x if c not in new.columns]
    if skipped:
        log.info("the new encoders have no %s: no prediction from %s", ", ".join(skipped),
                 "it" if len(skipped) == 1 else "them")
    rows, fits, dropped = [], [], []
    ref_id = next((c for c in ("point_id", "encoder", "id") if c in ref.columns), None)
    ref_labels = (f"{ref_id} " + ref[ref_id].astype(str)) if ref_id else ("row " + ref.index.astype(str).to_series(index=ref.index))
    new_labels = "encoder " + new["encoder"].astype(str)
    yref_all, why = _finite_values(numeric_column(ref, cfg.y, what=ref_what, labels=ref_labels), ref_labels, cfg.y, ref_what)
    dropped += why
    for k, col in enumerate(xs):
        xr, why = _finite_values(numeric_column(ref, col, what=ref_what, labels=ref_labels), ref_labels, col, ref_what)
        dropped += why
        ok = xr.notna() & yref_all.notna()
        xv, yv = xr[ok].to_numpy(float), yref_all[ok].to_numpy(float)
        if len(xv) < 3:
            raise DataError(f"The {ref_what} has {len(xv)} row(s) with finite {col} and {cfg.y}; a prediction "
                            "interval needs at least 3.")
        fit = ols_fit(xv, yv)
        fits.append({"x": col, **{k2: fit[k2] for k2 in ("n", "slope", "intercept", "s", "r")}})
        raw, why = _finite_values(numeric_column(new, col, what=repr(new_what), labels=new_labels),
                                  new_labels, col, repr(new_what))
        dropped += why
        vals = _as_reference_scale(col, raw, xr, new_labels, ref_labels, new_what=repr(new_what), ref_what=ref_what)
        have = vals.notna()
        if not have.any():
            continue
        x0 = vals[have].to_numpy(float)
        yhat, lo, hi = t_interval(fit, x0, cfg.confidence)
        blo, bhi = bootstrap_interval(xv, yv, x0, confidence=cfg.confidence, n_boot=cfg.n_boot, seed=cfg.seed + k)
        rk = rank_among(yv, yhat)
        outside = (x0 < xv.min()) | (x0 > xv.max())
        for j, enc in enumerate(new.loc[have, "encoder"].astype(str)):
            rows.append({"encoder": enc, "x": col, "value": x0[j], "pred_gfid": yhat[j], "pi_low": lo[j],
                         "pi_high": hi[j], "rank": int(rk[j]), "boot_low": blo[j], "boot_high": bhi[j],
                         "n_ref": fit["n"], "ref_r": fit["r"]})
            if outside[j]:
                log.info("%s: %s = %.4g lies outside the reference range [%.4g, %.4g] (extrapolation)",
                         enc, col, x0[j], xv.min(), xv.max())
    for d in dropped:
        log.warning("%s", d)
    pred = pd.DataFrame(rows, columns=list(COLUMNS) + list(EXTRA_COLUMNS))
    if pred.empty:
        raise DataError(f"No prediction: {new_what!r} has no finite value of {', '.join(xs)}"
                        f"{' (' + '; '.join(dropped) + ')' if dropped else ''}. Fill in the properties.")
    caveats = protocol_caveats(proto_new, proto_ref, relevant_fields(pred["x"].unique()))
    if caveats:
        log.warning("the new encoders' protocol differs from the reference's or is unrecorded (%s): the x-axes "
                    "may not be comparable", ", ".join(c.split(":")[0].split(" ")[0] for c in caveats))
    result = PredictResult(predictions=pred, caveats=caveats, protocol_new=proto_new,
                           protocol_reference=proto_ref, fits=pd.DataFrame(fits), dropped=dropped)
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        pred.to_csv(out / PREDICTIONS_CSV, index=False)
        extra: dict[str, Any] = {"input": source, "reference_input": ref_source, "protocol_new": proto_new,
                                 "protocol_reference": proto_ref, "caveats": caveats, "dropped": dropped,
                                 "fits": result.fits.to_dict(orient="records")}
        if cfg.figure:
            from .figures import prediction_panel

            fam = "family" if "family" in ref.columns else None
            paths = prediction_panel(ref, list(cfg.x), cfg.y, pred, confidence=cfg.confidence, family_col=fam,
                                     out=out / "prediction_panel")
            extra["figures"] = [str(p) for p in paths]
        write_config(out / CONFIG_JSON, cfg, **extra)
        log.info("wrote %s", out)
    return result


def leave_one_out(reference: str | pd.DataFrame = "sit-xl-100k", x: str = "lds", y: str = "gfid", *,
                  confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Predict each reference point from the others: one row per point with its published ``y``, the
    prediction, both intervals and whether each interval contains the published value."""
    ref = _reference.load(reference) if isinstance(reference, str) else reference
    xr, yr = pd.to_numeric(ref[x], errors="coerce"), pd.to_numeric(ref[y], errors="coerce")
    ok = xr.notna() & yr.notna()
    xv, yv = xr[ok].to_numpy(float), yr[ok].to_numpy(float)
    ids = ref.loc[ok, "point_id" if "point_id" in ref.columns else "encoder"].astype(str).to_numpy()
    rows = []
    for i in range(len(xv)):
        keep = np.arange(len(xv)) != i
        fit = ols_fit(xv[keep], yv[keep])
        yhat, lo, hi = t_interval(fit, xv[i:i + 1], confidence)
        blo, bhi = bootstrap_interval(xv[keep], yv[keep], xv[i:i + 1], confidence=confidence, n_boot=n_boot,
                                      seed=seed + i)
        rows.append({"point": ids[i], "x": x, "value": xv[i], y: yv[i], "pred": yhat[0], "pi_low": lo[0],
                     "pi_high": hi[0], "boot_low": blo[0], "boot_high": bhi[0],
                     "in_pi": bool(lo[0] <= yv[i] <= hi[0]), "in_boot": bool(blo[0] <= yv[i] <= bhi[0])})
    return pd.DataFrame(rows)
