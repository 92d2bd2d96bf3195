"""Release layouts: recognise a checkpoint from its own wrappers and keys (never from its file name) and
convert it, in one step per layout, to the keys the backend's strict load expects.

Every zoo row states the layouts it accepts (``encoders.yaml`` ``weights.format``). Reading is always
``torch.load(weights_only=True)`` or safetensors; the only class ever allow-listed is ``argparse.Namespace``
(the ``args`` of RADIO's torch hub file), scoped to that one retry and accepted only when the file then turns
out to be a ``radio-hub`` file. Half-precision tensors are upcast to fp32 right after reading, before any
conversion or resampling. With ``meta=True`` nothing but the headers is read (tensors on the meta device), so
a file can be checked without loading its values.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import WeightsMismatchError

log = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Layout:
    """One release layout: its name (as in ``weights.format``), what it is, and whether it is a folder."""

    name: str
    what: str
    folder: bool = False
    cache_dirs: tuple[str, ...] = ()  #: extra folders its publisher's tools cache it in (``~`` expanded)


LAYOUTS: dict[str, Layout] = {x.name: x for x in (
    Layout("sam2-full", "torch.save({'model': SAM2Base.state_dict()}): whole SAM2, Hiera trunk under "
                        "image_encoder.trunk.*, MLP keys mlp.layers.0/1"),
    Layout("timm-hiera", "timm Hiera/SAM2 trunk state dict (blocks.*.mlp.fc1, no image_encoder prefix)"),
    Layout("pe-clip", "raw state dict of the whole PE CLIP: text tower at top level, vision tower under visual.*"),
    Layout("pe-vision", "raw state dict of a PE VisionTransformer (conv1, class_embedding, positional_embedding, "
                        "transformer.resblocks.*), unprefixed"),
    Layout("radio-hub", "RADIO torch hub file {'state_dict': {base_model.*, input_conditioner.*, heads}, "
                        "'args': argparse.Namespace}, fp16"),
    Layout("radio-hf", "RADIO Hugging Face model.safetensors (radio_model.model.* keys)"),
    Layout("openai-clip", "OpenAI CLIP TorchScript archive or state dict (visual.* plus context_length / "
                          "vocab_size entries)", cache_dirs=("~/.cache/clip",)),
    Layout("moco-v3", "MoCo v3 checkpoint {'state_dict': module.base_encoder.* / module.momentum_encoder.*}, "
                      "possibly with the blocks.N.normN / blocks.N.mlp.fcN names of the iREPA copy"),
    Layout("dinov3-meta", "Meta DINOv3 state dict (storage_tokens, rope periods, qkv bias_mask)"),
    Layout("dinov2-hub", "DINOv2 torch hub state dict (mask_token, layer scale ls1/ls2.gamma)"),
    Layout("mae", "MAE pretrain file {'model': ViT state dict}"),
    Layout("ijepa", "I-JEPA file {'encoder': module.* ViT, 'target_encoder', 'predictor', ...}"),
    Layout("timm", "timm / DINO-style ViT state dict (patch_embed.proj, blocks.N.attn.qkv, ...)"),
    Layout("hf-siglip", "transformers SiglipModel / SiglipVisionModel folder (config.json + model.safetensors)",
           folder=True),
    Layout("hf-dinov2", "transformers Dinov2Model folder (config.json + model.safetensors)", folder=True),
)}


@dataclass
class Checkpoint:
    """A checkpoint read from disk, its recognised layout and its state dict after that layout's conversion."""

    path: Path
    layout: str
    state_dict: Tensors
    config: dict[str, Any] | None = None  #: config.json of a folder layout
    extras: dict[str, Any] = field(default_factory=dict)  #: layout facts (e.g. RADIO's input conditioner)


# ---------------------------------------------------------------------------------------------- reading

_HALF = (torch.float16, torch.bfloat16)
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def upcast(sd: Tensors) -> Tensors:
    """fp16/bf16 tensors -> fp32 (before any resampling: resampling in half precision loses ~1e-4)."""
    return {k: (v.float() if isinstance(v, torch.Tensor) and v.dtype in _HALF else v) for k, v in sd.items()}


def read_safetensors(path: Path, *, meta: bool = False, prefix: str = "") -> Tensors:
    """Tensors of a .safetensors file (only keys starting with ``prefix``); ``meta`` reads the header only."""
    from safetensors import safe_open

    out: Tensors = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for k in f.keys():
                if not k.startswith(prefix):
                    continue
                if meta:
                    sl = f.get_slice(k)
                    out[k] = torch.empty(sl.get_shape(), dtype=_ST_DTYPES[sl.get_dtype()], device="meta")
                else:
                    out[k] = f.get_tensor(k)
    except Exception as exc:  # noqa: BLE001 - any read error is about this file
        raise WeightsMismatchError(f"cannot read {path}: {type(exc).__name__}: {exc} (truncated or not a "
                                   f"safetensors file; re-fetch it).") from None
    return out


