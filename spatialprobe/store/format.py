"""The feature store's format and read side: names, fingerprints, done markers, the manifest, :func:`open`.

Layout written by ``spatialprobe extract`` (through :class:`spatialprobe.store.write.StoreWriter`)::

    <root>/<encoder-id>/<fingerprint[:16]>/
        manifest.json            resolved config, versions, git revision, weights checksum,
                                 image-source fingerprint, ids, labels, shard list, bad images
        shard-00000.safetensors  patch [n,T,D] (fp16/bf16/fp32), pooled [n,D] fp32, prefix [n,P,D]
        shard-00000.done         JSON: ids, bad images, file size (written after the shard is durable)

Shard k always holds the images at positions [k·S, (k+1)·S) of the source's id list (S = shard size),
whatever the number of processes, so a resume works with any world size. A shard is written to a
temporary name, fsynced, renamed, then its done marker is written the same way: a shard without a
marker never counts. ``manifest.json`` carries ``"complete": false`` until every shard is done.

The encoder folder is named by :func:`store_dirname` (the id itself when it holds only safe characters,
e.g. ``hog@mix_cls=0.5``; otherwise a sanitised name plus a short hash); the manifest keeps the id as
given. A lock file ``<root>/<encoder-id>/.lock`` (:class:`~spatialprobe.store.write.StoreLock`) lets one
process at a time write an encoder's stores. ``--force`` builds the replacement in a hidden
``.partial-<fingerprint>`` folder beside the old store and swaps it in only when complete
(:func:`~spatialprobe.store.write.promote`), so a kill at any moment leaves at least one complete store. Hidden folders (``.partial-*``, ``.trash-*``) are never listed by
:func:`find_stores`.

Reading (:func:`open`) is memory-mapped through ``safetensors.safe_open``: :meth:`FeatureStore.iter_chunks`
streams ``chunk_size`` rows at a time, so metrics and linear probes run on stores larger than RAM.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import DataError, InputFileError, StoreError
from ..io import LOCK_NAME, read_json  # noqa: F401 - LOCK_NAME re-exported (the lock file's name)
from ..schema import MANIFEST_JSON

MANIFEST = MANIFEST_JSON
PARTIAL_PREFIX = ".partial-"
TRASH_PREFIX = ".trash-"
FORMAT_VERSION = 1
DTYPES = ("fp16", "bf16", "fp32")
_KEYS = ("patch", "pooled", "prefix")


def torch_dtype(name: str):
    """'fp16' | 'bf16' | 'fp32' → torch dtype."""
    import torch

    try:
        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]
    except KeyError:
        raise DataError(f"Unknown store dtype {name!r}; use one of {', '.join(DTYPES)}.") from None


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def done_name(k: int) -> str:
    return f"shard-{k:05d}.done"


def fingerprint(record: dict[str, Any]) -> str:
    """sha256 of a JSON-serialisable record (sorted keys): the store fingerprint."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@=+-]*")


def store_dirname(encoder_id: str) -> str:
    """The folder name of an encoder's stores under the root.

    Ids made of letters, digits and ``. _ @ = + -`` (every zoo id and variant such as
    ``hog@mix_cls=0.5``) are used as they are. Anything else (``/``, spaces, ``:``, ``,``, a leading
    dot, ...) is replaced by ``_`` and a hash of the full id is appended, so two ids never share a
    folder. The id itself is kept in the manifest (``encoder``)."""
    name = str(encoder_id)
    if _SAFE_NAME.fullmatch(name) and len(name) <= 200:
        return name
    clean = re.sub(r"[^A-Za-z0-9._@=+-]", "_", name).lstrip(".")[:120] or "encoder"
    return f"{clean}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def read_marker(folder: Path, k: int) -> dict | None:
    """The done marker of shard k when the shard is complete and intact, else None."""
    folder = Path(folder)
    m, s = folder / done_name(k), folder / shard_name(k)
    if not (m.is_file() and s.is_file()):
        return None
    rec = read_json(m)
    if not isinstance(rec, dict):
        return None
    return rec if rec.get("bytes") == s.stat().st_size else None



# ----------------------------------------------------------------------------- reader

@dataclass
class _Shard:
    file: Path
    ids: list[str]


