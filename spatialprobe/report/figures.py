"""Moved to :mod:`spatialprobe.figures` (a base module every stage may use); this alias stays for one release."""

import warnings

from ..figures import (AXIS_LABELS, FAMILY_ORDER, HIGHLIGHT_COLOUR, PROPERTIES, STYLE,  # noqa: F401
                       UNKNOWN_COLOUR, correlation_grid, correlation_panel, family_colours, injection_curves,
                       paired_difference, prediction_panel, robustness_figure, similarity_figure, use_style)

warnings.warn("spatialprobe.report.figures has moved to spatialprobe.figures; import it from there "
              "(this alias will be removed in the next release).", DeprecationWarning, stacklevel=2)
