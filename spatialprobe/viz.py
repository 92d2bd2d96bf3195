"""Cosine-similarity maps of reference tokens, without and with spatial normalisation (irepa-spec §2 "viz").

For one image and each encoder: the patch tokens, the cosine similarity of a few reference tokens with
every token (an H×W map per reference), once on the raw tokens and once after iREPA's spatial
normalisation ``spatial_norm(tokens, gamma)``. The reference points follow the official script: the
first is the image centre, the others are drawn uniformly with ``random.seed(42)`` at a Chebyshev
separation of at least 0.15 (in [0, 1] image coordinates), and map to the grid by ``round(y·(H−1))``.

One difference from the official script, on purpose: the image goes through the package's ADM centre
crop (as every other input does) instead of a plain resize to 256×256, so non-square images keep their
aspect ratio.

``viz(encoder=[...], image=...)`` is what ``spatialprobe viz`` wraps; it writes ``similarity.png`` /
``.pdf``, ``similarity_maps.npz`` (plain arrays, no pickle; read back with :func:`load_maps`) and
``config.json``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import comma_list, resolve, write_config
from .errors import ConfigError, DataError, InputFileError, did_you_mean
from .figures import similarity_figure
from .runtime import resolve_device
from .schema import CONFIG_JSON, SIMILARITY_MAPS_NPZ

log = logging.getLogger(__name__)

OFFICIAL_N_REFS = 4
OFFICIAL_SEED = 42
OFFICIAL_MIN_SEP = 0.15
DEFAULT_GAMMA = 0.6  #: the official ``--zscore_alpha`` default (the LDM recipe's γ)
MAPS_FILE = SIMILARITY_MAPS_NPZ
FIGURE_STEM = "similarity"


def reference_points(n: int = OFFICIAL_N_REFS, *, seed: int = OFFICIAL_SEED,
                     min_sep: float = OFFICIAL_MIN_SEP, max_tries: int = 10_000) -> list[tuple[float, float]]:
    """``n`` points ``(y, x)`` in [0, 1]²: the centre first, then seeded uniform draws kept when their
    Chebyshev distance to every kept point is at least ``min_sep``."""
    if n < 1:
        raise ConfigError(f"n_refs={n}: ask for at least one reference token.")
    rng = random.Random(seed)
    pts = [(0.5, 0.5)]
    tries = 0
    while len(pts) < n:
        tries += 1
        if tries > max_tries:
            raise ConfigError(f"could not place {n} reference points {min_sep} apart; ask for fewer (--n-refs).")
        cand = (rng.random(), rng.random())
        if all(max(abs(cand[0] - p[0]), abs(cand[1] - p[1])) >= min_sep for p in pts):
            pts.append(cand)
    return pts


def to_grid(points: Sequence[tuple[float, float]], grid: tuple[int, int]) -> list[tuple[int, int]]:
    """[0, 1] points → (row, col) on the token grid, ``round(y·(H−1))``, ``round(x·(W−1))``."""
    h, w = grid
    return [(int(round(y * (h - 1))), int(round(x * (w - 1)))) for y, x in points]


def parse_tokens(spec: str | Sequence | None, grid: tuple[int, int]) -> list[tuple[int, int]] | None:
    """Reference tokens from ``"ROW:COL,ROW:COL"`` (grid cells) or flat indices ``"136,40"``; None stays None."""
    if spec is None:
        return None
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    items = [s for s in items if s != ""]
    if not items:
        return None
    h, w = grid
    out = []
    for it in items:
        try:
            if isinstance(it, (tuple, list)):
                r, c = int(it[0]), int(it[1])
            elif ":" in str(it):
                a, b = str(it).split(":", 1)
                r, c = int(a), int(b)
            else:
                k = int(it)
                r, c = (k // w, k % w) if 0 <= k < h * w else (-1, -1)
                if r < 0:
                    raise IndexError(k)
        except IndexError as exc:
            raise ConfigError(f"token index {exc.args[0]} is outside the {h}x{w} grid (0..{h * w - 1}).") from None
        except ValueError:
            raise ConfigError(f"reference token {it!r} is neither ROW:COL nor a flat index; "
                              f"e.g. --tokens 8:8,3:12 or --tokens 136") from None
        if not (0 <= r < h and 0 <= c < w):
            raise ConfigError(f"reference token {r}:{c} is outside the {h}x{w} grid (rows 0..{h - 1}, cols 0..{w - 1}).")
        out.append((r, c))
    return out


def cosine_maps(tokens, grid: tuple[int, int], refs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Cosine similarity of each reference token with every token: ``[len(refs), H, W]`` float32.

    ``tokens`` is ``[T, D]`` or ``[1, T, D]`` (a tensor or array), row-major over ``grid``.
    """
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(tokens).float()
    if t.ndim == 3:
        if t.shape[0] != 1:
            raise DataError(f"cosine_maps takes one image's tokens, got a batch of {t.shape[0]}.")
        t = t[0]
    h, w = grid
    if t.ndim != 2 or t.shape[0] != h * w:
        raise DataError(f"tokens of shape {tuple(t.shape)} do not fit a {h}x{w} grid ([T={h * w}, D]).")
    u = F.normalize(t, dim=-1, eps=1e-8)
    idx = torch.tensor([r * w + c for r, c in refs], dtype=torch.long)
    return (u[idx] @ u.T).reshape(len(refs), h, w).numpy().astype(np.float32)


