"""From a trained run to images: memories, Ecphory, generation, honest selection, and the manifest.

    test betas -> model -> predicted embeddings --(Ecphory: top-k memories, alpha blend)--> k embeddings
      -> generator (one sample each) -> CLIP of each sample -> selection -> PNG + manifest

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
from pydantic import Field
from tqdm.auto import tqdm

from brainrecon.config import Device, StrictConfig
from brainrecon.data.simworld.config import SIMULATED_NOTE
from brainrecon.embed.clip import ClipImageEmbedder
from brainrecon.errors import ConfigError
from brainrecon.generate.base import GenerationRequest, quiet_model_loading
from brainrecon.generate.unclip import UnclipGenerator
from brainrecon.generate.versatile import VersatileGenerator
from brainrecon.io import (atomic_write_bytes, atomic_write_json, check_output_dir, exclusive_lock, partial_dir,
                           publish_dir, sha256_file)
from brainrecon.memory import EcphoryConfig, ImageBank, MemoryConfig, SubjectMemory, fuse
from brainrecon.memory.selection import (
    select_first,
    select_samples,
    select_samples_oracle,
)
from brainrecon.memory.subject_memory import MEMORY_NAMES
from brainrecon.models.base import BrainModel, predict_in_batches
from brainrecon.pretrained import SIMWORLD, resolve_model_dir
from brainrecon.train.run import RunContext

FULL_KEY_WIDTH = 2048  # keys up to this many numbers are searched in full, larger ones via PCA
SEED_STRIDE = 1_000_003  # seeds of different candidates of one image never collide with other images'


def sample_seed(seed: int, candidate: int, image: int) -> int:
    return seed + candidate * SEED_STRIDE + image


class ReconstructConfig(StrictConfig):
    generator: Literal["unclip", "versatile"] = "unclip"
    generator_path: str = SIMWORLD  # a local pipeline directory, or the shipped small unCLIP decoder
    ecphory: bool = True
    k: int = Field(10, ge=1)  # Ecphory: memories per image, one sample each; without Ecphory: samples per image
    alpha: float = Field(0.6, ge=0.0, le=1.0)  # Ecphory: weight of the brain prediction
    selection: Literal["brain", "first", "oracle"] = "brain"
    steps: int = Field(25, ge=1)
    guidance: float = Field(3.0, ge=0.0)
    mix_ratio: float = Field(0.0, ge=0.0, le=1.0)  # Versatile Diffusion: share of the text condition (0.5 as
    # MindBridge/Psychometry)
    seed: int = 0
    batch_size: int = Field(16, ge=1)
    n_images: int | None = Field(None, ge=1)  # the first n test images (all by default)
    device: Device = "cpu"


def predict_embeddings(model: BrainModel, betas: np.ndarray, subject: str, batch_size: int = 256,
             for_generation: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Predictions restricted to the embedding names a memory or generator can use."""
    out = predict_in_batches(model, betas, subject, batch_size, for_generation, seed)
    return {key: value for key, value in out.items() if key in MEMORY_NAMES}


def memory_dir(run: str | Path, subject: str) -> Path:
    return Path(run) / "memory" / subject


def build_memory(context: RunContext, run: str | Path, subject: str, config: MemoryConfig | None = None,
                 progress: bool = True) -> SubjectMemory:
    """Keys: the model's predictions for the subject's training trials; values: their true embeddings."""
    rows = context.training_rows(subject)
    data = context.store.subject(subject)
    train_ids = data.trials.stimulus_id[rows]  # exactly the trials the run trained on
    keys = predict_embeddings(context.model, data.read_trials(rows), subject)
    names = [n for n in keys if n in context.targets.space]
    values = {n: context.targets.get(n, train_ids) for n in names}
    if config is None:
        # small keys are searched exactly as they are; large token keys through PCA (memory/subject_memory.py)
        width = int(np.prod(context.targets.space[context.model.retrieval_target]))
        config = MemoryConfig(search="full" if width <= FULL_KEY_WIDTH else "pca",
                              search_on=(context.model.retrieval_target,))
    memory = SubjectMemory.build(subject, {n: keys[n] for n in names}, values, train_ids, config,
                                 progress=progress)
    memory.save(memory_dir(run, subject))
    return memory


