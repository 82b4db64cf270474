"""`brainrecon evaluate`: the field's table for one run, per subject and averaged, with 95% CIs.

    run + store -> predictions for the test images -> retrieval (30 draws of 300) + embedding cosine
    reconstructions (manifest.json) + ground truth -> PixCorr, SSIM, AlexNet(2/5), InceptionV3,
        CLIP (two-way, N-way form), EffNet-B, SwAV (correlation distance)
    -> leakage guard -> metrics.json (schema in docs/evaluation.md) + a printed table

A metric whose network is not available is reported as ``{"available": false, "reason": ...}``:
never a made-up number, never silently dropped.

Confidence intervals (all 95%):
- per subject, retrieval: normal interval over the 30 draws (MindEye2's form);
- per subject, every other metric: normal interval over the per-image scores (for two-way
  identification, the per-reconstruction fractions of the N-way comparison);
- averaged over subjects: the mean of the subject means, with a Student-t interval over subjects
  (with one subject, that subject's own interval).
"""

from __future__ import annotations

import hashlib
import io
import platform
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from PIL import Image

from brainrecon.config import Device, StrictConfig, load_config
from brainrecon.data.simworld.config import SIMULATED_NOTE
from brainrecon.data.store import Store
from brainrecon.embed.clip import ClipImageEmbedder
from brainrecon.errors import EvaluationError
from brainrecon.evaluate.feature_nets import (
    MetricUnavailable,
    WeightsUnavailable,
    load_feature_net,
)
from brainrecon.evaluate.leakage import LeakageReport, check_leakage
from brainrecon.evaluate.metrics import (
    FEATURE_METRICS,
    PROTOCOL_SIZE,
    FeatureMetric,
    net_encoder,
    pixcorr,
    score_with_network,
    ssim,
)
from brainrecon.evaluate.retrieval import cosine_scores, retrieval_top1
from brainrecon.io import atomic_write_json, check_output_file, sha256_file
from brainrecon.generate.base import quiet_model_loading
from brainrecon.models.base import BrainModel, predict_in_batches
from brainrecon.pretrained import SIMWORLD, resolve_model_dir
from brainrecon.train.config import TrainConfig
from brainrecon.train.run import RunContext, training_stimuli

METRICS_FORMAT = "brainrecon.metrics/1"


# name -> (column label, higher is better, shown as a percentage)
METRIC_COLUMNS: dict[str, tuple[str, bool, bool]] = {
    "pixcorr": ("PixCorr", True, False),
    "ssim": ("SSIM", True, False),
    "alexnet2": ("Alex(2)", True, True),
    "alexnet5": ("Alex(5)", True, True),
    "inception": ("Incep", True, True),
    "clip": ("CLIP", True, True),
    "effnet": ("Eff", False, False),
    "swav": ("SwAV", False, False),
    "image_retrieval": ("Img ret", True, True),
    "brain_retrieval": ("Brain ret", True, True),
    "embedding_cosine": ("Emb cos", True, False),
}
IMAGE_METRICS = ("pixcorr", "ssim", "alexnet2", "alexnet5", "inception", "clip", "effnet", "swav")


class EvaluateConfig(StrictConfig):
    way: int = Field(300, ge=2)  # N-way retrieval (lowered to the number of test images when there are fewer)
    draws: int = Field(30, ge=1)
    seed: int = 42
    weights: str | None = None  # a local directory with the standard AlexNet/Inception/EffNet/SwAV files
    clip: str | None = None  # CLIP for the CLIP metric (OpenAI ViT-L/14 on NSD); default: the run's target CLIP
    antialias: bool = False  # the published runs resized without antialiasing (docs/metrics.md)
    batch_size: int = Field(32, ge=1)
    device: Device = "cpu"
    allow_test_normalization: bool = False  # score stores z-scored with test statistics, labelled not held out


# --------------------------------------------------------------------------- values with intervals


def normal_value(scores: np.ndarray) -> dict:
    """Mean of per-item scores with a 95% normal interval."""
    scores = np.asarray(scores, dtype=np.float64)
    ci = 1.96 * scores.std(ddof=1) / np.sqrt(len(scores)) if len(scores) > 1 else 0.0
    return {"value": float(scores.mean()), "ci95": float(ci), "n": len(scores)}


