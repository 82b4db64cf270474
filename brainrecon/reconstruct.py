"""From a trained run to images: memories, Ecphory, generation, honest selection, and the manifest.

    test betas -> model -> predicted embeddings --(Ecphory: top-k memories, blend)--> conditioning
      -> generator (`samples` per image; img2img from the low-level image with `lowlevel`)
      -> CLIP of each sample -> selection -> PNG + manifest

Ecphory's setting and the low-level strength are the run's own, chosen on its held-out
training stimuli (evaluate/choice.py writes RUN/ecphory.json and RUN/lowlevel.json; this
module only reads them), unless the config gives them; the manifest says which.
Selection is honest by default: among a test image's samples, the one whose CLIP
embedding is closest to the *brain-predicted* embedding is kept (MindEye1's
second-order selection). Oracle selection against the true image, as
Psychometry and MindBridge report, exists only behind `selection="oracle"` and
every output says which selection was used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field, field_validator, model_validator
from tqdm.auto import tqdm

from brainrecon.config import Device, StrictConfig
from brainrecon.data.simworld.config import SIMULATED_NOTE
from brainrecon.embed.clip import ClipImageEmbedder
from brainrecon.errors import ConfigError
from brainrecon.generate.base import GenerationRequest, quiet_model_loading
from brainrecon.generate.unclip import UnclipGenerator
from brainrecon.generate.vae import VaePath
from brainrecon.generate.versatile import VersatileGenerator
from brainrecon.io import (atomic_write_bytes, atomic_write_json, check_output_dir, exclusive_lock, partial_dir,
                           publish_dir, sha256_file)
from brainrecon.memory import EcphoryConfig, ImageBank, MemoryConfig, SubjectMemory, fuse
from brainrecon.memory.selection import (
    select_first,
    select_samples,
    select_samples_oracle,
)
from brainrecon.memory.choice import CHOICE_FORMAT, EcphoryGrid, EcphorySetting, KeyKind
from brainrecon.memory.errors import MemoryStoreError
from brainrecon.memory.subject_memory import BRAIN_KEY, MEMORY_NAMES
from brainrecon.models.base import BrainModel, predict_in_batches
from brainrecon.pretrained import SIMWORLD, resolve_model_dir
from brainrecon.train.run import RunContext


FULL_KEY_WIDTH = 2048  # keys up to this many numbers are searched in full, larger ones via PCA
SEED_STRIDE = 1_000_003  # seeds of different candidates of one image never collide with other images'
MEAN_FIT_TRIALS = 512  # training trials whose conditioning embeddings (prior samples, for MindEye) give the mean


def sample_seed(seed: int, candidate: int, image: int) -> int:
    return seed + candidate * SEED_STRIDE + image


class LowLevelGrid(StrictConfig):
    """img2img strengths tried on held-out training stimuli (1 = no low-level image) and the rule to choose."""

    strengths: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
    # the chosen strength is the one with the best PixCorr + SSIM among those whose CLIP two-way identification
    # stays within this many points of generation without the low-level image: low-level fidelity, kept
    # only while the images stay as recognisable
    clip_tolerance: float = Field(0.02, ge=0.0, le=1.0)
    max_stimuli: int = Field(40, ge=2)

    @field_validator("strengths")
    @classmethod
    def _in_range(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if not values or min(values) <= 0 or max(values) >= 1:
            raise ValueError(f"strengths must list values in (0, 1) (1, no low-level image, is the baseline); "
                             f"got {list(values)}")
        return values


class ReconstructConfig(StrictConfig):
    generator: Literal["unclip", "versatile"] = "unclip"
    generator_path: str = SIMWORLD  # a local pipeline directory, or the shipped small unCLIP decoder
    samples: int = Field(4, ge=1)  # generated per test image, one kept by `selection` (with or without Ecphory)
    # Ecphory: on by default with the run's own choice of keys, k and alpha, made on held-out training
    # stimuli (RUN/ecphory.json, made on first use); that choice may be "off". Any of keys, k and alpha
    # given here overrides the choice (and turns Ecphory on).
    ecphory: bool = True
    keys: KeyKind | None = None  # memory keys: the model's predictions, or the training fMRI itself
    k: int | None = Field(None, ge=1)  # memories per image
    alpha: float | None = Field(None, ge=0.0, le=1.0)  # weight of the brain prediction (1: no memory)
    fusion: Literal["common", "raw"] = "common"  # raw: Psychometry's blend (then neighbours: each)
    neighbours: Literal["weighted", "each"] = "weighted"
    ecphory_grid: EcphoryGrid = EcphoryGrid()  # what the run's choice tries (memory/choice.py)
    # MindEye's low-level path: start every sample from the image decoded from the predicted VAE latents
    # (img2img), denoising only the last `lowlevel_strength` of the schedule; None: the strength the run
    # chose on its held-out training stimuli (RUN/lowlevel.json). Needs a run trained with lowlevel targets.
    lowlevel: bool = False
    lowlevel_strength: float | None = Field(None, gt=0.0, le=1.0)
    lowlevel_grid: LowLevelGrid = LowLevelGrid()
    selection: Literal["brain", "first", "oracle"] = "brain"
    steps: int = Field(25, ge=1)
    guidance: float = Field(3.0, ge=0.0)
    mix_ratio: float = Field(0.0, ge=0.0, le=1.0)  # Versatile Diffusion: share of the text condition (0.5 as
    # MindBridge/Psychometry)
    seed: int = 0
    batch_size: int = Field(16, ge=1)
    n_images: int | None = Field(None, ge=1)  # the first n test images (all by default)
    device: Device = "cpu"

    @model_validator(mode="after")
    def _raw_is_per_neighbour(self) -> ReconstructConfig:
        if self.fusion == "raw" and self.neighbours != "each":
            raise ValueError("fusion: raw is Psychometry's blend, one sample per neighbour; set neighbours: each")
        return self

    @property
    def ecphory_given(self) -> bool:
        return any(value is not None for value in (self.keys, self.k, self.alpha))


# -- predictions and memories --------------------------------------------------------------------------------


def predict_embeddings(model: BrainModel, betas: np.ndarray, subject: str, batch_size: int = 256,
             for_generation: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Predictions restricted to the embedding names a memory or generator can use."""
    out = predict_in_batches(model, betas, subject, batch_size, for_generation, seed)
    return {key: value for key, value in out.items() if key in MEMORY_NAMES}


