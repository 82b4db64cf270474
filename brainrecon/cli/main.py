"""The `brainrecon` command: one Typer app assembling the command groups, and the one error exit.

Each command module is a thin wrapper (parse, build the typed config, call the library, print);
they import the library inside the command so that `brainrecon --help` stays fast.
"""

from __future__ import annotations

import sys

import typer

from brainrecon.cli import assets, bench, demo, evaluate, nsd, reconstruct, train, world
from brainrecon.errors import BrainreconError

app = typer.Typer(help="Reconstruct and retrieve seen images from fMRI.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
app.command("simulate")(world.simulate)
app.command("demo")(demo.demo)
app.add_typer(world.store_app, name="store")
app.add_typer(nsd.app, name="nsd")
app.add_typer(assets.app, name="assets")
app.command("train")(train.train_command)
app.command("reconstruct")(reconstruct.reconstruct_command)
app.command("evaluate")(evaluate.evaluate_command)
app.command("report")(evaluate.report_command)
app.add_typer(reconstruct.memory_app, name="memory")
app.add_typer(reconstruct.bank_app, name="bank")
app.add_typer(bench.app, name="bench")


def main() -> None:
    """Every error caused by input ends as one `brainrecon: error:` line and exit status 2, never a traceback."""
    from pydantic import ValidationError

    from brainrecon.config import describe

    try:
        app()
    except BrainreconError as exc:
        print(f"brainrecon: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ValidationError as exc:  # a config built without validate_config: still one line
        print(f"brainrecon: error: {describe(exc)}", file=sys.stderr)
        sys.exit(2)
