"""Image and brain retrieval exactly as the field reports it.

For each of ``draws`` random subsets of ``way`` test items (MindEye2 protocol:
``np.random.choice(n, way, replace=False)`` per draw with a fixed seed), image
retrieval counts how often a brain sample's best-scoring candidate image is its
own; brain retrieval counts how often an image's best-scoring brain sample is
its own. The mean over draws is reported with a 95% normal confidence interval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from brainrecon.errors import EvaluationError


@dataclass(frozen=True)
class RetrievalScore:
    image_top1: float  # brain -> image
    brain_top1: float  # image -> brain
    image_ci95: float
    brain_ci95: float
    way: int
    draws: int

    @property
    def chance(self) -> float:
        return 1.0 / self.way

    def to_dict(self) -> dict:
        return {**asdict(self), "chance": self.chance}


def cosine_scores(predicted: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> np.ndarray:
    """scores[i, j] = cosine(predicted_i, target_j), flattening any trailing dims (e.g. tokens)."""
    p = torch.as_tensor(np.asarray(predicted), dtype=torch.float64).flatten(1)
    t = torch.as_tensor(np.asarray(target), dtype=torch.float64).flatten(1)
    p = torch.nn.functional.normalize(p, dim=1)
    t = torch.nn.functional.normalize(t, dim=1)
    return (p @ t.T).numpy()


def draw_subsets(n: int, way: int, draws: int, seed: int) -> np.ndarray:
    if n < way:
        raise EvaluationError(f"{way}-way retrieval needs at least {way} test items, but there are {n}; "
                         f"lower `way` (the field reports 300-way) or add test stimuli")
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(n, way, replace=False) for _ in range(draws)])


def _mean_ci(values: list[float]) -> tuple[float, float]:
    values = np.asarray(values)
    ci = 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return float(values.mean()), float(ci)


def retrieval_top1(scores: np.ndarray, way: int = 300, draws: int = 30, seed: int = 42,
                   loglik: bool = False) -> RetrievalScore:
    """Top-1 retrieval from a score matrix ``scores[brain_i, image_j]`` (higher = better match).

    With ``loglik`` the scores are log-likelihoods log p(brain_i | image_j); image
    retrieval then picks the maximum-likelihood image, and brain retrieval picks,
    for each image, the brain sample whose posterior over the drawn images gives
    that image the highest probability (the Bayes decision for that direction).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise EvaluationError(f"scores must be square (brain i x image i), got shape {scores.shape}")
    image_hits, brain_hits = [], []
    for subset in draw_subsets(len(scores), way, draws, seed):
        sub = scores[np.ix_(subset, subset)]
        target = np.arange(way)
        image_hits.append(float(np.mean(sub.argmax(axis=1) == target)))
        if loglik:
            sub = sub - np.logaddexp.reduce(sub, axis=1, keepdims=True)
        brain_hits.append(float(np.mean(sub.argmax(axis=0) == target)))
    image, image_ci = _mean_ci(image_hits)
    brain, brain_ci = _mean_ci(brain_hits)
    return RetrievalScore(image, brain, image_ci, brain_ci, way, draws)
