"""`brainrecon simulate` and `brainrecon store info/verify/import-bdata`: making and inspecting stores."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from brainrecon.cli.options import PROGRESS_HELP

store_app = typer.Typer(help="Inspect, verify and import data stores.", no_args_is_help=True)


def simulate(config: str = typer.Option("default", "--config", help="World preset name or YAML path."),
             out: Path = typer.Option(..., "--out", help="Store to create."),
             seed: int | None = typer.Option(None, "--seed", help="Override the config's seed."),
             overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store."),
             score: bool = typer.Option(True, "--score/--no-score", help="Compute, store and print the oracle, "
                                                                         "each target space's ceiling and a ridge."),
             way: int = typer.Option(300, "--way", min=2, help="N-way retrieval (the field reports 300)."),
             progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP)) -> None:
    """Simulate a multi-subject world into a store; print the oracle, each target space's ceiling and a ridge."""
    from brainrecon.config import load_config
    from brainrecon.data import open_store
    from brainrecon.data.simworld import SIMULATED_NOTE, WorldConfig, check_way, simulate_world
    from brainrecon.evaluate.ceilings import ceiling_table, format_table, save_ceilings

    world = load_config(WorldConfig, config, "worlds", seed=seed)
    if score:
        check_way(world, way)  # known from the config: refused before building
    started = time.perf_counter()
    simulate_world(world, out, overwrite=overwrite, progress=progress)
    typer.echo(f"Simulated {world.n_subjects} subjects into {out} in {time.perf_counter() - started:.1f} s.")
    if score:
        store = open_store(out)
        results = ceiling_table(store, way=way, draws=30)
        typer.echo(format_table(results))
        typer.echo(f"Stored in {save_ceilings(store, results)}. {SIMULATED_NOTE}")


@store_app.command("info")
def store_info(path: Path) -> None:
    """Summarise a store: source, subjects, trials, voxels, split sizes."""
    from brainrecon.data import open_store

    store = open_store(path)
    typer.echo(f"{path}: {store.source.get('kind', '?')} store, {len(store.stimuli)} stimuli, images "
               f"{tuple(store.images.shape[1:])}")
    for name in store.subjects:
        data = store.subject(name)
        test = data.trials.is_test
        typer.echo(f"  {name}: {len(data.trials)} trials in {len(data.sessions)} sessions, {data.n_voxels} voxels, "
                   f"train {len(set(data.trials.stimulus_id[~test].tolist()))} images / {int((~test).sum())} "
                   f"trials, test {len(set(data.trials.stimulus_id[test].tolist()))} images / {int(test.sum())} "
                   f"trials")


@store_app.command("verify")
def store_verify(path: Path) -> None:
    """Full check: structure, every subject's shapes/NaN/split, and every file's sha256."""
    from brainrecon.data import open_store

    store = open_store(path, verify_checksums=True)
    for name in store.subjects:
        store.subject(name)
    typer.echo(f"{path}: OK ({len(store.manifest['files'])} files verified)")


@store_app.command("import-bdata")
def store_import_bdata(file: Path = typer.Option(..., "--file", help="BData HDF5 file, e.g. GOD's Subject1.h5."),
                       images: Path = typer.Option(..., "--images", help="Folder of the stimulus images, named "
                                                                         "by ImageNet id (n01518878_5958.JPEG)."),
                       out: Path = typer.Option(..., "--out", help="Store to create."),
                       subject: str = typer.Option("subj01", "--subject", help="Subject name in the store."),
                       roi: str = typer.Option("ROI_VC", "--roi", help="ROI flag key selecting voxels."),
                       image_size: int = typer.Option(256, "--image-size", help="Square size images are "
                                                                                 "stored at."),
                       overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store at --out."),
                       progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP)) -> None:
    """Import a Kamitani-lab BData file (Generic Object Decoding) as a store."""
    from brainrecon.data.bdata import import_bdata

    import_bdata(file, images, out, subject=subject, roi=roi, image_size=image_size, overwrite=overwrite,
                 progress=progress)
    typer.echo(f"Wrote {out}")
    store_info(out)
