"""Build encoders by name: aliases, did-you-mean, backends registered by name, offline weights."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import torch

from ..errors import ConfigError, UnknownNameError
from .module import ZooEncoder
from .spec import BACKENDS, EncoderSpec, all_specs, parse_row, resolve
from . import weights as W

log = logging.getLogger(__name__)

#: spec fields that may be overridden at load time (everything else goes to the backend builder)
SPEC_OVERRIDES = ("norm", "mean", "std", "tap", "input_res", "interpolation", "antialias", "patch")

Builder = Callable[[EncoderSpec, "os.PathLike | None", dict[str, Any]], torch.nn.Module]
_EXTRA_BACKENDS: dict[str, tuple[Builder, type[ZooEncoder]]] = {}
_EXTRA_SPECS: dict[str, EncoderSpec] = {}


def register_backend(name: str, builder: Builder, encoder_cls: type[ZooEncoder]) -> None:
    """Add a backend: ``builder(spec, path_or_None, overrides) -> nn.Module`` wrapped by ``encoder_cls``."""
    _EXTRA_BACKENDS[name] = (builder, encoder_cls)


def add_encoder(eid: str, **row: Any) -> EncoderSpec:
    """Add a zoo member at run time from the same fields as an encoders.yaml row."""
    if eid in all_specs():
        raise ConfigError(f"encoder {eid!r} already exists in encoders.yaml; pick another id.")
    spec = parse_row(eid, row) if row.get("backend") in BACKENDS else _parse_extra(eid, row)
    _EXTRA_SPECS[eid] = spec
    return spec


def _parse_extra(eid: str, row: dict[str, Any]) -> EncoderSpec:
    if row.get("backend") not in _EXTRA_BACKENDS:
        raise ConfigError(f"{eid}: backend {row.get('backend')!r} is not registered; "
                          f"call register_backend first or use one of {BACKENDS}.")
    tmp = parse_row(eid, {**row, "backend": "timm"})
    return dataclasses.replace(tmp, backend=row["backend"])


def specs() -> dict[str, EncoderSpec]:
    """All specs: encoders.yaml rows plus run-time additions."""
    return {**all_specs(), **_EXTRA_SPECS}


def spec(name: str) -> EncoderSpec:
    """The :class:`EncoderSpec` of an id or alias (unknown names fail with the closest matches).

    A variant id (``BASE@name=value``) gives the base's spec with ``id`` set to the canonical variant id.
    """
    if "@" in name:
        from .variants import variant_spec

        return variant_spec(name)
    if name in _EXTRA_SPECS:
        return _EXTRA_SPECS[name]
    return all_specs()[resolve(name)]


def _classes(backend: str):
    if backend in _EXTRA_BACKENDS:
        return _EXTRA_BACKENDS[backend]
    if backend.startswith("timm"):
        from . import timm_backend as tb

        return tb.build_model, tb.TimmEncoder
    if backend == "hf_dinov2":
        from . import hf_backend as hb

        return hb.build_model, hb.HFDinov2Encoder
    raise UnknownNameError(f"no backend {backend!r}; known: {list(BACKENDS) + list(_EXTRA_BACKENDS)}.")


def get(name: str, *, weights_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
        pretrained: bool = True, layers: int | list[int] | None = None, seed: int = 0,
        **overrides: Any) -> ZooEncoder:
    """Build a zoo encoder ready for ``encoder(uint8 images) -> EncoderOutput``.

    Args:
        name: id or alias (``sam2`` -> ``sam2-vit-s``), or a variant ``BASE@name=value``; see
            ``spatialprobe ls encoders``.
        weights_dir: folder with checkpoints (else ``$SPATIALPROBE_WEIGHTS``, HF and torch caches).
            Missing weights raise :class:`~spatialprobe.errors.WeightsNotFoundError`; nothing is downloaded.
        device: ``"cpu"``, ``"cuda"``, ... or ``"meta"`` (architecture only, no memory, no weights).
        pretrained: False builds the exact architecture with random init (seeded by ``seed``).
        layers: a block index (negative counts from the end) to tap instead of the spec's final tap.
        overrides: spec fields (``norm``, ``tap``, ``input_res``, ``interpolation``, ...) or backend build
            arguments (e.g. ``depth=2`` for a depth-reduced build with the same width).

    Returns:
        An eval-mode, no-grad encoder with ``name``, ``embed_dim``, ``grid``, ``weights_id``, ``spec``.
        A variant id (``dinov2-vit-b@mix_cls=0.1``, see :mod:`.variants`) gives the base encoder wrapped
        with the variant's transforms; its ``name`` is the canonical variant id.
    """
    if "@" in name:
        from .variants import get_variant

        return get_variant(name, weights_dir=weights_dir, device=device, pretrained=pretrained, layers=layers,
                           seed=seed, **overrides)
    s = spec(name)
    so = {k: overrides.pop(k) for k in list(overrides) if k in SPEC_OVERRIDES}
    if so:
        s = s.replace(**so)
        if "tap" in so and so["tap"] not in ("final_norm", "no_norm", "nhwc"):
            raise ConfigError(f"tap must be final_norm, no_norm or nhwc, not {so['tap']!r}.")
    if isinstance(layers, (list, tuple)):
        if len(layers) != 1:
            raise ConfigError(f"layers={layers}: one layer per encoder; build one encoder per layer.")
        layers = layers[0]
    device = torch.device(device)
    if s.weight_free:
        from .classical import ClassicalEncoder

        if overrides:
            raise ConfigError(f"{s.id} takes no build arguments (got {sorted(overrides)}).")
        return ClassicalEncoder(s).to(device)
    build, cls = _classes(s.backend)
    meta = device.type == "meta"
    if meta or not pretrained:
        path, wid = None, ("meta" if meta else f"random-init:{seed}")
    else:
        path = W.require(s, weights_dir)
        digest = W.sha256(path)
        W.check_sha(s, path, digest)
        wid = digest
    if meta:
        with torch.device("meta"):
            model = build(s, path=None, overrides=overrides)
    elif path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build(s, path=None, overrides=overrides)
    else:
        log.info("loading %s from %s", s.id, path)
        model = build(s, path=path, overrides=overrides)
    if layers is not None and layers < 0:
        from .timm_backend import n_blocks

        nb = n_blocks(model) or getattr(getattr(model, "config", None), "num_hidden_layers", 0)
        layers = nb + layers
    enc = cls(s, model, weights_id=wid, layer=layers)
    enc.weights_path = path
    return enc.to(device)


def load_encoder(name: str, *, pretrained: bool = True, weights_dir: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", layers: int | list[int] | None = None,
                 **overrides: Any) -> ZooEncoder:
    """Alias of :func:`get` with the package-level signature."""
    return get(name, pretrained=pretrained, weights_dir=weights_dir, device=device, layers=layers, **overrides)


def list_specs(family: str | None = None, paper27: bool = False) -> list[EncoderSpec]:
    """Specs in yaml order, optionally one family (case-insensitive) or only the paper's 27."""
    out = list(specs().values())
    if family:
        fams = {x.family.lower() for x in out}
        if family.lower() not in fams:
            from ..errors import did_you_mean

            raise UnknownNameError(f"unknown family {family!r}.{did_you_mean(family, sorted({x.family for x in out}))}")
        out = [x for x in out if x.family.lower() == family.lower()]
    if paper27:
        out = [x for x in out if x.in_paper_27]
    return out


def list_encoders() -> list[str]:
    """Canonical ids of every encoder."""
    return [s.id for s in list_specs()]
