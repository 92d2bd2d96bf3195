"""Batched feature extraction into the feature store (see :mod:`spatialprobe.store` for the layout).

One call = one encoder over one image source:

1. the store fingerprint is computed from everything that changes the numbers (encoder id and spec,
   weights checksum, random-init seed, preprocessing, resolution, layer, dtype, pooled-only, shard size,
   image-source fingerprint = ids + labels + file sizes/mtimes);
2. a store for the same encoder with another fingerprint under ``out`` is refused (``force`` removes it);
   a complete store with the same fingerprint is reused (no-op); an incomplete one is resumed;
3. shard k = images [k·S, (k+1)·S) of the source; under ``torchrun`` rank r takes the shards with
   k ≡ r (mod world size) that are not done yet, so a resume works with any world size;
4. DataLoader workers decode and ADM-crop in parallel (pinned memory on GPU); batches never cross a
   shard boundary, so a shard's numbers do not depend on which run or rank computed it; bf16 autocast
   on GPU, fp32 on CPU; a background thread writes finished shards (temp → fsync → rename → done marker);
5. rank 0 writes the final manifest once every shard is done.

Images that fail to decode are recorded (id, reason) in their shard's done marker and the manifest,
and the run goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import store as _store
from .data import PREPROCESS_ID, BadImageError, ImageSource, open_source
from .errors import ConfigError, StoreError

log = logging.getLogger("spatialprobe.extract")


@dataclass
class ExtractConfig:
    """Options of ``spatialprobe extract`` (defaults < config file < flags)."""

    encoder: str = "hog"  #: encoder id, or several separated by commas
    images: str = "builtin"  #: builtin | builtin:digits | builtin:lfw | folder | list file
    out: str = "features"  #: root folder; the store goes to <out>/<encoder>/<fingerprint>/
    resolution: int = 256  #: ADM centre-crop size fed to the encoder
    dtype: str = "fp16"  #: storage dtype of patch/prefix tokens (pooled is always fp32)
    batch_size: int = 0  #: 0 = auto (32 on CPU; largest power of two that fits on GPU, ≤ 256)
    num_workers: int = -1  #: DataLoader decode workers; -1 = min(8, CPU count)
    shard_size: int = 1024  #: images per shard (part of the fingerprint)
    limit: int | None = None  #: only the first N images
    pooled_only: bool = False  #: store only pooled [N, D] features (linear probes at ImageNet scale)
    prefix: bool = True  #: also store prefix (CLS) tokens when the encoder has them
    force: bool = False  #: replace a store with another fingerprint
    skip_bad: bool = False  #: undecodable images do not make the command fail
    device: str = "auto"  #: auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    random_init: bool = False  #: build the architecture with random weights (smoke tests, benchmarks)
    seed: int = 0  #: seed of the random init
    weights_dir: str | None = None  #: where checkpoints are looked for


@dataclass
class ExtractResult:
    """What one encoder's extraction produced."""

    encoder: str
    path: Path | None
    n_images: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    reused: bool = False
    computed_shards: list[int] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else float("nan")


# ----------------------------------------------------------------------------- distributed helpers

def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the default process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch
    import torch.distributed as dist

    global _OWN_GROUP
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        _OWN_GROUP = True
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


_OWN_GROUP = False


def release_distributed() -> None:
    """Destroy the process group if :func:`dist_info` created it (a clean, fast exit under torchrun)."""
    global _OWN_GROUP
    if _OWN_GROUP:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        _OWN_GROUP = False


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def resolve_device(device: str, local_rank: int = 0) -> str:
    import torch

    if device == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and torch.cuda.is_available():
        return f"cuda:{local_rank}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available; use --device cpu.")
    return device


# ----------------------------------------------------------------------------- data loading

