"""`brainrecon bench ecphory`: does Ecphory help reconstruction, against a control with the same samples?

For each trained run (the leaderboard's, by default), test images are reconstructed in arms
that differ only in the conditioning embeddings:

- control: no memory;
- chosen: the run's Ecphory setting, chosen on held-out training stimuli (RUN/ecphory.json);
- psychometry: Psychometry's own fusion (raw blend, one sample per neighbour, alpha 0.6).

Every arm generates the same number of samples per image with the same seeds and keeps one by
the same honest rule (closest to the brain prediction). Each image's CLIP two-way
identification, SSIM and PixCorr are compared with the control's on the same image; the gain's
95% interval is over images. Retrieval is not Ecphory's to change: it is scored on the plain
prediction by `brainrecon evaluate`, and the validation grid that chose the setting is shown
beside the result.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import Field

from brainrecon.bench.leaderboard import SUBJECT, per_image_scores, run_clip
from brainrecon.config import StrictConfig
from brainrecon.errors import ConfigError
from brainrecon.evaluate.choice import make_choices
from brainrecon.evaluate.evaluation import read_manifest
from brainrecon.evaluate.metrics import FEATURE_METRICS
from brainrecon.io import atomic_write_json, atomic_write_text
from brainrecon.memory.choice import EcphoryGrid, paired_gain
from brainrecon.provenance import source_commit
from brainrecon.reconstruct import ECPHORY_CHOICE, ReconstructConfig, is_reconstructions, reconstruct
from brainrecon.train.run import RunContext, is_run


class EcphoryBenchConfig(StrictConfig):
    models: tuple[str, ...] = ("psychometry", "mindbridge", "mindeye2")  # run folders under --runs
    samples: int = Field(4, ge=1)  # per image, in every arm
    n_images: int = Field(30, ge=2)  # subj01's first test images
    steps: int = Field(25, ge=1)
    psychometry_alpha: float = Field(0.6, ge=0.0, le=1.0)
    ecphory_grid: EcphoryGrid = EcphoryGrid()  # what each run's choice tries on its held-out training stimuli


def arms(config: EcphoryBenchConfig) -> dict[str, dict]:
    """Arm name -> ReconstructConfig overrides; all share samples, seeds and the selection rule."""
    common = {"samples": config.samples, "n_images": config.n_images, "steps": config.steps, "batch_size": 32,
              "ecphory_grid": config.ecphory_grid}
    return {"control": {**common, "ecphory": False},
            "chosen": common,
            "psychometry": {**common, "fusion": "raw", "neighbours": "each", "keys": "prediction",
                            "k": config.samples, "alpha": config.psychometry_alpha}}


def run_ecphory_bench(config: EcphoryBenchConfig, runs: Path, out: Path, echo=print) -> list[dict]:
    """Reconstruct every arm of every model into OUT/recons, compare with the control, write OUT/ecphory.json/.md."""
    missing = [m for m in config.models if not is_run(runs / m)]
    if missing:
        raise ConfigError(f"no finished run for {missing} under {runs}; train them first (brainrecon bench "
                          f"leaderboard --out DIR makes DIR/runs/<model>)")
    commit = source_commit()
    clip_encoder = None
    records = []
    for model in config.models:
        run = runs / model
        context = RunContext.open(run)
        clip_encoder = clip_encoder or run_clip(context)
        scores, manifests = {}, {}
        for arm, overrides in arms(config).items():
            folder = out / "recons" / model / arm
            if not is_reconstructions(folder):
                echo(f"{model}: reconstructing the {arm} arm")
                make_choices(run, ReconstructConfig(**overrides), progress=False)  # the chosen arm: on the slice
                reconstruct(run, folder, ReconstructConfig(**overrides), subjects=[SUBJECT], progress=False,
                            overwrite=True)
            manifests[arm] = read_manifest(folder)
            scores[arm] = per_image_scores(context, folder, clip_encoder)
        choice = json.loads((run / ECPHORY_CHOICE).read_text())
        for arm in ("chosen", "psychometry"):
            setting = manifests[arm]["ecphory"]
            record = {"model": model, "variant": arm, "keys": setting["keys"], "k": setting["k"],
                      "alpha": setting["alpha"] if setting["enabled"] else 1.0, "enabled": setting["enabled"],
                      "fusion": setting["fusion"], "neighbours": setting["neighbours"], "samples": config.samples,
                      "n_images": int(len(scores[arm]["clip"])), "selection": manifests[arm]["selection"],
                      "control_two_way": float(np.mean(scores["control"]["clip"])),
                      "ecphory_two_way": float(np.mean(scores[arm]["clip"])),
                      **paired_gain(scores[arm]["clip"], scores["control"]["clip"]), "commit": commit}
            for metric in ("ssim", "pixcorr"):
                record[f"control_{metric}"] = float(np.mean(scores["control"][metric]))
                record[f"ecphory_{metric}"] = float(np.mean(scores[arm][metric]))
                gain = paired_gain(scores[arm][metric], scores["control"][metric])
                record[f"{metric}_gain"], record[f"{metric}_gain_ci95"] = gain["gain"], (
                    gain["gain_ci95_low"], gain["gain_ci95_high"])
            if arm == "chosen":
                record["validation"] = {key: choice.get(key) for key in ("reason", "validation_stimuli",
                                                                         "baseline_two_way", "grid")}
            records.append(record)
            echo(f"{model} {arm}: CLIP two-way {100 * record['control_two_way']:.1f} -> "
                 f"{100 * record['ecphory_two_way']:.1f} ({100 * record['gain']:+.1f}, 95% CI "
                 f"{100 * record['gain_ci95_low']:+.1f} to {100 * record['gain_ci95_high']:+.1f})")
    atomic_write_json(out / "ecphory.json", {"commit": commit, "config": config.model_dump(mode="json"),
                                             "clip": FEATURE_METRICS["clip"].name, "records": records})
    atomic_write_text(out / "ecphory.md", ecphory_page(records, config, commit))
    return records


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def ecphory_page(records: list[dict], config: EcphoryBenchConfig, commit: str) -> str:
    lines = [
        "# Ecphory against a same-sample control",
        "",
        f"Made by `brainrecon bench ecphory` at commit {commit}, on the leaderboard's runs of the default "
        "simulated world (subj01, the first "
        f"{config.n_images} test images, {config.samples} samples per image in every arm, honest selection by "
        "the brain prediction). The simulated world is a testbed: these figures are not NSD results.",
        "",
        "**chosen**: the run's own setting, chosen on held-out training stimuli (its validation slice; never "
        "test). **psychometry**: Psychometry's blend of raw embeddings, one sample per neighbour, "
        f"alpha {config.psychometry_alpha}. Gains are per image against the control (no memory, the same seeds), "
        "in percentage points, with 95% intervals over images.",
        "",
        "| model | variant | keys | k | alpha | CLIP two-way control → Ecphory | gain (95% CI) | SSIM gain | "
        "PixCorr gain |",
        "|---|---|---|---:|---:|---|---|---|---|",
    ]
    for r in records:
        setting = (r["keys"], str(r["k"]), f"{r['alpha']:.2f}") if r["enabled"] else ("off", "–", "1")
        lines.append(
            f"| {r['model']} | {r['variant']} | {setting[0]} | {setting[1]} | {setting[2]} | "
            f"{100 * r['control_two_way']:.1f} → {100 * r['ecphory_two_way']:.1f} | {_points(r['gain'])} "
            f"({_points(r['gain_ci95_low'])} to {_points(r['gain_ci95_high'])}) | "
            f"{r['ssim_gain']:+.3f} | {r['pixcorr_gain']:+.3f} |")
    lines += ["", "## How each setting was chosen (validation slice, generated images)", ""]
    for r in records:
        if r["variant"] != "chosen":
            continue
        validation = r["validation"]
        lines += [f"### {r['model']}", "", f"{validation['reason']}. Stimuli per subject: "
                  f"{validation['validation_stimuli']}; two-way without memory "
                  f"{100 * (validation['baseline_two_way'] or 0):.1f}.", "",
                  "| keys | k | alpha | two-way | gain (95% CI) |", "|---|---:|---:|---:|---|"]
        for row in sorted(validation["grid"] or [], key=lambda row: -row["gain"]):
            lines.append(f"| {row['keys']} | {row['k']} | {row['alpha']} | {100 * row['two_way']:.1f} | "
                         f"{_points(row['gain'])} ({_points(row['gain_ci95_low'])} to "
                         f"{_points(row['gain_ci95_high'])}) |")
        lines.append("")
    return "\n".join(lines) + "\n"
