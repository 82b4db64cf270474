"""`brainrecon nsd ...`: prepare the Natural Scenes Dataset as a brainrecon store.

Mounted by the main CLI with ``app.add_typer(nsd_app, name="nsd")``.

Subjects may be given as ``--subjects 1 2 5 7``, ``--subjects 1,2,5,7`` or
``--subjects 1 --subjects 2``. (Click options cannot take a variable number of
values, so the numbers after the first are collected by a hidden positional
argument and merged in.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from brainrecon.errors import StoreError

app = typer.Typer(help="Natural Scenes Dataset (NSD) preparation.", no_args_is_help=True)


@app.callback()
def nsd() -> None:
    """Natural Scenes Dataset (NSD) preparation."""  # a callback keeps `prepare` a sub-command


def parse_subjects(values: list[str]) -> list[int]:
    numbers = []
    for value in values:
        for part in value.replace(",", " ").split():
            try:
                numbers.append(int(part))
            except ValueError:
                raise StoreError(f"--subjects takes NSD subject numbers 1..8 (e.g. --subjects 1 2 5 7), "
                                 f"got {part!r}.") from None
    return numbers


@app.command()
def prepare(
    root: Path = typer.Option(..., "--root", help="NSD root: the folder holding nsddata/, nsddata_betas/, "
                                                  "nsddata_stimuli/."),
    subjects: list[str] = typer.Option(..., "--subjects", help="NSD subject numbers: 1 2 5 7, or 1,2,5,7."),
    out: Path = typer.Option(..., "--out", help="Store to create (written atomically)."),
    space: str = typer.Option("func1pt8mm", "--space", help="Volume space folder."),
    roi: str = typer.Option("nsdgeneral", "--roi", help="ROI mask name (roi/<ROI>.nii.gz; voxels with label > 0)."),
    sessions: Optional[int] = typer.Option(None, "--sessions", help="Use only each subject's first N sessions."),
    betas: str = typer.Option("betas_fithrf_GLMdenoise_RR", "--betas", help="Beta version folder."),
    betas_format: str = typer.Option("auto", "--betas-format", help="auto (HDF5 if present, else NIfTI), hdf5 "
                                                                    "or nifti."),
    dtype: str = typer.Option("float32", "--dtype", help="Stored betas dtype: float32 or float16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store at --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars on stderr."),
    more_subjects: Optional[list[str]] = typer.Argument(None, hidden=True),
) -> None:
    """Read NSD betas, design, stimuli and captions; write a store. Re-run the same command to resume."""
    from brainrecon.data.nsd import prepare_nsd  # heavy imports only when the command runs

    try:
        summary = prepare_nsd(root, parse_subjects(subjects + (more_subjects or [])), out, space=space, roi=roi,
                              sessions=sessions, betas=betas, overwrite=overwrite, progress=progress,
                              betas_format=betas_format, betas_dtype=dtype)
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"NSD store written to {summary.out}")
    typer.echo(f"  stimuli: {summary.n_stimuli} images")
    for name, info in summary.subjects.items():
        trials = info["train_trials"] + info["test_trials"]
        typer.echo(f"  {name}: {info['sessions']} sessions, {trials} trials, {summary.n_voxels[name]} voxels, "
                   f"train {info['train_images']} images / {info['train_trials']} trials, "
                   f"test {info['test_images']} images / {info['test_trials']} trials")
