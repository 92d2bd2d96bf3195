"""Decode once, read many times: the decoded uint8 image cache (the study's extraction nodes share it).

Every encoder of a study reads the same images, and each extraction node runs on its own (its own
fingerprint, its own resume, on a cluster its own job), so a plain :func:`~spatialprobe.extract.extract`
per node would decode and centre-crop every image once per encoder. :class:`DecodedCache` wraps the
source: the first node that needs the images decodes and crops them (in parallel DataLoader workers)
into one ``uint8 [N, 3, R, R]`` ``.npy`` file under ``OUT/cache/images/``, written atomically under a
lock that concurrent jobs wait on; every later node memory-maps it. The cached pixels are exactly ``base.load(i)`` and the fingerprint is the
base source's, so a store built through the cache is the store built without it.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import FileLock, atomic_path, atomic_write_json
from ..runtime import decode_workers
from .loading import SourceItems, collate_items
from .preprocess import BadImageError, array_to_pil
from .sources import ImageSource

log = logging.getLogger(__name__)


class DecodedCache(ImageSource):
    """``base``'s centre-cropped images, decoded once into ``folder`` and memory-mapped from then on."""

    def __init__(self, base: ImageSource, folder: str | os.PathLike, *, num_workers: int = -1) -> None:
        super().__init__(base.spec, base.resolution)
        self.base, self.kind = base, base.kind
        self.ids, self.labels, self.label_names = list(base.ids), base.labels, base.label_names
        stem = f"{base.fingerprint()[:20]}-r{base.resolution}"
        self.path = Path(folder) / f"{stem}.npy"
        self.bad_path = Path(folder) / f"{stem}.bad.json"
        self.num_workers = num_workers
        self._arr: np.ndarray | None = None
        self._bad: dict[int, str] | None = None
        self.decoded = 0  #: images this object decoded itself (0 when the cache already existed)

    # the fingerprint is the base source's: the cache changes where pixels come from, not what they are
    @property
    def content_kind(self) -> str:  # type: ignore[override]
        return self.base.content_kind

    def fingerprint_record(self) -> dict:
        return self.base.fingerprint_record()

    def _content_key(self, index: Sequence[int] | None = None) -> object:
        return self.base._content_key(index)

    def __getstate__(self) -> dict:  # DataLoader workers open the memory map themselves
        d = dict(self.__dict__)
        d["_arr"] = None
        return d

    def load_pil(self, i: int):
        return array_to_pil(np.ascontiguousarray(self.load(i).numpy().transpose(1, 2, 0)))

    def load(self, i: int):
        import torch

        self.ensure()
        if i in self._bad:  # type: ignore[operator]
            raise BadImageError(self.ids[i], self._bad[i])  # type: ignore[index]
        if self._arr is None:
            self._arr = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self._arr[i]))

    def ensure(self) -> Path:
        """Build the cache file if it is not there yet; returns its path.

        Concurrent extraction jobs (a submitit wave) share one build: the first takes the folder's lock
        and decodes, the others wait on it and then find the file complete. The kernel drops the lock of
        a job that dies, so a killed build never blocks the rerun.
        """
        if self._bad is not None:
            return self.path
        if not (self.path.is_file() and self.bad_path.is_file()):
            with FileLock(self.path.parent, blocking=True):
                if not (self.path.is_file() and self.bad_path.is_file()):
                    self._build()
        self._bad = {int(k): v for k, v in json.loads(self.bad_path.read_text(encoding="utf-8")).items()}
        return self.path

    def _build(self) -> None:
        import torch
        from tqdm.auto import tqdm

        n, r = len(self.base), self.base.resolution
        loader = torch.utils.data.DataLoader(SourceItems(self.base, range(n)), batch_size=64, collate_fn=collate_items,
                                             num_workers=decode_workers(self.num_workers))
        bad: dict[int, str] = {}
        with atomic_path(self.path) as tmp:  # the array first: the bad list is what marks the cache complete
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, r, r))
            with tqdm(total=n, desc="decode + crop (cached once)", unit="img", leave=False) as bar:
                for pos, imgs, failed in loader:
                    if imgs is not None:
                        arr[pos] = imgs.numpy()
                    bad.update({p: why for p, why in failed})
                    bar.update(len(pos) + len(failed))
            arr.flush()
            del arr
        atomic_write_json(self.bad_path, bad, indent=None)
        self.decoded = n
        log.info("decoded and cropped %d images once into %s (%d undecodable)", n, self.path, len(bad))
