"""`brainrecon memory build`, `brainrecon reconstruct`, `brainrecon bank build/search`."""

from __future__ import annotations

from pathlib import Path

import typer

memory_app = typer.Typer(help="Ecphory: per-subject memories of a trained run.", no_args_is_help=True)
bank_app = typer.Typer(help="Retrieval from a large local image bank (MindEye1's LAION-style retrieval).",
                       no_args_is_help=True)


def _subjects(value: str | None) -> list[str] | None:
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


@memory_app.command("build")
def memory_build(run: Path = typer.Option(..., "--run", help="A finished training run."),
                 data: Path | None = typer.Option(None, "--data", help="Store (default: the run's)."),
                 subjects: str | None = typer.Option(None, "--subjects", help="Comma-separated (default: all)."),
                 search: str = typer.Option("pca", "--search", help="Search keys: pca, pooled or full."),
                 index: str = typer.Option("auto", "--index", help="faiss index: auto, exact, ivf or hnsw."),
                 progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
    """Keys = the run's predictions for each subject's training trials; values = their true embeddings."""
    from brainrecon.config import validate_config
    from brainrecon.evaluate.ecphory import save_ecphory_scores
    from brainrecon.memory import MemoryConfig
    from brainrecon.reconstruct import build_memory, memory_dir
    from brainrecon.train.run import RunContext

    options = {"search": search, "index": index}
    validate_config(MemoryConfig, options, "memory build options", as_flags=True)  # before the run is opened
    context = RunContext.open(run, data)
    for subject in context.subjects(_subjects(subjects)):
        config = MemoryConfig(**options, search_on=(context.model.retrieval_target,))
        memory = build_memory(context, run, subject, config, progress)
        scores, path = save_ecphory_scores(context, memory, subject)
        typer.echo(f"{subject}: {memory.n_entries} memories from {memory.n_trials} trials -> "
                   f"{memory_dir(run, subject)}")
        for row in scores["rows"]:
            typer.echo(f"  alpha {row['alpha']:.1f}: cosine to truth {row['embedding_cosine']:.3f}, "
                       f"{scores['way']}-way retrieval {100 * row['image_top1']:.1f}% / "
                       f"{100 * row['brain_top1']:.1f}%" + ("  (no Ecphory)" if row["alpha"] == 1.0 else ""))
        typer.echo(f"  -> {path}")


def reconstruct_command(
        run: Path = typer.Option(..., "--run", help="A finished training run."),
        out: Path = typer.Option(..., "--out", help="Folder for PNGs and manifest.json."),
        data: Path | None = typer.Option(None, "--data", help="Store (default: the run's)."),
        subjects: str | None = typer.Option(None, "--subjects", help="Comma-separated (default: all)."),
        ecphory: bool = typer.Option(True, "--ecphory/--no-ecphory", help="Retrieval-enhanced inference."),
        k: int = typer.Option(10, "--k", help="Memories (Ecphory) or samples (without) per image."),
        alpha: float = typer.Option(0.6, "--alpha", help="Ecphory: weight of the brain prediction."),
        oracle_selection: bool = typer.Option(False, "--oracle-selection",
                                              help="Pick samples by the TRUE image (leaks the answer; only to "
                                                   "compare with published figures). Labelled in every output."),
        generator: str = typer.Option("unclip", "--generator", help="unclip or versatile."),
        generator_path: str = typer.Option("simworld", "--generator-path",
                                           help="Local pipeline directory ('simworld': the shipped decoder)."),
        steps: int = typer.Option(25, "--steps"), guidance: float = typer.Option(3.0, "--guidance"),
        n_images: int | None = typer.Option(None, "--n-images", help="Only the first N test images."),
        device: str = typer.Option("cpu", "--device"), seed: int = typer.Option(0, "--seed"),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace earlier reconstructions in --out."),
        progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
    """Reconstruct test images from brain activity with a trained run; honest selection by default."""
    from brainrecon.config import validate_config
    from brainrecon.reconstruct import ReconstructConfig, reconstruct

    config = validate_config(ReconstructConfig, {
        "generator": generator, "generator_path": generator_path, "ecphory": ecphory, "k": k, "alpha": alpha,
        "selection": "oracle" if oracle_selection else "brain", "steps": steps, "guidance": guidance,
        "n_images": n_images, "device": device, "seed": seed}, "reconstruct options", as_flags=True)
    manifest = reconstruct(run, out, config, _subjects(subjects), data, progress, overwrite=overwrite)
    typer.echo(f"Wrote {len(manifest['images'])} images to {out} (selection: {manifest['selection']}).")


@bank_app.command("build")
def bank_build(images: Path = typer.Option(..., "--images", help="Folder of images (searched recursively)."),
               clip: Path = typer.Option(..., "--clip", help="Local CLIP directory ('simworld' allowed)."),
               out: Path = typer.Option(..., "--out", help="Bank directory (resumes an interrupted build)."),
               index: str = typer.Option("auto", "--index", help="auto, exact, ivf, ivfpq or hnsw."),
               batch_size: int = typer.Option(64, "--batch-size", min=1), device: str = typer.Option("cpu", "--device"),
               progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
    """Embed a folder of images with CLIP into a faiss index."""
    from brainrecon.config import check_device
    from brainrecon.embed.clip import ClipImageEmbedder
    from brainrecon.memory import build_bank
    from brainrecon.pretrained import resolve_model_dir

    embedder = ClipImageEmbedder(resolve_model_dir(str(clip), "clip", "clip"), check_device(device),
                                 batch_size=batch_size)
    bank = build_bank(images, embedder, out, batch_size=batch_size, index=index,
                      image_size=embedder.model.config.image_size, progress=progress)
    typer.echo(f"Indexed {len(bank)} images into {out}")


@bank_app.command("search")
def bank_search(bank: Path = typer.Option(..., "--bank", help="A bank from `brainrecon bank build`."),
                run: Path = typer.Option(..., "--run", help="A finished run predicting CLIP image embeddings."),
                out: Path = typer.Option(..., "--out", help="JSON file for the results."),
                data: Path | None = typer.Option(None, "--data"),
                subjects: str | None = typer.Option(None, "--subjects"),
                k: int = typer.Option(16, "--k", min=1)) -> None:
    """The bank images nearest to each test trial's predicted embedding."""
    from brainrecon.io import atomic_write_json
    from brainrecon.reconstruct import search_bank
    from brainrecon.train.run import RunContext

    atomic_write_json(out, search_bank(bank, RunContext.open(run, data), _subjects(subjects), k))
    typer.echo(f"Wrote {out}")
