"""JiT backbone (pixel space) with REPA/iREPA projectors, and its x-prediction / v-loss objective.

Architecture as in JiT: bottleneck patch embedding (p×p conv to a small width, then 1×1 conv), fixed 2-D
sin-cos position embedding, RMSNorm + adaLN-Zero blocks, qk-RMSNorm, 2-D RoPE (identity for the in-context
class tokens), SwiGLU FFN, in-context class tokens prepended before block ``in_context_start``.
Time convention: ``z_t = t·x + (1 − t)·ε`` (t = 0 is noise, t = 1 is data); the network predicts x̂.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..repa import build_projector
from .common import BackboneConfig, DiffusionBackbone, LabelEmbedder, TimestepEmbedder, drop_labels, modulate, sincos_2d


@dataclass
class JiTConfig(BackboneConfig):
    """Shape of a JiT model (``input_size`` in pixels)."""

    patch: int = 16
    input_size: int = 256
    in_channels: int = 3
    bottleneck: int = 128
    in_context_len: int = 32
    in_context_start: int = 4
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    mask_token: bool = False  #: PixelREPA: a learned token that replaces masked tokens at the adapter input


VARIANTS: dict[str, dict] = {
    "jit-b/16": dict(depth=12, hidden=768, heads=12, patch=16, bottleneck=128, in_context_start=4),
    "jit-l/16": dict(depth=24, hidden=1024, heads=16, patch=16, bottleneck=128, in_context_start=8),
    "jit-h/16": dict(depth=32, hidden=1280, heads=16, patch=16, bottleneck=256, in_context_start=10),
    # the 512-px models: the /16 widths and depths with 32-px patches (JiT's JiT-{B,L,H}/32)
    "jit-b/32": dict(depth=12, hidden=768, heads=12, patch=32, bottleneck=128, in_context_start=4, input_size=512),
    "jit-l/32": dict(depth=24, hidden=1024, heads=16, patch=32, bottleneck=128, in_context_start=8, input_size=512),
    "jit-h/32": dict(depth=32, hidden=1280, heads=16, patch=32, bottleneck=256, in_context_start=10, input_size=512),
    # CPU-sized: 32x32 RGB, patch 4 -> 8x8 tokens, head_dim 16
    "jit-tiny": dict(depth=4, hidden=64, heads=4, patch=4, input_size=32, bottleneck=16, in_context_len=4,
                     in_context_start=2, encoder_depth=2),
}


class RMSNorm(nn.Module):
    """RMSNorm with a learnable weight, computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).type_as(x)


