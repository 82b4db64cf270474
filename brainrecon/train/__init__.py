"""Training: targets from the embedders, balanced multi-subject batches, one trainer, the run directory."""

from brainrecon.train.config import EvalConfig, OptimConfig, TrainConfig
from brainrecon.train.run import RunDir, RunInfo, load_run
from brainrecon.train.targets import Targets, TargetsConfig, load_targets
from brainrecon.train.trainer import train

__all__ = ["EvalConfig", "OptimConfig", "RunDir", "RunInfo", "Targets", "TargetsConfig", "TrainConfig",
           "load_run", "load_targets", "train"]
