"""Batched feature extraction into the feature store (see :mod:`spatialprobe.store` for the layout).

This module computes tensors; :class:`~spatialprobe.store.StoreWriter` owns the write protocol (lock,
staging folder, shards, done markers, manifest, swap-in).

One call = one or more encoders over one image source (:func:`extract_many`; :func:`extract_one` for
a single encoder object, :func:`extract` for the command):

1. each store fingerprint is computed from everything that changes the numbers (encoder id and spec,
   weights checksum, random-init seed, preprocessing, resolution, layer, dtype, pooled-only, shard size,
   image-source fingerprint = ids + labels + sha256 of the image bytes); a mismatch names the fields
   that changed (``resolution``, ``source.content``, ``encoder.weights_id``, ...);
2. ``<out>/<encoder>/.lock`` is taken for the whole run: a second process on the same ``--out`` and
   encoder gets a clear error instead of duplicating the work or deleting files under the first;
3. a store for the same encoder with another fingerprint under ``out`` is refused; with ``force`` the new
   store is built in a hidden folder beside it and swapped in only once complete, so a kill at any
   moment leaves the old store intact (and a rerun resumes the new one). A complete store with the same
   fingerprint is reused (no-op); an incomplete one is resumed;
4. shard k = images [k·S, (k+1)·S) of the source; under ``torchrun`` rank r takes the shards with
   k ≡ r (mod world size) that are not done yet, so a resume works with any world size;
5. DataLoader workers decode and ADM-crop each image once (pinned memory on GPU), and the uint8 batch
   feeds every encoder that still needs that shard; batches never cross a shard boundary, so a shard's
   numbers do not depend on which run or rank computed it, nor on which other encoders shared the pass;
   bf16 autocast on GPU, fp32 on CPU; a background thread writes finished shards (temp → fsync →
   rename → done marker);
6. rank 0 writes the final manifest once every shard is done.

Images that fail to decode are recorded (id, reason) in their shard's done marker and the manifest,
and the run goes on.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import runtime
from .data import PREPROCESS_ID, ImageSource, open_source
from .data.loading import SourceItems, collate_items
from .errors import ConfigError, StoreError
from .runtime import decode_workers  # also re-exported here (benchmarks/bench_extract.py imports it)
from .store import DTYPES, FORMAT_VERSION, FeatureStore, StoreWriter, fingerprint, torch_dtype
from .store import open as open_store

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
    force: bool = False  #: replace a store with another fingerprint (built beside it, swapped in when complete)
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
    fingerprint: str = ""
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else float("nan")

    def open(self) -> FeatureStore:
        """The store this extraction wrote or reused (:func:`spatialprobe.store.open`)."""
        if self.path is None:
            raise StoreError(f"{self.encoder}: no store was written ({self.error}).")
        return open_store(self.path)


# ----------------------------------------------------------------------------- distributed helpers

def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the default process group under torchrun."""
    world = runtime.world_size()
    if world <= 1:
        return 0, 1, 0
    import torch
    import torch.distributed as dist

    global _OWN_GROUP
    local_rank = runtime.local_rank()
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)  # NCCL collectives run on this rank's own GPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        _OWN_GROUP = True
    return dist.get_rank(), dist.get_world_size(), local_rank


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
    """:func:`spatialprobe.runtime.resolve_device` as a string (``auto``/``cuda`` -> ``cuda:<local_rank>``)."""
    return str(runtime.resolve_device(device, local_rank))


# ----------------------------------------------------------------------------- data loading

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


# ----------------------------------------------------------------------------- fingerprints

def store_fingerprint(enc, source: ImageSource, cfg: ExtractConfig, key: str | None = None,
                      source_record: dict | None = None) -> tuple[str, dict]:
    """The store fingerprint and the record it hashes (``key``: the id the store is filed under,
    default ``enc.name``; ``source_record``: ``source.fingerprint_record()`` when already computed)."""
    rec = {"format": FORMAT_VERSION, "id": key or enc.name, "encoder": _encoder_record(enc, cfg),
           "preprocess": PREPROCESS_ID, "resolution": source.resolution, "dtype": cfg.dtype,
           "pooled_only": bool(cfg.pooled_only), "prefix": bool(cfg.prefix), "shard_size": int(cfg.shard_size),
           "source": source_record if source_record is not None else source.fingerprint_record(),
           "n_images": len(source)}
    rec = json.loads(json.dumps(rec, sort_keys=True, default=str))  # exactly what the manifest will hold
    return fingerprint(rec), rec


