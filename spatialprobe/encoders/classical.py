"""Weight-free encoders on the same 16×16 grid: dense SIFT (OpenCV), HOG (as scikit-image's), raw pixels.

All three take the contract's uint8 input, resize to 256 px (bilinear, antialias) and return one
descriptor per 16-px cell, row-major: ``[B, 256, 128]`` for SIFT and HOG, ``[B, 256, 768]`` for pixels.
They are deterministic and have no prefix tokens.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..errors import DataError
from .base import EncoderOutput
from .module import ZooEncoder
from .spec import EncoderSpec


def _gray(x: torch.Tensor) -> np.ndarray:
    """float [..., 3, H, W] in [0,1] -> uint8 [..., H, W] luminance (ITU-R 601, as OpenCV/skimage)."""
    g = 0.299 * x[..., 0, :, :] + 0.587 * x[..., 1, :, :] + 0.114 * x[..., 2, :, :]
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


def dense_hog(gray: np.ndarray, cell: int = 16, orientations: int = 8, sub: int = 4,
              chunk: int = 16) -> np.ndarray:
    """HOG with ``orientations`` bins on ``sub``-px cells; each ``cell``-px patch concatenates its
    (cell/sub)² sub-cells: ``[(H//cell)·(W//cell), (cell/sub)²·orientations]`` (128-d by default).

    ``gray`` is one uint8 image ``[H, W]`` or a batch ``[B, H, W]`` (then the result has a leading ``B``);
    ``H`` and ``W`` must be multiples of ``cell``. The whole batch is computed at once with numpy (in
    chunks of ``chunk`` images, to bound memory), and the result is bit-identical to scikit-image's
    ``hog(gray, orientations, pixels_per_cell=(sub, sub), cells_per_block=(1, 1), block_norm='L2-Hys',
    feature_vector=False)`` (the previous per-image implementation): each step below mirrors the
    operation, dtype and summation order skimage uses, so the float32 descriptors match to the last bit.
    """
    g = np.asarray(gray)
    single = g.ndim == 2
    if single:
        g = g[None]
    if g.ndim != 3:
        raise DataError(f"dense_hog: expected a gray image [H, W] or a batch [B, H, W], got shape {g.shape}.")
    b, h, w = g.shape
    if cell % sub or h % cell or w % cell or h == 0 or w == 0:
        raise DataError(f"dense_hog: image {h}x{w} with {cell}-px patches of {sub}-px cells; the height and "
                        f"width must be non-zero multiples of {cell} (and {cell} a multiple of {sub}); "
                        f"resize the image first.")
    k, chunk = cell // sub, max(1, chunk)
    out = np.empty((b, h // cell, w // cell, k, k, orientations), np.float32)
    for a in range(0, b, chunk):
        f = _hog_cells(g[a:a + chunk], orientations, sub)  # [n, h/sub, w/sub, O] float64
        f = f.reshape(-1, h // cell, k, w // cell, k, orientations).transpose(0, 1, 3, 2, 4, 5)
        out[a:a + chunk] = f  # float64 -> float32, as the per-image code's .astype(np.float32)
    out = out.reshape(b, (h // cell) * (w // cell), k * k * orientations)
    return out[0] if single else out


def _hog_orientation_bins(ori: np.ndarray, orientations: int) -> np.ndarray:
    """Hard orientation binning as skimage's ``hog_histograms``: bin i holds i·(180/O) <= angle < (i+1)·(180/O)
    with the edges in float64 (skimage >= 0.26; for O = 8 they are exact multiples of 22.5 in any precision).
    An angle past the last edge (possible only if the modulo rounds up to 180) is in no bin there; here it
    gets index O, which the histogram drops."""
    step = 180.0 / orientations
    idx = np.zeros(ori.shape, np.int8 if orientations < 127 else np.int32)
    for i in range(1, orientations + 1):
        idx += ori >= step * i
    return idx


def _hog_magnitude_orientation(g_row: np.ndarray, g_col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """skimage's ``hog_histograms``: magnitude = hypot(g_col, g_row) and the unsigned angle
    degrees(arctan2(g_row, g_col)) % 180, both in float64."""
    return np.hypot(g_col, g_row), np.rad2deg(np.arctan2(g_row, g_col)) % 180


@functools.lru_cache(maxsize=8)
def _uint8_gradient_tables(orientations: int) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude and orientation bin of every gradient a uint8 image can have (both central differences in
    [-255, 255]), indexed by ``(g_row + 255)·511 + (g_col + 255)``: the same float64 expressions as for an
    image, evaluated once on all 511² pairs instead of on every pixel (2 MiB + 0.25 MiB)."""
    d = np.arange(-255, 256, dtype=np.float64)
    g_row, g_col = np.meshgrid(d, d, indexing="ij")
    mag, ori = _hog_magnitude_orientation(g_row, g_col)
    return mag.ravel(), _hog_orientation_bins(ori, orientations).ravel()


def _central_differences(gray: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """``(g_row, g_col)`` of a batch ``[B, H, W]`` in ``dtype``: x[i+1] − x[i−1] along rows and columns, zero on
    the outer rows and columns (skimage's ``_hog_channel_gradient``)."""
    img = gray.astype(dtype)
    g_row, g_col = np.zeros_like(img), np.zeros_like(img)
    g_row[:, 1:-1, :] = img[:, 2:, :] - img[:, :-2, :]
    g_col[:, :, 1:-1] = img[:, :, 2:] - img[:, :, :-2]
    return g_row, g_col


def _hog_cells(gray: np.ndarray, orientations: int, sub: int) -> np.ndarray:
    """L2-Hys-normalised orientation histograms of ``sub``-px cells, ``[B, H/sub, W/sub, O]`` float64,
    for gray ``[B, H, W]`` (H, W multiples of ``sub``), computed as skimage's ``hog`` does per image."""
    b, h, w = gray.shape
    # skimage's _hog_channel_gradient: central differences (no division by 2), zero on the outer rows and
    # columns, on the image converted to float64. For uint8 the differences are exact small integers, so
    # they are taken in integers and looked up in tables made with skimage's float64 expressions.
    if gray.dtype == np.uint8:
        g_row, g_col = _central_differences(gray, np.int32)
        key = (g_row + 255) * 511 + (g_col + 255)
        del g_row, g_col
        mag_table, bin_table = _uint8_gradient_tables(orientations)
        mag, idx = mag_table[key], bin_table[key]
        del key
    else:
        g_row, g_col = _central_differences(gray, np.float64)
        mag, ori = _hog_magnitude_orientation(g_row, g_col)
        idx = _hog_orientation_bins(ori, orientations)
        del g_row, g_col, ori
    # skimage's cell_hog: each cell sums its sub×sub pixels in row-major order into a float32 accumulator
    # (every addition done in float64 and rounded back to float32), skipping pixels of other bins, then
    # divides by the cell's pixel count in float32. Here every cell gets one pixel per step, added to the
    # slot of that pixel's bin; slot O of each cell collects the pixels that are in no bin.
    nr, nc = h // sub, w // sub
    mag = mag[:, :nr * sub, :nc * sub].reshape(b, nr, sub, nc, sub)
    idx = idx[:, :nr * sub, :nc * sub].reshape(b, nr, sub, nc, sub)
    slots = orientations + 1
    acc = np.zeros(b * nr * nc * slots, np.float32)
    base = np.arange(b * nr * nc, dtype=np.int64) * slots
    for dy in range(sub):
        for dx in range(sub):
            at = base + idx[:, :, dy, :, dx].ravel()
            acc[at] = (acc[at] + mag[:, :, dy, :, dx].ravel()).astype(np.float32)
    hist = acc.reshape(b, nr, nc, slots)[..., :orientations]
    hist = (hist / np.float32(sub * sub)).astype(np.float64)
    # skimage's _hog_normalize_block, L2-Hys, on 1×1-cell blocks (each cell's own histogram), in float64:
    # v / sqrt(|v|² + eps²), clipped at 0.2, renormalised the same way; eps = 1e-5
    eps = 1e-5
    v = hist / np.sqrt(np.sum(hist ** 2, axis=-1, keepdims=True) + eps ** 2)
    v = np.minimum(v, 0.2)
    return v / np.sqrt(np.sum(v ** 2, axis=-1, keepdims=True) + eps ** 2)


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
        elif self.spec.model == "hog":  # one vectorised pass over the whole batch
            patch = torch.from_numpy(dense_hog(_gray(x), cell)).to(x.device)
        else:
            gray = _gray(x)
            patch = torch.from_numpy(np.stack([dense_sift(gray[i], cell) for i in range(b)])).to(x.device)
        return EncoderOutput(patch=patch.float(), prefix=None, grid=self.grid, layer="final")
