"""Weight-free encoders on the same 16×16 grid: dense SIFT (OpenCV), HOG (scikit-image), raw pixels.

All three take the contract's uint8 input, resize to 256 px (bilinear, antialias) and return one
descriptor per 16-px cell, row-major: ``[B, 256, 128]`` for SIFT and HOG, ``[B, 256, 768]`` for pixels.
They are deterministic and have no prefix tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from .base import EncoderOutput
from .module import ZooEncoder
from .spec import EncoderSpec


def _gray(x: torch.Tensor) -> np.ndarray:
    """float [3,H,W] in [0,1] -> uint8 [H,W] luminance (ITU-R 601, as OpenCV/skimage)."""
    g = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    return (g.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def dense_sift(gray: np.ndarray, cell: int = 16) -> np.ndarray:
    """One 128-d OpenCV SIFT descriptor per ``cell``-px cell, centred on the cell, angle 0.

    The keypoint size ``cell/6`` makes OpenCV's 4×4 spatial bins ``cell/4`` px wide (bin width =
    3·size/2), so each descriptor describes its own cell (as a dense-SIFT 16-px patch does) rather than
    the 96-px window a keypoint of size ``cell`` would cover. Returns ``[(H//cell)·(W//cell), 128]`` float32, row-major over the cells.
    """
    import cv2

    h, w = gray.shape
    kps = [cv2.KeyPoint(float(cell // 2 + cell * j), float(cell // 2 + cell * i), cell / 6.0, 0.0)
           for i in range(h // cell) for j in range(w // cell)]
    out_kps, desc = cv2.SIFT_create().compute(gray, kps)
    if desc is None or len(out_kps) != len(kps):
        raise DataError(f"dense SIFT kept {0 if desc is None else len(out_kps)} of {len(kps)} cells; "
                        f"the image ({h}x{w}) is too small for {cell}-px cells.")
    return desc.astype(np.float32)


def dense_hog(gray: np.ndarray, cell: int = 16, orientations: int = 8, sub: int = 4) -> np.ndarray:
    """HOG with ``orientations`` bins on ``sub``-px cells; each ``cell``-px patch concatenates its
    (cell/sub)² sub-cells: ``[(H//cell)·(W//cell), (cell/sub)²·orientations]`` (128-d by default)."""
    from skimage.feature import hog

    h, w = gray.shape
    f = hog(gray, orientations=orientations, pixels_per_cell=(sub, sub), cells_per_block=(1, 1),
            feature_vector=False)  # [h/sub, w/sub, 1, 1, O]
    k = cell // sub
    f = f.reshape(h // cell, k, w // cell, k, orientations).transpose(0, 2, 1, 3, 4)
    return f.reshape((h // cell) * (w // cell), k * k * orientations).astype(np.float32)


class ClassicalEncoder(ZooEncoder):
    """SIFT / HOG / pixel-patch features; ``spec.model`` picks which."""

    def __init__(self, spec: EncoderSpec) -> None:
        if spec.model not in ("sift", "hog", "pixels"):
            raise DataError(f"encoders.yaml: {spec.id}: classical model must be sift, hog or pixels.")
        super().__init__(spec, None, weights_id="none")

    def forward_tokens(self, x: torch.Tensor) -> EncoderOutput:
        b, cell = x.shape[0], self.spec.input_res // self.grid[0]
        if self.spec.model == "pixels":
            p = x.unfold(2, cell, cell).unfold(3, cell, cell)  # [B,3,gh,gw,c,c]
            patch = p.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, 3 * cell * cell)
        else:
            fn = dense_sift if self.spec.model == "sift" else dense_hog
            patch = torch.from_numpy(np.stack([fn(_gray(x[i]), cell) for i in range(b)])).to(x.device)
        return EncoderOutput(patch=patch.float(), prefix=None, grid=self.grid, layer="final")
