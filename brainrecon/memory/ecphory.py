"""Ecphory: blend a brain prediction with the true embeddings of the training stimuli it recalls.

Psychometry's retrieval-enhanced inference (Psychometry, Quan et al., CVPR 2024): search
the subject's memory with the prediction, take the top-k entries, and make k
conditioning embeddings

    fused_j = (1 - alpha) * value[top_j] + alpha * prediction,   j = 1..k

each of which drives one diffusion sample. alpha = 1 is the plain prediction
(no memory); alpha = 0 is pure retrieval of training images.

A convex blend of two embeddings is shorter than either when they disagree,
and the generators are sensitive to scale, so with `renormalize` each fused
embedding is brought back to the convention the generator expects:

- image_tokens: re-divided by the fused CLS token's norm (token 0), the
  Versatile-Diffusion convention of `base.py` (Psychometry does the same);
- text_tokens: one scalar per embedding, so that the fused (77, D) matrix has
  the Frobenius norm of the prediction. Their convention is "divided by the
  pooled text embedding's norm", and the pooled embedding sits at the
  end-of-text token whose position varies per caption, so it cannot be read
  off the fused tokens; a single rescale keeps the relative token norms of the
  blend (as the convention's single divisor does) and the prediction's scale;
- image_pooled / text_pooled: rescaled to the prediction's norm (the pooled
  embeddings are unnormalised and their scale is what the model predicted).

Names the prediction has but the memory does not (e.g. `lowlevel`) are passed
through, repeated k times, so every output has the same (B, k, ...) layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field

from brainrecon.config import StrictConfig
from brainrecon.memory._arrays import is_torch, to_numpy
from brainrecon.memory.errors import MemoryStoreError
from brainrecon.memory.subject_memory import SubjectMemory


class EcphoryConfig(StrictConfig):
    """Retrieval-enhanced inference settings; defaults from Psychometry's inference_moe.sh."""

    k: int = Field(10, ge=1)  # recons_per_sample: one diffusion sample per retrieved entry
    alpha: float = Field(0.6, ge=0.0, le=1.0)  # weight of the brain prediction
    renormalize: bool = True


@dataclass(frozen=True)
class EcphoryResult:
    """The k fused embeddings per query and what was retrieved to make them."""

    embeddings: dict  # name -> (B, k, *shape), same array type, dtype and device as the prediction
    stimulus_ids: np.ndarray  # (B, k) int64: the retrieved training stimuli, best first
    scores: np.ndarray  # (B, k) float32: cosine similarity of query and key in search space
    indices: np.ndarray  # (B, k) int64: memory entry numbers
    fused_names: tuple[str, ...]  # names blended with memory values (others are the prediction repeated)
    alpha: float


def _repeat_k(x, k: int):
    """x (B, *shape) -> (B, k, *shape) copies, bit-identical, same type/dtype/device."""
    if is_torch(x):
        return x.unsqueeze(1).expand(x.shape[0], k, *x.shape[1:]).clone()
    x = np.asarray(x)
    return np.repeat(x[:, None], k, axis=1)


def _like(array: np.ndarray, reference):
    """float32 numpy result converted back to the reference's type, dtype and device."""
    if is_torch(reference):
        import torch

        return torch.from_numpy(array).to(device=reference.device, dtype=reference.dtype)
    return array.astype(np.asarray(reference).dtype, copy=False)


def _safe_divide(x: np.ndarray, norm: np.ndarray) -> np.ndarray:
    return x / np.where(norm > 0, norm, 1)


def renormalize(name: str, fused: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Bring fused (B, k, *shape) back to the generator's convention (see the module docstring)."""
    if name == "image_tokens":
        return _safe_divide(fused, np.linalg.norm(fused[:, :, :1, :], axis=-1, keepdims=True))
    batch, k = fused.shape[:2]
    flat = fused.reshape(batch, k, -1)
    target = np.linalg.norm(prediction.reshape(batch, 1, -1), axis=-1, keepdims=True)
    scaled = _safe_divide(flat, np.linalg.norm(flat, axis=-1, keepdims=True)) * target
    return scaled.reshape(fused.shape)


def fuse(prediction: dict, memory: SubjectMemory, config: EcphoryConfig | None = None) -> EcphoryResult:
    """Retrieve the top-k memory entries for each prediction and blend their values into it.

    prediction: name -> (B, *shape) torch tensors or numpy arrays, a model's
    predictions for B test trials of the memory's subject (it must include the
    names the memory searches on). Returns an `EcphoryResult` whose embeddings
    have shape (B, k, *shape). With alpha = 1 the embeddings are the prediction
    itself, bit for bit, repeated k times (retrieval still runs, so the ids and
    scores are reported).
    """
    config = config or EcphoryConfig()
    if not isinstance(prediction, dict) or not prediction:
        raise MemoryStoreError("prediction must be a non-empty dict of target name -> (batch, *shape) array")
    batches = {name: int(x.shape[0]) for name, x in prediction.items()}
    if len(set(batches.values())) != 1:
        raise MemoryStoreError(f"prediction arrays disagree on the batch size: {batches}")
    scores, indices = memory.search(prediction, config.k)
    fused_names = tuple(name for name in prediction if name in memory.value_names)
    embeddings = {}
    for name, x in prediction.items():
        if name in fused_names and tuple(x.shape[1:]) != memory.value_shape(name):
            raise MemoryStoreError(f"prediction[{name!r}] items have shape {tuple(x.shape[1:])}, but the memory "
                                   f"of subject {memory.subject!r} stores {memory.value_shape(name)}")
        if name not in fused_names or config.alpha == 1.0:
            embeddings[name] = _repeat_k(x, config.k)  # exact, not (1 - 1) * value + 1 * x
            continue
        predicted = to_numpy(x, np.float32)
        values = memory.values_at(name, indices).astype(np.float32)
        fused = (1.0 - config.alpha) * values + config.alpha * predicted[:, None]
        if config.renormalize:
            fused = renormalize(name, fused, predicted)
        embeddings[name] = _like(np.ascontiguousarray(fused, dtype=np.float32), x)
    return EcphoryResult(embeddings=embeddings, stimulus_ids=memory.stimulus_ids[indices], scores=scores,
                         indices=indices, fused_names=fused_names, alpha=config.alpha)
