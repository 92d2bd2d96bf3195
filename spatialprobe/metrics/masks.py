"""Foreground/background masks for SRSS: PNGs keyed by image id, patch rules, the official filter, id join.

A mask file ``<id>.png`` (its path relative to the mask folder, without the extension, is the image
id; ids with ``/`` live in subfolders) holds a per-pixel mask either of the image as fed to the encoders
(the square centre crop) or of the original image: a mask at the original size (any size with the
image's aspect ratio) gets the same ADM centre crop as the image (:func:`crop_mask`), and a mask of
another aspect ratio is an error. It is binarised with ``> 0``, resized with **nearest neighbour**
(no ringing, unlike a bicubic resize) to ``(H·p, W·p)`` pixels with ``p = round(resolution / H)``, and
cut into ``p×p`` patches. A patch is foreground if **any** of its pixels is (``rule="any"``, the
official max-pool) or if **more than half** are (``rule="majority"``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import store
from ..data import open_source
from ..data.preprocess import adm_crop_geometry  # the one ADM crop geometry (re-exported here)
from ..errors import ConfigError, DataError, InputFileError

log = logging.getLogger(__name__)

RULES = ("any", "majority")
MASK_SUFFIXES = (".png",)
OFFICIAL_MIN_FRACTION = 0.25  # >= 64 FG and >= 64 BG patches of 256


def read_mask(path: str | Path, channel: int | None = None) -> torch.Tensor:
    """Read one mask image as a bool tensor ``[h, w]`` (pixel > 0 is foreground).

    Grey, 1-bit, 16-bit and palette images are read as one channel (palette index > 0 is FG). For colour
    images pass ``channel`` (0 = R, 1 = G, 2 = B, 3 = A); without it the colour channels must agree.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            mode = im.mode
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError) as exc:
        raise InputFileError(f"Mask {str(p)!r} could not be read as an image ({exc}); replace or remove it.") from None
    if arr.ndim == 3:
        if channel is not None:
            if not 0 <= channel < arr.shape[2]:
                raise ConfigError(f"Mask {str(p)!r} ({mode}) has {arr.shape[2]} channels; --mask-channel "
                                  f"{channel} does not exist.")
            arr = arr[..., channel]
        else:
            colour = arr[..., : min(3, arr.shape[2])] if mode != "LA" else arr[..., :1]
            if not (colour == colour[..., :1]).all():
                raise DataError(f"Mask {str(p)!r} is a colour ({mode}) image whose channels differ; say which "
                                f"channel holds the mask with --mask-channel (0=R, 1=G, 2=B, 3=A).")
            arr = colour[..., 0]
    return torch.from_numpy(np.ascontiguousarray(arr) > 0)


def crop_mask(mask: torch.Tensor, resolution: int = 256, image_size: tuple[int, int] | None = None, *,
              name: str = "mask") -> torch.Tensor:
    """A pixel mask ``[h, w]`` as the encoders saw its image: the ADM centre crop to ``resolution``².

    A square mask is taken as the crop itself (or a square image) and returned unchanged. A non-square
    mask is the mask of the original image: it gets the image's crop (nearest neighbour, no ringing).
    With ``image_size = (width, height)`` of the original image, a mask of another aspect ratio is a
    :class:`DataError` (it cannot line up with the image), as is a square mask of a non-square image
    unless it is exactly ``resolution``² (already cropped).
    """
    h, w = int(mask.shape[0]), int(mask.shape[1])
    r = int(resolution)
    if image_size is not None:
        iw, ih = int(image_size[0]), int(image_size[1])
        cropped = (h, w) == (r, r) and iw != ih
        # same aspect ratio up to one pixel of rounding at the mask's scale
        if not cropped and abs(w * ih - h * iw) > max(iw, ih, w, h):
            raise DataError(f"Mask {name} is {w}x{h} pixels but its image is {iw}x{ih}: the aspect ratios differ, so "
                            f"the mask cannot line up with the image. Give the mask at the image's size ({iw}x{ih}) "
                            f"or at the {r}x{r} centre crop the encoders see.")
    if h == w:
        return mask
    (nw, nh), (x0, y0) = adm_crop_geometry((w, h), r)
    m = F.interpolate(mask.to(torch.float32)[None, None], size=(nh, nw), mode="nearest-exact")[0, 0]
    return m[y0:y0 + r, x0:x0 + r] > 0.5


def image_sizes(source) -> dict[str, tuple[int, int]]:
    """``{id: (width, height)}`` of an image source's original images (file headers only; arrays by shape).
    Empty when the sizes cannot be read (the aspect-ratio check of :func:`crop_mask` is then skipped)."""
    from PIL import Image

    out: dict[str, tuple[int, int]] = {}
    files = getattr(source, "files", None)
    try:
        if files is not None:
            for i, f in zip(source.ids, files):
                with Image.open(f) as im:
                    out[str(i)] = tuple(im.size)
        else:
            for k, i in enumerate(source.ids):
                im = source.load_pil(k)
                out[str(i)] = tuple(im.size)
    except Exception as exc:  # noqa: BLE001 - sizes are a check, not a requirement
        log.info("image sizes of %s not read (%s): mask aspect ratios are not checked", getattr(source, "spec", "?"), exc)
        return {}
    return out


def store_image_sizes(store_path) -> dict[str, tuple[int, int]]:
    """Original image sizes of a feature store's images, when its image source can still be opened."""
    try:
        m = store.open(store_path).manifest
        spec = (m.get("source") or {}).get("spec")
        if not spec:
            return {}
        return image_sizes(open_source(spec, resolution=int((m.get("source") or {}).get("resolution") or 256)))
    except Exception as exc:  # noqa: BLE001 - a moved image folder only skips the check
        log.info("image source of %s not opened (%s): mask aspect ratios are not checked", store_path, exc)
        return {}


