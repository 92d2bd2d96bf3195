"""Image sources: an ordered list of stable string ids, optional labels, and ``load(i)``.

Every source yields uint8 ``[3, R, R]`` tensors after the ADM centre crop
(:func:`spatialprobe.data.preprocess.center_crop_arr`). Ids never depend on the order files were found
in: folders are walked and sorted, so the same folder always gives the same id list.

Fingerprints are content-based: a file source hashes the bytes of its files (sha256), so an image
rewritten with the same size and modification time still changes the fingerprint. Each file's hash is
computed once and cached (:class:`spatialprobe.io.HashCache`, an SQLite file under ``$SPATIALPROBE_CACHE`` or
``~/.cache/spatialprobe``) keyed by (path, device, inode, size, mtime, ctime): ``ctime`` cannot be set
back by ``touch``/``os.utime``, so restoring the old mtime after a rewrite does not hide the change, and
an unchanged tree costs one ``stat`` per file. Built-in sets are fingerprinted by the versions of the
packages that ship them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import DataError, InputFileError
from ..io import HashCache, cache_dir, hash_cache, sha256_file  # noqa: F401 - cache_dir re-exported
from .preprocess import PREPROCESS_ID, BadImageError, array_to_pil, center_crop_arr, decode_file, to_tensor

#: File suffixes treated as images when walking a folder (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                  ".pbm", ".pnm", ".jfif")

log = logging.getLogger("spatialprobe.data")

#: What a file source's ``content`` fingerprint field is made of (recorded in every store manifest).
CONTENT_HASH = "sha256 of each file's bytes, in id order"


# ----------------------------------------------------------------------------- content hashes

#: the hash cache and cache folder live in :mod:`spatialprobe.io`; these names stay for existing callers
ContentHashCache = HashCache
content_hash_cache = hash_cache
sha256_of_file = sha256_file


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
        return _digest_list(d or "unreadable" for d in hash_cache().digests(files))


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
