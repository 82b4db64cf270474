"""The training config: one YAML file says everything a run does, and is saved with the run."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from brainrecon.config import StrictConfig
from brainrecon.train.targets import TargetsConfig


class OptimConfig(StrictConfig):
    """AdamW with MindEye's one-cycle schedule (no weight decay on biases and norms)."""

    lr: float = 3e-4  # the peak (max_lr) for "onecycle"
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    pct_start: float | None = None  # warm-up fraction; None = 2 / epochs, as MindEye
    div_factor: float = 25.0
    final_div_factor: float = 1000.0
    grad_clip: float | None = None


class EvalConfig(StrictConfig):
    """Retrieval after training on the held-out test set, MindEye protocol (30 draws of 300, seed 42)."""

    way: int = 300
    draws: int = 30
    seed: int = 42
    batch_size: int = 256


class TrainConfig(StrictConfig):
    seed: int = 0
    subjects: list[str] | None = None  # None: every subject in the store
    sessions: list[int] | None = None  # training sessions to use (None: all); test trials never train
    subject_sessions: dict[str, list[int]] = {}  # per-subject sessions, overriding `sessions` (efficiency studies)
    max_trials: int | None = None  # per subject: a fixed seeded subset (data-efficiency studies)
    model: dict[str, Any]  # {kind: <model kind>, ...that model's options}
    targets: TargetsConfig = TargetsConfig()
    batch_size: int = 32  # per subject per draw, summed over processes
    grad_accum: int = 1
    epochs: int = 10
    max_steps: int | None = None  # stop early (e.g. smoke tests); schedules still span `epochs`
    steps: int | None = None  # a fixed optimiser-step budget the schedule spans, instead of `epochs`
    optim: OptimConfig = OptimConfig()
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: int = 0  # optimiser steps between checkpoints; 0 = once per epoch
    keep_checkpoints: int = 2
    log_every: int = 10
    tensorboard: bool = True  # used when the tensorboard package is installed
    eval: EvalConfig = EvalConfig()
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

    def sessions_for(self, subject: str) -> list[int] | None:
        return self.subject_sessions.get(subject, self.sessions)

    @property
    def model_kind(self) -> str:
        return self.model["kind"]

    @property
    def model_options(self) -> dict:
        return {k: v for k, v in self.model.items() if k != "kind"}
