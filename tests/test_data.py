"""Image sources, decoding and the ADM centre crop."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spatialprobe.data import BadImageError, center_crop_arr, decode_file, open_source, to_rgb
from spatialprobe.errors import DataError, InputFileError, UnknownNameError


# ----------------------------------------------------------------------------- ADM centre crop

def test_center_crop_no_resize_takes_the_middle_columns():
    # short side already R: scale 1, no resampling; W = R+3 -> x0 = (R+3-R)//2 = 1
    r = 8
    a = np.zeros((r, r + 3, 3), np.uint8)
    a[:, :, 0] = np.arange(r + 3)[None, :] * 10
    a[:, :, 1] = np.arange(r)[:, None] * 7
    out = center_crop_arr(Image.fromarray(a), r)
    assert out.shape == (r, r, 3)
    assert (out[0, :, 0] == np.arange(1, r + 1) * 10).all()
    assert (out[:, 0, 1] == np.arange(r) * 7).all()


def test_center_crop_box_halving_averages_blocks():
    # 8x8 -> R=2: halved twice with BOX (8>=4, 4>=4) = mean of each 4x4 block. Each block is a
    # checkerboard of a-1 / a+1, so the block mean is exactly a.
    blocks = np.array([[40, 80], [120, 200]])
    a = np.zeros((8, 8), np.int32)
    for by in range(2):
        for bx in range(2):
            chk = (np.indices((4, 4)).sum(0) % 2) * 2 - 1
            a[by * 4:(by + 1) * 4, bx * 4:(bx + 1) * 4] = blocks[by, bx] + chk
    img = Image.fromarray(np.repeat(a[:, :, None], 3, 2).astype(np.uint8))
    out = center_crop_arr(img, 2)
    assert (out[:, :, 0] == blocks).all() and (out[:, :, 2] == blocks).all()


def test_center_crop_constant_image_and_tiny_input():
    for size in [(1, 1), (3, 17), (300, 451)]:
        img = Image.new("RGB", size, (12, 200, 99))
        out = center_crop_arr(img, 16)
        assert out.shape == (16, 16, 3)
        assert (out == np.array([12, 200, 99], np.uint8)).all()


# ----------------------------------------------------------------------------- decoding

def _rgb(img):
    return np.asarray(to_rgb(img))


def test_mode_conversions_hand_values():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 0      # transparent red -> white background
    rgba[0, 1, 3] = 255    # opaque red stays red
    out = _rgb(Image.fromarray(rgba, "RGBA"))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (255, 0, 0)
    g16 = Image.fromarray(np.array([[65535, 257 * 100]], np.uint16))  # 16-bit gray
    assert g16.mode.startswith("I")
    out = _rgb(g16)
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (100, 100, 100)
    assert tuple(_rgb(Image.new("L", (1, 1), 77))[0, 0]) == (77, 77, 77)
    assert tuple(_rgb(Image.new("1", (1, 1), 1))[0, 0]) == (255, 255, 255)
    assert tuple(_rgb(Image.new("CMYK", (1, 1), (0, 0, 0, 0)))[0, 0]) == (255, 255, 255)
    assert tuple(_rgb(Image.new("CMYK", (1, 1), (0, 255, 255, 0)))[0, 0]) == (255, 0, 0)
    pal = Image.new("P", (1, 1), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert tuple(_rgb(pal)[0, 0]) == (10, 20, 30)
    f = Image.fromarray(np.array([[0.5]], np.float32), "F")
    assert tuple(_rgb(f)[0, 0]) == (128, 128, 128)


def test_bad_files_raise_bad_image_error(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(buf, "PNG")
    (tmp_path / "trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    for name in ["zero.png", "text.jpg", "trunc.png"]:
        with pytest.raises(BadImageError) as ei:
            decode_file(tmp_path / name, name)
        assert ei.value.image_id == name and ei.value.reason


# ----------------------------------------------------------------------------- sources

def _save(path: Path, value: int, size=(20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def test_folder_ids_are_relative_paths_and_sorted(tmp_path):
    _save(tmp_path / "b" / "x.png", 10)
    _save(tmp_path / "a.jpg", 20)
    _save(tmp_path / "b" / "c" / "y.bmp", 30)
    (tmp_path / "notes.txt").write_text("ignored")
    src = open_source(tmp_path, resolution=16)
    assert src.ids == ["a", "b/c/y", "b/x"]
    assert src.labels is None  # mixed depths: no class tree
    x = src.load(2)
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and int(x[0, 0, 0]) == 10


def test_imagenet_style_tree_gets_labels(tmp_path):
    for cls, v in [("n02", 50), ("n01", 10)]:
        for j in range(2):
            _save(tmp_path / "val" / cls / f"img{j}.JPEG", v + j)
    src = open_source(tmp_path / "val")
    assert src.ids == ["n01/img0", "n01/img1", "n02/img0", "n02/img1"]
    assert src.labels == [0, 0, 1, 1] and src.label_names == ["n01", "n02"]


def test_list_file_with_labels(tmp_path):
    _save(tmp_path / "imgs" / "p.png", 1)
    _save(tmp_path / "imgs" / "q.png", 2)
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\nimgs/q.png\t3\nimgs/p.png,7\n")
    src = open_source(lst)
    assert src.ids == ["imgs/q", "imgs/p"] and src.labels == [3, 7]
    assert int(src.load(0)[0, 0, 0]) == 2


def test_duplicate_ids_and_missing_sources_are_clear_errors(tmp_path):
    _save(tmp_path / "x.png", 1)
    _save(tmp_path / "x.jpg", 1)
    with pytest.raises(DataError, match="x"):
        open_source(tmp_path)
    with pytest.raises(InputFileError):
        open_source(tmp_path / "nope")
    with pytest.raises(UnknownNameError, match="builtin:digits"):
        open_source("builtin:digit")


def test_builtin_sets_offline():
    photos = open_source("builtin", resolution=32)
    assert len(photos) == 18 and "skimage/astronaut" in photos.ids and "sklearn/china" in photos.ids
    x = photos.load(photos.ids.index("skimage/astronaut"))
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and x.float().std() > 10
    digits = open_source("builtin:digits", resolution=16)
    assert len(digits) == 1797 and digits.labels[:3] == [0, 1, 2] and sorted(set(digits.labels)) == list(range(10))
    d0 = digits.load(0)
    assert (d0[0] == d0[1]).all() and (d0[1] == d0[2]).all()  # gray replicated to RGB
    lfw = open_source("builtin:lfw", resolution=16)
    assert len(lfw) == 200 and lfw.labels.count(1) == 100 and lfw.label_names == ["non-face", "face"]
    assert lfw.ids[0] == "lfw/face-000" and lfw.ids[-1] == "lfw/nonface-099"
    assert lfw.load(0).float().std() > 1


def test_source_fingerprint_tracks_inputs(tmp_path):
    _save(tmp_path / "a.png", 1)
    _save(tmp_path / "b.png", 2)
    fp = open_source(tmp_path).fingerprint()
    assert open_source(tmp_path).fingerprint() == fp
    assert open_source(tmp_path, resolution=512).fingerprint() != fp
    assert open_source(tmp_path).subset(1).fingerprint() != fp
    _save(tmp_path / "b.png", 3, size=(21, 30))  # content (size) changed
    assert open_source(tmp_path).fingerprint() != fp
