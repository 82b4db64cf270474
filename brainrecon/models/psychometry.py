"""Psychometry (Quan et al., CVPR 2024): one "omnifit" model for all subjects, with an Omni MoE.

Each subject's betas go through that subject's own MLP encoder into a sequence of
fMRI tokens. Two query decoders, shared by every subject, cross-attend to those
tokens: one with T learnable queries for the CLIP image tokens, one with 77 for
the CLIP text tokens. Each decoder is a stack of standard Transformer decoder
layers followed by one MoE decoder layer whose feed-forward block is a Soft MoE
(Puigcerver et al.): the experts are shared, so they learn what subjects have in
common, while the routing ("slot") tensor Phi_s is per subject, so each subject
decides how its tokens are mixed into the experts' slots and back. All experts
are always active (soft routing, no top-k), so every step trains every expert.
Two ablations, neither the paper's model: ``moe: dense`` puts one shared feed-forward
block in the MoE's place, and ``decoder: linear`` replaces both query decoders with one
linear map from the flattened fMRI tokens to the flattened target tokens
(docs/benchmarks/psychometry-ablation.md and psychometry-decoder.md measure them; leaderboard.md
has both, and a single shared expert, at the shipped budget on the default world).

Training sums, over subjects, SoftCLIP (fixed temperature) plus mse_mult times the
MSE between L2-normalised flattened vectors, for image and text tokens alike, as
Psychometry's trainer does: one optimiser step on the sum of the subjects' losses.
The MSE is taken per element *of the paper's target size* (``mse_scale: paper``,
see ``losses.normalized_mse``), so mse_mult weighs against SoftCLIP as in the paper.

The released code (``QUANRJ/Psychometry`` on GitHub) is a cleaned-up, non-runnable
post-hoc release; this is a fresh implementation from the description. An optional
low-level branch predicts SD-VAE latents with per-subject projections and a shared
MLP head (the paper uses a diffusers Decoder upsampler there; an MLP keeps it cheap).
"""

from __future__ import annotations

import itertools
import math
import numbers
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from brainrecon.config import StrictConfig
from brainrecon.errors import ConfigError
from brainrecon.models.base import BrainModel, StepInfo, SubjectBatch, TargetSpace
from brainrecon.models.losses import mse_elements, normalized_mse, soft_clip_loss

# NSD subjects the paper trains jointly (nsdgeneral voxel counts at 1.8 mm) and its target shapes.
PAPER_SUBJECTS = {"subj01": 15724, "subj02": 14278, "subj05": 13039, "subj07": 12682}
PAPER_SPACE = TargetSpace({"image_tokens": (257, 768), "text_tokens": (77, 768)})