class _Items:
    """Dataset over source positions; returns (position, uint8 tensor or None, reason)."""

    def __init__(self, source: ImageSource, positions: Sequence[int]) -> None:
        self.source, self.positions = source, list(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, j: int):
        pos = self.positions[j]
        try:
            return pos, self.source.load(pos), ""
        except BadImageError as exc:
            return pos, None, exc.reason
        except Exception as exc:  # noqa: BLE001 - any failure of one image is recorded, not fatal
            return pos, None, f"{type(exc).__name__}: {exc}"


def _collate(items):
    import torch

    good = [(p, t) for p, t, _ in items if t is not None]
    bad = [(p, r) for p, t, r in items if t is None]
    pos = [p for p, _ in good]
    imgs = torch.stack([t for _, t in good]) if good else None
    return pos, imgs, bad


def _shard_batches(plan: list[tuple[int, range]], batch_size: int, base: int = 0) -> list[list[int]]:
    """Batches of dataset indices that never cross a shard boundary."""
    out, j = [], base
    for _, rng in plan:
        n = len(rng)
        for a in range(0, n, batch_size):
            out.append(list(range(j + a, j + min(a + batch_size, n))))
        j += n
    return out


# ----------------------------------------------------------------------------- encoder helpers

def load_encoder(name: str, cfg: ExtractConfig, device: str):
    """``spatialprobe.encoders.get`` with the config's weights/random-init options."""
    import torch

    try:
        from .encoders import get
    except ImportError as exc:  # pragma: no cover - the zoo ships with the package
        raise ConfigError(f"The encoder zoo could not be imported ({exc}).") from None
    if cfg.random_init:
        torch.manual_seed(cfg.seed)
    enc = get(name, weights_dir=cfg.weights_dir, device=device, pretrained=not cfg.random_init)
    return enc


def _encoder_record(enc, cfg: ExtractConfig) -> dict[str, Any]:
    spec = None
    try:
        from .encoders import spec as _spec

        s = _spec(enc.name)
        spec = dataclasses.asdict(s) if dataclasses.is_dataclass(s) else repr(s)
    except Exception:  # noqa: BLE001 - encoders outside the zoo (tests, user code) have no spec
        spec = None
    extra = getattr(enc, "fingerprint", None)
    return {"name": enc.name, "spec": spec, "weights_id": str(getattr(enc, "weights_id", "unknown")),
            "random_init_seed": cfg.seed if cfg.random_init else None,
            "layer": getattr(enc, "layer", None), "extra": extra() if callable(extra) else extra,
            "embed_dim": int(enc.embed_dim), "grid": list(enc.grid)}


def auto_batch_size(enc, device: str, resolution: int) -> int:
    """32 on CPU; on GPU the largest power of two ≤ 256 whose forward fits in memory."""
    import torch

    if not str(device).startswith("cuda"):
        return 32
    bs = 256
    while bs > 1:
        try:
            x = torch.zeros(bs, 3, resolution, resolution, dtype=torch.uint8, device=device)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                enc(x)
            torch.cuda.synchronize(device)
            del x
            torch.cuda.empty_cache()
            return bs
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            bs //= 2
    return 1


# ----------------------------------------------------------------------------- main entry points

def store_fingerprint(enc, source: ImageSource, cfg: ExtractConfig) -> tuple[str, dict]:
    """The store fingerprint and the record it hashes."""
    rec = {"format": _store.FORMAT_VERSION, "encoder": _encoder_record(enc, cfg), "preprocess": PREPROCESS_ID,
           "resolution": source.resolution, "dtype": cfg.dtype, "pooled_only": bool(cfg.pooled_only),
           "prefix": bool(cfg.prefix), "shard_size": int(cfg.shard_size), "source": source.fingerprint(),
           "n_images": len(source)}
    return _store.fingerprint(rec), rec


