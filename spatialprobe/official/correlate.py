"""The paper's correlations recomputed from an official collection, and what the official script's
positional join changes.

The official script sorts the masks lexicographically (``0, 1, 10, 11, …, 2, …``), filters them and pairs
the k-th kept mask with feature row k (irepa-spec §9.6). :func:`collection_table` can reproduce that
positional join (``join="position"``) so :func:`correlate_official` reports how much it changes the
numbers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..config import jsonable, resolve
from ..correlation import correlate
from ..data.official import IMAGES_PROTOCOL
from ..errors import ConfigError
from ..metrics.masks import min_patches
from ..metrics.spatial import aggregate
from ..reference import encoder_families, family_of
from ..schema import CONFIG_JSON, OFFICIAL_TABLE_CSV, SPATIAL_METRICS
from ..stats import lp_acc_scale
from .collection import CORRECTED_XL, MODELS, PROPERTIES, Collection, fid_file_name
from .metrics import encoder_metrics

log = logging.getLogger(__name__)


@dataclass
class OfficialConfig:
    """Options of :func:`correlate_official` (and ``spatialprobe correlate --official``)."""

    official: str = ""  #: the collection folder
    steps: int = 100_000  #: gFID at this training step (column Steps of the FID CSVs)
    model: str = "sit-xl-2"  #: sit-xl-2 (hard-coded official names), sit-l-2 or sit-b-2
    encoders: list[str] | None = None  #: default: every data/features/<enc>.pt
    corrected_fid_names: bool = False  #: read SpatialPE-L's own FID file instead of LangPE-L's (official bug)
    rule: str = "any"
    min_fraction: float = 0.25
    x: list[str] = field(default_factory=lambda: list(PROPERTIES))
    control: str | None = None  #: partial correlation controlling for this column (e.g. lp_acc)
    chunk_size: int = 256
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.official:
            raise ConfigError("Give the official collection folder: --official DIR.")
        if self.model not in MODELS:
            raise ConfigError(f"model={self.model!r}: use one of {', '.join(MODELS)}.")


def collection_table(cfg: OfficialConfig, *, join: str = "id", collection: Collection | None = None) -> pd.DataFrame:
    """One row per encoder: encoder, family, lp_acc, gfid, lds, cds, srss, rmsc, n_images (and the FID
    file read). ``join="position"`` reproduces the official script's positional feature/mask pairing
    (metrics NaN where it cannot run)."""
    col = collection if collection is not None else Collection(cfg.official)
    encs = col.select(cfg.encoders)
    fams = encoder_families()
    metrics = tuple(m for m in SPATIAL_METRICS if m in cfg.x)

    rows = []
    for enc in tqdm(encs, desc=f"official collection ({join} join)", unit="enc", disable=len(encs) < 4):
        rec: dict[str, Any] = {"encoder": enc, "family": family_of(enc, fams)}
        if "lp_acc" in cfg.x or cfg.control == "lp_acc":
            rec["lp_acc"] = col.lp_acc(enc)
        rec["gfid"] = col.gfid(enc, cfg.steps, cfg.model, corrected=cfg.corrected_fid_names)
        rec["fid_file"] = fid_file_name(enc, cfg.model, corrected=cfg.corrected_fid_names)
        if metrics:
            res = encoder_metrics(col, enc, metrics=metrics, join=join, rule=cfg.rule,
                                  min_fraction=cfg.min_fraction, chunk_size=cfg.chunk_size, device=cfg.device)
            per = res["per_setting"]
            for m in metrics:
                rec[m] = float("nan") if per is None else aggregate(per[0][m])["mean"]
            rec["n_images"] = len(res["ids"])
        rows.append(rec)
    df = pd.DataFrame(rows)
    if "lp_acc" in df.columns:  # one best_val_acc stored as 0.717 among percents would be read as 0.7 %
        lp_acc_scale(df["lp_acc"], [f"{e} ({col.lp_acc_path(e).relative_to(col.data)})" for e in df["encoder"]],
                     column="best_val_acc", what=f"the official collection {str(col.root)!r}")
    if join == "id" and cfg.model == "sit-xl-2" and not cfg.corrected_fid_names and "spatialpe-vit-l" in encs:
        log.warning("spatialpe-vit-l is scored with LangPE-L's FID file, as in the official script "
                    "(irepa-spec §9.5); corrected_fid_names=True reads %s", CORRECTED_XL["spatialpe-vit-l"])
    return df


@dataclass
class OfficialResult:
    table: pd.DataFrame  #: the id-joined numbers (the input of the correlation)
    correlations: pd.DataFrame  #: spatialprobe.stats COLUMNS, as ``correlate --table`` gives
    positional: pd.DataFrame  #: per property: r by id, r by position, difference
    positional_values: pd.DataFrame  #: per encoder and metric: value by id, by position, difference
    notes: list[str]


def correlate_official(*, out: str | Path | None = None, n_resamples: int = 10_000, confidence: float = 0.95,
                       seed: int = 0, figure: bool = True, **options) -> OfficialResult:
    """Recompute the paper's correlations from the released collection, joined by id, with the full
    uncertainty output of :func:`spatialprobe.correlation.correlate`, and report where the official
    script's positional join changes the numbers.

    With ``out`` it writes ``official_table.csv``, ``positional_join.csv``, ``positional_values.csv`` and
    everything ``correlate`` writes (``correlations.csv``, ``config.json``, ``correlation_panel.*``).
    """
    cfg = resolve(OfficialConfig, None, **options)
    col = Collection(cfg.official)
    log.info("features join masks by image id: row i of data/features/<enc>.pt = data/images/i.png = "
             "data/masks/i.png")
    table = collection_table(cfg, join="id", collection=col)
    xs = [c for c in cfg.x if c in table.columns]
    corr = correlate(table, x=xs, y=["gfid"], family_col="family", id_col="encoder", control=cfg.control,
                     n_resamples=n_resamples, confidence=confidence, seed=seed, out=str(out) if out else None,
                     figure=figure)
    pos = collection_table(cfg, join="position", collection=col)
    metrics = [m for m in xs if m != "lp_acc"]
    vals = []
    for m in metrics:
        for (_, a), (_, b) in zip(table.iterrows(), pos.iterrows()):
            vals.append({"encoder": a["encoder"], "metric": m, "by_id": a[m], "by_position": b[m],
                         "difference": b[m] - a[m]})
    values = pd.DataFrame(vals, columns=["encoder", "metric", "by_id", "by_position", "difference"])
    prow = []
    for m in xs:
        a = table[[m, "gfid"]].astype(float)
        b = pos[[m, "gfid"]].astype(float)
        ok = b.notna().all(axis=1)
        r_id = float(np.corrcoef(a[m], a["gfid"])[0, 1])
        r_pos = float(np.corrcoef(b.loc[ok, m], b.loc[ok, "gfid"])[0, 1]) if ok.sum() >= 3 else float("nan")
        prow.append({"x": m, "r_by_id": r_id, "r_by_position": r_pos, "difference": r_pos - r_id,
                     "n_by_position": int(ok.sum())})
    positional = pd.DataFrame(prow)
    notes = ["features join masks by image id (row i of each tensor = image i = masks/i.png); "
             f"{int(table['n_images'].iloc[0]) if 'n_images' in table else '?'} of {len(col.mask_files)} images "
             "pass the official >= 64 FG / >= 64 BG patch filter."]
    lex = [f.name for f in sorted(col.mask_files.values(), key=lambda f: f.name)]
    num = [f.name for f in col.mask_files.values()]
    if lex != num:
        notes.append("data/masks sorted lexicographically (" + ", ".join(lex[:4]) + ", …) differ from the "
                     "numeric image order (" + ", ".join(num[:4]) + ", …): the official positional join pairs "
                     "feature rows with other images' masks.")
    changed = values[values["difference"].abs() > 1e-12]
    if len(changed):
        notes.append(f"the positional join changes {len(changed)} of {len(values)} encoder metric values "
                     f"(largest |difference| {changed['difference'].abs().max():.4g}) and r by up to "
                     f"{positional['difference'].abs().max():.4g}.")
    else:
        notes.append("the positional join gives the same numbers here.")
    if "spatialpe-vit-l" in set(table["encoder"]) and cfg.model == "sit-xl-2" and not cfg.corrected_fid_names:
        notes.append("spatialpe-vit-l's gFID is read from the LangPE-L file, as in the official script "
                     "(irepa-spec §9.5).")
    if out:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        table.to_csv(o / OFFICIAL_TABLE_CSV, index=False)
        positional.to_csv(o / "positional_join.csv", index=False)
        values.to_csv(o / "positional_values.csv", index=False)
        cfg_path = o / CONFIG_JSON
        rec = json.loads(cfg_path.read_text(encoding="utf-8"))
        k = min_patches(256, cfg.min_fraction)
        rec["input"] = {"official": str(col.root)}
        rec["official"] = jsonable(cfg)
        rec["notes"] = notes
        rec["protocol"] = {"images": IMAGES_PROTOCOL, "resolution": "256",
                           "radii": "lds_near=1,lds_far=6,cds_dmax=8,srss_pos=1,srss_neg=6",
                           "masks": f"{IMAGES_PROTOCOL},rule={cfg.rule},filter>={k}/{k}"}
        cfg_path.write_text(json.dumps(rec, indent=2) + "\n", encoding="utf-8")
    for n in notes:  # returned and recorded in config.json; the CLI prints them
        log.debug("%s", n)
    return OfficialResult(table=table, correlations=corr, positional=positional, positional_values=values,
                          notes=notes)
