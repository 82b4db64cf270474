"""Ecphory: blend a brain prediction with the true embeddings of the training stimuli it recalls.

Psychometry's retrieval-enhanced inference (Psychometry, Quan et al., CVPR 2024): search
the subject's memory with the prediction, take the top-k entries, and blend their values
(true embeddings of training images) into the prediction. alpha is the weight of the
prediction: alpha = 1 is the plain prediction (no memory), bit for bit.

Two fusions (``EcphoryConfig.fusion``):

- ``"raw"``: Psychometry's own, ``fused_j = (1 - alpha) * value[top_j] + alpha * prediction``.
  A contrastively trained prediction has an arbitrary norm and the values a fixed one, so
  alpha's real weight is unknown, and a convex blend of uncentred embeddings is pulled
  toward what every image shares (the mean) rather than toward what this one looks like.
  With ``renormalize`` each blend is brought back to the generator's convention:
  image_tokens re-divided by the fused CLS token's norm (token 0, the Versatile-Diffusion
  convention of `base.py`); text_tokens rescaled as one matrix to the prediction's
  Frobenius norm (their pooled token sits at a caption-dependent position, so it cannot be
  read off the blend); pooled names rescaled to the prediction's norm.
- ``"common"`` (default): both sides are centred with training statistics (the prediction
  by the mean of the model's predictions for the training trials, the values by the mean
  true embedding) and brought to unit norm, so alpha is the real share of each direction:

      d = unit(alpha * unit(prediction - mean_prediction) + (1 - alpha) * unit(memory - mean_value))
      fused = mean_prediction + |prediction - mean_prediction| * d

  The fused embedding keeps the prediction's own centre and length, so the generator sees
  what it sees without Ecphory, and only the direction moves toward the memories.

Neighbours (``EcphoryConfig.neighbours``):

- ``"weighted"`` (default): one fused embedding per query from the similarity-weighted
  mean of the k neighbours' directions (weights proportional to the search cosine, negative
  ones dropped); every generated sample starts from it (different seeds).
- ``"each"``: Psychometry's k fused embeddings, neighbour j's drives sample j.

Names the prediction has but the memory does not (e.g. `lowlevel`) are passed through.
Outputs have the layout (B, n, ...), n = k for "each" and 1 for "weighted" or alpha = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from brainrecon.config import StrictConfig
from brainrecon.memory._arrays import is_torch, l2_normalize, to_numpy
from brainrecon.memory.errors import MemoryStoreError
from brainrecon.memory.subject_memory import SubjectMemory


class EcphoryConfig(StrictConfig):
    """Retrieval-enhanced inference settings; k and alpha are Psychometry's inference_moe.sh values.

    Psychometry itself is ``fusion="raw", neighbours="each"``.
    """

    k: int = Field(10, ge=1)  # memories retrieved per query
    alpha: float = Field(0.6, ge=0.0, le=1.0)  # weight of the brain prediction
    fusion: Literal["common", "raw"] = "common"
    neighbours: Literal["weighted", "each"] = "weighted"
    renormalize: bool = True  # raw fusion only: back to the generator's convention

    @model_validator(mode="after")
    def _raw_is_per_neighbour(self) -> EcphoryConfig:
        if self.fusion == "raw" and self.neighbours != "each":
            raise ValueError("fusion: raw is Psychometry's blend, one sample per neighbour; set neighbours: each")
        return self


@dataclass(frozen=True)
class EcphoryResult:
    """The k fused embeddings per query and what was retrieved to make them."""

    embeddings: dict  # name -> (B, n, *shape) (n = k, or 1), same array type, dtype and device as the prediction
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


def neighbour_weights(scores: np.ndarray) -> np.ndarray:
    """(B, k) weights summing to 1, proportional to the non-negative search cosines (uniform if none is)."""
    weights = np.maximum(scores.astype(np.float64), 0.0)
    total = weights.sum(axis=1, keepdims=True)
    uniform = np.full_like(weights, 1.0 / weights.shape[1])
    return np.where(total > 0, weights / np.where(total > 0, total, 1.0), uniform).astype(np.float32)


def common_scale_fusion(predicted: np.ndarray, values: np.ndarray, scores: np.ndarray, prediction_mean: np.ndarray,
                        value_mean: np.ndarray, alpha: float, neighbours: str) -> np.ndarray:
    """predicted (B, *shape) and values (B, k, *shape) -> (B, n, *shape), see the module docstring."""
    batch, k = values.shape[:2]
    centred = predicted.reshape(batch, -1) - prediction_mean.reshape(1, -1)
    length = np.linalg.norm(centred, axis=1, keepdims=True)
    directions = l2_normalize(values.reshape(batch, k, -1) - value_mean.reshape(1, 1, -1))
    if neighbours == "weighted":
        directions = l2_normalize((neighbour_weights(scores)[:, :, None] * directions).sum(axis=1, keepdims=True))
    blend = l2_normalize(alpha * l2_normalize(centred)[:, None] + (1.0 - alpha) * directions)
    fused = prediction_mean.reshape(1, 1, -1) + length[:, None] * blend
    return fused.reshape(batch, fused.shape[1], *predicted.shape[1:])


def raw_fusion(name: str, predicted: np.ndarray, values: np.ndarray, config: EcphoryConfig) -> np.ndarray:
    """Psychometry's blend of the raw embeddings, (B, k, *shape), renormalised if configured."""
    fused = (1.0 - config.alpha) * values + config.alpha * predicted[:, None]
    return renormalize(name, fused, predicted) if config.renormalize else fused


