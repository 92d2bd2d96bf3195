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
from .loading import assert_complete
from .module import ZooEncoder
from .spec import EncoderSpec


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


def _check_meta(spec: EncoderSpec, path: Path) -> torch.nn.Module:
    """Key/shape check of a folder against the model its config.json describes, reading headers only."""
    from transformers import Dinov2Config, Dinov2Model

    from . import layouts as L

    ck = L.open_checkpoint(path, spec.weights.format, eid=spec.id, meta=True)
    cfg = {k: v for k, v in ck.config.items() if k not in ("architectures", "transformers_version", "dtype",
                                                               "torch_dtype", "model_type")}
    with torch.device("meta"):
        model = Dinov2Model(Dinov2Config(**cfg))
    have = {k[len("dinov2."):] if k.startswith("dinov2.") else k: v for k, v in ck.state_dict.items()}
    want = model.state_dict()
    if not all(k in have for k in want):  # the file keeps the names transformers saves (and renames at load)
        want = _saved_names(want)
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want and not k.startswith("mask_token")]
    assert_complete(spec.id, path, missing, unexpected)
    bad = [f"{k} {tuple(have[k].shape)} != {tuple(v.shape)}" for k, v in want.items()
           if k in have and tuple(have[k].shape) != tuple(v.shape)]
    if bad:
        raise WeightsMismatchError(f"{path}: shape mismatch for {spec.id!r}: {bad[:4]}")
    _check_width(spec, path, model)
    return model


#: module names of transformers >= 5 Dinov2Model -> the names its folders are saved with (renamed back at load)
_SAVED = (("attention.q_proj.", "attention.attention.query."), ("attention.k_proj.", "attention.attention.key."),
          ("attention.v_proj.", "attention.attention.value."), ("attention.o_proj.", "attention.output.dense."),
          ("mlp.down_proj.", "mlp.weights_out."))


def _saved_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if ".mlp.up_proj." in k:
            continue
        if ".mlp.gate_proj." in k:  # gate and up are one fused weights_in tensor in the file
            out[k.replace(".mlp.gate_proj.", ".mlp.weights_in.")] = torch.empty(
                (2 * v.shape[0], *v.shape[1:]), device="meta")
            continue
        for a, b in _SAVED:
            k = k.replace(a, b)
        out[k] = v
    return out


def _check_width(spec: EncoderSpec, path: Path, model: torch.nn.Module) -> None:
    if model.config.hidden_size != spec.embed_dim:
        raise WeightsMismatchError(f"{path}: hidden_size {model.config.hidden_size} != {spec.embed_dim} "
                                   f"of {spec.id!r}; wrong model folder.")


def build_model(spec: EncoderSpec, *, path: Path | None, overrides: dict[str, Any],
                meta: bool = False) -> torch.nn.Module:
    """Random-init ``Dinov2Model`` (path None) or ``Dinov2Model.from_pretrained(path)`` in fp32, checked complete.

    The folder is always loaded in float32: transformers >= 5 defaults to ``dtype="auto"``, which would turn
    a bf16/fp16 folder into a half-precision model. ``meta=True`` checks keys and shapes only.
    """
    from transformers import Dinov2Model

    if path is None:
        return Dinov2Model(make_config(spec, overrides))
    if overrides:
        raise ConfigError(f"{spec.id}: architecture overrides {sorted(overrides)} need pretrained=False.")
    if meta:
        return _check_meta(spec, path)
    from . import layouts as L

    if path.is_dir():
        layout = L.folder_layout(path)
        L.check_format(layout, spec.weights.format, spec.id, path)
    try:
        model, info = Dinov2Model.from_pretrained(str(path), local_files_only=True, output_loading_info=True,
                                                  dtype=torch.float32)
    except Exception as exc:
        raise WeightsMismatchError(f"cannot load {path} as transformers Dinov2Model for {spec.id!r}: "
                                   f"{type(exc).__name__}: {exc}") from None
    assert_complete(spec.id, path, list(info.get("missing_keys", [])), list(info.get("unexpected_keys", [])))
    if info.get("mismatched_keys"):
        raise WeightsMismatchError(f"{path}: shape mismatch for {spec.id!r}: {info['mismatched_keys'][:4]}")
    _check_width(spec, path, model)
    return model.float()


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
