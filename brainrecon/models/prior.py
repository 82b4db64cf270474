"""A self-contained diffusion prior: brain tokens -> target-embedding tokens (replaces dalle2-pytorch).

MindEye's prior (MindEye, Scotti et al., NeurIPS 2023; MindEye2, Scotti et al., ICML 2024;
``BrainDiffusionPrior`` in their released ``models.py``) is a DALL-E 2 ``DiffusionPrior``
whose denoiser is a non-causal transformer over the token sequence

    [condition tokens (n), time token (1), noisy target tokens + learned positions (n)]

and whose output (the last n tokens) is the clean target x0 itself. It is trained
with MSE on x0 under a cosine noise schedule with T = 100, with the condition
replaced by learned null tokens 20% of the time so that classifier-free guidance
is possible, and sampled by DDIM in 20 steps. dalle2-pytorch itself is not used
(it needs torchvision, see docs/dependencies.md, and its ``DiffusionPrior.forward`` scales the
caller's target tensor in place, as of dalle2-pytorch 1.15.6).

Deliberate differences from upstream, each for a stated reason:

* Positions come from learned embeddings on the condition tokens and the target
  tokens instead of rotary embeddings plus a relative-position bias: without
  either, condition token i could not be told from condition token j, and the
  learned version needs no extra dependency.
* Only the condition is dropped for guidance training. dalle2 also swaps the
  *noisy target input* for a null token with the same probability, which throws
  away the input the denoiser needs (a quirk, not a method).
* Targets are multiplied by ``embed_scale`` (sqrt(dim) unless set, dalle2 and
  MindEye1's choice) inside the prior so that tokens normalised to unit norm
  have elements of unit variance, matching the unit-variance noise; outputs of
  `sample` are divided by it again. MindEye2 uses 1 for its unnormalised tokens.
* Attention gives every head its own keys and values (standard multi-head
  attention); dalle2 shares one key/value head across the query heads. With a
  two-layer time MLP (dalle2 has three) this makes our prior +4.1M parameters at
  MindEye1's size and +21.1M at MindEye2's (docs/benchmarks/training.md).

All randomness (timesteps, noise, dropout mask) is drawn on the CPU from the
`torch.Generator` passed in and then moved to the model's device, so a run is
reproducible from its generator seeds on any device.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from brainrecon.config import StrictConfig
from brainrecon.errors import ConfigError


class PriorConfig(StrictConfig):
    depth: int = Field(6, ge=1)
    heads: int = Field(8, ge=1)
    dim_head: int = Field(64, ge=1)
    timesteps: int = Field(100, ge=2)
    cond_drop: float = Field(0.2, ge=0.0, le=1.0)  # probability of training with the null condition
    ff_mult: int = Field(4, ge=1)
    sample_steps: int = Field(20, ge=1)  # DDIM steps used by `sample` unless given
    guidance: float = 1.0  # classifier-free guidance scale; 1 = conditional prediction only
    embed_scale: float | None = Field(None, gt=0)  # None: sqrt(dim)


def cosine_alphas_cumprod(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: alpha-bar_t for t = 1..T, with betas clipped at 0.999."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sin/cos features of a continuous time value (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


class _Block(nn.Module):
    """Pre-LN transformer block: full (non-causal) self-attention, then a SwiGLU feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner, hidden = heads * dim_head, ff_mult * dim
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.attn_out = nn.Linear(inner, dim, bias=False)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.ff_out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)  # (b, heads, n, dim_head)
        x = x + self.attn_out(attended.transpose(1, 2).reshape(b, n, -1))
        value, gate = self.ff_in(self.ff_norm(x)).chunk(2, dim=-1)
        return x + self.ff_out(value * F.silu(gate))


class DiffusionPrior(nn.Module):
    """Predicts target tokens (B, n_tokens, dim) from condition tokens of the same shape by denoising."""

    def __init__(self, n_tokens: int, dim: int, config: PriorConfig | None = None):
        super().__init__()
        self.config = config = config or PriorConfig()
        self.n_tokens, self.dim = n_tokens, dim
        self.scale = config.embed_scale if config.embed_scale is not None else math.sqrt(dim)
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(config.timesteps).float(), persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))
        self.null_cond = nn.Parameter(torch.randn(n_tokens, dim) * 0.02)
        self.cond_pos = nn.Parameter(torch.randn(n_tokens, dim) * 0.02)
        self.target_pos = nn.Parameter(torch.randn(n_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(dim, config.heads, config.dim_head, config.ff_mult)
                                    for _ in range(config.depth))
        self.out_norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)

    def _check(self, cond: torch.Tensor) -> None:
        if cond.ndim != 3 or tuple(cond.shape[1:]) != (self.n_tokens, self.dim):
            raise ConfigError(f"the diffusion prior was built for condition tokens (batch, {self.n_tokens}, "
                              f"{self.dim}), got {tuple(cond.shape)}; build it with the target's token shape")

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """x0 prediction (scaled space) from noisy x_t at integer steps t.

        Rows with keep=False see the learned null condition instead of `cond`.
        """
        if keep is not None:
            cond = torch.where(keep[:, None, None], cond, self.null_cond.to(cond.dtype))
        time = self.time_mlp(sinusoidal_embedding(t, self.dim).to(x_t.dtype))[:, None]
        tokens = torch.cat([cond + self.cond_pos, time, x_t + self.target_pos], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.out(self.out_norm(tokens[:, -self.n_tokens:]))

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
        """Guided x0: uncond + g * (cond - uncond); at g = 1 only the conditional pass is run."""
        if guidance == 1.0:
            return self.denoise(x_t, t, cond)
        n = x_t.shape[0]
        keep = torch.arange(2 * n, device=x_t.device) < n
        both = self.denoise(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, cond]), keep)
        conditional, unconditional = both[:n], both[n:]
        return unconditional + guidance * (conditional - unconditional)

    def loss(self, cond: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """MSE between the predicted and true x0 (scaled space) at a random step, with conditioning dropout."""
        self._check(cond)
        b, device = target.shape[0], target.device
        t = torch.randint(0, self.config.timesteps, (b,), generator=generator).to(device)
        noise = torch.randn(target.shape, generator=generator).to(device=device, dtype=target.dtype)
        keep = (torch.rand(b, generator=generator) >= self.config.cond_drop).to(device)
        x0 = target * self.scale
        a = self.alphas_cumprod[t].to(target.dtype)[:, None, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return F.mse_loss(self.denoise(x_t, t, cond, keep), x0)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, generator: torch.Generator, steps: int | None = None,
               guidance: float | None = None) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from pure noise in `steps` evenly spaced steps; returns unscaled x0."""
        self._check(cond)
        steps = min(steps or self.config.sample_steps, self.config.timesteps)
        guidance = self.config.guidance if guidance is None else guidance
        total = self.config.timesteps
        # times T-1 = t_0 > t_1 > ... > t_{steps-1} >= 0, each followed by the next one (-1 means "done")
        times = torch.linspace(-1, total - 1, steps + 1).round().long().tolist()[::-1]
        x = torch.randn(cond.shape, generator=generator).to(device=cond.device, dtype=cond.dtype)
        for t, t_next in itertools.pairwise(times):
            t_batch = torch.full((cond.shape[0],), t, device=cond.device, dtype=torch.long)
            x0 = self.predict_x0(x, t_batch, cond, guidance)
            if t_next < 0:
                x = x0
                break
            a, a_next = self.alphas_cumprod[t], self.alphas_cumprod[t_next]
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        return x / self.scale