def fuse(prediction: dict, memory: SubjectMemory, config: EcphoryConfig | None = None,
         query: dict | None = None) -> EcphoryResult:
    """Retrieve the top-k memory entries for each prediction and blend their values into it.

    prediction: name -> (B, *shape) torch tensors or numpy arrays, a model's
    predictions for B test trials of the memory's subject. query: what the memory
    is searched with (its `search_on` names, e.g. ``betas`` for brain-space keys);
    the prediction by default. Returns an `EcphoryResult` whose embeddings have
    shape (B, n, *shape). With alpha = 1 they are the prediction itself, bit for
    bit (retrieval still runs, so the ids and scores are reported).
    """
    config = config or EcphoryConfig()
    if not isinstance(prediction, dict) or not prediction:
        raise MemoryStoreError("prediction must be a non-empty dict of target name -> (batch, *shape) array")
    batches = {name: int(x.shape[0]) for name, x in {**prediction, **(query or {})}.items()}
    if len(set(batches.values())) != 1:
        raise MemoryStoreError(f"prediction and query arrays disagree on the batch size: {batches}")
    scores, indices = memory.search(prediction if query is None else query, config.k)
    fused_names = tuple(name for name in prediction if name in memory.value_names)
    n = config.k if config.neighbours == "each" and config.alpha < 1.0 else 1
    embeddings = {}
    for name, x in prediction.items():
        if name in fused_names and tuple(x.shape[1:]) != memory.value_shape(name):
            raise MemoryStoreError(f"prediction[{name!r}] items have shape {tuple(x.shape[1:])}, but the memory "
                                   f"of subject {memory.subject!r} stores {memory.value_shape(name)}")
        if name not in fused_names or config.alpha == 1.0:
            embeddings[name] = _repeat_k(x, n)  # exact, not (1 - 1) * value + 1 * x
            continue
        predicted = to_numpy(x, np.float32)
        values = memory.values_at(name, indices).astype(np.float32)
        if config.fusion == "raw":
            fused = raw_fusion(name, predicted, values, config)
        else:
            fused = common_scale_fusion(predicted, values, scores, memory.prediction_mean(name),
                                        memory.value_mean(name), config.alpha, config.neighbours)
        embeddings[name] = _like(np.ascontiguousarray(fused, dtype=np.float32), x)
    return EcphoryResult(embeddings=embeddings, stimulus_ids=memory.stimulus_ids[indices], scores=scores,
                         indices=indices, fused_names=fused_names, alpha=config.alpha)
