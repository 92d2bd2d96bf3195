"""Exception types. Each names one kind of mistake; messages name the input and the fix.

The CLI turns any :class:`SpatialProbeError` into one line on stderr and a non-zero exit,
without a traceback.
"""

from __future__ import annotations


class SpatialProbeError(Exception):
    """Base class for every error spatialprobe raises on purpose."""


class InputFileError(SpatialProbeError, FileNotFoundError):
    """An input file or folder is missing or unreadable."""


class UnknownNameError(SpatialProbeError, KeyError):
    """A name (reference table, encoder, preset, ...) is not known."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ColumnError(SpatialProbeError, ValueError):
    """A table lacks a column, or a column is not numeric."""


class DataError(SpatialProbeError, ValueError):
    """Values are unusable: too few rows, constant columns, NaNs, wrong shapes, wrong dtypes."""


class WeightsNotFoundError(SpatialProbeError, FileNotFoundError):
    """Pretrained weights are not on disk (nothing is downloaded at run time)."""


class WeightsMismatchError(SpatialProbeError, RuntimeError):
    """A checkpoint does not fit the model: missing/unexpected keys or wrong shapes."""


class StoreError(SpatialProbeError, RuntimeError):
    """A feature store is inconsistent, stale (fingerprint mismatch) or incomplete."""


class ConfigError(SpatialProbeError, ValueError):
    """A configuration value or file is invalid."""


class OutputError(SpatialProbeError, OSError):
    """An output path cannot be written: not a folder, read-only, or the disk is full."""


def did_you_mean(name: str, known: list[str] | tuple[str, ...], n: int = 3) -> str:
    """Return ' Did you mean: a, b?' for the closest known names, or ''."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


class ReportError(SpatialProbeError, RuntimeError):
    """A report notebook failed to execute or export."""
