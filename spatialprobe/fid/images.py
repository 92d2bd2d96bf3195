"""Streaming readers of image sets for evaluation: uint8 ``[B, 3, H, W]`` batches, never the whole set at once.

- ``.npz`` with ``arr_0`` uint8 ``[N, H, W, 3]`` (the ADM sample/reference format), read member-wise from the
  zip in chunks (a 50k×256² file is 9.8 GB);
- a folder of image files (PNG/JPEG/…; sorted by path, read as-is, no resize or crop), or the output folder
  of ``spatialprobe sample`` (its ``samples.npz`` is used when present);
- for reference building, any :func:`spatialprobe.data.open_source` spec (ADM centre crop to R).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import DataError, InputFileError
from ..schema import SAMPLES_NPZ

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


def _nhwc_batch(arr: np.ndarray, where: str) -> torch.Tensor:
    if arr.dtype != np.uint8:
        nan = np.issubdtype(arr.dtype, np.floating) and bool(np.isnan(arr).any())
        raise DataError(f"{where}: expected uint8 images (0..255), got {arr.dtype}"
                        + (" with NaN values (the generator diverged)" if nan else "")
                        + ". Save samples as uint8, e.g. ((x + 1) * 127.5).clip(0, 255).astype(np.uint8).")
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise DataError(f"{where}: expected [N, H, W, 3] (NHWC RGB, ADM's layout), got {arr.shape}.")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)


class NpzImages:
    """Images stored under ``key`` (default ``arr_0``) of an ``.npz``, NHWC uint8, streamed in order."""

    kind = "npz"

    def __init__(self, path: str | Path, key: str = "arr_0") -> None:
        self.path, self.key = Path(path), key
        if not self.path.is_file():
            raise InputFileError(f"Sample file {str(self.path)!r} does not exist.")
        try:
            with zipfile.ZipFile(self.path) as zf:
                names = zf.namelist()
                if f"{key}.npy" not in names:
                    raise DataError(f"{str(self.path)!r} has no {key!r} array (it has "
                                    f"{', '.join(n[:-4] for n in names) or 'nothing'}); ADM files store images "
                                    f"as arr_0 [N, H, W, 3] uint8.")
                with zf.open(f"{key}.npy") as fh:
                    self.shape, self.dtype, self._fortran = self._header(fh)
        except zipfile.BadZipFile as exc:
            raise InputFileError(f"{str(self.path)!r} is not a readable .npz file: {exc}") from exc
        if self.dtype != np.uint8 or len(self.shape) != 4 or self.shape[-1] != 3 or self._fortran:
            hint = ""
            if len(self.shape) == 4 and self.shape[1] == 3:
                hint = " It looks channels-first (NCHW): save x.transpose(0, 2, 3, 1)."
            raise DataError(f"{str(self.path)!r}[{key!r}]: expected uint8 [N, H, W, 3] (C order), got "
                            f"{self.dtype} {self.shape}.{hint}"
                            + ("" if self.dtype == np.uint8 else " Quantise to uint8 first, e.g. "
                               "((x + 1) * 127.5).clip(0, 255).astype(np.uint8)."))

    @staticmethod
    def _header(fh: Any) -> tuple[tuple[int, ...], np.dtype, bool]:
        version = np.lib.format.read_magic(fh)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in reader:
            raise DataError(f"Unsupported .npy format version {version}.")
        shape, fortran, dtype = reader[version](fh)
        return tuple(shape), np.dtype(dtype), fortran

    def __len__(self) -> int:
        return self.shape[0]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "key": self.key, "shape": list(self.shape)}

    def iter_batches(self, batch_size: int, limit: int | None = None) -> Iterator[torch.Tensor]:
        n = len(self) if limit is None else min(limit, len(self))
        per = int(np.prod(self.shape[1:]))
        with zipfile.ZipFile(self.path) as zf, zf.open(f"{self.key}.npy") as fh:
            self._header(fh)
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                buf = fh.read(b * per)
                if len(buf) != b * per:
                    raise DataError(f"{str(self.path)!r} is truncated at image {start}.")
                yield _nhwc_batch(np.frombuffer(bytearray(buf), np.uint8).reshape(b, *self.shape[1:]), str(self.path))


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - any decode failure is this file's
        raise DataError(f"Image {str(path)!r} could not be decoded: {exc}") from exc


def _prefetch(fn: Any, items: list, workers: int = 4, depth: int = 64) -> Iterator:
    """``map(fn, items)`` in order on a thread pool with at most ``depth`` results in flight."""
    with cf.ThreadPoolExecutor(workers) as ex:
        queue: collections.deque = collections.deque()
        it = iter(items)
        for x in it:
            queue.append(ex.submit(fn, x))
            if len(queue) >= depth:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


def _batches_of_equal_size(arrays: Iterator[np.ndarray], batch_size: int, where: str) -> Iterator[torch.Tensor]:
    buf: list[np.ndarray] = []
    for a in arrays:
        if buf and (len(buf) == batch_size or a.shape != buf[0].shape):
            yield _nhwc_batch(np.stack(buf), where)
            buf = []
        buf.append(a)
    if buf:
        yield _nhwc_batch(np.stack(buf), where)


class FolderImages:
    """Image files below a folder (recursive, sorted by relative path), decoded as RGB without resizing."""

    kind = "folder"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise InputFileError(f"Folder {str(self.path)!r} holds no image files ({', '.join(_IMAGE_SUFFIXES)}) "
                                 "and no samples.npz.")

    def __len__(self) -> int:
        return len(self.files)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "files": len(self.files)}

    def iter_batches(self, batch_size: int, limit: int | None = None) -> Iterator[torch.Tensor]:
        files = self.files[:limit] if limit is not None else self.files
        yield from _batches_of_equal_size(_prefetch(_read_image, files), batch_size, str(self.path))


class SourceImages:
    """A :class:`spatialprobe.data.ImageSource` (ADM centre crop to its resolution), for reference sets."""

    kind = "source"

    def __init__(self, source: Any) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def describe(self) -> dict[str, Any]:
        d = {"kind": self.kind, "fingerprint": self.source.fingerprint()}
        if hasattr(self.source, "describe"):
            d.update(self.source.describe())
        return d

    def _load(self, i: int) -> np.ndarray:
        """Image ``i`` as HWC uint8 (for stacking); an undecodable file is an error naming it."""
        from ..data.preprocess import BadImageError

        try:
            return self.source.load(i).permute(1, 2, 0).numpy()
        except BadImageError as exc:
            files = getattr(self.source, "files", None)
            where = repr(str(files[i])) if files is not None else f"{exc.image_id!r} of {getattr(self.source, 'spec', '?')!r}"
            raise DataError(f"Reference image {where} could not be decoded ({exc.reason}); replace or remove it.") from None

    def iter_batches(self, batch_size: int, limit: int | None = None) -> Iterator[torch.Tensor]:
        n = len(self) if limit is None else min(limit, len(self))
        yield from _batches_of_equal_size(_prefetch(self._load, list(range(n))), batch_size, repr(self.source))


class TensorImages:
    """An in-memory uint8 ``[N, 3, H, W]`` tensor (or NHWC numpy array) as an image set."""

    kind = "tensor"

    def __init__(self, images: Any) -> None:
        if isinstance(images, np.ndarray):
            images = _nhwc_batch(images, "images")
        from .inception import check_images

        check_images(images)
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "shape": list(self.images.shape)}

    def iter_batches(self, batch_size: int, limit: int | None = None) -> Iterator[torch.Tensor]:
        n = len(self) if limit is None else min(limit, len(self))
        for s in range(0, n, batch_size):
            yield self.images[s:min(s + batch_size, n)]


ImageSet = NpzImages | FolderImages | SourceImages | TensorImages


def open_samples(spec: Any) -> ImageSet:
    """Open generated samples: an ADM ``.npz``, a ``spatialprobe sample`` output folder, or an image folder.

    Also accepts a uint8 tensor ``[N, 3, H, W]`` / NHWC array, or an already opened image set.
    """
    if isinstance(spec, (NpzImages, FolderImages, SourceImages, TensorImages)):
        return spec
    if isinstance(spec, (torch.Tensor, np.ndarray)):
        return TensorImages(spec)
    p = Path(spec).expanduser()
    if p.is_file():
        if p.suffix != ".npz":
            raise InputFileError(f"Samples {str(p)!r}: expected an .npz (arr_0 uint8 [N, H, W, 3]) or a folder.")
        return NpzImages(p)
    if p.is_dir():
        if (p / SAMPLES_NPZ).is_file():
            return NpzImages(p / SAMPLES_NPZ)
        return FolderImages(p)
    raise InputFileError(f"Samples {str(spec)!r} do not exist (expected an .npz, a folder of images, or the output "
                         "folder of `spatialprobe sample`).")


def open_reference_images(spec: Any, *, resolution: int = 256) -> ImageSet:
    """Open the images a reference is built from: an ADM ``.npz`` (as stored), or any
    :func:`spatialprobe.data.open_source` spec (folder, ImageNet tree, list file, ``builtin``), centre-cropped
    to ``resolution`` the ADM way."""
    if isinstance(spec, (NpzImages, FolderImages, SourceImages, TensorImages, torch.Tensor, np.ndarray)):
        return open_samples(spec)
    p = Path(str(spec)).expanduser()
    if p.is_file() and p.suffix == ".npz":
        return NpzImages(p)
    from ..data import open_source

    return SourceImages(open_source(spec, resolution=resolution))