def conditioning_embeddings(model: BrainModel, betas: np.ndarray, subject: str, seed: int = 0) -> dict[str, np.ndarray]:
    """What the generator is conditioned on: the prediction, or for models with a prior its sample."""
    has_prior = type(model).embeddings_for_generation is not BrainModel.embeddings_for_generation
    return predict_embeddings(model, betas, subject, for_generation=has_prior, seed=seed)


def memory_dir(run: str | Path, subject: str, keys: KeyKind = "prediction") -> Path:
    return Path(run) / "memory" / keys / subject


def build_memory(context: RunContext, run: str | Path, subject: str, config: MemoryConfig | None = None,
                 progress: bool = True, keys: KeyKind = "prediction") -> SubjectMemory:
    """A memory of the subject's trained stimuli: values are their true embeddings; keys are the model's
    predictions for the trials ("prediction", Psychometry's) or the trials' fMRI ("brain").

    Only the rows the run trained on: a validation slice stays out, so Ecphory can be tuned on it.
    The mean the fusion centres conditioning embeddings with is taken over a seeded subsample of
    the trials: for models with a diffusion prior each conditioning embedding is a prior sample,
    too slow to draw for every trial, and a mean needs few."""
    rows = context.training_rows(subject)
    data = context.store.subject(subject)
    train_ids = data.trials.stimulus_id[rows]  # exactly the trials the run trained on
    betas = data.read_trials(rows)
    predictions = predict_embeddings(context.model, betas, subject)
    names = [n for n in predictions if n in context.targets.space]
    sample = np.sort(np.random.default_rng(0).permutation(len(rows))[:MEAN_FIT_TRIALS])
    conditioning = conditioning_embeddings(context.model, betas[sample], subject)
    values = {n: context.targets.get(n, train_ids) for n in names}
    key_arrays = {BRAIN_KEY: betas} if keys == "brain" else {n: predictions[n] for n in names}
    if config is None:
        # small keys are searched exactly as they are; large ones (tokens, many voxels) through PCA
        name = BRAIN_KEY if keys == "brain" else context.model.retrieval_target
        width = int(np.prod(key_arrays[name].shape[1:]))
        config = MemoryConfig(search="full" if width <= FULL_KEY_WIDTH else "pca", search_on=(name,))
    memory = SubjectMemory.build(subject, key_arrays, values, train_ids, config,
                                 prediction_means={n: conditioning[n].mean(axis=0) for n in names},
                                 progress=progress)
    memory.save(memory_dir(run, subject, keys))
    return memory


