"""transformers backend: WebSSL through ``Dinov2Model`` (SwiGLU at every size, no registers).

Random init and meta builds use the configuration reconstructed from the WebSSL reference code
(patch 14, SwiGLU, layerscale 1e-5, LayerNorm eps 1e-6, qkv bias); with weights the folder's own
``config.json`` is used via ``from_pretrained(dir)`` (offline, ``local_files_only``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError, WeightsMismatchError
from .base import EncoderOutput
from .module import ZooEncoder
from .spec import EncoderSpec
from . import weights as W


def make_config(spec: EncoderSpec, overrides: dict[str, Any]):
    """The Dinov2Config of a WebSSL row (``depth`` is accepted as num_hidden_layers)."""
    from transformers import Dinov2Config

    kw = dict(mlp_ratio=4, use_swiglu_ffn=True, image_size=spec.input_res, patch_size=spec.patch,
              layerscale_value=1e-5, layer_norm_eps=1e-6, qkv_bias=True)
    kw.update(spec.kwargs)
    ov = dict(overrides)
    if "depth" in ov:
        ov["num_hidden_layers"] = ov.pop("depth")
    kw.update(ov)
    return Dinov2Config(**kw)


def build_model(spec: EncoderSpec, *, path: Path | None, overrides: dict[str, Any]) -> torch.nn.Module:
    """Random-init ``Dinov2Model`` (path None) or ``Dinov2Model.from_pretrained(path)`` checked complete."""
    from transformers import Dinov2Model

    if path is None:
        return Dinov2Model(make_config(spec, overrides))
    if overrides:
        raise ConfigError(f"{spec.id}: architecture overrides {sorted(overrides)} need pretrained=False.")
    try:
        model, info = Dinov2Model.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
    except Exception as exc:
        raise WeightsMismatchError(f"cannot load {path} as transformers Dinov2Model for {spec.id!r}: "
                                   f"{type(exc).__name__}: {exc}") from None
    W.assert_complete(spec.id, path, list(info.get("missing_keys", [])), list(info.get("unexpected_keys", [])))
    if info.get("mismatched_keys"):
        raise WeightsMismatchError(f"{path}: shape mismatch for {spec.id!r}: {info['mismatched_keys'][:4]}")
    if model.config.hidden_size != spec.embed_dim:
        raise WeightsMismatchError(f"{path}: hidden_size {model.config.hidden_size} != {spec.embed_dim} "
                                   f"of {spec.id!r}; wrong model folder.")
    return model


class HFDinov2Encoder(ZooEncoder):
    """``last_hidden_state[:, 1:]`` (after the final layernorm), CLS as prefix."""

    def forward_tokens(self, x: torch.Tensor) -> EncoderOutput:
        if self.layer is not None:
            out = self.model(pixel_values=x, output_hidden_states=True)
            y = out.hidden_states[self.layer + 1 if self.layer >= 0 else self.layer]
        else:
            y = self.model(pixel_values=x).last_hidden_state
        s = self.spec
        patch = y[:, s.prefix_tokens:]
        if patch.shape[1] != self.grid[0] * self.grid[1]:
            raise DataError(f"{s.id}: got {patch.shape[1]} patch tokens, expected {self.grid}.")
        return EncoderOutput(patch=patch, prefix=y[:, :s.cls_tokens] if s.cls_tokens else None,
                             grid=self.grid, layer=self.layer_name)
