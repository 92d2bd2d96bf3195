"""A toy FD protocol for the digits mini study: the digits analogue of Inception, never called gFID.

``fd_digits`` is the Fréchet distance (:func:`~spatialprobe.fid.metrics.frechet_distance`, ADM's formula)
between generated images and scikit-learn's digits, measured on the penultimate features of a small CNN
trained on the digits themselves:

- images: ``builtin:digits`` exactly as the training runs see them (ink 0..16 → 0..255, grey RGB, ADM crop
  to :data:`RESOLUTION` = 32 px, the ``jit-tiny`` training resolution); samples of another size are resized
  to 32 px (bilinear, antialiased) and the mean of the three channels is taken. (Aligned training runs read
  the digits cropped at the teacher's 256 px and resized to 32 px; those held-out images are at FD 1.1 from
  the reference, against 52.7 for the train split);
- split: image ``i`` is held out when ``i % 5 == 0`` (360 held-out, 1,437 train, every writer in both);
- classifier: three 3×3 conv + ReLU + 2×2 max-pool stages (8, 16, 32 channels), a 64-d linear layer (the
  features, taken before its ReLU) and a 10-way head, trained on the train split for 10 epochs (Adam,
  lr 2e-3, batch 64) with a fixed seed, deterministic algorithms and one CPU thread;
- reference: mean and covariance of the held-out features.

The classifier and the reference statistics are computed once and cached under
``$SPATIALPROBE_CACHE/digits-fd/<version>-s<seed>/`` (default ``~/.cache/spatialprobe``) as safetensors plus
a ``meta.json`` with the held-out accuracy and the classifier's sha256; a cache whose file no longer matches
its recorded sha256 is rebuilt. The protocol id (e.g. ``digits-cnn-fd-v1-r32-s0-n360``) names the version,
resolution, seed and sample count: FD values are comparable only under the same id.
"""

from __future__ import annotations

import contextlib
import functools
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..io import atomic_write_bytes, atomic_write_json, sha256_file
from ..io import cache_dir as default_cache_dir  # the cache-folder rule
from ..schema import CONFIG_JSON, FD_DIGITS
from . import metrics as M

log = logging.getLogger(__name__)

VERSION = "digits-cnn-fd-v1"
RESOLUTION = 32
FEATURE_DIM = 64
HOLDOUT_EVERY = 5
EPOCHS = 10
BATCH = 64
LR = 2e-3
COLUMN = FD_DIGITS  #: the results-table column; this is not gFID


