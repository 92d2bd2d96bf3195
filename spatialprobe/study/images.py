"""Moved to :mod:`spatialprobe.data.cache` (the decoded image cache is data, below the stages); this alias
stays for one release."""

import warnings

from ..data.cache import DecodedCache  # noqa: F401

warnings.warn("spatialprobe.study.images has moved to spatialprobe.data.cache; import it from there "
              "(this alias will be removed in the next release).", DeprecationWarning, stacklevel=2)
