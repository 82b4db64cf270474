"""`brainrecon bench ...`: benchmarks made by the project's own commands."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

app = typer.Typer(help="Benchmarks: the leaderboard against the oracle, data efficiency.", no_args_is_help=True)


@app.command("leaderboard")
def leaderboard(preset: str = typer.Option("default", "--preset", help="A bench preset (default, smoke) or YAML."),
                out: Path = typer.Option(Path("brainrecon-leaderboard"), "--out",
                                         help="Working folder (store, runs, rows); resumes what it finds."),
                doc: Path | None = typer.Option(None, "--doc", help="Also copy leaderboard.md here, e.g. "
                                                                    "docs/benchmarks/leaderboard.md.")) -> None:
    """Train and evaluate every model on a simulated world with fixed seeds, beside the Bayes-optimal oracle."""
    from brainrecon.bench.leaderboard import LeaderboardConfig, run_leaderboard
    from brainrecon.config import load_config

    config = load_config(LeaderboardConfig, preset, "bench")
    result = run_leaderboard(config, out, echo=typer.echo, preset=preset)
    typer.echo("\n" + (out / "leaderboard.md").read_text())
    if doc is not None:
        doc.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "leaderboard.md", doc)
        shutil.copyfile(out / "leaderboard.json", doc.with_suffix(".json"))
        typer.echo(f"Copied to {doc} and {doc.with_suffix('.json')}")
    best = max(result["rows"], key=lambda r: r["image_top1"])
    typer.echo(f"Best: {best['label']}, {best['ratio_to_oracle']:.2f} of the oracle's image retrieval")


@app.command("efficiency")
def efficiency(preset: str = typer.Option("efficiency-default", "--preset",
                                          help="A bench preset (efficiency-default, efficiency-smoke) or YAML."),
               out: Path = typer.Option(Path("brainrecon-efficiency"), "--out",
                                        help="Working folder (store, runs, rows); resumes what it finds."),
               doc: Path | None = typer.Option(None, "--doc", help="Also copy efficiency.md (and its plot) here.")
               ) -> None:
    """Per-subject vs multi-subject training with 1, 2, 4, all sessions; new-subject adaptation."""
    from brainrecon.bench.efficiency import EfficiencyConfig, run_efficiency
    from brainrecon.config import load_config

    config = load_config(EfficiencyConfig, preset, "bench")
    run_efficiency(config, out, echo=typer.echo, preset=preset)
    typer.echo("\n" + (out / "efficiency.md").read_text())
    if doc is not None:
        doc.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "efficiency.md", doc)
        shutil.copyfile(out / "efficiency.json", doc.with_suffix(".json"))
        shutil.copyfile(out / "efficiency.png", doc.parent / "efficiency.png")  # the page links it by this name
        typer.echo(f"Copied to {doc}")
