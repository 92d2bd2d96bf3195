"""spatialprobe: which vision encoder makes the best REPA/iREPA teacher, and which cheap property of
its features predicts that.

Importing the package is cheap: heavy libraries (torch, transformers, open_clip) load only when a
function that needs them is called.
"""

from __future__ import annotations

from ._lazy import lazy_getattr

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "correlate": "spatialprobe.correlation",
    "CorrelateConfig": "spatialprobe.correlation",
    "reference": "spatialprobe.reference",
    "stats": "spatialprobe.stats",
    "encoders": "spatialprobe.encoders",
    "list_encoders": "spatialprobe.encoders",
    "load_encoder": "spatialprobe.encoders",
    "metrics": "spatialprobe.metrics",
    "spatial_metrics": "spatialprobe.metrics",
    "spatial_norm": "spatialprobe.metrics",
    "store": "spatialprobe.store",
    "probe": "spatialprobe.probe",
    "ProbeConfig": "spatialprobe.probe",
    "inject": "spatialprobe.inject",
    "InjectConfig": "spatialprobe.inject",
    "predict": "spatialprobe.predict",
    "PredictConfig": "spatialprobe.predict",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