@dataclass
class SimilarityMaps:
    """Maps of one encoder on one image."""

    encoder: str
    grid: tuple[int, int]
    refs: list[tuple[int, int]]  #: (row, col) on the grid
    raw: np.ndarray  #: [R, H, W] cosine on the encoder's tokens
    normed: np.ndarray  #: [R, H, W] cosine after ``spatial_norm(tokens, gamma)``
    gamma: float
    image: np.ndarray | None = None  #: uint8 [S, S, 3], the encoder's input after the centre crop
    image_id: str = ""


def maps_for_tokens(tokens, grid: tuple[int, int], refs: Sequence[tuple[int, int]], *, gamma: float = DEFAULT_GAMMA,
                    encoder: str = "tokens", image: np.ndarray | None = None, image_id: str = "") -> SimilarityMaps:
    """:class:`SimilarityMaps` from ready tokens ``[T, D]`` / ``[1, T, D]`` (e.g. a feature-store row)."""
    import torch

    from .tokens import spatial_norm

    t = torch.as_tensor(tokens).float()
    t = t[None] if t.ndim == 2 else t
    normed = spatial_norm(t, gamma)
    return SimilarityMaps(encoder=encoder, grid=tuple(grid), refs=list(refs), raw=cosine_maps(t, grid, refs),
                          normed=cosine_maps(normed, grid, refs), gamma=float(gamma), image=image, image_id=image_id)


def load_image(spec: str, resolution: int = 256) -> tuple[str, np.ndarray]:
    """An image file, or a built-in photograph by id (``skimage/astronaut`` or just ``astronaut``), as
    ``(id, uint8 [R, R, 3])`` after the ADM centre crop."""
    from .data import center_crop_arr, decode_file

    p = Path(str(spec)).expanduser()
    if p.is_file():
        return p.stem, center_crop_arr(decode_file(p), resolution)
    from .data.builtin import builtin_ids, builtin_source

    ids = builtin_ids("builtin")
    want = str(spec).strip()
    match = [i for i in ids if i == want or i.split("/", 1)[1] == want]
    if not match:
        short = [i.split("/", 1)[1] for i in ids]
        raise InputFileError(f"Image {want!r} is neither a file nor a built-in photograph "
                             f"(e.g. skimage/astronaut; all: {', '.join(short)})." + did_you_mean(want, short))
    src = builtin_source("builtin", resolution=resolution)
    i = list(src.ids).index(match[0])
    return match[0], src.load(i).permute(1, 2, 0).numpy()


@dataclass
class VizConfig:
    """Options of :func:`viz` (and ``spatialprobe viz``)."""

    encoder: list[str] = field(default_factory=lambda: ["hog"])  #: zoo ids (variants too), one figure row each
    image: str = "skimage/astronaut"  #: image file or built-in photograph id
    tokens: str | list | None = None  #: reference tokens ROW:COL or flat indices (default: the official points)
    n_refs: int = OFFICIAL_N_REFS
    seed: int = OFFICIAL_SEED  #: seed of the random reference points
    gamma: float = DEFAULT_GAMMA  #: spatial-normalisation γ
    random_init: bool = False  #: random-init architectures (plumbing; the maps then mean nothing)
    weights_dir: str | None = None
    device: str = "auto"  #: auto | cpu | cuda | cuda:N
    resolution: int = 256
    out: str | None = None
    dpi: int = 150  #: PNG resolution

    def __post_init__(self) -> None:
        if isinstance(self.encoder, str):
            self.encoder = comma_list(self.encoder)
        if not self.encoder:
            raise ConfigError("viz needs at least one encoder: --encoder hog,pixels")
        if self.gamma < 0:
            raise ConfigError(f"gamma={self.gamma} must be >= 0 (0.6 is the LDM default).")


