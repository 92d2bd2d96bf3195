"""Model registry: ``sit-b/2``, ``sit-l/2``, ``sit-xl/2``, ``sit-tiny`` (latent) and ``jit-b/16``,
``jit-l/16``, ``jit-h/16``, ``jit-b/32``, ``jit-l/32``, ``jit-h/32``, ``jit-tiny`` (pixel).

The alignment depth defaults by model size: 4 for the B models (REPA's B setting and the iREPA README's
SiT-B/2 and JiT-B/16 commands), the backbone default 8 for L, XL and H (REPA's XL setting, the study's
``enc8`` runs), the tiny models' own value otherwise."""

from __future__ import annotations

import torch.nn as nn

from ...errors import UnknownNameError, did_you_mean


#: alignment depth by model size where it differs from the backbone default (8)
SIZE_ENCODER_DEPTH: dict[str, int] = {"sit-b/2": 4, "jit-b/16": 4, "jit-b/32": 4}


def _variants() -> dict[str, tuple[str, dict]]:
    from . import jit, sit

    out = {k: ("sit", v) for k, v in sit.VARIANTS.items()}
    out.update({k: ("jit", v) for k, v in jit.VARIANTS.items()})
    for k, depth in SIZE_ENCODER_DEPTH.items():
        fam, shape = out[k]
        out[k] = (fam, {**shape, "encoder_depth": shape.get("encoder_depth", depth)})
    return out


def canonical(name: str) -> str:
    """Normalise a model name: case-insensitive, ``SiT-XL-2`` and ``sit_xl/2`` mean ``sit-xl/2``."""
    key = name.strip().lower()
    known = _variants()
    squash = lambda s: "".join(ch for ch in s if ch.isalnum())  # noqa: E731
    for k in known:
        if squash(k) == squash(key):
            return k
    raise UnknownNameError(f"Unknown model {name!r}; use one of {', '.join(known)}.{did_you_mean(key, list(known))}")


def names() -> list[str]:
    return list(_variants())


def family(name: str) -> str:
    """``sit`` or ``jit``."""
    return _variants()[canonical(name)][0]


def variant(name: str) -> dict:
    """The shape dict of a named variant."""
    return dict(_variants()[canonical(name)][1])


def build(name: str, **overrides) -> nn.Module:
    """Build a named model; ``overrides`` are config fields (``num_classes``, ``encoder_depth``, ``z_dims``,
    ``projector``, ``kernel_size``, ``input_size``, ...)."""
    from . import jit, sit

    key = canonical(name)
    mod = sit if family(key) == "sit" else jit
    if key in SIZE_ENCODER_DEPTH:
        overrides = {"encoder_depth": SIZE_ENCODER_DEPTH[key], **overrides}
    return mod.build(key, **overrides)


def module_for(family_name: str):
    """The model module (``training_loss``, ``velocity``) of a family."""
    from . import jit, sit

    return {"sit": sit, "jit": jit}[family_name]
