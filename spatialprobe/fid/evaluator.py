"""ADM-protocol evaluation (FID, sFID, IS, precision, recall) and reference building, streaming.

``evaluate(samples, ref)`` reads the samples once in batches through the Inception (and, optionally, a zoo
encoder for an FD-DINOv2-style Fréchet distance), keeping only running statistics, the Inception Score's
current split and the pool_3 rows needed for precision/recall. Reference statistics come from an ADM-format
``.npz`` (``mu``, ``sigma``, ``mu_s``, ``sigma_s``, ``arr_0``); :func:`build_reference` writes one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..config import comma_list, resolve, sha256_file, write_config
from ..errors import ConfigError, DataError, InputFileError
from ..io import atomic_path
from ..runtime import resolve_device
from ..schema import CONFIG_JSON, FID_JSON, FID_METRICS
from . import metrics as M
from .images import NpzImages, open_reference_images, open_samples
from .inception import LOGITS_DIM, POOL_DIM, SPATIAL_DIM, InceptionFeatures, build_inception

log = logging.getLogger(__name__)

ALL_METRICS = FID_METRICS
#: Images kept in a reference's ``arr_0`` for precision/recall (ADM: 10k).
REF_PR_IMAGES = 10_000
_META_KEY = "spatialprobe_meta"
_REF_ACTS_KEY = "pool_arr_0"  # cached pool_3 rows of arr_0 (valid for the Inception weights in the meta)


@dataclass
class FidConfig:
    """Options of :func:`evaluate` and :func:`build_reference` (defaults = the ADM protocol)."""

    batch_size: int = 64  #: images per Inception forward (features do not depend on it)
    device: str = "auto"  #: "auto" = CUDA when present, else CPU
    inception_weights: str | None = None  #: weights file or folder; None = $SPATIALPROBE_WEIGHTS / torch hub cache
    pretrained: bool = True  #: False = random-init Inception (plumbing tests only: numbers mean nothing)
    num_samples: int | None = None  #: use only the first N samples (None = all)
    metrics: list[str] = field(default_factory=lambda: list(ALL_METRICS))
    is_split_size: int = M.IS_SPLIT_SIZE  #: ADM: in-order splits of 5000 (10 splits for 50k)
    pr_k: int = M.PR_K  #: ADM: 3rd nearest neighbour
    fd_method: str = "sqrtm"  #: "sqrtm" (ADM) or "eigh" (same value to ~1e-15, ~10x faster on CPU)
    protocol: str | None = None  #: protocol id; None = derived, e.g. adm-in256-50k
    fd_encoder: str | None = None  #: also a Fréchet distance on this zoo encoder's pooled features
    fd_pool: str = "mean"  #: "mean" of patch tokens or "cls"
    encoder_weights_dir: str | None = None  #: weights folder for the zoo encoder
    progress: bool = True
    seed: int = 0  #: reference arr_0 subset choice; random-init seed

    def __post_init__(self) -> None:
        if isinstance(self.metrics, str):
            self.metrics = comma_list(self.metrics)
        bad = sorted(set(self.metrics) - set(ALL_METRICS))
        if bad:
            raise ConfigError(f"Unknown metric(s) {', '.join(bad)}; choose from {', '.join(ALL_METRICS)}.")
        if self.fd_method not in ("sqrtm", "eigh"):
            raise ConfigError(f"fd_method must be 'sqrtm' or 'eigh', got {self.fd_method!r}.")
        if self.fd_pool not in ("mean", "cls"):
            raise ConfigError(f"fd_pool must be 'mean' or 'cls', got {self.fd_pool!r}.")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}.")
        if self.num_samples is not None and self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}.")
        from ..checks import check_device, check_range

        check_range("is_split_size", self.is_split_size, 1)
        check_range("pr_k", self.pr_k, 1)
        check_device(self.device, "--device")


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """TF32 convolutions/matmuls change Inception features by ~1e-3; the protocol is full fp32."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _count_tag(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def protocol_id(ref_tag: str, n: int, kind: str = "adm") -> str:
    """e.g. ``protocol_id("in256", 50000) == "adm-in256-50k"``."""
    return f"{kind}-{ref_tag}-{_count_tag(n)}"