def _torch_load(path: Path, meta: bool) -> Any:
    return torch.load(str(path), map_location="meta" if meta else "cpu", weights_only=True)


def read_file(path: str | Path, *, meta: bool = False) -> tuple[Any, bool]:
    """The raw object of a checkpoint file and whether ``argparse.Namespace`` had to be allow-listed.

    Order: safetensors by suffix; ``torch.load(weights_only=True)``; on a refusal that names
    ``argparse.Namespace`` only, the same load with that one class allow-listed; a TorchScript archive
    (OpenAI CLIP) through ``torch.jit.load``. Anything else is a :class:`WeightsMismatchError`.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path, meta=meta), False
    try:
        return _torch_load(path, meta), False
    except Exception as exc:  # noqa: BLE001
        first = exc
    if "argparse.Namespace" in str(first):
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                return _torch_load(path, meta), True
        except Exception as exc:  # noqa: BLE001
            first = exc
    try:
        import zipfile

        with zipfile.ZipFile(path) as z:
            is_script = any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except Exception:  # noqa: BLE001 - not a zip: not TorchScript either
        is_script = False
    if is_script:
        try:
            return torch.jit.load(str(path), map_location="cpu").state_dict(), False
        except Exception as exc:  # noqa: BLE001
            first = exc
    msg = str(first).strip().splitlines()[0].split(". ")[0][:300] if str(first).strip() else type(first).__name__
    raise WeightsMismatchError(f"cannot read checkpoint {path}: {msg}. The file is truncated, corrupt or not a "
                               f"weights file (only tensors are ever unpickled); re-fetch it.") from None


# ---------------------------------------------------------------------------------------------- recognising

def _tensors(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _has(sd: dict, *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in sd)


def recognise(obj: Any, *, namespace: bool = False) -> tuple[str, Tensors]:
    """(layout name, the state dict inside its wrapper) of a raw checkpoint object.

    Raises :class:`WeightsMismatchError` naming the top-level keys when no layout fits.
    """
    if not isinstance(obj, dict):
        raise WeightsMismatchError(f"the file holds a {type(obj).__name__}, not a state dict.")
    inner = obj.get("state_dict")
    if namespace or "args" in obj:
        if isinstance(inner, dict) and _has(inner, "base_model."):
            return "radio-hub", inner
        if namespace:
            raise WeightsMismatchError("the file needs argparse.Namespace to be read but is not a RADIO torch hub "
                                       "file (no state_dict with base_model.* keys); refusing it.")
    if isinstance(obj.get("model"), dict) and _has(obj["model"], "image_encoder.trunk."):
        return "sam2-full", obj["model"]
    if isinstance(inner, dict) and _has(inner, "module.base_encoder.", "base_encoder."):
        return "moco-v3", inner
    if isinstance(obj.get("encoder"), dict) and _tensors(obj["encoder"]):
        return "ijepa", obj["encoder"]
    if isinstance(obj.get("model"), dict) and _tensors(obj["model"]) and _has(obj["model"], "blocks.", "patch_embed."):
        return "mae", obj["model"]
    sd = obj
    for k in ("state_dict", "model", "module"):
        if isinstance(sd.get(k), dict) and _tensors(sd[k]):
            sd = sd[k]
    if not _tensors(sd):
        keys = list(obj)[:8]
        raise WeightsMismatchError(f"no state dict found (top-level keys {keys}).")
    if _has(sd, "module.base_encoder.", "base_encoder."):
        return "moco-v3", sd
    if _has(sd, "radio_model.model."):
        return "radio-hf", sd
    if _has(sd, "base_model.patch_generator."):
        return "radio-hub", sd
    if _has(sd, "image_encoder.trunk."):
        return "sam2-full", sd
    if "visual.conv1.weight" in sd:
        if "context_length" in sd or "vocab_size" in sd or not _has(sd, "visual.attn_pool."):
            return "openai-clip", sd
        return "pe-clip", sd
    if "conv1.weight" in sd and ("positional_embedding" in sd or _has(sd, "transformer.resblocks.")):
        return "pe-vision", sd
    if "storage_tokens" in sd:
        return "dinov3-meta", sd
    if "pos_embed_window" in sd or _has(sd, "blocks.0.mlp.layers."):
        return "timm-hiera", sd
    if "mask_token" in sd and _has(sd, "blocks.0.ls1."):
        return "dinov2-hub", sd
    if _has(sd, "patch_embed.", "blocks.0.", "module.patch_embed."):
        return "timm", sd
    raise WeightsMismatchError(f"unknown key layout (keys e.g. {list(sd)[:5]}); it is not one of the release "
                               f"layouts {sorted(LAYOUTS)}.")


# ---------------------------------------------------------------------------------------------- converting

def _sam2_full(sd: Tensors) -> Tensors:
    p = "image_encoder.trunk."
    return {k[len(p):].replace("mlp.layers.0.", "mlp.fc1.").replace("mlp.layers.1.", "mlp.fc2."): v
            for k, v in sd.items() if k.startswith(p)}


def _timm_hiera(sd: Tensors) -> Tensors:
    # the classifier head of a timm hub file is not part of the trunk the tokens come from
    return {k.replace("mlp.layers.0.", "mlp.fc1.").replace("mlp.layers.1.", "mlp.fc2."): v for k, v in sd.items()
            if not k.startswith("head.")}


def _pe_clip(sd: Tensors) -> Tensors:
    # only the vision tower: the text tower has its own positional_embedding [context, width]
    return {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}


def _radio_hub(sd: Tensors) -> Tensors:
    # the hub's base_model is the HF file's radio_model.model (the ViT); the rest is dropped by _convert_radio
    out = {}
    for k, v in sd.items():
        if k.startswith("base_model."):
            out["radio_model.model." + k[len("base_model."):]] = v
        elif k.startswith("input_conditioner."):
            out[k] = v
    return out


_MOCO_RENAME = re.compile(r"^blocks\.(\d+)\.(norm|mlp\.fc)(\d+)\.")


def _moco_v3(sd: Tensors) -> Tensors:
    out = {}
    keep = [k for k in sd if "base_encoder." in k] or list(sd)  # drop the momentum encoder / predictor
    for k in keep:
        v = sd[k]
        for p in ("module.base_encoder.", "base_encoder.", "module.", "encoder."):
            if k.startswith(p):
                k = k[len(p):]
                break
        if k.startswith(("head.", "fc_norm.")):
            continue
        m = _MOCO_RENAME.match(k)
        # the iREPA copy of the ViT-L file names blocks 13/14 norm13, mlp.fc13, ...: 'normN'/'fcN' with N the
        # block index (N >= 3, so the genuine norm1/norm2 and fc1/fc2 are never touched) is the first of the pair
        if m and m.group(1) == m.group(3) and int(m.group(1)) >= 3:
            k = f"blocks.{m.group(1)}.{m.group(2)}1." + k[m.end():]
        out[k] = v
    return out


def _identity(sd: Tensors) -> Tensors:
    return dict(sd)


def _strip_module(sd: Tensors) -> Tensors:
    # DDP-saved files (I-JEPA's encoder, some timm-style files) carry a 'module.' prefix
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


CONVERT: dict[str, Callable[[Tensors], Tensors]] = {
    "sam2-full": _sam2_full, "timm-hiera": _timm_hiera, "pe-clip": _pe_clip, "pe-vision": _identity,
    "radio-hub": _radio_hub, "radio-hf": _identity, "openai-clip": _identity, "moco-v3": _moco_v3,
    "dinov3-meta": _identity, "dinov2-hub": _identity, "mae": _identity, "ijepa": _strip_module, "timm": _strip_module,
}


# ---------------------------------------------------------------------------------------------- folders

def read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise WeightsMismatchError(f"{folder}: unreadable config.json ({exc}).") from None


def folder_layout(folder: Path) -> str:
    cfg = read_config(folder)
    mt = cfg.get("model_type", "")
    if mt in ("siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model"):
        return "hf-siglip"
    if mt == "dinov2":
        return "hf-dinov2"
    raise WeightsMismatchError(f"{folder}: a transformers folder of model_type {mt!r} "
                               f"(architectures {cfg.get('architectures')}), not one of the zoo's layouts "
                               f"(hf-siglip: siglip, hf-dinov2: dinov2).")


def folder_tensors(folder: Path, *, meta: bool = False, prefix: str = "") -> Tensors:
    """The tensors of a transformers folder (single or sharded safetensors; ``prefix`` filters keys)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise WeightsMismatchError(f"{folder}: no model.safetensors (or sharded index) next to config.json; "
                                   f"fetch the whole folder.")
    out: Tensors = {}
    for f in files:
        out.update(read_safetensors(folder / f, meta=meta, prefix=prefix))
    return out


