"""PixelREPA for JiT: partial token masking and a Masked Transformer Adapter (MTA) aligned to a teacher.

The patch tokens after JiT's "encoder" blocks (``blocks[:in_context_start]``, before the in-context class
tokens) go two ways: the denoising path continues on them unchanged, and a copy with a random ~20 % of the
tokens replaced by the JiT net's learned ``mask_token`` enters a shallow transformer adapter whose output
is aligned to the teacher's tokens with 1 − cos. Total = v-loss + coeff · alignment (0.1).

The adapter has its own timestep and label embedders (fed the same t and the same dropped labels as the
denoiser), ``in_context_len`` in-context tokens, ``depth`` JiT blocks (RMSNorm, qk-RMSNorm, RoPE with the
identity prefix, SwiGLU, adaLN-Zero) at the JiT width, no absolute position embedding, and a head
Linear → LayerNorm → SiLU → Linear only when the JiT width differs from the teacher width. It is trained
in the same AdamW as the JiT net, kept out of the EMA, saved in the checkpoint (``adapter``) and never
built for sampling. Masks are drawn from the step's seeded generator, so runs stay bit-reproducible.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from .models.common import LabelEmbedder, TimestepEmbedder, xavier_linears
from .models.jit import JiT, JiTBlock, rope_tables

log = logging.getLogger(__name__)

METHOD = "pixelrepa"
OFFICIAL_TEACHER = "dinov2-vit-b-p16"  #: DINOv2-B with a 16-px patch at 256 px, the official target


def draw_mask(batch: int, tokens: int, ratio: float, generator: torch.Generator | None,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool ``[batch, tokens]``, True = masked: u ~ U(0, 1) per sample and token, masked iff u <= ratio."""
    u = torch.rand(batch, tokens, generator=generator, device=device)
    return u <= ratio


class MaskedTransformerAdapter(nn.Module):
    """PixelREPA's MTA: ``forward(tokens [B, T, h], t, y) -> [B, T, out_dim]``.

    ``head`` is None unless ``hidden != out_dim`` (or ``force_head``: the official module builds it for
    every size, unused at equal widths; only for parameter bookkeeping).
    """

    def __init__(self, hidden: int, heads: int, out_dim: int, grid: tuple[int, int], *, depth: int = 2,
                 num_classes: int = 1000, in_context_len: int = 32, mlp_ratio: float = 4.0,
                 force_head: bool = False):
        super().__init__()
        self.hidden, self.out_dim, self.grid, self.in_context_len = hidden, out_dim, tuple(grid), in_context_len
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(num_classes, hidden)
        if in_context_len:
            self.in_context_posemb = nn.Parameter(torch.zeros(1, in_context_len, hidden))
        cos, sin = rope_tables(hidden // heads, self.grid, in_context_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.blocks = nn.ModuleList(JiTBlock(hidden, heads, mlp_ratio, 0.0, 0.0) for _ in range(depth))
        self.use_head = hidden != out_dim
        self.head = (nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.SiLU(),
                                   nn.Linear(hidden, out_dim)) if self.use_head or force_head else None)
        self._init_weights()

    def _init_weights(self) -> None:
        xavier_linears(self)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.in_context_len:
            nn.init.normal_(self.in_context_posemb, std=0.02)
        for blk in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y_emb = self.y_embedder(y)
        c = self.t_embedder(t) + y_emb
        n = self.in_context_len
        if n:
            ctx = y_emb.unsqueeze(1).expand(-1, n, -1) + self.in_context_posemb
            x = torch.cat([ctx.to(x.dtype), x], dim=1)
        for blk in self.blocks:
            x = blk(x, c, (self.rope_cos, self.rope_sin))
        x = x[:, n:]
        return self.head(x) if self.use_head else x


class PixelREPANet(nn.Module):
    """What the optimiser (and DDP) sees in a PixelREPA run: the JiT ``net`` and its ``adapter``.

    ``forward(z, t, y, mask_generator)`` returns ``(x̂, [adapter output])`` like JiT's forward: the
    denoising path is exactly plain JiT's (split forward), the adapter gets the masked encoder tokens.
    """

    def __init__(self, net: JiT, adapter: MaskedTransformerAdapter, mask_ratio: float):
        super().__init__()
        if not hasattr(net, "mask_token"):
            raise ConfigError("PixelREPA needs a JiT built with mask_token=True.")
        self.net, self.adapter, self.mask_ratio = net, adapter, float(mask_ratio)

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                mask_generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        tokens, c, y_emb, zs = self.net.forward_encoder(z, t, y)
        mask = draw_mask(tokens.shape[0], tokens.shape[1], self.mask_ratio, mask_generator, tokens.device)
        masked = torch.where(mask.unsqueeze(-1), self.net.mask_token.to(tokens.dtype), tokens)
        aligned = self.adapter(masked, t, y)
        x_hat, _ = self.net.forward_decoder(tokens, c, y_emb, zs)
        return x_hat, [aligned]


def alignment_loss(zs: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """mean over batch and tokens of 1 − cos(adapter output, teacher tokens), in fp32."""
    if len(zs) != 1 or len(targets) != 1:
        raise DataError(f"PixelREPA aligns one adapter output to one teacher; got {len(zs)} and {len(targets)}.")
    z, tgt = zs[0], targets[0]
    if z.shape != tgt.shape:
        raise DataError(f"Adapter output {tuple(z.shape)} and teacher target {tuple(tgt.shape)} differ.")
    return (1 - F.cosine_similarity(z.float(), tgt.float(), dim=-1)).mean()


def build_adapter(net: JiT, out_dim: int, *, depth: int, num_classes: int,
                  force_head: bool = False) -> MaskedTransformerAdapter:
    """The MTA for ``net``: its width, heads, grid and number of in-context tokens."""
    c = net.cfg
    return MaskedTransformerAdapter(c.hidden, c.heads, int(out_dim), c.grid, depth=depth, num_classes=num_classes,
                                    in_context_len=c.in_context_len, mlp_ratio=c.mlp_ratio, force_head=force_head)


def attach(model: nn.Module, cfg, teachers) -> tuple[nn.Module, MaskedTransformerAdapter | None]:
    """``(module to optimise and DDP-wrap, adapter)``: ``(model, None)`` unless ``cfg.method`` is pixelrepa.

    Builds the adapter after the model, from the seeded global RNG (deterministic per seed).
    """
    if cfg.method != METHOD:
        return model, None
    if len(teachers) != 1:
        raise ConfigError(f"PixelREPA aligns to one teacher; got {len(teachers)}. Pass a single --teacher.")
    name, grid = getattr(teachers[0], "name", type(teachers[0]).__name__), getattr(teachers[0], "grid", None)
    if grid is not None and tuple(grid) != tuple(model.grid):
        log.info("PixelREPA: teacher %s gives %dx%d tokens, resampled to the student's %dx%d grid", name,
                 *tuple(grid), *tuple(model.grid))
    if name != OFFICIAL_TEACHER:
        log.info("PixelREPA: teacher %s (the official target is %s)", name, OFFICIAL_TEACHER)
    adapter = build_adapter(model, int(teachers[0].embed_dim), depth=cfg.adapter_depth,
                            num_classes=model.cfg.num_classes).to(next(model.parameters()).device)
    return PixelREPANet(model, adapter, cfg.mask_ratio), adapter
