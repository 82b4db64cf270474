"""`brainrecon evaluate` and `brainrecon report`."""

from __future__ import annotations

from pathlib import Path

import typer

from brainrecon.cli.options import DATA_HELP, DEVICE_HELP


def evaluate_command(
        run: Path = typer.Option(..., "--run", help="A finished training run."),
        recons: Path | None = typer.Option(None, "--recons", help="Reconstructions from `brainrecon reconstruct` "
                                                                  "(without: retrieval and embedding cosine only)."),
        data: Path | None = typer.Option(None, "--data", help=DATA_HELP),
        weights: Path | None = typer.Option(None, "--weights", help="Local folder with the standard AlexNet, "
                                                                    "InceptionV3, EfficientNet-B1 and SwAV files."),
        clip: str | None = typer.Option(None, "--clip", help="CLIP folder for the CLIP metric (OpenAI ViT-L/14 "
                                                             "for the published protocol; default: the run's CLIP)."),
        out: Path | None = typer.Option(None, "--out", help="Where to write metrics.json (default RUN/metrics.json)."),
        way: int = typer.Option(300, "--way", help="N-way retrieval."),
        draws: int = typer.Option(30, "--draws", help="Retrieval draws."),
        allow_test_normalization: bool = typer.Option(
            False, "--allow-test-normalization",
            help="Score betas z-scored with test statistics (MindEye's files), labelled NOT held out."),
        device: str = typer.Option("cpu", "--device", help=DEVICE_HELP)) -> None:
    """The field's metrics for a run, per subject and averaged with 95% CIs; writes metrics.json."""
    from brainrecon.config import validate_config
    from brainrecon.evaluate.evaluation import EvaluateConfig, evaluate_run, metrics_table

    config = validate_config(EvaluateConfig, {
        "way": way, "draws": draws, "weights": str(weights) if weights else None, "clip": clip, "device": device,
        "allow_test_normalization": allow_test_normalization}, "evaluate options", as_flags=True)
    metrics = evaluate_run(run, recons, data, config, out)
    typer.echo(metrics_table(metrics))
    typer.echo(f"Wrote {out or Path(run) / 'metrics.json'}")


def report_command(
        run: Path = typer.Option(..., "--run", help="A run evaluated with `brainrecon evaluate`."),
        out: Path | None = typer.Option(None, "--out", help="Report folder (default RUN/report)."),
        metrics: Path | None = typer.Option(None, "--metrics", help="metrics.json (default RUN/metrics.json)."),
        max_images: int = typer.Option(12, "--max-images", min=1, help="Images per subject in the grids.")) -> None:
    """A self-contained HTML page (index.html) with PNG figures: grids, table, curves, published figures."""
    from brainrecon.report.html import build_report

    path = build_report(run, out, metrics, max_images)
    typer.echo(f"Report: {path}")
