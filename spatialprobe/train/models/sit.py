"""SiT backbone (latent space) with REPA/iREPA projectors, and its linear-path v-prediction objective.

Architecture as in SiT/REPA: patchify conv, fixed 2-D sin-cos position embedding, adaLN-Zero blocks (LayerNorm
without affine, attention with qkv bias, GELU-tanh MLP ratio 4), null class ``num_classes`` for guidance.
Time convention: ``x_t = (1 − t)·x + t·ε`` (t = 1 is noise), target ``v = ε − x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..repa import build_projector
from .common import BackboneConfig, DiffusionBackbone, LabelEmbedder, TimestepEmbedder, drop_labels, modulate, sincos_2d


@dataclass
class SiTConfig(BackboneConfig):
    """Shape of a SiT model. ``input_size`` is the latent side (32 for 256-px images through an f8 VAE)."""

    depth: int = 28
    hidden: int = 1152
    heads: int = 16
    qk_norm: bool = False


VARIANTS: dict[str, dict] = {
    "sit-b/2": dict(depth=12, hidden=768, heads=12, patch=2),
    "sit-l/2": dict(depth=24, hidden=1024, heads=16, patch=2),
    "sit-xl/2": dict(depth=28, hidden=1152, heads=16, patch=2),
    # CPU-sized: 8x8x4 latent -> 4x4 tokens, aligned after block 2
    "sit-tiny": dict(depth=4, hidden=64, heads=4, patch=2, input_size=8, encoder_depth=2),
}


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qk_norm: bool = False):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class SiTBlock(nn.Module):
    """Pre-LN transformer block with adaLN-Zero (shift/scale/gate for attention and MLP)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads, qk_norm)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, hidden))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sa, ca, ga, sm, cm, gm = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + ga.unsqueeze(1) * self.attn(modulate(self.norm1(x), sa, ca))
        return x + gm.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sm, cm))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SiT(DiffusionBackbone):
    """SiT with REPA projectors at block ``encoder_depth``.

    ``forward(x, t, y)`` returns ``(v̂, zs)``: the predicted velocity ``[B, C, H, W]`` and one projected token
    tensor ``[B, T, D_i]`` per teacher (empty list when there is no teacher).
    """

    family = "sit"

    def __init__(self, cfg: SiTConfig):
        super().__init__()
        self.cfg = cfg
        h, p = cfg.hidden, cfg.patch
        self.x_embedder = nn.Conv2d(cfg.in_channels, h, p, stride=p, bias=True)
        self.t_embedder = TimestepEmbedder(h)
        self.y_embedder = LabelEmbedder(cfg.num_classes, h)
        self.register_buffer("pos_embed", sincos_2d(h, cfg.grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(SiTBlock(h, cfg.heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.depth))
        self.projectors = nn.ModuleList(build_projector(cfg.projector, h, d, kernel_size=cfg.kernel_size, grid=cfg.grid)
                                        for d in cfg.z_dims)
        self.final_layer = FinalLayer(h, p * p * cfg.in_channels)
        self._init_weights()

    def _embed_convs(self) -> list[nn.Conv2d]:
        return [self.x_embedder]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, project: bool = True
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
        c = self.t_embedder(t) + self.y_embedder(y)
        zs: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            x = blk(x, c)
            if project and i + 1 == self.cfg.encoder_depth and len(self.projectors):
                zs = [proj(x) for proj in self.projectors]
        return self.unpatchify(self.final_layer(x, c)), zs


def build(name: str, **overrides) -> SiT:
    """A named SiT variant (``sit-b/2``, ``sit-l/2``, ``sit-xl/2``, ``sit-tiny``) with config overrides."""
    return SiT(SiTConfig(**{**VARIANTS[name], **overrides}))


def training_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None,
                  label_dropout: float = 0.1, null_class: int = 1000) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Linear-path v-loss: t ~ U(0,1), x_t = (1−t)x + tε, loss = mean_B mean_CHW (v̂ − (ε − x))².

    ``net`` may be DDP-wrapped; it is called through ``forward``.
    """
    b = x.shape[0]
    t = torch.rand(b, generator=generator, device=x.device)
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    y = drop_labels(y, label_dropout, null_class, generator)
    tb = t.view(b, 1, 1, 1).to(x.dtype)
    x_t = (1 - tb) * x + tb * eps
    v_hat, zs = net(x_t, t, y)
    loss = ((v_hat.float() - (eps - x).float()) ** 2).mean(dim=(1, 2, 3)).mean()
    return loss, zs


def velocity(net: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The model's velocity at SiT time ``t`` (t = 1 noise, t = 0 data), for the samplers."""
    return net(x, t, y)[0]
