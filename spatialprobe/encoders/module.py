"""`ZooEncoder`: the shared implementation of the encoder contract (preprocess + token tap)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import DataError
from .base import EncoderOutput
from .spec import EncoderSpec


class ZooEncoder(torch.nn.Module):
    """Base class: uint8 ``[B,3,H,W]`` -> :class:`EncoderOutput` with ``patch`` ``[B,T,D]`` float32.

    Subclasses implement :meth:`forward_tokens`. Always in eval mode with ``requires_grad`` off.
    """

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module | None, weights_id: str,
                 layer: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.model = model
        self.name = spec.id
        self.embed_dim = spec.embed_dim
        self.grid = spec.grid
        self.weights_id = weights_id
        self.layer = layer
        self.register_buffer("_mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> "ZooEncoder":  # teachers never train
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self._mean.device

    @property
    def layer_name(self) -> str:
        if self.layer is not None:
            return f"block-{self.layer}"
        return {"final_norm": "final", "no_norm": "final-no-norm", "nhwc": "final"}[self.spec.tap]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B,3,H,W]`` -> float input at ``input_res`` with the spec's resize and mean/std."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise DataError(f"{self.name}: expected a uint8 tensor [B,3,H,W], got "
                            f"{getattr(images, 'shape', type(images))}; stack RGB images first.")
        if images.dtype != torch.uint8:
            raise DataError(f"{self.name}: expected dtype uint8 (0..255), got {images.dtype}; "
                            f"convert with (x*255).round().to(torch.uint8).")
        x = images.to(self.device, torch.float32) / 255.0
        r = self.spec.input_res
        if x.shape[-2:] != (r, r):
            mode = self.spec.interpolation if self.spec.interpolation != "none" else "bicubic"
            kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
            if mode in ("bilinear", "bicubic"):
                kw["antialias"] = self.spec.antialias
            x = F.interpolate(x, size=(r, r), mode=mode, **kw)
        return (x - self._mean) / self._std

    def forward_tokens(self, x: torch.Tensor) -> EncoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        with torch.no_grad():
            out = self.forward_tokens(self.preprocess(images))
        out.patch = out.patch.float()
        if out.prefix is not None:
            out.prefix = out.prefix.float()
        return out

    def extra_repr(self) -> str:
        return f"name={self.name}, embed_dim={self.embed_dim}, grid={self.grid}, weights={self.weights_id}"
