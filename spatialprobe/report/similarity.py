"""Moved to :mod:`spatialprobe.viz` (the ``spatialprobe viz`` stage); this alias stays for one release."""

import warnings

from ..viz import (CONFIG_JSON, DEFAULT_GAMMA, FIGURE_STEM, MAPS_FILE, OFFICIAL_MIN_SEP,  # noqa: F401
                   OFFICIAL_N_REFS, OFFICIAL_SEED, SIMILARITY_MAPS_NPZ, SimilarityMaps, VizConfig, cosine_maps,
                   load_image, load_maps, maps_for_tokens, parse_tokens, reference_points, save_maps, to_grid, viz)

warnings.warn("spatialprobe.report.similarity has moved to spatialprobe.viz; import it from there "
              "(this alias will be removed in the next release).", DeprecationWarning, stacklevel=2)
