"""`brainrecon assets ...`: train and check the simulated world's small model set."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Train and check the small model set for the simulated world.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)

THREADS_HELP = ("torch CPU threads for this command (the library leaves torch's thread count alone, except while "
                "it simulates a world, at a fixed count).")


def use_threads(threads: int) -> None:
    """Set torch's CPU thread count for the whole command (the command layer owns global torch state)."""
    import torch

    torch.set_num_threads(threads)


@app.command()
def train(out: Path = typer.Option(..., "--out", help="Directory for clip/, decoder/ and manifest.json."),
          seed: int = typer.Option(0, "--seed", help="Seed for the training scenes and all training randomness."),
          quick: bool = typer.Option(False, "--quick", help="Tiny models, a few steps (for tests)."),
          decoder_only: bool = typer.Option(False, "--decoder-only",
                                            help="Keep the CLIP and VAE already in --out; train a fresh decoder."),
          check: bool = typer.Option(True, "--check/--no-check",
                                     help="Afterwards choose guidance on validation scenes and measure held-out "
                                          "decoding quality (skipped with --quick)."),
          threads: int = typer.Option(2, "--threads", min=1, help=THREADS_HELP)) -> None:
    """Train the small CLIP, VAE and unCLIP-style decoder on simulator scenes and captions."""
    from brainrecon.assets.check import check_assets
    from brainrecon.assets.train import train_assets
    from brainrecon.assets.tune import tune_guidance

    use_threads(threads)

    command = (f"brainrecon assets train --out {out} --seed {seed}" + (" --quick" if quick else "")
               + (" --decoder-only" if decoder_only else ""))
    try:
        train_assets(out, seed=seed, quick=quick, command=command, decoder_only=decoder_only, log=typer.echo)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if check and not quick:  # as `assets tune` then `assets check`: guidance from validation scenes first
        tune_guidance(out, log=typer.echo)
        check_assets(out, command=f"brainrecon assets check {out}", log=typer.echo)


@app.command("check")
def check_command(folder: Path = typer.Argument(..., help="A directory written by `brainrecon assets train`."),
                  n: int = typer.Option(200, "--n", min=2,
                                        help="Held-out scenes (the default world's shared test images)."),
                  steps: int = typer.Option(25, "--steps", min=1, help="DDIM steps."),
                  guidance: Optional[float] = typer.Option(
                      None, "--guidance", help="Classifier-free guidance scale (default: the one `brainrecon assets "
                                               "tune` chose on validation scenes, else 3.0)."),
                  seed: int = typer.Option(0, "--seed", help="Sampling seed."),
                  grid: Optional[Path] = typer.Option(None, "--grid", help="Write originals/decodings grid PNG here."),
                  threads: int = typer.Option(2, "--threads", min=1, help=THREADS_HELP)) -> None:
    """Decode true small-CLIP embeddings of held-out scenes; report 2-way identification (into the manifest)."""
    from brainrecon.assets.check import check_assets
    from brainrecon.assets.manifest import recorded_guidance

    use_threads(threads)

    guidance = recorded_guidance(folder) if guidance is None else guidance
    command = (f"brainrecon assets check {folder} --n {n} --steps {steps} --guidance {guidance:g} --seed {seed}"
               + (f" --grid {grid}" if grid else ""))
    check_assets(folder, n=n, steps=steps, guidance_scale=guidance, seed=seed, grid_path=grid, command=command,
                 log=typer.echo)


@app.command("tune")
def tune_command(folder: Path = typer.Argument(..., help="A directory written by `brainrecon assets train`."),
                 guidance: Optional[list[float]] = typer.Option(
                     None, "--guidance", help="Scales to try (repeat the option; default 1.5, 3, 5 and 8)."),
                 n: int = typer.Option(200, "--n", min=2,
                                       help="Validation scenes (never trained on, not the held-out set)."),
                 steps: int = typer.Option(25, "--steps", min=1, help="DDIM steps."),
                 seed: int = typer.Option(0, "--seed", help="Sampling seed."),
                 threads: int = typer.Option(2, "--threads", min=1, help=THREADS_HELP)) -> None:
    """Choose the guidance scale on validation scenes; `check` then uses it by default."""
    from brainrecon.assets.tune import DEFAULT_TUNE_SCALES, tune_guidance

    use_threads(threads)

    tune_guidance(folder, guidance or DEFAULT_TUNE_SCALES, n=n, steps=steps, seed=seed, log=typer.echo)


if __name__ == "__main__":
    app()
