"""The contract every trainable brain model follows, so one trainer and one evaluator serve them all.

A model maps one subject's betas to predictions in a *target space*: named
per-stimulus arrays computed once from the stimuli by the embedders.

============== ============ ==================================================
name           shape        what
============== ============ ==================================================
image_tokens   (T, D)       CLIP image hidden states, each token divided by the
                            CLS token's norm (Versatile-Diffusion convention)
image_pooled   (D,)         CLIP image_embeds (unnormalised)
text_tokens    (77, D)      CLIP text hidden states / norm of the pooled embedding
text_pooled    (D,)         CLIP text_embeds of the caption (unnormalised)
lowlevel       (C, H, W)    VAE latents of the image (already scaled)
============== ============ ==================================================

The trainer gives a model a list of :class:`SubjectBatch` (one per subject, so
multi-subject models see balanced batches and can keep per-subject operations,
such as MixCo permutations, inside each subject's part) and a :class:`StepInfo`;
the model returns its scalar loss and a dict of floats to log. Randomness that
is part of the loss (MixCo draws, prior noise, conditioning dropout) comes from
the ``generator`` argument, which the trainer derives from (seed, step, rank):
that is what makes a resumed run reproduce the uninterrupted one exactly.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from brainrecon.config import StrictConfig
from brainrecon.errors import ConfigError

TARGET_NAMES = ("image_tokens", "image_pooled", "text_tokens", "text_pooled", "lowlevel")


@dataclass(frozen=True)
class TargetSpace:
    """Per-stimulus shapes of the targets a run was built with."""

    shapes: dict[str, tuple[int, ...]]

    def __post_init__(self):
        unknown = set(self.shapes) - set(TARGET_NAMES)
        if unknown:
            raise ConfigError(f"unknown target name(s) {sorted(unknown)}; known: {', '.join(TARGET_NAMES)}")

    def __contains__(self, name: str) -> bool:
        return name in self.shapes

    def __getitem__(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def require(self, names: tuple[str, ...], who: str) -> None:
        missing = [n for n in names if n not in self.shapes]
        if missing:
            raise ConfigError(f"{who} needs target(s) {missing}, but the target space has only "
                              f"{sorted(self.shapes)}; enable them under `targets:` in the config")

    def to_dict(self) -> dict:
        return {name: list(shape) for name, shape in self.shapes.items()}

    @classmethod
    def from_dict(cls, data: dict) -> TargetSpace:
        return cls({name: tuple(int(s) for s in shape) for name, shape in data.items()})


@dataclass
class SubjectBatch:
    """One subject's part of a training batch."""

    subject: str
    betas: torch.Tensor  # (B, n_voxels) float32, normalised as the store prescribes
    targets: dict[str, torch.Tensor]  # name -> (B, *shape) float32
    stimulus_ids: torch.Tensor  # (B,) int64

    def __len__(self) -> int:
        return self.betas.shape[0]

    def to(self, device: torch.device | str) -> SubjectBatch:
        return SubjectBatch(self.subject, self.betas.to(device),
                            {name: value.to(device) for name, value in self.targets.items()}, self.stimulus_ids)


@dataclass(frozen=True)
class StepInfo:
    """Where training is, for schedules that depend on it (MixCo phase, SoftCLIP temperature).

    Schedules are functions of the optimiser step, never of the epoch, so that a short run is a
    shortened long one (an epoch-based phase rounds to nothing in a 1-3 epoch run)."""

    step: int  # optimiser step, 0-based
    total_steps: int

    @property
    def progress(self) -> float:
        return self.step / max(1, self.total_steps)


