"""timm backends: plain timm (most of the zoo), the PE recipe, C-RADIO, and local checkpoints (MoCo v3).

Loading paths (all strict: any weight of the model left unloaded raises WeightsMismatchError):

- ``timm``: ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))`` so timm's
  own ``checkpoint_filter_fn`` converts original-format checkpoints (DINO/v2/v3 hub, OpenAI CLIP, MAE,
  I-JEPA, SAM2, timm hub files).
- ``timm_pe``: the checkpoint's absolute position embedding is resampled to 16×16 with bilinear,
  no antialias (as the PE reference), the model is built at ``img_size = 16·patch`` with
  ``ref_feat_shape=(16,16)`` (integer RoPE positions) and loaded through the overlay.
- ``timm_radio``: RADIO keys (``radio_model.model.*`` or hub ``base_model.*``) are converted with
  ``align_corners=False`` (current RADIO code) and loaded with ``load_state_dict``.
- ``timm_local``: a plain timm ViT and a local ``.pth`` (MoCo v3 ``module.base_encoder.*``), prefixes
  stripped, heads dropped, position embedding resampled (bicubic, antialias) to the grid.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError, WeightsMismatchError
from .base import EncoderOutput
from .module import ZooEncoder
from .spec import EncoderSpec
from . import weights as W

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
    W.assert_complete(spec.id, path, list(res.missing_keys), list(res.unexpected_keys))


def _resample_pe(sd: dict[str, torch.Tensor], spec: EncoderSpec) -> dict[str, torch.Tensor]:
    """PE recipe step 1: the native absolute position embedding -> 16×16, bilinear, no antialias."""
    from timm.layers import resample_abs_pos_embed

    g = spec.grid[0]
    out = dict(sd)
    for key in ("positional_embedding", "visual.positional_embedding", "pos_embed"):
        if key not in out:
            continue
        pe = out[key]
        squeeze = pe.dim() == 2
        pe = pe[None] if squeeze else pe
        n = pe.shape[1] - spec.cls_tokens
        if n != g * g:
            pe = resample_abs_pos_embed(pe.float(), [g, g], num_prefix_tokens=spec.cls_tokens,
                                        interpolation="bilinear", antialias=False).to(out[key].dtype)
        out[key] = pe[0] if squeeze else pe
    return out


def _load_radio(model: torch.nn.Module, spec: EncoderSpec, path: Path) -> None:
    from timm.layers import resample_abs_pos_embed
    from timm.models.vision_transformer import _convert_radio

    sd = W.unwrap(W.read_checkpoint(path))
    if any(k.startswith("base_model.") for k in sd):
        sd = {("radio_model.model." + k[len("base_model.model."):]) if k.startswith("base_model.model.")
              else ("radio_model." + k[len("base_model."):]) if k.startswith("base_model.") else k: v
              for k, v in sd.items()}
    if any(k.startswith("radio_model.model.") for k in sd):
        sd = _convert_radio(sd, model, interpolation="bilinear", antialias=False,
                            align_corners=bool(spec.kwargs.get("align_corners", False)))
    elif "pos_embed" in sd and sd["pos_embed"].shape != model.pos_embed.shape:  # timm-format file
        g = model.patch_embed.grid_size
        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], list(g), num_prefix_tokens=0,
                                                 interpolation="bilinear", antialias=False, align_corners=False)
    res = model.load_state_dict(sd, strict=False)
    W.assert_complete(spec.id, path, list(res.missing_keys), list(res.unexpected_keys))


_MOCO_PREFIXES = ("module.base_encoder.", "base_encoder.", "module.", "encoder.")


def load_local(model: torch.nn.Module, spec: EncoderSpec, path: Path) -> None:
    """Load a plain-ViT checkpoint (MoCo v3 layout) strictly: strip prefixes, drop heads, resample pos."""
    from timm.layers import resample_abs_pos_embed

    raw = W.unwrap(W.read_checkpoint(path))
    if any(k.startswith("module.base_encoder.") or k.startswith("base_encoder.") for k in raw):
        raw = {k: v for k, v in raw.items() if "base_encoder." in k}  # drop the momentum encoder/predictor
    sd = {}
    for k, v in raw.items():
        for p in _MOCO_PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        if k.startswith("head.") or k.startswith("fc_norm."):
            continue
        sd[k] = v
    if "pos_embed" in sd and sd["pos_embed"].shape != model.pos_embed.shape:
        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], list(model.patch_embed.grid_size),
                                                 num_prefix_tokens=model.num_prefix_tokens)
    try:
        res = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:
        raise WeightsMismatchError(f"checkpoint {path} does not fit encoder {spec.id!r}: {exc}") from None
    W.assert_complete(spec.id, path, list(res.missing_keys), list(res.unexpected_keys))


def build_model(spec: EncoderSpec, *, path: Path | None, overrides: dict[str, Any]) -> torch.nn.Module:
    """The timm module for ``spec``: random init when ``path`` is None, else strictly loaded from ``path``."""
    kw = build_kwargs(spec, overrides)
    if path is None:
        return _create(spec, kw, pretrained=False)
    if spec.backend in ("timm_radio", "timm_local"):
        model = _create(spec, kw, pretrained=False)
        (_load_radio if spec.backend == "timm_radio" else load_local)(model, spec, path)
        return model
    overlay: dict[str, Any]
    if spec.backend == "timm_pe":
        overlay = dict(state_dict=_resample_pe(W.unwrap(W.read_checkpoint(path)), spec))
    else:
        overlay = dict(file=str(path))
    try:
        with W.record_loads() as calls:
            try:
                model = _create(spec, kw, pretrained=True, pretrained_cfg_overlay=overlay)
            except WeightsMismatchError:
                raise
            except Exception:
                if "file" not in overlay:
                    raise
                # e.g. a TorchScript archive (OpenAI CLIP): read it ourselves, same filter path
                overlay = dict(state_dict=W.unwrap(W.read_checkpoint(path)))
                calls.clear()
                model = _create(spec, kw, pretrained=True, pretrained_cfg_overlay=overlay)
    except WeightsMismatchError as exc:
        raise WeightsMismatchError(f"{path} -> {spec.id!r}: {exc}") from None
    except Exception as exc:  # filter functions fail on foreign key layouts
        raise WeightsMismatchError(f"checkpoint {path} does not fit encoder {spec.id!r} ({spec.model}): "
                                   f"{type(exc).__name__}: {exc}. Check the file against "
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