def _ref_tag(path: Path, meta: dict[str, Any]) -> str:
    if meta.get("name"):
        return str(meta["name"])
    m = re.search(r"imagenet[_-]?(\d+)", path.stem, re.IGNORECASE)
    if m:
        return f"in{m.group(1)}"
    return re.sub(r"[^a-z0-9]+", "", path.stem.lower()) or "ref"


# ---------------------------------------------------------------------------------------------- feature pass


def _load_encoder(cfg: FidConfig, device: torch.device) -> Any:
    if cfg.fd_encoder is None:
        return None
    if not isinstance(cfg.fd_encoder, str):  # an Encoder object passed through the API
        return cfg.fd_encoder.to(device)
    from .. import encoders

    return encoders.get(cfg.fd_encoder, weights_dir=cfg.encoder_weights_dir, device=str(device),
                        pretrained=cfg.pretrained)


def _pooled(encoder: Any, images: torch.Tensor, pool: str) -> torch.Tensor:
    dev = getattr(encoder, "device", None)
    with torch.no_grad():
        out = encoder(images.to(dev) if dev is not None else images)
    if pool == "cls":
        if out.cls is None:
            raise DataError(f"Encoder {getattr(encoder, 'name', '?')!r} has no CLS token; use fd_pool='mean'.")
        return out.cls.float()
    return out.pooled.float()


@dataclass
class FeaturePass:
    """What one streaming pass over an image set accumulates."""

    n: int = 0
    pool: M.RunningStats | None = None
    spatial: M.RunningStats | None = None
    isc: M.StreamingInceptionScore | None = None
    pool_rows: list[np.ndarray] | None = None
    enc: M.RunningStats | None = None
    size: tuple[int, int] | None = None

    def pool_features(self) -> np.ndarray:
        return np.concatenate(self.pool_rows) if self.pool_rows else np.zeros((0, POOL_DIM), np.float32)


def feature_pass(images: Any, model: InceptionFeatures, *, batch_size: int = 64, limit: int | None = None,
                 stats: bool = True, spatial: bool = True, isc_split: int | None = None,
                 keep_pool: bool = False, encoder: Any = None, fd_pool: str = "mean",
                 on_batch: Any = None, progress: bool = True, desc: str = "inception") -> FeaturePass:
    """Stream ``images`` (any :func:`open_samples` spec) through ``model`` once and accumulate statistics.

    Args:
        stats / spatial: running pool_3 / sFID statistics.
        isc_split: Inception Score split size (None = no IS).
        keep_pool: keep the pool_3 rows (for precision/recall).
        encoder: optional zoo encoder whose pooled features get running statistics too.
        on_batch: ``fn(start_index, uint8 batch, features)`` called per batch (e.g. to write a subset).
    """
    from tqdm.auto import tqdm

    imgs = open_samples(images)
    n_total = len(imgs) if limit is None else min(limit, len(imgs))
    fp = FeaturePass(pool=M.RunningStats(POOL_DIM, "pool_3 features") if stats else None,
                     spatial=M.RunningStats(SPATIAL_DIM, "sFID features") if (stats and spatial) else None,
                     isc=M.StreamingInceptionScore(isc_split) if isc_split else None,
                     pool_rows=[] if keep_pool else None)
    with _no_tf32(), tqdm(total=n_total, unit="img", desc=desc, disable=not progress, leave=False) as bar:
        need_model = stats or isc_split or keep_pool or on_batch is not None
        for batch in imgs.iter_batches(batch_size, limit):
            feats = model(batch) if need_model else {}
            if fp.pool is not None:
                fp.pool.update(feats["pool"])
            if fp.spatial is not None:
                fp.spatial.update(feats["spatial"])
            if fp.isc is not None:
                fp.isc.update(feats["logits"])
            if fp.pool_rows is not None:
                rows = feats["pool"].cpu().numpy()
                if not np.isfinite(rows).all():
                    raise DataError(f"{desc}: Inception features contain NaN or inf.")
                fp.pool_rows.append(rows)
            if encoder is not None:
                e = _pooled(encoder, batch, fd_pool)
                if fp.enc is None:
                    fp.enc = M.RunningStats(e.shape[1], f"{getattr(encoder, 'name', 'encoder')} pooled features")
                fp.enc.update(e)
            if on_batch is not None:
                on_batch(fp.n, batch, feats)
            fp.size = tuple(batch.shape[-2:])
            fp.n += batch.shape[0]
            bar.update(batch.shape[0])
    if fp.n == 0:
        raise DataError(f"{desc}: no images were read.")
    return fp


