"""MindBridge (Wang et al., CVPR 2024): one model for many subjects, and cheap adaptation to a new one.

Subjects differ in voxel count, so each subject's betas are first pooled to a
fixed length (adaptive max pooling by default, the paper's "biologically
inspired aggregation"). A small per-subject *embedder* maps the pooled vector to
a shared hidden space; everything after it (a residual MLP "translator" and the
linear CLIP heads) is shared. A per-subject *builder* maps the hidden vector back
to pooled fMRI. Two losses use it:

* reconstruction, ``L_rec = MSE(v_s, builder_s(embedder_s(v_s)))``;
* cycle, for two subjects a != b drawn each step:
  ``x_a = embedder_a(v_a)``, ``x̂_b = embedder_b(builder_b(x_a))``, ``L_cyc = MSE(x_a, x̂_b)``.
  It ties the subjects' embedders to one hidden space: b's embedder must read
  the "fMRI of b" that b's builder synthesises from a's embedding back to the
  same point.

Reset-tuning (adapting to a new subject): `add_subject` attaches a fresh
embedder and builder, the trainer freezes everything except
`subject_parameters(new)`, and each step pairs source-subject batches with the
new subject's. Setting ``cycle_into: <new subject>`` makes the cycle always run
a = a source subject, b = the new one, as the paper does; only then does the
cycle loss reach the new subject's builder and embedder from a frozen source
embedding.

Differences from the reference code, on purpose: pooling happens inside the
model (so a checkpoint takes raw betas), and the pair (a, b) comes from the
step's generator so that resumed runs reproduce exactly.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from brainrecon.config import StrictConfig
from brainrecon.errors import ConfigError
from brainrecon.models.base import BrainModel, StepInfo, SubjectBatch, TargetSpace
from brainrecon.models.losses import mse_elements, normalized_mse, soft_clip_loss


class MindBridgeConfig(StrictConfig):
    pool_length: int = 8192  # every subject's betas are pooled to this many values
    pool: Literal["max", "avg", "resize"] = "max"  # adaptive max/avg pooling, or linear interpolation
    adapter_bottleneck: int = 128
    hidden: int = 2048  # h, the shared embedding width
    n_blocks: int = 4  # residual blocks in the shared translator
    dropout_in: float = 0.5  # after each subject's embedder
    dropout: float = 0.15  # inside the translator
    soft_clip_temperature: float = 0.005
    mse_mult: float = 1e4  # weight of the normalised-MSE terms (image + text)
    # how mse_mult is read: "paper", as the papers' weight on 257x768 image / 77x768 text tokens, so it keeps the
    # paper's balance against SoftCLIP at any target size; "literal", on this target's own element mean
    mse_scale: Literal["paper", "literal"] = "paper"
    rec_mult: float = 1.0  # weight of the per-subject fMRI reconstruction loss
    cyc_mult: float = 1.0  # weight of the cross-subject cycle loss
    predict_text: bool = True  # also predict CLIP text tokens (needs the text_tokens target)
    # reset-tuning: when this subject is among a step's batches the cycle always ends in it (b = this
    # subject, a drawn from the others); when it is absent the pair is drawn freely
    cycle_into: str | None = None


class AdaptivePool(nn.Module):
    """Pools (B, n_voxels) betas to (B, length), whatever n_voxels is (fewer voxels than `length` repeat).

    "max" and "avg" are adaptive pooling over consecutive voxel bins; "resize" is
    linear interpolation. No parameters: the same module serves every subject.
    """

    def __init__(self, length: int, mode: str = "max"):
        super().__init__()
        self.length, self.mode = length, mode

    def forward(self, betas: torch.Tensor) -> torch.Tensor:
        x = betas.unsqueeze(1)  # (B, 1, n_voxels): the 1-D pooling ops want a channel axis
        if self.mode == "max":
            x = F.adaptive_max_pool1d(x, self.length)
        elif self.mode == "avg":
            x = F.adaptive_avg_pool1d(x, self.length)
        else:
            x = F.interpolate(x, size=self.length, mode="linear", align_corners=False)
        return x.squeeze(1)

    def extra_repr(self) -> str:
        return f"length={self.length}, mode={self.mode!r}"


class Adapter(nn.Module):
    """Residual bottleneck x + up(relu(down(x))); `up` starts at zero so a fresh adapter is the identity."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.relu(self.down(x)))