class PsychometryConfig(StrictConfig):
    """Defaults are the paper's `main.py` settings (100 fMRI tokens, 16 experts x 4 slots)."""

    d_model: int = Field(768, gt=0)
    fmri_seq_len: int = Field(100, gt=0)
    encoder_hidden: tuple[int, ...] = (4096, 2048)
    decoder_layers: int = Field(3, ge=0)  # standard layers; one MoE layer always follows
    heads: int = Field(8, gt=0)
    ff: int = Field(3072, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # "dense": the ablation of the Omni MoE, one feed-forward block (width ff) shared by every subject, no routing;
    # a single shared expert is `num_experts: 1` (it keeps the per-subject slots)
    moe: Literal["omni", "dense"] = "omni"
    # "linear": the ablation of the query decoders. Every target token is read from all the fMRI tokens by its own
    # linear map (the per-token heads of MindBridge and MindEye), with no queries, attention or MoE, so the moe,
    # decoder_layers, heads and ff settings go unused
    decoder: Literal["query", "linear"] = "query"
    num_experts: int = Field(16, gt=0)
    slots_per_expert: int = Field(4, gt=0)
    soft_clip_temperature: float = Field(0.005, gt=0.0)
    mse_mult: float = Field(1e4, ge=0.0)  # config.py default; train_moe.sh uses 1e6
    # how mse_mult is read: "paper", as the papers' weight on 257x768 image / 77x768 text tokens, so it keeps the
    # paper's balance against SoftCLIP at any target size; "literal", on this target's own element mean
    mse_scale: Literal["paper", "literal"] = "paper"
    predict_text: bool = True
    lowlevel: bool = False  # also predict SD-VAE latents (target "lowlevel") for img2img
    lowlevel_hidden: int = Field(4096, gt=0)
    lowlevel_mult: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _check(self) -> PsychometryConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if any(h <= 0 for h in self.encoder_hidden):
            raise ValueError(f"encoder_hidden sizes must be positive, got {self.encoder_hidden}")
        return self


def _module_key(subject: str) -> str:
    """Subject names key nn.ModuleDict / nn.ParameterDict entries, which forbid some names."""
    if not isinstance(subject, str) or not subject or "." in subject:
        raise ConfigError(f"psychometry: subject name {subject!r} cannot name parameters; "
                          f"use a non-empty name without dots, such as 'subj01'")
    return subject


class FMRIEncoder(nn.Module):
    """Subject-specific MLP: voxels -> hidden (GELU) ... -> seq_len tokens of width d_model."""

    def __init__(self, n_voxels: int, hidden: tuple[int, ...], seq_len: int, d_model: int):
        super().__init__()
        sizes = (n_voxels, *hidden)
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.GELU()]
        layers.append(nn.Linear(sizes[-1], seq_len * d_model))
        self.mlp = nn.Sequential(*layers)
        self.seq_len, self.d_model = seq_len, d_model

    def forward(self, betas: torch.Tensor) -> torch.Tensor:
        return self.mlp(betas).view(betas.shape[0], self.seq_len, self.d_model)


class ExpertMLP(nn.Module):
    """One shared expert. linear2 starts at zero, so the MoE block starts as the identity (residual only)."""

    def __init__(self, d_model: int, ff: int):
        super().__init__()
        self.linear1 = nn.Linear(d_model, ff)
        self.linear2 = nn.Linear(ff, d_model)
        nn.init.kaiming_normal_(self.linear1.weight, nonlinearity="relu")
        nn.init.zeros_(self.linear1.bias)
        nn.init.zeros_(self.linear2.weight)
        nn.init.zeros_(self.linear2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.gelu(self.linear1(x)))


