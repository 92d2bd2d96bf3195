"""`EncoderSpec`: one validated row of ``encoders.yaml`` (the zoo as data).

The yaml is package data, ``spatialprobe/encoders/encoders.yaml``; the repository root's ``encoders.yaml``
is a link to it, so editing either edits the zoo of an editable install. Rows are keyed by the official iREPA ids; family names resolve to the
paper's default member through ``aliases``. Rows added at run time (:func:`add_encoder`, a study's
``define:``) live here too, so every id lookup below the factory is answered by this catalog.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UnknownNameError, did_you_mean
from . import backends
from .backends import BACKENDS
from .layouts import LAYOUTS

FAMILIES = ("DINOv2", "DINOv3", "WebSSL", "PE-Core", "PE-Lang", "PE-Spatial", "C-RADIO", "DINO", "CLIP",
            "MoCo v3", "I-JEPA", "MAE", "SAM2", "SigLIP", "SigLIP2", "Classical", "Baseline")
TAPS = ("final_norm", "no_norm", "nhwc")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "area", "none")
NORMS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


@dataclass(frozen=True)
class WeightsSpec:
    """Where a checkpoint comes from and under which names it is looked for (nothing is downloaded)."""

    files: tuple[str, ...] = ()  #: accepted file names (a trailing '/' means a transformers model folder)
    source: str = ""  #: where to get them (URL / hub repo), shown in errors and `spatialprobe weights`
    hf_repos: tuple[str, ...] = ()  #: Hugging Face hub repos whose local cache is searched
    sha256: str | None = None  #: full or prefix sha256 when known
    gated: bool = False
    licence: str = ""
    format: tuple[str, ...] = ()  #: accepted release layouts (``spatialprobe.encoders.layouts.LAYOUTS``)


@dataclass(frozen=True)
class EncoderSpec:
    """One zoo member. Units: ``params_m`` in millions; ``input_res`` is the model input for a 256-px image."""

    id: str
    family: str
    backend: str
    model: str = ""  #: timm model name / transformers config preset / classical kind
    in_paper_27: bool = False
    embed_dim: int = 0
    patch: int = 16  #: patch size, or the total stride (SAM2 Hiera: 32)
    input_res: int = 256
    interpolation: str = "bicubic"
    antialias: bool = False
    norm: str = "imagenet"  #: key of NORMS, or explicit mean/std below
    mean: tuple[float, float, float] = NORMS["imagenet"][0]
    std: tuple[float, float, float] = NORMS["imagenet"][1]
    prefix_tokens: int = 0  #: tokens before the patch tokens in the model's sequence (CLS + registers)
    cls_tokens: int = 0  #: how many of those are global (CLS-like) tokens, reported as ``prefix``
    tap: str = "final_norm"  #: final_norm | no_norm (before the final norm / ln_post) | nhwc (Hiera stage map)
    params_m: float = 0.0  #: published parameter count of the built part (millions)
    kwargs: dict[str, Any] = field(default_factory=dict)  #: extra build arguments for the backend
    weights: WeightsSpec = WeightsSpec()
    aliases: tuple[str, ...] = ()
    quirks: str = ""  #: the official wrapper's quirk kept for parity, and the override that fixes it
    notes: str = ""

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid at ``input_res``."""
        g = self.input_res // self.patch
        return (g, g)

    @property
    def weight_free(self) -> bool:
        return backends.weight_free(self.backend)

    def replace(self, **changes: Any) -> "EncoderSpec":
        """A copy with fields changed (``norm=`` also resets mean/std)."""
        if "norm" in changes and "mean" not in changes:
            changes["mean"], changes["std"] = _norm(changes["norm"], self.id)
        return dataclasses.replace(self, **changes)


