"""Short REPA / iREPA training runs: SiT (latent) and JiT (pixel) backbones, shared alignment pieces,
explicit presets, one training loop and the samplers."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TrainConfig": "spatialprobe.train.config",
    "SampleConfig": "spatialprobe.train.config",
    "train": "spatialprobe.train.loop",
    "sample": "spatialprobe.train.sample",
    "presets": "spatialprobe.train.presets",
    "repa": "spatialprobe.train.repa",
    "models": "spatialprobe.train.models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod = importlib.import_module(_LAZY[name])
        return mod if mod.__name__.endswith("." + name) else getattr(mod, name)
    raise AttributeError(f"module 'spatialprobe.train' has no attribute {name!r}")