#: what a changed fingerprint field means, for the refusal message
_FIELD_NOTES = {"source.content": "the bytes of at least one image file", "source.ids": "the image ids",
                "source.n": "the number of images", "source.labels": "the labels",
                "source.resolution": "the crop size", "encoder.weights_id": "the weights",
                "encoder.random_init_seed": "the random-init seed", "n_images": "the number of images"}


def _flatten(rec: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(rec, dict) and rec:
        out: dict[str, Any] = {}
        for k, v in rec.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: rec}


def fingerprint_diff(old: dict, new: dict) -> list[str]:
    """Dotted names of the fingerprint fields that differ (``resolution``, ``source.content``,
    ``encoder.weights_id``, ...), with a short note where one helps."""
    old, new = json.loads(json.dumps(old, default=str)), json.loads(json.dumps(new, default=str))
    a, b = _flatten(old), _flatten(new)
    keys = set()
    for k in set(a) | set(b):
        if a.get(k) != b.get(k):
            top = k.split(".")[0]
            # a field missing on one side, or a plain value on one side and a record on the other
            # (a store from an older spatialprobe): report the top-level field once
            same_shape = isinstance(old.get(top), dict) == isinstance(new.get(top), dict) and top in old and top in new
            keys.add(k if same_shape else top)
    return [f"{k} ({_FIELD_NOTES[k]})" if k in _FIELD_NOTES else k for k in sorted(keys)]


# ----------------------------------------------------------------------------- multi-encoder extraction

@dataclass
class _Job:
    """One encoder's part of a shared extraction pass."""

    enc: Any
    key: str
    fp: str
    fp_rec: dict
    writer: StoreWriter
    base_manifest: dict = field(default_factory=dict)
    todo: list[int] = field(default_factory=list)
    bs: int = 32
    result: ExtractResult | None = None
    exc: BaseException | None = None
    finished: bool = False  # reused or failed before the pass


def _plan_job(job: _Job, cfg: ExtractConfig) -> None:
    """Decide (read-only) what this encoder needs: reuse, refusal, or which folder to build in."""
    m = job.writer.plan(cfg.force, diff=fingerprint_diff)
    if m is not None:
        job.result.reused, job.result.n_images = True, len(m.get("ids", []))
        job.result.bad = [tuple(b) for b in m.get("bad", [])]
        job.finished = True


def _all_ranks_flags(flags: list[int], world: int) -> list[int]:
    """Element-wise sum of per-job flags over ranks (a job failed anywhere fails everywhere)."""
    if world <= 1 or not flags:
        return flags
    import torch
    import torch.distributed as dist

    t = torch.tensor(flags, dtype=torch.int64)
    if dist.get_backend() == "nccl":  # NCCL reduces device tensors only
        t = t.to(f"cuda:{torch.cuda.current_device()}")
    dist.all_reduce(t)
    return [int(x) for x in t.cpu()]


