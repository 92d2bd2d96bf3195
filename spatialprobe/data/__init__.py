"""Image sources with stable string ids, the ADM centre crop, and robust decoding.

``open_source(spec)`` accepts:

- ``builtin`` / ``builtin:digits`` / ``builtin:lfw``: real images bundled with scikit-image and
  scikit-learn (offline; see :mod:`spatialprobe.data.builtin`);
- a folder: every image below it, recursively; id = relative path without the extension. When every
  image sits exactly one folder deep (``<class>/<image>``, i.e. an ImageNet-style ``<split>/<class>/*``
  tree opened at the split), labels come from the sorted class-folder names;
- a list file: one path per line (relative to the list's folder), optionally ``<TAB or ,>label``;
- ``official:DIR``: the images of an official iREPA collection (:mod:`spatialprobe.data.official`).

Every source returns uint8 ``[3, R, R]`` tensors after the ADM centre crop (R = 256 by default).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputFileError
from .official import PREFIX as OFFICIAL_PREFIX, image_source as official_image_source
from .preprocess import PREPROCESS_ID, BadImageError, center_crop_arr, decode_file, to_rgb
from .sources import IMAGE_SUFFIXES, ArraySource, FileSource, ImageSource, folder_source, list_source

__all__ = ["open_source", "ImageSource", "FileSource", "ArraySource", "BadImageError", "center_crop_arr",
           "decode_file", "to_rgb", "PREPROCESS_ID", "IMAGE_SUFFIXES", "folder_source", "list_source"]


def open_source(spec: "str | Path | ImageSource", *, resolution: int = 256) -> ImageSource:
    """Open an image source from a spec string (see the module docstring); sources pass through."""
    if isinstance(spec, ImageSource):
        return spec
    s = str(spec)
    if s.lower() == "builtin" or s.lower().startswith("builtin:"):
        from .builtin import builtin_source

        return builtin_source(s, resolution=resolution)
    if s.startswith(OFFICIAL_PREFIX):  # the iREPA collection's data/images/<i>.png, ids "0".."N-1"
        return official_image_source(s, resolution=resolution)
    p = Path(s).expanduser()
    if p.is_dir():
        return folder_source(p, resolution=resolution)
    if p.is_file():
        return list_source(p, resolution=resolution)
    raise InputFileError(f"Image source {s!r} is neither a folder, a list file nor a built-in set "
                         "(builtin, builtin:digits, builtin:lfw).")
