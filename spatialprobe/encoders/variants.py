"""Encoder variants: a zoo id plus transforms, ``BASE@name=value[@name=value...]``.

A variant is an encoder in its own right (its own id, fingerprint, feature store and table row) whose
tokens are the base encoder's tokens with transforms applied, e.g.

- ``dinov2-vit-b@mix_cls=0.1``: the official ``dinov2mixed`` teacher (α·CLS + (1−α)·patch, α = 0.1 there),
- ``hog@mix_mean=0.25``: the mean patch token mixed in, for encoders without a CLS token,
- ``dinov2-vit-b@layer=8``: the tokens after block 8 (0-based, as ``get(..., layers=8)``),
- ``sift@spnorm=0.8``: iREPA's spatial normalisation ``(x − γ·mean_T x) / (std_T x + 1e-6)``.

Transforms act on the encoder's final (fp32) patch tokens, inside the encoder, so every consumer sees
them — feature stores, metrics, probes and training targets. As in the official ``DINOv2MixedEncoder``
the mixing comes before the training loop's spatial normalisation (iREPA) and before the projection loss.
The prefix (CLS) tokens are passed through unchanged. Whatever order the transforms are written in, they
are applied, and spelled in the canonical id, in the order of :data:`TRANSFORMS`.
"""

from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from .base import EncoderOutput
from .spec import EncoderSpec, lookup

#: transform name -> (value type, what it is); also the canonical order
TRANSFORMS: dict[str, tuple[type, str]] = {
    "layer": (int, "block index to tap, 0-based (an integer >= 0)"),
    "mix_cls": (float, "CLS mixing weight α in [0, 1]: α·cls + (1−α)·patch"),
    "mix_mean": (float, "mean-token mixing weight α in [0, 1]: α·mean + (1−α)·patch"),
    "spnorm": (float, "spatial-normalisation γ in [0, 1]: (x − γ·mean) / (std + 1e-6)"),
}
SEP = "@"


def _valid() -> str:
    return "; ".join(f"{k} ({v[1]})" for k, v in TRANSFORMS.items())


def _fmt(v: float | int) -> str:
    """Shortest round-tripping spelling: 0.1 -> '0.1', 1.0 -> '1', 8 -> '8'."""
    if isinstance(v, int):
        return str(v)
    s = repr(float(v))
    return s[:-2] if s.endswith(".0") else s


@dataclass(frozen=True)
class Variant:
    """A parsed variant id: the canonical base id and its transforms in canonical order."""

    base: str
    transforms: tuple[tuple[str, float | int], ...] = ()

    @property
    def id(self) -> str:
        """The canonical id string, e.g. ``dinov2-vit-b@mix_cls=0.1`` (the base alone without transforms)."""
        return SEP.join([self.base] + [f"{k}={_fmt(v)}" for k, v in self.transforms])

    def get(self, name: str, default: Any = None) -> Any:
        """The value of transform ``name`` or ``default``."""
        return dict(self.transforms).get(name, default)

    def __str__(self) -> str:
        return self.id


def is_variant(name: Any) -> bool:
    """True if ``name`` is an encoder id carrying transforms (``BASE@name=value...``); nothing is validated."""
    return isinstance(name, str) and SEP in name


def _value(text: str, key: str, raw: str) -> float | int:
    kind = TRANSFORMS[key][0]
    try:
        if kind is int:
            v: float | int = int(raw)
        else:
            v = float(raw)
    except ValueError:
        raise ConfigError(f"encoder variant {text!r}: {key}={raw!r} is not a number; {key} takes a "
                          f"{TRANSFORMS[key][1]}.") from None
    if kind is int and v < 0:
        raise ConfigError(f"encoder variant {text!r}: layer={v} must be >= 0 (a 0-based block index).")
    if kind is float and (not math.isfinite(v) or not 0.0 <= v <= 1.0):
        raise ConfigError(f"encoder variant {text!r}: {key}={raw} must be in [0, 1] "
                          f"({TRANSFORMS[key][1]}).")
    return v


