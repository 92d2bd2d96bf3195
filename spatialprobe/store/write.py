"""The feature store's write side: atomic files, shards and their done markers, the lock, staging and promotion.

:class:`StoreWriter` owns one encoder's store build (lock, staging folder, shards, markers, manifest,
swap-in); :func:`write_store` writes a complete store from in-memory tensors. The layout is described
in :mod:`spatialprobe.store.format`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..config import environment
from ..errors import DataError, StoreError
from ..io import (FileLock, atomic_write_bytes, atomic_write_json, clean_temp_files,  # noqa: F401 - re-exported
                  fsync_dir, read_json)
from .format import (FORMAT_VERSION, MANIFEST, PARTIAL_PREFIX, TRASH_PREFIX, done_name, find_stores,
                     fingerprint, read_marker, shard_name, store_dirname, torch_dtype)

log = logging.getLogger("spatialprobe.store")


def write_shard(folder: Path, k: int, ids: Sequence[str], tensors: dict[str, Any],
                bad: Sequence[tuple[str, str]] = (), extra: dict | None = None) -> dict:
    """Durably write shard ``k`` (tensors keyed 'patch'/'pooled'/'prefix', rows aligned with ``ids``),
    then its done marker. Returns the marker record."""
    from safetensors.torch import save

    folder = Path(folder)
    tens = {key: t.detach().cpu().contiguous() for key, t in tensors.items() if t is not None}
    for key, t in tens.items():
        if t.shape[0] != len(ids):
            raise DataError(f"Shard {k}: {key} has {t.shape[0]} rows for {len(ids)} ids.")
    data = save(tens, metadata={"ids": json.dumps(list(ids)), "format": str(FORMAT_VERSION)})
    atomic_write_bytes(folder / shard_name(k), data)
    marker = {"shard": k, "file": shard_name(k), "n": len(ids), "bytes": len(data), "ids": list(ids),
              "bad": [list(b) for b in bad], "keys": sorted(tens), **(extra or {})}
    atomic_write_json(folder / done_name(k), marker)
    return marker


# ----------------------------------------------------------------------------- locking and swapping

#: the encoder-folder lock (:class:`spatialprobe.io.FileLock`)
StoreLock = FileLock


def partial_dir(enc_root: str | Path, fp: str) -> Path:
    """Where a replacement store (``--force``) is built before it is swapped in."""
    return Path(enc_root) / f"{PARTIAL_PREFIX}{fp[:16]}"


def promote(staged: Path, final: Path, replaced: Sequence[Path]) -> None:
    """Swap a complete staged store in: rename ``staged`` to ``final`` (atomic), then move each store in
    ``replaced`` to a hidden trash name (atomic) and delete it. A kill at any point leaves at least one
    complete, visible store; leftovers are hidden and removed by :func:`clean_leftovers`."""
    staged, final = Path(staged), Path(final)
    os.replace(staged, final)
    fsync_dir(final.parent)
    promote_over(final, replaced)


def promote_over(final: Path, replaced: Sequence[Path]) -> None:
    """Remove the stores in ``replaced`` now that ``final`` is complete (moved to a hidden trash name
    first, atomically, then deleted)."""
    for old in replaced:
        old = Path(old)
        if not old.exists() or old.resolve() == Path(final).resolve():
            continue
        trash = old.with_name(f"{TRASH_PREFIX}{old.name}-{os.getpid()}")
        os.replace(old, trash)
        fsync_dir(old.parent)
        log.warning("replaced store %s by %s (--force)", old, final)
        shutil.rmtree(trash, ignore_errors=True)


def clean_leftovers(enc_root: str | Path, keep: Sequence[Path] = ()) -> None:
    """Delete hidden trash folders and staged builds other than ``keep`` (call while holding the lock)."""
    root = Path(enc_root)
    if not root.is_dir():
        return
    keep_r = {Path(k).resolve() for k in keep}
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith((TRASH_PREFIX, PARTIAL_PREFIX)) and p.resolve() not in keep_r:
            log.info("removing leftover %s", p)
            shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- one encoder's store build

class StoreWriter:
    """One encoder's store build under ``<out>/<store_dirname(key)>/<fingerprint[:16]>/``.

    Owns the write protocol: the encoder folder's lock, the choice of the folder to build in (the final
    folder, or a hidden staging folder beside a store with another fingerprint under ``force``), the
    shards and their done markers, the manifest, and the swap-in. The caller only computes tensors::

        w = StoreWriter(out, key, fp, inputs=record)
        w.lock()
        if w.plan(force) is not None:       # an identical complete store is there
            w.keep()
        else:
            w.begin(manifest)               # folder ready, manifest with "complete": false
            for k in range(n_shards):
                if k not in w.done_shards(n_shards):
                    w.write_shard(k, ids, {"patch": ..., "pooled": ...}, bad)
            w.finish(manifest, n_shards)    # final manifest, swapped in
        w.unlock()

    Attributes: ``key`` (the id the store is filed under), ``fingerprint``, ``inputs`` (the record it
    hashes, kept in the manifest as ``fingerprint_inputs``), ``root`` (the encoder folder), ``final`` (the
    store folder), ``work`` (the folder being built, set by :meth:`plan`), ``others`` (stores of the same
    encoder with another fingerprint, set by :meth:`plan`).
    """

    def __init__(self, out: str | Path, key: str, fingerprint: str, inputs: dict | None = None) -> None:
        self.key = str(key)
        self.fingerprint = fingerprint
        self.inputs = inputs or {}
        self.root = Path(out) / store_dirname(self.key)
        self.final = self.root / fingerprint[:16]
        self.work: Path | None = None
        self.others: list[Path] = []
        self._lock: StoreLock | None = None

    def lock(self) -> "StoreWriter":
        """Take the encoder folder's lock (:class:`StoreLock`); a :class:`StoreError` names the holder."""
        self._lock = StoreLock(self.root).acquire()
        return self

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def plan(self, force: bool = False, diff: Callable[[dict, dict], list[str]] | None = None) -> dict | None:
        """Decide, reading only, what this build needs. Returns the manifest of an identical complete
        store (reuse it: :meth:`keep`); raises :class:`StoreError` when a store with another fingerprint
        is there and not ``force`` (``diff(old_inputs, new_inputs)`` names the fields that changed);
        otherwise sets :attr:`work`, the folder to build in, and returns None."""
        m = read_json(self.final / MANIFEST, {}) if (self.final / MANIFEST).is_file() else {}
        self.others = [p for p in find_stores(self.root) if p.resolve() != self.final.resolve()] \
            if self.root.is_dir() else []
        if m.get("complete") and m.get("fingerprint") == self.fingerprint and (force or not self.others):
            return m
        if self.others and not force:
            old_rec = read_json(self.others[0] / MANIFEST, {}).get("fingerprint_inputs", {})
            changed = diff(old_rec, self.inputs) if (old_rec and diff is not None) else ["unknown"]
            staged = partial_dir(self.root, self.fingerprint)
            note = (f" An interrupted --force build of the new fingerprint is kept at {str(staged)!r}; "
                    "--force resumes it." if staged.is_dir() else "")
            raise StoreError(f"{str(self.root)!r} already holds a {self.key} store with another fingerprint "
                             f"({self.others[0].name}; differs in: {', '.join(changed)}). It is never reused silently: "
                             f"pass --force to replace it (the old store is kept until the new one is complete), "
                             f"or choose another --out.{note}")
        # a replacement is built beside the old store and swapped in only when complete
        self.work = self.final if (self.final.exists() or not self.others) else partial_dir(self.root, self.fingerprint)
        return None

    def keep(self) -> None:
        """Keep the identical complete store :meth:`plan` found: remove a ``--force`` leftover old store
        and hidden leftovers (call while holding the lock)."""
        if self.others:
            promote_over(self.final, self.others)
        clean_leftovers(self.root)

    def begin(self, manifest: dict) -> None:
        """Make :attr:`work` ready: create it, remove temp files a killed writer left and other hidden
        leftovers, and write ``manifest`` (plus the environment) unless a resumed build already has one."""
        work = self._work()
        work.mkdir(parents=True, exist_ok=True)
        clean_temp_files(work)
        clean_leftovers(self.root, keep=[work])
        if not (work / MANIFEST).is_file():
            atomic_write_json(work / MANIFEST, {**manifest, "environment": environment()})

    def done_shards(self, n_shards: int) -> set[int]:
        """The shards among ``0..n_shards-1`` that are complete and intact (a resume skips them)."""
        work = self._work()
        return {k for k in range(n_shards) if read_marker(work, k) is not None}

    def write_shard(self, k: int, ids: Sequence[str], tensors: dict[str, Any],
                    bad: Sequence[tuple[str, str]] = (), extra: dict | None = None) -> dict:
        """Durably write shard ``k`` and its done marker (:func:`write_shard`); safe from a worker thread."""
        return write_shard(self._work(), k, ids, tensors, bad, extra=extra)

    def finish(self, manifest: dict, n_shards: int, *, labels: Mapping[str, int] | None = None,
               label_names: Sequence[str] | None = None, layer: str | None = None) -> dict:
        """Write the complete manifest (``manifest`` + the environment + what the done markers hold:
        keys, ids, shards, bad images, the layer, prefix tokens) and swap the store in over :attr:`others`.

        ``labels`` maps each id to its label; ``layer`` is used when no shard recorded one. Raises
        :class:`StoreError` when a shard is not done. Returns the manifest written."""
        work = self._work()
        markers = [read_marker(work, k) for k in range(n_shards)]
        missing = [k for k, m in enumerate(markers) if m is None]
        if missing:
            raise StoreError(f"{self.key}: shards {missing[:8]} of {work} are not done; run again to resume.")
        ids = [i for m in markers for i in m["ids"]]
        keys = sorted({k for m in markers for k in m["keys"]})
        final = {**manifest, "environment": environment(), "keys": keys, "ids": ids,
                 "labels": None if labels is None else [int(labels[i]) for i in ids],
                 "label_names": label_names,
                 "shards": [{"file": m["file"], "n": m["n"], "ids": m["ids"]} for m in markers],
                 "bad": [b for m in markers for b in m["bad"]],
                 "layer": next((m["layer"] for m in markers if m.get("layer")), layer),
                 "prefix_tokens": _prefix_tokens(work, markers), "complete": True}
        atomic_write_json(work / MANIFEST, final)
        if work != self.final:
            promote(work, self.final, self.others)
        elif self.others:
            promote_over(self.final, self.others)
        return final

    def _work(self) -> Path:
        if self.work is None:
            raise StoreError(f"{self.key}: StoreWriter.plan() must choose the build folder first.")
        return self.work


