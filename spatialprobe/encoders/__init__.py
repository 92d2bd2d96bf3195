"""The encoder zoo: ``get("sam2")`` -> an encoder mapping uint8 ``[B,3,H,W]`` to 16×16 patch tokens.

The zoo is data (``spatialprobe/encoders/encoders.yaml``). One-way layers, each importing only those
before it: :mod:`.backends` (the backend table: every backend name and the module that builds it) <
:mod:`.spec` (the catalog: yaml rows and rows added at run time) < the backend modules
(:mod:`.timm_backend`, :mod:`.hf_backend`, :mod:`.classical`, loaded by name from the table) <
:mod:`.weights` (offline checkpoints) and :mod:`.variants` (``BASE@name=value``) < :mod:`.registry` (the
one factory, :func:`get`). Importing this package does not import timm or transformers.
"""

from __future__ import annotations

from .base import Encoder, EncoderOutput
from .registry import (add_encoder, get, list_encoders, list_specs, load_encoder, register_backend, spec,
                       specs)
from .spec import EncoderSpec, WeightsSpec, resolve
from .variants import Variant, VariantEncoder, is_variant, parse_variant

__all__ = ["Encoder", "EncoderOutput", "EncoderSpec", "WeightsSpec", "add_encoder", "get", "list_encoders",
           "list_specs", "load_encoder", "register_backend", "resolve", "spec", "specs",
           "Variant", "VariantEncoder", "is_variant", "parse_variant"]