# ---------------------------------------------------------------------------------------------- reference files


def _read_meta(npz: Any) -> dict[str, Any]:
    if _META_KEY not in npz.files:
        return {}
    try:
        return json.loads(str(npz[_META_KEY]))
    except (ValueError, TypeError):
        return {}


@dataclass
class Reference:
    """An ADM-format reference ``.npz``: statistics present, ``arr_0`` images for precision/recall."""

    path: Path
    sha256: str
    mu: np.ndarray | None
    sigma: np.ndarray | None
    mu_s: np.ndarray | None
    sigma_s: np.ndarray | None
    images: NpzImages | None
    meta: dict[str, Any]
    extra: dict[str, np.ndarray]  # fd_<encoder>_mu / _sigma, cached pool rows

    @property
    def tag(self) -> str:
        return _ref_tag(self.path, self.meta)


def load_reference(path: str | os.PathLike) -> Reference:
    """Read an ADM-format reference ``.npz`` (``mu``, ``sigma``, ``mu_s``, ``sigma_s``, ``arr_0``; any may be absent)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputFileError(f"Reference file {str(p)!r} does not exist; build one with "
                             "`spatialprobe fid-ref IMAGES --out ref.npz` or use ADM's VIRTUAL_imagenet256_labeled.npz.")
    try:
        npz = np.load(p, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise InputFileError(f"Reference {str(p)!r} is not a readable .npz: {exc}") from exc
    with npz:
        files = set(npz.files)
        get = lambda k: np.asarray(npz[k], dtype=np.float64) if k in files else None  # noqa: E731
        mu, sigma, mu_s, sigma_s = get("mu"), get("sigma"), get("mu_s"), get("sigma_s")
        meta = _read_meta(npz)
        extra = {k: npz[k] for k in files if k.startswith("fd_") or k == _REF_ACTS_KEY}
    for a, b, d in (("mu", mu, POOL_DIM), ("mu_s", mu_s, SPATIAL_DIM)):
        if b is not None and b.shape != (d,):
            raise DataError(f"Reference {str(p)!r}: {a} has shape {b.shape}, expected ({d},).")
    if (mu is None) != (sigma is None) or (mu_s is None) != (sigma_s is None):
        raise DataError(f"Reference {str(p)!r} has a mean without its covariance (or the reverse).")
    images = NpzImages(p) if "arr_0" in files else None
    if mu is None and images is None:
        raise DataError(f"Reference {str(p)!r} has neither mu/sigma nor arr_0 images; nothing to compare against.")
    return Reference(p, sha256_file(p), mu, sigma, mu_s, sigma_s, images, meta, extra)


def _weights_desc(model: InceptionFeatures) -> dict[str, Any]:
    import torch_fidelity

    return {"extractor": f"torch-fidelity {torch_fidelity.__version__} inception-v3-compat",
            "weights_file": str(model.weights_file) if model.weights_file else None,
            "weights_id": model.weights_id}


#: the time stamp of every member of a written reference: a fixed one, so that the file's sha256 depends
#: on its statistics only (two builds of the same images give the same bytes)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _member(key: str) -> zipfile.ZipInfo:
    return zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)


class _NpyStreamWriter:
    """Write one ``.npy`` member of a zip incrementally (the array shape must be known up front)."""

    def __init__(self, zf: zipfile.ZipFile, key: str, shape: tuple[int, ...], dtype: Any) -> None:
        self.fh = zf.open(_member(key), "w", force_zip64=True)
        np.lib.format.write_array_header_2_0(
            self.fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
        self.left = int(np.prod(shape[:1]))

    def write(self, rows: np.ndarray) -> None:
        self.fh.write(np.ascontiguousarray(rows).tobytes())
        self.left -= len(rows)

    def close(self) -> None:
        self.fh.close()
        if self.left:
            raise DataError(f"Reference writer: {self.left} rows missing (the image set changed during the pass?).")


def _put(zf: zipfile.ZipFile, key: str, arr: np.ndarray) -> None:
    with zf.open(_member(key), "w", force_zip64=True) as fh:
        np.lib.format.write_array(fh, np.asarray(arr), allow_pickle=False)


def build_reference(images: Any, out: str | os.PathLike, *, config: str | os.PathLike | None = None,
                    name: str | None = None, pr_images: int = REF_PR_IMAGES, resolution: int = 256,
                    model: InceptionFeatures | None = None, **overrides: Any) -> dict[str, Any]:
    """Build an ADM-format reference ``.npz`` from a set of real images.

    Writes ``mu``/``sigma`` (pool_3) and ``mu_s``/``sigma_s`` (sFID) over all images, ``arr_0`` = a seeded
    random subset of ``pr_images`` images (uint8 NHWC, for precision/recall), their pool_3 rows (a cache keyed
    by the Inception weights) and a JSON meta record. With ``fd_encoder`` also ``fd_<encoder>_mu/_sigma``.

    Args:
        images: an ``.npz`` with ``arr_0``, or any :func:`spatialprobe.data.open_source` spec (folder, ImageNet
            tree, list file, ``builtin``), centre-cropped to ``resolution`` the ADM way.
        out: the ``.npz`` to write (atomically).
        name: short tag used in protocol ids (e.g. ``in256``); default = from the file name.
        config / overrides: :class:`FidConfig` options (``batch_size``, ``device``, ``inception_weights``, …).

    Returns:
        The meta record written into the file (also has ``path``, ``sha256`` and the build's ``seconds``,
        which stay out of the file so that its sha256 identifies its statistics).
    """
    cfg = resolve(FidConfig, config, **overrides)
    from ..checks import prepare_out_file

    from ..checks import check_range

    check_range("resolution", resolution, 8, hint="the ADM centre-crop side in pixels, e.g. 256.")
    check_range("pr_images", pr_images, 1)
    prepare_out_file(out)
    device = resolve_device(cfg.device)
    imgs = open_reference_images(images, resolution=resolution)
    n = len(imgs) if cfg.num_samples is None else min(cfg.num_samples, len(imgs))
    if n < 2:
        raise DataError(f"Reference images {str(images)!r}: {n} image(s); statistics need at least 2 "
                        "(ADM references use the full training set).")
    model = model or build_inception(cfg.inception_weights, device=device, pretrained=cfg.pretrained, seed=cfg.seed)
    encoder = _load_encoder(cfg, device)
    k = min(pr_images, n)
    chosen = np.sort(np.random.default_rng(cfg.seed).choice(n, size=k, replace=False)) if k < n else np.arange(n)
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            state: dict[str, Any] = {"writer": None, "rows": []}

            def on_batch(start: int, batch: torch.Tensor, feats: dict[str, torch.Tensor]) -> None:
                idx = np.arange(start, start + batch.shape[0])
                sel = np.isin(idx, chosen)
                if not sel.any():
                    return
                nhwc = batch.permute(0, 2, 3, 1).cpu().numpy()[sel]
                if state["writer"] is None:
                    state["writer"] = _NpyStreamWriter(zf, "arr_0", (k, *nhwc.shape[1:]), np.uint8)
                elif nhwc.shape[1:] != state["shape"]:
                    raise DataError(f"Reference images {str(images)!r} differ in size ({nhwc.shape[1:3]} vs "
                                    f"{state['shape'][:2]}); arr_0 needs one size: pass a resolution.")
                state["shape"] = nhwc.shape[1:]
                state["writer"].write(nhwc)
                state["rows"].append(feats["pool"].cpu().numpy()[sel])

            fp = feature_pass(imgs, model, batch_size=cfg.batch_size, limit=n, encoder=encoder, fd_pool=cfg.fd_pool,
                              on_batch=on_batch, progress=cfg.progress, desc="reference")
            state["writer"].close()
            mu, sigma = fp.pool.finalize()
            mu_s, sigma_s = fp.spatial.finalize()
            for key, arr in (("mu", mu), ("sigma", sigma), ("mu_s", mu_s), ("sigma_s", sigma_s),
                             (_REF_ACTS_KEY, np.concatenate(state["rows"]).astype(np.float32))):
                _put(zf, key, arr)
            if fp.enc is not None:
                e_mu, e_sigma = fp.enc.finalize()
                ename = getattr(encoder, "name", str(cfg.fd_encoder))
                _put(zf, f"fd_{ename}_mu", e_mu)
                _put(zf, f"fd_{ename}_sigma", e_sigma)
            meta = {"format": "adm-reference", "name": name or _ref_tag(out, {}), "num_images": fp.n,
                    "pr_images": int(k), "image_size": list(fp.size or ()), "images": imgs.describe(),
                    "inception": _weights_desc(model), "fd_encoder": getattr(encoder, "name", None) if encoder else None,
                    "fd_pool": cfg.fd_pool if encoder else None,
                    "fd_encoder_weights_id": getattr(encoder, "weights_id", None) if encoder else None}
            _put(zf, _META_KEY, np.array(json.dumps(meta)))  # no build time in it: the sha256 names the statistics
    log.info("wrote reference %s: %d images, %d kept in arr_0", out, fp.n, k)
    return {**meta, "path": str(out), "sha256": sha256_file(out), "seconds": round(time.time() - t0, 2)}


# ---------------------------------------------------------------------------------------------- evaluation


def image_size(imgs: Any) -> tuple[int, int] | None:
    """``(H, W)`` of an image set's first image (an ``.npz`` from its header), or None when empty."""
    shape = getattr(imgs, "shape", None)
    if isinstance(imgs, NpzImages) and shape is not None:
        return int(shape[1]), int(shape[2])
    for batch in imgs.iter_batches(1, limit=1):
        return int(batch.shape[-2]), int(batch.shape[-1])
    return None