def _prefix_tokens(folder: Path, markers) -> int:
    from safetensors import safe_open

    for m in markers:
        if "prefix" in m["keys"]:
            with safe_open(str(folder / m["file"]), framework="pt") as f:
                return int(f.get_slice("prefix").get_shape()[1])
    return 0


# ----------------------------------------------------------------------------- in-memory writer

def write_store(path: str | Path, ids: Sequence[str], *, patch=None, pooled=None, prefix=None,
                grid: tuple[int, int], encoder: str, labels: Sequence[int] | None = None,
                label_names: Sequence[str] | None = None, config: dict | None = None,
                shard_size: int = 1024, dtype: str | None = None, overwrite: bool = True) -> Path:
    """Write a complete store at ``path`` from in-memory tensors (tests, synthetic data, derived features).

    ``patch`` ``[N,T,D]`` (T = grid[0]·grid[1]) and/or ``pooled`` ``[N,D]``; ``pooled`` defaults to the
    patch mean. ``dtype`` (fp16/bf16/fp32) applies to patch and prefix; default: the patch's own dtype.
    """
    import torch

    ids = [str(i) for i in ids]
    n = len(ids)
    if len(set(ids)) != n:
        raise DataError("write_store: ids must be unique.")
    if patch is None and pooled is None:
        raise DataError("write_store: pass patch [N,T,D] and/or pooled [N,D].")
    if patch is not None:
        if patch.ndim != 3 or patch.shape[0] != n or patch.shape[1] != grid[0] * grid[1]:
            raise DataError(f"write_store: patch must be [N={n}, T={grid[0] * grid[1]}, D], got {tuple(patch.shape)}.")
        if pooled is None:
            pooled = patch.float().mean(dim=1)
    if pooled.ndim != 2 or pooled.shape[0] != n:
        raise DataError(f"write_store: pooled must be [N={n}, D], got {tuple(pooled.shape)}.")
    if prefix is not None and (prefix.ndim != 3 or prefix.shape[0] != n):
        raise DataError(f"write_store: prefix must be [N={n}, P, D], got {tuple(prefix.shape)}.")
    if labels is not None and len(labels) != n:
        raise DataError(f"write_store: {len(labels)} labels for {n} ids.")
    if dtype is None:
        dtype = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(patch.dtype if patch is not None else None, "fp32")
    tdt = torch_dtype(dtype)
    final = Path(path)
    replace = False
    if final.exists():
        if not overwrite:
            raise StoreError(f"{str(final)!r} already exists; pass overwrite=True to replace it.")
        replace = (final / MANIFEST).is_file() or any(final.glob("shard-*.safetensors"))
    # a replacement is built beside the old store and swapped in when complete
    folder = final.with_name(f"{PARTIAL_PREFIX}{final.name}-{os.getpid()}") if replace else final
    if replace and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shard_size = max(1, int(shard_size))
    shards = []
    for k, a in enumerate(range(0, n, shard_size)):
        b = min(a + shard_size, n)
        t = {"pooled": pooled[a:b].float()}
        if patch is not None:
            t["patch"] = patch[a:b].to(tdt)
        if prefix is not None:
            t["prefix"] = prefix[a:b].to(tdt)
        m = write_shard(folder, k, ids[a:b], t)
        shards.append({"file": m["file"], "n": m["n"], "ids": m["ids"]})
    keys = ["pooled"] + (["patch"] if patch is not None else []) + (["prefix"] if prefix is not None else [])
    record = {"config": config or {}, "encoder": encoder, "grid": list(grid), "dim": int(pooled.shape[1]),
              "dtype": dtype, "keys": sorted(keys), "ids": ids,
              "labels": None if labels is None else [int(x) for x in labels],
              "label_names": None if label_names is None else list(label_names), "shard_size": shard_size,
              "shards": shards, "bad": [], "complete": True, "format": FORMAT_VERSION,
              "prefix_tokens": int(prefix.shape[1]) if prefix is not None else 0}
    record["fingerprint"] = fingerprint({k: v for k, v in record.items() if k != "shards"})
    record["environment"] = environment()
    atomic_write_json(folder / MANIFEST, record)
    if replace:
        trash = final.with_name(f"{TRASH_PREFIX}{final.name}-{os.getpid()}")
        os.replace(final, trash)
        os.replace(folder, final)
        fsync_dir(final.parent)
        shutil.rmtree(trash, ignore_errors=True)
    return final