def open_memory(context: RunContext, run: str | Path, subject: str, progress: bool = True,
                keys: KeyKind = "prediction") -> SubjectMemory:
    """The run's saved memory, or a new one (also when the saved one predates this memory format)."""
    folder = memory_dir(run, subject, keys)
    if (folder / "memory.json").is_file():
        try:
            return SubjectMemory.load(folder)
        except MemoryStoreError:
            pass  # a memory is derived data: an old or broken one is rebuilt
    return build_memory(context, run, subject, progress=progress, keys=keys)


def memory_query(keys: KeyKind, prediction: dict[str, np.ndarray], betas: np.ndarray) -> dict[str, np.ndarray]:
    """What a memory with these keys is searched with: the model's (deterministic) prediction, or the fMRI."""
    return {BRAIN_KEY: betas} if keys == "brain" else prediction


# -- settings chosen on held-out training stimuli (made by evaluate/choice.py, read here) --------------------


ECPHORY_CHOICE = "ecphory.json"
LOWLEVEL_CHOICE = "lowlevel.json"
LOWLEVEL_FORMAT = "brainrecon.lowlevel_choice"
GENERATION_SETTINGS = ("generator", "generator_path", "steps", "guidance", "mix_ratio", "seed")
NOT_CHOSEN = ("has not been chosen for this run's weights and these generation settings; `brainrecon reconstruct` "
              "chooses it on the run's held-out training stimuli (brainrecon.evaluate.choice.make_choices does the "
              "same from Python)")


def read_choice(run: str | Path, name: str, kind: str, settings: dict) -> dict | None:
    """A choice record (RUN/ecphory.json, RUN/lowlevel.json) if it was made for these weights and settings."""
    try:
        record = json.loads((Path(run) / name).read_text())
    except (OSError, ValueError):
        return None
    if (record.get("format") != kind or record.get("settings") != settings
            or record.get("model_sha256") != sha256_file(Path(run) / "model.safetensors")):
        return None
    return record


def ecphory_choice_settings(config: ReconstructConfig) -> dict:
    """What an Ecphory choice depends on besides the weights: the grid, generation and fusion settings."""
    return {"grid": config.ecphory_grid.model_dump(mode="json"),
            **{name: getattr(config, name) for name in (*GENERATION_SETTINGS, "fusion", "neighbours")}}


def lowlevel_choice_settings(config: ReconstructConfig) -> dict:
    return {"grid": config.lowlevel_grid.model_dump(mode="json"),
            **{name: getattr(config, name) for name in GENERATION_SETTINGS}}


def resolve_ecphory(run: str | Path, config: ReconstructConfig) -> tuple[EcphorySetting, str]:
    """The Ecphory setting a reconstruction uses, and where it came from (recorded in the manifest)."""
    if not config.ecphory:
        return EcphorySetting(enabled=False), "off (ecphory: false)"
    if config.ecphory_given:  # defaults for what was not given: memory keys as Psychometry, its k and alpha
        return EcphorySetting(enabled=True, keys=config.keys or "prediction", k=config.k or 10,
                              alpha=0.6 if config.alpha is None else config.alpha), "given"
    record = read_choice(run, ECPHORY_CHOICE, CHOICE_FORMAT, ecphory_choice_settings(config))
    if record is None:
        raise ConfigError(f"Ecphory's setting {NOT_CHOSEN}; or give --keys/--k/--alpha, or --no-ecphory")
    return EcphorySetting.model_validate(record["choice"]), f"chosen on held-out training stimuli: {record['reason']}"


def resolve_lowlevel(run: str | Path, config: ReconstructConfig) -> tuple[float, str]:
    """The img2img strength of the low-level path and where it came from (1.0: not used)."""
    if not config.lowlevel:
        return 1.0, "off (lowlevel: false)"
    if config.lowlevel_strength is not None:
        return config.lowlevel_strength, "given"
    record = read_choice(run, LOWLEVEL_CHOICE, LOWLEVEL_FORMAT, lowlevel_choice_settings(config))
    if record is None:
        raise ConfigError(f"the low-level strength {NOT_CHOSEN}; or give --lowlevel-strength")
    return record["strength"], f"chosen on held-out training stimuli: {record['reason']}"


