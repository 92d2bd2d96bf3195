"""Strict loading: a checkpoint either fills every model weight or fails with :class:`WeightsMismatchError`.

Shared by every backend builder (and the SD-VAE loader) so that no load is ever silently partial.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

from ..errors import WeightsMismatchError


def assert_complete(eid: str, path: Any, missing: list[str], unexpected: list[str] | None = None,
                    allowed_unexpected: tuple[str, ...] = ()) -> None:
    """Raise :class:`WeightsMismatchError` if any model weight stayed unloaded (never a silent random model)."""
    unexpected = [k for k in (unexpected or []) if not k.startswith(allowed_unexpected)] if allowed_unexpected \
        else list(unexpected or [])
    if missing or unexpected:
        msg = [f"checkpoint {path} does not fit encoder {eid!r}"]
        if missing:
            msg.append(f"{len(missing)} model weight(s) not in the checkpoint, e.g. {missing[:4]}")
        if unexpected:
            msg.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:4]}")
        msg.append("it is the wrong file or key layout for this encoder; check encoders.yaml weights.files "
                   "and the source")
        raise WeightsMismatchError("; ".join(msg) + ".")


def short_error(exc: Exception, n: int = 3) -> str:
    """A load_state_dict error with its first ``n`` size mismatches and their count."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    mism = [ln for ln in lines if ln.startswith("size mismatch")]
    if len(mism) <= n:
        return " ".join(lines)
    return " ".join(mism[:n]) + f" ... ({len(mism)} shape mismatches in all)"


_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def record_loads() -> Iterator[list[Any]]:
    """Record every ``nn.Module.load_state_dict`` result inside the block (to catch non-strict loads)."""
    import torch

    calls: list[Any] = []
    orig = torch.nn.Module.load_state_dict

    def wrapped(self, state_dict, strict=True, assign=False):
        try:
            res = orig(self, state_dict, strict=False, assign=assign)
        except RuntimeError as exc:  # shape mismatch
            raise WeightsMismatchError(f"checkpoint shapes do not fit the model: {short_error(exc)}") from None
        calls.append(res)
        return res

    with _PATCH_LOCK:
        torch.nn.Module.load_state_dict = wrapped
        try:
            yield calls
        finally:
            torch.nn.Module.load_state_dict = orig
