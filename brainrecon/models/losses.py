"""Losses shared by the brain models: BiMixCo, SoftCLIP and its schedule, normalised MSE, Mind Reader's mse_cos.

All contrastive losses act on flattened, L2-normalised vectors (MindEye's
convention: 257x768 tokens become one 197,376-d vector). Formulas and schedule
follow MindEye (Scotti et al., NeurIPS 2023) and MindEye2 (Scotti et al.,
ICML 2024), as implemented in their released ``utils.py`` (``mixco``,
``mixco_nce``, ``soft_clip_loss``, ``cosine_anneal``).

The helpers at the end (`mix_on`, `contrastive_loss`, `prior_and_lowlevel_losses`)
assemble one MindEye training step's loss terms and are shared by MindEye1 and MindEye2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import scipy.special
import torch
import torch.nn.functional as F
from pydantic import Field

from brainrecon.config import StrictConfig


def flat_normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.flatten(1), dim=-1)


@dataclass(frozen=True)
class MixCo:
    """One MixCo draw: which samples were mixed with which, and by how much."""

    perm: torch.Tensor  # (B,) global index of each sample's mixing partner
    beta: torch.Tensor  # (B,) weight of the sample itself; 1 where not mixed
    select: torch.Tensor  # (B,) bool, mixed or not

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Mix x (B, ...) as the draw says: beta * x + (1 - beta) * x[perm] on the selected rows."""
        shape = (-1,) + (1,) * (x.ndim - 1)
        mixed = self.beta.reshape(shape) * x + (1 - self.beta.reshape(shape)) * x[self.perm]
        return torch.where(self.select.reshape(shape), mixed, x)


def draw_mixco(group_sizes: list[int], generator: torch.Generator, beta: float = 0.15,
               s_thresh: float = 0.5) -> MixCo:
    """MixCo draws for a batch made of consecutive per-subject groups.

    Partners are drawn *within* each group (a subject's betas are only mixed with
    the same subject's betas) and returned as indices into the whole batch. This
    is where MindEye2's multi-subject pretraining goes wrong: it concatenates each
    subject's local permutation without adding the group's offset.
    """
    perms, offset = [], 0
    for size in group_sizes:
        perms.append(torch.randperm(size, generator=generator) + offset)
        offset += size
    n = offset
    # torch's Beta sampler takes no generator: draw by inverse transform from our generator instead
    uniform = torch.rand(n, generator=generator, dtype=torch.float64)
    betas = torch.from_numpy(scipy.special.betaincinv(beta, beta, uniform.numpy())).float()
    select = torch.rand(n, generator=generator) <= s_thresh
    betas = torch.where(select, betas, torch.ones_like(betas))
    return MixCo(torch.cat(perms), betas, select)