# -- generation ----------------------------------------------------------------------------------------------


def lowlevel_decoder(context: RunContext, device: str = "cpu") -> VaePath:
    """The VAE the run's low-level targets were encoded with (targets.vae), to decode predicted latents."""
    if context.config.targets.vae is None:
        raise ConfigError("the run's targets name no VAE (targets.vae), so it has no low-level image to start "
                          "from; train with model.lowlevel: true, targets.lowlevel: true and targets.vae, or "
                          "reconstruct without --lowlevel")
    return VaePath(resolve_model_dir(context.config.targets.vae, "vae", "decoder"), device)


def lowlevel_images(context: RunContext, vae: VaePath, betas: np.ndarray, subject: str) -> np.ndarray:
    """The blurry images decoded from the model's predicted VAE latents (MindEye's low-level reconstruction)."""
    predicted = predict_in_batches(context.model, betas, subject)
    if "lowlevel" not in predicted:
        raise ConfigError(f"the run's {context.model.kind} model predicts no low-level image (it has no `lowlevel` "
                          f"head); train with model.lowlevel: true and targets.lowlevel: true (targets.vae: a VAE "
                          f"directory, or simworld), or reconstruct without --lowlevel")
    return vae.decode(predicted["lowlevel"])


def _generator(config: ReconstructConfig):
    path = resolve_model_dir(config.generator_path, "generator_path", "decoder")
    if config.generator == "unclip":
        return UnclipGenerator(path, device=config.device, batch_size=config.batch_size)
    return VersatileGenerator(path, device=config.device, batch_size=config.batch_size)


def recon_models(context: RunContext, config: ReconstructConfig) -> tuple:
    """The generator and the run's CLIP image embedder (to embed and select samples)."""
    quiet_model_loading()
    clip = ClipImageEmbedder(resolve_model_dir(context.config.targets.clip, "clip", "clip"), config.device,
                             batch_size=64)
    return _generator(config), clip


def _requests(embeddings: dict[str, np.ndarray], config: ReconstructConfig, pooled_norm: float, seed: int,
              init_images: np.ndarray | None = None, strength: float = 1.0):
    """A GenerationRequest for a flat batch of embeddings, in the form the chosen generator reads (img2img from
    ``init_images`` at ``strength`` when given)."""
    common = {"steps": config.steps, "guidance_scale": config.guidance, "seed": seed, "init_images": init_images,
              "strength": strength if init_images is not None else 1.0}
    tokens = {"text_tokens": embeddings.get("text_tokens")}  # scaled by the pooled text norm: left as predicted
    if "image_tokens" in embeddings:
        tokens["image_tokens"] = unit_first_token(embeddings["image_tokens"])
    if config.generator == "unclip":
        if "image_pooled" in embeddings:
            pooled = embeddings["image_pooled"]
        elif "image_tokens" in tokens:
            # token 0 of VD-normalised tokens is image_embeds / |image_embeds|: rescale it to the typical
            # norm of training images' image_embeds (a statistic of the stimuli, not of brain data)
            pooled = tokens["image_tokens"][:, 0] * pooled_norm
        else:
            raise ConfigError("the unCLIP generator needs image_pooled or image_tokens predictions")
        return GenerationRequest(image_pooled=pooled.astype(np.float32), **common)
    return GenerationRequest(image_tokens=tokens.get("image_tokens"), text_tokens=tokens.get("text_tokens"),
                             mix_ratio=config.mix_ratio if tokens["text_tokens"] is not None else 0.0, **common)


def unit_first_token(tokens: np.ndarray) -> np.ndarray:
    """Predicted image tokens rescaled so that token 0 has unit norm, as every target image token set has.

    Models trained with cosine or contrastive losses predict the right direction at an arbitrary
    scale (MindBridge's token 0 came out ~45x too long on the simulated world), and a generator
    conditioned on that scale saturates. The targets' scale is fixed by construction (image tokens
    are divided by token 0's norm), so this uses no statistic of brain or test data.
    """
    norm = np.linalg.norm(tokens[:, :1], axis=-1, keepdims=True)
    return (tokens / np.maximum(norm, 1e-8)).astype(np.float32)


def typical_pooled_norm(context: RunContext, clip: ClipImageEmbedder, subject: str) -> float:
    """The mean norm of CLIP image_embeds over (up to 512 of) the subject's training images."""
    data = context.store.subject(subject)
    train_ids = np.unique(data.trials.stimulus_id[data.train_rows()])[:512]
    return float(np.linalg.norm(clip.pooled(context.store.images_for(train_ids)), axis=1).mean())