def parse_variant(name: str) -> Variant:
    """Parse ``BASE@name=value[@name=value...]`` into a :class:`Variant` (base resolved from aliases).

    Plain ids parse to a variant without transforms. Unknown transforms, malformed or out-of-range values,
    repeated transforms and transforms the base cannot take (``mix_cls`` without a CLS token, ``layer`` on a
    weight-free encoder) raise :class:`~spatialprobe.errors.ConfigError` naming the valid ones; an unknown
    base raises :class:`~spatialprobe.errors.UnknownNameError` with the closest matches.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"encoder id must be a non-empty string like 'dinov2-vit-b@mix_cls=0.1', got {name!r}.")
    text = name.strip()
    base, *parts = [p.strip() for p in text.split(SEP)]
    if not base:
        raise ConfigError(f"encoder variant {text!r} has no base encoder; write e.g. 'dinov2-vit-b@mix_cls=0.1'.")
    seen: dict[str, float | int] = {}
    for p in parts:
        key, eq, raw = p.partition("=")
        key, raw = key.strip(), raw.strip()
        if key not in TRANSFORMS:
            raise ConfigError(f"encoder variant {text!r}: unknown transform {key!r}. Valid transforms: {_valid()}. "
                              f"Write them as BASE@name=value, e.g. dinov2-vit-b@mix_cls=0.1.")
        if not eq or not raw:
            raise ConfigError(f"encoder variant {text!r}: transform {key!r} needs a value ({key}=VALUE, "
                              f"{TRANSFORMS[key][1]}).")
        if key in seen:
            raise ConfigError(f"encoder variant {text!r}: transform {key!r} is given twice; give it once.")
        seen[key] = _value(text, key, raw)
    if "mix_cls" in seen and "mix_mean" in seen:
        raise ConfigError(f"encoder variant {text!r}: mix_cls and mix_mean cannot be combined; pick one.")
    s = lookup(base)  # resolves aliases; unknown names fail with the closest matches
    if "mix_cls" in seen and s.cls_tokens == 0:
        raise ConfigError(f"encoder variant {text!r}: {s.id} has no CLS token; use mix_mean instead "
                          f"(e.g. {s.id}@mix_mean={_fmt(seen['mix_cls'])}).")
    if "layer" in seen and (s.weight_free or s.tap == "nhwc"):
        why = "is weight-free and has no layers" if s.weight_free else "(Hiera) has no per-block token tap"
        raise ConfigError(f"encoder variant {text!r}: {s.id} {why}; drop the layer transform.")
    return Variant(s.id, tuple((k, seen[k]) for k in TRANSFORMS if k in seen))


def base_spec(name: str) -> EncoderSpec:
    """The base encoder's own spec (its id, weights files, ...) for a variant or plain id."""
    return lookup(parse_variant(name).base) if is_variant(name) else lookup(name)


def variant_spec(name: str) -> EncoderSpec:
    """The base spec with ``id`` set to the canonical variant id (family, weights, ... from the base)."""
    v = parse_variant(name)
    return base_spec(v.base).replace(id=v.id, aliases=(), in_paper_27=False)


def apply_transforms(out: EncoderOutput, transforms: tuple[tuple[str, float | int], ...]) -> EncoderOutput:
    """``out`` with the token transforms (all but ``layer``, which is a build option) applied in fp32."""
    from ..tokens import mix_cls, mix_mean, spatial_norm

    patch = out.patch.float()
    for key, val in transforms:
        if key == "mix_cls":
            patch = mix_cls(patch, out.cls.float() if out.cls is not None else None, float(val))
        elif key == "mix_mean":
            patch = mix_mean(patch, float(val))
        elif key == "spnorm":
            patch = spatial_norm(patch, float(val))
    return EncoderOutput(patch=patch, prefix=out.prefix, grid=out.grid, layer=out.layer)


class VariantEncoder(torch.nn.Module):
    """A zoo encoder with transforms: same contract, ``name`` is the canonical variant id.

    ``weights_id`` and ``weights_path`` are the base's; :meth:`fingerprint` names the base and the
    transforms (the extraction store fingerprint includes it).
    """

    def __init__(self, variant: Variant, base: torch.nn.Module) -> None:
        super().__init__()
        self.variant = variant
        self.base = base
        self.name = variant.id
        self.embed_dim = base.embed_dim
        self.grid = base.grid
        self.weights_id = base.weights_id
        self.weights_path = getattr(base, "weights_path", None)
        self.layer = getattr(base, "layer", None)
        self.spec = base.spec.replace(id=variant.id, aliases=(), in_paper_27=False)
        self.transforms = variant.transforms
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> "VariantEncoder":  # teachers never train
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def layer_name(self) -> str:
        return self.base.layer_name

    def fingerprint(self) -> dict[str, Any]:
        """What distinguishes this variant from its base (part of every store fingerprint)."""
        return {"variant": self.variant.id, "base": self.variant.base,
                "transforms": [[k, v] for k, v in self.variant.transforms]}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return self.base.preprocess(images)

    def forward_tokens(self, x: torch.Tensor) -> EncoderOutput:
        out = self.base.forward_tokens(x)
        out = EncoderOutput(patch=out.patch.float(), prefix=None if out.prefix is None else out.prefix.float(),
                            grid=out.grid, layer=out.layer)
        return apply_transforms(out, self.transforms)

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        with torch.no_grad():
            return apply_transforms(self.base(images), self.transforms)

    def extra_repr(self) -> str:
        return f"name={self.name}, transforms={list(self.transforms)}"


def __getattr__(name: str) -> Any:
    # get_variant moved to the factory (registry), which sits above this module; kept for one release
    if name == "get_variant":
        warnings.warn("spatialprobe.encoders.variants.get_variant moved to spatialprobe.encoders.registry; "
                      "use spatialprobe.encoders.get (it builds variant ids too).", DeprecationWarning, stacklevel=2)
        return importlib.import_module(f"{__package__}.registry").get_variant
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