def patch_mask(mask: torch.Tensor, grid: tuple[int, int], *, rule: str = "any", resolution: int = 256,
               image_size: tuple[int, int] | None = None, name: str = "mask") -> torch.Tensor:
    """Pixel mask ``[h, w]`` -> patch mask ``[H·W]`` (bool, row-major) for a token grid ``(H, W)``.

    A non-square mask first gets the image's ADM centre crop (:func:`crop_mask`, which also checks the
    aspect ratio against ``image_size``). The mask is then resized with nearest neighbour to
    ``(H·ph, W·pw)``, ``ph = max(1, round(resolution/H))`` (likewise pw), and each ``ph×pw`` patch is FG
    under ``rule``: ``"any"`` FG pixel (official) or a strict ``"majority"`` of FG pixels.
    """
    if rule not in RULES:
        raise ConfigError(f"Unknown mask rule {rule!r}; use one of {', '.join(RULES)}.")
    if mask.ndim != 2:
        raise DataError(f"A pixel mask must be 2-D [h, w]; got shape {tuple(mask.shape)}.")
    mask = crop_mask(mask, resolution, image_size, name=name)
    gh, gw = grid
    ph, pw = max(1, round(resolution / gh)), max(1, round(resolution / gw))
    m = mask.to(torch.float32)[None, None]
    if tuple(m.shape[-2:]) != (gh * ph, gw * pw):
        m = F.interpolate(m, size=(gh * ph, gw * pw), mode="nearest-exact")
    blocks = m.reshape(gh, ph, gw, pw)
    if rule == "any":
        out = blocks.amax(dim=(1, 3)) > 0
    else:
        out = blocks.sum(dim=(1, 3)) * 2 > ph * pw
    return out.reshape(-1)


def mask_files(folder: str | Path) -> dict[str, Path]:
    """``{id: path}`` of the PNG masks under ``folder`` (recursive). The id is the path relative to
    ``folder`` without the extension, with ``/`` separators (``cat/0001.png`` -> ``cat/0001``), the same
    rule as image folders, so masks for ``builtin`` or class-tree sources sit in matching subfolders."""
    d = Path(folder)
    if not d.is_dir():
        raise InputFileError(f"Mask folder {str(d)!r} does not exist; pass a folder of <image-id>.png masks.")
    files: dict[str, Path] = {}
    for f in sorted(d.rglob("*")):
        if f.is_file() and f.suffix.lower() in MASK_SUFFIXES:
            key = f.relative_to(d).with_suffix("").as_posix()
            if key in files:
                raise DataError(f"Mask folder {str(d)!r} has two masks for id {key!r} ({files[key].name}, "
                                f"{f.name}); keep one.")
            files[key] = f
    if not files:
        raise InputFileError(f"Mask folder {str(d)!r} holds no .png masks; masks are <image-id>.png files.")
    return files


def load_masks(folder: str | Path, grid: tuple[int, int], *, ids: Sequence[str] | None = None, rule: str = "any",
               resolution: int = 256, channel: int | None = None,
               image_sizes: dict[str, tuple[int, int]] | None = None) -> dict[str, torch.Tensor]:
    """``{id: bool Tensor[H·W]}`` patch masks from a folder of ``<id>.png`` files (all, or only ``ids``).

    ``image_sizes`` (``{id: (width, height)}`` of the original images) enables the aspect-ratio check."""
    files = mask_files(folder)
    keys = list(files) if ids is None else [i for i in ids if i in files]
    sizes = image_sizes or {}
    return {i: patch_mask(read_mask(files[i], channel), grid, rule=rule, resolution=resolution,
                          image_size=sizes.get(i), name=repr(str(files[i]))) for i in keys}


def min_patches(t: int, fraction: float = OFFICIAL_MIN_FRACTION) -> int:
    """Minimum FG (and BG) patch count of the official filter scaled to ``t`` tokens (64 of 256)."""
    return max(1, math.ceil(fraction * t - 1e-9))


def official_filter(masks: torch.Tensor, fraction: float = OFFICIAL_MIN_FRACTION) -> torch.Tensor:
    """Keep-flags ``[N]`` of the official filter: at least ``fraction·T`` FG and as many BG patches."""
    k = min_patches(masks.shape[-1], fraction)
    fg = masks.sum(-1)
    return (fg >= k) & (masks.shape[-1] - fg >= k)


def join_ids(feature_ids: Sequence[str], mask_ids: Sequence[str], *, allow_missing: bool = False,
             what: str = "features") -> list[str]:
    """Feature ids that have a mask, in feature order. Ids on one side only are an error listing them,
    unless ``allow_missing`` (then they are logged and skipped)."""
    fset, mset = set(feature_ids), set(mask_ids)
    no_mask = [i for i in feature_ids if i not in mset]
    no_feat = sorted(mset - fset)
    if no_mask or no_feat:
        def show(xs: list[str]) -> str:
            return ", ".join(xs[:10]) + (f" … (+{len(xs) - 10} more)" if len(xs) > 10 else "")

        parts = []
        if no_mask:
            parts.append(f"{len(no_mask)} image id(s) in {what} have no mask: {show(no_mask)}")
        if no_feat:
            parts.append(f"{len(no_feat)} mask id(s) have no features: {show(no_feat)}")
        msg = "; ".join(parts)
        if not allow_missing:
            raise DataError(f"Masks and features must share image ids (joined by id, never by position). {msg}. "
                            "Fix the ids (mask files are <image-id>.png) or pass --allow-missing to skip them.")
        log.warning("skipping unmatched ids (--allow-missing): %s", msg)
    return [i for i in feature_ids if i in mset]
