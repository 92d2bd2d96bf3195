"""The backend table: every backend an ``encoders.yaml`` row may name, and the module that builds it.

This is the one place the backend set is written. The catalog (:mod:`.spec`) validates each row's
``backend`` against it, :mod:`.weights` reads what kind of checkpoint a backend takes, and the factory
(:mod:`.registry`) asks :func:`load` for the builder and the encoder class. Backends added at run time
with :func:`register_backend` live here too.

A built-in backend is named by its module (``timm_backend``, ``hf_backend``, ``classical``) and loaded on
first use, so importing the package does not import timm or transformers. Because the table names its
modules instead of importing them, it sits below them: the backend modules import the catalog, and the
catalog imports this table.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UnknownNameError

Builder = Callable[..., Any]  #: ``builder(spec, path=..., overrides=...) -> torch.nn.Module``


@dataclass(frozen=True)
class Backend:
    """One built-in backend: where its builder lives and what it loads."""

    module: str  #: module under ``spatialprobe.encoders``
    encoder: str  #: the ``ZooEncoder`` subclass in that module
    builder: str | None = "build_model"  #: ``builder(spec, *, path, overrides, meta=False)``; None: weight-free
    checkpoint: str = "file"  #: "file" | "folder" (a transformers folder with config.json) | "none"
    timm: bool = False  #: ``spec.model`` is a timm model name (timm's own hub repo is searched for weights)


#: backend name -> :class:`Backend`, in the order shown in error messages
TABLE: dict[str, Backend] = {
    "timm": Backend("timm_backend", "TimmEncoder", timm=True),
    "timm_pe": Backend("timm_backend", "TimmEncoder", timm=True),
    "timm_radio": Backend("timm_backend", "TimmEncoder", timm=True),
    "timm_local": Backend("timm_backend", "TimmEncoder", timm=True),
    "hf_dinov2": Backend("hf_backend", "HFDinov2Encoder", checkpoint="folder"),
    "classical": Backend("classical", "ClassicalEncoder", builder=None, checkpoint="none"),
}
#: the built-in backend names (what an encoders.yaml row may use)
BACKENDS: tuple[str, ...] = tuple(TABLE)

_REGISTERED: dict[str, tuple[Builder, type]] = {}


def register_backend(name: str, builder: Builder, encoder_cls: type) -> None:
    """Add a backend: ``builder(spec, path_or_None, overrides) -> nn.Module`` wrapped by ``encoder_cls``."""
    _REGISTERED[name] = (builder, encoder_cls)


def is_registered(name: str) -> bool:
    """True if ``name`` was added with :func:`register_backend`."""
    return name in _REGISTERED


def known() -> list[str]:
    """Every backend name: the built-in ones, then those registered at run time."""
    return list(BACKENDS) + list(_REGISTERED)


def weight_free(name: str) -> bool:
    """True for a backend that needs no checkpoint (classical features)."""
    return name in TABLE and TABLE[name].checkpoint == "none"


def folder_checkpoint(name: str) -> bool:
    """True if the backend loads a transformers folder (``config.json`` + weights) instead of a file."""
    return name in TABLE and TABLE[name].checkpoint == "folder"


def timm_model(name: str) -> bool:
    """True if the backend's ``spec.model`` is a timm model name."""
    return name in TABLE and TABLE[name].timm


def load(name: str) -> tuple[Builder | None, type]:
    """``(builder, encoder class)`` of a backend (builder None for a weight-free one), importing its module."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in TABLE:
        raise UnknownNameError(f"no backend {name!r}; known: {known()}.")
    b = TABLE[name]
    mod: Any = importlib.import_module(f"{__package__}.{b.module}")  # heavy (timm / transformers): on first use
    return (getattr(mod, b.builder) if b.builder else None), getattr(mod, b.encoder)