class DigitsCNN(nn.Module):
    """Grey 32×32 digits -> 64-d features -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(32 * (RESOLUTION // 8) ** 2, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,1,32,32]`` in [−1, 1] -> penultimate features ``[B, 64]`` (before the ReLU)."""
        return self.fc(self.conv(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B,3,H,W]`` -> float ``[B,1,32,32]`` in [−1, 1] (channel mean, antialiased resize)."""
    x = images.float().mean(dim=1, keepdim=True) / 255.0
    if tuple(x.shape[-2:]) != (RESOLUTION, RESOLUTION):
        x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False, antialias=True)
    return x * 2.0 - 1.0


@functools.lru_cache(maxsize=1)
def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_images, train_labels, heldout_images, heldout_labels)``: uint8 ``[N,3,32,32]`` as
    ``builtin:digits`` at 32 px, held out when ``index % 5 == 0``."""
    from ..data import open_source

    src = open_source("builtin:digits", resolution=RESOLUTION)
    imgs = torch.stack([src.load(i) for i in range(len(src))])
    labels = torch.tensor(src.labels, dtype=torch.long)
    held = torch.arange(len(src)) % HOLDOUT_EVERY == 0
    return imgs[~held], labels[~held], imgs[held], labels[held]


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seeded, deterministic algorithms, one CPU thread; the caller's settings come back afterwards."""
    det, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(det, warn_only=warn_only)
            torch.set_num_threads(threads)


def train_classifier(seed: int = 0) -> tuple[DigitsCNN, float]:
    """Train the feature CNN on the train split (deterministic, CPU); returns it and its held-out accuracy."""
    xtr, ytr, xte, yte = digits_split()
    t0 = time.time()
    with _deterministic(seed):
        net = DigitsCNN()
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        xin, g = to_input(xtr), torch.Generator().manual_seed(seed)
        for _ in range(EPOCHS):
            order = torch.randperm(len(xin), generator=g)
            for s in range(0, len(order), BATCH):
                idx = order[s:s + BATCH]
                loss = F.cross_entropy(net(xin[idx]), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            acc = int((net(to_input(xte)).argmax(1) == yte).sum()) / len(yte)
    log.info("digits FD classifier: held-out accuracy %.4f (%d train / %d held-out, %.1f s)",
             acc, len(xtr), len(xte), time.time() - t0)
    return net.requires_grad_(False), acc


def _features(net: DigitsCNN, batches: Iterator[torch.Tensor]) -> tuple[M.RunningStats, list]:
    rs, sizes = M.RunningStats(FEATURE_DIM, name="digits CNN features"), []
    with torch.no_grad():
        for b in batches:
            if b.dtype != torch.uint8 or b.ndim != 4 or b.shape[1] != 3:
                raise DataError(f"digits FD: expected uint8 images [N,3,H,W] or [N,H,W,3], got {b.dtype} "
                                f"{tuple(b.shape)}.")
            sizes.append(tuple(b.shape[-2:]))
            rs.update(net.features(to_input(b)).double())
    return rs, sorted(set(sizes))


@dataclass
class _Cached:
    net: DigitsCNN
    mu: np.ndarray
    sigma: np.ndarray
    meta: dict[str, Any]
    folder: Path


def load_or_build(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> _Cached:
    """The cached classifier and held-out statistics, trained and written on first use."""
    from safetensors.torch import load_file, save

    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"digits FD: seed must be a non-negative integer, got {seed!r}.")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = folder / "digits-fd" / f"{VERSION}-s{seed}"
    cls_file, ref_file, meta_file = folder / "classifier.safetensors", folder / "reference.safetensors", folder / "meta.json"
    if meta_file.is_file() and cls_file.is_file() and ref_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            if (meta.get("version") == VERSION and meta.get("classifier_sha256") == sha256_file(cls_file)
                    and meta.get("reference_sha256") == sha256_file(ref_file)):
                net = DigitsCNN()
                net.load_state_dict(load_file(str(cls_file)))
                ref = load_file(str(ref_file))
                return _Cached(net.eval().requires_grad_(False), ref["mu"].numpy(), ref["sigma"].numpy(), meta, folder)
            log.warning("digits FD cache %s does not match its meta.json; rebuilding it.", folder)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            log.warning("digits FD cache %s is unreadable (%s); rebuilding it.", folder, exc)
    folder.mkdir(parents=True, exist_ok=True)
    net, acc = train_classifier(seed)
    _, _, xte, _ = digits_split()
    rs, _ = _features(net, iter(xte.split(256)))
    mu, sigma = rs.finalize()
    atomic_write_bytes(cls_file, save({k: v.contiguous() for k, v in net.state_dict().items()}))
    atomic_write_bytes(ref_file, save({"mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma)}))
    meta = {"version": VERSION, "seed": seed, "resolution": RESOLUTION, "feature_dim": FEATURE_DIM,
            "classifier_acc": acc, "n_train": int(len(digits_split()[0])), "n_reference": int(rs.n),
            "split": f"held out: index % {HOLDOUT_EVERY} == 0", "epochs": EPOCHS, "batch": BATCH, "lr": LR,
            "torch": torch.__version__, "classifier_sha256": sha256_file(cls_file),
            "reference_sha256": sha256_file(ref_file)}
    atomic_write_json(meta_file, meta, indent=2)
    return _Cached(net, mu, sigma, meta, folder)


def _as_batches(samples: Any) -> tuple[Iterator[torch.Tensor], int, dict[str, Any]]:
    from .images import open_samples

    if isinstance(samples, (np.ndarray, torch.Tensor)):
        x = torch.as_tensor(samples)
        if x.ndim == 4 and x.shape[1] != 3 and x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise DataError(f"digits FD: samples must be uint8 [N,3,H,W] or [N,H,W,3] (0..255), got {x.dtype} "
                            f"{tuple(x.shape)}; quantise first, e.g. ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8).")
        return iter(x.split(256)), int(x.shape[0]), {"kind": "tensor", "shape": list(x.shape)}
    imgs = open_samples(samples)
    return imgs.iter_batches(256), len(imgs), imgs.describe()


def protocol_id(seed: int, n: int) -> str:
    """``digits-cnn-fd-v1-r32-s<seed>-n<n>``: everything that changes the number."""
    return f"{VERSION}-r{RESOLUTION}-s{seed}-n{n}"


def digits_fd(samples: Any, *, cache_dir: str | os.PathLike | None = None, seed: int = 0) -> dict[str, Any]:
    """Toy FD of generated digits against the held-out digits (see the module docstring). Not gFID.

    Args:
        samples: uint8 ``[N,3,H,W]`` or ``[N,H,W,3]`` (tensor or array), an ADM ``.npz``, a folder of images,
            or the output folder of ``spatialprobe sample``.
        cache_dir: where the classifier and reference statistics are cached
            (default ``$SPATIALPROBE_CACHE`` or ``~/.cache/spatialprobe``).
        seed: the classifier's training seed (part of the protocol id).

    Returns:
        ``fd``, ``protocol``, ``n_samples``, ``classifier_acc``, ``classifier_sha256``, plus ``sample_sizes``
        (the input sizes, resized to 32 px when different), ``n_reference`` and ``cache``.
    """
    batches, n, desc = _as_batches(samples)  # a missing or malformed input fails before any training
    if n < 2:
        raise DataError(f"digits FD: {n} sample(s); a covariance needs at least 2 (use a few hundred).")
    cached = load_or_build(cache_dir, seed)
    rs, sizes = _features(cached.net, batches)  # RunningStats warns when n <= 64 (singular covariance)
    mu, sigma = rs.finalize()
    fd = M.frechet_distance(mu, sigma, cached.mu, cached.sigma)
    return {"fd": fd, "protocol": protocol_id(seed, rs.n), "n_samples": rs.n,
            "classifier_acc": cached.meta["classifier_acc"], "classifier_sha256": cached.meta["classifier_sha256"],
            "n_reference": cached.meta["n_reference"], "sample_sizes": [list(s) for s in sizes],
            "samples": desc, "cache": str(cached.folder)}


@dataclass
class DigitsFdConfig:
    """Options of :func:`evaluate_digits` (``spatialprobe fd-digits``)."""

    seed: int = 0  #: the classifier's training seed (part of the protocol id)
    cache_dir: str | None = None  #: default $SPATIALPROBE_CACHE or ~/.cache/spatialprobe

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}.")


def evaluate_digits(samples: Any, *, out: str | os.PathLike | None = None, config: Any = None,
                    **overrides: Any) -> dict[str, Any]:
    """:func:`digits_fd` with a config; writes ``out/fd_digits.json`` and ``out/config.json`` when ``out`` is given.

    The record's ``metrics`` holds ``fd_digits`` (the column name used in results tables).
    """
    from ..config import resolve, write_config

    cfg = resolve(DigitsFdConfig, config, **overrides)
    t0 = time.time()
    res = digits_fd(samples, cache_dir=cfg.cache_dir, seed=cfg.seed)
    record = {"protocol": res["protocol"], "metrics": {COLUMN: res["fd"]}, **res, "seconds": round(time.time() - t0, 2)}
    if out is not None:
        o = Path(out).expanduser()
        o.mkdir(parents=True, exist_ok=True)
        (o / "fd_digits.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        write_config(o / CONFIG_JSON, dataclasses.asdict(cfg),
                     samples=str(samples) if isinstance(samples, (str, Path)) else "tensor")
        record["out"] = str(o)
    return record