class SoftMoE(nn.Module):
    """Omni MoE: Soft MoE whose experts are shared and whose slot tensor Phi_s is per subject.

    For tokens x (B, S, d) of subject s, logits l[b,s,n,p] = <x_hat[b,s], scale * Phi_hat_s[:,n,p]>
    with x_hat, Phi_hat L2-normalised over d (normalising keeps logits bounded so the
    softmaxes neither saturate nor flatten as widths change). Dispatch weights are a
    softmax over tokens (each slot is a convex combination of tokens); combine weights
    a softmax over all expert-slots (each output token a convex combination of slots).
    """

    def __init__(self, d_model: int, ff: int, num_experts: int, slots_per_expert: int, subjects: list[str]):
        super().__init__()
        self.d_model, self.num_experts, self.slots = d_model, num_experts, slots_per_expert
        self.experts = nn.ModuleList(ExpertMLP(d_model, ff) for _ in range(num_experts))
        self.scale = nn.Parameter(torch.ones(()))
        self.gates = nn.ParameterDict()
        for subject in subjects:
            self.add_subject(subject)

    def add_subject(self, subject: str) -> None:
        # std d^-1/2 as in Soft MoE; only the direction matters after normalisation
        phi = torch.randn(self.d_model, self.num_experts, self.slots, device=self.scale.device,
                          dtype=self.scale.dtype) / math.sqrt(self.d_model)
        self.gates[_module_key(subject)] = nn.Parameter(phi)

    def routing(self, x: torch.Tensor, subject: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Dispatch and combine weights, both (B, S, E, P)."""
        phi = F.normalize(self.gates[subject], dim=0) * self.scale
        logits = torch.einsum("bsd,dnp->bsnp", F.normalize(x, dim=-1), phi)
        dispatch = logits.softmax(dim=1)
        combine = logits.flatten(2).softmax(dim=-1).view_as(logits)
        return dispatch, combine

    def forward(self, x: torch.Tensor, subject: str) -> torch.Tensor:
        dispatch, combine = self.routing(x, subject)
        slots = torch.einsum("bsnp,bsd->bnpd", dispatch, x)  # (B, E, P, d)
        out = torch.stack([expert(slots[:, n]) for n, expert in enumerate(self.experts)], dim=1)
        return torch.einsum("bnpd,bsnp->bsd", out, combine)


class DenseFeedForward(nn.Module):
    """The Omni MoE's ablation (``moe: dense``): one feed-forward block for every subject and token."""

    def __init__(self, d_model: int, ff: int):
        super().__init__()
        self.ff = ExpertMLP(d_model, ff)

    def forward(self, x: torch.Tensor, subject: str) -> torch.Tensor:
        return self.ff(x)


class MoEDecoderLayer(nn.Module):
    """Self-attention -> cross-attention -> Soft-MoE FFN, each with dropout, residual and post-LayerNorm."""

    def __init__(self, config: PsychometryConfig, subjects: list[str]):
        super().__init__()
        d = config.d_model
        self.self_attn = nn.MultiheadAttention(d, config.heads, dropout=config.dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, config.heads, dropout=config.dropout, batch_first=True)
        self.moe = (SoftMoE(d, config.ff, config.num_experts, config.slots_per_expert, subjects)
                    if config.moe == "omni" else DenseFeedForward(d, config.ff))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, subject: str) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.self_attn(x, x, x, need_weights=False)[0]))
        x = self.norm2(x + self.dropout(self.cross_attn(x, memory, memory, need_weights=False)[0]))
        return self.norm3(x + self.dropout(self.moe(x, subject)))


class QueryDecoder(nn.Module):
    """Learnable queries decoded against the fMRI tokens, then projected to the target width."""

    def __init__(self, n_queries: int, out_dim: int, config: PsychometryConfig, subjects: list[str]):
        super().__init__()
        d = config.d_model
        self.queries = nn.Parameter(torch.randn(n_queries, d) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(d, config.heads, config.ff, config.dropout, activation="gelu",
                                       batch_first=True)
            for _ in range(config.decoder_layers))
        self.moe_layer = MoEDecoderLayer(config, subjects)
        self.proj = nn.Linear(d, out_dim)

    def forward(self, memory: torch.Tensor, subject: str) -> torch.Tensor:
        x = self.queries.unsqueeze(0).expand(memory.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, memory)
        return self.proj(self.moe_layer(x, memory, subject))


class LinearTokenHead(nn.Module):
    """The query decoder's ablation (``decoder: linear``): one linear map from the flattened fMRI tokens to the
    flattened target tokens, so each target token has weights of its own on every fMRI token."""

    def __init__(self, n_tokens: int, out_dim: int, config: PsychometryConfig):
        super().__init__()
        self.shape = (n_tokens, out_dim)
        self.proj = nn.Linear(config.fmri_seq_len * config.d_model, n_tokens * out_dim)

    def forward(self, memory: torch.Tensor, subject: str) -> torch.Tensor:
        return self.proj(memory.flatten(1)).view(memory.shape[0], *self.shape)


