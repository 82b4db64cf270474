"""MindEye2 (Scotti et al. 2024): per-subject linear adapters into a shared space, one shared backbone.

Architecture (MindEye2, Scotti et al., ICML 2024; ``RidgeRegression`` and ``BrainNetwork``
in the released code): one ``Linear(nvox_s, h)`` "ridge" adapter per
subject, a pre-norm residual MLP (upstream's ``mixer_blocks1``; its
``mixer_blocks2`` act over a sequence of length 1 and only add a learned
constant, so they are left out: 24 parameters at 4 blocks), ``Linear(h, T*D)``
backbone tokens that condition the diffusion prior, and a 3-layer per-token
projector whose output is trained contrastively against the target tokens.
Loss: ``prior_scale * L_prior + clip_scale * L_clip + blur_scale * L1_lowlevel``.

A multi-subject step runs each subject's betas through its own adapter, then all
subjects through the backbone in one pass. MixCo mixes betas only within a
subject (voxel spaces differ between subjects); the partners are drawn by
`draw_mixco` per subject group with the group offsets added, which is exactly
what upstream gets wrong (it mixes with rows of other subjects' positions).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from brainrecon.config import StrictConfig
from brainrecon.errors import ConfigError
from brainrecon.models.base import BrainModel, StepInfo, SubjectBatch, TargetSpace
from brainrecon.models.blocks import LowLevelHead, ResidualMLP, TokenProjector, token_shape
from brainrecon.models.losses import (
    ContrastiveConfig,
    MixCo,
    contrastive_loss,
    draw_mixco,
    mix_on,
    prior_and_lowlevel_losses,
)
from brainrecon.models.prior import DiffusionPrior, PriorConfig


class MindEye2Config(StrictConfig):
    hidden: int = Field(4096, ge=1)  # the paper's width; upstream's code default is 1024
    n_blocks: int = Field(4, ge=0)
    dropout: float = Field(0.15, ge=0.0, lt=1.0)
    clip_scale: float = Field(1.0, ge=0.0)
    prior_scale: float = Field(30.0, ge=0.0)
    blur_scale: float = Field(0.5, ge=0.0)
    prior: PriorConfig | None = PriorConfig()  # null: no prior (retrieval only)
    lowlevel: bool = False
    lowlevel_channels: tuple[int, ...] = (32, 64, 128)  # conv widths of the low-level head, narrowest first
    schedule: ContrastiveConfig = ContrastiveConfig()
    # which embedding the backbone predicts; pooled targets are treated as a single token
    target: Literal["image_tokens", "image_pooled", "text_tokens", "text_pooled"] = "image_tokens"


def subject_mixes(mix: MixCo, group_sizes: list[int]) -> list[MixCo]:
    """Split a batch-wide draw into per-group draws with local partner indices (for per-subject voxel spaces)."""
    parts, offset = [], 0
    for size in group_sizes:
        rows = slice(offset, offset + size)
        local = mix.perm[rows] - offset
        if len(local) and (local.min() < 0 or local.max() >= size):
            raise ValueError("a MixCo partner lies outside its subject's rows; draw it with draw_mixco(group_sizes)")
        parts.append(MixCo(local, mix.beta[rows], mix.select[rows]))
        offset += size
    return parts


class MindEye2(BrainModel):
    kind = "mindeye2"
    config_class = MindEye2Config
    config: MindEye2Config
    required_targets = ("image_tokens",)  # with the default config
    retrieval_target = "image_tokens"

    def __init__(self, config: MindEye2Config, subjects: dict[str, int], space: TargetSpace):
        # what this config needs: set before the base class checks it
        self.required_targets = (config.target,) + (("lowlevel",) if config.lowlevel else ())
        self.retrieval_target = config.target
        super().__init__(config, subjects, space)
        self.tokens, self.dim = token_shape(space, config.target)
        h = config.hidden
        self.schedule = config.schedule.schedule()
        self.adapters = nn.ModuleDict()
        for name, n_voxels in subjects.items():
            self.adapters[self._key(name)] = nn.Linear(n_voxels, h)
        self.mlp = ResidualMLP(h, config.n_blocks, config.dropout, pre_norm=True)
        self.lin1 = nn.Linear(h, self.tokens * self.dim)
        self.projector = TokenProjector(self.dim, self.dim, 3)
        self.prior = DiffusionPrior(self.tokens, self.dim, self._prior_config()) if config.prior is not None else None
        self.lowlevel = LowLevelHead(h, space["lowlevel"], config.lowlevel_channels) if config.lowlevel else None

    def _prior_config(self) -> PriorConfig:
        """The prior's config; a pooled target's embed_scale defaults to 1 instead of sqrt(dim).

        sqrt(dim) gives unit-variance elements to tokens of unit norm, as the image tokens are (divided by the CLS
        token's norm). A pooled CLIP embedding is not normalised (norm about 14 for the simulated world's small CLIP,
        elements of sd 1.3), so sqrt(dim) would give its elements an sd near 14, and the prior's MSE (weight 30)
        swamped the contrastive loss: validation retrieval 0.24 at 512 steps against 0.74 without the prior and
        0.74 with a scale of 1, on the simulated world. MindEye2 uses 1 for its unnormalised tokens.
        """
        prior = self.config.prior
        if prior.embed_scale is None and self.config.target.endswith("_pooled"):
            return prior.model_copy(update={"embed_scale": 1.0})
        return prior

    @staticmethod
    def _key(subject: str) -> str:
        if not subject or "." in subject:
            raise ConfigError(f"mindeye2: subject name {subject!r} cannot name a parameter group; "
                              f"use a non-empty name without '.' (e.g. 'subj01')")
        return subject

    def add_subject(self, subject: str, n_voxels: int) -> None:
        """A fresh adapter for a new subject, on the device and dtype of the existing model."""
        if subject in self.subjects:
            raise ConfigError(f"mindeye2: subject {subject!r} already has an adapter; pick a new name")
        reference = self.lin1.weight
        self.adapters[self._key(subject)] = nn.Linear(n_voxels, self.config.hidden).to(reference.device,
                                                                                        reference.dtype)
        self.subjects[subject] = int(n_voxels)

    def subject_parameters(self, subject: str) -> list[nn.Parameter]:
        if subject not in self.subjects:
            raise ConfigError(f"mindeye2: unknown subject {subject!r}; known: {sorted(self.subjects)} "
                              f"(add it first with add_subject)")
        return list(self.adapters[subject].parameters())

    def forward(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """Shared part from the adapters' output (B, h)."""
        hidden = self.mlp(hidden)
        backbone = self.lin1(hidden).reshape(len(hidden), self.tokens, self.dim)
        out = {"backbone": backbone, "tokens": self.projector(backbone)}
        if self.lowlevel is not None:
            out["lowlevel"] = self.lowlevel(hidden)
        return out

    def _outputs(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named as the target space names them, in the target's own shape."""
        named = {"backbone": out["backbone"],
                 self.config.target: out["tokens"].reshape(-1, *self.space[self.config.target])}
        if "lowlevel" in out:
            named["lowlevel"] = out["lowlevel"]
        return named

    def predict(self, betas: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        self.check_subject(subject, betas)
        return self._outputs(self(self.adapters[subject](betas)))

    def training_loss(self, batches: list[SubjectBatch], info: StepInfo,
                      generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        for batch in batches:
            self.check_subject(batch.subject, batch.betas)
        sizes = [len(b) for b in batches]
        phase, temperature = self.schedule.phase(info.step, info.total_steps)
        device = batches[0].betas.device
        mix = mix_on(draw_mixco(sizes, generator), device) if phase == "bimixco" else None
        parts = subject_mixes(mix, sizes) if mix is not None else [None] * len(batches)
        hidden = torch.cat([self.adapters[b.subject](part.apply(b.betas) if part is not None else b.betas)
                            for b, part in zip(batches, parts)])
        out = self(hidden)
        target = torch.cat([b.targets[self.config.target] for b in batches]).reshape(out["tokens"].shape)
        loss_clip = contrastive_loss(out["tokens"], target, phase, temperature, mix)
        loss = self.config.clip_scale * loss_clip
        log = {"loss_clip": loss_clip.item(), "temperature": temperature, "mixco": float(mix is not None)}
        latents = torch.cat([b.targets["lowlevel"] for b in batches]) if self.lowlevel is not None else None
        extra, extra_log = prior_and_lowlevel_losses(self, out, target, latents, mix, generator,
                                                     self.config.prior_scale, self.config.blur_scale)
        loss = loss + extra
        log.update(extra_log, loss=loss.item())
        return loss, log

    @torch.no_grad()
    def embeddings_for_generation(self, betas: torch.Tensor, subject: str,
                                  generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The prior's sample under the target's name (the projector output when there is no prior),
        with the projector output kept as "contrastive"."""
        out = self.predict(betas, subject)
        out["contrastive"] = out[self.config.target]
        if self.prior is not None:
            sample = self.prior.sample(out["backbone"], generator)
            out[self.config.target] = sample.reshape(-1, *self.space[self.config.target])
        return out
