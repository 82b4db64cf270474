"""`brainrecon bench ...`: benchmarks made by the project's own commands."""

from __future__ import annotations

from pathlib import Path

import typer

from brainrecon.errors import OutputError
from brainrecon.io import atomic_copy

app = typer.Typer(help="Benchmarks: the leaderboard against the oracle, data efficiency, Ecphory, the low-level "
                       "path.", no_args_is_help=True)


def check_doc(doc: Path | None) -> None:
    """Refuse a --doc that cannot take the page before the bench runs (hours, for some), not after."""
    if doc is None:
        return
    if doc.suffix != ".md":
        raise OutputError(f"--doc {doc} is not a .md page; give the page's path, e.g. docs/benchmarks/leaderboard.md "
                          f"(its .json is written beside it)")
    for path in (doc, doc.with_suffix(".json")):
        if path.is_dir():
            raise OutputError(f"--doc: {path} is a folder; give the path of the page to write, "
                              f"e.g. docs/benchmarks/leaderboard.md")


def show_and_copy(out: Path, name: str, doc: Path | None) -> None:
    """Print OUT/NAME.md and, with --doc, copy it and NAME.json beside DOC."""
    typer.echo("\n" + (out / f"{name}.md").read_text())
    if doc is not None:
        atomic_copy(out / f"{name}.md", doc)
        atomic_copy(out / f"{name}.json", doc.with_suffix(".json"))
        typer.echo(f"Copied to {doc} and {doc.with_suffix('.json')}")


@app.command("leaderboard")
def leaderboard(preset: str = typer.Option("default", "--preset",
                                           help="A leaderboard preset (a file of brainrecon/configs/bench/, e.g. "
                                                "default, smoke, equal-budget) or YAML."),
                out: Path = typer.Option(Path("brainrecon-leaderboard"), "--out",
                                         help="Working folder (store, runs, rows); resumes what it finds."),
                doc: Path | None = typer.Option(None, "--doc", help="Also copy leaderboard.md here, e.g. "
                                                                    "docs/benchmarks/leaderboard.md.")) -> None:
    """Train and evaluate every model on a simulated world with fixed seeds, beside the Bayes-optimal oracle."""
    from brainrecon.bench.leaderboard import LeaderboardConfig, best_row_text, run_leaderboard
    from brainrecon.config import load_config

    check_doc(doc)
    config = load_config(LeaderboardConfig, preset, "bench")
    result = run_leaderboard(config, out, echo=typer.echo, preset=preset)
    show_and_copy(out, "leaderboard", doc)
    if doc is not None and result.get("curves_figure"):  # the page links it by this name
        atomic_copy(out / result["curves_figure"], doc.parent / result["curves_figure"])
    typer.echo(best_row_text(result))


@app.command("efficiency")
def efficiency(preset: str = typer.Option("efficiency-default", "--preset",
                                          help="A bench preset (efficiency-default, efficiency-smoke) or YAML."),
               out: Path = typer.Option(Path("brainrecon-efficiency"), "--out",
                                        help="Working folder (store, runs, rows); resumes what it finds."),
               doc: Path | None = typer.Option(None, "--doc", help="Also copy efficiency.md here, with "
                                                                "efficiency.json and its plot beside it, e.g. "
                                                                "docs/benchmarks/efficiency.md.")
               ) -> None:
    """Per-subject vs multi-subject training with 1, 2, 4, all sessions; new-subject adaptation."""
    from brainrecon.bench.efficiency import EfficiencyConfig, run_efficiency
    from brainrecon.config import load_config

    check_doc(doc)
    config = load_config(EfficiencyConfig, preset, "bench")
    run_efficiency(config, out, echo=typer.echo, preset=preset)
    show_and_copy(out, "efficiency", doc)
    if doc is not None:
        atomic_copy(out / "efficiency.png", doc.parent / "efficiency.png")  # the page links it by this name


@app.command("ecphory")
def ecphory(runs: Path = typer.Option(..., "--runs", help="Folder of trained runs, one per model (the "
                                                           "leaderboard's OUT/runs)."),
            models: str = typer.Option("psychometry,mindbridge,mindeye2", "--models", help="Comma-separated run "
                                                                                         "folder names."),
            samples: int = typer.Option(4, "--samples", help="Samples per image, in every arm."),
            n_images: int = typer.Option(30, "--n-images", help="subj01's first N test images."),
            out: Path = typer.Option(Path("brainrecon-ecphory"), "--out", help="Working folder; resumes what it "
                                                                               "finds."),
            doc: Path | None = typer.Option(None, "--doc", help="Also copy ecphory.md and ecphory.json here, e.g. "
                                                                "docs/benchmarks/ecphory.md.")) -> None:
    """Ecphory against a same-sample control: each run's chosen setting and Psychometry's own, per image."""
    from brainrecon.bench.ecphory import EcphoryBenchConfig, run_ecphory_bench
    from brainrecon.config import validate_config

    check_doc(doc)
    config = validate_config(EcphoryBenchConfig, {"models": [m.strip() for m in models.split(",") if m.strip()],
                                                  "samples": samples, "n_images": n_images},
                             "bench ecphory options", as_flags=True)
    run_ecphory_bench(config, runs, out, echo=typer.echo)
    show_and_copy(out, "ecphory", doc)


@app.command("lowlevel")
def lowlevel(run: Path = typer.Option(..., "--run", help="A run with a low-level head (e.g. the "
                                                         "sim-mindeye2-lowlevel preset)."),
             samples: int = typer.Option(4, "--samples", min=1, help="Samples per image, in both arms."),
             n_images: int = typer.Option(30, "--n-images", min=2, help="subj01's first N test images."),
             out: Path = typer.Option(Path("brainrecon-lowlevel"), "--out", help="Working folder; resumes what "
                                                                                 "it finds."),
             doc: Path | None = typer.Option(None, "--doc", help="Also copy lowlevel.md here and lowlevel.json "
                                                                 "beside it, e.g. docs/benchmarks/lowlevel.md.")
             ) -> None:
    """MindEye's low-level img2img path against the same reconstruction without it, per image."""
    from brainrecon.bench.lowlevel import run_lowlevel_bench

    check_doc(doc)
    run_lowlevel_bench(run, out, samples=samples, n_images=n_images, echo=typer.echo)
    show_and_copy(out, "lowlevel", doc)