def extract_many(encoders: Sequence[Any], source: ImageSource, out: str | Path,
                 config: ExtractConfig | None = None, *, keys: Sequence[str] | None = None) -> dict[str, ExtractResult]:
    """Extract several encoders over one image source in one pass: each image is decoded and
    centre-cropped once, and the uint8 batch is fed to every encoder that still needs it.

    Args:
        encoders: encoder ids (``"hog"``, ``"dinov2-vit-b"``, variants such as ``"hog@mix_cls=0.5"``; built
            with ``config``'s ``weights_dir`` / ``random_init`` / ``seed``) and/or ready Encoder objects. All of
            them are moved to the device and held there together, so pass the ones that fit at once.
        source: an :class:`~spatialprobe.data.ImageSource` (``spatialprobe.data.open_source(spec)``).
        out: root folder; each store goes to ``<out>/<store_dirname(id)>/<fingerprint[:16]>/``, where id is
            the encoder's canonical id (an alias such as ``sam2`` is filed as ``sam2-vit-s``), or the id as
            given for a variant; the manifest keeps it exactly (``manifest["encoder"]``), ``@`` and ``=`` included.
        config: :class:`ExtractConfig` (``encoder``/``images``/``out``/``limit`` are ignored here: the
            arguments above decide).
        keys: the ids to file the stores under instead (one per encoder).

    Returns:
        ``{encoder as given (the string, or the object's name): ExtractResult}`` in the order given.
        ``result.path`` is the complete store (``result.open()`` returns its
        :class:`~spatialprobe.store.FeatureStore`), ``result.encoder`` the id it is filed under,
        ``result.reused`` True when an identical store was already there; when an encoder fails (its
        weights are missing, its forward raises, a lock is held, a fingerprint refusal)
        ``result.error`` holds the message, ``result.exception`` the exception and ``path`` is None, and
        the other encoders still complete. Nothing is raised for a single encoder's failure.

    Each store is bit-identical to a separate :func:`extract_one` run with the same batch size: batches
    never cross a shard boundary, and each encoder is called on its own batch size. Per encoder the
    same rules as a single extraction hold (fingerprint refusal unless ``force``, no-op when up to
    date, resume of unfinished shards, a lock against concurrent writers, an atomic ``--force`` swap).
    Under ``torchrun`` rank r computes the shards k ≡ r (mod world size) that any encoder still needs.
    Host memory: up to two shards of tokens per encoder (one filling, one being written); lower
    ``shard_size`` for many wide encoders.
    """
    cfg = config or ExtractConfig()
    torch_dtype(cfg.dtype)
    if cfg.shard_size < 1:
        raise ConfigError(f"shard_size must be ≥ 1, got {cfg.shard_size}.")
    given = list(encoders)
    labels = [g if isinstance(g, str) else str(getattr(g, "name", repr(g))) for g in given]
    if keys is not None and len(keys) != len(given):
        raise ConfigError(f"extract_many: {len(keys)} keys for {len(given)} encoders.")
    if len(set(labels)) != len(labels):
        dup = sorted({k for k in labels if labels.count(k) > 1})
        raise ConfigError(f"Encoder {', '.join(dup)} is listed twice; name each encoder once.")
    t0 = time.perf_counter()
    rank, world, local_rank = dist_info()
    device = resolve_device(cfg.device, local_rank)
    out_results: dict[str, ExtractResult] = {}
    encoders, keys_ok, labels_ok = [], [], []
    for j, (g, label) in enumerate(zip(given, labels)):
        if isinstance(g, str):
            try:
                enc = load_encoder(g, cfg, device)
            except Exception as exc:  # noqa: BLE001 - one failing encoder must not lose the others
                if len(given) > 1:
                    log.error("%s: extraction failed: %s", label, exc)
                out_results[label] = ExtractResult(encoder=label, path=None, error=str(exc), exception=exc)
                continue
            # a variant id (``hog@mix_cls=0.5``) is filed under the id as given
            key = g if "@" in g and "@" not in str(enc.name) else str(enc.name)
        else:
            enc, key = g, str(g.name)
        encoders.append(enc)
        keys_ok.append(str(keys[j]) if keys is not None else key)
        labels_ok.append(label)
        out_results[label] = None  # type: ignore[assignment] - filled below, keeps the order given
    keys = keys_ok
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ConfigError(f"Encoders {', '.join(labels_ok)} all resolve to {', '.join(dup)}; name each encoder once.")
    n = len(source)
    S = int(cfg.shard_size)
    n_shards = max(1, math.ceil(n / S))
    jobs: list[_Job] = []
    src_rec = source.fingerprint_record()  # hashes the image files once (cached) for every encoder
    for enc, key in zip(encoders, keys):
        fp, rec = store_fingerprint(enc, source, cfg, key, src_rec)
        job = _Job(enc=enc, key=key, fp=fp, fp_rec=rec, writer=StoreWriter(out, key, fp, inputs=rec))
        job.result = ExtractResult(encoder=key, path=job.writer.final, fingerprint=fp)
        jobs.append(job)

    def fail(job: _Job, exc: BaseException) -> None:
        if job.exc is None:
            job.exc = exc
            job.result.error, job.result.path = str(exc), None
            if len(given) > 1:  # a single encoder's failure is raised by the caller, not logged twice
                log.error("%s: extraction failed: %s", job.key, exc)
        job.finished = True

    try:
        # 1. rank 0 locks every encoder folder; 2. every rank plans (reads only); 3. flags are shared
        if rank == 0:
            for job in jobs:
                try:
                    job.writer.lock()
                except StoreError as exc:
                    fail(job, exc)
        for job in jobs:
            if not job.finished:
                try:
                    _plan_job(job, cfg)
                except StoreError as exc:
                    fail(job, exc)
        flags = _all_ranks_flags([1 if j.exc is not None else 0 for j in jobs], world)
        for job, f in zip(jobs, flags):
            if f and job.exc is None:
                fail(job, StoreError(f"{job.key}: rank 0 could not start this extraction; see its error."))
        active = [j for j in jobs if not j.finished]  # the same list on every rank
        # 4. rank 0 prepares the folders
        if rank == 0:
            for job in jobs:
                if job.exc is not None:
                    continue
                if job.finished:  # reused; a --force leftover old store is removed now
                    job.writer.keep()
                    log.info("%s: store %s is up to date (fingerprint %s); nothing to do.", job.key,
                             job.writer.final, job.fp[:16])
                    continue
                job.base_manifest = _base_manifest(job, source, cfg, n_shards)
                try:
                    job.writer.begin(job.base_manifest)
                except OSError as exc:
                    fail(job, _write_error(job, exc))
        else:
            for job in jobs:
                if not job.finished:
                    job.base_manifest = _base_manifest(job, source, cfg, n_shards)
        _barrier(world)

        # 5. the shared pass over every shard some encoder still needs
        for job in active:
            if job.exc is not None:
                continue
            done = job.writer.done_shards(n_shards)
            job.todo = [k for k in range(n_shards) if k % world == rank and k not in done]
            if done:
                log.info("%s: resuming; %d of %d shards already done.", job.key, len(done), n_shards)
        pass_error: BaseException | None = None
        try:
            if any(j.todo and j.exc is None for j in active):
                _run_shared([j for j in active if j.todo and j.exc is None], source, cfg, device, rank, fail)
        except BaseException as exc:  # noqa: BLE001 - other ranks must not hang at the collectives below
            pass_error = exc
        flags = _all_ranks_flags([1 if (j.exc is not None or pass_error is not None) else 0 for j in active]
                                 + [1 if pass_error is not None else 0], world)
        if pass_error is not None:
            raise pass_error
        if flags and flags[-1]:
            raise StoreError("another rank failed; run the command again to resume.")
        for job, f in zip(active, flags):
            if f and job.exc is None:
                fail(job, StoreError(f"{job.key}: another rank failed; run the command again to resume."))

        # 6. rank 0 writes the manifests and swaps staged builds in
        if rank == 0:
            for job in active:
                if job.exc is not None:
                    continue
                try:
                    _finalize(job, source)
                except StoreError as exc:
                    fail(job, exc)
                except OSError as exc:
                    fail(job, _write_error(job, exc))
        _barrier(world)
        if rank != 0:
            for job in active:
                if job.exc is None:
                    m = open_store(job.writer.final).manifest
                    job.result.bad, job.result.n_images = [tuple(b) for b in m["bad"]], len(m["ids"])
    finally:
        for job in jobs:
            job.writer.unlock()
    seconds = time.perf_counter() - t0
    for job, label in zip(jobs, labels_ok):
        job.result.seconds = seconds
        job.result.exception = job.exc
        out_results[label] = job.result
    return out_results


