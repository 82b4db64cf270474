"""MindEye1 (Scotti et al. 2023): one subject's voxels -> CLIP image tokens, plus a jointly trained diffusion prior.

Architecture (MindEye, Scotti et al., NeurIPS 2023: the high-level pipeline, ``BrainNetwork``
in the released ``src/models.py``): ``Linear(nvox, h) -> LN -> GELU -> Dropout(0.5)``,
a post-norm residual MLP, ``Linear(h, T*D)`` reshaped to (T, D) "backbone" tokens,
and a per-token projector whose output is trained contrastively against the
target tokens (BiMixCo for the first third of the epochs, then SoftCLIP). The
backbone tokens are the condition of the diffusion prior, trained in the same
step on ``loss_nce + prior_mult * loss_prior``; at generation time the prior's
sample, not the projector output, conditions the image generator.

The optional low-level head (MindEye1 trains it as a separate model) predicts
VAE latents from the backbone's hidden vector with an L1 loss.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from brainrecon.config import StrictConfig
from brainrecon.errors import ConfigError
from brainrecon.models.base import BrainModel, StepInfo, SubjectBatch, TargetSpace
from brainrecon.models.blocks import LowLevelHead, ResidualMLP, TokenProjector, token_shape
from brainrecon.models.losses import (
    ContrastiveConfig,
    contrastive_loss,
    draw_mixco,
    mix_on,
    prior_and_lowlevel_losses,
)
from brainrecon.models.prior import DiffusionPrior, PriorConfig


class MindEye1Config(StrictConfig):
    hidden: int = Field(4096, ge=1)
    n_blocks: int = Field(4, ge=0)
    dropout_in: float = Field(0.5, ge=0.0, lt=1.0)
    dropout: float = Field(0.15, ge=0.0, lt=1.0)
    projector_hidden: int = Field(2048, ge=1)
    prior: PriorConfig | None = PriorConfig()  # null: no prior (retrieval only)
    prior_mult: float = Field(30.0, ge=0.0)
    lowlevel: bool = False
    lowlevel_channels: tuple[int, ...] = (64, 128, 256)  # conv widths of the low-level head, narrowest first
    lowlevel_mult: float = Field(1.0, ge=0.0)
    schedule: ContrastiveConfig = ContrastiveConfig()


class MindEye1(BrainModel):
    kind = "mindeye1"
    config_class = MindEye1Config
    config: MindEye1Config

    def __init__(self, config: MindEye1Config, subjects: dict[str, int], space: TargetSpace):
        if len(subjects) > 1:
            raise ConfigError(f"mindeye1 is single-subject but got {len(subjects)} subjects {sorted(subjects)}; "
                              f"train one run per subject, or use kind 'mindeye2' for multi-subject training")
        # what this config needs (the class default has no low-level head): set before the base class checks it
        self.required_targets = ("image_tokens", "lowlevel") if config.lowlevel else ("image_tokens",)
        super().__init__(config, subjects, space)
        (n_voxels,) = subjects.values()
        self.tokens, self.dim = token_shape(space, "image_tokens")
        h = config.hidden
        self.schedule = config.schedule.schedule()
        self.lin0 = nn.Sequential(nn.Linear(n_voxels, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(config.dropout_in))
        self.mlp = ResidualMLP(h, config.n_blocks, config.dropout, pre_norm=False)
        self.lin1 = nn.Linear(h, self.tokens * self.dim)
        self.projector = TokenProjector(self.dim, config.projector_hidden, 3)
        self.prior = DiffusionPrior(self.tokens, self.dim, config.prior) if config.prior is not None else None
        self.lowlevel = LowLevelHead(h, space["lowlevel"], config.lowlevel_channels) if config.lowlevel else None

    def forward(self, betas: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.mlp(self.lin0(betas))
        backbone = self.lin1(hidden).reshape(len(betas), self.tokens, self.dim)
        out = {"backbone": backbone, "image_tokens": self.projector(backbone)}
        if self.lowlevel is not None:
            out["lowlevel"] = self.lowlevel(hidden)
        return out

    def predict(self, betas: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        self.check_subject(subject, betas)
        return self(betas)

    def training_loss(self, batches: list[SubjectBatch], info: StepInfo,
                      generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        for batch in batches:
            self.check_subject(batch.subject, batch.betas)
        betas = torch.cat([b.betas for b in batches])
        targets = {name: torch.cat([b.targets[name] for b in batches]) for name in self.required_targets}
        phase, temperature = self.schedule.phase(info.step, info.total_steps)
        mix = mix_on(draw_mixco([len(b) for b in batches], generator), betas.device) if phase == "bimixco" else None
        out = self(mix.apply(betas) if mix is not None else betas)
        target = targets["image_tokens"].reshape(out["image_tokens"].shape)
        loss_clip = contrastive_loss(out["image_tokens"], target, phase, temperature, mix)
        loss = loss_clip
        log = {"loss_clip": loss_clip.item(), "temperature": temperature, "mixco": float(mix is not None)}
        extra, extra_log = prior_and_lowlevel_losses(self, out, target, targets.get("lowlevel"), mix, generator,
                                                     self.config.prior_mult, self.config.lowlevel_mult)
        loss = loss + extra
        log.update(extra_log, loss=loss.item())
        return loss, log

    @torch.no_grad()
    def embeddings_for_generation(self, betas: torch.Tensor, subject: str,
                                  generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The prior's sample as "image_tokens" (the projector output when there is no prior).

        The projector output is kept as "contrastive" for MindEye1's second-order selection
        (keep the generated image whose CLIP embedding is closest to it).
        """
        out = self.predict(betas, subject)
        out["contrastive"] = out["image_tokens"]
        if self.prior is not None:
            out["image_tokens"] = self.prior.sample(out["backbone"], generator)
        return out
