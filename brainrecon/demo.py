"""`brainrecon demo`: the main job on the simulated world, end to end.

simulate a world -> the Bayes-optimal oracle, the ceiling of the space its models decode into and a
ridge into it (300-way retrieval) -> a deep model trained for what fits the demo's budget, read against
the same oracle, ceiling and ridge -> (with the shipped small model set) decode brain-predicted
CLIP embeddings into images. Every figure it prints is measured here; nothing is selected by looking at
the true image (one sample per embedding, no selection at all).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from brainrecon import __version__
from brainrecon.assets.manifest import recorded_guidance
from brainrecon.config import load_config, validate_config
from brainrecon.data import Store, open_store
from brainrecon.data.simworld import SIMULATED_NOTE, WorldConfig, simulate_world
from brainrecon.embed.clip import ClipImageEmbedder
from brainrecon.evaluate.ceilings import SPACE_LABELS, SPACE_OF_TARGET, ceiling_table, format_table, save_ceilings
from brainrecon.evaluate.ecphory import ecphory_embedding_scores
from brainrecon.evaluate.evaluation import evaluate_run, final_evaluation, metrics_table
from brainrecon.evaluate.metrics import two_way_identification
from brainrecon.generate.base import GenerationRequest, quiet_model_loading
from brainrecon.generate.unclip import UnclipGenerator
from brainrecon.io import atomic_save_image, atomic_write_json, atomic_write_text, check_output_dir, exclusive_lock
from brainrecon.pretrained import SIMWORLD_ASSETS
from brainrecon.memory.choice import EcphorySetting
from brainrecon.reconstruct import ReconstructConfig
from brainrecon.reconstruct import reconstruct as run_reconstruct
from brainrecon.report.html import build_report
from brainrecon.train import TrainConfig, train
from brainrecon.train.run import RunContext

ROWS = 4  # grid rows per block: original, from true embedding, from brain, with Ecphory


@dataclass(frozen=True)
class DeepChoice:
    """A deep model the demo can train: a train preset, its label, and the optimiser steps that fit the demo's
    budget (about 50 s of training on 2 CPU cores)."""

    preset: str
    label: str
    steps: int


# The deep models the demo chooses between, at budgets that fit it. benchmarks/choose_demo_model.py trains each
# over three seeds and reads only held-out *training* stimuli (validation retrieval at the kept weights, and the
# wall time); docs/benchmarks/demo-model.md records the choice. MindBridge-style is the best method of the
# equal-budget token-space leaderboard (docs/benchmarks/equal-budget.md); MindEye2-style into the pooled
# embedding trains one 128-d token, so it takes 4x the steps in the same time. Until 2026-12-05 the budget was
# 512 and 128 steps (about 18 s); measuring the ceilings in one space freed the time for four times that.
DEEP_CANDIDATES = (DeepChoice("sim-mindeye2-pooled", "MindEye2-style, pooled", 2048),
                   DeepChoice("sim-mindbridge", "MindBridge-style", 512))
DEEP = DEEP_CANDIDATES[0]  # the choice recorded in docs/benchmarks/demo-model.md
DEEP_STEPS = DEEP.steps
# The spaces the demo measures ceilings and ridges in: the one its deep model and its reconstructions' ridge decode
# into. `brainrecon simulate` measures every space; measuring only this one gives it the same figures in less time
# (the demo's step 2, empty targets cache: 104.3 s against 152 s for every space on the default world, 44.3 s
# against 76.6 s on isotropic-code64-noise3), which the demo spends on training.
DEMO_SPACES = ("clip_pooled",)


@dataclass(frozen=True)
class DeepModel:
    """A deep model's held-out retrieval per subject, beside the oracle, its space's ceiling and the ridge."""

    preset: str
    label: str
    steps: int
    precision: str  # the run's mixed_precision
    space: str  # the ceiling table's space its retrieval is scored in
    way: int
    seconds: float
    rows: dict[str, dict[str, float | None]]  # subject -> image, brain, oracle, ceiling, ridge (fractions)

    def to_dict(self) -> dict:
        return {"preset": self.preset, "label": self.label, "steps": self.steps, "mixed_precision": self.precision,
                "space": self.space, "way": self.way,
                "train_and_evaluate_seconds": self.seconds, "subjects": self.rows}

    def table(self) -> str:
        """One row per subject: the model, then how far it is from the oracle and its space's ceiling."""
        space = SPACE_LABELS[self.space]
        lines = [f"| subject | oracle | {space} ceiling | {space} ridge | {self.label} | ÷ oracle | ÷ ceiling |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
        ratio = lambda a, b: "n/a" if a is None or not b else f"{a / b:.2f}"  # noqa: E731
        for subject, r in self.rows.items():
            lines.append(f"| {subject} | {pct(r['oracle'])} | {pct(r['ceiling'])} | {pct(r['ridge'])} | "
                         f"{pct(r['image'])} | {ratio(r['image'], r['oracle'])} | {ratio(r['image'], r['ceiling'])} |")
        return "\n".join(lines)


def cpu_computes_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bf16 instructions (avx512_bf16 or AMX), where bf16 autocast makes training steps
    1.3-1.8x faster; elsewhere bf16 is emulated and can be slower than float32 (docs/training.md)."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:  # not Linux: no flags to read, so float32
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def deep_model_config(choice: DeepChoice, steps: int | None = None, way: int = 300, draws: int = 30,
                      seed: int = 42, training_seed: int | None = None) -> TrainConfig:
    """``choice``'s preset with the demo's budget (``steps``, default the choice's own).

    The run keeps its preset's validation slice (training stimuli) and weight choice; only the budget changes,
    and on a CPU with bf16 instructions the precision: bf16 autocast trains as well as float32 in about half
    the time there (docs/benchmarks/convergence.md). It is scored with the ceiling table's protocol (300-way,
    30 draws, seed 42), so its rows compare like with like. ``training_seed``: the run's seed (default the
    preset's).
    """
    preset = load_config(TrainConfig, choice.preset, "train").model_dump(mode="json")
    precision = "bf16" if not torch.cuda.is_available() and cpu_computes_bf16() else preset["mixed_precision"]
    overrides = {"steps": choice.steps if steps is None else steps, "mixed_precision": precision,
                 "eval": {**preset["eval"], "way": way, "draws": draws, "seed": seed}}
    if training_seed is not None:
        overrides["seed"] = training_seed
    return validate_config(TrainConfig, {**preset, **overrides}, source=f"the demo's {choice.preset} run")


def train_deep_model(store: Store, ceilings: list, out: Path, steps: int = DEEP_STEPS, way: int = 300,
                     draws: int = 30, seed: int = 42, choice: DeepChoice = DEEP) -> DeepModel:
    """`brainrecon train --config <choice's preset>` with ``steps`` optimiser steps, then its held-out
    evaluation, each subject's retrieval read beside that subject's row of the ceiling table."""
    started = time.perf_counter()
    config = deep_model_config(choice, steps, way, draws, seed)
    run = train(config, store.root, out, progress=False, overwrite=True)
    final_evaluation(run)
    metrics = json.loads((run / "metrics.json").read_text())
    space = SPACE_OF_TARGET[metrics["retrieval_target"]]
    by_subject = {result.subject: result for result in ceilings}
    rows = {}
    for subject, entry in metrics["subjects"].items():
        values, table = entry["values"], by_subject[subject]
        spaces = table.spaces[space]
        rows[subject] = {"image": values["image_retrieval"]["value"], "brain": values["brain_retrieval"]["value"],
                         "oracle": table.oracle.image_top1 if table.oracle else None,
                         "ceiling": spaces.ceiling.image_top1 if spaces.ceiling else None,
                         "ridge": spaces.ridge.image_top1}
    return DeepModel(choice.preset, choice.label, steps, config.mixed_precision, space, way,
                     time.perf_counter() - started, rows)


@dataclass(frozen=True)
class Reconstructions:
    subject: str
    stimulus_ids: np.ndarray
    originals: np.ndarray  # uint8 (n, H, W, 3)
    from_truth: np.ndarray  # decoded from the true small-CLIP embedding (the decoder's ceiling)
    from_brain: np.ndarray  # decoded from the ridge-predicted embedding, no Ecphory, `samples` samples
    from_ecphory: np.ndarray  # Ecphory (Psychometry's k and alpha), the same samples and honest selection
    clip_retrieval: dict  # the run's held-out retrieval in small-CLIP space (metrics.json)
    ecphory_scores: dict  # embedding-level: cosine to the truth and retrieval, plain and fused
    two_way: dict[str, float]  # two-way identification in small-CLIP space (chance 0.5), per row of the grid
    selection: str
    run: Path  # the ridge run; its reconstructions with Ecphory are in <out>/reconstructions/ecphory

    def to_dict(self) -> dict:
        return {"subject": self.subject, "n_images": len(self.stimulus_ids),
                "stimulus_ids": self.stimulus_ids.tolist(), "selection": self.selection,
                "ridge_small_clip_retrieval": self.clip_retrieval, "ecphory_embedding_scores": self.ecphory_scores,
                "two_way_identification": self.two_way}


def reconstruct_with_assets(store: Store, subject: str, assets: Path, out: Path, n_images: int = 30,
                            samples: int = 2, steps: int = 25, seed: int = 0) -> Reconstructions:
    """Train a ridge run into the small CLIP's pooled embedding, then reconstruct with and without Ecphory.

    Uses the same pieces as `brainrecon train` / `memory build` / `reconstruct`: the
    demo is those commands run in sequence on a simulated world. Both arms generate the
    same number of samples with the same seeds and keep one by the same honest rule. A
    ridge has no validation slice to choose Ecphory's setting on, so the demo gives
    Psychometry's (k 10, alpha 0.6); the manifest says it was given, not chosen.
    """
    quiet_model_loading()
    run_dir = out / "run"
    config = validate_config(TrainConfig, {"model": {"kind": "ridge", "target": "image_pooled"},
                                           "targets": {"clip": "simworld", "image_tokens": False,
                                                       "image_pooled": True}, "subjects": [subject]})
    run = train(config, store.root, run_dir, progress=False, overwrite=True)
    final_evaluation(run)
    values = json.loads((run / "metrics.json").read_text())["subjects"][subject]["values"]
    retrieval = {"way": values["image_retrieval"]["way"], "chance": values["image_retrieval"]["chance"],
                 "image_top1": values["image_retrieval"]["value"], "brain_top1": values["brain_retrieval"]["value"]}
    context = RunContext.open(run)
    setting = EcphorySetting(enabled=True, keys="prediction", k=10, alpha=0.6)
    scores = ecphory_embedding_scores(context, subject, setting)

    # one guidance scale for every decoding: the one chosen for this set on validation scenes
    guidance = recorded_guidance(assets)
    settings = {"n_images": n_images, "steps": steps, "seed": seed, "batch_size": 32, "guidance": guidance}
    settings = {**settings, "samples": samples}
    plain = run_reconstruct(run, out / "reconstructions" / "plain",
                            ReconstructConfig(ecphory=False, **settings), progress=False, overwrite=True)
    fused = run_reconstruct(run, out / "reconstructions" / "ecphory",
                            ReconstructConfig(keys=setting.keys, k=setting.k, alpha=setting.alpha, **settings),
                            progress=False, overwrite=True)
    read = lambda manifest, folder: np.stack([np.asarray(Image.open(folder / e["file"]))
                                              for e in manifest["images"]])
    from_brain = read(plain, out / "reconstructions" / "plain")
    from_ecphory = read(fused, out / "reconstructions" / "ecphory")
    ids = np.asarray([e["stimulus_id"] for e in plain["images"]])

    embedder = ClipImageEmbedder(assets / "clip", batch_size=128)
    originals = store.images_for(ids)
    generator = UnclipGenerator(assets / "decoder", batch_size=32)
    from_truth = generator.generate(GenerationRequest(image_pooled=embedder.pooled(originals), steps=steps,
                                                      guidance_scale=guidance, seed=seed))
    reference = embedder.pooled(originals)
    two_way = {name: two_way_identification(reference, embedder.pooled(images)) for name, images in
               (("from_brain", from_brain), ("from_brain_ecphory", from_ecphory), ("from_true_embedding",
                                                                                    from_truth))}
    return Reconstructions(subject, ids, originals, from_truth, from_brain, from_ecphory, retrieval,
                           scores, two_way, fused["selection"], run)


def evaluate_and_report(run: Path, recons: Path, report_dir: Path) -> tuple[dict, Path]:
    """`brainrecon evaluate --run RUN --recons DIR` then `brainrecon report`: metrics.json and the HTML page."""
    metrics = evaluate_run(run, recons, progress=False)
    return metrics, build_report(run, report_dir)


def save_reconstruction_grid(rec: Reconstructions, path: Path, columns: int = 10, scale: int = 2) -> None:
    """Blocks of ROWS rows: originals, decoded from the true embedding, from the brain, with Ecphory."""
    size, gap = rec.originals.shape[1] * scale, 4
    blocks = int(np.ceil(len(rec.originals) / columns))
    canvas = Image.new("RGB", (columns * (size + gap) + gap, blocks * (ROWS * size + (ROWS + 1) * gap) + gap), "white")
    for i in range(len(rec.originals)):
        block, col = divmod(i, columns)
        for row, images in enumerate((rec.originals, rec.from_truth, rec.from_brain, rec.from_ecphory)):
            tile = Image.fromarray(images[i]).resize((size, size), Image.NEAREST)
            canvas.paste(tile, (gap + col * (size + gap), gap + block * (ROWS * size + (ROWS + 1) * gap) + row * (size + gap)))
    atomic_save_image(path, canvas)


def run_demo(out: Path, config: str = "default", progress: bool = True, echo=print, n_images: int = 30,
             deep_steps: int = DEEP_STEPS) -> dict:
    """Run the demo into ``out`` (replacing an earlier demo there); return what it wrote to results.json.
    ``deep_steps``: the deep model's optimiser steps (0: no deep model)."""
    if deep_steps < 0:
        raise ValueError(f"deep_steps must be 0 (no deep model) or more, got {deep_steps}")
    world = load_config(WorldConfig, config, "worlds")  # a bad config is refused before anything is written
    marker = out / "demo.json"
    check_output_dir(out, "an earlier `brainrecon demo`", lambda path: (path / "demo.json").is_file(), overwrite=True)
    with exclusive_lock(out):
        out.mkdir(parents=True, exist_ok=True)
        # claimed first, so that a demo killed half-way is still recognised (and replaced) by the next one
        atomic_write_json(marker, {"brainrecon_version": __version__, "config": config, "finished": False})
        return _run_demo(out, marker, config, world, progress, echo, n_images, deep_steps)


def _run_demo(out: Path, marker: Path, config: str, world: WorldConfig, progress: bool, echo, n_images: int,
              deep_steps: int) -> dict:
    started = time.perf_counter()
    simulate_world(world, out / "store", overwrite=True, progress=progress)
    seconds = {"simulate": time.perf_counter() - started}
    echo(f"1/4 simulated {world.n_subjects} subjects ({world.n_train_images} training + {world.n_test_images} "
         f"shared test images each, {world.n_repeats} repeats) in {seconds['simulate']:.1f} s -> {out / 'store'}")
    store = open_store(out / "store")
    started = time.perf_counter()
    results = ceiling_table(store, spaces=DEMO_SPACES)
    save_ceilings(store, results)
    seconds["ridge_and_oracle"] = time.perf_counter() - started
    table = format_table(results)
    labels = ", ".join(SPACE_LABELS[space] for space in DEMO_SPACES)
    echo(f"2/4 measured the Bayes-optimal oracle, the ceiling of the space the models below decode into ({labels}) "
         f"and a ridge into it in {seconds['ridge_and_oracle']:.1f} s (`brainrecon simulate` measures every "
         f"space)\n")
    echo(table + "\n")
    summary = {"brainrecon_version": __version__, "python": platform.python_version(), "data_source": "simulated",
               "world": world.model_dump(mode="json"), "note": SIMULATED_NOTE, "seconds": seconds,
               "subjects": [r.to_dict() for r in results]}
    report = f"# brainrecon demo\n\n## Retrieval\n\n{table}\n"
    if deep_steps:
        deep = train_deep_model(store, results, out / "deep-run", deep_steps)
        seconds["deep_model"] = deep.seconds
        summary["deep_model"] = deep.to_dict()
        precision = " in bf16 autocast (this CPU has bf16 instructions)" if deep.precision == "bf16" else ""
        lines = (f"3/4 trained {deep.label} (preset {deep.preset}, {deep.steps} optimiser steps{precision}: what "
                 f"fits the demo's budget) and scored it in {deep.seconds:.1f} s; held-out {deep.way}-way image "
                 f"retrieval in its space ({SPACE_LABELS[deep.space]}), read against the oracle, that space's "
                 f"ceiling and a plain ridge into it:\n\n{deep.table()}\n")
        echo(lines)
        report += f"\n## A deep model\n\n{lines}\n"
    else:
        echo("3/4 skipped the deep model (--deep-steps 0)")
    if (SIMWORLD_ASSETS / "manifest.json").is_file():
        started = time.perf_counter()
        rec = reconstruct_with_assets(store, store.subjects[0], SIMWORLD_ASSETS, out, n_images=n_images)
        seconds["reconstruct"] = time.perf_counter() - started
        save_reconstruction_grid(rec, out / "reconstructions.png")
        summary["reconstructions"] = rec.to_dict()
        r, rows = rec.clip_retrieval, rec.ecphory_scores["rows"]
        plain, fused, setting = rows["plain"], rows["fused"], rec.ecphory_scores["setting"]
        lines = (f"4/4 reconstructed {len(rec.stimulus_ids)} test images of {rec.subject} in "
                 f"{seconds['reconstruct']:.1f} s (ridge run -> small-CLIP embedding -> small unCLIP decoder)\n"
                 f"    ridge in small-CLIP space, {r['way']}-way: image {100 * r['image_top1']:.1f}%, brain "
                 f"{100 * r['brain_top1']:.1f}% (chance {100 / r['way']:.2f}%)\n"
                 f"    Ecphory (given: k={setting['k']}, alpha {setting['alpha']}; a ridge has no validation slice "
                 f"to choose them on) vs none, embedding level: cosine to the truth "
                 f"{fused['embedding_cosine']:.3f} vs {plain['embedding_cosine']:.3f}; retrieval "
                 f"{100 * fused['image_top1']:.1f}% vs {100 * plain['image_top1']:.1f}%\n"
                 f"    two-way identification (small CLIP, chance 50%; {rec.selection} selection of the same "
                 f"number of samples in both): from brain {100 * rec.two_way['from_brain']:.1f}%, with Ecphory "
                 f"{100 * rec.two_way['from_brain_ecphory']:.1f}%, from the true embedding "
                 f"{100 * rec.two_way['from_true_embedding']:.1f}%\n"
                 f"    grid (original / from true embedding / from brain / with Ecphory): "
                 f"{out / 'reconstructions.png'}")
        echo(lines)
        report += f"\n## Reconstructions\n\n![reconstructions](reconstructions.png)\n\n```\n{lines}\n```\n"
        started = time.perf_counter()
        metrics, page = evaluate_and_report(rec.run, out / "reconstructions" / "ecphory", out / "report")
        seconds["evaluate_and_report"] = time.perf_counter() - started
        summary["evaluation"] = {"metrics": str(rec.run / "metrics.json"), "report": str(page)}
        table = metrics_table(metrics)
        echo(f"\nEvaluation of the reconstructions with Ecphory ({rec.subject}; `brainrecon evaluate`):\n\n{table}")
        report += f"\n## Evaluation\n\n{table}\n"
    else:
        echo("4/4 skipped reconstruction: the small model set is not installed (brainrecon/assets/simworld)")
    echo(f"\n{SIMULATED_NOTE}")
    atomic_write_text(out / "report.md", report + f"\n{SIMULATED_NOTE}\n")
    atomic_write_text(out / "retrieval.md", f"# brainrecon demo: retrieval\n\n{table}\n\n{SIMULATED_NOTE}\n")
    atomic_write_json(out / "results.json", summary)
    atomic_write_json(marker, {"brainrecon_version": __version__, "config": config, "finished": True})
    echo(f"Wrote {out / 'results.json'}, {out / 'report.md'}")
    if "evaluation" in summary:
        echo(f"Report: {summary['evaluation']['report']}")
    return summary
