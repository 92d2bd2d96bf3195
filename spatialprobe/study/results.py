"""The results table (one row per encoder/variant × method × seed) and the correlations on it.

``results.csv`` is long: properties, the quality columns (``fd_digits`` or ``gfid``/``sfid``/``is``/
``precision``/``recall``), the protocol id and the fingerprint of every input node. ``wide.csv``
(published as ``OUT/correlate/table.csv``) has one row per encoder with the quality per method
averaged over seeds (``<q>_<method>``, ``<q>_<method>_sd``, ``<q>_<method>_n``) and the REPA − iREPA and
REPA − PixelREPA differences; ``correlate`` runs on it, once per y.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..schema import DONE_JSON, EXTRA_QUALITY, LP_ACC, RESULTS_CSV, RESULTS_PARQUET, SPATIAL_METRICS, WIDE_CSV
from .plan import Node, canonical_id, family_of
from .spec import StudySpec, repa_differences
from .state import node_dir, read_json

log = logging.getLogger("spatialprobe.study")

PROPERTY_COLS = (LP_ACC, *(c for m in SPATIAL_METRICS for c in (m, f"{m}_nan")))


def _done(out: Path, name: str, by_name: dict[str, Node]) -> dict[str, Any] | None:
    n = by_name.get(name)
    if n is None:
        return None
    d = read_json(node_dir(out, n) / DONE_JSON)
    return d if d and d.get("fingerprint") == n.fingerprint else None


def _known_table(spec: StudySpec):
    """encoder id -> published quality, from a packaged reference or a CSV (ambiguous rows skipped)."""
    import pandas as pd

    from .. import reference
    from ..io import read_table

    src = spec.known_gfid
    df = reference.load(src) if src in reference.names() else read_table(src)
    col = spec.known_gfid_col
    if "encoder" not in df.columns or col not in df.columns:
        raise DataError(f"known_gfid {src!r} needs columns 'encoder' and {col!r}; it has {', '.join(df.columns)}.")
    out: dict[str, float] = {}
    for _, r in df.iterrows():
        ids = [i.strip() for i in str(r["encoder"]).split("|") if i.strip()]
        if len(ids) == 1 and pd.notna(r[col]):
            out[ids[0]] = float(r[col])
    return out


def build_tables(spec: StudySpec, node: Node, work: Path, out: Path, by_name: dict[str, Node]) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    q = spec.quality_col
    props: dict[str, dict[str, Any]] = {}
    fps: dict[str, dict[str, str]] = {}
    encs = [(canonical_id(e.id), e) for e in spec.encoders]
    for cid, e in encs:
        k = next(n.key for n in by_name.values() if n.kind == "extract" and n.encoder == cid)
        row: dict[str, Any] = {}
        fp: dict[str, str] = {"fp_extract": by_name[f"extract/{k}"].fingerprint}
        for kind in ("metrics", "probe", "inject"):
            d = _done(out, f"{kind}/{k}", by_name)
            if d is not None:
                row.update(d["summary"].get("properties", {}))
                fp[f"fp_{kind}"] = d["fingerprint"]
        props[cid], fps[cid] = row, fp
    fam = {cid: family_of(e, cid) for cid, e in encs}
    rows = []
    if spec.training is not None:
        for n in by_name.values():
            if n.kind != "fid":
                continue
            d = _done(out, n.name, by_name)
            tr = by_name[f"train/{n.key}"]
            cid = tr.encoder
            r: dict[str, Any] = {"encoder": cid or "none", "family": fam.get(cid, "Baseline") if cid else "Baseline",
                                 "method": tr.settings["method"], "seed": tr.settings["seed"]}
            r.update(props.get(cid, {}))
            if d is not None:
                s = d["summary"]
                r.update(s["quality"])
                r["protocol"] = s["protocol"]
                r["n_samples"] = s.get("n_samples")
                if s.get("classifier_acc") is not None:
                    r["fd_classifier_acc"] = s["classifier_acc"]
            else:
                r[q] = np.nan
            r.update(fps.get(cid, {}))
            r["fp_train"], r["fp_sample"], r["fp_fid"] = tr.fingerprint, by_name[f"sample/{n.key}"].fingerprint, n.fingerprint
            rows.append(r)
    else:
        known = _known_table(spec) if spec.known_gfid else {}
        for cid, e in encs:
            r = {"encoder": cid, "family": fam[cid], "method": None, "seed": None, **props[cid]}
            if spec.known_gfid:
                r[q] = known.get(cid, np.nan)
                r["protocol"] = f"known:{spec.known_gfid}"
                if e.random_init and e.define is None and cid in known:  # opted in (spec.py refuses it otherwise)
                    r["quality_note"] = (f"random-init {cid} joined to the published {q} of the pretrained {cid} "
                                         "(known_gfid_random_init: true)")
                    log.warning("%s: random-init encoder joined to the published %s of the pretrained one "
                                "(known_gfid_random_init: true); its row is marked in quality_note", cid, q)
            r.update(fps[cid])
            rows.append(r)
    df = pd.DataFrame(rows)
    lead = ["encoder", "family", "method", "seed"]
    prop_cols = [c for c in PROPERTY_COLS if c in df.columns] + sorted(
        c for c in df.columns if "[" in c and not c.startswith("fp_"))
    qual = [c for c in (q, *EXTRA_QUALITY, "fd_classifier_acc", "protocol", "n_samples")
            if c in df.columns and c not in prop_cols]
    fpc = sorted(c for c in df.columns if c.startswith("fp_"))
    rest = [c for c in df.columns if c not in lead + prop_cols + qual + fpc]
    df = df[lead + prop_cols + qual + rest + fpc]
    df = df.sort_values(["encoder", "method", "seed"], key=lambda s: s.astype(str), kind="stable").reset_index(drop=True)
    df.to_csv(work / RESULTS_CSV, index=False)
    df.to_parquet(work / RESULTS_PARQUET, index=False)

    wide = pd.DataFrame([{"encoder": cid, "family": fam[cid], **props[cid]} for cid, _ in encs])
    summary: dict[str, Any] = {"quality": q, "n_rows": len(df)}
    if spec.training is not None and len(df):
        teach = df[df["encoder"] != "none"]
        for m in spec.training.methods:
            g = teach[teach["method"] == m].groupby("encoder")[q]
            wide[f"{q}_{m}"] = wide["encoder"].map(g.mean())
            wide[f"{q}_{m}_sd"] = wide["encoder"].map(g.std(ddof=1))
            wide[f"{q}_{m}_n"] = wide["encoder"].map(g.count())
        ms = spec.training.methods
        for m in repa_differences(ms):
            wide[f"{q}_repa_minus_{m}"] = wide[f"{q}_repa"] - wide[f"{q}_{m}"]
            diff = wide[f"{q}_repa_minus_{m}"].dropna()
            summary[f"repa_vs_{m}"] = {"n_teachers": int(len(diff)), f"{m}_better": int((diff > 0).sum()),
                                       f"mean_repa_minus_{m}": _f(diff.mean()),
                                       f"median_repa_minus_{m}": _f(diff.median())}
        base = df[df["encoder"] == "none"][q].dropna()
        summary["baseline"] = {"method": "none", "n_seeds": int(len(base)), "mean": _f(base.mean()),
                               "sd": _f(base.std(ddof=1)) if len(base) > 1 else None}
        spread = []
        for (enc, m), g in df.groupby(["encoder", "method"]):
            v = g[q].dropna()
            if len(v) > 1:
                spread.append({"encoder": enc, "method": m, "n_seeds": int(len(v)), "mean": _f(v.mean()),
                               "sd": _f(v.std(ddof=1)), "range": _f(v.max() - v.min())})
        summary["seed_spread"] = spread
        if spread:
            summary["seed_sd_mean"] = _f(float(np.mean([s["sd"] for s in spread])))
        teachers = wide[[f"{q}_{m}" for m in ms]].stack()
        summary["teacher_range"] = {"min": _f(teachers.min()), "max": _f(teachers.max())} if len(teachers) else None
    elif spec.known_gfid:
        wide[q] = wide["encoder"].map(df.set_index("encoder")[q])
        summary["known_gfid"] = spec.known_gfid
        summary["n_with_quality"] = int(wide[q].notna().sum())
    wide.to_csv(work / WIDE_CSV, index=False)
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return {"rows": len(df), "summary": summary}


def _f(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else round(f, 6)


def run_correlate(spec: StudySpec, node: Node, work: Path, out: Path, by_name: dict[str, Node]) -> dict[str, Any]:
    import pandas as pd

    from ..correlation import correlate

    table = node_dir(out, by_name["table/results"]) / WIDE_CSV
    df = pd.read_csv(table)
    s = node.settings
    y = s["y"]
    if y not in df.columns:
        raise DataError(f"correlate: y column {y!r} is not in the results ({', '.join(df.columns)}).")
    xs, skipped = [], {}
    for x in s["x"]:
        if x not in df.columns:
            skipped[x] = "not measured"
        elif df[x].notna().sum() == 0:
            skipped[x] = "all NaN (e.g. SRSS without masks)"
        elif df[x].nunique(dropna=True) < 2:
            skipped[x] = "constant"
        else:
            xs.append(x)
    for x, why in skipped.items():
        log.info("correlate %s: x %s skipped: %s", y, x, why)
    usable = df[[y]].notna().all(axis=1).sum()
    if not xs or usable < 3:
        why = (f"only {usable} encoder(s) with {y}; a correlation needs at least 3" if usable < 3
               else "no usable x column")
        log.info("correlate %s skipped: %s", y, why)
        return {"skipped": why, "x_skipped": skipped}
    fam = s["family_col"] if s["family_col"] in df.columns else None
    res = correlate(str(table), x=xs, y=[y], family_col=fam, control=s["control"], id_col="encoder",
                    n_resamples=s["n_resamples"], confidence=s["confidence"], seed=s["seed"], out=str(work))
    cols = ["x", "n", "pearson_r", "pearson_ci_low", "pearson_ci_high", "pearson_p_perm", "spearman_rho"]
    return {"y": y, "x_skipped": skipped, "rows": json.loads(res[cols].to_json(orient="records"))}
