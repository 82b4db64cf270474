"""`brainrecon demo`: the main job on a simulated world, end to end."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(out: Path = typer.Option(Path("brainrecon-demo"), "--out", help="Output folder (replaced if it holds "
                                                                          "an earlier demo)."),
         config: str = typer.Option("default", "--config", help="World preset name or YAML path."),
         images: int = typer.Option(30, "--images", min=1,
                                    help="Test images to reconstruct (with and without Ecphory)."),
         progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
    """The main job on the simulated world: simulate, fit ridge, compare with the oracle, reconstruct."""
    from brainrecon.demo import run_demo

    run_demo(out, config, progress, echo=typer.echo, n_images=images)