class BrainModel(nn.Module, abc.ABC):
    """Base class: subclass, set the class variables, and implement `predict` and `training_loss`."""

    kind: ClassVar[str]  # the name used in configs (`model: {kind: ...}`)
    config_class: ClassVar[type[StrictConfig]]
    required_targets: ClassVar[tuple[str, ...]] = ("image_tokens",)
    # the prediction compared with the target of the same name in retrieval evaluation
    retrieval_target: ClassVar[str] = "image_tokens"
    # True: fitted in one solve per subject by `fit_subject`, not by gradient steps (the ridge)
    closed_form: ClassVar[bool] = False

    def __init__(self, config: StrictConfig, subjects: dict[str, int], space: TargetSpace):
        super().__init__()
        if not subjects:
            raise ConfigError(f"{self.kind}: no subjects given; list at least one under `subjects:`")
        space.require(self.required_targets, f"model {self.kind!r}")
        self.config, self.space = config, space
        self.subjects = dict(subjects)  # name -> n_voxels, in a stable order

    def check_subject(self, subject: str, betas: torch.Tensor) -> None:
        if subject not in self.subjects:
            raise ConfigError(f"{self.kind}: unknown subject {subject!r}; this model was built for "
                              f"{sorted(self.subjects)}")
        expected = self.subjects[subject]
        if betas.ndim != 2 or betas.shape[1] != expected:
            raise ConfigError(f"{self.kind}: subject {subject!r} expects betas of shape (batch, {expected}), "
                              f"got {tuple(betas.shape)}; was the model trained on another store?")

    @abc.abstractmethod
    def predict(self, betas: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        """Deterministic predictions (eval mode), keyed by target name; must include `retrieval_target`."""

    @abc.abstractmethod
    def training_loss(self, batches: list[SubjectBatch], info: StepInfo,
                      generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss for one step over all subjects' batches, and floats to log."""

    @property
    def fit_targets(self) -> tuple[str, ...]:
        """The targets a closed-form model's `fit_subject` is given."""
        return ()

    def fit_subject(self, subject: str, betas: np.ndarray, targets: dict[str, np.ndarray],
                    groups: np.ndarray) -> dict:
        """Closed-form models: fit ``subject``'s parameters on all its training trials (``targets``: each
        of `fit_targets` for those trials, (n, t) arrays that may only be read by blocks of columns,
        ``[:, start:stop]``; ``groups``: their stimulus ids, so cross-validation folds never split a
        stimulus's repeats). Returns what the fit chose, for the run's record."""
        raise NotImplementedError(f"model {self.kind!r} is trained by gradient steps, not in closed form")

    def embeddings_for_generation(self, betas: torch.Tensor, subject: str,
                                  generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Embeddings that condition the image generator. Models with a diffusion prior sample it here."""
        return self.predict(betas, subject)

    def add_subject(self, subject: str, n_voxels: int) -> None:
        """Add fresh subject-specific parameters (fine-tuning to a new subject)."""
        raise ConfigError(f"model {self.kind!r} is single-subject and cannot add subject {subject!r}; "
                          f"train a new run for it instead")

    def subject_parameters(self, subject: str) -> list[nn.Parameter]:
        """The parameters that belong to `subject` alone (trained in reset-tuning, everything else frozen)."""
        raise ConfigError(f"model {self.kind!r} has no subject-specific parameters to tune alone")


@torch.no_grad()
def predict_in_batches(model: BrainModel, betas, subject: str, batch_size: int = 256, for_generation: bool = False,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """A model's predictions (or generation embeddings) for many trials, as float32 numpy arrays."""
    device = next(iter(model.parameters()), next(iter(model.buffers()), torch.empty(0))).device
    outputs: dict[str, list] = {}
    for start in range(0, len(betas), batch_size):
        chunk = torch.as_tensor(np.asarray(betas[start:start + batch_size], np.float32)).to(device)
        if for_generation:
            result = model.embeddings_for_generation(chunk, subject, torch.Generator().manual_seed(seed + start))
        else:
            result = model.predict(chunk, subject)
        for key, value in result.items():
            outputs.setdefault(key, []).append(value.float().cpu().numpy())
    return {key: np.concatenate(value) for key, value in outputs.items()}


class TrainingStep(nn.Module):
    """Wraps a model so that DistributedDataParallel sees the loss computation as `forward`.

    DDP prepares its gradient reduction inside `forward`; calling `training_loss`
    on a wrapped module directly would bypass it.
    """

    def __init__(self, model: BrainModel):
        super().__init__()
        self.model = model

    def forward(self, batches: list[SubjectBatch], info: StepInfo, generator: torch.Generator):
        return self.model.training_loss(batches, info, generator)
