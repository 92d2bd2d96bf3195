"""Image sources: an ordered list of stable string ids, optional labels, and ``load(i)``.

Every source yields uint8 ``[3, R, R]`` tensors after the ADM centre crop
(:func:`spatialprobe.data.preprocess.center_crop_arr`). Ids never depend on the order files were found
in: folders are walked and sorted, so the same folder always gives the same id list.

Fingerprints are content-based: a file source hashes the bytes of its files (sha256), so an image
rewritten with the same size and modification time still changes the fingerprint. Each file's hash is
computed once and cached (:class:`ContentHashCache`, an SQLite file under ``$SPATIALPROBE_CACHE`` or
``~/.cache/spatialprobe``) keyed by (path, device, inode, size, mtime, ctime): ``ctime`` cannot be set
back by ``touch``/``os.utime``, so restoring the old mtime after a rewrite does not hide the change, and
an unchanged tree costs one ``stat`` per file. Built-in sets are fingerprinted by the versions of the
packages that ship them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..config import sha256_file
from ..errors import DataError, InputFileError
from .preprocess import PREPROCESS_ID, BadImageError, array_to_pil, center_crop_arr, decode_file, to_tensor

#: File suffixes treated as images when walking a folder (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                  ".pbm", ".pnm", ".jfif")

log = logging.getLogger("spatialprobe.data")

#: What a file source's ``content`` fingerprint field is made of (recorded in every store manifest).
CONTENT_HASH = "sha256 of each file's bytes, in id order"


# ----------------------------------------------------------------------------- content hashes

def cache_dir() -> Path:
    """``$SPATIALPROBE_CACHE``, else ``$XDG_CACHE_HOME/spatialprobe``, else ``~/.cache/spatialprobe``."""
    if os.environ.get("SPATIALPROBE_CACHE"):
        return Path(os.environ["SPATIALPROBE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spatialprobe"


def sha256_of_file(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes (a module-level name, so tests can count the reads)."""
    return sha256_file(path)


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ContentHashCache:
    """sha256 of files, cached in memory and in an SQLite file by (path, dev, inode, size, mtime, ctime).

    A file whose stat key is unchanged is never read again; any change of the key (a rewrite, a
    replacement, ``os.utime``, a copy) makes it re-hashed. When the cache file cannot be written
    (read-only home, odd file systems) hashes are still computed, just not kept across processes.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else cache_dir() / "file-hashes.sqlite"
        self._mem: dict[str, tuple[tuple, str]] = {}
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(str(self.path), timeout=30)
            con.execute("CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, "
                        "size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, sha256 TEXT)")
            return con
        except (OSError, sqlite3.Error) as exc:
            log.debug("content-hash cache %s unavailable (%s); hashing without it", self.path, exc)
            return None

    def digests(self, files: Sequence[str | Path], *, workers: int = 8, progress: bool = True) -> list[str | None]:
        """sha256 of each file (None for a file that cannot be read), reading only files not cached."""
        paths = [os.path.abspath(f) for f in files]
        keys: list[tuple | None] = []
        for p in paths:
            try:
                keys.append(_stat_key(os.stat(p)))
            except OSError:
                keys.append(None)
        out: list[str | None] = [None] * len(paths)
        todo = []
        for j, (p, k) in enumerate(zip(paths, keys)):
            if k is None:
                continue
            hit = self._mem.get(p)
            if hit is not None and hit[0] == k:
                out[j] = hit[1]
            else:
                todo.append(j)
        if not todo:
            return out
        con = self._connect()
        if con is not None:
            try:
                for a in range(0, len(todo), 500):
                    part = todo[a:a + 500]
                    rows = con.execute(f"SELECT path, dev, ino, size, mtime_ns, ctime_ns, sha256 FROM hashes WHERE path IN "
                                       f"({','.join('?' * len(part))})", [paths[j] for j in part]).fetchall()
                    known = {r[0]: (tuple(r[1:6]), r[6]) for r in rows}
                    for j in part:
                        hit = known.get(paths[j])
                        if hit is not None and hit[0] == keys[j]:
                            out[j] = hit[1]
                            self._mem[paths[j]] = hit
            except sqlite3.Error as exc:
                log.debug("content-hash cache %s unreadable (%s)", self.path, exc)
        missing = [j for j in todo if out[j] is None]
        if missing:
            from tqdm.auto import tqdm

            def one(j: int) -> tuple[int, str | None, tuple | None]:
                try:
                    before = keys[j]
                    digest = sha256_of_file(paths[j])
                    after = _stat_key(os.stat(paths[j]))
                    return j, digest, after if after == before else None  # changed while read: not cached
                except OSError:
                    return j, None, None

            fresh = []
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(missing)))) as pool:
                for j, digest, key in tqdm(pool.map(one, missing), total=len(missing), unit="file",
                                           desc="hashing images", disable=not progress or len(missing) < 2000,
                                           mininterval=1.0):
                    out[j] = digest
                    if digest is not None and key is not None:
                        with self._lock:
                            self._mem[paths[j]] = (key, digest)
                        fresh.append((paths[j], *key, digest))
            if con is not None and fresh:
                try:
                    with con:
                        con.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)", fresh)
                except sqlite3.Error as exc:
                    log.debug("content-hash cache %s not written (%s)", self.path, exc)
        if con is not None:
            con.close()
        return out


_CACHES: dict[str, ContentHashCache] = {}


def content_hash_cache() -> ContentHashCache:
    """The process-wide :class:`ContentHashCache` for the current :func:`cache_dir`."""
    key = str(cache_dir())
    if key not in _CACHES:
        _CACHES[key] = ContentHashCache()
    return _CACHES[key]


def _digest_list(items: Iterable[object]) -> str:
    h = hashlib.sha256()
    for x in items:
        h.update(json.dumps(x, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


class ImageSource:
    """Base class. Subclasses set ``ids`` (and ``labels``/``label_names`` when known) and implement
    :meth:`load_pil`.

    Attributes:
        ids: stable string ids, in extraction order.
        labels: integer labels aligned with ``ids`` or None.
        label_names: the name of each label value or None.
        resolution: output side length R of :meth:`load`.
        spec: the string the source was opened from.
    """

    ids: list[str]
    labels: list[int] | None = None
    label_names: list[str] | None = None
    kind: str = "source"

    def __init__(self, spec: str, resolution: int = 256) -> None:
        if int(resolution) < 1:
            raise DataError(f"resolution must be a positive number of pixels, got {resolution}.")
        self.spec = spec
        self.resolution = int(resolution)

    def __len__(self) -> int:
        return len(self.ids)

    def load_pil(self, i: int):
        """The i-th image as an RGB PIL image (before cropping). Raises BadImageError."""
        raise NotImplementedError

    def load(self, i: int):
        """The i-th image as uint8 ``[3, R, R]`` (ADM centre crop). Raises BadImageError."""
        return to_tensor(center_crop_arr(self.load_pil(i), self.resolution))

    def _content_key(self, index: Sequence[int] | None = None) -> object:
        """Data that changes when the images change (hashes of file bytes, package versions), for the
        images at ``index`` (all when None)."""
        return None

    #: how ``content`` is computed, for the record (see :data:`CONTENT_HASH`)
    content_kind: str = "none"

    def fingerprint_record(self) -> dict:
        """The fields the fingerprint hashes, each as a short value or digest, so a mismatch can name
        the field that changed: kind, preprocess, resolution, n, ids, labels, label_names, content."""
        return {"kind": self.kind, "preprocess": PREPROCESS_ID, "resolution": self.resolution, "n": len(self.ids),
                "ids": _digest_list(self.ids), "labels": _digest_list(self.labels or []) if self.labels is not None
                else None, "label_names": self.label_names, "content_kind": self.content_kind,
                "content": self._content_key()}

    def fingerprint(self) -> str:
        """sha256 of :meth:`fingerprint_record` (ids, labels, preprocessing, resolution, image content)."""
        return hashlib.sha256(json.dumps(self.fingerprint_record(), sort_keys=True, default=str).encode()).hexdigest()

    def subset(self, n: int) -> "ImageSource":
        """The first ``n`` images (``--limit``), as a new source."""
        return _Subset(self, range(min(int(n), len(self))))

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "n": len(self), "resolution": self.resolution,
                "labelled": self.labels is not None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, n={len(self)}, resolution={self.resolution})"


class _Subset(ImageSource):
    def __init__(self, base: ImageSource, index: Sequence[int]) -> None:
        super().__init__(base.spec, base.resolution)
        self.base, self.index = base, list(index)
        self.kind = base.kind
        self.ids = [base.ids[i] for i in self.index]
        self.labels = None if base.labels is None else [base.labels[i] for i in self.index]
        self.label_names = base.label_names

    def load_pil(self, i: int):
        return self.base.load_pil(self.index[i])

    @property
    def content_kind(self) -> str:  # type: ignore[override]
        return self.base.content_kind

    def _content_key(self, index: Sequence[int] | None = None) -> object:
        mine = self.index if index is None else [self.index[i] for i in index]
        try:
            return self.base._content_key(mine)
        except TypeError:  # a subclass with the older signature _content_key(self): the whole source
            return self.base._content_key()


class FileSource(ImageSource):
    """Images on disk. ``files[i]`` is the path of ``ids[i]``; ``root`` is where ids are relative to."""

    kind = "files"

    def __init__(self, spec: str, files: list[Path], ids: list[str], *, labels: list[int] | None = None,
                 label_names: list[str] | None = None, resolution: int = 256) -> None:
        super().__init__(spec, resolution)
        seen: dict[str, Path] = {}
        for i, f in zip(ids, files):
            if i in seen:
                raise DataError(f"Two files map to the image id {i!r}: {seen[i]} and {f}. Ids are paths "
                                "without the extension; rename one of them.")
            seen[i] = f
        self.files, self.ids, self.labels, self.label_names = list(files), list(ids), labels, label_names

    content_kind = CONTENT_HASH

    def load_pil(self, i: int):
        return decode_file(self.files[i], self.ids[i])

    def _content_key(self, index: Sequence[int] | None = None) -> object:
        files = self.files if index is None else [self.files[i] for i in index]
        return _digest_list(d or "unreadable" for d in content_hash_cache().digests(files))


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def folder_source(root: str | Path, *, resolution: int = 256, labels: bool | None = None) -> FileSource:
    """All image files under ``root`` (recursive), id = relative path without the extension.

    ``labels=None`` (auto): when every image sits exactly one folder deep (``<class>/<file>``, the
    ImageNet ``<split>/<class>/*`` layout with ``root`` = the split folder), labels are the sorted
    class-folder names. ``labels=True`` requires that layout; ``labels=False`` never labels.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputFileError(f"Image folder {str(root)!r} does not exist.")
    files = sorted((p for p in root.rglob("*") if p.is_file() and _is_image(p)),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise InputFileError(f"Image folder {str(root)!r} holds no image files ({', '.join(IMAGE_SUFFIXES[:6])}, ...).")
    rel = [p.relative_to(root) for p in files]
    ids = [r.with_suffix("").as_posix() for r in rel]
    tree = all(len(r.parts) == 2 for r in rel)
    if labels is True and not tree:
        raise DataError(f"{str(root)!r} is not a <class>/<image> tree: some images are not exactly one folder deep.")
    lab = names = None
    if tree and labels is not False:
        names = sorted({r.parts[0] for r in rel})
        index = {n: k for k, n in enumerate(names)}
        lab = [index[r.parts[0]] for r in rel]
    src = FileSource(str(root), files, ids, labels=lab, label_names=names, resolution=resolution)
    src.kind = "imagefolder" if lab is not None else "folder"
    return src


def list_source(list_file: str | Path, *, resolution: int = 256) -> FileSource:
    """A text file with one image path per line, optionally followed by a TAB or comma and an
    integer label. Relative paths are relative to the list file's folder; ``#`` starts a comment.
    Id = the path as written, without the extension.
    """
    lf = Path(list_file)
    if not lf.is_file():
        raise InputFileError(f"Image list file {str(lf)!r} does not exist.")
    files, ids, labels = [], [], []
    for n, line in enumerate(lf.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path, label = line, None
        for sep in ("\t", ","):
            if sep in line:
                path, _, tail = line.rpartition(sep)
                try:
                    label = int(tail.strip())
                except ValueError:
                    raise DataError(f"{lf}:{n}: label {tail.strip()!r} is not an integer "
                                    "(format: path[<TAB or ,>label]).") from None
                path = path.strip()
                break
        p = Path(path)
        files.append(p if p.is_absolute() else lf.parent / p)
        ids.append(Path(path).with_suffix("").as_posix())
        labels.append(label)
    if not files:
        raise DataError(f"Image list file {str(lf)!r} lists no images.")
    have = [x is not None for x in labels]
    if any(have) and not all(have):
        raise DataError(f"Image list file {str(lf)!r}: either every line or no line has a label.")
    lab = labels if all(have) else None
    src = FileSource(str(lf), files, ids, labels=lab, resolution=resolution)
    src.kind = "list"
    return src


class ArraySource(ImageSource):
    """In-memory images (``make()`` returns the list of arrays lazily, once per process)."""

    kind = "arrays"

    def __init__(self, spec: str, ids: list[str], make: Callable[[], Sequence[np.ndarray]], *,
                 labels: list[int] | None = None, label_names: list[str] | None = None,
                 resolution: int = 256, content_key: object = None) -> None:
        super().__init__(spec, resolution)
        self.ids, self.labels, self.label_names = list(ids), labels, label_names
        self._make, self._arrays, self._key = make, None, content_key

    def __getstate__(self) -> dict:  # DataLoader workers rebuild the arrays themselves
        d = dict(self.__dict__)
        d["_arrays"] = None
        return d

    def load_pil(self, i: int):
        if self._arrays is None:
            self._arrays = self._make()
        return array_to_pil(self._arrays[i])

    content_kind = "versions of the packages that ship the images"

    def _content_key(self, index: Sequence[int] | None = None) -> object:
        return self._key