def unavailable(reason: str) -> dict:
    return {"available": False, "reason": reason}


def is_available(entry: dict) -> bool:
    return entry.get("available", True)


def student_t_interval(values) -> tuple[float, float]:
    """Mean and half-width of its 95% Student-t interval (for a few values: subjects, training seeds)."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))


def average_over_subjects(per_subject: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Each metric's mean over subjects with a Student-t 95% interval over subjects."""
    names = [n for n in METRIC_COLUMNS if any(n in values for values in per_subject.values())]
    average = {}
    for name in names:
        entries = [values[name] for values in per_subject.values() if name in values]
        missing = [e for e in entries if not is_available(e)]
        if missing:
            average[name] = unavailable(missing[0]["reason"])
            continue
        means = np.asarray([e["value"] for e in entries])
        if len(means) == 1:
            average[name] = {"value": float(means[0]), "ci95": entries[0]["ci95"], "n_subjects": 1}
        else:
            mean, half = student_t_interval(means)
            average[name] = {"value": mean, "ci95": half, "n_subjects": len(means)}
    return average


# --------------------------------------------------------------------------- retrieval


def predict_test(model: BrainModel, store: Store, subject: str,
                 batch_size: int = 256) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The model's predictions for a subject's test stimuli (repeats averaged at the input, as MindEye1)."""
    test = store.subject(subject).test()
    return predict_in_batches(model, test.betas, subject, batch_size), test.stimulus_ids


def retrieval_values(predicted: np.ndarray, truth: np.ndarray, way: int = 300, draws: int = 30,
                     seed: int = 42) -> dict[str, dict]:
    """Image and brain retrieval (top-1 over ``draws`` subsets of ``way``) and the embedding cosine."""
    scores = cosine_scores(predicted, truth)
    way = min(way, len(scores))
    score = retrieval_top1(scores, way, draws, seed)
    common = {"n": draws, "way": way, "chance": score.chance}
    return {"image_retrieval": {"value": score.image_top1, "ci95": score.image_ci95, **common},
            "brain_retrieval": {"value": score.brain_top1, "ci95": score.brain_ci95, **common},
            "embedding_cosine": normal_value(np.diag(scores))}


# --------------------------------------------------------------------------- image metrics


Encoder = Callable[[torch.Tensor], torch.Tensor]


def feature_encoders(weights: str | Path | None, clip_path: str | Path | None, device: str = "cpu",
                     clip_note: str = "") -> dict[str, tuple[FeatureMetric, Encoder] | MetricUnavailable]:
    """For each network metric, its (protocol spec, encoder), or why it is not available.

    Each network is loaded once (AlexNet serves both of its layers).
    """
    nets: dict[str, torch.nn.Module | MetricUnavailable] = {}
    out: dict[str, tuple[FeatureMetric, Encoder] | MetricUnavailable] = {}
    for name, spec in FEATURE_METRICS.items():
        if spec.net == "clip":
            out[name] = _clip_encoder(spec, clip_path, device, clip_note)
            continue
        if spec.net not in nets:
            if weights is None:
                nets[spec.net] = MetricUnavailable(spec.name, f"no --weights DIR given ({spec.net} weights are "
                                                              f"read from local files, never downloaded)")
            else:
                try:
                    nets[spec.net] = load_feature_net(spec.net, weights).to(device)
                except WeightsUnavailable as error:
                    nets[spec.net] = MetricUnavailable(spec.name, str(error))
        net = nets[spec.net]
        out[name] = replace(net, metric=spec.name) if isinstance(net, MetricUnavailable) else \
            (spec, net_encoder(net, spec.node))
    return out


def _clip_encoder(spec: FeatureMetric, clip_path, device: str, note: str):
    if clip_path is None:
        return MetricUnavailable(spec.name, "no CLIP given (--clip DIR: OpenAI ViT-L/14 for the published protocol)")
    quiet_model_loading()
    try:
        clip = ClipImageEmbedder(resolve_model_dir(clip_path, "--clip", "clip"), device)
    except (OSError, ValueError) as error:  # ModelPathError and ConfigError are ValueErrors
        return MetricUnavailable(spec.name, f"cannot load CLIP from {clip_path} (give a local CLIP folder with "
                                            f"--clip DIR): {error}")
    # the CLIP's own input size and normalisation: 224 and CLIP mean/std for ViT-L/14, as the protocol
    preprocess = clip.preprocess
    spec = replace(spec, size=clip.model.config.image_size, mean=tuple(preprocess.mean), std=tuple(preprocess.std),
                   name=spec.name + (f" ({note})" if note else ""))
    return spec, lambda pixels: clip.embed_pixels(pixels)[1]


def image_values(gt: np.ndarray, recon: np.ndarray, encoders: dict, config: EvaluateConfig) -> dict[str, dict]:
    """Per-subject image metrics with intervals; unavailable networks reported with their reason."""
    if len(gt) < 2:
        raise EvaluationError(f"image metrics need at least 2 reconstructions (two-way identification compares "
                              f"each with the others), got {len(gt)}")
    resize = {"antialias": config.antialias}
    values = {"pixcorr": normal_value(pixcorr(gt, recon, per_image=True, **resize)),
              "ssim": normal_value(ssim(gt, recon, per_image=True, **resize))}
    for name in IMAGE_METRICS[2:]:
        resolved = encoders[name]
        if isinstance(resolved, MetricUnavailable):
            values[name] = unavailable(resolved.reason)
            continue
        spec, encoder = resolved
        scores = score_with_network(gt, recon, spec, encoder, per_item=True, antialias=config.antialias,
                                    batch_size=config.batch_size, device=config.device, preresize=PROTOCOL_SIZE)
        values[name] = {**normal_value(scores), "network": spec.name}
    return values


def read_reconstructions(recons: Path, subject: str, manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    """One subject's stimulus ids and reconstructed images (uint8) from a `brainrecon reconstruct` folder."""
    entries = [e for e in manifest["images"] if e["subject"] == subject]
    images = []
    for entry in entries:
        path = recons / entry["file"]
        if not path.is_file():
            raise EvaluationError(f"{path} is listed in {recons / 'manifest.json'} but missing; "
                                  f"run `brainrecon reconstruct` again")
        data = path.read_bytes()
        if "sha256" in entry and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise EvaluationError(f"{path} is not the image `brainrecon reconstruct` wrote (its sha256 differs from "
                                  f"{recons / 'manifest.json'}); only unedited reconstructions are scored: run "
                                  f"`brainrecon reconstruct` again")
        images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise EvaluationError(f"reconstructions of {subject} in {recons} differ in size ({sorted(shapes)})")
    return np.asarray([e["stimulus_id"] for e in entries], dtype=np.int64), np.stack(images)