def _formats(eid: str, value: Any) -> tuple[str, ...]:
    out = (value,) if isinstance(value, str) else tuple(value or ())
    bad = [f for f in out if f not in LAYOUTS]
    if bad:
        raise ConfigError(f"encoders.yaml: {eid}: unknown weights.format {bad}; known layouts: {sorted(LAYOUTS)}.")
    return out


def _norm(name: str, eid: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if name not in NORMS:
        raise ConfigError(f"encoders.yaml: {eid}: unknown norm {name!r}; use one of {sorted(NORMS)} "
                          f"or give explicit mean/std.")
    return NORMS[name]


def yaml_path() -> Path:
    """The zoo file: $SPATIALPROBE_ENCODERS_YAML, else the packaged ``spatialprobe/encoders/encoders.yaml``."""
    env = os.environ.get("SPATIALPROBE_ENCODERS_YAML")
    if env:
        return Path(env)
    packaged = Path(__file__).resolve().parent / "encoders.yaml"
    if packaged.is_file():
        return packaged
    raise ConfigError(f"encoders.yaml not found in the package ({packaged}); "
                      "reinstall spatialprobe or set SPATIALPROBE_ENCODERS_YAML.")


def parse_row(eid: str, row: dict[str, Any], defaults: dict[str, Any] | None = None) -> EncoderSpec:
    """Validate one yaml row into an :class:`EncoderSpec` (raises ConfigError naming the field)."""
    row = {**(defaults or {}), **row}
    known = {f.name for f in dataclasses.fields(EncoderSpec)} - {"id"}
    bad = set(row) - known
    if bad:
        raise ConfigError(f"encoders.yaml: {eid}: unknown field(s) {sorted(bad)}; allowed: {sorted(known)}.")
    for req in ("family", "backend"):
        if req not in row:
            raise ConfigError(f"encoders.yaml: {eid}: missing field {req!r}.")
    if row["family"] not in FAMILIES:
        raise ConfigError(f"encoders.yaml: {eid}: family {row['family']!r} is not one of {FAMILIES}.")
    if row["backend"] not in BACKENDS:
        raise ConfigError(f"encoders.yaml: {eid}: backend {row['backend']!r} is not one of {BACKENDS}.")
    tap = row.get("tap", "final_norm")
    if tap not in TAPS:
        raise ConfigError(f"encoders.yaml: {eid}: tap {tap!r} is not one of {TAPS}.")
    if row.get("interpolation", "bicubic") not in INTERPOLATIONS:
        raise ConfigError(f"encoders.yaml: {eid}: interpolation must be one of {INTERPOLATIONS}.")
    norm = row.get("norm", "imagenet")
    mean, std = _norm(norm, eid) if "mean" not in row else (row["mean"], row["std"])
    w = dict(row.get("weights") or {})
    wbad = set(w) - {f.name for f in dataclasses.fields(WeightsSpec)}
    if wbad:
        raise ConfigError(f"encoders.yaml: {eid}: unknown weights field(s) {sorted(wbad)}.")
    weights = WeightsSpec(files=tuple(w.get("files", ())), source=str(w.get("source", "")),
                          hf_repos=tuple(w.get("hf_repos", ())), sha256=w.get("sha256"),
                          gated=bool(w.get("gated", False)), licence=str(w.get("licence", "")),
                          format=_formats(eid, w.get("format", ())))
    spec = EncoderSpec(
        id=eid, family=row["family"], backend=row["backend"], model=str(row.get("model", "")),
        in_paper_27=bool(row.get("in_paper_27", False)), embed_dim=int(row.get("embed_dim", 0)),
        patch=int(row.get("patch", 16)), input_res=int(row.get("input_res", 256)),
        interpolation=row.get("interpolation", "bicubic"), antialias=bool(row.get("antialias", False)),
        norm=norm, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
        prefix_tokens=int(row.get("prefix_tokens", 0)), cls_tokens=int(row.get("cls_tokens", 0)),
        tap=tap, params_m=float(row.get("params_m", 0.0)), kwargs=dict(row.get("kwargs") or {}),
        weights=weights, aliases=tuple(row.get("aliases", ())), quirks=str(row.get("quirks", "")).strip(),
        notes=str(row.get("notes", "")).strip(),
    )
    if spec.embed_dim <= 0:
        raise ConfigError(f"encoders.yaml: {eid}: embed_dim must be a positive integer.")
    if spec.input_res % spec.patch:
        raise ConfigError(f"encoders.yaml: {eid}: input_res {spec.input_res} is not a multiple of patch {spec.patch}.")
    if spec.cls_tokens > spec.prefix_tokens:
        raise ConfigError(f"encoders.yaml: {eid}: cls_tokens exceeds prefix_tokens.")
    if not spec.weight_free and not spec.weights.source:
        raise ConfigError(f"encoders.yaml: {eid}: weights.source is required (where to get the checkpoint).")
    return spec


@functools.lru_cache(maxsize=4)
def _load(path: str) -> tuple[dict[str, EncoderSpec], dict[str, str]]:
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read encoder zoo {path}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("encoders"), dict):
        raise ConfigError(f"{path}: expected a mapping with an 'encoders' section.")
    defaults = doc.get("defaults") or {}
    specs = {str(k): parse_row(str(k), v or {}, defaults) for k, v in doc["encoders"].items()}
    aliases: dict[str, str] = {}
    for s in specs.values():
        for a in s.aliases:
            if a in specs or (a in aliases and aliases[a] != s.id):
                raise ConfigError(f"{path}: alias {a!r} of {s.id} clashes with another id or alias.")
            aliases[a] = s.id
    return specs, aliases