class LowlevelHead(nn.Module):
    """Per-subject projection to a shared width, then a shared MLP to the flattened VAE latents."""

    def __init__(self, subjects: dict[str, int], hidden: int, shape: tuple[int, ...]):
        super().__init__()
        self.hidden, self.shape = hidden, tuple(shape)
        self.project = nn.ModuleDict()
        for subject, n_voxels in subjects.items():
            self.add_subject(subject, n_voxels)
        self.shared = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(),
                                    nn.Linear(hidden, math.prod(self.shape)))

    def add_subject(self, subject: str, n_voxels: int) -> None:
        self.project[_module_key(subject)] = nn.Sequential(
            nn.Linear(n_voxels, self.hidden), nn.LayerNorm(self.hidden), nn.GELU())

    def forward(self, betas: torch.Tensor, subject: str) -> torch.Tensor:
        return self.shared(self.project[subject](betas)).view(betas.shape[0], *self.shape)


class Psychometry(BrainModel):
    """Per-subject encoders, shared query decoders whose last layer is an Omni MoE with per-subject gates."""

    kind: ClassVar[str] = "psychometry"
    config_class: ClassVar[type[StrictConfig]] = PsychometryConfig
    # what every configuration needs; the instance attribute set in __init__ adds text and lowlevel targets
    required_targets: ClassVar[tuple[str, ...]] = ("image_tokens",)
    retrieval_target: ClassVar[str] = "image_tokens"

    def __init__(self, config: PsychometryConfig, subjects: dict[str, int], space: TargetSpace):
        super().__init__(config, subjects, space)
        self.required_targets = self.targets(config)  # type: ignore[misc]
        space.require(self.required_targets, f"model {self.kind!r}")
        for name in ("image_tokens", "text_tokens"):
            if name in self.required_targets and len(space[name]) != 2:
                raise ConfigError(f"{self.kind}: target {name!r} must have shape (tokens, dim), got {space[name]}")
        names = [_module_key(s) for s in self.subjects]
        self.encoders = nn.ModuleDict()
        self.pos_embedding = nn.Parameter(torch.randn(config.fmri_seq_len, config.d_model) * 0.02)
        def decoder(shape: tuple[int, int]) -> nn.Module:  # the paper's query decoder, or its linear ablation
            return QueryDecoder(*shape, config, names) if config.decoder == "query" else LinearTokenHead(*shape, config)

        self.image_decoder = decoder(space["image_tokens"])
        self.text_decoder = decoder(space["text_tokens"]) if config.predict_text else None
        self.lowlevel = (LowlevelHead({}, config.lowlevel_hidden, space["lowlevel"])
                         if config.lowlevel else None)
        for subject, n_voxels in self.subjects.items():
            self._add_encoders(subject, n_voxels)

    @staticmethod
    def targets(config: PsychometryConfig) -> tuple[str, ...]:
        """The targets a model with this configuration predicts and is trained on."""
        return (("image_tokens",) + (("text_tokens",) if config.predict_text else ())
                + (("lowlevel",) if config.lowlevel else ()))

    def moe_layers(self) -> list[SoftMoE]:
        """The Soft-MoE blocks (one per decoder), each holding the shared experts and per-subject gates
        (none in the dense and linear-decoder ablations)."""
        return [d.moe_layer.moe for d in (self.image_decoder, self.text_decoder)
                if isinstance(d, QueryDecoder) and isinstance(d.moe_layer.moe, SoftMoE)]

    def _add_encoders(self, subject: str, n_voxels: int) -> None:
        """The subject's own modules: its voxel encoder(s); gate tensors are added by the caller or __init__."""
        if isinstance(n_voxels, bool) or not isinstance(n_voxels, numbers.Integral) or n_voxels <= 0:
            raise ConfigError(f"{self.kind}: subject {subject!r} needs a positive voxel count, got {n_voxels!r}")
        c = self.config
        encoder = FMRIEncoder(n_voxels, c.encoder_hidden, c.fmri_seq_len, c.d_model)
        self.encoders[_module_key(subject)] = encoder.to(self.pos_embedding)
        if self.lowlevel is not None:
            self.lowlevel.add_subject(subject, n_voxels)
            self.lowlevel.project[subject].to(self.pos_embedding)

    def add_subject(self, subject: str, n_voxels: int) -> None:
        """A fresh encoder and fresh gate tensors for `subject`; the experts and decoders stay shared."""
        if subject in self.subjects:
            raise ConfigError(f"{self.kind}: subject {subject!r} already exists; "
                              f"choose a new name or fine-tune the existing subject")
        self._add_encoders(subject, n_voxels)
        for moe in self.moe_layers():
            moe.add_subject(subject)
        self.subjects[subject] = n_voxels

    def subject_parameters(self, subject: str) -> list[nn.Parameter]:
        if subject not in self.subjects:
            raise ConfigError(f"{self.kind}: unknown subject {subject!r}; known: {sorted(self.subjects)}")
        params = list(self.encoders[subject].parameters())
        params += [moe.gates[subject] for moe in self.moe_layers()]
        if self.lowlevel is not None:
            params += list(self.lowlevel.project[subject].parameters())
        return params

    def forward(self, betas: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        self.check_subject(subject, betas)
        memory = self.encoders[subject](betas) + self.pos_embedding
        out = {"image_tokens": self.image_decoder(memory, subject)}
        if self.text_decoder is not None:
            out["text_tokens"] = self.text_decoder(memory, subject)
        if self.lowlevel is not None:
            out["lowlevel"] = self.lowlevel(betas, subject)
        return out

    def predict(self, betas: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        return self(betas, subject)

    def training_loss(self, batches: list[SubjectBatch], info: StepInfo,
                      generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Sum over subjects of SoftCLIP + mse_mult * normalised MSE, for image and text tokens.

        No randomness beyond dropout enters the loss, so `generator` is unused.
        """
        c = self.config
        total = torch.zeros((), device=self.pos_embedding.device)
        logs: dict[str, float] = {}
        for batch in batches:
            preds = self(batch.betas, batch.subject)
            parts = {}
            for name, short in (("image_tokens", "image"), ("text_tokens", "text")):
                if name in preds:
                    target = batch.targets[name]
                    parts[f"softclip_{short}"] = soft_clip_loss(preds[name], target, c.soft_clip_temperature)
                    parts[f"mse_{short}"] = c.mse_mult * normalized_mse(preds[name], target, mse_elements(c, name))
            if "lowlevel" in preds:
                parts["l1_lowlevel"] = c.lowlevel_mult * F.l1_loss(preds["lowlevel"], batch.targets["lowlevel"])
            loss = sum(parts.values())
            total = total + loss
            for key, value in parts.items():
                logs[key] = logs.get(key, 0.0) + float(value.detach())
            logs[f"loss_{batch.subject}"] = float(loss.detach())
        logs["loss"] = float(total.detach())
        return total, logs


def count_parameters(config: PsychometryConfig | None = None, subjects: dict[str, int] | None = None,
                     space: TargetSpace | None = None) -> dict[str, int]:
    """Parameter counts (total, shared, per subject) built on the meta device, so nothing is allocated.

    Defaults are the paper's: subjects 1, 2, 5, 7 and 257x768 image / 77x768 text tokens.
    """
    config = config or PsychometryConfig()
    subjects = dict(subjects or PAPER_SUBJECTS)
    with torch.device("meta"):
        model = Psychometry(config, subjects, space or PAPER_SPACE)
    total = sum(p.numel() for p in model.parameters())
    per_subject = {s: sum(p.numel() for p in model.subject_parameters(s)) for s in subjects}
    experts = sum(p.numel() for moe in model.moe_layers() for p in moe.experts.parameters())
    return {"total": total, "shared": total - sum(per_subject.values()), "experts": experts,
            **{f"subject_{s}": n for s, n in per_subject.items()}}


__all__ = ["PAPER_SPACE", "PAPER_SUBJECTS", "DenseFeedForward", "ExpertMLP", "FMRIEncoder", "LinearTokenHead", "MoEDecoderLayer", "Psychometry",
           "PsychometryConfig", "QueryDecoder", "SoftMoE", "count_parameters"]
