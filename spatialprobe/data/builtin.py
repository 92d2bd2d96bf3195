"""Built-in real images that ship with scikit-image and scikit-learn (no download, works offline).

``builtin`` — the photographs bundled with the two packages (id ``<package>/<name>``). Sources, as
given in the packages' own docstrings:

============================== ===============================================================
id                             source
============================== ===============================================================
skimage/astronaut              NASA Great Images, astronaut Eileen Collins; public domain
skimage/brick                  CC0Textures "Bricks25" (perspective-corrected, grayscale); CC0
skimage/camera                 photograph by Lav Varshney; CC0
skimage/chelsea                Chelsea the cat, photograph by Stéfan van der Walt; CC0
skimage/clock                  motion-blurred wall clock, photograph by Stéfan van der Walt; public domain
skimage/coffee                 coffee cup, photograph by Rachel Michetti (Pikolo Espresso Bar); CC0
skimage/coins                  Greek coins from Pompeii, Brooklyn Museum collection; no known restrictions
skimage/grass                  DeviantArt "Grass-01" by linolafett (grayscale crop); CC0
skimage/gravel                 CC0Textures "Gravel04" (grayscale crop); CC0
skimage/hubble_deep_field      Hubble eXtreme Deep Field, NASA/HubbleSite; public domain
skimage/immunohistochemistry   IHC-stained colonic glands, CMMI; no known restrictions
skimage/moon                   surface of the moon (low contrast, grayscale)
skimage/motorcycle_left        Middlebury 2014 stereo benchmark (Scharstein et al.), left view
skimage/motorcycle_right       Middlebury 2014 stereo benchmark (Scharstein et al.), right view
skimage/retina                 fundus photograph, Mikael Häggström via Wikimedia Commons; CC0
skimage/rocket                 DSCOVR launch on Falcon 9, SpaceX photos; public domain
sklearn/china                  "china.jpg", Flickr user danielbuechele; CC BY 2.0
sklearn/flower                 "flower.jpg", Flickr user vultilion; CC BY 2.0
============================== ===============================================================

Grayscale photographs are replicated to RGB. No labels.

``builtin:digits`` — scikit-learn's ``load_digits()``: 1,797 labelled 8×8 handwritten digits (UCI
optical-recognition set, 0..16 ink levels). Ink is mapped linearly to 0..255 (bright strokes on a dark
background), replicated to RGB and upscaled by the same ADM crop as every source (bicubic).
Labels 0..9. Ids ``digits/00000`` …

``builtin:lfw`` — scikit-image's ``lfw_subset()``: 200 25×25 grayscale crops from Labeled Faces in
the Wild (Huang et al.); the first 100 are faces, the last 100 non-face background patches. Labels
``face`` = 1, ``non-face`` = 0. Ids ``lfw/face-000`` … ``lfw/nonface-099``.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import UnknownNameError, did_you_mean
from .sources import ArraySource

_SKIMAGE = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
            "hubble_deep_field", "immunohistochemistry", "moon", "motorcycle_left", "motorcycle_right",
            "retina", "rocket")
_SKLEARN = ("china", "flower")

BUILTIN_SETS = ("builtin", "builtin:digits", "builtin:lfw")


def _versions() -> dict:
    import skimage
    import sklearn

    return {"skimage": skimage.__version__, "sklearn": sklearn.__version__}


def _photos() -> list[np.ndarray]:
    import skimage.data as skd
    from sklearn.datasets import load_sample_images

    out = []
    for name in _SKIMAGE:
        if name.startswith("motorcycle_"):
            left, right, _ = skd.stereo_motorcycle()
            out.append(left if name.endswith("left") else right)
        else:
            out.append(getattr(skd, name)())
    sk = load_sample_images()
    by_name = {fn.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]: im
               for fn, im in zip(sk.filenames, sk.images)}
    out.extend(by_name[n] for n in _SKLEARN)
    return out


def _digits() -> list[np.ndarray]:
    from sklearn.datasets import load_digits

    imgs = load_digits().images  # float 0..16
    return list(np.rint(imgs * (255.0 / 16.0)).astype(np.uint8))


def _lfw() -> list[np.ndarray]:
    import skimage.data as skd

    a = np.asarray(skd.lfw_subset())
    if a.dtype != np.uint8:  # float in 0..1 on recent scikit-image, uint8 on older ones
        a = np.rint(np.clip(a.astype(np.float64) * (255.0 if a.max() <= 1.0 else 1.0), 0, 255)).astype(np.uint8)
    return list(a)


def _digit_labels() -> list[int]:
    from sklearn.datasets import load_digits

    return [int(t) for t in load_digits().target]


def builtin_source(spec: str, *, resolution: int = 256) -> ArraySource:
    """Open ``builtin``, ``builtin:digits`` or ``builtin:lfw``."""
    key = spec.strip().lower()
    if key == "builtin":
        ids = [f"skimage/{n}" for n in _SKIMAGE] + [f"sklearn/{n}" for n in _SKLEARN]
        src = ArraySource(spec, ids, _photos, resolution=resolution, content_key=_versions())
    elif key == "builtin:digits":
        labels = _digit_labels()
        src = ArraySource(spec, [f"digits/{i:05d}" for i in range(len(labels))], _digits, labels=labels,
                          label_names=[str(d) for d in range(10)], resolution=resolution,
                          content_key=_versions())
    elif key == "builtin:lfw":
        ids = [f"lfw/face-{i:03d}" for i in range(100)] + [f"lfw/nonface-{i:03d}" for i in range(100)]
        src = ArraySource(spec, ids, _lfw, labels=[1] * 100 + [0] * 100, label_names=["non-face", "face"],
                          resolution=resolution, content_key=_versions())
    else:
        raise UnknownNameError(f"Unknown built-in image set {spec!r}; known: {', '.join(BUILTIN_SETS)}."
                               + did_you_mean(key, BUILTIN_SETS))
    src.kind = key
    return src


@functools.lru_cache(maxsize=None)
def builtin_ids(spec: str) -> tuple[str, ...]:
    """Ids of a built-in set without loading any pixels."""
    return tuple(builtin_source(spec).ids)