def reference_size(reference: Reference) -> tuple[int, int] | None:
    """``(H, W)`` of the images a reference was built from (its meta record, else its ``arr_0``), or None."""
    size = reference.meta.get("image_size")
    if size and len(size) == 2:
        return int(size[0]), int(size[1])
    if reference.images is not None:
        return int(reference.images.shape[1]), int(reference.images.shape[2])
    return None


def check_same_size(imgs: Any, reference: Reference, what: Any = "samples") -> None:
    """Samples must have the reference's resolution: Inception resizes both to 299 px, so 32-px samples
    scored against a 64-px reference give a number, under the reference's protocol id, that measures the
    resolution gap, not the model."""
    ref_size = reference_size(reference)
    if ref_size is None:
        log.warning("Reference %s records no image size: the samples' resolution cannot be checked against it.",
                    reference.path)
        return
    size = image_size(imgs)
    if size is not None and size != ref_size:
        name = str(what) if isinstance(what, (str, os.PathLike)) else "tensor"
        raise DataError(f"Samples {name!r} are {size[0]}x{size[1]} pixels but the reference {str(reference.path)!r} "
                        f"was built from {ref_size[0]}x{ref_size[1]} images: the score would not follow the "
                        f"reference's protocol. Sample at {ref_size[0]} px, or build a reference at "
                        f"{size[0]} px (`spatialprobe fid-ref IMAGES --resolution {size[0]} --out ref.npz`).")


