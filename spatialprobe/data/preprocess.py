"""Image decoding and the ADM centre crop.

Decoding turns any PIL-readable file into 8-bit RGB:

- RGBA / LA / palette-with-transparency are composited over a white background (a plain
  ``convert("RGB")`` would expose whatever colour hides under fully transparent pixels);
- grayscale (``1``, ``L``), palette (``P``), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` go through PIL's converters;
- 16-bit (``I;16*``) and 32-bit integer (``I``) images are rescaled from 0..65535 to 0..255
  (PIL's own ``convert`` would clip everything above 255 to white); float (``F``) images are taken
  as 0..1 when their maximum is ≤ 1, else as 0..255, and clipped;
- multi-frame files (GIF, TIFF) use their first frame.

Corrupt, truncated, empty or non-image files raise :class:`BadImageError` with a short reason; the
extraction loop records them and goes on.

:func:`center_crop_arr` is the ADM ("guided-diffusion") preprocessing used by REPA and iREPA to make
256-px ImageNet: halve with a BOX filter while the short side is ≥ 2·R, resize so the short side is R
with BICUBIC, then take the central R×R crop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

#: Version tag of the preprocessing; part of every feature-store fingerprint.
PREPROCESS_ID = "adm-center-crop-v1"


class BadImageError(DataError):
    """One image could not be decoded (corrupt, truncated, empty or not an image)."""

    def __init__(self, image_id: str, reason: str) -> None:
        super().__init__(f"{image_id}: {reason}")
        self.image_id = image_id
        self.reason = reason


def to_rgb(img) -> "Image.Image":  # noqa: F821 - PIL imported lazily
    """Convert a PIL image of any mode to 8-bit RGB (see the module docstring for the rules)."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img, dtype=np.float64)
        if mode == "I" and a.max(initial=0) <= 255:
            g = np.clip(a, 0, 255)
        else:
            g = np.clip(a / 257.0, 0, 255)
        return Image.fromarray(np.rint(g).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a
        return Image.fromarray(np.rint(np.clip(a, 0, 255)).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def decode_file(path: str | Path, image_id: str | None = None) -> "Image.Image":  # noqa: F821
    """Read one image file fully and return it as 8-bit RGB, or raise :class:`BadImageError`."""
    from PIL import Image, UnidentifiedImageError

    image_id = image_id or str(path)
    try:
        if Path(path).stat().st_size == 0:
            raise BadImageError(image_id, "empty file (0 bytes)")
        with Image.open(path) as img:
            img.seek(0)
            img.load()  # forces the full decode: truncated data fails here
            out = to_rgb(img)
            out.load()
            return out.copy() if out is img else out
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(image_id, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise BadImageError(image_id, f"cannot decode ({type(exc).__name__}: {exc})") from None


def array_to_pil(arr: np.ndarray) -> "Image.Image":  # noqa: F821
    """An in-memory image (H×W gray, H×W×3 RGB, H×W×4 RGBA; uint8, bool or float in 0..1) as RGB PIL."""
    from PIL import Image

    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = a.astype(np.float64)
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a
        a = np.rint(np.clip(a, 0, 255)).astype(np.uint8)
    if a.ndim == 2:
        return Image.fromarray(a, "L").convert("RGB")
    if a.ndim == 3 and a.shape[2] == 4:
        return to_rgb(Image.fromarray(a, "RGBA"))
    if a.ndim == 3 and a.shape[2] == 3:
        return Image.fromarray(a, "RGB")
    raise DataError(f"Image array of shape {a.shape} is not H×W, H×W×3 or H×W×4.")


def adm_crop_geometry(size: tuple[int, int], resolution: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where the ADM centre crop (:func:`center_crop_arr`) of an image of
    ``size = (width, height)`` lands: ``((resized_w, resized_h), (x0, y0))``. The image is halved while its
    short side is >= 2R, resized so the short side is R, and the central R×R window at ``(x0, y0)`` is kept."""
    r = int(resolution)
    w, h = int(size[0]), int(size[1])
    while min(w, h) >= 2 * r:
        w, h = w // 2, h // 2
    scale = r / min(w, h)
    nw, nh = max(r, round(w * scale)), max(r, round(h * scale))
    return (nw, nh), ((nw - r) // 2, (nh - r) // 2)


def center_crop_arr(img, resolution: int) -> np.ndarray:
    """ADM centre crop of an RGB PIL image to ``resolution``² → uint8 array ``[R, R, 3]``
    (the geometry of :func:`adm_crop_geometry`)."""
    from PIL import Image

    r = int(resolution)
    size, (x0, y0) = adm_crop_geometry(img.size, r)
    while min(img.size) >= 2 * r:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    a = np.asarray(img.resize(size, resample=Image.BICUBIC))
    return a[y0:y0 + r, x0:x0 + r]


def to_tensor(arr: np.ndarray):
    """uint8 ``[H, W, 3]`` array → uint8 tensor ``[3, H, W]`` (contiguous)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
