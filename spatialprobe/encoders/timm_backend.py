"""timm backends: plain timm (most of the zoo), the PE recipe, C-RADIO, and local checkpoints (MoCo v3).

Every path first reads the file with :func:`.layouts.open_checkpoint` (``weights_only=True``; the layout
is recognised from the file's own keys and wrappers, checked against the row's ``weights.format``,
upcast to fp32 and converted in one step), then loads strictly: any weight of the model left unloaded
raises WeightsMismatchError.

- ``timm``: the converted state dict goes through ``pretrained_cfg_overlay=dict(state_dict=...)`` so
  timm's own ``checkpoint_filter_fn`` finishes original-format checkpoints (DINO/v2/v3, OpenAI CLIP, MAE,
  I-JEPA, SigLIP, timm hub files). SAM2 (``sam2-full`` / ``timm-hiera``) loads into the Hiera trunk
  without its classifier head (the release file has none; the nhwc tap never uses it).
- ``timm_pe``: the vision tower's absolute position embedding is resampled to 16×16 with bilinear,
  no antialias (as the PE reference), the model is built at ``img_size = 16·patch`` with
  ``ref_feat_shape=(16,16)`` (integer RoPE positions) and loaded through the overlay.
- ``timm_radio``: RADIO keys (HF ``radio_model.model.*``, hub ``base_model.*`` renamed to them) are
  converted with ``align_corners=False`` (current RADIO code) and loaded with ``load_state_dict``; the
  file's input conditioner must equal the row's mean/std.
- ``timm_local``: a plain timm ViT and a local ``.pth`` (MoCo v3 ``module.base_encoder.*``, the iREPA
  ViT-L's ``normN``/``fcN`` names), heads dropped, position embedding resampled (bicubic, antialias).

``meta=True`` runs the same path on the meta device without reading values (``spatialprobe weights --check``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError, WeightsMismatchError
from .base import EncoderOutput
from .loading import assert_complete, record_loads, short_error
from .module import ZooEncoder
from .spec import EncoderSpec
from . import layouts as L

log = logging.getLogger(__name__)


def build_kwargs(spec: EncoderSpec, overrides: dict[str, Any]) -> dict[str, Any]:
    """timm.create_model keyword arguments for ``spec`` (yaml kwargs, recipe, then user overrides)."""
    kw = dict(spec.kwargs)
    if spec.backend == "timm_pe":
        g = spec.grid[0]
        kw.setdefault("img_size", spec.input_res)
        kw.setdefault("ref_feat_shape", (g, g))
    kw.update(overrides)
    return kw


def _create(spec: EncoderSpec, kw: dict[str, Any], **extra: Any) -> torch.nn.Module:
    import timm

    name = spec.model.split(".")[0] if spec.backend in ("timm_radio", "timm_local") else spec.model
    return timm.create_model(name, **kw, **extra)


def _check_calls(spec: EncoderSpec, path: Path, calls: list[Any]) -> None:
    if not calls:
        raise WeightsMismatchError(f"timm did not load {path} into {spec.id!r} (no state dict was applied).")
    res = calls[0]
    assert_complete(spec.id, path, list(res.missing_keys), list(res.unexpected_keys))


def _resample_pe(sd: dict[str, torch.Tensor], spec: EncoderSpec) -> dict[str, torch.Tensor]:
    """PE recipe step 1: the vision tower's absolute position embedding -> 16×16, bilinear, no antialias.

    ``sd`` is a vision-tower state dict (``pe-vision`` keys, or timm keys): the text tower of a ``pe-clip``
    file was dropped by its conversion, so its own ``positional_embedding`` is never touched.
    """
    from timm.layers import resample_abs_pos_embed

    g = spec.grid[0]
    out = dict(sd)
    for key in ("positional_embedding", "pos_embed"):
        if key not in out:
            continue
        pe = out[key].float()
        squeeze = pe.dim() == 2
        pe = pe[None] if squeeze else pe
        n = pe.shape[1] - spec.cls_tokens
        if n != g * g:
            side = int(round(n ** 0.5))
            if side * side != n:
                raise WeightsMismatchError(f"{spec.id}: {key} {tuple(out[key].shape)} is not a square grid plus "
                                           f"{spec.cls_tokens} CLS token(s); wrong file for this encoder.")
            pe = resample_abs_pos_embed(pe, [g, g], num_prefix_tokens=spec.cls_tokens,
                                        interpolation="bilinear", antialias=False)
        out[key] = pe[0] if squeeze else pe
    return out


def _open(spec: EncoderSpec, path: Path, meta: bool) -> L.Checkpoint:
    return L.open_checkpoint(path, spec.weights.format, eid=spec.id, meta=meta)


def _strict_load(model: torch.nn.Module, spec: EncoderSpec, path: Path, sd: dict[str, torch.Tensor]) -> None:
    try:
        res = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:
        raise WeightsMismatchError(f"checkpoint {path} does not fit encoder {spec.id!r}: {short_error(exc)}") from None
    assert_complete(spec.id, path, list(res.missing_keys), list(res.unexpected_keys))


def _check_conditioner(spec: EncoderSpec, path: Path, sd: dict[str, torch.Tensor]) -> None:
    """RADIO normalises with the checkpoint's input conditioner: it must be the spec's mean/std."""
    for key, want in (("mean", spec.mean), ("std", spec.std)):
        v = sd.get(f"input_conditioner.norm_{key}", sd.get(f"radio_model.input_conditioner.norm_{key}"))
        if v is None or v.is_meta:
            continue
        got = v.float().flatten()
        if got.numel() != 3 or not torch.allclose(got, torch.tensor(want), atol=1e-6):
            raise WeightsMismatchError(
                f"{path}: the input conditioner norm_{key} {[round(x, 6) for x in got.tolist()]} differs from "
                f"{spec.id!r}'s {list(want)}; pass mean=/std= overrides with the file's values.")


def _load_radio(model: torch.nn.Module, spec: EncoderSpec, path: Path, meta: bool = False) -> None:
    from timm.layers import resample_abs_pos_embed
    from timm.models.vision_transformer import _convert_radio

    ck = _open(spec, path, meta)
    sd = ck.state_dict  # radio-hub is already renamed to radio-hf keys (and upcast to fp32)
    _check_conditioner(spec, path, sd)
    if any(k.startswith("radio_model.model.") for k in sd):
        sd = _convert_radio(sd, model, interpolation="bilinear", antialias=False,
                            align_corners=bool(spec.kwargs.get("align_corners", False)))
    elif "pos_embed" in sd and sd["pos_embed"].shape != model.pos_embed.shape:  # timm-format file
        g = model.patch_embed.grid_size
        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], list(g), num_prefix_tokens=0,
                                                 interpolation="bilinear", antialias=False, align_corners=False)
    _strict_load(model, spec, path, sd)


def load_local(model: torch.nn.Module, spec: EncoderSpec, path: Path, meta: bool = False) -> None:
    """Load a plain-ViT checkpoint (MoCo v3 layout) strictly: prefixes stripped, heads dropped, pos resampled."""
    from timm.layers import resample_abs_pos_embed

    sd = _open(spec, path, meta).state_dict
    sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "fc_norm."))}
    if "pos_embed" in sd and sd["pos_embed"].shape != model.pos_embed.shape:
        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], list(model.patch_embed.grid_size),
                                                 num_prefix_tokens=model.num_prefix_tokens)
    _strict_load(model, spec, path, sd)


def _is_hiera(spec: EncoderSpec) -> bool:
    return spec.model.startswith(("sam2_hiera", "hiera"))


def _drop_hiera_head(model: torch.nn.Module) -> torch.nn.Module:
    """The SAM2 trunk has no classifier head (the release file has no head.norm): tokens come from
    forward_features, so the head timm adds is removed rather than left at random init."""
    if hasattr(model, "head"):
        model.head = torch.nn.Identity()
    return model


def build_model(spec: EncoderSpec, *, path: Path | None, overrides: dict[str, Any],
                meta: bool = False) -> torch.nn.Module:
    """The timm module for ``spec``: random init when ``path`` is None, else strictly loaded from ``path``.

    ``meta=True`` reads only the file's headers and loads onto a meta-device model: the same recognition,
    conversion and strict key/shape check as a real load, without reading any values (``weights --check``).
    """
    kw = build_kwargs(spec, overrides)
    if path is None:
        model = _create(spec, kw, pretrained=False)
        return _drop_hiera_head(model) if _is_hiera(spec) else model
    if spec.backend in ("timm_radio", "timm_local") or _is_hiera(spec):
        model = _create(spec, kw, pretrained=False)
        if spec.backend == "timm_radio":
            _load_radio(model, spec, path, meta)
        elif spec.backend == "timm_local":
            load_local(model, spec, path, meta)
        else:
            _drop_hiera_head(model)
            _strict_load(model, spec, path, _open(spec, path, meta).state_dict)
        return model
    ck = _open(spec, path, meta)
    sd = _resample_pe(ck.state_dict, spec) if spec.backend == "timm_pe" else ck.state_dict
    overlay: dict[str, Any] = dict(state_dict=sd)
    try:
        with record_loads() as calls:
            model = _create(spec, kw, pretrained=True, pretrained_cfg_overlay=overlay)
    except WeightsMismatchError as exc:
        raise WeightsMismatchError(f"{path} -> {spec.id!r}: {exc}") from None
    except Exception as exc:  # filter functions fail on foreign key layouts
        raise WeightsMismatchError(f"checkpoint {path} ({ck.layout}) does not fit encoder {spec.id!r} "
                                   f"({spec.model}): {type(exc).__name__}: {exc}. Check the file against "
                                   f"{spec.weights.source}.") from None
    _check_calls(spec, path, calls)
    return model


class TimmEncoder(ZooEncoder):
    """Tokens from a timm model according to the spec's tap (final_norm / no_norm / nhwc)."""

    def forward_tokens(self, x: torch.Tensor) -> EncoderOutput:
        s, m = self.spec, self.model
        cls = None
        if s.tap == "nhwc":
            if self.layer is not None:
                raise ConfigError(f"{s.id}: intermediate layers are not supported for Hiera; use layers=None.")
            y = m.forward_features(x)
            if y.dim() == 4 and y.shape[-1] != s.embed_dim and y.shape[1] == s.embed_dim:
                y = y.permute(0, 2, 3, 1)
            patch = y.reshape(y.shape[0], -1, y.shape[-1])
        elif s.tap == "final_norm" and self.layer is None:
            y = m.forward_features(x)
            patch = y[:, s.prefix_tokens:]
            cls = y[:, :s.cls_tokens] if s.cls_tokens else None
        else:
            idx = [self.layer] if self.layer is not None else 1
            res = m.forward_intermediates(x, indices=idx, norm=False, output_fmt="NLC",
                                          intermediates_only=True, return_prefix_tokens=s.cls_tokens > 0)
            y = res[-1]
            if isinstance(y, tuple):
                patch, pre = y
                cls = pre[:, :s.cls_tokens]
            else:
                patch = y
        if patch.shape[1] != self.grid[0] * self.grid[1]:
            raise DataError(f"{s.id}: got {patch.shape[1]} patch tokens, expected {self.grid[0]}x{self.grid[1]}; "
                            f"check input_res/patch in encoders.yaml.")
        return EncoderOutput(patch=patch, prefix=cls, grid=self.grid, layer=self.layer_name)


def n_blocks(model: torch.nn.Module) -> int:
    """Number of transformer blocks (for negative layer indices)."""
    blocks = getattr(model, "blocks", None)
    return len(blocks) if blocks is not None else 0