class FeatureStore:
    """Read access to one store folder (see the module docstring).

    Attributes: ``path``, ``manifest``, ``encoder``, ``grid``, ``dim``, ``ids``, ``labels``,
    ``label_names``, ``has_patch``, ``has_prefix``, ``dtype``, ``fingerprint``.
    """

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.encoder: str = manifest["encoder"]
        self.grid: tuple[int, int] = tuple(manifest["grid"])  # type: ignore[assignment]
        self.dim: int = int(manifest["dim"])
        self.ids: list[str] = list(manifest["ids"])
        self.labels: list[int] | None = manifest.get("labels")
        self.label_names: list[str] | None = manifest.get("label_names")
        keys = set(manifest.get("keys", []))
        self.has_patch, self.has_prefix = "patch" in keys, "prefix" in keys
        self.keys = sorted(keys)
        self.dtype: str = manifest.get("dtype", "fp32")
        self.fingerprint: str = manifest.get("fingerprint", "")
        self._shards = [_Shard(self.path / s["file"], list(s["ids"])) for s in manifest["shards"]]
        self._where: dict[str, tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, encoder={self.encoder!r}, n={len(self)}, grid={self.grid}, "
                f"dim={self.dim}, keys={self.keys})")

    def _check_keys(self, keys: Sequence[str]) -> None:
        for k in keys:
            if k not in self.keys:
                hint = " (the store was written with --pooled-only; re-extract without it)" if k == "patch" else ""
                raise StoreError(f"Store {str(self.path)!r} has no {k!r} features{hint}; it has {', '.join(self.keys)}.")

    def _locate(self, ids: Sequence[str]) -> list[tuple[int, int]]:
        if self._where is None:
            self._where = {i: (s, r) for s, sh in enumerate(self._shards) for r, i in enumerate(sh.ids)}
        try:
            return [self._where[i] for i in ids]
        except KeyError as exc:
            raise StoreError(f"Image id {exc.args[0]!r} is not in store {str(self.path)!r}.") from None

    def iter_chunks(self, keys: Sequence[str] = ("patch",), chunk_size: int = 256,
                    ids: Sequence[str] | None = None) -> Iterator[dict]:
        """Yield ``{"ids": [...], key: float32 tensor, ...}`` with at most ``chunk_size`` rows each,
        in store order (or in the order of ``ids``), reading memory-mapped shards."""
        import torch
        from safetensors import safe_open

        keys = tuple([keys] if isinstance(keys, str) else keys)
        self._check_keys(keys)
        chunk_size = max(1, int(chunk_size))
        if ids is None:
            plan = [(s, r) for s, sh in enumerate(self._shards) for r in range(len(sh.ids))]
        else:
            plan = self._locate(list(ids))
        handles: dict[int, Any] = {}

        def rows(s: int, r0: int, r1: int, key: str):
            if s not in handles:
                handles.clear()  # keep one shard open at a time
                handles[s] = safe_open(str(self._shards[s].file), framework="pt")
            return handles[s].get_slice(key)[r0:r1]

        for c0 in range(0, len(plan), chunk_size):
            part = plan[c0:c0 + chunk_size]
            out: dict[str, Any] = {"ids": [self._shards[s].ids[r] for s, r in part]}
            # contiguous runs inside one shard are read as one slice
            runs: list[tuple[int, int, int]] = []
            for s, r in part:
                if runs and runs[-1][0] == s and runs[-1][2] == r:
                    runs[-1] = (s, runs[-1][1], r + 1)
                else:
                    runs.append((s, r, r + 1))
            for key in keys:
                pieces = [rows(s, a, b, key) for s, a, b in runs]
                out[key] = (pieces[0] if len(pieces) == 1 else torch.cat(pieces)).float()
            yield out

    def load(self, key: str = "patch", ids: Sequence[str] | None = None):
        """All rows of ``key`` (or those of ``ids``, in that order) as one float32 tensor."""
        import torch

        parts = [c[key] for c in self.iter_chunks((key,), chunk_size=1 << 30 if ids is None else len(ids) or 1, ids=ids)]
        if not parts:
            shape = {"pooled": (0, self.dim)}.get(key, (0, self.grid[0] * self.grid[1], self.dim))
            return torch.zeros(shape)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @property
    def bad(self) -> list[tuple[str, str]]:
        """(id, reason) of images that could not be decoded during extraction."""
        return [tuple(b) for b in self.manifest.get("bad", [])]  # type: ignore[misc]


def find_stores(path: str | Path) -> list[Path]:
    """Store folders at or below ``path`` (folders holding a manifest.json); folders with a hidden
    name below ``path`` (staged ``--force`` builds, trash) are skipped."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return [p]
    if not p.is_dir():
        return []
    return sorted(m.parent for m in p.rglob(MANIFEST)
                  if not any(part.startswith(".") for part in m.relative_to(p).parts[:-1]))


def open(path: str | Path) -> FeatureStore:  # noqa: A001 - mirrors builtins.open on purpose
    """Open a store folder, or a parent holding exactly one store."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"Feature store {str(p)!r} does not exist; write one with `spatialprobe extract`.")
    found = find_stores(p)
    if not found:
        raise StoreError(f"No feature store (manifest.json) under {str(p)!r}; write one with `spatialprobe extract`.")
    if len(found) > 1:
        listing = ", ".join(str(f.relative_to(p)) for f in found[:6])
        raise StoreError(f"{str(p)!r} holds {len(found)} feature stores ({listing}); pass one of them.")
    folder = found[0]
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"Manifest {str(folder / MANIFEST)!r} is unreadable ({exc}); re-run the extraction.") from None
    if not manifest.get("complete"):
        raise StoreError(f"Feature store {str(folder)!r} is incomplete (an extraction was interrupted); "
                         "run the same `spatialprobe extract` command again to resume it.")
    return FeatureStore(folder, manifest)