def _write_error(job: _Job, exc: OSError) -> StoreError:
    where = exc.filename or job.writer.work
    return StoreError(f"{job.key}: cannot write {str(where)!r} ({exc.strerror or exc}); free space or fix the "
                      "permissions, or choose another --out, then run the same command again to resume.")


def _base_manifest(job: _Job, source: ImageSource, cfg: ExtractConfig, n_shards: int) -> dict:
    enc = job.enc
    return {"format": FORMAT_VERSION, "fingerprint": job.fp, "fingerprint_inputs": job.fp_rec,
            "encoder": job.key, "grid": list(enc.grid), "dim": int(enc.embed_dim), "dtype": cfg.dtype,
            "shard_size": int(cfg.shard_size), "n_shards": n_shards, "source": source.describe(),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
            "weights_id": str(getattr(enc, "weights_id", "unknown")), "complete": False}


def _finalize(job: _Job, source: ImageSource) -> None:
    labels = None if source.labels is None else dict(zip(source.ids, source.labels))
    final = job.writer.finish(job.base_manifest, job.base_manifest["n_shards"], labels=labels,
                              label_names=source.label_names, layer=getattr(job.enc, "layer", None))
    job.result.path = job.writer.final
    job.result.bad = [tuple(b) for b in final["bad"]]
    job.result.n_images = len(final["ids"])


def extract_one(enc, source: ImageSource, out: str | Path, cfg: ExtractConfig | None = None) -> ExtractResult:
    """Extract ``enc`` (an Encoder object) over ``source`` into ``<out>/<enc.name>/<fingerprint>/``
    (:func:`extract_many` with one encoder); a failure is raised."""
    (res,) = extract_many([enc], source, out, cfg).values()
    if res.exception is not None:
        raise res.exception
    return res


