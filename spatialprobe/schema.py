"""One vocabulary for the writers and the readers of the study's outputs: column names and file names.

A stage that writes a file and the report, predict, correlate or study code that reads it name it
through these constants, so a rename happens in one place.
"""

from __future__ import annotations

# ----------------------------------------------------------------------------- columns

#: the spatial-structure metrics of patch tokens (:mod:`spatialprobe.metrics.spatial`)
SPATIAL_METRICS = ("lds", "cds", "srss", "rmsc")
#: linear-probe accuracy (percent in results tables, a fraction in the injection table)
LP_ACC = "lp_acc"
#: the encoder properties correlated with generation quality (the paper's five panels)
PROPERTIES = (LP_ACC, *SPATIAL_METRICS)

#: generation quality: ADM-protocol FID of the trained generator, and the digits-protocol Fréchet distance
GFID = "gfid"
FD_DIGITS = "fd_digits"
#: the other numbers the FID evaluator reports next to the FID
EXTRA_QUALITY = ("sfid", "is", "precision", "recall")
#: what ``spatialprobe fid`` computes (``fid`` becomes the ``gfid`` column of a results table)
FID_METRICS = ("fid", *EXTRA_QUALITY)
#: every quality column a results table may hold, the headline ones first
QUALITY = (GFID, FD_DIGITS, *EXTRA_QUALITY)

#: alignment methods of a training run (``none``: the no-alignment baseline) and how reports name them
METHOD_LABELS = {"repa": "REPA", "irepa": "iREPA", "pixelrepa": "PixelREPA", "none": "no alignment"}
#: methods compared with REPA: with both trained, a study adds ``<q>_repa_minus_<method>`` columns
COMPARED_WITH_REPA = ("irepa", "pixelrepa")

#: how a study runs its nodes (``launcher:`` in study.yaml)
LAUNCHERS = ("local", "submitit")

# ----------------------------------------------------------------------------- file names

CONFIG_JSON = "config.json"  #: every stage folder: the resolved config and provenance
MANIFEST_JSON = "manifest.json"  #: a feature store
RESULTS_CSV = "results.csv"  #: a study: one row per encoder (and training recipe)
RESULTS_PARQUET = "results.parquet"
CORRELATIONS_CSV = "correlations.csv"  #: ``correlate``
PREDICTIONS_CSV = "predictions.csv"  #: ``predict``
INJECTION_CSV = "injection.csv"  #: ``inject``: one row per α
SUMMARY_CSV = "summary.csv"  #: ``metrics``: per encoder and radius setting
PER_IMAGE_CSV = "per_image.csv"  #: ``metrics``: per image
PER_IMAGE_PARQUET = "per_image.parquet"
RESULT_JSON = "result.json"  #: ``probe`` and ``inject``
GRID_CSV = "grid.csv"  #: ``probe``: the lr × wd grid
FID_JSON = "fid.json"  #: ``fid``
SAMPLES_NPZ = "samples.npz"  #: ``sample``
SIMILARITY_MAPS_NPZ = "similarity_maps.npz"  #: ``viz``
OFFICIAL_TABLE_CSV = "official_table.csv"  #: the official collection's encoder table
STUDY_YAML = "study.yaml"  #: a study folder: the resolved spec
PLAN_JSON = "plan.json"  #: a study folder: the nodes and their states
DONE_JSON = "done.json"  #: a study node: its result record (written last)
WIDE_CSV = "wide.csv"  #: a study's table node: one column per property and quality
