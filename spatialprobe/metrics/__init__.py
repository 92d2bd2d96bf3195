"""Spatial-structure metrics (LDS, CDS, SRSS, RMSC), spatial normalisation and FG/BG masks."""

from .spatial import (METRICS, OFFICIAL_RADII, aggregate, paper_radii, spatial_metrics, spatial_metrics_multi,
                      spatial_norm)

__all__ = ["METRICS", "OFFICIAL_RADII", "aggregate", "paper_radii", "spatial_metrics", "spatial_metrics_multi",
           "spatial_norm"]
