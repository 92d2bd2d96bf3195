"""EMA copies of the denoiser: what sampling uses, and nothing it does not.

The alignment projectors (``projectors.*``: REPA's MLP, iREPA's conv) are training-only — the sampler calls
the net with ``project=False`` — so the EMA copies leave them out: no copy of their weights, no per-step
average over them, no bytes in the checkpoint. REPA's 2048-wide MLP is most of a tiny model's parameters
(4.5 M of 4.9 M on jit-tiny), so averaging it twice per step cost more than the rest of the EMA work.
PixelREPA's adapter is not part of the model and is not averaged either.

The rule for state dicts (:func:`denoiser_state`): an EMA state dict holds the model's keys minus
``projectors.*``. An EMA state dict from an earlier checkpoint that still holds projector keys loads with
those keys dropped (resume, sampling); a model rebuilt from EMA weights (:func:`with_projectors`) takes its
projectors from the raw model's state dict, the only trained projector weights a checkpoint holds.
"""

from __future__ import annotations

import copy
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

#: state-dict prefix of the training-only modules the EMA copies leave out
TRAINING_ONLY = ("projectors.",)


def training_only(key: str) -> bool:
    """Whether state-dict ``key`` belongs to a training-only module (an alignment projector)."""
    return key.startswith(TRAINING_ONLY)


def denoiser_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the training-only keys: what an EMA copy holds and loads."""
    return {k: v for k, v in state.items() if not training_only(k)}


def with_projectors(ema_state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]) -> dict:
    """A full model state dict from EMA weights: the EMA's denoiser (any projector keys an older EMA state
    still holds are dropped) and the raw model's projectors."""
    return {**{k: v for k, v in model_state.items() if training_only(k)}, **denoiser_state(ema_state)}


def denoiser_copy(model: nn.Module) -> nn.Module:
    """A frozen eval-mode copy of ``model`` without its training-only projectors (an empty ``projectors``
    list; the forward skips projection when there is none). The projectors are never copied: the deepcopy
    memo maps them to the empty list."""
    projectors = getattr(model, "projectors", None)
    memo = {id(projectors): nn.ModuleList()} if isinstance(projectors, nn.ModuleList) else {}
    return copy.deepcopy(model, memo).eval().requires_grad_(False)


class DenoiserEMA:
    """One EMA copy of ``model``'s denoiser per decay in ``decays``.

    ``copies[i]`` is the module of decay ``decays[i]``; its parameters are paired with the model's by name
    once, here, so :meth:`update` is one ``foreach`` lerp per copy (on CUDA a few fused kernels instead of
    one per parameter; on CPU the same per-tensor lerp as before, bit for bit).
    """

    def __init__(self, model: nn.Module, decays: Iterable[float]):
        self.decays = [float(d) for d in decays]
        self.copies = [denoiser_copy(model) for _ in self.decays]
        src = dict(model.named_parameters())
        names = [n for n, _ in self.copies[0].named_parameters()] if self.copies else []
        self._src = [src[n] for n in names]
        self._dst = [[dict(c.named_parameters())[n] for n in names] for c in self.copies]

    def __len__(self) -> int:
        return len(self.copies)

    def __iter__(self):
        return iter(self.copies)

    @torch.no_grad()
    def update(self) -> None:
        """Move every copy towards the model: ``ema ← ema + (1 − decay)·(model − ema)``."""
        # torch._foreach_lerp_ is what torch.optim.swa_utils' EMA uses for the same update
        for dst, d in zip(self._dst, self.decays):
            torch._foreach_lerp_(dst, self._src, 1.0 - d)

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        return [c.state_dict() for c in self.copies]

    def load_state_dicts(self, states: Sequence[Mapping[str, torch.Tensor]]) -> None:
        """Load saved EMA states (strictly, after dropping any training-only keys an older checkpoint holds)."""
        for c, sd in zip(self.copies, states):
            c.load_state_dict(denoiser_state(sd))
