"""Spatial-structure metrics (LDS, CDS, SRSS, RMSC), spatial normalisation and FG/BG masks.

``spatial_metrics(tokens, grid, masks)`` is the core (one shared Gram pass); ``compute_metrics`` runs it
over feature stores or token files with id-joined masks and writes per-image and summary tables.
"""

from .masks import crop_mask, join_ids, load_masks, official_filter, patch_mask, read_mask
from .run import MetricsConfig, MetricsResult, compute_metrics, parse_sweeps
from .spatial import (METRICS, OFFICIAL_RADII, aggregate, paper_radii, spatial_metrics, spatial_metrics_multi,
                      spatial_norm)

__all__ = ["METRICS", "OFFICIAL_RADII", "MetricsConfig", "MetricsResult", "aggregate", "compute_metrics",
           "crop_mask", "join_ids", "load_masks", "official_filter", "paper_radii", "parse_sweeps", "patch_mask", "read_mask",
           "spatial_metrics", "spatial_metrics_multi", "spatial_norm"]