def check_manifest(manifest: dict, run: Path, store: Store, recons: Path, test_ids: dict[str, np.ndarray]) -> None:
    """Reconstructions are scored only against the run and store that made them, and only on test images."""
    made_by = Path(manifest.get("run", "")).resolve()
    if made_by != run.resolve():
        raise EvaluationError(f"the reconstructions in {recons} were made from run {made_by}, not {run.resolve()}; "
                              f"evaluate them with --run {made_by}")
    made_on = Path(manifest.get("store", "")).resolve()
    if made_on != store.root.resolve():
        raise EvaluationError(f"the reconstructions in {recons} were made on store {made_on}, but this evaluation "
                              f"reads {store.root.resolve()}; pass --data {made_on} (or reconstruct again)")
    pinned = manifest.get("store_manifest_sha256")
    if pinned is not None and pinned != store.manifest_sha256:
        raise EvaluationError(f"the reconstructions in {recons} were made on another version of {made_on} (its "
                              f"manifest sha256 has changed since); reconstruct again")
    model = run / "model.safetensors"
    pinned = manifest.get("run_model_sha256")
    if pinned is not None and model.is_file() and pinned != sha256_file(model):
        raise EvaluationError(f"the reconstructions in {recons} were made by other weights than {model} holds now "
                              f"(retrained or edited since); reconstruct again")
    for subject, ids in test_ids.items():
        scored = np.asarray([e["stimulus_id"] for e in manifest["images"] if e["subject"] == subject])
        outside = scored[~np.isin(scored, ids)]
        if outside.size:
            raise EvaluationError(f"{recons}: {outside.size} reconstruction(s) of {subject} are of stimuli that are "
                                  f"not test images (e.g. {outside[:5].tolist()}); only test images are scored")


