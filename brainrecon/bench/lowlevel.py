"""`brainrecon bench lowlevel`: MindEye's low-level img2img path against the same reconstruction without it.

One run with a low-level head (e.g. the `sim-mindeye2-lowlevel` preset) reconstructs subj01's first test
images twice, with the same samples, seeds and honest selection, Ecphory off in both: from noise, and
img2img from the blurry image decoded from the predicted VAE latents at the strength the run chose on its
held-out training stimuli (RUN/lowlevel.json). PixCorr, SSIM and CLIP two-way identification are compared
per image. The blurry image itself is scored beside them, as what img2img starts from, and the VAE's
round trip of the true images as the most a perfect latent prediction could give.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from brainrecon.bench.leaderboard import SUBJECT, image_scores, per_image_scores, run_clip
from brainrecon.errors import ConfigError
from brainrecon.evaluate.choice import make_choices
from brainrecon.evaluate.evaluation import read_manifest
from brainrecon.io import atomic_write_json, atomic_write_text
from brainrecon.memory.choice import paired_gain
from brainrecon.provenance import source_commit
from brainrecon.reconstruct import (LOWLEVEL_CHOICE, LowLevelGrid, ReconstructConfig, is_reconstructions,
                                    lowlevel_decoder, lowlevel_images, reconstruct)
from brainrecon.train.run import RunContext, is_run


def run_lowlevel_bench(run: Path, out: Path, samples: int = 4, n_images: int = 30, steps: int = 25,
                       grid: LowLevelGrid | None = None, echo=print) -> dict:
    """Reconstruct without and with the low-level path into OUT/recons, compare, write OUT/lowlevel.json/.md."""
    if not is_run(run):
        raise ConfigError(f"{run} is not a finished training run; train one with a low-level head first "
                          f"(brainrecon train --config sim-mindeye2-lowlevel ...)")
    common = {"samples": samples, "n_images": n_images, "steps": steps, "batch_size": 32, "ecphory": False,
              "lowlevel_grid": grid or LowLevelGrid()}
    arms = {"without": ReconstructConfig(**common), "lowlevel": ReconstructConfig(**common, lowlevel=True)}
    context = RunContext.open(run)
    clip_encoder = run_clip(context)
    scores, manifests = {}, {}
    for arm, config in arms.items():
        folder = out / "recons" / arm
        if not is_reconstructions(folder):
            echo(f"reconstructing {'with' if config.lowlevel else 'without'} the low-level path")
            make_choices(run, config, progress=False)  # the strength, on the run's held-out training stimuli
            reconstruct(run, folder, config, subjects=[SUBJECT], progress=False, overwrite=True)
        manifests[arm] = read_manifest(folder)
        scores[arm] = per_image_scores(context, folder, clip_encoder)
    choice = json.loads((run / LOWLEVEL_CHOICE).read_text())
    record = {"run": str(run), "commit": source_commit(), "samples": samples, "n_images": n_images, "steps": steps,
              "strength": manifests["lowlevel"]["lowlevel"]["strength"], "choice": choice}
    for metric in ("pixcorr", "ssim", "clip"):
        record[metric] = {"without": float(np.mean(scores["without"][metric])),
                          "lowlevel": float(np.mean(scores["lowlevel"][metric])),
                          **paired_gain(scores["lowlevel"][metric], scores["without"][metric])}
    record["pixcorr_ratio"] = record["pixcorr"]["lowlevel"] / record["pixcorr"]["without"]
    for name, images in references(context, n_images, clip_encoder).items():
        record[name] = {metric: float(np.mean(values)) for metric, values in images.items()}
    atomic_write_json(out / "lowlevel.json", record)
    atomic_write_text(out / "lowlevel.md", lowlevel_page(record))
    return record


def references(context: RunContext, n_images: int, clip_encoder=None) -> dict[str, dict[str, np.ndarray]]:
    """Per-image scores of the blurry images decoded from the predicted latents ("blurry_image") and of the
    VAE's round trip of the true images ("vae_round_trip"), for subj01's first test images."""
    test = context.store.subject(SUBJECT).test()
    n = min(n_images, len(test))
    truth = context.store.images_for(test.stimulus_ids[:n])
    vae = lowlevel_decoder(context)
    clip_encoder = clip_encoder or run_clip(context)
    return {"blurry_image": image_scores(truth, lowlevel_images(context, vae, test.betas[:n], SUBJECT), clip_encoder),
            "vae_round_trip": image_scores(truth, vae.decode(vae.encode(truth)), clip_encoder)}


def lowlevel_page(record: dict) -> str:
    choice = record["choice"]
    lines = [
        "# MindEye's low-level path against the same reconstruction without it",
        "",
        f"Made by `brainrecon bench lowlevel` at commit {record['commit']}: the run {record['run']} (subj01, the "
        f"first {record['n_images']} test images, {record['samples']} samples per image in both arms, the same "
        "seeds, honest selection, Ecphory off). The simulated world is a testbed: these are not NSD results.",
        "",
        f"Strength {record['strength']}, chosen on held-out training stimuli: {choice['reason']}.",
        "",
        "| metric | without | with the low-level path | gain (95% CI over images) |",
        "|---|---:|---:|---|",
    ]
    for metric, label in (("pixcorr", "PixCorr"), ("ssim", "SSIM"), ("clip", "CLIP two-way")):
        m = record[metric]
        lines.append(f"| {label} | {m['without']:.3f} | {m['lowlevel']:.3f} | {m['gain']:+.3f} "
                     f"({m['gain_ci95_low']:+.3f} to {m['gain_ci95_high']:+.3f}) |")
    for name, label in (("blurry_image", "the blurry image alone (what img2img starts from)"),
                        ("vae_round_trip", "the VAE's round trip of the true image (a perfect latent prediction)")):
        if name in record:
            m = record[name]
            lines.append(f"| *{label}* | | {m['pixcorr']:.3f} / {m['ssim']:.3f} / {m['clip']:.3f} "
                         "(PixCorr / SSIM / CLIP two-way) | |")
    lines += ["", f"PixCorr with ÷ without: {record['pixcorr_ratio']:.2f}.", "",
              "## The strengths tried on held-out training stimuli", "",
              "| strength | PixCorr | SSIM | CLIP two-way |", "|---:|---:|---:|---:|"]
    lines += [f"| {row['strength']} | {row['pixcorr']:.3f} | {row['ssim']:.3f} | {100 * row['clip']:.1f} |"
              for row in choice["grid"]]
    return "\n".join(lines) + "\n"
