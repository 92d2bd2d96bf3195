"""Pure tensor transforms on any encoder's tokens (no state, no weights), shared by the encoder variants,
the injection ablation, the REPA targets, the similarity maps and the metrics.

``mix_cls`` injects the global (CLS) token into every patch token, the global-information ablation of the
study (iREPA's ``dinov2mixed`` uses the official convex form with α = 0.1):

- ``form="official"``: ``α·cls + (1 − α)·patch`` (convex; α = 0 leaves the tokens unchanged, α = 1 gives
  the CLS everywhere);
- ``form="additive"``: ``patch + α·cls`` (the paper's written form).

``mix_mean`` does the same with the mean patch token for encoders without a CLS (SAM2, SigLIP, PE-G, ...).

``spatial_norm`` is iREPA's spatial normalisation of tokens over the token axis (the REPA target transform
and the ``@spnorm=γ`` variant).
"""

from __future__ import annotations

import torch

from .errors import ConfigError, DataError

SPNORM_EPS = 1e-6  # added to the std, not the variance
FORMS = ("official", "additive")


def _mix(patch: torch.Tensor, glob: torch.Tensor, alpha: float, form: str) -> torch.Tensor:
    if form not in FORMS:
        raise ConfigError(f"form must be one of {FORMS}, not {form!r}.")
    g = glob.unsqueeze(1) if glob.dim() == patch.dim() - 1 else glob
    if form == "official":
        return alpha * g + (1.0 - alpha) * patch
    return patch + alpha * g


def mix_cls(patch: torch.Tensor, cls: torch.Tensor, alpha: float, form: str = "official") -> torch.Tensor:
    """Mix the CLS token into every patch token.

    Args:
        patch: ``[B, T, D]`` patch tokens.
        cls: ``[B, D]`` or ``[B, 1, D]`` (e.g. ``EncoderOutput.cls``).
        alpha: mixing weight.
        form: ``"official"`` (α·cls + (1−α)·patch) or ``"additive"`` (patch + α·cls).

    Returns:
        ``[B, T, D]`` tensor, same dtype as ``patch``.
    """
    if cls is None:
        raise DataError("mix_cls: this encoder has no CLS token (prefix is None); use mix_mean instead.")
    if patch.dim() != 3:
        raise DataError(f"mix_cls: patch must be [B,T,D], got {tuple(patch.shape)}.")
    c = cls.reshape(cls.shape[0], -1, cls.shape[-1])
    if c.shape[1] != 1 or c.shape[0] != patch.shape[0] or c.shape[-1] != patch.shape[-1]:
        raise DataError(f"mix_cls: cls must be [B,D] or [B,1,D] matching patch {tuple(patch.shape)}, "
                        f"got {tuple(cls.shape)}.")
    return _mix(patch, c.to(patch.dtype), alpha, form)


def mix_mean(patch: torch.Tensor, alpha: float, form: str = "official") -> torch.Tensor:
    """Mix the mean patch token into every patch token (for encoders without CLS); forms as :func:`mix_cls`."""
    if patch.dim() != 3:
        raise DataError(f"mix_mean: patch must be [B,T,D], got {tuple(patch.shape)}.")
    return _mix(patch, patch.mean(dim=1, keepdim=True), alpha, form)


def spatial_norm(tokens: torch.Tensor, gamma: float) -> torch.Tensor:
    """iREPA spatial normalisation: ``(x − γ·mean_T x) / (std_T x + 1e-6)``, in fp32.

    Per image and channel over the token axis (dim 1 of ``[B, T, D]``, or dim 0 of ``[T, D]``); ``std`` is
    unbiased (N − 1), and the epsilon is added to the std. Returns a new float32 tensor.
    """
    if tokens.ndim not in (2, 3):
        raise DataError(f"spatial_norm expects tokens [B, T, D] or [T, D], got shape {tuple(tokens.shape)}.")
    dim = tokens.ndim - 2
    if tokens.shape[dim] < 2:
        raise DataError(f"spatial_norm needs at least 2 tokens for an unbiased std; got T={tokens.shape[dim]}.")
    x = tokens.float()
    mean = x.mean(dim=dim, keepdim=True)
    std = x.std(dim=dim, keepdim=True, unbiased=True)
    return (x - gamma * mean) / (std + SPNORM_EPS)