def read_manifest(recons: str | Path) -> dict:
    import json

    path = Path(recons) / "manifest.json"
    if not path.is_file():
        raise EvaluationError(f"{path} not found: --recons must be a folder written by `brainrecon reconstruct`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"{path} is not valid JSON ({exc}); re-run `brainrecon reconstruct`") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("images"), list):
        # a store and a model set have a manifest.json too, without the list of reconstructed images
        raise EvaluationError(f"{recons} is not a folder written by `brainrecon reconstruct` (its manifest lists no "
                              f"images); pass the --out of `brainrecon reconstruct` as --recons")
    return manifest


# --------------------------------------------------------------------------- the whole run


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("brainrecon", "torch", "numpy", "transformers", "diffusers"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def selection_of(manifest: dict | None) -> dict:
    if manifest is None:
        return {"mode": "none", "label": "no reconstructions scored", "oracle": False}
    oracle = bool(manifest.get("oracle_selection", False))
    return {"mode": manifest.get("settings", {}).get("selection", "?"), "label": manifest.get("selection", "?"),
            "oracle": oracle}


def evaluate_run(run: str | Path, recons: str | Path | None = None, data: str | Path | None = None,
                 config: EvaluateConfig | None = None, out: str | Path | None = None, progress: bool = True) -> dict:
    """Evaluate a run (and optionally its reconstructions); write metrics.json (default RUN/metrics.json)."""
    config = config or EvaluateConfig()
    run = Path(run)
    if out is not None:
        check_output_file(out)
    context = RunContext.open(run, data, config.device)
    manifest = read_manifest(recons) if recons is not None else None
    subjects = list(context.model.subjects)
    if manifest is not None:
        scored = sorted({e["subject"] for e in manifest["images"]})
        unknown = [s for s in scored if s not in context.model.subjects]
        if unknown:
            raise EvaluationError(f"the reconstructions in {recons} are of subjects {unknown}, which run {run} "
                                  f"does not have; pass the run that made them")
        subjects = [s for s in subjects if s in scored]

    store = context.store
    predictions = {s: predict_test(context.model, store, s) for s in subjects}
    leakage = guard(run, context, {s: ids for s, (_, ids) in predictions.items()}, manifest, config)
    clip_path = config.clip or context.config.targets.clip
    simulated = store.source.get("kind") == "simulated"
    encoders = None
    if manifest is not None:
        check_manifest(manifest, run, store, Path(recons), {s: ids for s, (_, ids) in predictions.items()})
        if clip_path == SIMWORLD:
            note = "shipped small CLIP, not ViT-L/14"
        else:
            note = "" if config.clip else "the run's target CLIP; --clip DIR names the protocol's ViT-L/14"
        encoders = feature_encoders(config.weights, clip_path, config.device, note)

    key = context.model.retrieval_target
    per_subject = {}
    for subject in subjects:
        predicted, ids = predictions[subject]
        values = retrieval_values(predicted[key], context.targets.get(key, ids), config.way, config.draws,
                                  config.seed)
        entry = {"n_test": len(ids), "normalization": store.subject(subject).normalization, "values": values}
        if manifest is not None:
            stimulus_ids, recon = read_reconstructions(Path(recons), subject, manifest)
            values.update(image_values(store.images_for(stimulus_ids), recon, encoders, config))
            entry["n_reconstructed"] = len(stimulus_ids)
        per_subject[subject] = entry
    metrics = {
        "format": METRICS_FORMAT,
        "run": str(run.resolve()),
        "model": context.info.kind,
        "retrieval_target": key,
        "reconstructions": str(Path(recons).resolve()) if recons is not None else None,
        "reconstructions_manifest_sha256": sha256_file(Path(recons) / "manifest.json") if recons is not None else None,
        "data_source": store.source.get("kind", "?"),
        "store": str(store.root.resolve()),
        "note": SIMULATED_NOTE if simulated else "",
        "selection": selection_of(manifest),
        "protocol": {"way": config.way, "draws": config.draws, "seed": config.seed, "preresize": PROTOCOL_SIZE,
                     "antialias": config.antialias,
                     "clip": str(clip_path) if manifest is not None else None,
                     "weights": config.weights},
        "leakage": leakage.to_dict(),
        "subjects": per_subject,
        "average": average_over_subjects({s: e["values"] for s, e in per_subject.items()}),
        "versions": versions(),
    }
    atomic_write_json(Path(out) if out is not None else run / "metrics.json", metrics)
    return metrics


def guard(run: Path, context, test_ids: dict[str, np.ndarray], manifest: dict | None,
          config: EvaluateConfig) -> LeakageReport:
    """The leakage guard, fed with what the run trained on (its record, or rebuilt for older runs)."""
    normalizations = {s: context.store.subject(s).normalization for s in test_ids}
    return check_leakage(run, test_ids, training_stimuli(run), normalizations, manifest,
                         config.allow_test_normalization)


def final_evaluation(run: str | Path, device: str | None = None) -> dict:
    """Held-out retrieval of a freshly trained run, with the run's own `eval` settings, into
    RUN/metrics.json (what `brainrecon train` does when training ends).

    Stores normalised with test statistics (MindEye's released files) are scored, not refused,
    and labelled as not held out; `brainrecon evaluate` refuses them unless asked.
    """
    config = load_config(TrainConfig, Path(run) / "config.yaml", "train")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")  # where the trainer ran
    settings = EvaluateConfig(way=config.eval.way, draws=config.eval.draws, seed=config.eval.seed,
                              device=device, allow_test_normalization=True)
    return evaluate_run(run, config=settings, progress=False)


# --------------------------------------------------------------------------- the printed table


def format_cell(entry: dict | None, percent: bool, with_ci: bool = True) -> str:
    if entry is None:
        return ""
    if not is_available(entry):
        return "n/a"
    scale = 100.0 if percent else 1.0
    digits = 1 if percent else 3
    text = f"{scale * entry['value']:.{digits}f}"
    if with_ci and entry.get("ci95") is not None:
        text += f" ± {scale * entry['ci95']:.{digits}f}"
    return text


def metrics_table(metrics: dict, with_ci: bool = True) -> str:
    """A Markdown table: one row per subject and the average; n/a columns explained underneath."""
    rows = {**{s: e["values"] for s, e in metrics["subjects"].items()}, "average": metrics["average"]}
    names = [n for n in METRIC_COLUMNS if any(n in values for values in rows.values())]
    header = ["subject"] + [METRIC_COLUMNS[n][0] + ("" if METRIC_COLUMNS[n][1] else " ↓") for n in names]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * len(names) + "|"]
    for subject, values in rows.items():
        cells = [format_cell(values.get(n), METRIC_COLUMNS[n][2], with_ci) for n in names]
        lines.append(f"| {subject} | " + " | ".join(cells) + " |")
    notes = [f"- {METRIC_COLUMNS[n][0]}: not available ({metrics['average'][n]['reason']})"
             for n in names if not is_available(metrics["average"].get(n, {}))]
    retrieval = metrics["average"].get("image_retrieval")
    legend = ("Two-way identification (Alex, Incep, CLIP) and retrieval in %; ↓ lower is better; ± 95% CI "
              "(per subject over images or draws, average over subjects).")
    if retrieval:
        way = next(iter(metrics["subjects"].values()))["values"]["image_retrieval"]["way"]
        legend += f" Retrieval is {way}-way top-1 over {metrics['protocol']['draws']} draws (chance {100 / way:.2f}%)."
    text = "\n".join(lines) + "\n\n" + legend
    selection = metrics["selection"]
    text += f"\nSelection: {selection['label']}."
    if notes:
        text += "\n" + "\n".join(notes)
    if metrics.get("note"):
        text += f"\n**{metrics['note']}**"
    for warning in metrics["leakage"]["warnings"]:
        text += f"\n**Warning: {warning}**"
    return text


__all__ = ["METRICS_FORMAT", "METRIC_COLUMNS", "EvaluateConfig", "average_over_subjects", "evaluate_run",
           "final_evaluation",
           "feature_encoders", "image_values", "metrics_table", "normal_value", "predict_test", "retrieval_values"]
