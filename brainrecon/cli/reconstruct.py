"""`brainrecon memory build`, `brainrecon reconstruct`, `brainrecon bank build/search`."""

from __future__ import annotations

from pathlib import Path

import typer

from brainrecon.cli.options import DATA_HELP, DEVICE_HELP, PROGRESS_HELP, SUBJECTS_HELP

memory_app = typer.Typer(help="Ecphory: per-subject memories of a trained run.", no_args_is_help=True)
bank_app = typer.Typer(help="Retrieval from a large local image bank (MindEye1's LAION-style retrieval).",
                       no_args_is_help=True)


def _subjects(value: str | None) -> list[str] | None:
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


@memory_app.command("build")
def memory_build(run: Path = typer.Option(..., "--run", help="A finished training run."),
                 data: Path | None = typer.Option(None, "--data", help=DATA_HELP),
                 subjects: str | None = typer.Option(None, "--subjects", help=SUBJECTS_HELP),
                 keys: str = typer.Option("prediction,brain", "--keys",
                                          help="Memory keys to build: prediction (the model's), brain (the fMRI), "
                                               "or both, comma-separated."),
                 search: str = typer.Option("pca", "--search", help="Search keys: pca, pooled or full."),
                 index: str = typer.Option("auto", "--index", help="faiss index: auto, exact, ivf or hnsw."),
                 choose: bool = typer.Option(True, "--choose/--no-choose",
                                             help="Then choose Ecphory's keys, k and alpha on the run's held-out "
                                                  "training stimuli (RUN/ecphory.json), as `reconstruct` would."),
                 progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP)) -> None:
    """Per-subject memories of the run's trained stimuli, and the Ecphory setting chosen on held-out ones."""
    from brainrecon.config import validate_config
    from brainrecon.evaluate.ecphory import ecphory_embedding_scores
    from brainrecon.memory import MemoryConfig
    from brainrecon.memory.choice import EcphorySetting
    from brainrecon.evaluate.choice import ecphory_choice
    from brainrecon.reconstruct import ReconstructConfig, build_memory, memory_dir, recon_models
    from brainrecon.train.run import RunContext

    kinds = [k.strip() for k in keys.split(",") if k.strip()]
    options = {"search": search, "index": index}
    validate_config(MemoryConfig, options, "memory build options", as_flags=True)  # before the run is opened
    for kind in kinds:
        validate_config(EcphorySetting, {"enabled": True, "keys": kind}, "memory build options", as_flags=True)
    context = RunContext.open(run, data)
    for subject in context.subjects(_subjects(subjects)):
        for kind in kinds:
            name = "betas" if kind == "brain" else context.model.retrieval_target
            memory = build_memory(context, run, subject, MemoryConfig(**options, search_on=(name,)), progress, kind)
            typer.echo(f"{subject}: {memory.n_entries} memories from {memory.n_trials} trials, {kind} keys -> "
                       f"{memory_dir(run, subject, kind)}")
    if not choose:
        return
    config = ReconstructConfig()
    record = ecphory_choice(context, run, config, *recon_models(context, config), progress=progress)
    setting = EcphorySetting.model_validate(record["choice"])
    typer.echo(f"Ecphory setting -> {run / 'ecphory.json'}: " + (
        f"keys {setting.keys}, k {setting.k}, alpha {setting.alpha}" if setting.enabled else "off") +
        f" ({record['reason']})")
    for row in sorted(record["grid"], key=lambda row: -row["gain"])[:5]:
        typer.echo(f"  keys {row['keys']}, k {row['k']}, alpha {row['alpha']}: two-way {100 * row['two_way']:.1f}% "
                   f"({100 * row['gain']:+.1f} points, 95% CI {100 * row['gain_ci95_low']:+.1f} to "
                   f"{100 * row['gain_ci95_high']:+.1f})")
    if setting.enabled:
        for subject in context.subjects(_subjects(subjects)):
            rows = ecphory_embedding_scores(context, subject, setting)["rows"]
            typer.echo(f"  {subject} test retrieval: prediction {100 * rows['plain']['image_top1']:.1f}%, fused "
                       f"embedding {100 * rows['fused']['image_top1']:.1f}% (Ecphory serves generation; "
                       f"retrieval is scored on the prediction)")