class _Acc:
    """One encoder's rows of one shard, accumulated batch by batch."""

    def __init__(self) -> None:
        self.pos: list[int] = []
        self.patch: list = []
        self.pooled: list = []
        self.prefix: list = []
        self.bad: list[tuple[int, str]] = []
        self.layer: str | None = None


def _forward_into(job: _Job, acc: _Acc, pos: list[int], imgs, cfg: ExtractConfig, sdt, cuda: bool) -> None:
    import torch

    enc = job.enc
    for a in range(0, len(pos), job.bs):
        x = imgs[a:a + job.bs]
        if cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = enc(x)
        else:
            out = enc(x)
        patch = out.patch.float()
        if tuple(out.grid) != tuple(enc.grid) or patch.shape[-1] != enc.embed_dim:
            raise StoreError(f"{job.key}: output grid {tuple(out.grid)} / dim {patch.shape[-1]} does not "
                             f"match the encoder's declared grid {tuple(enc.grid)} / embed_dim {enc.embed_dim}.")
        acc.layer = acc.layer or getattr(out, "layer", None)
        acc.pos.extend(pos[a:a + job.bs])
        acc.pooled.append(patch.mean(dim=1).cpu())
        if not cfg.pooled_only:
            acc.patch.append(patch.to(sdt).cpu())
            if cfg.prefix and out.prefix is not None and out.prefix.shape[1] > 0:
                acc.prefix.append(out.prefix.float().to(sdt).cpu())


