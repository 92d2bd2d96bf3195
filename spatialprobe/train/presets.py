"""Alignment presets: every REPA/iREPA choice in one table.

The official code disagrees with itself (LDM: γ 0.6, conv kernel default 1, iREPA coeff 1.0; JiT: γ 0.8,
kernel 3, coeff 0.5), so each method is spelled out per model family here and the resolved values are
saved with every checkpoint. Individual fields can still be overridden (``--projector``, ``--kernel-size``,
``--gamma``, ``--proj-coeff``, ``--spnorm/--no-spnorm``; PixelREPA: ``--mask-ratio``, ``--adapter-depth``).
PixelREPA exists for JiT only (its adapter, the ``mta`` projector, sits on JiT's encoder blocks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ConfigError, UnknownNameError, did_you_mean

FAMILIES = ("sit", "jit")
PIXELREPA_MASK_RATIO, PIXELREPA_DEPTH = 0.2, 2  #: the official PixelREPA masking ratio and adapter depth


@dataclass(frozen=True)
class AlignPreset:
    """One row of the preset table (one method for one model family)."""

    method: str
    family: str
    align: bool          #: train with a projection loss at all
    projector: str       #: mlp | linear | conv
    kernel_size: int     #: conv kernel (ignored by mlp/linear)
    spnorm: bool         #: spatially normalise the teacher target
    gamma: float         #: γ of the spatial normalisation
    proj_coeff: float    #: weight of the projection loss
    note: str
    mask_ratio: float | None = None   #: PixelREPA: share of the adapter's input tokens replaced by the mask token
    adapter_depth: int | None = None  #: PixelREPA: blocks of the Masked Transformer Adapter

    def as_dict(self) -> dict:
        return asdict(self)


def _rows() -> list[AlignPreset]:
    P = AlignPreset
    return [
        P("repa", "sit", True, "mlp", 3, False, 0.6, 0.5, "REPA: MLP projector, raw teacher tokens"),
        P("repa", "jit", True, "mlp", 3, False, 0.8, 0.5, "REPA: MLP projector, raw teacher tokens"),
        P("irepa", "sit", True, "conv", 3, True, 0.6, 1.0,
          "iREPA as in the paper: 3x3 conv + spatial norm (LDM γ 0.6, ldm/configs/irepa.yaml coeff 1.0)"),
        P("irepa", "jit", True, "conv", 3, True, 0.8, 0.5,
          "iREPA as in the paper: 3x3 conv + spatial norm (JiT γ 0.8, jit/configs/irepa.yaml coeff 0.5)"),
        P("irepa-official-ldm", "sit", True, "conv", 1, True, 0.6, 1.0,
          "the official LDM iREPA command as run: its kernel default is 1, so a 1x1 conv"),
        P("irepa-official-ldm", "jit", True, "conv", 1, True, 0.6, 1.0,
          "the official LDM iREPA defaults applied to JiT (1x1 conv, γ 0.6, coeff 1.0)"),
        P("conv-only", "sit", True, "conv", 3, False, 0.6, 1.0, "ablation: iREPA's conv, no spatial norm"),
        P("conv-only", "jit", True, "conv", 3, False, 0.8, 0.5, "ablation: iREPA's conv, no spatial norm"),
        P("norm-only", "sit", True, "mlp", 3, True, 0.6, 1.0, "ablation: MLP projector + spatial norm"),
        P("norm-only", "jit", True, "mlp", 3, True, 0.8, 0.5, "ablation: MLP projector + spatial norm"),
        P("pixelrepa", "jit", True, "mta", 3, False, 0.8, 0.1,
          f"PixelREPA (JiT only): encoder tokens, mask ratio {PIXELREPA_MASK_RATIO:g} -> depth-{PIXELREPA_DEPTH} "
          "Masked Transformer Adapter, 1 - cos to the teacher",
          mask_ratio=PIXELREPA_MASK_RATIO, adapter_depth=PIXELREPA_DEPTH),
        P("none", "sit", False, "mlp", 3, False, 0.6, 0.0, "no alignment: the plain SiT baseline"),
        P("none", "jit", False, "mlp", 3, False, 0.8, 0.0, "no alignment: the plain JiT baseline"),
    ]


PRESETS: dict[tuple[str, str], AlignPreset] = {(p.method, p.family): p for p in _rows()}
METHODS: tuple[str, ...] = tuple(dict.fromkeys(p.method for p in _rows()))


def get(method: str, family: str) -> AlignPreset:
    """The preset for ``method`` (repa, irepa, irepa-official-ldm, conv-only, norm-only, pixelrepa, none) and
    family; a method that does not exist for the family (pixelrepa on SiT) raises ConfigError."""
    m = method.strip().lower()
    if m not in METHODS:
        raise UnknownNameError(f"Unknown method {method!r}; use one of {', '.join(METHODS)}.{did_you_mean(m, METHODS)}")
    if family not in FAMILIES:
        raise UnknownNameError(f"Unknown model family {family!r}; use one of {', '.join(FAMILIES)}.")
    if (m, family) not in PRESETS:
        have = [f for f in FAMILIES if (m, f) in PRESETS]
        raise ConfigError(f"Method {m!r} is for {'/'.join(have)} models only (it needs the pixel-space JiT's "
                          f"encoder blocks), not {family}; use --model jit-b/16 (or jit-tiny), or a "
                          f"{family} method such as repa or irepa.")
    return PRESETS[(m, family)]


def table() -> list[AlignPreset]:
    """All preset rows, in display order."""
    return list(PRESETS.values())


def format_table(notes: bool = True) -> str:
    """The preset table as aligned text (``spatialprobe ls presets``; ``train --help`` without the notes)."""
    head = f"{'method':<19}{'family':<7}{'projector':<10}{'k':<3}{'spnorm':<8}{'gamma':<7}{'coeff':<6}" + ("note" if notes else "")
    lines = [head]
    for p in table():
        proj = p.projector if p.align else "-"
        k = str(p.kernel_size) if p.align and p.projector == "conv" else "-"
        sn = ("yes" if p.spnorm else "no") if p.align else "-"
        g = f"{p.gamma:g}" if p.align and p.spnorm else "-"
        lines.append(f"{p.method:<19}{p.family:<7}{proj:<10}{k:<3}{sn:<8}{g:<7}{p.proj_coeff:<6g}{p.note if notes else ''}".rstrip())
    return "\n".join(lines)