def reconstruct_command(
        run: Path = typer.Option(..., "--run", help="A finished training run."),
        out: Path = typer.Option(..., "--out", help="Folder for PNGs and manifest.json."),
        data: Path | None = typer.Option(None, "--data", help=DATA_HELP),
        subjects: str | None = typer.Option(None, "--subjects", help=SUBJECTS_HELP),
        samples: int = typer.Option(4, "--samples", help="Images generated per test image; one is kept."),
        ecphory: bool = typer.Option(True, "--ecphory/--no-ecphory",
                                     help="Retrieval-enhanced inference, with the setting the run chose on its "
                                          "held-out training stimuli (RUN/ecphory.json; may be off)."),
        keys: str | None = typer.Option(None, "--keys", help="Ecphory memory keys: prediction or brain. Giving "
                                                             "any of --keys/--k/--alpha replaces the run's choice; "
                                                             "the others are then prediction / 10 / 0.6."),
        k: int | None = typer.Option(None, "--k", help="Ecphory: memories per image (see --keys)."),
        alpha: float | None = typer.Option(None, "--alpha", help="Ecphory: weight of the brain prediction, 1 = no "
                                                                 "memory (see --keys)."),
        oracle_selection: bool = typer.Option(False, "--oracle-selection",
                                              help="Pick samples by the TRUE image (leaks the answer; only to "
                                                   "compare with published figures). Labelled in every output."),
        generator: str = typer.Option("unclip", "--generator", help="unclip or versatile."),
        generator_path: str = typer.Option("simworld", "--generator-path",
                                           help="Local pipeline directory ('simworld': the shipped decoder)."),
        steps: int = typer.Option(25, "--steps", help="Denoising steps per sample."),
        guidance: float = typer.Option(3.0, "--guidance", help="Classifier-free guidance scale."),
        lowlevel: bool = typer.Option(False, "--lowlevel/--no-lowlevel",
                                      help="MindEye's low-level path: img2img from the image decoded from the "
                                           "predicted VAE latents (a run trained with lowlevel targets)."),
        lowlevel_strength: float | None = typer.Option(None, "--lowlevel-strength",
                                                       help="img2img strength, 1 = ignore the low-level image "
                                                            "(default: the run's choice on held-out training "
                                                            "stimuli)."),
        n_images: int | None = typer.Option(None, "--n-images", help="Only the first N test images."),
        device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
        seed: int = typer.Option(0, "--seed", help="Sampling seed (each image's samples are seeded from it)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace earlier reconstructions in --out."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP)) -> None:
    """Reconstruct test images from brain activity with a trained run; honest selection by default."""
    from brainrecon.config import validate_config
    from brainrecon.evaluate.choice import make_choices
    from brainrecon.io import check_output_dir
    from brainrecon.reconstruct import ReconstructConfig, is_reconstructions, reconstruct

    config = validate_config(ReconstructConfig, {
        "generator": generator, "generator_path": generator_path, "samples": samples, "ecphory": ecphory,
        "keys": keys, "k": k, "alpha": alpha, "lowlevel": lowlevel, "lowlevel_strength": lowlevel_strength,
        "selection": "oracle" if oracle_selection else "brain", "steps": steps, "guidance": guidance,
        "n_images": n_images, "device": device, "seed": seed}, "reconstruct options", as_flags=True)
    check_output_dir(out, "brainrecon reconstructions", is_reconstructions, overwrite)  # before minutes of choosing
    make_choices(run, config, data, progress)  # what the run has yet to choose on held-out training stimuli
    manifest = reconstruct(run, out, config, _subjects(subjects), data, progress, overwrite=overwrite)
    setting = manifest["ecphory"]
    typer.echo(f"Wrote {len(manifest['images'])} images to {out} (selection: {manifest['selection']}; Ecphory: "
               + (f"keys {setting['keys']}, k {setting['k']}, alpha {setting['alpha']}" if setting["enabled"]
                  else "off") + f", {setting['source']}).")
    if manifest["lowlevel"]["enabled"]:
        typer.echo(f"Low-level path: img2img strength {manifest['lowlevel']['strength']} "
                   f"({manifest['lowlevel']['source']}).")


@bank_app.command("build")
def bank_build(images: Path = typer.Option(..., "--images", help="Folder of images (searched recursively)."),
               clip: Path = typer.Option(..., "--clip", help="Local CLIP directory ('simworld' allowed)."),
               out: Path = typer.Option(..., "--out", help="Bank directory (resumes an interrupted build)."),
               index: str = typer.Option("auto", "--index", help="auto, exact, ivf, ivfpq or hnsw."),
               batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per CLIP forward pass."),
               device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
               progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP)) -> None:
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
                data: Path | None = typer.Option(None, "--data", help=DATA_HELP),
                subjects: str | None = typer.Option(None, "--subjects", help=SUBJECTS_HELP),
                k: int = typer.Option(16, "--k", min=1, help="Bank images per test trial.")) -> None:
    """The bank images nearest to each test trial's predicted embedding."""
    from brainrecon.io import atomic_write_json, check_output_file
    from brainrecon.reconstruct import search_bank
    from brainrecon.train.run import RunContext

    check_output_file(out)
    atomic_write_json(out, search_bank(bank, RunContext.open(run, data), _subjects(subjects), k))
    typer.echo(f"Wrote {out}")
