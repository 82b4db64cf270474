"""Building blocks shared by the brain models: residual MLP backbones, per-token projectors, a low-level head.

They follow the layer recipes of MindEye (Scotti et al., NeurIPS 2023) and MindEye2
(Scotti et al., ICML 2024), as in their released ``models.py``, but are kept
generic (widths, depths and norms are arguments) so that every model in
`brainrecon.models` can reuse them instead of carrying its own copy.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from brainrecon.errors import ConfigError

if TYPE_CHECKING:
    from brainrecon.models.base import TargetSpace


def token_shape(space: TargetSpace, name: str) -> tuple[int, int]:
    """(T, D) of a token target; a pooled (D,) target counts as one token."""
    shape = space[name]
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) != 2:
        raise ConfigError(f"target {name!r} has shape {shape}; the MindEye models need (tokens, dim) or (dim,)")
    return shape[0], shape[1]


class ResidualMLP(nn.Module):
    """`n_blocks` residual blocks of constant width.

    Post-norm (``pre_norm=False``, MindEye1): ``x = Dropout(GELU(LN(Linear(x)))) + x``.
    Pre-norm (``pre_norm=True``, MindEye2's mixer blocks): ``x = Linear(Dropout(GELU(Linear(LN(x))))) + x``.
    The two styles are both kept because the published parameter counts of each model depend on them.
    """

    def __init__(self, width: int, n_blocks: int, dropout: float, pre_norm: bool):
        super().__init__()
        if pre_norm:
            blocks = [nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout),
                                    nn.Linear(width, width)) for _ in range(n_blocks)]
        else:
            blocks = [nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout))
                      for _ in range(n_blocks)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x) + x
        return x


class TokenProjector(nn.Module):
    """Per-token MLP of `n_layers` (LayerNorm -> GELU -> Linear) steps: dim -> hidden -> ... -> hidden -> dim.

    MindEye1's projector is ``TokenProjector(768, 2048, 3)``; MindEye2's ``clip_proj`` is
    ``TokenProjector(1664, 1664, 3)``. It maps the backbone's tokens to the space the contrastive loss
    compares with the targets, leaving the backbone output free to serve as the prior's condition.
    """

    def __init__(self, dim: int, hidden: int, n_layers: int):
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"TokenProjector needs n_layers >= 1, got {n_layers}")
        widths = [dim] + [hidden] * (n_layers - 1) + [dim]
        layers: list[nn.Module] = []
        for d_in, d_out in itertools.pairwise(widths):
            layers += [nn.LayerNorm(d_in), nn.GELU(), nn.Linear(d_in, d_out)]
        self.net = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)


def _groups(channels: int) -> int:
    """GroupNorm group count: 32 where it divides the channels (as in diffusers' VAE decoder), else the gcd."""
    return math.gcd(32, channels)


class _ResBlock(nn.Module):
    """GroupNorm -> SiLU -> Conv3x3, twice, with a (1x1 when the width changes) skip connection."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(_groups(c_in), c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
                                  nn.GroupNorm(_groups(c_out), c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class LowLevelHead(nn.Module):
    """Hidden vector (B, width) -> VAE latents (B, C, H, W): MindEye's "blurry" branch, without diffusers.

    ``Linear(width, c0*h*w)`` -> reshape (c0, h, w) -> GroupNorm(1, c0) -> conv stack that goes through
    ``reversed(channels)`` (widest first, as in a VAE decoder) with a nearest-neighbour x2 up-sampling after each
    of the first stages -> conv to C channels. The number of up-samplings is the largest k <= len(channels) - 1
    with H and W divisible by 2**k, so (4, 8, 8), (4, 16, 16), (4, 28, 28) and (4, 64, 64) all come out exact;
    MindEye1 starts from 16x16 for 64x64 latents and MindEye2 from 7x7 for 28x28, i.e. k = 2 as here.
    """

    def __init__(self, width: int, latent_shape: tuple[int, int, int], channels: tuple[int, ...] = (64, 128, 256)):
        super().__init__()
        if len(latent_shape) != 3:
            raise ConfigError(f"LowLevelHead needs a (C, H, W) latent shape, got {tuple(latent_shape)}")
        if not channels:
            raise ConfigError("LowLevelHead needs at least one channel width")
        c_out, height, width_px = (int(s) for s in latent_shape)
        n_up = 0
        while n_up < len(channels) - 1 and height % 2 ** (n_up + 1) == 0 and width_px % 2 ** (n_up + 1) == 0:
            n_up += 1
        self.latent_shape = (c_out, height, width_px)
        self.start = (channels[0], height // 2 ** n_up, width_px // 2 ** n_up)
        self.stem = nn.Linear(width, math.prod(self.start))
        self.stem_norm = nn.GroupNorm(1, channels[0])
        widths = list(reversed(channels))
        layers: list[nn.Module] = [nn.Conv2d(channels[0], widths[0], 3, padding=1)]
        for i, w in enumerate(widths):
            layers.append(_ResBlock(widths[max(i - 1, 0)], w))
            if i < n_up:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, w, 3, padding=1)]
        layers += [nn.GroupNorm(_groups(widths[-1]), widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], c_out, 3, padding=1)]
        self.decoder = nn.Sequential(*layers)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.stem(hidden).reshape(hidden.shape[0], *self.start)
        return self.decoder(self.stem_norm(x))