def viz(config: str | Path | VizConfig | None = None, **options) -> list[SimilarityMaps]:
    """Similarity maps of each encoder on one image, without and with spatial normalisation.

    With ``out=DIR`` writes ``similarity.png``/``.pdf``, ``similarity_maps.npz`` and ``config.json``.
    Example: ``viz(encoder=["hog", "pixels"], image="skimage/astronaut", out="viz/")``.
    """
    import torch

    from . import encoders as E

    cfg = resolve(VizConfig, config, **options)
    device = str(resolve_device(cfg.device))
    image_id, img = load_image(cfg.image, cfg.resolution)
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    results, weights = [], {}
    for name in cfg.encoder:
        enc = E.get(name, pretrained=not cfg.random_init, weights_dir=cfg.weights_dir, device=device)
        out = enc(x.to(device))
        grid = tuple(out.grid)
        refs = parse_tokens(cfg.tokens, grid) or to_grid(reference_points(cfg.n_refs, seed=cfg.seed), grid)
        m = maps_for_tokens(out.patch.cpu(), grid, refs, gamma=cfg.gamma, encoder=enc.name, image=img,
                            image_id=image_id)
        results.append(m)
        weights[enc.name] = str(getattr(enc, "weights_id", "none"))
        log.info("%s: %d maps, raw cosine %.3f..%.3f, normalised %.3f..%.3f", enc.name, len(refs),
                 m.raw.min(), m.raw.max(), m.normed.min(), m.normed.max())
    if cfg.out:
        out_dir = Path(cfg.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_maps(results, out_dir / MAPS_FILE)
        paths = similarity_figure(results, out=out_dir / FIGURE_STEM, dpi=cfg.dpi)
        write_config(out_dir / CONFIG_JSON, cfg, image_id=image_id, weights=weights,
                     protocol={"viz": "irepa-viz-spatialnorm-v1", "preprocess": "adm-center-crop-v1"},
                     outputs=[str(p) for p in paths] + [str(out_dir / MAPS_FILE)])
    return results


def save_maps(maps: Sequence[SimilarityMaps], path: str | Path) -> Path:
    """Write maps as plain arrays (``np.load(..., allow_pickle=False)`` reads them back)."""
    if not maps:
        raise DataError("no similarity maps to save.")
    arrays: dict[str, np.ndarray] = {
        "encoders": np.array([m.encoder for m in maps]),
        "gammas": np.array([m.gamma for m in maps], dtype=np.float64),
        "image_id": np.array(maps[0].image_id),
    }
    if maps[0].image is not None:
        arrays["image"] = np.asarray(maps[0].image, dtype=np.uint8)
    for i, m in enumerate(maps):
        arrays[f"raw_{i}"] = m.raw
        arrays[f"normed_{i}"] = m.normed
        arrays[f"refs_{i}"] = np.asarray(m.refs, dtype=np.int64).reshape(-1, 2)
        arrays[f"grid_{i}"] = np.asarray(m.grid, dtype=np.int64)
    np.savez_compressed(path, **arrays)
    return Path(path)


def load_maps(path: str | Path) -> list[SimilarityMaps]:
    """Read ``similarity_maps.npz`` written by :func:`viz` / :func:`save_maps`."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"Similarity maps {str(p)!r} do not exist; write them with `spatialprobe viz --out DIR`.")
    try:
        with np.load(p, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - any read failure is the user's file
        raise DataError(f"Similarity maps {str(p)!r} could not be read: {exc}") from exc
    if "encoders" not in d:
        raise DataError(f"{str(p)!r} is not a similarity-maps file (no 'encoders' array).")
    image = d.get("image")
    out = []
    for i, name in enumerate(d["encoders"].tolist()):
        out.append(SimilarityMaps(encoder=str(name), grid=tuple(int(v) for v in d[f"grid_{i}"]),
                                  refs=[tuple(int(v) for v in r) for r in d[f"refs_{i}"]], raw=d[f"raw_{i}"],
                                  normed=d[f"normed_{i}"], gamma=float(d["gammas"][i]), image=image,
                                  image_id=str(d["image_id"])))
    return out