def generate_samples(generator, candidates: dict[str, np.ndarray], config: ReconstructConfig, pooled_norm: float,
                     samples: int, bar=None, init_images: np.ndarray | None = None,
                     strength: float = 1.0) -> np.ndarray:
    """(n, samples, H, W, 3) uint8 images from candidates: name -> (n, m, *shape) embeddings.

    Sample j of image i starts from candidate j mod m (m = 1 but for Ecphory's neighbours: each)
    with seed + j * SEED_STRIDE + i, whatever the batching, so runs that differ only in their
    embeddings draw the same noise. With ``init_images`` (n, H, W, 3) every sample is img2img
    from image i's init image at ``strength``.
    """
    n = len(next(iter(candidates.values())))
    images = None
    for j in range(samples):
        flat = {name: x[:, j % x.shape[1]] for name, x in candidates.items()}
        for start in range(0, n, config.batch_size):
            part = {name: x[start:start + config.batch_size] for name, x in flat.items()}
            init = None if init_images is None else init_images[start:start + config.batch_size]
            # the generator seeds sample i of a request with seed + i
            batch = generator.generate(_requests(part, config, pooled_norm, sample_seed(config.seed, j, start), init,
                                                 strength))
            if images is None:
                images = np.empty((n, samples, *batch.shape[1:]), np.uint8)
            images[start:start + len(batch), j] = batch
            if bar is not None:
                bar.update(len(batch))
    return images


def _embed_samples(clip, images: np.ndarray, key: str) -> np.ndarray:
    n, k = images.shape[:2]
    tokens, pooled = clip.embed(images.reshape(n * k, *images.shape[2:]))
    chosen = pooled if key == "image_pooled" else tokens
    return chosen.reshape(n, k, *chosen.shape[1:])


