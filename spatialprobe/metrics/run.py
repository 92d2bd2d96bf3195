"""``compute_metrics``: per-image and per-encoder spatial metrics for feature stores or token files.

Inputs are streamed chunk by chunk (a feature store memory-mapped through ``iter_chunks``; a token file
sliced), masks join by image id, and every radius setting of a sweep shares one Gram per chunk.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..config import comma_list, resolve, write_config
from ..data.official import is_official
from ..errors import ConfigError, DataError, InputFileError
from ..runtime import resolve_device
from ..schema import CONFIG_JSON, PER_IMAGE_CSV, PER_IMAGE_PARQUET, SUMMARY_CSV
from .masks import OFFICIAL_MIN_FRACTION, RULES, join_ids, load_masks, mask_files, official_filter
from .spatial import (METRICS, OFFICIAL_RADII, RADII, NonFiniteTokensError, aggregate, paper_radii, spatial_metrics_multi,
                      undefined_radii)

log = logging.getLogger(__name__)

TOKEN_KEYS = ("patch", "tokens", "x_norm_patchtokens")
FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".npz")


@dataclass
class MetricsConfig:
    """Options of :func:`compute_metrics` (and ``spatialprobe metrics``)."""

    features: list[str] = field(default_factory=list)  #: feature stores and/or token files, one per encoder
    masks: str | None = None  #: folder of <image-id>.png FG/BG masks (enables SRSS)
    out: str | None = None  #: output folder
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    radii: str = "official"  #: base radii: "official" (code) or "paper" (r_near = r_far = H/2)
    lds_near: int | None = None  #: overrides of the base radii
    lds_far: int | None = None
    cds_dmax: int | None = None
    srss_pos: int | None = None
    srss_neg: int | None = None
    sweep: list[str] = field(default_factory=list)  #: e.g. ["lds_far=2:8"]; several sweeps form a grid
    mask_rule: str = "any"  #: patch is FG if "any" pixel is (official) or a "majority" is
    mask_filter: bool = False  #: official filter: >= 25 % FG and >= 25 % BG patches, else SRSS is NaN
    mask_min_fraction: float = OFFICIAL_MIN_FRACTION
    mask_resolution: int = 256  #: masks are resized (nearest) to this many pixels per grid side
    mask_channel: int | None = None  #: channel of colour masks (0=R, 1=G, 2=B, 3=A)
    allow_missing: bool = False  #: skip ids present on one side only instead of failing
    encoder: str | None = None  #: encoder name for a single token file without one
    chunk_size: int = 256  #: images read per chunk
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("features", "metrics", "sweep"):
            v = getattr(self, name)
            if isinstance(v, str):
                setattr(self, name, comma_list(v) if name != "sweep" else [v])
        if not self.features:
            raise ConfigError("Give at least one input: --features STORE_DIR or a token file "
                              "(.safetensors/.pt/.npz with ids and patch [N,T,D]).")
        bad = sorted(set(self.metrics) - set(METRICS))
        if bad:
            raise ConfigError(f"Unknown metric(s) {', '.join(bad)}; valid: {', '.join(METRICS)}.")
        if self.radii not in ("official", "paper"):
            raise ConfigError(f"radii={self.radii!r}: use 'official' (the released code) or 'paper' (r = H/2).")
        if self.mask_rule not in RULES:
            raise ConfigError(f"mask_rule={self.mask_rule!r}: use one of {', '.join(RULES)}.")
        if self.chunk_size < 1:
            raise ConfigError(f"chunk_size={self.chunk_size} must be >= 1.")
        if self.mask_resolution < 1:
            raise ConfigError(f"mask_resolution={self.mask_resolution} must be >= 1 pixel.")
        if not 0 <= self.mask_min_fraction <= 0.5:
            raise ConfigError(f"mask_min_fraction={self.mask_min_fraction} must lie in [0, 0.5].")
        from ..checks import check_device

        check_device(self.device, "--device")
        parse_sweeps(self.sweep)  # fail early


@dataclass
class MetricsResult:
    """Per-image values (one row per encoder, setting and image) and the per-encoder summary."""

    per_image: Any  # pandas.DataFrame
    summary: Any  # pandas.DataFrame


def parse_sweeps(sweeps: list[str]) -> list[dict[str, int]]:
    """``["lds_far=2:8", "srss_neg=4,6"]`` -> the grid of overrides (``a:b`` inclusive, ``a:b:step``,
    or a comma list). No sweeps -> ``[{}]``."""
    axes: list[tuple[str, list[int]]] = []
    for spec in sweeps:
        name, sep, values = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in RADII:
            raise ConfigError(f"Sweep {spec!r} must be NAME=VALUES with NAME one of {', '.join(RADII)}, "
                              "e.g. lds_far=2:8 or srss_neg=4,6,8.")
        try:
            if ":" in values:
                parts = [int(p) for p in values.split(":")]
                if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] < 1):
                    raise ValueError
                vals = list(range(parts[0], parts[1] + 1, parts[2] if len(parts) == 3 else 1))
            else:
                vals = [int(p) for p in values.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"Sweep {spec!r}: values must be integers as a:b, a:b:step or a,b,c.") from None
        if not vals:
            raise ConfigError(f"Sweep {spec!r} gives no values.")
        axes.append((name, vals))
    if len({a for a, _ in axes}) != len(axes):
        raise ConfigError("Each radius may be swept once; merge the values into one --sweep.")
    return [dict(zip([a for a, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]


# ----------------------------------------------------------------------------- feature sources

class _Source:
    """One encoder's tokens: ``name``, ``grid``, ``ids`` and ``chunks(ids, size)`` -> (ids, tokens)."""

    def __init__(self, path: str, default_name: str | None) -> None:
        self.path = p = Path(path)
        if not p.exists():
            raise InputFileError(f"Features {str(p)!r} do not exist; pass a feature store folder or a token file "
                                 f"({', '.join(FILE_SUFFIXES)}).")
        self._store = None
        if p.is_dir():
            from .. import store

            st = store.open(p)
            if not st.has_patch:
                raise DataError(f"Feature store {str(st.path)!r} has no patch tokens (pooled only); re-extract "
                                "without --pooled-only to compute spatial metrics.")
            self._store, self.name, self.grid, self.ids = st, st.encoder, tuple(st.grid), list(st.ids)
            return
        suffix = p.suffix.lower()
        if suffix not in FILE_SUFFIXES:
            raise InputFileError(f"Features {str(p)!r}: unknown file type {suffix!r}; use a feature store folder or "
                                 f"{', '.join(FILE_SUFFIXES)} holding ids and patch [N,T,D].")
        if p.stat().st_size == 0:
            raise DataError(f"Features {str(p)!r} are an empty (0-byte) file, e.g. an interrupted copy; write or "
                            "extract them again.")
        meta: dict[str, Any] = {}
        if suffix == ".safetensors":
            from safetensors import safe_open

            try:
                self._fh = safe_open(str(p), framework="pt")
            except Exception as exc:  # noqa: BLE001 - a broken header is the user's file
                raise DataError(f"Features {str(p)!r} could not be read as safetensors ({type(exc).__name__}: "
                                f"{str(exc)[:160]}); write them again.") from None
            keys = list(self._fh.keys())
            meta = dict(self._fh.metadata() or {})
            key = next((k for k in TOKEN_KEYS if k in keys), None)
            if key is None:
                raise DataError(f"{str(p)!r} has no token tensor ({' / '.join(TOKEN_KEYS)}); it has {keys}.")
            self._tokens = self._fh.get_slice(key)
            shape = tuple(self._tokens.get_shape())
            ids = json.loads(meta["ids"]) if "ids" in meta else (
                [str(int(v)) for v in self._fh.get_tensor("ids").tolist()] if "ids" in keys else None)
            grid = meta.get("grid") or (self._fh.get_tensor("grid").tolist() if "grid" in keys else None)
        else:
            if suffix == ".npz":
                import numpy as np

                try:  # an empty, truncated or pickled file is the user's input problem, not a crash
                    with np.load(p, allow_pickle=False) as z:
                        data = {k: z[k] for k in z.files}
                except (OSError, ValueError, EOFError) as exc:
                    raise DataError(f"Features {str(p)!r} could not be read as an .npz without pickles "
                                    f"({type(exc).__name__}: {str(exc)[:160] or 'empty file'}); save ids, patch [N,T,D] "
                                    "and grid with numpy.savez.") from None
                key = next((k for k in TOKEN_KEYS if k in data), None)
                if key is None:
                    raise DataError(f"{str(p)!r} has no token array ({' / '.join(TOKEN_KEYS)}); it has {list(data)}.")
                if data[key].dtype.kind not in "fiu":
                    raise DataError(f"Features {str(p)!r}: {key!r} holds {data[key].dtype} values, not numbers; "
                                    "save the tokens as a float array [N, T, D].")
                tokens = torch.from_numpy(data[key])
            else:
                try:
                    data = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
                except Exception as exc:  # noqa: BLE001 - any load error is the user's file
                    raise DataError(f"{str(p)!r} could not be loaded with torch.load ({exc}).") from None
                if isinstance(data, torch.Tensor):
                    raise DataError(f"{str(p)!r} holds a bare tensor without image ids; save a dict "
                                    "{'ids': [...], 'patch': tensor [N,T,D], 'grid': (H, W)} so masks join by id.")
                key = next((k for k in TOKEN_KEYS if k in data), None)
                if key is None:
                    raise DataError(f"{str(p)!r} has no token tensor ({' / '.join(TOKEN_KEYS)}); it has {list(data)}.")
                tokens = data[key]
            self._tokens = tokens
            shape = tuple(tokens.shape)
            ids, grid = data.get("ids"), data.get("grid")
            meta["encoder"] = data.get("encoder")
            if ids is not None:
                ids = [str(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
            if grid is not None and hasattr(grid, "tolist"):
                grid = grid.tolist()
        if len(shape) != 3:
            raise DataError(f"{str(p)!r}: tokens must be [N, T, D]; got shape {shape}.")
        if shape[0] == 0:
            raise DataError(f"Features {str(p)!r} hold no images (tokens of shape {shape}); pass a file with at "
                            "least one image's tokens.")
        if ids is None:
            raise DataError(f"{str(p)!r} has no image ids; add 'ids' (a list of strings; for safetensors a JSON "
                            "list in the metadata) so results and masks join by id, never by position.")
        if len(ids) != shape[0]:
            raise DataError(f"{str(p)!r}: {len(ids)} ids for {shape[0]} token rows.")
        self.grid = _parse_grid(grid, shape[1], p)
        enc = meta.get("encoder")
        self.name = str(enc.item() if hasattr(enc, "item") else enc) if enc is not None else (default_name or p.stem)
        self.ids = ids

    def chunks(self, ids: list[str], size: int) -> Iterator[tuple[list[str], torch.Tensor]]:
        if self._store is not None:
            for c in self._store.iter_chunks(("patch",), chunk_size=size, ids=ids):
                yield c["ids"], c["patch"]
            return
        pos = {i: k for k, i in enumerate(self.ids)}
        rows = [pos[i] for i in ids]
        for a in range(0, len(rows), size):
            r = rows[a:a + size]
            contiguous = r == list(range(r[0], r[0] + len(r)))
            if contiguous:
                x = self._tokens[r[0]:r[0] + len(r)]
            else:
                x = torch.stack([torch.as_tensor(self._tokens[k:k + 1])[0] for k in r]) \
                    if not isinstance(self._tokens, torch.Tensor) else self._tokens[r]
            yield ids[a:a + size], torch.as_tensor(x)


def _parse_grid(grid: Any, t: int, p: Path) -> tuple[int, int]:
    if grid is None:
        s = int(round(t ** 0.5))
        if s * s != t:
            raise DataError(f"{str(p)!r}: T={t} tokens is not a square grid; store 'grid' (H, W) with the tokens.")
        return s, s
    if isinstance(grid, str):
        grid = json.loads(grid) if grid.strip().startswith("[") else [int(v) for v in grid.replace("x", ",").split(",")]
    h, w = (int(v) for v in grid)
    if h * w != t:
        raise DataError(f"{str(p)!r}: grid {h}x{w} does not match T={t} tokens.")
    return h, w


# ----------------------------------------------------------------------------- main entry

def base_radii(cfg: MetricsConfig, grid: tuple[int, int]) -> dict[str, int]:
    """The radius setting of ``cfg`` before any sweep: official or paper radii, then the overrides."""
    base = dict(OFFICIAL_RADII) if cfg.radii == "official" else paper_radii(grid)
    base.update({k: getattr(cfg, k) for k in RADII if getattr(cfg, k) is not None})
    return base


def setting_label(over: dict[str, int]) -> str:
    """The ``setting`` column of a sweep point: ``"lds_far=2,srss_neg=4"``, or ``"default"``."""
    return ",".join(f"{k}={v}" for k, v in over.items()) or "default"


def tabulate_setting(encoder: str, over: dict[str, int], setting: dict[str, int], ids: list[str],
                     values: dict[str, torch.Tensor]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One encoder under one radius setting: its per-image rows and its summary record (per metric the
    nan-mean, std, n and NaN count). ``over`` is the sweep point, ``setting`` the full radii."""
    cols = {k: v.numpy() for k, v in values.items()}
    rows = pd.DataFrame({"encoder": encoder, "setting": setting_label(over), "id": ids, **cols})
    rec: dict[str, Any] = {"encoder": encoder, "setting": setting_label(over), **setting, "n_images": len(ids)}
    for k, v in values.items():
        agg = aggregate(v)
        rec.update({k: agg["mean"], f"{k}_std": agg["std"], f"{k}_n": agg["n"], f"{k}_nan": agg["n_nan"]})
    return rows, rec


def write_metrics(cfg: MetricsConfig, rows: list[pd.DataFrame], summary: list[dict[str, Any]],
                  sweeps: list[dict[str, int]], *, inputs: list[dict[str, Any]], metrics_computed: list[str],
                  **record: Any) -> MetricsResult:
    """The result tables of a metrics run, and with ``cfg.out`` its files: ``per_image.csv`` (+ ``.parquet``),
    ``summary.csv`` and ``config.json`` (``record`` adds entries to it). Without a sweep the ``setting``
    column of ``per_image`` is dropped."""
    per_image = pd.concat(rows, ignore_index=True)
    if len(sweeps) == 1:
        per_image = per_image.drop(columns="setting")
    summary_df = pd.DataFrame(summary)
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        per_image.to_csv(out / PER_IMAGE_CSV, index=False)
        try:
            per_image.to_parquet(out / PER_IMAGE_PARQUET, index=False)
        except ImportError:  # pragma: no cover - pyarrow is a dependency
            log.warning("pyarrow missing: per_image.parquet not written")
        summary_df.to_csv(out / SUMMARY_CSV, index=False)
        write_config(out / CONFIG_JSON, cfg, inputs=inputs, metrics_computed=metrics_computed,
                     settings=[setting_label(o) for o in sweeps], **record)
    return MetricsResult(per_image=per_image, summary=summary_df)


def compute_metrics(*, config: str | Path | None = None, **options) -> MetricsResult:
    """Per-image LDS/CDS/SRSS/RMSC for each input, aggregated per encoder and radius setting.

    Options are the fields of :class:`MetricsConfig` (``config`` is an optional YAML/JSON file of them;
    keyword options override it). With ``out`` it writes ``per_image.csv`` (+ ``.parquet``),
    ``summary.csv`` and ``config.json``. Aggregation is ``nanmean`` with the NaN count reported.

    An official iREPA collection (``official:DIR``) is read by
    :func:`spatialprobe.official.compute_official_metrics` (the CLI picks it for such inputs).

    Example:
        >>> compute_metrics(features=["store/dinov2-vit-b"], masks="masks/", sweep=["lds_far=2:8"], out="m/")
    """
    from tqdm.auto import tqdm

    cfg = resolve(MetricsConfig, config, **options)
    official = [str(f) for f in cfg.features if is_official(str(f))]
    if official:
        raise ConfigError(f"{official[0]!r} is an official iREPA collection: compute its metrics with "
                          "spatialprobe.official.compute_official_metrics(features=[...]) or "
                          "`spatialprobe metrics --features official:DIR`.")
    if cfg.out:
        from ..checks import prepare_out_dir

        prepare_out_dir(cfg.out)
    sweeps = parse_sweeps(cfg.sweep)
    want = list(cfg.metrics)
    if cfg.masks is None and "srss" in want:
        if want == ["srss"]:
            raise ConfigError("SRSS needs FG/BG masks: pass --masks DIR (<image-id>.png files).")
        want.remove("srss")
        log.info("no --masks: SRSS is skipped")
    files = mask_files(cfg.masks) if cfg.masks is not None else None
    device = resolve_device(cfg.device)
    rows: list[pd.DataFrame] = []
    summary: list[dict[str, Any]] = []
    inputs: list[dict[str, Any]] = []
    names_seen: set[str] = set()
    for path in cfg.features:
        src = _Source(path, cfg.encoder if len(cfg.features) == 1 else None)
        if len(set(src.ids)) != len(src.ids):
            raise DataError(f"Features {str(src.path)!r} repeat image ids; ids must be unique.")
        if src.name in names_seen:
            raise DataError(f"Two inputs are both encoder {src.name!r}; pass each encoder once.")
        names_seen.add(src.name)
        ids = src.ids if files is None else join_ids(src.ids, list(files), allow_missing=cfg.allow_missing,
                                                     what=f"{str(src.path)!r}")
        if not ids:
            raise DataError(f"No image of {str(src.path)!r} has a mask in {cfg.masks!r}.")
        base = base_radii(cfg, src.grid)
        settings = [{**base, **over} for over in sweeps]
        for over, st in zip(sweeps, settings):
            for m, why in undefined_radii(st, src.grid).items():
                if m in want:
                    log.warning("%s [%s]: %s is NaN for every image: %s.", src.name, setting_label(over),
                                m.upper(), why)
        masks_by_id = None
        n_filtered = 0
        if files is not None:
            from .masks import store_image_sizes

            sizes = store_image_sizes(src.path) if src._store is not None else {}
            masks_by_id = load_masks(cfg.masks, src.grid, ids=ids, rule=cfg.mask_rule,
                                     resolution=cfg.mask_resolution, channel=cfg.mask_channel, image_sizes=sizes)
            if cfg.mask_filter:
                stacked = torch.stack([masks_by_id[i] for i in ids])
                keep = official_filter(stacked, cfg.mask_min_fraction)
                n_filtered = int((~keep).sum())
                for i, k in zip(ids, keep.tolist()):
                    if not k:  # an all-BG mask makes SRSS NaN, as the image is filtered out for SRSS
                        masks_by_id[i] = torch.zeros_like(masks_by_id[i])
                log.info("%s: mask filter keeps %d / %d images for SRSS", src.name, len(ids) - n_filtered, len(ids))
        values: list[list[dict[str, torch.Tensor]]] = [[] for _ in settings]
        done_ids: list[str] = []
        bar = tqdm(total=len(ids), desc=f"metrics {src.name}", unit="img", leave=False,
                   disable=len(ids) < 2 * cfg.chunk_size)
        n_zero = 0
        for cid, x in src.chunks(ids, cfg.chunk_size):
            m = torch.stack([masks_by_id[i] for i in cid]) if masks_by_id is not None else None
            try:  # the pass finds non-finite tokens on its Gram's diagonal: no extra pass over the tokens here
                out = spatial_metrics_multi(x.to(device), src.grid, None if m is None else m.to(device),
                                            settings=settings, metrics=want)
            except NonFiniteTokensError as exc:
                bad = [cid[k] for k in exc.rows]
                raise DataError(f"Features {str(src.path)!r}: the tokens of {len(bad)} image(s) are non-finite "
                                f"(NaN or inf): {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}. The input is "
                                "broken, not the metric: re-extract those images (fp16 overflow? use --dtype fp32).") from None
            # an all-zero token map makes every metric NaN; only such images are checked for it
            undefined = torch.stack([torch.isnan(v) for v in out[0].values()]).all(0).cpu()
            if bool(undefined.any()):
                z = x[undefined]
                n_zero += int((z.reshape(z.shape[0], -1).abs().amax(1) == 0).sum())
            for acc, o in zip(values, out):
                acc.append({k: v.cpu() for k, v in o.items()})
            done_ids.extend(cid)
            bar.update(len(cid))
        bar.close()
        if n_zero:
            log.warning("%s: %d of %d image(s) have all-zero tokens; their metrics are undefined (NaN, counted "
                        "in the *_nan columns).", src.name, n_zero, len(done_ids))
        for over, s, acc in zip(sweeps, settings, values):
            df, rec = tabulate_setting(src.name, over, s, done_ids, {k: torch.cat([a[k] for a in acc]) for k in want})
            rows.append(df)
            for k in want:
                if rec[f"{k}_nan"]:
                    log.info("%s [%s]: %s is NaN for %d of %d images (left out of the mean)", src.name,
                             setting_label(over), k, rec[f"{k}_nan"], len(done_ids))
            if files is not None:
                rec["n_mask_filtered"] = n_filtered
            summary.append(rec)
        inputs.append({"path": str(src.path), "encoder": src.name, "grid": list(src.grid), "n_images": len(ids),
                       "store": src._store is not None})
    res = write_metrics(cfg, rows, summary, sweeps, inputs=inputs, metrics_computed=want)
    if cfg.out:
        log.info("wrote %s", cfg.out)
    return res
