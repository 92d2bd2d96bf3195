"""REPA / iREPA pieces shared by the SiT and JiT trainers.

- Projectors from student hidden tokens ``[B, T, h]`` to teacher width ``D``: ``mlp`` (h→2048→2048→D, SiLU),
  ``linear`` (h→D), ``conv`` (k×k Conv2d on the token grid, padding k//2).
- Teacher target: a zoo encoder's patch tokens (eval, no grad), resampled to the student grid when the
  grids differ, then optionally spatially normalised ``(z − γ·mean_T z)/(std_T z + 1e-6)`` in fp32.
- Loss: mean over batch and tokens of the negative cosine, averaged over teachers; total = denoise + coeff·proj.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..tokens import spatial_norm  # re-exported: the REPA target transform is the shared definition

log = logging.getLogger(__name__)

PROJECTORS = ("mlp", "linear", "conv")


class MLPProjector(nn.Sequential):
    """REPA's projector: Linear(h, 2048) → SiLU → Linear(2048, 2048) → SiLU → Linear(2048, D), tokenwise."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
                         nn.Linear(hidden_dim, out_dim))


class LinearProjector(nn.Linear):
    """A single tokenwise Linear(h, D)."""


class ConvProjector(nn.Module):
    """iREPA's projector: ``Conv2d(h, D, k, padding=k//2)`` applied to the tokens laid out on their grid."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, grid: tuple[int, int]):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"Conv projector kernel_size={kernel_size} must be odd and >= 1 (1, 3, 5 or 7).")
        self.grid = tuple(grid)
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride=1, padding=kernel_size // 2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        gh, gw = self.grid
        if t != gh * gw:
            raise DataError(f"Conv projector expects {gh}x{gw}={gh * gw} tokens, got {t}.")
        y = self.conv(x.transpose(1, 2).reshape(b, h, gh, gw))
        return y.flatten(2).transpose(1, 2)


def build_projector(kind: str, in_dim: int, out_dim: int, *, kernel_size: int = 3,
                    grid: tuple[int, int] | None = None, hidden_dim: int = 2048) -> nn.Module:
    """Make a projector by name (``mlp``, ``linear`` or ``conv``); ``conv`` needs the token ``grid``."""
    if kind == "mlp":
        return MLPProjector(in_dim, out_dim, hidden_dim)
    if kind == "linear":
        return LinearProjector(in_dim, out_dim)
    if kind == "conv":
        if grid is None:
            raise ConfigError("The conv projector needs the student token grid.")
        return ConvProjector(in_dim, out_dim, kernel_size, grid)
    raise ConfigError(f"Unknown projector {kind!r}; use one of {', '.join(PROJECTORS)}.")


def resample_tokens(tokens: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Resample ``[B, Hs·Ws, D]`` tokens from grid ``src`` to ``dst``: area average when ``src`` is an integer
    multiple of ``dst``, bilinear (align_corners=False) otherwise. No-op when the grids are equal."""
    src, dst = tuple(src), tuple(dst)
    if src == dst:
        return tokens
    b, t, d = tokens.shape
    if t != src[0] * src[1]:
        raise DataError(f"Teacher returned {t} tokens but its grid is {src[0]}x{src[1]}.")
    x = tokens.transpose(1, 2).reshape(b, d, *src).float()
    if src[0] % dst[0] == 0 and src[1] % dst[1] == 0:
        x = F.adaptive_avg_pool2d(x, dst)
    else:
        x = F.interpolate(x, size=dst, mode="bilinear", align_corners=False)
    return x.flatten(2).transpose(1, 2)


def freeze(teacher) -> None:
    """Put a teacher encoder in eval mode with gradients off (idempotent)."""
    teacher.eval()
    rg = getattr(teacher, "requires_grad_", None)
    if callable(rg):
        rg(False)
    else:  # encoders that wrap a module
        for m in (getattr(teacher, "model", None), getattr(teacher, "module", None)):
            if isinstance(m, nn.Module):
                m.requires_grad_(False)


@torch.no_grad()
def teacher_targets(teacher, images: torch.Tensor, grid: tuple[int, int], *, spnorm: bool, gamma: float,
                    autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Teacher patch tokens for uint8 ``images`` ``[B,3,H,W]`` on the student ``grid`` (fp32).

    The teacher runs under ``no_grad`` (optionally bf16 autocast); resampling and the spatial
    normalisation are done in fp32 (the official code normalises in fp16/bf16).
    """
    if images.dtype != torch.uint8:
        raise DataError(f"Teacher input must be uint8 [B,3,H,W] in 0..255, got {images.dtype}.")
    ctx = (torch.autocast(device_type=images.device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with ctx:
        out = teacher(images)
    z = resample_tokens(out.patch.float(), tuple(out.grid), tuple(grid))
    return spatial_norm(z, gamma) if spnorm else z


def projection_loss(zs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over teachers of mean_{B,T}(−cos(ẑ_student, ẑ_teacher)) (cosine over the channel axis)."""
    if len(zs) != len(targets) or not zs:
        raise DataError(f"Got {len(zs)} projected student features for {len(targets)} teacher targets.")
    losses = []
    for z, tgt in zip(zs, targets):
        if z.shape != tgt.shape:
            raise DataError(f"Projected student tokens {tuple(z.shape)} and teacher target {tuple(tgt.shape)} differ.")
        cos = (F.normalize(z.float(), dim=-1) * F.normalize(tgt.float(), dim=-1)).sum(-1)
        losses.append(-cos.mean())
    return torch.stack(losses).mean()


def total_loss(denoise: torch.Tensor, proj: torch.Tensor | None, coeff: float) -> torch.Tensor:
    """denoise + coeff·proj (denoise alone when there is no alignment)."""
    return denoise if proj is None else denoise + coeff * proj