def _png(image: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


# -- reconstruction ------------------------------------------------------------------------------------------


def is_reconstructions(path: Path) -> bool:
    """Whether a folder holds the output of `brainrecon reconstruct` (its manifest lists images)."""
    try:
        return "images" in json.loads((Path(path) / "manifest.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def reconstruct(run: str | Path, out: str | Path, config: ReconstructConfig, subjects: list[str] | None = None,
                data: str | Path | None = None, progress: bool = True, overwrite: bool = False) -> dict:
    """Reconstruct each subject's test images; writes OUT/<subject>/<stimulus>.png and OUT/manifest.json.

    OUT is assembled in OUT.partial and renamed into place at the end, under a lock, so a killed or
    concurrent run never leaves PNGs without their manifest, or stale PNGs of an earlier run beside it.
    A folder that is not a reconstruction is refused, even with ``overwrite``.
    """
    out = Path(out)
    check_output_dir(out, "brainrecon reconstructions", is_reconstructions, overwrite)
    with exclusive_lock(out):
        check_output_dir(out, "brainrecon reconstructions", is_reconstructions, overwrite)
        assembled = partial_dir(out)
        shutil.rmtree(assembled, ignore_errors=True)  # left by a killed run: its samples are redone
        assembled.mkdir(parents=True)
        try:
            manifest = _reconstruct(run, assembled, config, subjects, data, progress)
        except BaseException:
            shutil.rmtree(assembled, ignore_errors=True)
            raise
        publish_dir(assembled, out)
    return manifest


def _reconstruct(run: str | Path, out: Path, config: ReconstructConfig, subjects: list[str] | None,
                 data: str | Path | None, progress: bool) -> dict:
    started = time.perf_counter()
    context = RunContext.open(run, data, config.device)
    generator, clip = recon_models(context, config)
    key = context.model.retrieval_target
    setting, source = resolve_ecphory(run, config)
    strength, lowlevel_source = resolve_lowlevel(run, config)
    vae = lowlevel_decoder(context, config.device) if strength < 1.0 else None
    entries, summary = [], {}
    for subject in context.subjects(subjects):
        test = context.store.subject(subject).test()
        n = min(config.n_images or len(test), len(test))
        ids, betas = test.stimulus_ids[:n], test.betas[:n]
        brain = predict_embeddings(context.model, betas, subject)  # the honest reference for selection
        # models with a prior condition the generator on its sample instead of the prediction
        conditioning = conditioning_embeddings(context.model, betas, subject, seed=config.seed)
        retrieved = None
        if setting.enabled and setting.alpha < 1.0:
            memory = open_memory(context, run, subject, progress, setting.keys)
            fusion = EcphoryConfig(k=min(setting.k, len(memory)), alpha=setting.alpha, fusion=config.fusion,
                                   neighbours=config.neighbours)
            result = fuse(conditioning, memory, fusion, memory_query(setting.keys, brain, betas))
            candidates, retrieved = result.embeddings, result.stimulus_ids
        else:
            candidates = {name: x[:, None] for name, x in conditioning.items()}
        pooled_norm = typical_pooled_norm(context, clip, subject)
        init = lowlevel_images(context, vae, betas, subject) if strength < 1.0 else None
        with tqdm(total=n * config.samples, desc=f"reconstruct {subject}", unit="img", disable=not progress) as bar:
            images = generate_samples(generator, candidates, config, pooled_norm, config.samples, bar, init, strength)
        sample_embeddings = _embed_samples(clip, images, key)
        if config.selection == "oracle":
            selection = select_samples_oracle(sample_embeddings, context.targets.get(key, ids))
        elif config.selection == "first" or config.samples == 1:
            selection = select_first(n, config.samples)
        else:
            selection = select_samples(sample_embeddings, brain[key])
        chosen = selection.pick(images)
        folder = out / subject
        folder.mkdir(parents=True, exist_ok=True)
        for i, stimulus in enumerate(ids.tolist()):
            png = _png(chosen[i])
            atomic_write_bytes(folder / f"{stimulus}.png", png)
            entries.append({
                "subject": subject, "stimulus_id": int(stimulus), "file": f"{subject}/{stimulus}.png",
                "sha256": hashlib.sha256(png).hexdigest(),
                "seed": sample_seed(config.seed, int(selection.indices[i]), i),
                "sample_index": int(selection.indices[i]),
                "selection": selection.label,
                "retrieved_stimuli": retrieved[i].tolist() if retrieved is not None else None})
        summary[subject] = {"n_images": n, "selection": selection.label, "oracle": selection.is_oracle}
    manifest = {"run": str(Path(run).resolve()), "store": str(context.store.root), "kind": context.info.kind,
                "run_model_sha256": sha256_file(Path(run) / "model.safetensors"),
                "store_manifest_sha256": context.store.manifest_sha256,
                "settings": config.model_dump(mode="json"), "selection": selection.label,
                "ecphory": {**setting.model_dump(mode="json"), "fusion": config.fusion,
                            "neighbours": config.neighbours, "source": source},
                "lowlevel": {"enabled": strength < 1.0, "strength": strength, "source": lowlevel_source},
                "oracle_selection": config.selection == "oracle", "subjects": summary, "images": entries,
                "seconds": round(time.perf_counter() - started, 1),
                "note": SIMULATED_NOTE if context.store.source.get("kind") == "simulated" else ""}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


# -- image banks ---------------------------------------------------------------------------------------------


def pooled_query(context: RunContext, subject: str) -> tuple[np.ndarray, np.ndarray]:
    """Each test image's predicted CLIP image direction: image_pooled, or token 0 of image_tokens."""
    test = context.store.subject(subject).test()
    predicted = predict_embeddings(context.model, test.betas, subject)
    if "image_pooled" in predicted:
        return test.stimulus_ids, predicted["image_pooled"]
    if "image_tokens" in predicted:
        return test.stimulus_ids, predicted["image_tokens"][:, 0]
    raise ConfigError("bank search needs a run predicting image_pooled or image_tokens")


def search_bank(bank: str | Path, context: RunContext, subjects: list[str] | None, k: int) -> dict:
    """The ``k`` bank images nearest to each test trial's predicted CLIP image direction, per subject."""
    index = ImageBank.load(bank)
    results = {}
    for subject in context.subjects(subjects):
        ids, queries = pooled_query(context, subject)
        scores, paths = index.search(queries, k)
        results[subject] = [{"stimulus_id": int(s), "paths": p, "scores": sc.tolist()}
                            for s, p, sc in zip(ids.tolist(), paths, scores)]
    return {"bank": str(bank), "run": str(context.path), "k": k, "results": results}


__all__ = ["ReconstructConfig", "build_memory", "open_memory", "predict_embeddings", "reconstruct", "search_bank"]
