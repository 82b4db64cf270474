"""Does Ecphory bring a run's predicted embedding closer to the truth? Scored on the test split.

Ecphory (Psychometry, Quan et al., CVPR 2024) blends each prediction with the memories
it retrieves from the subject's training trials; generation then starts from the blends. This
scores the blended embedding itself, per alpha, against the test images' true embeddings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainrecon.evaluate.retrieval import cosine_scores, retrieval_top1
from brainrecon.io import atomic_write_json
from brainrecon.memory import EcphoryConfig, SubjectMemory, fuse
from brainrecon.reconstruct import memory_dir, predict_embeddings
from brainrecon.train.run import RunContext


def ecphory_embedding_scores(context: RunContext, memory: SubjectMemory, subject: str,
                             alphas=(1.0, 0.8, 0.6, 0.4, 0.2), k: int = 10, way: int = 300, draws: int = 30,
                             seed: int = 42) -> dict:
    """Does Ecphory bring the predicted embedding closer to the truth? Cosine and retrieval per alpha.

    The fused embedding scored for each test image is the blend with the mean of its
    k retrieved values (what the k samples are generated around); alpha = 1 is the
    plain prediction.
    """
    test = context.store.subject(subject).test()
    key = context.model.retrieval_target
    predicted = predict_embeddings(context.model, test.betas, subject)
    truth = context.targets.get(key, test.stimulus_ids)
    way = min(way, len(test))
    rows = []
    for alpha in alphas:
        fused = fuse(predicted, memory, EcphoryConfig(k=k, alpha=alpha)).embeddings[key].mean(axis=1)
        scores = cosine_scores(fused, truth)
        retrieval = retrieval_top1(scores, way, draws, seed)
        rows.append({"alpha": alpha, "embedding_cosine": float(np.mean(np.diag(scores))),
                     "image_top1": retrieval.image_top1, "brain_top1": retrieval.brain_top1,
                     "image_ci95": retrieval.image_ci95, "brain_ci95": retrieval.brain_ci95})
    return {"subject": subject, "target": key, "k": k, "way": way, "draws": draws, "rows": rows}


ECPHORY_SCORES = "ecphory_scores.json"


def save_ecphory_scores(context: RunContext, memory: SubjectMemory, subject: str) -> tuple[dict, Path]:
    """Score a freshly built memory (`ecphory_embedding_scores`) into RUN/memory/SUBJECT/ecphory_scores.json."""
    scores = ecphory_embedding_scores(context, memory, subject)
    path = memory_dir(context.path, subject) / ECPHORY_SCORES
    atomic_write_json(path, scores)
    return scores, path
