"""Moved: the token transforms ``mix_cls`` / ``mix_mean`` live in :mod:`spatialprobe.tokens`.

This shim re-exports them for one release.
"""

import warnings

from ..tokens import FORMS, mix_cls, mix_mean  # noqa: F401

warnings.warn("spatialprobe.encoders.transforms moved to spatialprobe.tokens; import mix_cls and mix_mean from there.",
              DeprecationWarning, stacklevel=2)