def open_memory(context: RunContext, run: str | Path, subject: str, progress: bool = True) -> SubjectMemory:
    folder = memory_dir(run, subject)
    if (folder / "memory.json").is_file():
        return SubjectMemory.load(folder)
    return build_memory(context, run, subject, progress=progress)


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


def _generator(config: ReconstructConfig):
    path = resolve_model_dir(config.generator_path, "generator_path", "decoder")
    if config.generator == "unclip":
        return UnclipGenerator(path, device=config.device, batch_size=config.batch_size)
    return VersatileGenerator(path, device=config.device, batch_size=config.batch_size)


def _requests(embeddings: dict[str, np.ndarray], config: ReconstructConfig, pooled_norm: float, seed: int):
    """A GenerationRequest for a flat batch of embeddings, in the form the chosen generator reads."""
    common = {"steps": config.steps, "guidance_scale": config.guidance, "seed": seed}
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
    quiet_model_loading()
    started = time.perf_counter()
    context = RunContext.open(run, data, config.device)
    generator = _generator(config)
    clip = ClipImageEmbedder(resolve_model_dir(context.config.targets.clip, "clip", "clip"), config.device,
                             batch_size=64)
    key = context.model.retrieval_target
    entries, summary = [], {}
    for subject in context.subjects(subjects):
        test = context.store.subject(subject).test()
        n = min(config.n_images or len(test), len(test))
        ids, betas = test.stimulus_ids[:n], test.betas[:n]
        brain = predict_embeddings(context.model, betas, subject)  # the honest reference for selection
        conditioning = brain  # models with a prior condition the generator on its sample instead
        if type(context.model).embeddings_for_generation is not BrainModel.embeddings_for_generation:
            conditioning = predict_embeddings(context.model, betas, subject, for_generation=True, seed=config.seed)
        retrieved = None
        if config.ecphory:
            memory = open_memory(context, run, subject, progress)
            result = fuse(conditioning, memory, EcphoryConfig(k=config.k, alpha=config.alpha))
            candidates, retrieved = result.embeddings, result.stimulus_ids
        else:
            candidates = {name: np.repeat(x[:, None], config.k, axis=1) for name, x in conditioning.items()}
        data = context.store.subject(subject)
        train_ids = data.trials.stimulus_id[data.train_rows()]
        pooled_norm = float(np.linalg.norm(clip.pooled(context.store.images_for(np.unique(train_ids)[:512])),
                                           axis=1).mean())
        images = None
        bar = tqdm(total=n * config.k, desc=f"reconstruct {subject}", unit="img", disable=not progress)
        for j in range(config.k):
            flat = {name: x[:, j] for name, x in candidates.items()}
            # sample (image i, candidate j) has its own seed, whatever the batch
            for start in range(0, n, config.batch_size):
                part = {name: x[start:start + config.batch_size] for name, x in flat.items()}
                # the generator seeds sample i of a request with seed + i: image i, candidate j gets
                # seed + j * SEED_STRIDE + i, whatever the batching
                batch = generator.generate(_requests(part, config, pooled_norm, sample_seed(config.seed, j, start)))
                if images is None:
                    images = np.empty((n, config.k, *batch.shape[1:]), np.uint8)
                images[start:start + len(batch), j] = batch
                bar.update(len(batch))
        bar.close()
        sample_embeddings = _embed_samples(clip, images, key)
        if config.selection == "oracle":
            selection = select_samples_oracle(sample_embeddings, context.targets.get(key, ids))
        elif config.selection == "first" or config.k == 1:
            selection = select_first(n, config.k)
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
                "oracle_selection": config.selection == "oracle", "subjects": summary, "images": entries,
                "seconds": round(time.perf_counter() - started, 1),
                "note": SIMULATED_NOTE if context.store.source.get("kind") == "simulated" else ""}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


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


__all__ = ["ReconstructConfig", "build_memory", "open_memory", "predict_embeddings", "reconstruct", "search_bank"]
