"""Synthesise official release files from the layout descriptions in ``tests/data/weights-layouts/*.json``.

Each JSON gives the exact wrapper objects, keys, shapes and dtypes of one release file or folder (depth
reduced where it says so). :func:`synthesise` writes random values under the release name. Text-tower token
embeddings (tens to hundreds of MB, never read by a vision encoder) are written as constant tensors with a
one-element storage (``torch.save``) or as a sparse file region (safetensors): exact key, shape and dtype,
no disk or time cost. ``depth=`` repeats the block naming up to a full-depth model (for ``weights --check``).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import struct
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data" / "weights-layouts"
_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64,
          "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
_ST = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
_BLOCK = re.compile(r"(blocks|layers|resblocks|layer)\.(\d+)\.")


def layout(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def _big_unused(key: str) -> bool:
    return "token_embedding" in key


def _value(key: str, shape: list[int], dtype: torch.dtype, gen: torch.Generator, zeros_only: bool) -> torch.Tensor:
    if zeros_only or _big_unused(key):
        return torch.zeros((), dtype=dtype).expand(shape) if shape else torch.zeros((), dtype=dtype)
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    t = torch.randn(shape, generator=gen) * 0.2
    if key.endswith(("norm_std", "norm.weight", "ln_1.weight", "ln_2.weight")):
        t = 1 + t
    return t.to(dtype)


def _expand_depth(entries: dict, depth: int | None, reduced: int | None) -> dict:
    if depth is None or reduced is None:
        return entries
    out = {}
    for k, v in entries.items():
        m = _BLOCK.search(k)
        if m and "text" not in k and not k.startswith(("transformer.", "text_model.")):
            if int(m.group(2)) != 0:
                continue
            for i in range(depth):
                out[k[:m.start()] + f"{m.group(1)}.{i}." + k[m.end():]] = v
        else:
            out[k] = v
    return out


def _build(node, gen, zeros_only, depth, reduced):
    if "dict" in node:
        return {k: _build(v, gen, zeros_only, depth, reduced) for k, v in node["dict"].items()}
    if "state_dict" in node:
        ents = _expand_depth(node["state_dict"], depth, reduced)
        return {k: _value(k, s, _TORCH[d], gen, zeros_only) for k, (s, d) in ents.items()}
    if "argparse.Namespace" in node:
        args = {}
        for k, v in node["argparse.Namespace"].items():
            try:
                args[k] = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                args[k] = v
        return argparse.Namespace(**args)
    raise ValueError(f"unknown node {list(node)}")


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor | tuple[list[int], torch.dtype]]) -> None:
    """A valid .safetensors file; ``(shape, dtype)`` entries become zero-filled sparse regions."""
    header, offset, parts = {}, 0, []
    for k in sorted(tensors):
        v = tensors[k]
        shape, dtype = (list(v.shape), v.dtype) if isinstance(v, torch.Tensor) else v
        n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[k] = {"dtype": _ST[dtype], "shape": shape, "data_offsets": [offset, offset + n]}
        parts.append(v if isinstance(v, torch.Tensor) else None)
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        base = f.tell()
        for k, t in zip(sorted(tensors), parts):
            if t is not None:
                f.seek(base + header[k]["data_offsets"][0])
                f.write(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        f.truncate(base + offset)


def synthesise(name: str, root: Path, *, seed: int = 0, depth: int | None = None, zeros_only: bool = False,
               dtype: torch.dtype | None = None, config_overrides: dict | None = None) -> Path:
    """Write the release file(s) of layout ``name`` under ``root``; returns the release path.

    ``dtype`` re-types floating tensors of safetensors files (e.g. a bf16 HF folder).
    """
    spec = layout(name)
    gen = torch.Generator().manual_seed(seed)
    reduced = spec.get("depth_reduced_to")
    for rel, fmt in spec["files"].items():
        out = root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if "json" in fmt:
            cfg = dict(fmt["json"])
            if depth is not None:
                if "vision_config" in cfg:
                    cfg["vision_config"] = dict(cfg["vision_config"], num_hidden_layers=depth)
                elif "num_hidden_layers" in cfg:
                    cfg["num_hidden_layers"] = depth
            if dtype is not None:
                cfg["dtype"] = str(dtype).replace("torch.", "")
            cfg.update(config_overrides or {})
            out.write_text(json.dumps(cfg, indent=1))
        elif "torch.save" in fmt:
            torch.save(_build(fmt["torch.save"], gen, zeros_only, depth, reduced), out)
        elif "safetensors" in fmt:
            ents = _expand_depth(fmt["safetensors"], depth, reduced)
            tensors: dict = {}
            for k, (s, d) in ents.items():
                dt = _TORCH[d]
                if dtype is not None and dt.is_floating_point:
                    dt = dtype
                tensors[k] = (s, dt) if zeros_only or _big_unused(k) else _value(k, s, dt, gen, False)
            write_safetensors(out, tensors)
        else:
            raise ValueError(f"{name}: unknown file format {list(fmt)}")
    return root / spec["release_path"]
