"""Where a stage runs: the device, the torchrun process layout, and data-loader workers.

One rule each, shared by extract, metrics, probe, inject, train, sample, fid, viz and the study nodes:

- :func:`resolve_device`: ``auto`` is ``cuda`` when a CUDA device is visible, else ``cpu``; asking for
  ``cuda`` (or ``cuda:N``) on a machine without one is a :class:`~spatialprobe.errors.ConfigError` that
  says to use ``--device cpu``; under ``torchrun`` (``local_rank`` given) a bare ``cuda`` is this
  process's own GPU, ``cuda:<LOCAL_RANK>``.
- :func:`world_size`, :func:`rank`, :func:`local_rank`, :func:`is_rank0`: what ``torchrun`` sets in the
  environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``; a plain process is rank 0 of 1).
- :func:`decode_workers`: the number of image-decoding DataLoader workers.

torch is imported only when a device is resolved.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def world_size() -> int:
    """``$WORLD_SIZE`` (set by torchrun), else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """``$RANK`` (set by torchrun), else 0."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """``$LOCAL_RANK`` (set by torchrun: the GPU index on this machine), else 0."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_rank0() -> bool:
    """True in a plain process and in torchrun's rank 0 (the one that writes shared files and logs)."""
    return rank() == 0


def resolve_device(device: Any = "auto", local_rank: int | None = None) -> "torch.device":
    """The torch device for a ``--device`` value (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``, a
    ``torch.device``).

    ``auto`` picks ``cuda`` when a CUDA device is visible, else ``cpu``. With ``local_rank`` (under
    torchrun), ``auto`` and a bare ``cuda`` become ``cuda:<local_rank>``. A CUDA device asked for on a
    machine without one raises :class:`ConfigError`.
    """
    import torch

    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available on this machine; use --device cpu.")
    if name == "cuda" and local_rank is not None:
        name = f"cuda:{int(local_rank)}"
    return torch.device(name)


def decode_workers(n: int) -> int:
    """DataLoader workers for ``num_workers = n`` (-1 = min(8, CPU count))."""
    return n if n >= 0 else min(8, os.cpu_count() or 1)
