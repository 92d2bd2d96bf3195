"""Spatial metrics over an official collection (``spatialprobe metrics --features official:DIR[:enc,…]``).

Every metric is computed on the images that pass the official >= 64 FG / >= 64 BG patch filter (of 256), as
in the official script. Features join masks by image id; :func:`encoder_metrics` can also reproduce the
official script's positional join (masks sorted lexicographically, filtered, the k-th kept mask with
feature row k; irepa-spec §9.6) for :func:`spatialprobe.official.correlate_official`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..checks import prepare_out_dir
from ..config import comma_list, resolve
from ..data.official import IMAGES_PROTOCOL, is_official, parse_spec
from ..errors import ConfigError, DataError
from ..metrics.masks import min_patches, official_filter
from ..metrics.run import MetricsConfig, MetricsResult, base_radii, parse_sweeps, tabulate_setting, write_metrics
from ..metrics.spatial import OFFICIAL_RADII, NonFiniteTokensError, spatial_metrics_multi
from ..schema import SPATIAL_METRICS
from .collection import Collection

log = logging.getLogger(__name__)


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
    try:
        for a in range(0, len(rows), chunk_size):
            r = rows[a:a + chunk_size]
            xb = x[r[0]:r[0] + len(r)] if r == list(range(r[0], r[0] + len(r))) else x[r]
            out = spatial_metrics_multi(xb.float().to(dev), grid, kept_masks[a:a + chunk_size].to(dev),
                                        settings=settings, metrics=list(metrics))
            for store, o in zip(acc, out):
                store.append({k: v.cpu() for k, v in o.items()})
    except NonFiniteTokensError:
        # the metric pass finds non-finite tokens itself (on its Gram's diagonal), so the file is scanned only
        # then, to name every broken image of it rather than those of the first chunk that has one
        _check_finite(col, encoder, x, rows, chunk_size)
        raise
    per = [{k: torch.cat([c[k] for c in chunks]) for k in chunks[0]} for chunks in acc]
    return {"ids": kept_ids, "rows": rows, "grid": grid, "per_setting": per}


def _check_finite(col: Collection, encoder: str, x: torch.Tensor, rows: list[int], chunk_size: int) -> None:
    """Non-finite tokens in the rows used are an error naming the file and the image ids (row i = image i)."""
    bad: list[int] = []
    for a in range(0, len(rows), chunk_size):
        r = rows[a:a + chunk_size]
        finite = torch.isfinite(x[r].reshape(len(r), -1)).all(1)
        bad += [row for row, ok in zip(r, finite.tolist()) if not ok]
    if bad:
        raise DataError(f"Features {str(col.data / 'features' / f'{encoder}.pt')!r}: the tokens of image id(s) "
                        f"{', '.join(map(str, bad[:10]))}{f' (+{len(bad) - 10} more)' if len(bad) > 10 else ''} "
                        "(row i = image i) are non-finite (NaN or inf). The file is broken, not the metric: "
                        "download it again.")


def official_metrics(cfg: MetricsConfig) -> MetricsResult:
    """The metrics of the official collections in ``cfg.features`` (a resolved
    :class:`~spatialprobe.metrics.MetricsConfig`). Writes the same files as
    :func:`~spatialprobe.metrics.compute_metrics` (into an ``out`` folder already prepared), with the
    protocol ids in ``config.json``."""
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
        settings = [{**base_radii(cfg, (side, side)), **o} for o in sweeps]
        res = encoder_metrics(col, enc, settings=settings, metrics=tuple(cfg.metrics), rule=cfg.mask_rule,
                              min_fraction=cfg.mask_min_fraction, chunk_size=cfg.chunk_size, device=cfg.device,
                              features=x)
        n_total = len(col.mask_files)
        log.info("%s: %d of %d images pass the official >= %d FG / >= %d BG patch filter", enc, len(res["ids"]),
                 n_total, min_patches(res["grid"][0] * res["grid"][1], cfg.mask_min_fraction),
                 min_patches(res["grid"][0] * res["grid"][1], cfg.mask_min_fraction))
        for over, s, vals in zip(sweeps, settings, res["per_setting"]):
            radii.add(_radii_label(s))
            df, rec = tabulate_setting(enc, over, s, res["ids"], vals)
            per_rows.append(df)
            rec["n_mask_filtered"] = n_total - len(res["ids"])
            summary.append(rec)
        inputs.append({"path": str(col.data / "features" / f"{enc}.pt"), "encoder": enc, "grid": list(res["grid"]),
                       "n_images": len(res["ids"]), "store": False, "official": str(col.root)})
        k = min_patches(res["grid"][0] * res["grid"][1], cfg.mask_min_fraction)
        mask_ids.add(f"{IMAGES_PROTOCOL},rule={cfg.mask_rule},filter>={k}/{k}")
    protocol = {"images": IMAGES_PROTOCOL, "resolution": "256", "radii": "|".join(sorted(radii)),
                "masks": "|".join(sorted(mask_ids))}
    return write_metrics(cfg, per_rows, summary, sweeps, inputs=inputs, metrics_computed=list(cfg.metrics),
                         protocol=protocol,
                         join="by image id: feature row i = image i = masks/<i>.png; official >= 64/64 patch filter")


def compute_official_metrics(*, config: str | Path | None = None, **options) -> MetricsResult:
    """:func:`~spatialprobe.metrics.compute_metrics` for official collections: ``features`` are
    ``official:DIR`` or ``official:DIR:enc1,enc2`` (``encoder`` also picks encoders); the options are the
    fields of :class:`~spatialprobe.metrics.MetricsConfig` (``masks`` must stay unset: the collection's own
    ``data/masks`` are used). What ``spatialprobe metrics --features official:DIR`` runs.

    Example:
        >>> compute_official_metrics(features=["official:spatial-metrics-data:dinov2-vit-b"], out="m/")
    """
    cfg = resolve(MetricsConfig, config, **options)
    if cfg.out:
        prepare_out_dir(cfg.out)
    return official_metrics(cfg)
