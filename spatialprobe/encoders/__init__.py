"""The encoder zoo: ``get("sam2")`` -> an encoder mapping uint8 ``[B,3,H,W]`` to 16×16 patch tokens.

The zoo is data (``encoders.yaml``); backends live in :mod:`.timm_backend`, :mod:`.hf_backend` and
:mod:`.classical`. Importing this package does not import timm or transformers.
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
