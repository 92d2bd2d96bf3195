"""The factory: build an encoder from an id, alias or variant id (``BASE@name=value``).

It sits on top of the encoder package: the catalog (:mod:`.spec`: yaml rows and rows added at run time),
the backend table (:mod:`.backends`), offline weights (:mod:`.weights`) and variants (:mod:`.variants`).
``register_backend``, ``add_encoder`` and ``specs`` are re-exported from the layers that own them.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import torch

from ..errors import ConfigError, UnknownNameError, did_you_mean
from . import backends
from . import weights as W
from .backends import register_backend
from .module import ZooEncoder
from .spec import EncoderSpec, add_encoder, lookup, specs
from .variants import VariantEncoder, parse_variant, variant_spec

__all__ = ["SPEC_OVERRIDES", "Builder", "add_encoder", "get", "get_variant", "list_encoders", "list_specs",
           "load_encoder", "register_backend", "spec", "specs"]

log = logging.getLogger(__name__)

#: spec fields that may be overridden at load time (everything else goes to the backend builder)
SPEC_OVERRIDES = ("norm", "mean", "std", "tap", "input_res", "interpolation", "antialias", "patch")

Builder = Callable[[EncoderSpec, "os.PathLike | None", dict[str, Any]], torch.nn.Module]


def spec(name: str) -> EncoderSpec:
    """The :class:`EncoderSpec` of an id or alias (unknown names fail with the closest matches).

    A variant id (``BASE@name=value``) gives the base's spec with ``id`` set to the canonical variant id.
    """
    if "@" in name:
        return variant_spec(name)
    return lookup(name)


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
    build, cls = backends.load(s.backend)
    if s.weight_free:
        if overrides:
            raise ConfigError(f"{s.id} takes no build arguments (got {sorted(overrides)}).")
        return cls(s).to(device)
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


def get_variant(name: str, *, weights_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                pretrained: bool = True, layers: int | list[int] | None = None, seed: int = 0,
                **overrides: Any) -> VariantEncoder:
    """Build the base with :func:`~spatialprobe.encoders.get` and wrap it with the variant's transforms."""
    v = parse_variant(name)
    layer = v.get("layer")
    if layer is not None and layers is not None:
        given = layers[0] if isinstance(layers, (list, tuple)) and len(layers) == 1 else layers
        if given != layer:
            raise ConfigError(f"encoder variant {v.id!r} taps layer {layer} but layers={layers} was also "
                              f"given; pass one of them.")
    base = get(v.base, weights_dir=weights_dir, device=device, pretrained=pretrained,
               layers=layer if layer is not None else layers, seed=seed, **overrides)
    if layer is not None and base.model is not None:
        blocks = getattr(base.model, "blocks", None)
        nb = (len(blocks) if blocks is not None else 0) or getattr(getattr(base.model, "config", None), "num_hidden_layers", 0)
        if nb and layer >= nb:
            raise ConfigError(f"encoder variant {v.id!r}: {v.base} has {nb} blocks, so layer must be in "
                              f"0..{nb - 1}, not {layer}.")
    return VariantEncoder(v, base).to(device)


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
            raise UnknownNameError(f"unknown family {family!r}.{did_you_mean(family, sorted({x.family for x in out}))}")
        out = [x for x in out if x.family.lower() == family.lower()]
    if paper27:
        out = [x for x in out if x.in_paper_27]
    return out


def list_encoders() -> list[str]:
    """Canonical ids of every encoder."""
    return [s.id for s in list_specs()]