def bimixco_loss(preds: torch.Tensor, targets: torch.Tensor, temperature: float,
                 mix: MixCo | None = None) -> torch.Tensor:
    """Bidirectional MixCo NCE (mixco_nce). Without `mix` it is the symmetric CLIP loss."""
    preds, targets = flat_normalize(preds), flat_normalize(targets)
    logits = preds @ targets.T / temperature
    n = logits.shape[0]
    if mix is None:
        labels = torch.arange(n, device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    probs = torch.diag(mix.beta.to(logits))
    probs[torch.arange(n), mix.perm] += (1 - mix.beta.to(logits))
    forward = -(probs * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    backward = -(probs.T * F.log_softmax(logits.T, dim=-1)).sum(-1).mean()
    return (forward + backward) / 2


def soft_clip_loss(preds: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """SoftCLIP: cross-entropy against the soft labels softmax(targets . targets^T / t), both directions."""
    preds, targets = flat_normalize(preds), flat_normalize(targets)
    soft = (targets @ targets.T / temperature).softmax(-1)
    logits = preds @ targets.T / temperature
    forward = -(soft * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    backward = -(soft * F.log_softmax(logits.T, dim=-1)).sum(-1).mean()
    return (forward + backward) / 2


def cosine_anneal(start: float, end: float, i: int, n: int) -> float:
    """Value i (0-based) of MindEye's cosine_anneal(start, end, n): n values from start to end along half a
    cosine (the last value for i >= n - 1)."""
    if n <= 1:
        return end
    return end + (start - end) / 2 * (1 + math.cos(math.pi * min(i, n - 1) / (n - 1)))


@dataclass(frozen=True)
class ContrastiveSchedule:
    """BiMixCo for the first `mixup_pct` of optimiser steps, then SoftCLIP with a temperature that rises.

    Defaults are MindEye1/2's published values (mixup_pct 0.33, tau 0.006, then SoftCLIP with tau
    annealed 0.004 -> 0.0075 along half a cosine). The papers switch and anneal per *epoch* over
    150-240 epochs; per step is the same curve at a finer grain, and it keeps a short run a
    shortened paper run: per epoch, a 3-epoch run has int(0.33 * 3) = 0 MixCo epochs, and a
    1-epoch run never anneals.
    """

    mixup_pct: float = 0.33
    mixco_temperature: float = 0.006
    soft_start: float = 0.004
    soft_end: float = 0.0075

    def phase(self, step: int, total_steps: int) -> tuple[str, float]:
        """The loss and temperature at optimiser step ``step`` (0-based) of ``total_steps``."""
        mix_steps = int(self.mixup_pct * total_steps)  # MindEye: int(mixup_pct * num_epochs)
        if step < mix_steps:
            return "bimixco", self.mixco_temperature
        return "softclip", cosine_anneal(self.soft_start, self.soft_end, step - mix_steps, total_steps - mix_steps)


class ContrastiveConfig(StrictConfig):
    """The config-file form of :class:`ContrastiveSchedule` (same fields and defaults)."""

    mixup_pct: float = Field(0.33, ge=0.0, le=1.0)
    mixco_temperature: float = Field(0.006, gt=0)
    soft_start: float = Field(0.004, gt=0)
    soft_end: float = Field(0.0075, gt=0)

    def schedule(self) -> ContrastiveSchedule:
        return ContrastiveSchedule(**self.model_dump())


# The papers' target sizes, in elements: CLIP ViT-L/14 image tokens (257 x 768) and text tokens (77 x 768), the
# spaces in which Psychometry and MindBridge weight their MSE term (mse_mult 1e4; 1e6 in Psychometry's
# train_moe.sh). See `normalized_mse`.
PAPER_TARGET_ELEMENTS = {"image_tokens": 257 * 768, "text_tokens": 77 * 768}


def normalized_mse(preds: torch.Tensor, targets: torch.Tensor, elements: int | None = None) -> torch.Tensor:
    """MSE between flattened, L2-normalised vectors (Psychometry / MindBridge's MSE term).

    The papers take the mean over a target's D elements, which is |p - t|^2 / D for unit vectors p and t:
    at a fixed weight it shrinks as the target grows. So the papers' mse_mult = 1e4 on 257 x 768 tokens,
    applied to a 65 x 128 target, would weigh 24x more against the contrastive term than in the paper.
    ``elements``: divide by this (the paper's size of the target) instead of this target's own size, so
    that a weight means what it means in the paper at any target size. None: this target's size
    (the papers' formula applied literally; equal to the above on the papers' targets).
    """
    p, t = flat_normalize(preds), flat_normalize(targets)
    return (p - t).pow(2).sum(-1).mean() / (elements or p.shape[-1])


def mse_elements(config, name: str) -> int | None:
    """What a model's normalised MSE on target ``name`` divides by: the paper's size of that target when the
    config's ``mse_scale`` is "paper", else None (the target's own size)."""
    return PAPER_TARGET_ELEMENTS[name] if config.mse_scale == "paper" else None


def mse_cos_loss(preds: torch.Tensor, targets: torch.Tensor, cos_weight: float = 0.6) -> torch.Tensor:
    """Mind Reader's mse_cos: (1 - w) * MSE + w * (1 - cosine), on flattened vectors."""
    preds, targets = preds.flatten(1), targets.flatten(1)
    cosine = F.cosine_similarity(preds, targets, dim=-1).mean()
    return (1 - cos_weight) * F.mse_loss(preds, targets) + cos_weight * (1 - cosine)


def mix_on(mix: MixCo, device: torch.device) -> MixCo:
    """The draw moved to the batch's device (draws are made on the CPU, from the step's generator)."""
    return MixCo(mix.perm.to(device), mix.beta.to(device), mix.select.to(device))


def contrastive_loss(preds: torch.Tensor, targets: torch.Tensor, phase: str, temperature: float,
                     mix: MixCo | None) -> torch.Tensor:
    """The schedule's loss for this phase: BiMixCo (with the draw that mixed the inputs) or SoftCLIP."""
    if phase == "bimixco":
        return bimixco_loss(preds, targets, temperature, mix)
    return soft_clip_loss(preds, targets, temperature)


def prior_and_lowlevel_losses(model, out: dict, target: torch.Tensor, latents: torch.Tensor | None,
                              mix: MixCo | None, generator: torch.Generator, prior_mult: float,
                              lowlevel_mult: float) -> tuple[torch.Tensor | float, dict[str, float]]:
    """The MindEye heads' extra terms: prior_mult * prior loss + lowlevel_mult * L1 on (mixed) VAE latents.

    As upstream, the prior's condition comes from the (possibly mixed) betas and its target is the clean
    embedding; the low-level target is mixed with the same MixCo draw as the betas.
    """
    loss, log = 0.0, {}
    if model.prior is not None:
        loss_prior = model.prior.loss(out["backbone"], target, generator)
        loss = loss + prior_mult * loss_prior
        log["loss_prior"] = loss_prior.item()
    if model.lowlevel is not None:
        loss_low = F.l1_loss(out["lowlevel"], mix.apply(latents) if mix is not None else latents)
        loss = loss + lowlevel_mult * loss_low
        log["loss_lowlevel"] = loss_low.item()
    return loss, log
