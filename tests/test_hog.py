"""The batched dense HOG against scikit-image's ``hog`` (the reference it replaces, kept here only), on
real photographs, upsampled digits, flat images, other sizes and parameters, and through the encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import color, data
from skimage.feature import hog

import spatialprobe.encoders as E
from spatialprobe.encoders import classical
from spatialprobe.encoders.classical import ClassicalEncoder, dense_hog
from spatialprobe.errors import DataError

TOL = 1e-5  # float32 descriptors in [0, 1]; in practice the two agree to the last bit


def reference(gray: np.ndarray, cell: int = 16, orientations: int = 8, sub: int = 4) -> np.ndarray:
    """skimage's HOG on one image, regrouped into ``cell``-px patches: what dense_hog used to compute."""
    h, w = gray.shape
    f = hog(gray, orientations=orientations, pixels_per_cell=(sub, sub), cells_per_block=(1, 1),
            block_norm="L2-Hys", feature_vector=False)  # [h/sub, w/sub, 1, 1, O]
    k = cell // sub
    f = f.reshape(h // cell, k, w // cell, k, orientations).transpose(0, 2, 1, 3, 4)
    return f.reshape((h // cell) * (w // cell), k * k * orientations).astype(np.float32)


def _resize_uint8(img: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    t = torch.from_numpy(np.asarray(img, np.float32))[None, None]
    kw = {"antialias": True, "align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, size=size, mode=mode, **kw)[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def _photo(name: str, size: tuple[int, int] = (256, 256)) -> np.ndarray:
    img = getattr(data, name)()
    gray = color.rgb2gray(img) * 255 if img.ndim == 3 else img
    return _resize_uint8(gray, size)


def _digits(n: int) -> np.ndarray:
    """sklearn's 8×8 digits (0..16) at 0..255, upsampled 32× to 256 px: nearest (flat squares with
    step edges) and bilinear (smooth ramps) alternately."""
    from sklearn.datasets import load_digits

    imgs = load_digits().images[:n] * (255 / 16)
    return np.stack([_resize_uint8(x, (256, 256), "nearest" if i % 2 else "bilinear") for i, x in enumerate(imgs)])


def _flat_images() -> np.ndarray:
    const = np.full((256, 256), 128, np.uint8)  # zero gradient everywhere
    steps = np.zeros((256, 256), np.uint8)  # flat regions with edges in every direction
    steps[40:200, 30:90] = 255
    steps[100:140, :] = 60
    yy, xx = np.mgrid[:256, :256]
    steps[(yy - 180) ** 2 + (xx - 180) ** 2 < 50 ** 2] = 200
    steps[yy > xx + 100] = 10
    return np.stack([const, steps, np.zeros((256, 256), np.uint8), np.full((256, 256), 255, np.uint8)])


def _max_diff(batch: np.ndarray, **kw) -> float:
    new = dense_hog(batch, **kw)
    old = np.stack([reference(x, **kw) for x in batch])
    assert new.shape == old.shape and new.dtype == np.float32
    return float(np.abs(new - old).max())


def test_photographs_match_skimage():
    batch = np.stack([_photo(n) for n in ("astronaut", "camera", "coffee", "chelsea")])
    new = dense_hog(batch)
    assert new.shape == (4, 256, 128) and (new > 0).any()
    assert _max_diff(batch) <= TOL


def test_upsampled_digits_match_skimage():
    batch = _digits(6)
    assert _max_diff(batch) <= TOL


def test_flat_regions_match_skimage_and_are_zero_where_flat():
    batch = _flat_images()
    assert _max_diff(batch) <= TOL
    f = dense_hog(batch)
    assert not f[0].any() and not f[2].any() and not f[3].any()  # no gradient, no histogram, no NaN
    assert np.isfinite(f).all() and f[1].any()


@pytest.mark.parametrize("size", [(128, 128), (192, 320)])
def test_other_sizes_match_skimage(size):
    batch = np.stack([_photo("astronaut", size), _photo("camera", size)])
    assert dense_hog(batch).shape == (2, (size[0] // 16) * (size[1] // 16), 128)
    assert _max_diff(batch) <= TOL


@pytest.mark.parametrize("sub,orientations", [(2, 9), (8, 6), (4, 7)])
def test_other_cells_and_orientations_match_skimage(sub, orientations):
    batch = np.stack([_photo("coffee", (128, 128)), _digits(1)[0, ::2, ::2]])
    assert _max_diff(batch, sub=sub, orientations=orientations) <= TOL


def test_float_images_take_the_direct_path_and_match_skimage():
    batch = np.stack([_photo("camera"), _flat_images()[1]]).astype(np.float64) / 255
    assert _max_diff(batch) <= TOL


def test_batch_chunks_and_single_image_agree():
    batch = np.concatenate([_digits(4), _flat_images()[:1], _photo("camera")[None]])
    whole = dense_hog(batch)
    assert np.array_equal(dense_hog(batch, chunk=4), whole)  # a chunk boundary inside the batch
    assert np.array_equal(dense_hog(batch[5]), whole[5])  # [H, W] -> [T, D]


@pytest.mark.parametrize("shape", [(250, 256), (256, 100), (0, 16), (3, 2, 16, 16)])
def test_sizes_off_the_grid_fail_clearly(shape):
    with pytest.raises(DataError, match="dense_hog"):
        dense_hog(np.zeros(shape, np.uint8))


def test_encoder_computes_the_batch_in_one_call_as_skimage_would(monkeypatch):
    calls = []
    real = classical.dense_hog

    def spy(gray, *a, **kw):
        calls.append(gray.shape)
        return real(gray, *a, **kw)

    monkeypatch.setattr(classical, "dense_hog", spy)
    imgs = torch.from_numpy(np.stack([_resize_uint8_rgb(p) for p in (data.astronaut(), data.coffee())]))
    enc = E.get("hog")
    out = enc(imgs)
    assert calls == [(2, 256, 256)]  # the whole batch at once, no per-image loop
    gray = classical._gray(enc.preprocess(imgs))
    want = np.stack([reference(g) for g in gray])
    assert out.patch.shape == (2, 256, 128)
    assert float(np.abs(out.patch.numpy() - want).max()) <= TOL


def test_encoder_at_another_input_resolution_matches_skimage():
    enc = ClassicalEncoder(E.get("hog").spec.replace(input_res=128))
    imgs = torch.from_numpy(np.stack([_resize_uint8_rgb(data.astronaut()), _resize_uint8_rgb(data.coffee())]))
    out = enc(imgs)
    assert out.patch.shape == (2, 64, 128) and enc.grid == (8, 8)
    want = np.stack([reference(g) for g in classical._gray(enc.preprocess(imgs))])
    assert float(np.abs(out.patch.numpy() - want).max()) <= TOL


def _resize_uint8_rgb(img: np.ndarray, size: int = 256) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> [3, size, size] uint8."""
    return np.stack([_resize_uint8(img[..., c], (size, size)) for c in range(3)])
