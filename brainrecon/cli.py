"""The `brainrecon` command line. Each command is a thin layer over the Python API."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from brainrecon.cli_assets import app as assets_app
from brainrecon.cli_bench import app as bench_app
from brainrecon.cli_evaluate import evaluate_command, report_command
from brainrecon.cli_nsd import app as nsd_app
from brainrecon.cli_reconstruct import bank_app, memory_app, reconstruct_command
from brainrecon.cli_train import train_command
from brainrecon.errors import BrainreconError

app = typer.Typer(help="Reconstruct and retrieve seen images from fMRI.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
store_app = typer.Typer(help="Inspect and verify data stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")
app.add_typer(nsd_app, name="nsd")
app.add_typer(assets_app, name="assets")
app.command("train")(train_command)
app.command("reconstruct")(reconstruct_command)
app.command("evaluate")(evaluate_command)
app.command("report")(report_command)
app.add_typer(memory_app, name="memory")
app.add_typer(bank_app, name="bank")
app.add_typer(bench_app, name="bench")

def _echo(message: str = "") -> None:
    typer.echo(message)


def _build_world(config_name: str, out: Path, overwrite: bool, seed: int | None, progress: bool,
                 way: int | None = None):
    from brainrecon.config import load_config
    from brainrecon.data.simworld import WorldConfig, simulate_world
    from brainrecon.errors import ConfigError

    config = load_config(WorldConfig, config_name, "worlds", seed=seed)
    if way is not None and way > config.n_test_images:  # known from the config: refuse before building
        raise ConfigError(f"{way}-way retrieval needs at least {way} test items, but the world has "
                          f"{config.n_test_images} test images; lower --way or raise n_test_images")
    started = time.perf_counter()
    simulate_world(config, out, overwrite=overwrite, progress=progress)
    return config, time.perf_counter() - started


def _score(store_path: Path, way: int, draws: int):
    """Oracle, space ceilings and ridge per subject, stored beside the world (STORE/ceilings.json)."""
    from brainrecon.baseline import ceiling_table, save_ceilings
    from brainrecon.data import open_store

    started = time.perf_counter()
    store = open_store(store_path)
    results = ceiling_table(store, way=way, draws=draws)
    return results, save_ceilings(store, results), time.perf_counter() - started


@app.command()
def simulate(config: str = typer.Option("default", "--config", help="World preset name or YAML path."),
             out: Path = typer.Option(..., "--out", help="Store to create."),
             seed: int | None = typer.Option(None, "--seed", help="Override the config's seed."),
             overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store."),
             score: bool = typer.Option(True, "--score/--no-score", help="Compute, store and print the oracle, "
                                                                         "each target space's ceiling and a ridge."),
             way: int = typer.Option(300, "--way", min=2, help="N-way retrieval (the field reports 300)."),
             progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
    """Simulate a multi-subject world into a store; print the oracle, each target space's ceiling and a ridge."""
    from brainrecon.baseline import format_table
    from brainrecon.data.simworld import SIMULATED_NOTE

    world, seconds = _build_world(config, out, overwrite, seed, progress, way if score else None)
    _echo(f"Simulated {world.n_subjects} subjects into {out} in {seconds:.1f} s.")
    if score:
        results, path, _ = _score(out, way, 30)
        _echo(format_table(results))
        _echo(f"Stored in {path}. {SIMULATED_NOTE}")


@app.command()
def demo(out: Path = typer.Option(Path("brainrecon-demo"), "--out", help="Output folder (replaced if it holds "
                                                                          "an earlier demo)."),
         config: str = typer.Option("default", "--config", help="World preset name or YAML path."),
         images: int = typer.Option(30, "--images", min=1,
                                    help="Test images to reconstruct (with and without Ecphory)."),
         progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
    """The main job on the simulated world: simulate, fit ridge, compare with the oracle, reconstruct."""
    from brainrecon.demo import run_demo

    run_demo(out, config, progress, echo=_echo, n_images=images)


@store_app.command("info")
def store_info(path: Path) -> None:
    """Summarise a store: source, subjects, trials, voxels, split sizes."""
    from brainrecon.data import open_store

    store = open_store(path)
    _echo(f"{path}: {store.source.get('kind', '?')} store, {len(store.stimuli)} stimuli, images "
          f"{tuple(store.images.shape[1:])}")
    for name in store.subjects:
        data = store.subject(name)
        test = data.trials.is_test
        _echo(f"  {name}: {len(data.trials)} trials in {len(data.sessions)} sessions, {data.n_voxels} voxels, "
              f"train {len(set(data.trials.stimulus_id[~test].tolist()))} images / {int((~test).sum())} trials, "
              f"test {len(set(data.trials.stimulus_id[test].tolist()))} images / {int(test.sum())} trials")


@store_app.command("verify")
def store_verify(path: Path) -> None:
    """Full check: structure, every subject's shapes/NaN/split, and every file's sha256."""
    from brainrecon.data import open_store

    store = open_store(path, verify_checksums=True)
    for name in store.subjects:
        store.subject(name)
    _echo(f"{path}: OK ({len(store.manifest['files'])} files verified)")


@store_app.command("import-bdata")
def store_import_bdata(file: Path = typer.Option(..., "--file", help="BData HDF5 file, e.g. GOD's Subject1.h5."),
                       images: Path = typer.Option(..., "--images", help="Folder of the stimulus images, named "
                                                                         "by ImageNet id (n01518878_5958.JPEG)."),
                       out: Path = typer.Option(..., "--out", help="Store to create."),
                       subject: str = typer.Option("subj01", "--subject", help="Subject name in the store."),
                       roi: str = typer.Option("ROI_VC", "--roi", help="ROI flag key selecting voxels."),
                       image_size: int = typer.Option(256, "--image-size", help="Square size images are "
                                                                                 "stored at."),
                       overwrite: bool = typer.Option(False, "--overwrite"),
                       progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
    """Import a Kamitani-lab BData file (Generic Object Decoding) as a store."""
    from brainrecon.data.bdata import import_bdata

    import_bdata(file, images, out, subject=subject, roi=roi, image_size=image_size, overwrite=overwrite,
                 progress=progress)
    _echo(f"Wrote {out}")
    store_info(out)


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


if __name__ == "__main__":
    main()
