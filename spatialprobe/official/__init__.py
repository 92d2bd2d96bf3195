"""The official iREPA data collection (``spatial-metrics-data`` of the iREPA collections), read by id.

Its folder layout is described in :mod:`~spatialprobe.official.collection`.

An analysis above the stages, in three modules: :mod:`~spatialprobe.official.collection` (the reader:
encoders, features, masks, LP accuracy, gFID), :mod:`~spatialprobe.official.metrics` (the spatial metrics
of ``spatialprobe metrics --features official:DIR``) and :mod:`~spatialprobe.official.correlate`
(:func:`correlate_official`, ``spatialprobe correlate --official``, and the official script's positional
join). The image layout alone (``--images official:DIR``) is :mod:`spatialprobe.data.official`.
"""

from __future__ import annotations

from ..data.official import IMAGES_PROTOCOL, PREFIX, CollectionLayout, image_source, is_official, parse_spec
from .collection import AUTO_FID_NAME, CORRECTED_XL, MODELS, PROPERTIES, Collection, fid_file_name, official_fid_files
from .correlate import OfficialConfig, OfficialResult, collection_table, correlate_official
from .metrics import compute_official_metrics, encoder_metrics, official_metrics

__all__ = ["AUTO_FID_NAME", "CORRECTED_XL", "Collection", "CollectionLayout", "IMAGES_PROTOCOL", "MODELS",
           "OfficialConfig", "OfficialResult", "PREFIX", "PROPERTIES", "collection_table", "compute_official_metrics",
           "correlate_official", "encoder_metrics", "fid_file_name", "image_source", "is_official",
           "official_fid_files", "official_metrics", "parse_spec"]
