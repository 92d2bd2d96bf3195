"""Building blocks shared by the SiT and JiT backbones (embeddings, modulation, sin-cos tables)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """MAE 1-D sin-cos embedding: ``[len(pos), dim]`` = [sin(p·ω), cos(p·ω)], ω_k = 10000^(-k/(dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double().reshape(-1)[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """MAE 2-D sin-cos position embedding ``[H·W, dim]``, row-major; first half encodes the column
    coordinate (MAE's meshgrid(w, h) order), second half the row."""
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Scalar t -> 256-d sinusoid ([cos, sin], max period 1e4) -> Linear-SiLU-Linear."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    @staticmethod
    def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = self.sinusoid(t, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class table with ``num_classes + 1`` rows; row ``num_classes`` is the null (unconditional) class.

    Label dropout is applied by the training objective (:func:`drop_labels`) with the step's generator,
    so runs are reproducible and resumable bit for bit.
    """

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


def drop_labels(y: torch.Tensor, prob: float, null: int, generator: torch.Generator | None) -> torch.Tensor:
    """Replace each label by ``null`` with probability ``prob`` (classifier-free guidance training)."""
    if prob <= 0:
        return y
    u = torch.rand(y.shape, generator=generator, device=y.device)
    return torch.where(u < prob, torch.full_like(y, null), y)


def xavier_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases on every nn.Linear (the SiT/JiT ``_basic_init``)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def xavier_conv(conv: nn.Conv2d) -> None:
    """Xavier-uniform on a conv seen as a flattened linear layer; zero bias."""
    w = conv.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


@dataclass
class BackboneConfig:
    """Fields SiT and JiT share; each family's config sets its own defaults and adds its own fields."""

    depth: int = 12
    hidden: int = 768
    heads: int = 12
    patch: int = 2
    input_size: int = 32  #: latent side (SiT) or pixel side (JiT)
    in_channels: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    encoder_depth: int = 8  #: REPA alignment after this block
    z_dims: list[int] = field(default_factory=list)  #: teacher widths; one projector each
    projector: str = "mlp"
    kernel_size: int = 3

    @property
    def grid(self) -> tuple[int, int]:
        return (self.input_size // self.patch, self.input_size // self.patch)


class DiffusionBackbone(nn.Module):
    """What SiT and JiT share: grid and null class, the DiT-style init and unpatchify.

    Subclasses set ``cfg`` (with ``grid``, ``patch``, ``in_channels``, ``num_classes``), ``x_embedder``,
    ``t_embedder``, ``y_embedder``, ``blocks`` (adaLN), ``final_layer`` and ``projectors``, and list their
    patch-embedding convolutions in :meth:`_embed_convs`.
    """

    @property
    def grid(self) -> tuple[int, int]:
        return self.cfg.grid

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def _embed_convs(self) -> list[nn.Conv2d]:
        raise NotImplementedError

    def _init_weights(self) -> None:
        xavier_linears(self)
        for conv in self._embed_convs():
            xavier_conv(conv)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for blk in self.blocks:  # adaLN-Zero
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
        for m in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        for proj in self.projectors:  # the conv keeps PyTorch's default init, as upstream
            if hasattr(proj, "conv"):
                proj.conv.reset_parameters()

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        (gh, gw), p, c = self.grid, self.cfg.patch, self.cfg.in_channels
        x = x.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, gh * p, gw * p)