def evaluate(samples: Any, ref: str | os.PathLike, *, out: str | os.PathLike | None = None,
             config: str | os.PathLike | None = None, model: InceptionFeatures | None = None,
             **overrides: Any) -> dict[str, Any]:
    """Score generated samples against an ADM-format reference: FID, sFID, IS, precision, recall.

    Args:
        samples: an ADM ``.npz`` (``arr_0`` uint8 NHWC), a folder of PNGs, the output folder of
            ``spatialprobe sample``, or a uint8 tensor ``[N, 3, H, W]``.
        ref: the reference ``.npz`` (e.g. ADM's ``VIRTUAL_imagenet256_labeled.npz`` or one from
            :func:`build_reference`).
        out: folder for ``fid.json`` (the result) and ``config.json`` (resolved options + environment).
        config / overrides: :class:`FidConfig` options.
        model: a prebuilt :class:`InceptionFeatures` (else built from ``inception_weights``).

    Returns:
        The result record: ``protocol`` (e.g. ``adm-in256-50k``), ``metrics`` (fid, sfid, is, precision,
        recall, and ``fd_<encoder>`` when asked), ``num_samples``, ``reference`` (path, sha256), ``inception``
        (weights sha256), settings and timing.
    """
    cfg = resolve(FidConfig, config, **overrides)
    if out is not None:
        from ..checks import prepare_out_dir

        prepare_out_dir(out)
    device = resolve_device(cfg.device)
    want = set(cfg.metrics)
    reference = load_reference(ref)
    imgs = open_samples(samples)
    check_same_size(imgs, reference, samples)
    n = len(imgs) if cfg.num_samples is None else min(cfg.num_samples, len(imgs))
    if n < 2 and want & {"fid", "sfid"}:
        raise DataError(f"Samples {str(samples) if not hasattr(samples, 'shape') else 'tensor'}: {n} image(s); "
                        "FID needs at least 2 for a covariance (the ADM protocol uses 50,000).")
    if n < M.IS_SPLIT_SIZE and "is" in want:
        log.info("IS over %d samples is one split of %d (ADM: 10 splits of %d for 50k).", n, n, M.IS_SPLIT_SIZE)
    t0 = time.time()
    model = model or build_inception(cfg.inception_weights, device=device, pretrained=cfg.pretrained, seed=cfg.seed)
    encoder = _load_encoder(cfg, device)
    ename = getattr(encoder, "name", None) if encoder is not None else None

    # reference side: statistics from the file, pool rows (PR) and encoder stats from cache or arr_0
    ref_mu, ref_sigma, ref_mu_s, ref_sigma_s = reference.mu, reference.sigma, reference.mu_s, reference.sigma_s
    need_pr = bool(want & {"precision", "recall"})
    skipped: dict[str, str] = {}
    if need_pr and reference.images is None:
        skipped.update(precision="reference has no arr_0 images", recall="reference has no arr_0 images")
        need_pr = False
    if "sfid" in want and ref_mu_s is None and reference.images is None:
        skipped["sfid"] = "reference has no mu_s/sigma_s"
    ref_acts = None
    if need_pr and _REF_ACTS_KEY in reference.extra and \
            reference.meta.get("inception", {}).get("weights_id") == model.weights_id:
        ref_acts = reference.extra[_REF_ACTS_KEY].astype(np.float32)
    enc_ref = None
    if encoder is not None and f"fd_{ename}_mu" in reference.extra and \
            reference.meta.get("fd_pool") == cfg.fd_pool and \
            reference.meta.get("fd_encoder_weights_id") == getattr(encoder, "weights_id", None):
        enc_ref = (reference.extra[f"fd_{ename}_mu"], reference.extra[f"fd_{ename}_sigma"])
    need_ref_pass = reference.images is not None and (
        (need_pr and ref_acts is None) or ref_mu is None or (encoder is not None and enc_ref is None)
        or ("sfid" in want and ref_mu_s is None))
    ref_note = None
    if need_ref_pass:
        if ref_mu is None or ("sfid" in want and ref_mu_s is None):
            ref_note = f"statistics computed from the reference's {len(reference.images)} arr_0 images"
            log.warning("Reference %s: %s (ADM references store mu/sigma over the full set).", reference.path, ref_note)
        rp = feature_pass(reference.images, model, batch_size=cfg.batch_size, keep_pool=need_pr,
                          stats=ref_mu is None or ref_mu_s is None, encoder=encoder if enc_ref is None else None,
                          fd_pool=cfg.fd_pool, progress=cfg.progress, desc="reference")
        if need_pr and ref_acts is None:
            ref_acts = rp.pool_features()
        if ref_mu is None:
            ref_mu, ref_sigma = rp.pool.finalize()
        if ref_mu_s is None and rp.spatial is not None:
            ref_mu_s, ref_sigma_s = rp.spatial.finalize()
        if encoder is not None and enc_ref is None:
            enc_ref = rp.enc.finalize()
            log.warning("FD on %s: reference statistics from the %d arr_0 images.", ename, rp.n)

    sp = feature_pass(imgs, model, batch_size=cfg.batch_size, limit=n, stats=bool(want & {"fid", "sfid"}),
                      spatial="sfid" in want, isc_split=cfg.is_split_size if "is" in want else None,
                      keep_pool=need_pr, encoder=encoder, fd_pool=cfg.fd_pool, progress=cfg.progress, desc="samples")
    res: dict[str, float] = {}
    if "fid" in want:
        res["fid"] = M.frechet_distance(*sp.pool.finalize(), ref_mu, ref_sigma, method=cfg.fd_method)
    if "sfid" in want and "sfid" not in skipped:
        res["sfid"] = M.frechet_distance(*sp.spatial.finalize(), ref_mu_s, ref_sigma_s, method=cfg.fd_method)
    if "is" in want:
        res["is"] = sp.isc.finalize()
    if need_pr:
        prec, rec = M.precision_recall(ref_acts, sp.pool_features(), cfg.pr_k, device=device)
        if "precision" in want:
            res["precision"] = prec
        if "recall" in want:
            res["recall"] = rec
    if encoder is not None:
        res[f"fd_{ename}"] = M.frechet_distance(*sp.enc.finalize(), *enc_ref, method=cfg.fd_method)
    for k, why in skipped.items():
        log.warning("%s skipped: %s.", k, why)

    record = {
        "protocol": cfg.protocol or protocol_id(reference.tag, sp.n),
        "metrics": res,
        "num_samples": sp.n,
        "samples": imgs.describe(),
        "sample_size": list(sp.size or ()),
        "reference": {"path": str(reference.path), "sha256": reference.sha256, "tag": reference.tag,
                      "pr_images": len(ref_acts) if ref_acts is not None else 0, "note": ref_note},
        "inception": _weights_desc(model),
        "settings": {"is_split_size": cfg.is_split_size, "is_splits": len(sp.isc.scores) if sp.isc else 0,
                     "pr_k": cfg.pr_k, "fd_method": cfg.fd_method, "pr_distance_dtype": "float32", "feature_dtype": "float32",
                     "fd_encoder": ename, "fd_pool": cfg.fd_pool if encoder is not None else None,
                     "fd_encoder_weights_id": getattr(encoder, "weights_id", None) if encoder is not None else None},
        "skipped": skipped,
        "device": str(device),
        "seconds": round(time.time() - t0, 2),
    }
    if out is not None:
        o = Path(out).expanduser()
        o.mkdir(parents=True, exist_ok=True)
        (o / FID_JSON).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        cfg_dump = dataclasses.replace(cfg, fd_encoder=ename) if encoder is not None else cfg
        write_config(o / CONFIG_JSON, cfg_dump, samples=str(samples) if isinstance(samples, (str, Path)) else "tensor",
                     ref=str(reference.path))
        record["out"] = str(o)
    return record