def extract_one(enc, source: ImageSource, out: str | Path, cfg: ExtractConfig | None = None) -> ExtractResult:
    """Extract ``enc`` (an Encoder object) over ``source`` into ``<out>/<enc.name>/<fingerprint>/``."""
    import torch

    cfg = cfg or ExtractConfig()
    _store.torch_dtype(cfg.dtype)
    if cfg.shard_size < 1:
        raise ConfigError(f"shard_size must be ≥ 1, got {cfg.shard_size}.")
    t0 = time.perf_counter()
    rank, world, local_rank = dist_info()
    device = resolve_device(cfg.device, local_rank)
    fp, fp_rec = store_fingerprint(enc, source, cfg)
    enc_root = Path(out) / enc.name
    folder = enc_root / fp[:16]
    others = [p for p in _store.find_stores(enc_root) if p.resolve() != folder.resolve()] if enc_root.is_dir() else []
    if others and not cfg.force:
        old = others[0] / _store.MANIFEST
        try:
            import json

            old_rec = json.loads(old.read_text()).get("fingerprint_inputs", {})
        except (OSError, ValueError):
            old_rec = {}
        diff = sorted(k for k in set(old_rec) | set(fp_rec) if old_rec.get(k) != fp_rec.get(k))
        raise StoreError(f"{str(enc_root)!r} already holds a {enc.name} store with another fingerprint "
                         f"({others[0].name}; differs in: {', '.join(diff) or 'unknown'}). It is never reused "
                         "silently: pass --force to replace it, or choose another --out.")
    result = ExtractResult(encoder=enc.name, path=folder)
    manifest_path = folder / _store.MANIFEST
    if manifest_path.is_file():
        import json

        try:
            m = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            m = {}
        if m.get("complete") and m.get("fingerprint") == fp:
            log.info("%s: store %s is up to date (fingerprint %s); nothing to do.", enc.name, folder, fp[:16])
            result.reused, result.n_images = True, len(m.get("ids", []))
            result.bad = [tuple(b) for b in m.get("bad", [])]
            return result
    n = len(source)
    S = int(cfg.shard_size)
    n_shards = max(1, math.ceil(n / S))
    base_manifest = {"format": _store.FORMAT_VERSION, "fingerprint": fp, "fingerprint_inputs": fp_rec,
                     "encoder": enc.name, "grid": list(enc.grid), "dim": int(enc.embed_dim), "dtype": cfg.dtype,
                     "shard_size": S, "n_shards": n_shards, "source": source.describe(),
                     "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
                     "weights_id": str(getattr(enc, "weights_id", "unknown")), "complete": False}
    if rank == 0:
        if others and cfg.force:
            for o in others:
                log.warning("%s: removing store %s (other fingerprint; --force).", enc.name, o)
                shutil.rmtree(o, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        _store.clean_temp_files(folder)
        if not manifest_path.is_file():
            from .config import environment

            _store.atomic_write_json(manifest_path, {**base_manifest, "environment": environment()})
    _barrier(world)

    done = {k for k in range(n_shards) if _store.read_marker(folder, k) is not None}
    mine = [k for k in range(n_shards) if k % world == rank and k not in done]
    if done:
        log.info("%s: resuming; %d of %d shards already done.", enc.name, len(done), n_shards)
    error: BaseException | None = None
    try:
        if mine:
            result.computed_shards = _run_shards(enc, source, folder, mine, cfg, device, rank)
    except BaseException as exc:  # noqa: BLE001 - other ranks must not hang at the barrier below
        error = exc
    if world > 1:
        import torch.distributed as dist

        flag = torch.tensor([1 if error is not None else 0])
        dist.all_reduce(flag)
        if error is None and int(flag) > 0:
            error = StoreError(f"{enc.name}: another rank failed; run the command again to resume.")
    if error is not None:
        raise error

    if rank == 0:
        markers = [_store.read_marker(folder, k) for k in range(n_shards)]
        missing = [k for k, m in enumerate(markers) if m is None]
        if missing:
            raise StoreError(f"{enc.name}: shards {missing[:8]} of {folder} are not done; run again to resume.")
        pos = {i: j for j, i in enumerate(source.ids)}
        ids = [i for m in markers for i in m["ids"]]
        keys = sorted({k for m in markers for k in m["keys"]})
        from .config import environment

        final = {**base_manifest, "environment": environment(), "keys": keys, "ids": ids,
                 "labels": None if source.labels is None else [int(source.labels[pos[i]]) for i in ids],
                 "label_names": source.label_names,
                 "shards": [{"file": m["file"], "n": m["n"], "ids": m["ids"]} for m in markers],
                 "bad": [b for m in markers for b in m["bad"]], "layer": _layer_from(markers, enc),
                 "prefix_tokens": _prefix_tokens(folder, markers), "complete": True}
        _store.atomic_write_json(manifest_path, final)
        result.bad = [tuple(b) for b in final["bad"]]
        result.n_images = len(ids)
    _barrier(world)
    if rank != 0:
        m = _store.open(folder).manifest
        result.bad, result.n_images = [tuple(b) for b in m["bad"]], len(m["ids"])
    result.seconds = time.perf_counter() - t0
    return result


def _layer_from(markers, enc) -> str | None:
    for m in markers:
        if m.get("layer"):
            return m["layer"]
    return getattr(enc, "layer", None)


def _prefix_tokens(folder: Path, markers) -> int:
    from safetensors import safe_open

    for m in markers:
        if "prefix" in m["keys"]:
            with safe_open(str(folder / m["file"]), framework="pt") as f:
                return int(f.get_slice("prefix").get_shape()[1])
    return 0


def _run_shards(enc, source: ImageSource, folder: Path, shards: list[int], cfg: ExtractConfig, device: str,
                rank: int) -> list[int]:
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    S, n = int(cfg.shard_size), len(source)
    plan = [(k, range(k * S, min((k + 1) * S, n))) for k in shards]
    positions = [p for _, rng in plan for p in rng]
    cuda = str(device).startswith("cuda")
    if hasattr(enc, "to"):
        enc = enc.to(device) or enc
    bs = int(cfg.batch_size) if cfg.batch_size and int(cfg.batch_size) > 0 else auto_batch_size(enc, device, source.resolution)
    workers = cfg.num_workers if cfg.num_workers >= 0 else min(8, os.cpu_count() or 1)
    loader = DataLoader(_Items(source, positions), batch_sampler=_shard_batches(plan, bs), num_workers=workers,
                        collate_fn=_collate, pin_memory=cuda, prefetch_factor=4 if workers > 0 else None,
                        persistent_workers=False)
    sdt = _store.torch_dtype(cfg.dtype)
    shard_of = {}
    for k, rng in plan:
        for p in rng:
            shard_of[p] = k
    remaining = {k: len(rng) for k, rng in plan}
    acc: dict[int, dict[str, list]] = {k: {"pos": [], "patch": [], "pooled": [], "prefix": [], "bad": []} for k in shards}
    layer: list[str | None] = [None]
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
    pending: list[Future] = []
    finished: list[int] = []

    def flush(k: int) -> None:
        a = acc.pop(k)
        ids = [source.ids[p] for p in a["pos"]]
        t: dict[str, Any] = {"pooled": torch.cat(a["pooled"]) if a["pooled"] else torch.zeros(0, enc.embed_dim)}
        if not cfg.pooled_only:
            t["patch"] = (torch.cat(a["patch"]) if a["patch"]
                          else torch.zeros(0, enc.grid[0] * enc.grid[1], enc.embed_dim, dtype=sdt))
            if a["prefix"]:
                t["prefix"] = torch.cat(a["prefix"])
        bad = [(source.ids[p], r) for p, r in a["bad"]]
        for i, r in bad:
            log.warning("bad image %s: %s", i, r)

        def job():
            _store.write_shard(folder, k, ids, t, bad, extra={"layer": layer[0]})
            return k

        pending.append(writer.submit(job))
        while len(pending) > 1:  # at most one shard waiting for the disk
            finished.append(pending.pop(0).result())

    bar = tqdm(total=len(positions), unit="img", desc=enc.name, disable=rank != 0, dynamic_ncols=True,
               mininterval=1.0)
    try:
        with torch.inference_mode():
            for pos, imgs, bad in loader:
                if imgs is not None:
                    imgs = imgs.to(device, non_blocking=True)
                    if cuda:
                        with torch.autocast("cuda", dtype=torch.bfloat16):
                            out = enc(imgs)
                    else:
                        out = enc(imgs)
                    patch = out.patch.float()
                    if tuple(out.grid) != tuple(enc.grid) or patch.shape[-1] != enc.embed_dim:
                        raise StoreError(f"{enc.name}: output grid {tuple(out.grid)} / dim {patch.shape[-1]} does not "
                                         f"match the encoder's declared grid {tuple(enc.grid)} / embed_dim {enc.embed_dim}.")
                    layer[0] = layer[0] or getattr(out, "layer", None)
                    k = shard_of[pos[0]]
                    a = acc[k]
                    a["pos"].extend(pos)
                    a["pooled"].append(patch.mean(dim=1).cpu())
                    if not cfg.pooled_only:
                        a["patch"].append(patch.to(sdt).cpu())
                        if cfg.prefix and out.prefix is not None and out.prefix.shape[1] > 0:
                            a["prefix"].append(out.prefix.float().to(sdt).cpu())
                for p, r in bad:
                    acc[shard_of[p]]["bad"].append((p, r))
                for p in pos + [p for p, _ in bad]:
                    remaining[shard_of[p]] -= 1
                k0 = shard_of[(pos or [p for p, _ in bad])[0]]  # a batch may hold only bad images
                if remaining[k0] == 0:
                    flush(k0)
                bar.update(len(pos) + len(bad))
        for f in pending:
            finished.append(f.result())
    finally:
        bar.close()
        writer.shutdown(wait=True)
    return finished


def extract(config: str | Path | None = None, *, encoder_objects: Sequence[Any] | None = None,
            **overrides: Any) -> list[ExtractResult]:
    """Run ``spatialprobe extract``: every encoder in ``config.encoder`` (comma-separated) over one source.

    A failing encoder is logged and reported in its :class:`ExtractResult` (``error``); the others
    still run. ``encoder_objects`` replaces the names with ready Encoder objects (tests, user models).
    """
    from .config import resolve

    cfg = resolve(ExtractConfig, config, **overrides)
    if cfg.dtype not in _store.DTYPES:
        raise ConfigError(f"--dtype {cfg.dtype!r}: use one of {', '.join(_store.DTYPES)}.")
    source = open_source(cfg.images, resolution=cfg.resolution)
    if cfg.limit is not None:
        if cfg.limit < 1:
            raise ConfigError(f"--limit must be ≥ 1, got {cfg.limit}.")
        source = source.subset(cfg.limit)
    _, _, local_rank = dist_info()
    device = resolve_device(cfg.device, local_rank)
    todo: list[Any] = list(encoder_objects) if encoder_objects else [e.strip() for e in cfg.encoder.split(",") if e.strip()]
    if not todo:
        raise ConfigError("--encoder is empty; name at least one encoder (see `spatialprobe ls encoders`).")
    results = []
    try:
        results = _extract_all(todo, cfg, source, device)
    finally:
        release_distributed()
    return results


def _extract_all(todo: list[Any], cfg: ExtractConfig, source: ImageSource, device: str) -> list[ExtractResult]:
    results = []
    for item in todo:
        name = item if isinstance(item, str) else getattr(item, "name", repr(item))
        try:
            enc = load_encoder(item, cfg, device) if isinstance(item, str) else item
            res = extract_one(enc, source, cfg.out, cfg)
        except Exception as exc:  # noqa: BLE001 - one failing encoder must not lose the others
            log.error("%s: extraction failed: %s", name, exc)
            res = ExtractResult(encoder=name, path=None, error=str(exc))
            if len(todo) == 1:
                raise
        results.append(res)
    return results
