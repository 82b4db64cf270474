"""The training config: one YAML file says everything a run does, and is saved with the run."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from brainrecon.config import StrictConfig, validate_config
from brainrecon.models import model_class
from brainrecon.train.targets import TargetsConfig
from brainrecon.train.validation import ValidationConfig


class OptimConfig(StrictConfig):
    """AdamW with MindEye's one-cycle schedule (no weight decay on biases and norms)."""

    lr: float = Field(3e-4, gt=0)  # the peak (max_lr) for "onecycle"
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    # "onecycle" only: the share of the run's optimiser steps spent warming up. The papers write it per epoch
    # (MindEye's 2 / epochs: 0.8% of 240 epochs, 1.3% of 150, 0.4% of Psychometry's 500); a fraction of
    # steps keeps a 1-4 epoch run from spending half of itself in warm-up. None: 2 / epochs (capped at 0.5),
    # the per-epoch rule, kept for runs made before this default
    pct_start: float | None = Field(0.02, gt=0, lt=1)
    div_factor: float = Field(25.0, gt=0)
    final_div_factor: float = Field(1000.0, gt=0)
    grad_clip: float | None = Field(None, gt=0)
    # AdamW's kernel. "auto": fused (one kernel over all parameters) where torch has it for the device
    # (CPU and CUDA here), else foreach; "for-loop" is torch's per-tensor reference, for comparison only
    kernel: Literal["auto", "fused", "foreach", "for-loop"] = "auto"
    # "cosine" only: a linear warm-up over the first warmup_steps steps (lr * (step + 1) / warmup_steps),
    # then a cosine from lr down to lr * min_lr_fraction. The defaults (0, 0) are the plain cosine to 0.
    warmup_steps: int = Field(0, ge=0)
    min_lr_fraction: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _cosine_options_need_cosine(self) -> OptimConfig:
        if self.schedule != "cosine" and (self.warmup_steps or self.min_lr_fraction):
            raise ValueError(f"warmup_steps and min_lr_fraction shape the 'cosine' schedule only, "
                             f"not {self.schedule!r}")
        return self


class EvalConfig(StrictConfig):
    """Retrieval after training on the held-out test set, MindEye protocol (30 draws of 300, seed 42)."""

    way: int = Field(300, ge=2)
    draws: int = Field(30, ge=1)
    seed: int = 42
    batch_size: int = Field(256, ge=1)


class TrainConfig(StrictConfig):
    seed: int = 0
    subjects: list[str] | None = None  # None: every subject in the store
    sessions: list[int] | None = None  # training sessions to use (None: all); test trials never train
    subject_sessions: dict[str, list[int]] = {}  # per-subject sessions, overriding `sessions` (efficiency studies)
    max_trials: int | None = Field(None, ge=1)  # per subject: a fixed seeded subset (data-efficiency studies)
    model: dict[str, Any]  # {kind: <model kind>, ...that model's options}
    targets: TargetsConfig = TargetsConfig()
    batch_size: int = 32  # per subject per draw, summed over processes
    grad_accum: int = 1
    epochs: int = 10
    max_steps: int | None = Field(None, ge=1)  # stop early (e.g. smoke tests); schedules still span `epochs`
    steps: int | None = None  # a fixed optimiser-step budget the schedule spans, instead of `epochs`
    optim: OptimConfig = OptimConfig()
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: int = Field(0, ge=0)  # optimiser steps between checkpoints; 0 = once per epoch
    keep_checkpoints: int = 2
    log_every: int = 10
    tensorboard: bool = True  # used when the tensorboard package is installed
    eval: EvalConfig = EvalConfig()
    validation: ValidationConfig = ValidationConfig()  # a held-out slice of the training stimuli
    init_from: str | None = None  # a finished run to start from (fine-tuning / reset-tuning)
    tune: Literal["all", "new-subjects"] = "all"  # "new-subjects": train only subjects not in init_from

    @field_validator("model")
    @classmethod
    def _has_kind(cls, value: dict) -> dict:
        if not isinstance(value.get("kind"), str):
            raise ValueError(  # noqa: TRY004 (pydantic turns ValueError into a validation message)
                "model needs a `kind` (ridge, mindeye1, mindeye2, mindbridge, psychometry, mindreader)")
        return value

    @field_validator("batch_size", "grad_accum", "epochs", "log_every", "keep_checkpoints", "steps")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be at least 1")
        return value

    @model_validator(mode="after")
    def _model_options_fit_the_model(self) -> TrainConfig:
        # checked here, with the rest of the config, so a typo fails before a run folder is written
        cls = model_class(self.model_kind)
        validate_config(cls.config_class, self.model_options, source=f"model ({self.model_kind})")
        if cls.closed_form and self.validation.enabled:
            raise ValueError(f"validation.fraction holds stimuli out of gradient training; a {self.model_kind} "
                             f"is fitted in closed form and chooses its own settings by cross-validation on "
                             f"every training stimulus. Remove `validation:` from the config")
        return self

    def sessions_for(self, subject: str) -> list[int] | None:
        return self.subject_sessions.get(subject, self.sessions)

    @property
    def model_kind(self) -> str:
        return self.model["kind"]

    @property
    def model_options(self) -> dict:
        return {k: v for k, v in self.model.items() if k != "kind"}