def _run_shared(jobs: list[_Job], source: ImageSource, cfg: ExtractConfig, device: str, rank: int, fail) -> None:
    """Decode each image of the shards any job needs once; feed every job that needs its shard."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    S, n = int(cfg.shard_size), len(source)
    shards = sorted(set().union(*(j.todo for j in jobs)))
    needs = {k: [j for j in jobs if k in set(j.todo)] for k in shards}
    plan = [(k, range(k * S, min((k + 1) * S, n))) for k in shards]
    positions = [p for _, rng in plan for p in rng]
    cuda = str(device).startswith("cuda")
    for job in jobs:
        if hasattr(job.enc, "to"):
            job.enc = job.enc.to(device) or job.enc
        job.bs = int(cfg.batch_size) if cfg.batch_size and int(cfg.batch_size) > 0 else \
            auto_batch_size(job.enc, device, source.resolution)
    bs = max(j.bs for j in jobs)
    workers = decode_workers(cfg.num_workers)
    loader = DataLoader(SourceItems(source, positions), batch_sampler=_shard_batches(plan, bs), num_workers=workers,
                        collate_fn=collate_items, pin_memory=cuda, prefetch_factor=4 if workers > 0 else None,
                        persistent_workers=False)
    sdt = torch_dtype(cfg.dtype)
    shard_of = {p: k for k, rng in plan for p in rng}
    remaining = {k: len(rng) for k, rng in plan}
    accs: dict[tuple[int, int], _Acc] = {}
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
    pending: list[tuple[_Job, Future]] = []

    def collect(job: _Job, fut: Future) -> None:
        try:
            job.result.computed_shards.append(fut.result())
        except OSError as exc:  # a full disk, a read-only folder: that encoder fails, named
            fail(job, _write_error(job, exc))
        except Exception as exc:  # noqa: BLE001 - a failed write fails that encoder only
            fail(job, exc)

    def flush(job: _Job, k: int) -> None:
        a = accs.pop((id(job), k))
        enc = job.enc
        ids = [source.ids[p] for p in a.pos]
        t: dict[str, Any] = {"pooled": torch.cat(a.pooled) if a.pooled else torch.zeros(0, enc.embed_dim)}
        if not cfg.pooled_only:
            t["patch"] = (torch.cat(a.patch) if a.patch
                          else torch.zeros(0, enc.grid[0] * enc.grid[1], enc.embed_dim, dtype=sdt))
            if a.prefix:
                t["prefix"] = torch.cat(a.prefix)
        bad = [(source.ids[p], r) for p, r in a.bad]
        store_writer, layer = job.writer, a.layer

        def write():
            store_writer.write_shard(k, ids, t, bad, extra={"layer": layer})
            return k

        pending.append((job, writer.submit(write)))
        while len(pending) > len(jobs):  # at most one shard per encoder waiting for the disk
            collect(*pending.pop(0))

    names = ",".join(j.key for j in jobs)
    bar = tqdm(total=len(positions), unit="img", desc=names if len(names) <= 40 else f"{len(jobs)} encoders",
               disable=rank != 0, dynamic_ncols=True, mininterval=1.0)
    try:
        with torch.inference_mode():
            for pos, imgs, bad in loader:
                k = shard_of[(pos or [p for p, _ in bad])[0]]  # a batch never crosses a shard boundary
                live = [j for j in needs[k] if j.exc is None]
                if not live and all(j.exc is not None for j in jobs):
                    break
                if imgs is not None:
                    imgs = imgs.to(device, non_blocking=True)
                for job in live:
                    acc = accs.setdefault((id(job), k), _Acc())
                    try:
                        if imgs is not None:
                            _forward_into(job, acc, pos, imgs, cfg, sdt, cuda)
                    except Exception as exc:  # noqa: BLE001 - one failing encoder must not stop the others
                        fail(job, exc)
                        continue
                    acc.bad.extend(bad)
                for p in pos + [p for p, _ in bad]:
                    remaining[shard_of[p]] -= 1
                if remaining[k] == 0:
                    for job in needs[k]:
                        if job.exc is None:
                            flush(job, k)
                        accs.pop((id(job), k), None)
                bar.update(len(pos) + len(bad))
        while pending:
            collect(*pending.pop(0))
    finally:
        bar.close()
        writer.shutdown(wait=True)


# ----------------------------------------------------------------------------- the command

def split_encoder_ids(value: str) -> list[str]:
    """``"pixels,hog,sift"`` → ids. A piece holding ``=`` but no ``@`` continues the variant before it,
    so ``"hog@mix_cls=0.5,layer=8,sift"`` → ``["hog@mix_cls=0.5,layer=8", "sift"]``."""
    out: list[str] = []
    for piece in (p.strip() for p in str(value).split(",")):
        if not piece:
            continue
        if out and "=" in piece and "@" not in piece and "@" in out[-1]:
            out[-1] = f"{out[-1]},{piece}"
        else:
            out.append(piece)
    return out


def check_config(cfg: ExtractConfig) -> None:
    """Every range, the device and the output folder of ``cfg``, before any image is read (the same
    checks for flags, a config file and the Python API)."""
    from .checks import check_device, check_range, prepare_out_dir

    if cfg.dtype not in DTYPES:
        raise ConfigError(f"--dtype {cfg.dtype!r}: use one of {', '.join(DTYPES)}.")
    check_range("--limit", cfg.limit, 1, hint="leave it out to use every image.")
    check_range("--resolution", cfg.resolution, 8, hint="the ADM centre-crop side in pixels, e.g. 256.")
    check_range("--shard-size", cfg.shard_size, 1)
    check_range("--workers", cfg.num_workers, -1, hint="-1 = min(8, CPU count); 0 = decode in this process.")
    check_range("--batch-size", cfg.batch_size, 0, hint="0 = auto.")
    check_device(cfg.device, "--device")
    prepare_out_dir(cfg.out)


def extract(config: str | Path | None = None, *, encoder_objects: Sequence[Any] | None = None,
            source: ImageSource | None = None, **overrides: Any) -> list[ExtractResult]:
    """Run ``spatialprobe extract``: every encoder in ``config.encoder`` (comma-separated) over one source,
    in one shared decoding pass (:func:`extract_many`).

    A failing encoder is logged and reported in its :class:`ExtractResult` (``error``); the others
    still run (with a single encoder the error is raised). ``encoder_objects`` replaces the names with
    ready Encoder objects (tests, user models), and ``source`` replaces ``images`` / ``limit`` with a ready
    :class:`~spatialprobe.data.ImageSource` (e.g. the study's decoded-image cache).
    """
    from .config import resolve

    cfg = resolve(ExtractConfig, config, **overrides)
    check_config(cfg)
    if source is None:
        source = open_source(cfg.images, resolution=cfg.resolution)
        if cfg.limit is not None:
            source = source.subset(cfg.limit)
    _, _, local_rank = dist_info()
    device = resolve_device(cfg.device, local_rank)
    todo: list[Any] = list(encoder_objects) if encoder_objects else split_encoder_ids(cfg.encoder)
    if not todo:
        raise ConfigError("--encoder is empty; name at least one encoder (see `spatialprobe ls encoders`).")
    try:
        return _extract_all(todo, cfg, source, device)
    finally:
        release_distributed()


def _extract_all(todo: list[Any], cfg: ExtractConfig, source: ImageSource, device: str) -> list[ExtractResult]:
    results = list(extract_many(todo, source, cfg.out, cfg).values())
    if len(results) == 1 and results[0].exception is not None:
        raise results[0].exception
    return results
