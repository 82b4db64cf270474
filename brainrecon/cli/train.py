"""`brainrecon train`: one command for every model, from one CPU to many GPUs (via torchrun)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from brainrecon.cli.options import PROGRESS_HELP


def train_command(config: str = typer.Option(..., "--config", help="A train preset (a file of "
                                                                   "brainrecon/configs/train/, e.g. sim-mindbridge, "
                                                                   "nsd-mindeye2) or a YAML path."),
                  data: Path = typer.Option(..., "--data", help="The store to train on."),
                  out: Path = typer.Option(..., "--out", help="Run directory to create (or continue)."),
                  resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest "
                                                                       "checkpoint."),
                  overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run in --out (never a "
                                                                             "folder that is not a run)."),
                  clip: Optional[str] = typer.Option(None, "--clip", help="Local CLIP directory for the targets "
                                                                          "(overrides targets.clip)."),
                  vae: Optional[str] = typer.Option(None, "--vae", help="Local VAE directory for low-level "
                                                                        "targets (overrides targets.vae)."),
                  max_steps: Optional[int] = typer.Option(None, "--max-steps",
                                                          help="Stop after this many steps (the schedules still "
                                                               "span the preset's budget: a cut-short run, for "
                                                               "smoke tests)."),
                  progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP)) -> None:
    """Train a brain model on a store; writes weights, logs, checkpoints and held-out retrieval to --out.

    Multi-GPU / multi-node: `torchrun --nproc_per_node=N -m brainrecon.cli train ...` (or `accelerate launch`).
    """
    from accelerate import PartialState

    from brainrecon.config import load_config, validate_config
    from brainrecon.errors import ConfigError
    from brainrecon.evaluate.evaluation import final_evaluation, metrics_table
    from brainrecon.train.config import TrainConfig
    from brainrecon.train.trainer import train

    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it; give one of them")
    values = load_config(TrainConfig, config, "train").model_dump(mode="json")
    values["targets"].update({k: v for k, v in {"clip": clip, "vae": vae}.items() if v is not None})
    if max_steps is not None:
        values["max_steps"] = max_steps
    cfg = validate_config(TrainConfig, values, source=f"{config} with the command-line options")
    run = train(cfg, data, out, resume=resume, progress=progress, overwrite=overwrite)
    if PartialState().is_main_process:  # under torchrun or accelerate launch, the first process evaluates, once
        typer.echo(metrics_table(final_evaluation(run)))
        typer.echo(f"Run written to {run}")
