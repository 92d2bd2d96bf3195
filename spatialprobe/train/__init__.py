"""Short REPA / iREPA training runs: SiT (latent) and JiT (pixel) backbones, shared alignment pieces,
explicit presets, one training loop and the samplers."""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "TrainConfig": "spatialprobe.train.config",
    "SampleConfig": "spatialprobe.train.config",
    "train": "spatialprobe.train.loop",
    "sample": "spatialprobe.train.sample",
    "presets": "spatialprobe.train.presets",
    "repa": "spatialprobe.train.repa",
    "models": "spatialprobe.train.models",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