def rope_tables(head_dim: int, grid: tuple[int, int], n_prefix: int = 0, theta: float = 10000.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D RoPE cos/sin tables ``[n_prefix + H·W, head_dim]``.

    Per axis ``head_dim/2`` channels with frequencies θ^(−2k/(head_dim/2)), each repeated for an (even, odd)
    pair; the row frequencies fill the first half of the head, the column frequencies the second half.
    ``n_prefix`` leading positions get cos = 1, sin = 0 (no rotation: the in-context tokens).
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}.")
    dim = head_dim // 2
    freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim)
    gh, gw = grid
    fr = torch.outer(torch.arange(gh, dtype=torch.float64), freqs).repeat_interleave(2, dim=-1)  # [gh, dim]
    fc = torch.outer(torch.arange(gw, dtype=torch.float64), freqs).repeat_interleave(2, dim=-1)  # [gw, dim]
    ang = torch.cat([fr[:, None, :].expand(gh, gw, dim), fc[None, :, :].expand(gh, gw, dim)], dim=-1)
    ang = ang.reshape(gh * gw, head_dim)
    cos, sin = ang.cos(), ang.sin()
    if n_prefix:
        cos = torch.cat([torch.ones(n_prefix, head_dim, dtype=cos.dtype), cos])
        sin = torch.cat([torch.zeros(n_prefix, head_dim, dtype=sin.dtype), sin])
    return cos.float(), sin.float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1) pairs -> (−x1, x0)."""
    x = x.unflatten(-1, (-1, 2))
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with qk-RMSNorm, 2-D RoPE and an fp32 softmax."""

    def __init__(self, dim: int, heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.q_norm, self.k_norm = RMSNorm(self.head_dim), RMSNorm(self.head_dim)
        self.attn_drop, self.proj = nn.Dropout(attn_drop), nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(self.q_norm(q), *rope), apply_rope(self.k_norm(k), *rope)
        attn = (q.float() @ k.float().transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        attn = self.attn_drop(attn.softmax(dim=-1)).to(v.dtype)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class SwiGLU(nn.Module):
    """w3(silu(x·W1) ⊙ x·W2) with hidden = int(4h·2/3)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.w12, self.w3, self.drop = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim), nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(self.drop(F.silu(x1) * x2))


class JiTBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float, attn_drop: float, proj_drop: float):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(hidden), RMSNorm(hidden)
        self.attn = Attention(hidden, heads, attn_drop, proj_drop)
        self.mlp = SwiGLU(hidden, int(hidden * mlp_ratio * 2 / 3), proj_drop)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope) -> torch.Tensor:
        sa, ca, ga, sm, cm, gm = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + ga.unsqueeze(1) * self.attn(modulate(self.norm1(x), sa, ca), rope)
        return x + gm.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sm, cm))


class BottleneckPatchEmbed(nn.Module):
    """Conv2d(3, bottleneck, p, stride p, no bias) → Conv2d(bottleneck, h, 1): a low-rank patch embedding."""

    def __init__(self, in_ch: int, bottleneck: int, hidden: int, patch: int):
        super().__init__()
        self.proj1 = nn.Conv2d(in_ch, bottleneck, patch, stride=patch, bias=False)
        self.proj2 = nn.Conv2d(bottleneck, hidden, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj2(self.proj1(x)).flatten(2).transpose(1, 2)


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm_final = RMSNorm(hidden)
        self.linear = nn.Linear(hidden, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class JiT(DiffusionBackbone):
    """JiT with REPA projectors on the patch tokens after block ``encoder_depth``.

    ``forward(z, t, y)`` returns ``(x̂, zs)``: the predicted clean image ``[B, 3, H, W]`` and one projected token
    tensor per teacher. In-context tokens are removed before projection (alignment uses patch tokens only).
    """

    family = "jit"

    def __init__(self, cfg: JiTConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.x_embedder = BottleneckPatchEmbed(cfg.in_channels, cfg.bottleneck, h, cfg.patch)
        self.t_embedder = TimestepEmbedder(h)
        self.y_embedder = LabelEmbedder(cfg.num_classes, h)
        self.register_buffer("pos_embed", sincos_2d(h, cfg.grid).unsqueeze(0), persistent=False)
        if cfg.in_context_len:
            self.in_context_posemb = nn.Parameter(torch.zeros(1, cfg.in_context_len, h))
        head_dim = h // cfg.heads
        for name, n_pre in (("rope", 0), ("rope_ctx", cfg.in_context_len)):
            cos, sin = rope_tables(head_dim, cfg.grid, n_pre)
            self.register_buffer(f"{name}_cos", cos, persistent=False)
            self.register_buffer(f"{name}_sin", sin, persistent=False)
        lo, hi = cfg.depth // 4, 3 * cfg.depth // 4
        self.blocks = nn.ModuleList(
            JiTBlock(h, cfg.heads, cfg.mlp_ratio, cfg.attn_drop if lo <= i < hi else 0.0,
                     cfg.proj_drop if lo <= i < hi else 0.0) for i in range(cfg.depth))
        self.projectors = nn.ModuleList(build_projector(cfg.projector, h, d, kernel_size=cfg.kernel_size, grid=cfg.grid)
                                        for d in cfg.z_dims)
        self.final_layer = FinalLayer(h, cfg.patch ** 2 * cfg.in_channels)
        if cfg.mask_token:  # only with PixelREPA, so plain JiT keeps its parameter count
            self.mask_token = nn.Parameter(torch.zeros(1, 1, h))
        self._init_weights()

    def _embed_convs(self) -> list[nn.Conv2d]:
        return [self.x_embedder.proj1, self.x_embedder.proj2]

    def _init_weights(self) -> None:
        super()._init_weights()
        if self.cfg.in_context_len:
            nn.init.normal_(self.in_context_posemb, std=0.02)
        if self.cfg.mask_token:
            nn.init.normal_(self.mask_token, std=0.02)

    @property
    def split_at(self) -> int:
        """Blocks before the in-context tokens are prepended (JiT's "encoder"; PixelREPA's alignment point)."""
        return min(self.cfg.in_context_start, self.cfg.depth) if self.cfg.in_context_len else self.cfg.depth

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, project: bool = True
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(x̂, zs)``; ``project=False`` (sampling) skips the alignment projectors and returns ``zs = []``."""
        return self.forward_decoder(*self.forward_encoder(z, t, y, project=project))

    def forward_encoder(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, project: bool = True):
        """First half of :meth:`forward`: ``(patch tokens after blocks[:split_at], c, y_emb, zs)``.

        The tokens are taken before the in-context class tokens are prepended; ``zs`` holds the projector
        outputs when ``encoder_depth`` falls inside this half (``None`` when ``project`` is off).
        """
        x = self.x_embedder(z) + self.pos_embed.to(z.dtype)
        y_emb = self.y_embedder(y)
        c = self.t_embedder(t) + y_emb
        zs: list[torch.Tensor] | None = [] if project else None
        return self._blocks(x, c, y_emb, 0, self.split_at, zs), c, y_emb, zs

    def forward_decoder(self, x: torch.Tensor, c: torch.Tensor, y_emb: torch.Tensor,
                        zs: list[torch.Tensor] | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Second half of :meth:`forward`: in-context tokens, blocks[split_at:], final layer -> ``(x̂, zs)``."""
        x = self._blocks(x, c, y_emb, self.split_at, self.cfg.depth, zs)
        x = x[:, x.shape[1] - self.cfg.grid[0] * self.cfg.grid[1]:]
        return self.unpatchify(self.final_layer(x, c)), zs if zs is not None else []

    def _blocks(self, x: torch.Tensor, c: torch.Tensor, y_emb: torch.Tensor, lo: int, hi: int,
                zs: list[torch.Tensor] | None) -> torch.Tensor:
        cfg = self.cfg
        for i in range(lo, hi):
            if cfg.in_context_len and i == cfg.in_context_start:
                ctx = y_emb.unsqueeze(1).expand(-1, cfg.in_context_len, -1) + self.in_context_posemb
                x = torch.cat([ctx.to(x.dtype), x], dim=1)
            n_ctx = cfg.in_context_len if cfg.in_context_len and i >= cfg.in_context_start else 0
            rope = (self.rope_ctx_cos, self.rope_ctx_sin) if n_ctx else (self.rope_cos, self.rope_sin)
            x = self.blocks[i](x, c, rope)
            if zs is not None and i + 1 == cfg.encoder_depth and len(self.projectors):
                patch_tokens = x[:, n_ctx:]
                zs.extend(proj(patch_tokens) for proj in self.projectors)
        return x


def build(name: str, **overrides) -> JiT:
    """A named JiT variant (``jit-b/16``, ``jit-l/16``, ``jit-h/16``, ``jit-tiny``) with config overrides."""
    return JiT(JiTConfig(**{**VARIANTS[name], **overrides}))


P_MEAN, P_STD, T_EPS, NOISE_SCALE = -0.8, 0.8, 0.05, 1.0


def training_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None,
                  label_dropout: float = 0.1, null_class: int = 1000, *, p_mean: float = P_MEAN,
                  p_std: float = P_STD, t_eps: float = T_EPS, noise_scale: float = NOISE_SCALE, **net_kwargs
                  ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x-prediction with a v-loss: t = sigmoid(N(p_mean, p_std²)), z = t·x + (1−t)·ε·noise_scale,
    v = (x − z)/max(1−t, t_eps), loss = mean_B mean_CHW (v̂ − v)² with v̂ from the predicted x̂.

    ``x`` is the image in [−1, 1]; ``net`` may be DDP-wrapped; ``net_kwargs`` go to its forward (PixelREPA:
    ``mask_generator``, drawn after t, ε and the label dropout).
    """
    b = x.shape[0]
    t = torch.sigmoid(torch.randn(b, generator=generator, device=x.device) * p_std + p_mean)
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * noise_scale
    y = drop_labels(y, label_dropout, null_class, generator)
    tb = t.view(b, 1, 1, 1).to(x.dtype)
    z = tb * x + (1 - tb) * eps
    x_hat, zs = net(z, t, y, **net_kwargs)
    denom = (1 - tb).float().clamp_min(t_eps)
    v = (x.float() - z.float()) / denom
    v_hat = (x_hat.float() - z.float()) / denom
    loss = ((v_hat - v) ** 2).mean(dim=(1, 2, 3)).mean()
    return loss, zs


def velocity(net: nn.Module, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor, t_eps: float = T_EPS) -> torch.Tensor:
    """dz/dt at JiT time ``t`` (t = 0 noise): (x̂ − z)/max(1 − t, t_eps)."""
    x_hat = net(z, t, y)[0]
    return (x_hat - z) / (1 - t).view(-1, 1, 1, 1).clamp_min(t_eps)
