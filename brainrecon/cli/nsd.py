"""`brainrecon nsd ...`: prepare the Natural Scenes Dataset (or import MindEye's published files) as a store.

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

from brainrecon.cli.options import PROGRESS_HELP
from brainrecon.errors import BrainreconError, StoreError

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


def parse_sessions(value: str | None) -> int | str | None:
    """``--sessions``: a count, or 'available' (each subject the sessions it has on disk)."""
    if value is None or value == "available":
        return value
    try:
        return int(value)
    except ValueError:
        raise StoreError(f"--sessions takes a number of sessions (e.g. --sessions 37) or 'available', got "
                         f"{value!r}.") from None


@app.command()
def prepare(
    root: Path = typer.Option(..., "--root", help="NSD root: the folder holding nsddata/, nsddata_betas/, "
                                                  "nsddata_stimuli/."),
    subjects: list[str] = typer.Option(..., "--subjects", help="NSD subject numbers: 1 2 5 7, or 1,2,5,7."),
    out: Path = typer.Option(..., "--out", help="Store to create (written atomically)."),
    space: str = typer.Option("func1pt8mm", "--space", help="Volume space folder."),
    roi: str = typer.Option("nsdgeneral", "--roi", help="ROI mask name (roi/<ROI>.nii.gz; voxels with label > 0)."),
    sessions: Optional[str] = typer.Option(None, "--sessions", help="Use only each subject's first N sessions, or "
                                                                    "'available': each subject the sessions it has "
                                                                    "(default: each subject's NSD core sessions, "
                                                                    "40, 32 or 30; a missing one is an error)."),
    betas: str = typer.Option("betas_fithrf_GLMdenoise_RR", "--betas", help="Beta version folder."),
    betas_format: str = typer.Option("auto", "--betas-format", help="auto (HDF5 if present, else NIfTI), hdf5 "
                                                                    "or nifti."),
    dtype: str = typer.Option("float32", "--dtype", help="Stored betas dtype: float32 or float16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store at --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
    more_subjects: Optional[list[str]] = typer.Argument(None, hidden=True),
) -> None:
    """Read NSD betas, design, stimuli and captions; write a store. Re-run the same command to resume."""
    from brainrecon.data.nsd import prepare_nsd  # heavy imports only when the command runs

    try:
        summary = prepare_nsd(root, parse_subjects(subjects + (more_subjects or [])), out, space=space, roi=roi,
                              sessions=parse_sessions(sessions), betas=betas, overwrite=overwrite, progress=progress,
                              betas_format=betas_format, betas_dtype=dtype)
    except BrainreconError as exc:  # as the main command line reports it, when this app is run on its own
        typer.echo(f"brainrecon: error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"NSD store written to {summary.out}")
    typer.echo(f"  stimuli: {summary.n_stimuli} images")
    for name, info in summary.subjects.items():
        trials = info["train_trials"] + info["test_trials"]
        typer.echo(f"  {name}: {info['sessions']} sessions, {trials} trials, {summary.n_voxels[name]} voxels, "
                   f"train {info['train_images']} images / {info['train_trials']} trials, "
                   f"test {info['test_images']} images / {info['test_trials']} trials")


def _print_mindeye_summary(summary) -> None:
    info = summary.info
    sessions = summary.sessions if summary.sessions is not None else "unknown"
    typer.echo(f"MindEye store written to {summary.out}")
    typer.echo(f"  stimuli: {summary.n_stimuli} images")
    typer.echo(f"  {summary.subject}: sessions {sessions}, {info['train_trials'] + info['test_trials']} trials, "
               f"{summary.n_voxels} voxels, train {info['train_images']} images / {info['train_trials']} trials, "
               f"test {info['test_images']} images / {info['test_trials']} trials")


@app.command("import-mindeye1")
def import_mindeye1_command(
    root: Path = typer.Option(..., "--root", help="MindEye1's webdataset_avg_split/ folder (or the folder "
                                                  "holding it)."),
    subject: int = typer.Option(..., "--subject", help="NSD subject number 1..8."),
    out: Path = typer.Option(..., "--out", help="Store to create (written atomically)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store at --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Import MindEye1's published webdataset shards (pscotti/naturalscenesdataset) for one subject."""
    from brainrecon.data.mindeye1_files import import_mindeye1

    try:
        summary = import_mindeye1(root, subject, out, overwrite=overwrite, progress=progress)
    except BrainreconError as exc:  # as the main command line reports it, when this app is run on its own
        typer.echo(f"brainrecon: error: {exc}", err=True)
        raise typer.Exit(2) from None
    _print_mindeye_summary(summary)


@app.command("import-mindeye2")
def import_mindeye2_command(
    root: Path = typer.Option(..., "--root", help="Local copy of pscotti/mindeyev2: the folder holding "
                                                  "betas_all_subjAA_fp32_renorm.hdf5, "
                                                  "coco_images_224_float16.hdf5 and wds/."),
    subject: int = typer.Option(..., "--subject", help="NSD subject number 1..8."),
    out: Path = typer.Option(..., "--out", help="Store to create (written atomically)."),
    sessions: Optional[int] = typer.Option(None, "--sessions", help="Use only the first N sessions."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store at --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Import MindEye2's published betas, images and behaviour tars (pscotti/mindeyev2) for one subject."""
    from brainrecon.data.mindeye2_files import import_mindeye2

    try:
        summary = import_mindeye2(root, subject, out, sessions=sessions, overwrite=overwrite, progress=progress)
    except BrainreconError as exc:  # as the main command line reports it, when this app is run on its own
        typer.echo(f"brainrecon: error: {exc}", err=True)
        raise typer.Exit(2) from None
    _print_mindeye_summary(summary)
