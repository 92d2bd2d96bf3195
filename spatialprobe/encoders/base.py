"""The encoder contract shared by every backend (see the README's architecture section).

Input: ``uint8`` tensor ``[B, 3, H, W]`` in 0..255 (256 px by default). Each encoder applies its own
preprocessing from its spec. Output: :class:`EncoderOutput` with ``patch`` ``[B, T, D]`` float32 on the
canonical grid (16×16 = 256 tokens for a 256-px image, for every encoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class EncoderOutput:
    """Tokens of one batch.

    patch:  ``[B, T, D]`` float32, T = grid[0]·grid[1], row-major over the grid; registers never included.
    prefix: ``[B, P, D]`` float32 (CLS and similar global tokens, no registers) or None.
    grid:   ``(H, W)`` of the patch grid.
    layer:  which layer the tokens come from (e.g. ``"final"``, ``"final-no-norm"``, ``"block-11"``).
    """

    patch: torch.Tensor
    prefix: torch.Tensor | None
    grid: tuple[int, int]
    layer: str = "final"

    @property
    def cls(self) -> torch.Tensor | None:
        """The first prefix token ``[B, D]`` (CLS) or None."""
        return None if self.prefix is None or self.prefix.shape[1] == 0 else self.prefix[:, 0]

    @property
    def pooled(self) -> torch.Tensor:
        """Mean of the patch tokens ``[B, D]`` (the official ``none-mean`` LP feature)."""
        return self.patch.mean(dim=1)


@runtime_checkable
class Encoder(Protocol):
    """What every zoo member provides."""

    name: str  #: canonical id, e.g. ``sam2-vit-s``
    embed_dim: int
    grid: tuple[int, int]  #: patch grid for the configured input resolution (16×16 at 256 px)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B,3,H,W]`` in 0..255 -> the model's float input (resize, mean/std)."""

    def forward_tokens(self, x: torch.Tensor) -> EncoderOutput:
        """Preprocessed input -> tokens."""

    def __call__(self, images: torch.Tensor) -> EncoderOutput:
        """``forward_tokens(preprocess(images))`` under ``torch.no_grad()``."""

    def to(self, device: torch.device | str) -> "Encoder": ...

    def eval(self) -> "Encoder": ...
