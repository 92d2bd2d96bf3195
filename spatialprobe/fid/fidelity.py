"""The JiT / PixelREPA evaluation protocol (torch-fidelity, as the JiT lineage scores its samples).

What differs from the ADM protocol (:mod:`spatialprobe.fid.evaluator`), as in JiT's ``engine_jit.py`` with
the LTH14 fork of torch-fidelity:

- the reference is a statistics file with its own keys, ``mu`` (2048) and ``sigma`` (2048×2048) of the
  pool features over the reference set (e.g. JiT's ``fid_stats/jit_in256_stats.npz``), not an ADM batch;
- FID = ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2·Σ Re √eig(Σ₁Σ₂) (torch-fidelity's ``fid_statistics_to_metric``;
  equal to the sqrtm form of the ADM evaluator up to rounding), μ and Σ of the samples in float64;
- IS over 10 splits of the samples **shuffled** with ``np.random.RandomState(2020)`` (torch-fidelity's
  ``isc_features_to_metric``: splits of ``i·N//10 .. (i+1)·N//10``), in float64 on the unbiased logits;
  the ADM protocol takes in-order splits of 5000;
- the samples are uint8 by **rounding** and generated under bf16 (sampling options; see ``sample --uint8
  round --precision bf16``).

Features come from the same Inception (torch-fidelity's ``inception-v3-compat`` port of the TF-2015 graph).
The result records its own protocol id, ``jit-fidelity-<ref tag>-<N>``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, InputFileError

log = logging.getLogger(__name__)

IS_SPLITS = 10        #: torch-fidelity default
IS_SEED = 2020        #: torch-fidelity's isc rng_seed
PROTOCOL_KIND = "jit-fidelity"
JIT_METRICS = ("fid", "is")  #: what the protocol scores (and all it can)


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of a torch-fidelity statistics file (``.npz`` with keys ``mu`` and ``sigma``)."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"Statistics file {str(p)!r} not found; pass the JiT stats (e.g. "
                             "fid_stats/jit_in256_stats.npz from the JiT or PixelREPA repository).")
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.keys())
            if "mu" not in keys or "sigma" not in keys:
                raise InputFileError(f"{str(p)!r} holds {', '.join(keys) or 'no arrays'}; a torch-fidelity "
                                     "statistics file has mu and sigma. (An ADM reference batch goes with the "
                                     "default protocol, --protocol adm.)")
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{str(p)!r} is not a readable .npz ({exc}).") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise InputFileError(f"{str(p)!r}: mu {mu.shape} and sigma {sigma.shape} are not a mean and its covariance.")
    return mu, sigma


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """torch-fidelity's FID: ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2·Σ Re √eig(Σ₁Σ₂), in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise DataError(f"Statistics of different sizes: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                        f"{sigma2.shape}.")
    diff = mu1 - mu2
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128)).real)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def inception_score(logits: Any, splits: int = IS_SPLITS, seed: int = IS_SEED) -> tuple[float, float]:
    """torch-fidelity's IS: rows shuffled by ``RandomState(seed).permutation``, ``splits`` chunks
    ``[i·N//s, (i+1)·N//s)``, exp(mean KL(p(y|x) ‖ p̄(y))) per chunk; returns (mean, std) over the chunks."""
    x = np.asarray(logits, np.float64)
    n = x.shape[0]
    if x.ndim != 2 or n < splits:
        raise DataError(f"IS needs at least {splits} samples for {splits} splits, got {n}.")
    x = x[np.random.RandomState(seed).permutation(n)]
    x = x - x.max(axis=1, keepdims=True)
    log_p = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        a, b = i * n // splits, (i + 1) * n // splits
        q = p[a:b].mean(axis=0, keepdims=True)
        kl = (p[a:b] * (log_p[a:b] - np.log(q))).sum(axis=1).mean()
        scores.append(float(np.exp(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def _tag(path: Path) -> str:
    m = re.search(r"in(\d+)", path.stem.lower())
    return f"in{m.group(1)}" if m else (re.sub(r"[^a-z0-9]+", "", path.stem.lower()) or "ref")


def protocol_id(stats: str | os.PathLike, n: int) -> str:
    """e.g. ``jit-fidelity-in256-50k`` for ``jit_in256_stats.npz`` and 50,000 samples."""
    from .evaluator import protocol_id as _pid

    return _pid(_tag(Path(stats)), n, PROTOCOL_KIND)


def evaluate_jit(samples: Any, stats: str | os.PathLike, *, out: str | os.PathLike | None = None,
                 inception_weights: str | None = None, num_samples: int | None = None,
                 batch_size: int | None = None, device: str | None = None, pretrained: bool = True, model: Any = None, metrics: list[str] | None = None,
                 progress: bool = True, seed: int = 0) -> dict[str, Any]:
    """Score samples with the JiT protocol: FID against a torch-fidelity statistics file and the shuffled-split
    IS. Writes ``fid.json`` and ``config.json`` to ``out`` when given; returns the record. ``batch_size`` and
    ``device`` default to :class:`~spatialprobe.fid.evaluator.FidConfig`'s."""
    from ..config import sha256_file, write_config
    from .evaluator import FidConfig, feature_pass, resolve_device
    from .images import open_samples
    from .inception import build_inception

    batch_size = FidConfig.batch_size if batch_size is None else batch_size
    device = FidConfig.device if device is None else device
    want = set(metrics or JIT_METRICS)
    bad = want - set(JIT_METRICS)
    if bad:
        raise DataError(f"The JiT protocol gives fid and is only (asked for {', '.join(sorted(bad))}); sFID, "
                        "precision and recall come with --protocol adm.")
    if out is not None:
        from ..checks import prepare_out_dir

        prepare_out_dir(out)
    mu_ref, sigma_ref = load_stats(stats) if "fid" in want else (None, None)
    imgs = open_samples(samples)
    n = len(imgs) if num_samples is None else min(num_samples, len(imgs))
    t0 = time.time()
    dev = resolve_device(device)
    model = model or build_inception(inception_weights, device=dev, pretrained=pretrained, seed=seed)
    logits: list[np.ndarray] = []

    def keep_logits(_start, _batch, feats):
        logits.append(feats["logits"].double().cpu().numpy())

    fp = feature_pass(imgs, model, batch_size=batch_size, limit=n, stats=False, spatial=False, keep_pool=True,
                      on_batch=keep_logits if "is" in want else None, progress=progress, desc="inception (jit)")
    res: dict[str, float] = {}
    if "fid" in want:
        feats = fp.pool_features().astype(np.float64)
        if feats.shape[0] < 2:
            raise DataError("FID needs at least 2 samples for a covariance (the protocol uses 50,000).")
        if mu_ref.shape[0] != feats.shape[1]:
            raise DataError(f"{str(stats)!r} has {mu_ref.shape[0]}-d statistics; the Inception pool features "
                            f"are {feats.shape[1]}-d.")
        res["fid"] = frechet_distance(feats.mean(axis=0), np.cov(feats, rowvar=False), mu_ref, sigma_ref)
    if "is" in want:
        res["is"], res["is_std"] = inception_score(np.concatenate(logits))
    record = {
        "protocol": protocol_id(stats, fp.n), "num_samples": fp.n, "metrics": res, "skipped": {},
        "reference": {"path": str(stats), "sha256": sha256_file(stats) if "fid" in want else None,
                      "kind": "torch-fidelity statistics (mu, sigma)"},
        "inception": {"weights_id": model.weights_id},
        "settings": {"is_splits": IS_SPLITS, "is_seed": IS_SEED, "is_shuffle": True,
                     "fid": "torch-fidelity eigvals form", "batch_size": batch_size},
        "seconds": round(time.time() - t0, 2),
    }
    if out is not None:
        o = Path(out)
        (o / "fid.json").write_text(json.dumps(record, indent=2) + "\n")
        write_config(o / "config.json", {"samples": str(samples), "stats": str(stats), "protocol": "jit",
                                         "num_samples": num_samples, "batch_size": batch_size, "device": device,
                                         "metrics": sorted(want)})
    return record
