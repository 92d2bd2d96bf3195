"""Small stand-ins with the real interfaces, for the training tests (test support; not part of the package).

- :class:`PatchTeacher`: a deterministic frozen patchifier (p×p conv + fixed random MLP) meeting the encoder
  contract (uint8 in, :class:`~spatialprobe.encoders.base.EncoderOutput` out, 16×16 tokens at 256 px).
- :class:`TensorSource`: an image source over an in-memory uint8 array (ids, labels, ``load(i)``).
- :func:`digits_source`: scikit-learn's bundled 8×8 digits upsampled to a square side (no download).
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from spatialprobe.encoders.base import EncoderOutput


class PatchTeacher(nn.Module):
    """Frozen patch encoder: resize to ``input_res``, p×p conv to ``embed_dim``, GELU, fixed linear."""

    def __init__(self, embed_dim: int = 32, input_res: int = 256, patch: int = 16, seed: int = 0):
        super().__init__()
        self.name, self.embed_dim, self.input_res, self.patch = "patch-teacher", embed_dim, input_res, patch
        self.grid = (input_res // patch, input_res // patch)
        self.weights_id = f"random-init:{seed}"
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, embed_dim, patch, stride=patch)
        self.mix = nn.Linear(embed_dim, embed_dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p[0].numel()) ** 0.5 if p.ndim > 1 else 0.1))
        self.eval().requires_grad_(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        if x.shape[-1] != self.input_res:
            x = F.interpolate(x, size=(self.input_res, self.input_res), mode="bilinear", align_corners=False)
        return (x - 0.5) / 0.25

    def forward_tokens(self, x: torch.Tensor) -> EncoderOutput:
        h = self.conv(x).flatten(2).transpose(1, 2)
        patch = self.mix(F.gelu(h)).float()
        return EncoderOutput(patch=patch, prefix=patch.mean(1, keepdim=True), grid=self.grid, layer="final")

    def __call__(self, images: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        with torch.no_grad():
            return self.forward_tokens(self.preprocess(images))


class TensorSource:
    """Image source over a uint8 tensor ``[N, 3, R, R]`` with optional labels."""

    def __init__(self, images: torch.Tensor, labels: list[int] | None = None, prefix: str = "img"):
        self.images = images
        self.ids = [f"{prefix}-{i:05d}" for i in range(len(images))]
        self.labels = labels
        self.label_names = [str(i) for i in range(max(labels) + 1)] if labels else None

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> torch.Tensor:
        return self.images[i]

    def fingerprint(self) -> str:
        return hashlib.sha256(self.images.numpy().tobytes()).hexdigest()[:16]


def digits_source(resolution: int = 32, n: int | None = None) -> TensorSource:
    """scikit-learn's 8×8 handwritten digits as grey RGB images at ``resolution`` (bilinear upsampling)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images[:n]).float() / 16.0  # [N, 8, 8] in 0..1
    x = F.interpolate(x[:, None], size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return TensorSource(x, [int(v) for v in d.target[:n]], prefix="digits")