def all_specs() -> dict[str, EncoderSpec]:
    """id -> spec, in yaml order."""
    return _load(str(yaml_path()))[0]


def aliases() -> dict[str, str]:
    """alias -> id."""
    return _load(str(yaml_path()))[1]


def resolve(name: str) -> str:
    """Canonical id for an id or alias (case-insensitive); unknown names fail with the closest matches."""
    specs, al = _load(str(yaml_path()))
    if name in specs:
        return name
    if name in al:
        return al[name]
    low = {k.lower(): k for k in list(specs) + list(al)}
    if name.lower() in low:
        return resolve(low[name.lower()])
    raise UnknownNameError(f"unknown encoder {name!r}.{did_you_mean(name, list(specs) + list(al))} "
                           f"See `spatialprobe ls encoders`.")


# ------------------------------------------------------------------ rows added at run time

_RUNTIME: dict[str, EncoderSpec] = {}


def add_encoder(eid: str, **row: Any) -> EncoderSpec:
    """Add a zoo member at run time from the same fields as an encoders.yaml row."""
    if eid in all_specs():
        raise ConfigError(f"encoder {eid!r} already exists in encoders.yaml; pick another id.")
    spec = parse_row(eid, row) if row.get("backend") in BACKENDS else _parse_registered(eid, row)
    _RUNTIME[eid] = spec
    return spec


def _parse_registered(eid: str, row: dict[str, Any]) -> EncoderSpec:
    if not backends.is_registered(row.get("backend")):
        raise ConfigError(f"{eid}: backend {row.get('backend')!r} is not registered; "
                          f"call register_backend first or use one of {BACKENDS}.")
    tmp = parse_row(eid, {**row, "backend": "timm"})
    return dataclasses.replace(tmp, backend=row["backend"])


def specs() -> dict[str, EncoderSpec]:
    """All specs: encoders.yaml rows plus run-time additions."""
    return {**all_specs(), **_RUNTIME}


def lookup(name: str) -> EncoderSpec:
    """The spec of a plain id or alias, run-time additions included (unknown names fail with the closest
    matches). Variant ids (``BASE@...``) are resolved by :func:`spatialprobe.encoders.spec`."""
    if name in _RUNTIME:
        return _RUNTIME[name]
    return all_specs()[resolve(name)]
