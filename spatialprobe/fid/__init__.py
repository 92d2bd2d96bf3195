"""gFID evaluation with the ADM protocol: FID, sFID, IS, precision/recall, offline Inception weights.

Features come from torch-fidelity's port of the TF-2015 Inception v3 (``inception-v3-compat``): pool_3
(2048-d) for FID and precision/recall, ``Mixed_6d.branch1x1`` first 7 channels channels-last (2023-d) for
sFID, and the unbiased logits for IS. Formulas follow the ADM evaluator (guided-diffusion ``evaluator.py``).

Public API: :func:`evaluate`, :func:`build_reference`, :func:`load_reference`, :class:`FidConfig`,
:func:`build_inception`, :func:`find_inception_weights`, :func:`frechet_distance`, :func:`inception_score`,
:func:`precision_recall`, :func:`feature_statistics`; :func:`digits_fd` is the toy FD protocol of the digits
mini study (``fd_digits``, not gFID). Heavy modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .metrics import (IS_SPLIT_SIZE, PR_K, RunningStats, StreamingInceptionScore, feature_statistics,
                      frechet_distance, inception_score, precision_recall)

_LAZY = {
    "evaluate": "evaluator", "build_reference": "evaluator", "load_reference": "evaluator", "FidConfig": "evaluator",
    "Reference": "evaluator", "feature_pass": "evaluator", "protocol_id": "evaluator",
    "build_inception": "inception", "find_inception_weights": "inception", "InceptionFeatures": "inception",
    "INCEPTION_WEIGHTS_FILE": "inception", "INCEPTION_WEIGHTS_URL": "inception", "check_images": "inception",
    "open_samples": "images", "open_reference_images": "images",
    "digits_fd": "digits", "evaluate_digits": "digits", "DigitsFdConfig": "digits",
}

__all__ = ["IS_SPLIT_SIZE", "PR_K", "RunningStats", "StreamingInceptionScore", "feature_statistics",
           "frechet_distance", "inception_score", "precision_recall", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
