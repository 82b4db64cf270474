"""Brain models: one file per method, all following the contract in `base.py`.

The registry names each trainable model's class by its config `kind`; modules are
imported on first use so that listing the kinds costs nothing.
"""

from __future__ import annotations

from importlib import import_module

from brainrecon.config import validate_config
from brainrecon.errors import ConfigError
from brainrecon.models.base import BrainModel, StepInfo, SubjectBatch, TargetSpace
from brainrecon.models.ridge import Ridge, RidgeConfig

MODEL_CLASSES = {
    "ridge": "brainrecon.models.ridge:RidgeDecoder",
    "mindeye1": "brainrecon.models.mindeye1:MindEye1",
    "mindeye2": "brainrecon.models.mindeye2:MindEye2",
    "mindbridge": "brainrecon.models.mindbridge:MindBridge",
    "psychometry": "brainrecon.models.psychometry:Psychometry",
    "mindreader": "brainrecon.models.mindreader:MindReader",
}


def model_class(kind: str) -> type[BrainModel]:
    if kind not in MODEL_CLASSES:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of: {', '.join(MODEL_CLASSES)}")
    module, name = MODEL_CLASSES[kind].split(":")
    return getattr(import_module(module), name)


def build_model(kind: str, options: dict, subjects: dict[str, int], space: TargetSpace) -> BrainModel:
    """A fresh model from its kind and config options (validated: unknown keys are errors)."""
    cls = model_class(kind)
    config = validate_config(cls.config_class, options, source=f"model ({kind})")
    return cls(config, subjects, space)


__all__ = [
    "MODEL_CLASSES",
    "BrainModel",
    "Ridge",
    "RidgeConfig",
    "StepInfo",
    "SubjectBatch",
    "TargetSpace",
    "build_model",
    "model_class",
]
