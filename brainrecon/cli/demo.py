"""`brainrecon demo`: the main job on a simulated world, end to end."""

from __future__ import annotations

from pathlib import Path

import typer

from brainrecon.cli.options import PROGRESS_HELP


def demo(out: Path = typer.Option(Path("brainrecon-demo"), "--out", help="Output folder (replaced if it holds "
                                                                          "an earlier demo)."),
         config: str = typer.Option("default", "--config", help="World preset name or YAML path."),
         images: int = typer.Option(30, "--images", min=1,
                                    help="The first subject's test images to reconstruct (with and "
                                         "without Ecphory)."),
         deep_steps: int | None = typer.Option(None, "--deep-steps", min=0,
                                               help="Optimiser steps of the deep model trained beside the ridge "
                                                    "(MindEye2-style, pooled: preset sim-mindeye2-pooled; default: "
                                                    "2048, what fits the demo's five minutes); 0 leaves it out."),
         progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP)) -> None:
    """The main job on the simulated world: simulate, fit ridge, train a deep model, compare them with the
    oracle and their space's ceiling, reconstruct."""
    from brainrecon.demo import DEEP_STEPS, run_demo

    run_demo(out, config, progress, echo=typer.echo, n_images=images,
             deep_steps=DEEP_STEPS if deep_steps is None else deep_steps)
