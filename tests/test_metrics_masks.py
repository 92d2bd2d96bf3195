"""Masks: PNG reading, nearest resize, patch rules, the official filter, the join by id."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spatialprobe.errors import ConfigError, DataError, InputFileError
from spatialprobe.metrics import join_ids, load_masks, official_filter, patch_mask, read_mask
from spatialprobe.metrics.masks import min_patches


def test_patch_rules_by_hand():
    # 32x32 pixels, 2x2 grid, 16x16-pixel patches
    m = torch.zeros(32, 32, dtype=torch.bool)
    m[3, 5] = True  # patch (0,0): 1 FG pixel
    m[0:8, 16:32] = True  # patch (0,1): 128 pixels ...
    m[8, 16] = True  # ... + 1 = 129 of 256: a strict majority
    m[16:24, 0:16] = True  # patch (1,0): exactly 128 = half: not a strict majority
    assert patch_mask(m, (2, 2), rule="any", resolution=32).tolist() == [True, True, True, False]
    assert patch_mask(m, (2, 2), rule="majority", resolution=32).tolist() == [False, True, False, False]
    with pytest.raises(ConfigError):
        patch_mask(m, (2, 2), rule="most")


def test_nearest_resize_keeps_blocks_and_adds_no_pixels():
    # a 64x64 mask made of 4x4-pixel blocks, read at resolution 16 (1 pixel per patch of a 16x16 grid)
    blocks = torch.rand(16, 16, generator=torch.Generator().manual_seed(1)) > 0.5
    big = blocks.repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert torch.equal(patch_mask(big, (16, 16), resolution=16), blocks.reshape(-1))
    # upsizing a tiny mask (8x8 -> 256) with nearest neighbour: each pixel covers exactly 2x2 patches
    tiny = blocks[:8, :8]
    up = patch_mask(tiny, (16, 16), resolution=256).reshape(16, 16)
    assert torch.equal(up, tiny.repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_non_square_grid_patch_mask():
    m = torch.zeros(40, 60, dtype=torch.bool)
    m[:, 30:] = True  # right half
    pm = patch_mask(m, (2, 3), resolution=60).reshape(2, 3)  # 30 px per row-patch, 20 per column-patch
    assert pm.tolist() == [[False, True, True], [False, True, True]]
    assert patch_mask(m, (2, 3), rule="majority", resolution=60).reshape(2, 3).tolist() == [[False, False, True]] * 2


def test_read_modes(tmp_path):
    g = np.zeros((8, 8), np.uint8)
    g[2:4, 2:6] = 200
    Image.fromarray(g).save(tmp_path / "grey.png")
    assert read_mask(tmp_path / "grey.png").sum() == 8
    p = Image.fromarray((g > 0).astype(np.uint8), mode="L").convert("P")
    p.save(tmp_path / "pal.png")
    assert torch.equal(read_mask(tmp_path / "pal.png"), torch.from_numpy(g > 0))
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[0, :, 0] = 255  # red row
    rgb[7, :, 2] = 255  # blue row
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="--mask-channel"):
        read_mask(tmp_path / "rgb.png")
    assert read_mask(tmp_path / "rgb.png", channel=0)[0].all() and read_mask(tmp_path / "rgb.png", channel=0).sum() == 8
    assert read_mask(tmp_path / "rgb.png", channel=2)[7].all()
    with pytest.raises(ConfigError):
        read_mask(tmp_path / "rgb.png", channel=3)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputFileError, match="bad.png"):
        read_mask(tmp_path / "bad.png")


def test_real_silhouette_mask(tmp_path):
    from skimage import data

    horse = data.horse()  # bool silhouette (True = background in skimage's convention)
    Image.fromarray((~horse).astype(np.uint8) * 255).save(tmp_path / "horse.png")
    masks = load_masks(tmp_path, (16, 16))
    fg = masks["horse"]
    assert fg.shape == (256,) and 0.1 < fg.float().mean() < 0.9
    # "any" dilates: it never has fewer FG patches than "majority"
    maj = load_masks(tmp_path, (16, 16), rule="majority")["horse"]
    assert bool((maj <= fg).all()) and fg.sum() > maj.sum()


def test_official_filter_counts():
    assert min_patches(256) == 64 and min_patches(64) == 16 and min_patches(15) == 4
    m = torch.zeros(4, 256, dtype=torch.bool)
    m[0, :64] = True  # 64 FG / 192 BG: kept
    m[1, :63] = True  # 63 FG: dropped
    m[2, :192] = True  # 192 FG / 64 BG: kept
    m[3, :193] = True  # 63 BG: dropped
    assert official_filter(m).tolist() == [True, False, True, False]


def test_folder_errors(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        load_masks(tmp_path / "nope", (4, 4))
    with pytest.raises(InputFileError, match="no .png"):
        load_masks(tmp_path, (4, 4))


def test_join_by_id_lists_missing():
    with pytest.raises(DataError) as e:
        join_ids(["a", "b", "c"], ["b", "c", "z"])
    assert "'a'" not in str(e.value) and "a" in str(e.value) and "z" in str(e.value)
    assert "--allow-missing" in str(e.value)
    assert join_ids(["c", "a", "b"], ["b", "c", "z"], allow_missing=True) == ["c", "b"]
    assert join_ids(["c", "b"], ["b", "c"]) == ["c", "b"]


def test_nested_mask_ids(tmp_path):
    (tmp_path / "cls").mkdir()
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "cls" / "a.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "b.png")
    m = load_masks(tmp_path, (2, 2), resolution=16)
    assert set(m) == {"cls/a", "b"} and m["cls/a"].all() and not m["b"].any()
