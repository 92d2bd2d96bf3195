"""The image layout of an official iREPA collection (``official:DIR``), as an image source.

Only what opening ``--images official:DIR`` needs lives here: the ``official:`` spec, the folder
(``DIR/data`` or ``DIR`` itself) and its id-keyed files ``data/images/<i>.png`` and ``data/masks/<i>.png``
(i = 0 .. N-1). Features, statistics and the analyses over them are :mod:`spatialprobe.official`.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

from ..config import comma_list
from ..errors import DataError, InputFileError
from .sources import IMAGE_SUFFIXES, FileSource

PREFIX = "official:"
IMAGES_PROTOCOL = "irepa-collection"


def is_official(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_spec(spec: str) -> tuple[str, list[str] | None]:
    """``official:DIR`` -> (DIR, None); ``official:DIR:enc1,enc2`` -> (DIR, [enc1, enc2])."""
    body = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    head, sep, tail = body.rpartition(":")
    if sep and head and "/" not in tail and not Path(body).exists():
        return head, comma_list(tail)
    return body, None


def numeric_id(stem: str, where: str) -> int:
    """The image index a file is named by (``<i>.png``); anything else is an error."""
    if not re.fullmatch(r"\d+", stem):
        raise DataError(f"{where}: file name {stem!r} is not an image index; the official layout names images "
                        "and masks <i>.png with i = 0 .. N-1.")
    return int(stem)


class CollectionLayout:
    """The folders of one official collection and its id-keyed image and mask files."""

    def __init__(self, root: str | Path) -> None:
        p = Path(root).expanduser()
        if not p.is_dir():
            raise InputFileError(f"Official collection folder {str(p)!r} does not exist; pass the downloaded "
                                 "spatial-metrics-data folder (holding data/features, data/masks, data/stats).")
        data = p / "data" if (p / "data").is_dir() else p
        if not (data / "features").is_dir() and not (data / "masks").is_dir() and not (data / "images").is_dir():
            raise InputFileError(f"{str(p)!r} is not an official collection: it has no data/features, data/masks "
                                 "or data/images folder.")
        self.root, self.data = p, data

    def indexed(self, sub: str, suffixes: tuple[str, ...]) -> dict[str, Path]:
        """id -> path of the ``data/<sub>/<i>.<suffix>`` files, in numeric id order."""
        d = self.data / sub
        if not d.is_dir():
            raise InputFileError(f"Official collection {str(self.root)!r} has no data/{sub} folder.")
        files = {f.stem: f for f in d.iterdir() if f.is_file() and f.suffix.lower() in suffixes}
        if not files:
            raise InputFileError(f"{str(d)!r} holds no {'/'.join(suffixes)} files.")
        for stem in files:
            numeric_id(stem, str(d))
        return dict(sorted(files.items(), key=lambda kv: int(kv[0])))

    @cached_property
    def mask_files(self) -> dict[str, Path]:
        """id -> mask path, in numeric id order."""
        return self.indexed("masks", (".png",))

    @cached_property
    def image_files(self) -> dict[str, Path]:
        """id -> image path, in numeric id order."""
        return self.indexed("images", IMAGE_SUFFIXES)


def image_source(root: str | Path, *, resolution: int = 256) -> FileSource:
    """``--images official:DIR``: the collection's ``data/images/<i>.png`` with ids ``"0" .. "N-1"`` in
    numeric order (so extracted features join the collection's masks by id)."""
    col = CollectionLayout(parse_spec(str(root))[0])
    files = col.image_files
    src = FileSource(f"{PREFIX}{col.root}", list(files.values()), list(files), resolution=resolution)
    src.kind = IMAGES_PROTOCOL
    return src
