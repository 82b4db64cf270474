"""Settings a reconstruction chooses on the run's held-out *training* stimuli, never on test.

- Ecphory's memory keys, k and alpha (RUN/ecphory.json; the rule is in memory/choice.py);
- the img2img strength of MindEye's low-level path (RUN/lowlevel.json; the rule is `LowLevelGrid`'s).

Both generate images for the run's validation slice (training stimuli the model was not fitted
on) with the reconstruction's own generator settings and seeds, and score them with the
evaluation's image metrics; `brainrecon.reconstruct` only reads the records. `make_choices`
makes whichever a reconstruction config needs and lacks (`brainrecon reconstruct` calls it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from brainrecon.embed.clip import ClipImageEmbedder
from brainrecon.errors import ConfigError
from brainrecon.evaluate.metrics import pixcorr, ssim
from brainrecon.io import atomic_write_json, sha256_file
from brainrecon.memory import EcphoryConfig, fuse
from brainrecon.memory.choice import CHOICE_FORMAT, EcphoryGrid, EcphorySetting, choose, two_way_fractions
from brainrecon.reconstruct import (ECPHORY_CHOICE, LOWLEVEL_CHOICE, LOWLEVEL_FORMAT, ReconstructConfig,
                                    conditioning_embeddings, ecphory_choice_settings, generate_samples,
                                    lowlevel_choice_settings, lowlevel_decoder, lowlevel_images, memory_query,
                                    open_memory, predict_embeddings, read_choice, recon_models, typical_pooled_norm)
from brainrecon.train.run import RunContext
from brainrecon.train.validation import ValidationSet


def make_choices(run: str | Path, config: ReconstructConfig, data: str | Path | None = None,
                 progress: bool = True) -> dict:
    """Choose what ``config`` leaves to the run (Ecphory's setting, the low-level strength) and lacks a record of.

    Returns the records made, by file name (empty when nothing was needed).
    """
    need_ecphory = (config.ecphory and not config.ecphory_given
                    and read_choice(run, ECPHORY_CHOICE, CHOICE_FORMAT, ecphory_choice_settings(config)) is None)
    need_lowlevel = (config.lowlevel and config.lowlevel_strength is None
                     and read_choice(run, LOWLEVEL_CHOICE, LOWLEVEL_FORMAT, lowlevel_choice_settings(config)) is None)
    if not (need_ecphory or need_lowlevel):
        return {}
    context = RunContext.open(run, data, config.device)
    generator, clip = recon_models(context, config)
    made = {}
    if need_ecphory:
        made[ECPHORY_CHOICE] = ecphory_choice(context, run, config, generator, clip, progress=progress)
    if need_lowlevel:
        made[LOWLEVEL_CHOICE] = lowlevel_choice(context, run, config, generator, clip, progress=progress)
    return made


def ecphory_choice(context: RunContext, run: str | Path, config: ReconstructConfig, generator,
                   clip: ClipImageEmbedder, progress: bool = True) -> dict:
    """The run's Ecphory setting, chosen on its validation slice (memory/choice.py), cached in RUN/ecphory.json.

    Each setting of the grid, and alpha = 1 (no memory), conditions one generated image per
    held-out training stimulus (up to ``grid.max_stimuli`` per subject), with the same seeds
    and the reconstruction's generator settings; the score is the two-way identification of
    the images' CLIP embeddings against the true images', as the evaluation scores test
    reconstructions. A run without a validation slice (a closed-form fit, or trained with
    validation off) cannot choose honestly: its record says so and keeps Ecphory off.
    """
    grid = config.ecphory_grid
    settings = ecphory_choice_settings(config)
    cached = read_choice(run, ECPHORY_CHOICE, CHOICE_FORMAT, settings)
    if cached is not None:
        return cached
    record = {"format": CHOICE_FORMAT, "model_sha256": sha256_file(Path(run) / "model.safetensors"),
              "settings": settings,
              "criterion": "two-way identification (CLIP) of images generated from each setting, one per held-out "
                           "training stimulus (repeats averaged, at most max_stimuli per subject), pooled over "
                           "subjects; gain over alpha = 1 (no memory) on the same stimuli with the same seeds"}
    queries = validation_queries(context, grid.max_stimuli)
    if not queries:
        record.update(choice=EcphorySetting(enabled=False).model_dump(mode="json"), grid=[], validation_stimuli={},
                      reason="the run has no validation slice (training stimuli held out from the fit), so "
                             "Ecphory's setting cannot be chosen without test data; it stays off unless keys, "
                             "k or alpha are given")
    else:
        baseline, scored, counts = _score_grid(context, run, queries, grid, config, generator, clip, progress)
        choice, rows, reason = choose(baseline, scored)
        record.update(choice=choice.model_dump(mode="json"), grid=rows, reason=reason, validation_stimuli=counts,
                      baseline_two_way=float(np.mean(baseline)))
    atomic_write_json(Path(run) / ECPHORY_CHOICE, record)
    return record


def validation_queries(context: RunContext, max_stimuli: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """subject -> (stimulus ids, repeat-averaged betas) of up to max_stimuli of the run's validation slice
    (the slice is a seeded random draw, so its first stimuli by id are as random); empty without one."""
    rows = {s: context.validation_rows(s) for s in context.subjects(None)}
    rows = {s: r for s, r in rows.items() if len(r)}
    if not rows:
        return {}
    held_out = ValidationSet(context.store, rows, context.targets, context.model.retrieval_target)
    return {s: (held_out.stimulus_ids[s][:max_stimuli], held_out.betas[s].numpy()[:max_stimuli]) for s in rows}


def _score_grid(context: RunContext, run, queries: dict, grid: EcphoryGrid, config: ReconstructConfig, generator,
                clip: ClipImageEmbedder, progress: bool) -> tuple[np.ndarray, dict, dict]:
    """Per-stimulus two-way scores at alpha = 1 and at every grid setting, concatenated over subjects."""
    baseline, scored, counts = [], {}, {}
    total = sum(len(ids) for ids, _ in queries.values()) * (1 + len(grid.keys) * len(grid.k) * len(grid.alpha))
    with tqdm(total=total, desc="choose Ecphory setting", unit="img", disable=not progress) as bar:
        for subject, (ids, betas) in queries.items():
            conditioning = conditioning_embeddings(context.model, betas, subject, seed=config.seed)
            prediction = predict_embeddings(context.model, betas, subject)
            truth = clip.pooled(context.store.images_for(ids))
            pooled_norm = typical_pooled_norm(context, clip, subject)

            def score(candidates: dict) -> np.ndarray:
                images = generate_samples(generator, candidates, config, pooled_norm, 1, bar)
                return two_way_fractions(truth, clip.pooled(images[:, 0]))

            baseline.append(score({name: x[:, None] for name, x in conditioning.items()}))
            counts[subject] = len(ids)
            for keys in grid.keys:
                memory = open_memory(context, run, subject, progress, keys)
                query = memory_query(keys, prediction, betas)
                for k in grid.k:
                    for alpha in grid.alpha:
                        fusion = EcphoryConfig(k=min(k, len(memory)), alpha=alpha, fusion=config.fusion,
                                               neighbours=config.neighbours)
                        fused = fuse(conditioning, memory, fusion, query).embeddings
                        scored.setdefault((keys, k, alpha), []).append(score(fused))
    return np.concatenate(baseline), {key: np.concatenate(parts) for key, parts in scored.items()}, counts


def lowlevel_choice(context: RunContext, run: str | Path, config: ReconstructConfig, generator,
                    clip: ClipImageEmbedder, progress: bool = True) -> dict:
    """The img2img strength for the low-level path, chosen on the run's validation slice (RUN/lowlevel.json).

    Every strength of the grid, and no init image, generates one image per held-out training stimulus with
    the same seeds; PixCorr, SSIM and CLIP two-way identification are scored against the true images
    (`LowLevelGrid` says how one is chosen). A run without a validation slice cannot choose: give
    ``lowlevel_strength``.
    """
    grid = config.lowlevel_grid
    settings = lowlevel_choice_settings(config)
    cached = read_choice(run, LOWLEVEL_CHOICE, LOWLEVEL_FORMAT, settings)
    if cached is not None:
        return cached
    model_sha = sha256_file(Path(run) / "model.safetensors")
    queries = validation_queries(context, grid.max_stimuli)
    if not queries:
        raise ConfigError(f"the run {run} has no validation slice to choose the low-level strength on; give it "
                          f"(--lowlevel-strength, e.g. MindEye1's 0.85) or train with validation.fraction > 0")
    vae = lowlevel_decoder(context, config.device)
    strengths = (1.0, *grid.strengths)
    scores: dict[float, dict[str, list]] = {s: {"clip": [], "pixcorr": [], "ssim": []} for s in strengths}
    with tqdm(total=len(strengths) * sum(len(ids) for ids, _ in queries.values()), desc="choose low-level strength",
              unit="img", disable=not progress) as bar:
        for subject, (ids, betas) in queries.items():
            truth = context.store.images_for(ids)
            truth_clip = clip.pooled(truth)
            candidates = {name: x[:, None] for name, x in conditioning_embeddings(context.model, betas, subject,
                                                                                   seed=config.seed).items()}
            init = lowlevel_images(context, vae, betas, subject)
            pooled_norm = typical_pooled_norm(context, clip, subject)
            for strength in strengths:
                images = generate_samples(generator, candidates, config, pooled_norm, 1, bar, init, strength)[:, 0]
                scores[strength]["clip"].append(two_way_fractions(truth_clip, clip.pooled(images)))
                scores[strength]["pixcorr"].append(np.asarray(pixcorr(truth, images, per_image=True)))
                scores[strength]["ssim"].append(np.asarray(ssim(truth, images, per_image=True)))
    rows = [{"strength": s, **{m: float(np.mean(np.concatenate(v))) for m, v in scores[s].items()}} for s in strengths]
    baseline = rows[0]
    allowed = [r for r in rows[1:] if r["clip"] >= baseline["clip"] - grid.clip_tolerance]
    best = max(allowed, key=lambda r: r["pixcorr"] + r["ssim"], default=None)
    if best is None or best["pixcorr"] + best["ssim"] <= baseline["pixcorr"] + baseline["ssim"]:
        strength, reason = 1.0, (f"no strength kept CLIP two-way identification within "
                                 f"{100 * grid.clip_tolerance:.0f} points of generation without the low-level image "
                                 f"while raising PixCorr + SSIM; the low-level image is not used")
    else:
        strength, reason = best["strength"], (
            f"PixCorr {baseline['pixcorr']:.3f} -> {best['pixcorr']:.3f}, SSIM {baseline['ssim']:.3f} -> "
            f"{best['ssim']:.3f}, CLIP two-way {100 * baseline['clip']:.1f}% -> {100 * best['clip']:.1f}% on "
            f"held-out training stimuli")
    record = {"format": LOWLEVEL_FORMAT, "model_sha256": model_sha, "settings": settings, "strength": strength,
              "reason": reason, "grid": rows, "validation_stimuli": {s: len(ids) for s, (ids, _) in queries.items()},
              "criterion": f"the best PixCorr + SSIM among strengths whose CLIP two-way identification is within "
                           f"{grid.clip_tolerance} of strength 1 (no low-level image), one image per held-out "
                           f"training stimulus"}
    atomic_write_json(Path(run) / LOWLEVEL_CHOICE, record)
    return record
