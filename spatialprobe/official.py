"""The official iREPA data collection (``spatial-metrics-data`` of the iREPA collections), read by id.

Layout (irepa-spec §2, the folder the official plotting script reads)::

    DIR/data/images/<i>.png                      image i (i = 0 .. N-1)
    DIR/data/masks/<i>.png                       FG/BG mask of image i
    DIR/data/features/<enc>.pt                   tensor [N, 256, D]; row i = image i
    DIR/data/stats/fid/<name>.csv                columns Steps, FID
    DIR/data/stats/lp/<enc>-none-mean/metrics.json   {"best_val_acc": ...}

``DIR`` may also be the ``data`` folder itself. Feature rows join masks **by image id**: row ``i`` of
every feature tensor is image ``i`` and is paired with ``masks/<i>.png``; the feature, mask and image
counts must agree. The official ≥ 64 FG / ≥ 64 BG patch filter (of 256) selects the images every metric
is computed on, as in the official script.

The official script instead sorts the masks lexicographically (``0, 1, 10, 11, …, 2, …``), filters them and
pairs the k-th kept mask with feature row k (irepa-spec §9.6). :func:`collection_table` can reproduce that
positional join (``join="position"``) so :func:`correlate_official` reports how much it changes the
numbers. FID files follow the official ``eval_names``: for SiT-XL/2 the hard-coded names (where
``spatialpe-vit-l`` reads the LangPE-L file, irepa-spec §9.5), for SiT-B/2 and SiT-L/2 the automatic
``<model>-sdvae-<enc>-enc8-coeff0.5-loss-cosine-projlayer-mlp-100000-v1_cfg1.0-seed0-modesde-steps250.csv``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .config import comma_list
from .errors import ColumnError, ConfigError, DataError, InputFileError, UnknownNameError, did_you_mean
from .schema import (CONFIG_JSON, OFFICIAL_TABLE_CSV, PER_IMAGE_CSV, PER_IMAGE_PARQUET, PROPERTIES, SPATIAL_METRICS,
                     SUMMARY_CSV)

log = logging.getLogger(__name__)

PREFIX = "official:"
MODELS = ("sit-xl-2", "sit-l-2", "sit-b-2")
AUTO_FID_NAME = "{model}-sdvae-{enc}-enc8-coeff0.5-loss-cosine-projlayer-mlp-100000-v1_cfg1.0-seed0-modesde-steps250.csv"
#: the FID file the official script should have read for SpatialPE-L under SiT-XL/2 (its neighbours' pattern)
CORRECTED_XL = {"spatialpe-vit-l": "sit-xl-2-sdvae-enc8-spatialpe-l_cfg1.0-seed0-modesde-steps250.csv"}
IMAGES_PROTOCOL = "irepa-collection"


def is_official(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_spec(spec: str) -> tuple[str, list[str] | None]:
    """``official:DIR`` -> (DIR, None); ``official:DIR:enc1,enc2`` -> (DIR, [enc1, enc2])."""
    body = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    head, sep, tail = body.rpartition(":")
    if sep and head and "/" not in tail and not Path(body).exists():
        return head, comma_list(tail)
    return body, None


def official_fid_files() -> dict[str, str]:
    """Encoder -> FID CSV name hard-coded in the official script for SiT-XL/2 (mix-up included)."""
    with resources.files("spatialprobe.reference").joinpath("official_collection_fid_files.csv").open(
            "r", encoding="utf-8") as fh:
        df = pd.read_csv(fh)
    return dict(zip(df["encoder"], df["fid_csv"]))


def fid_file_name(encoder: str, model: str = "sit-xl-2", *, corrected: bool = False) -> str:
    """The FID CSV the official ``eval_names`` give ``encoder`` under ``model``."""
    if model not in MODELS:
        raise ConfigError(f"model={model!r}: use one of {', '.join(MODELS)}.")
    if model == "sit-xl-2":
        if corrected and encoder in CORRECTED_XL:
            return CORRECTED_XL[encoder]
        names = official_fid_files()
        if encoder not in names:
            raise UnknownNameError(f"The official script has no SiT-XL/2 FID file for encoder {encoder!r}; it "
                                   f"knows {len(names)} encoders.{did_you_mean(encoder, list(names))}")
        return names[encoder]
    return AUTO_FID_NAME.format(model=model, enc=encoder)


def _numeric_id(stem: str, where: str) -> int:
    if not re.fullmatch(r"\d+", stem):
        raise DataError(f"{where}: file name {stem!r} is not an image index; the official layout names images "
                        "and masks <i>.png with i = 0 .. N-1.")
    return int(stem)


class Collection:
    """One official collection folder. Properties are read lazily and checked on first use."""

    def __init__(self, root: str | Path) -> None:
        p = Path(root).expanduser()
        if not p.is_dir():
            raise InputFileError(f"Official collection folder {str(p)!r} does not exist; pass the downloaded "
                                 "spatial-metrics-data folder (holding data/features, data/masks, data/stats).")
        data = p / "data" if (p / "data").is_dir() else p
        if not (data / "features").is_dir() and not (data / "masks").is_dir() and not (data / "images").is_dir():
            raise InputFileError(f"{str(p)!r} is not an official collection: it has no data/features, data/masks "
                                 "or data/images folder.")
        self.root, self.data = p, data

    def __repr__(self) -> str:
        return f"Collection({str(self.root)!r})"

    # -- encoders and features
    @property
    def encoders(self) -> list[str]:
        d = self.data / "features"
        if not d.is_dir():
            raise InputFileError(f"Official collection {str(self.root)!r} has no data/features folder of <enc>.pt files.")
        names = sorted(f.stem for f in d.glob("*.pt") if f.is_file())
        if not names:
            raise InputFileError(f"{str(d)!r} holds no <encoder>.pt feature files.")
        return names

    def select(self, encoders: list[str] | None) -> list[str]:
        """The requested encoders (all when None); an absent one is an error naming the available ones."""
        have = self.encoders
        if not encoders:
            return have
        for e in encoders:
            if e not in have:
                raise UnknownNameError(f"Encoder {e!r} is not in the official collection {str(self.root)!r} "
                                       f"(data/features/{e}.pt is missing); it has: {', '.join(have)}."
                                       f"{did_you_mean(e, have)}")
        return list(encoders)

    def features(self, encoder: str) -> torch.Tensor:
        """``data/features/<encoder>.pt`` as a float tensor ``[N, T, D]`` (``torch.load(weights_only=True)``)."""
        path = self.data / "features" / f"{encoder}.pt"
        if not path.is_file():
            self.select([encoder])
        try:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any load error is the file's problem
            raise DataError(f"Features {str(path)!r} could not be loaded safely with torch.load(weights_only=True) "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); the official layout holds one "
                            "tensor [N, 256, D] per encoder.") from None
        if not isinstance(obj, torch.Tensor):
            raise DataError(f"Features {str(path)!r} hold a {type(obj).__name__}, not a tensor; the official layout "
                            "holds one tensor [N, 256, D] per encoder (row i = image i).")
        if obj.ndim != 3 or not obj.is_floating_point():
            raise DataError(f"Features {str(path)!r}: expected a float tensor [N, T, D]; got {obj.dtype} of shape "
                            f"{tuple(obj.shape)}.")
        return obj

    # -- images and masks
    def _indexed(self, sub: str, suffixes: tuple[str, ...]) -> dict[str, Path]:
        d = self.data / sub
        if not d.is_dir():
            raise InputFileError(f"Official collection {str(self.root)!r} has no data/{sub} folder.")
        files = {f.stem: f for f in d.iterdir() if f.is_file() and f.suffix.lower() in suffixes}
        if not files:
            raise InputFileError(f"{str(d)!r} holds no {'/'.join(suffixes)} files.")
        for stem in files:
            _numeric_id(stem, str(d))
        return dict(sorted(files.items(), key=lambda kv: int(kv[0])))

    @cached_property
    def mask_files(self) -> dict[str, Path]:
        """id -> mask path, in numeric id order."""
        return self._indexed("masks", (".png",))

    @cached_property
    def image_files(self) -> dict[str, Path]:
        """id -> image path, in numeric id order."""
        from .data.sources import IMAGE_SUFFIXES

        return self._indexed("images", IMAGE_SUFFIXES)

    def check_counts(self, encoder: str, n_rows: int) -> None:
        """Feature rows, masks and (when present) images must be the same images 0 .. N-1."""
        ids = list(self.mask_files)
        problems = []
        if len(ids) != n_rows:
            problems.append(f"{n_rows} feature rows in data/features/{encoder}.pt but {len(ids)} masks in data/masks")
        elif ids != [str(i) for i in range(n_rows)]:
            missing = sorted(set(map(str, range(n_rows))) - set(ids), key=int)[:5]
            problems.append(f"masks are not named 0 .. {n_rows - 1} (missing e.g. {', '.join(missing)})")
        if (self.data / "images").is_dir():
            n_img = len(self.image_files)
            if n_img != n_rows:
                problems.append(f"{n_img} images in data/images for {n_rows} feature rows")
        if problems:
            raise DataError(f"Official collection {str(self.root)!r}: " + "; ".join(problems) + ". Row i of every "
                            "feature tensor must be image i with mask i.png (features join masks by id); "
                            "re-download the collection or remove the stray files.")

    def patch_masks(self, grid: tuple[int, int], *, rule: str = "any", lexicographic: bool = False):
        """``(ids, masks [M, T])``: every mask as a patch mask, in numeric id order (or, with
        ``lexicographic``, in the official script's ``sorted(glob)`` order)."""
        from .metrics.masks import patch_mask, read_mask

        key = (tuple(grid), rule)
        cache = self.__dict__.setdefault("_mask_cache", {})
        if key not in cache:
            ids = list(self.mask_files)
            cache[key] = (ids, torch.stack([patch_mask(read_mask(self.mask_files[i]), grid, rule=rule)
                                            for i in ids]))
        ids, m = cache[key]
        if lexicographic:
            order = sorted(range(len(ids)), key=lambda k: self.mask_files[ids[k]].name)
            return [ids[k] for k in order], m[order]
        return list(ids), m

    # -- stats
    def lp_acc(self, encoder: str) -> float:
        path = self.data / "stats" / "lp" / f"{encoder}-none-mean" / "metrics.json"
        if not path.is_file():
            raise InputFileError(f"LP accuracy of {encoder!r} is missing: {str(path)!r} does not exist.")
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            return float(rec["best_val_acc"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{str(path)!r} has no numeric 'best_val_acc' ({exc}).") from None

    def gfid(self, encoder: str, steps: int = 100_000, model: str = "sit-xl-2", *, corrected: bool = False) -> float:
        name = fid_file_name(encoder, model, corrected=corrected)
        path = self.data / "stats" / "fid" / name
        if not path.is_file():
            raise InputFileError(f"gFID of {encoder!r} ({model}) is missing: {str(path)!r} does not exist.")
        try:
            df = pd.read_csv(path)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{str(path)!r} could not be read as CSV ({exc}).") from None
        if not {"Steps", "FID"} <= set(df.columns):
            raise ColumnError(f"{str(path)!r} needs columns Steps and FID; it has {', '.join(map(str, df.columns))}.")
        row = df[pd.to_numeric(df["Steps"], errors="coerce") == int(steps)]
        if row.empty:
            raise DataError(f"{str(path)!r} has no row at Steps == {steps} (it has {', '.join(map(str, df['Steps']))}); "
                            "pick one with --steps.")
        return float(row["FID"].iloc[0])


def image_source(root: str | Path, *, resolution: int = 256):
    """``--images official:DIR``: the collection's ``data/images/<i>.png`` with ids ``"0" .. "N-1"`` in
    numeric order (so extracted features join the collection's masks by id)."""
    from .data.sources import FileSource

    col = Collection(parse_spec(str(root))[0])
    files = col.image_files
    src = FileSource(f"{PREFIX}{col.root}", list(files.values()), list(files), resolution=resolution)
    src.kind = IMAGES_PROTOCOL
    return src


# ----------------------------------------------------------------------------- metrics

def _radii_label(s: dict[str, int]) -> str:
    return ",".join(f"{k}={int(s[k])}" for k in ("lds_near", "lds_far", "cds_dmax", "srss_pos", "srss_neg"))


def encoder_metrics(col: Collection, encoder: str, *, settings: list[dict[str, int]] | None = None,
                    metrics: tuple[str, ...] = SPATIAL_METRICS, join: str = "id",
                    rule: str = "any", min_fraction: float = 0.25, chunk_size: int = 256,
                    device: str = "cpu", features: torch.Tensor | None = None) -> dict[str, Any]:
    """Per-image metrics of one encoder on the images kept by the official filter.

    ``join="id"``: feature row ``int(id)`` with mask ``<id>.png`` (correct). ``join="position"``: the
    official script's pairing (masks sorted lexicographically, filtered, the k-th kept mask with feature
    row k). Returns ``{"ids", "rows", "grid", "per_setting": [{metric: Tensor[K]}]}``; with a positional join
    that cannot run (fewer feature rows than kept masks) ``per_setting`` is None.
    """
    from .metrics.masks import official_filter
    from .metrics.spatial import OFFICIAL_RADII, spatial_metrics_multi

    x = col.features(encoder) if features is None else features
    n, t = int(x.shape[0]), int(x.shape[1])
    side = int(round(t ** 0.5))
    if side * side != t:
        raise DataError(f"data/features/{encoder}.pt has T={t} tokens, not a square grid (official: 256 = 16x16).")
    grid = (side, side)
    col.check_counts(encoder, n)
    settings = settings or [dict(OFFICIAL_RADII)]
    ids, masks = col.patch_masks(grid, rule=rule, lexicographic=(join == "position"))
    keep = official_filter(masks, min_fraction)
    kept_ids = [i for i, k in zip(ids, keep.tolist()) if k]
    kept_masks = masks[keep]
    if join == "id":
        rows = [int(i) for i in kept_ids]
    elif join == "position":
        if len(kept_ids) > n:
            return {"ids": kept_ids, "rows": None, "grid": grid, "per_setting": None}
        rows = list(range(len(kept_ids)))
    else:
        raise ConfigError(f"join={join!r}: use 'id' or 'position'.")
    if not rows:
        raise DataError(f"No image of the official collection passes the >= {min_fraction:.0%} FG and BG patch "
                        "filter; check data/masks.")
    acc: list[list[dict[str, torch.Tensor]]] = [[] for _ in settings]
    dev = torch.device(device)
    for a in range(0, len(rows), chunk_size):
        r = rows[a:a + chunk_size]
        xb = x[r[0]:r[0] + len(r)] if r == list(range(r[0], r[0] + len(r))) else x[r]
        out = spatial_metrics_multi(xb.float().to(dev), grid, kept_masks[a:a + chunk_size].to(dev),
                                    settings=settings, metrics=list(metrics))
        for store, o in zip(acc, out):
            store.append({k: v.cpu() for k, v in o.items()})
    per = [{k: torch.cat([c[k] for c in chunks]) for k in chunks[0]} for chunks in acc]
    return {"ids": kept_ids, "rows": rows, "grid": grid, "per_setting": per}


def official_metrics(cfg) -> Any:
    """``spatialprobe metrics --features official:DIR[:enc,…]``: the :class:`~spatialprobe.metrics.MetricsConfig`
    path for official collections. Writes the same files as :func:`~spatialprobe.metrics.compute_metrics`,
    with the protocol ids in ``config.json``."""
    from tqdm.auto import tqdm

    from .config import write_config
    from .metrics.masks import min_patches
    from .metrics.run import MetricsResult, _base_radii, _label, parse_sweeps
    from .metrics.spatial import aggregate

    if not all(is_official(f) for f in cfg.features):
        raise ConfigError("Do not mix official:DIR with other --features inputs; run them separately.")
    if cfg.masks is not None:
        raise ConfigError("official:DIR uses the collection's own data/masks; drop --masks.")
    sweeps = parse_sweeps(cfg.sweep)
    todo: list[tuple[Collection, str]] = []
    for spec in cfg.features:
        root, encs = parse_spec(spec)
        col = Collection(root)
        if encs is None and cfg.encoder:
            encs = comma_list(cfg.encoder)
        todo.extend((col, e) for e in col.select(encs))
    per_rows, summary, inputs, radii, mask_ids = [], [], [], set(), set()
    for col, enc in tqdm(todo, desc="official metrics", unit="enc", disable=len(todo) < 2):
        x = col.features(enc)
        side = int(round(x.shape[1] ** 0.5))  # the paper radii depend on the grid
        settings = [{**_base_radii(cfg, (side, side)), **o} for o in sweeps]
        res = encoder_metrics(col, enc, settings=settings, metrics=tuple(cfg.metrics), rule=cfg.mask_rule,
                              min_fraction=cfg.mask_min_fraction, chunk_size=cfg.chunk_size, device=cfg.device,
                              features=x)
        n_total = len(col.mask_files)
        log.info("%s: %d of %d images pass the official >= %d FG / >= %d BG patch filter", enc, len(res["ids"]),
                 n_total, min_patches(res["grid"][0] * res["grid"][1], cfg.mask_min_fraction),
                 min_patches(res["grid"][0] * res["grid"][1], cfg.mask_min_fraction))
        for over, s, vals in zip(sweeps, settings, res["per_setting"]):
            radii.add(_radii_label(s))
            cols = {k: v.numpy() for k, v in vals.items()}
            per_rows.append(pd.DataFrame({"encoder": enc, "setting": _label(over), "id": res["ids"], **cols}))
            rec: dict[str, Any] = {"encoder": enc, "setting": _label(over), **s, "n_images": len(res["ids"])}
            for k, v in vals.items():
                agg = aggregate(v)
                rec.update({k: agg["mean"], f"{k}_std": agg["std"], f"{k}_n": agg["n"], f"{k}_nan": agg["n_nan"]})
            rec["n_mask_filtered"] = n_total - len(res["ids"])
            summary.append(rec)
        inputs.append({"path": str(col.data / "features" / f"{enc}.pt"), "encoder": enc, "grid": list(res["grid"]),
                       "n_images": len(res["ids"]), "store": False, "official": str(col.root)})
        k = min_patches(res["grid"][0] * res["grid"][1], cfg.mask_min_fraction)
        mask_ids.add(f"{IMAGES_PROTOCOL},rule={cfg.mask_rule},filter>={k}/{k}")
    per_image = pd.concat(per_rows, ignore_index=True)
    if len(sweeps) == 1:
        per_image = per_image.drop(columns="setting")
    summary_df = pd.DataFrame(summary)
    protocol = {"images": IMAGES_PROTOCOL, "resolution": "256", "radii": "|".join(sorted(radii)),
                "masks": "|".join(sorted(mask_ids))}
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        per_image.to_csv(out / PER_IMAGE_CSV, index=False)
        per_image.to_parquet(out / PER_IMAGE_PARQUET, index=False)
        summary_df.to_csv(out / SUMMARY_CSV, index=False)
        write_config(out / CONFIG_JSON, cfg, inputs=inputs, metrics_computed=list(cfg.metrics),
                     settings=[_label(o) for o in sweeps], protocol=protocol,
                     join="by image id: feature row i = image i = masks/<i>.png; official >= 64/64 patch filter")
    return MetricsResult(per_image=per_image, summary=summary_df)


# ----------------------------------------------------------------------------- table and correlate

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
    from .metrics.spatial import aggregate
    from .reference import encoder_families, family_of

    col = collection if collection is not None else Collection(cfg.official)
    encs = col.select(cfg.encoders)
    fams = encoder_families()
    metrics = tuple(m for m in SPATIAL_METRICS if m in cfg.x)
    from tqdm.auto import tqdm

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
    import numpy as np

    from .config import resolve
    from .correlation import correlate

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
        from .config import _jsonable

        from .metrics.masks import min_patches

        k = min_patches(256, cfg.min_fraction)
        rec["input"] = {"official": str(col.root)}
        rec["official"] = _jsonable(cfg)
        rec["notes"] = notes
        rec["protocol"] = {"images": IMAGES_PROTOCOL, "resolution": "256",
                           "radii": "lds_near=1,lds_far=6,cds_dmax=8,srss_pos=1,srss_neg=6",
                           "masks": f"{IMAGES_PROTOCOL},rule={cfg.rule},filter>={k}/{k}"}
        cfg_path.write_text(json.dumps(rec, indent=2) + "\n", encoding="utf-8")
    for n in notes:  # returned and recorded in config.json; the CLI prints them
        log.debug("%s", n)
    return OfficialResult(table=table, correlations=corr, positional=positional, positional_values=values,
                          notes=notes)