def hf_siglip_to_timm(sd: Tensors) -> Tensors:
    """transformers SigLIP vision keys (``vision_model.*`` or unprefixed) -> timm ViT (SigLIP MAP head) keys."""
    p = "vision_model." if any(k.startswith("vision_model.") for k in sd) else ""
    src = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    out: Tensors = {}
    layers = sorted({int(k.split(".")[2]) for k in src if k.startswith("encoder.layers.")})
    need = [f"encoder.layers.{i}.{n}.{t}" for i in layers for t in ("weight", "bias")
            for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                      "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2")]
    lost = [p + k for k in need if k not in src]
    if lost:
        raise WeightsMismatchError(f"{len(lost)} vision weight(s) not in the checkpoint, e.g. {lost[:4]}")
    for i in layers:
        a, b = f"encoder.layers.{i}.", f"blocks.{i}."
        at = a + "self_attn."
        out[b + "attn.qkv.weight"] = torch.cat([src[at + f"{n}_proj.weight"] for n in "qkv"], 0)
        out[b + "attn.qkv.bias"] = torch.cat([src[at + f"{n}_proj.bias"] for n in "qkv"], 0)
        for s, d in (("self_attn.out_proj", "attn.proj"), ("layer_norm1", "norm1"), ("layer_norm2", "norm2"),
                     ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for t in ("weight", "bias"):
                out[f"{b}{d}.{t}"] = src[f"{a}{s}.{t}"]
    ren = {"embeddings.patch_embedding.weight": "patch_embed.proj.weight",
           "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
           "post_layernorm.weight": "norm.weight", "post_layernorm.bias": "norm.bias",
           "head.probe": "attn_pool.latent",
           "head.attention.out_proj.weight": "attn_pool.proj.weight",
           "head.attention.out_proj.bias": "attn_pool.proj.bias",
           "head.layernorm.weight": "attn_pool.norm.weight", "head.layernorm.bias": "attn_pool.norm.bias",
           "head.mlp.fc1.weight": "attn_pool.mlp.fc1.weight", "head.mlp.fc1.bias": "attn_pool.mlp.fc1.bias",
           "head.mlp.fc2.weight": "attn_pool.mlp.fc2.weight", "head.mlp.fc2.bias": "attn_pool.mlp.fc2.bias"}
    for s, d in ren.items():
        if s in src:
            out[d] = src[s]
    if "embeddings.position_embedding.weight" in src:
        out["pos_embed"] = src["embeddings.position_embedding.weight"][None]
    if "head.attention.in_proj_weight" in src:
        w, b = src["head.attention.in_proj_weight"], src["head.attention.in_proj_bias"]
        d = w.shape[1]
        out["attn_pool.q.weight"], out["attn_pool.kv.weight"] = w[:d], w[d:]
        out["attn_pool.q.bias"], out["attn_pool.kv.bias"] = b[:d], b[d:]
    used = {f"encoder.layers.{i}." for i in layers}
    left = [k for k in src if not k.startswith(tuple(used)) and k not in ren and k not in (
        "embeddings.position_embedding.weight", "head.attention.in_proj_weight", "head.attention.in_proj_bias")]
    for k in left:  # anything unknown stays visible to the strict load
        out["unconverted." + k] = src[k]
    return out


# ---------------------------------------------------------------------------------------------- entry point

def open_checkpoint(path: str | Path, formats: tuple[str, ...] = (), *, eid: str = "?",
                    meta: bool = False) -> Checkpoint:
    """Read ``path``, recognise its layout, check it is one of ``formats`` (when given) and convert it.

    Folder layouts (``hf-*``) return the raw folder tensors (``hf-siglip`` converted to timm keys).
    """
    path = Path(path)
    if path.is_dir():
        layout = folder_layout(path)
        cfg = read_config(path)
        check_format(layout, formats, eid, path)
        if layout == "hf-siglip":
            try:
                sd = upcast(hf_siglip_to_timm(folder_tensors(path, meta=meta, prefix="vision_model.")
                                              or folder_tensors(path, meta=meta)))
            except WeightsMismatchError as exc:
                raise WeightsMismatchError(f"{path} does not fit encoder {eid!r}: {exc}") from None
        else:
            sd = upcast(folder_tensors(path, meta=meta))
        return Checkpoint(path, layout, sd, config=cfg)
    try:
        obj, namespace = read_file(path, meta=meta)
    except WeightsMismatchError as exc:
        raise WeightsMismatchError(f"encoder {eid!r}: {exc}") from None
    try:
        layout, sd = recognise(obj, namespace=namespace)
    except WeightsMismatchError as exc:
        raise WeightsMismatchError(f"{path} does not fit encoder {eid!r}: {exc}") from None
    check_format(layout, formats, eid, path)
    extras: dict[str, Any] = {}
    if layout == "radio-hub" and isinstance(obj.get("args"), argparse.Namespace):
        extras["args"] = vars(obj["args"])
    return Checkpoint(path, layout, CONVERT[layout](upcast(sd)), extras=extras)


def check_format(layout: str, formats: tuple[str, ...], eid: str, path: Path) -> None:
    if formats and layout not in formats:
        raise WeightsMismatchError(
            f"{path} is a {layout!r} file ({LAYOUTS[layout].what}); encoder {eid!r} takes "
            f"{', '.join(formats)}. It is the wrong file for this encoder; see `spatialprobe weights "
            f"--encoder {eid}` for the right one.")
