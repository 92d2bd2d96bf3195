"""Feeding a DataLoader from an image source: one item per source position, undecodable images recorded.

:class:`SourceItems` is the dataset, :func:`collate_items` its collate function (good images stacked,
bad ones listed with their reason); :func:`decode_workers` (the number of decode workers) is
re-exported from :mod:`spatialprobe.runtime`. Extraction and the decoded-image cache both read images
through them.
"""

from __future__ import annotations

from typing import Sequence

from ..runtime import decode_workers  # noqa: F401 - re-exported (the one rule lives in runtime)
from .preprocess import BadImageError
from .sources import ImageSource


class SourceItems:
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


def collate_items(items):
    """``[(pos, tensor or None, reason)]`` → ``(positions, uint8 [B,3,R,R] or None, [(pos, reason)])``."""
    import torch

    good = [(p, t) for p, t, _ in items if t is not None]
    bad = [(p, r) for p, t, r in items if t is None]
    pos = [p for p, _ in good]
    imgs = torch.stack([t for _, t in good]) if good else None
    return pos, imgs, bad