class ResidualMLP(nn.Module):
    """The shared translator: n blocks of [Linear, LayerNorm, GELU, Dropout], each added to its input."""

    def __init__(self, dim: int, n_blocks: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.GELU(), nn.Dropout(dropout))
            for _ in range(n_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


def _embedder(config: MindBridgeConfig) -> nn.Sequential:
    """Pooled fMRI -> hidden: Adapter, Linear, LayerNorm, GELU, Dropout."""
    return nn.Sequential(Adapter(config.pool_length, config.adapter_bottleneck),
                         nn.Linear(config.pool_length, config.hidden), nn.LayerNorm(config.hidden), nn.GELU(),
                         nn.Dropout(config.dropout_in))


def _builder(config: MindBridgeConfig) -> nn.Sequential:
    """Hidden -> pooled fMRI: Linear, LayerNorm, GELU, Adapter (the embedder's mirror)."""
    return nn.Sequential(nn.Linear(config.hidden, config.pool_length), nn.LayerNorm(config.pool_length), nn.GELU(),
                         Adapter(config.pool_length, config.adapter_bottleneck))


class MindBridge(BrainModel):
    kind = "mindbridge"
    config_class = MindBridgeConfig
    required_targets = ("image_tokens", "text_tokens")  # with the default predict_text=True
    retrieval_target = "image_tokens"

    def __init__(self, config: MindBridgeConfig, subjects: dict[str, int], space: TargetSpace):
        # what this config needs (the class default assumes text): set before the base class checks it
        self.required_targets = ("image_tokens", "text_tokens") if config.predict_text else ("image_tokens",)
        super().__init__(config, subjects, space)
        for name in subjects:
            _check_name(name)
        self.pool = AdaptivePool(config.pool_length, config.pool)
        self.embedders = nn.ModuleDict({name: _embedder(config) for name in subjects})
        self.builders = nn.ModuleDict({name: _builder(config) for name in subjects})
        self.translator = ResidualMLP(config.hidden, config.n_blocks, config.dropout)
        self.image_shape = tuple(space["image_tokens"])
        self.image_head = nn.Linear(config.hidden, _numel(self.image_shape))
        self.text_shape = tuple(space["text_tokens"]) if config.predict_text else None
        self.text_head = nn.Linear(config.hidden, _numel(self.text_shape)) if self.text_shape else None

    # --- forward pieces ------------------------------------------------------------------------------

    def embed(self, betas: torch.Tensor, subject: str) -> torch.Tensor:
        """(B, n_voxels) betas -> (B, hidden) subject embedding (pooling, then the subject's embedder)."""
        self.check_subject(subject, betas)
        return self.embedders[subject](self.pool(betas))

    def heads(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        """Shared translator and heads: (B, hidden) -> target-shaped predictions."""
        h = self.translator(embedding)
        out = {"image_tokens": self.image_head(h).reshape(-1, *self.image_shape)}
        if self.text_head is not None:
            out["text_tokens"] = self.text_head(h).reshape(-1, *self.text_shape)
        return out

    def predict(self, betas: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        return self.heads(self.embed(betas, subject))

    # --- training ------------------------------------------------------------------------------------

    def cycle_pair(self, subjects: list[str], generator: torch.Generator) -> tuple[str, str] | None:
        """The (a, b) of this step's cycle loss, or None with fewer than two subjects."""
        if len(subjects) < 2:
            return None
        target = self.config.cycle_into
        if target is not None and target in subjects:
            sources = [s for s in subjects if s != target]
            return sources[int(torch.randint(len(sources), (1,), generator=generator))], target
        a = int(torch.randint(len(subjects), (1,), generator=generator))
        b = (a + 1 + int(torch.randint(len(subjects) - 1, (1,), generator=generator))) % len(subjects)
        return subjects[a], subjects[b]

    def training_loss(self, batches: list[SubjectBatch], info: StepInfo,
                      generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """SoftCLIP + normalised MSE on all subjects' predictions together, plus reconstruction and cycle.

        The contrastive and MSE terms run on the concatenated batch, as the paper
        concatenates its per-subject batches: other subjects' stimuli are
        negatives too. SoftCLIP's soft labels come from target similarity, so a
        stimulus drawn for two subjects in one step is not a false negative.
        """
        cfg = self.config
        names = [b.subject for b in batches]
        if len(set(names)) != len(names):
            raise ConfigError(f"mindbridge: expected one batch per subject, got subjects {names}")
        pooled = {b.subject: self.pool(_checked(self, b)) for b in batches}
        embedded = {s: self.embedders[s](v) for s, v in pooled.items()}
        preds = self.heads(torch.cat([embedded[b.subject] for b in batches]))

        logs: dict[str, float] = {}
        loss = torch.zeros((), device=preds["image_tokens"].device)
        for name in preds:
            target = torch.cat([b.targets[name] for b in batches])
            clip = soft_clip_loss(preds[name], target, cfg.soft_clip_temperature)
            mse = normalized_mse(preds[name], target, mse_elements(cfg, name))
            loss = loss + clip + cfg.mse_mult * mse
            short = name.split("_")[0]  # "image" / "text"
            logs[f"clip_{short}"], logs[f"mse_{short}"] = float(clip.detach()), float(mse.detach())

        rec = torch.stack([F.mse_loss(self.builders[s](embedded[s]), v) for s, v in pooled.items()]).mean()
        loss = loss + cfg.rec_mult * rec
        logs["rec"] = float(rec.detach())

        pair = self.cycle_pair([b.subject for b in batches], generator)
        if pair is not None:
            a, b = pair
            x_a = embedded[a]
            x_b = self.embedders[b](self.builders[b](x_a))  # a's embedding, as b's fMRI, read back by b
            cyc = F.mse_loss(x_b, x_a)
            loss = loss + cfg.cyc_mult * cyc
            logs["cyc"] = float(cyc.detach())
        logs["loss"] = float(loss.detach())
        return loss, logs

    # --- reset-tuning ------------------------------------------------------------------------------

    def add_subject(self, subject: str, n_voxels: int) -> None:
        """A fresh embedder and builder for `subject` (on the model's device); the shared part is untouched."""
        _check_name(subject)
        if subject in self.subjects:
            raise ConfigError(f"mindbridge: subject {subject!r} is already part of this model; "
                              f"reset-tuning needs a subject it was not trained on")
        device = self.image_head.weight.device
        self.subjects[subject] = int(n_voxels)
        self.embedders[subject] = _embedder(self.config).to(device)
        self.builders[subject] = _builder(self.config).to(device)

    def subject_parameters(self, subject: str) -> list[nn.Parameter]:
        if subject not in self.subjects:
            raise ConfigError(f"mindbridge: unknown subject {subject!r}; known: {sorted(self.subjects)}")
        return [*self.embedders[subject].parameters(), *self.builders[subject].parameters()]


def _checked(model: BrainModel, batch: SubjectBatch) -> torch.Tensor:
    model.check_subject(batch.subject, batch.betas)
    return batch.betas


def _check_name(name: str) -> None:
    # subject names key nn.ModuleDicts, whose keys may not contain dots
    if not name or "." in name:
        raise ConfigError(f"mindbridge: subject name {name!r} must be non-empty and contain no '.'")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
