"""Retrieval of the Ecphory-fused embedding beside the plain prediction's, on the test split, labelled.

Ecphory (Psychometry, Quan et al., CVPR 2024) blends each prediction with the memories it
retrieves from the subject's training trials; generation then starts from the blend. Retrieval
belongs to the prediction, so evaluation reports it unfused; this scores the fused embedding
beside it, so a reader can see how far the blend moves away from what the brain said.
"""

from __future__ import annotations

import numpy as np

from brainrecon.evaluate.retrieval import cosine_scores, retrieval_top1
from brainrecon.memory import EcphoryConfig, fuse
from brainrecon.memory.choice import EcphorySetting
from brainrecon.reconstruct import conditioning_embeddings, memory_query, open_memory, predict_embeddings
from brainrecon.train.run import RunContext


def ecphory_embedding_scores(context: RunContext, subject: str, setting: EcphorySetting, fusion: str = "common",
                             neighbours: str = "weighted", way: int = 300, draws: int = 30, seed: int = 42) -> dict:
    """Cosine to the truth and retrieval of the plain conditioning embedding and of the fused one.

    The fused embedding scored for each test image is the mean of its fused embeddings (one,
    or k with neighbours: each). With Ecphory off, only the plain row is returned.
    """
    test = context.store.subject(subject).test()
    key = context.model.retrieval_target
    conditioning = conditioning_embeddings(context.model, test.betas, subject)
    truth = context.targets.get(key, test.stimulus_ids)
    way = min(way, len(test))
    embeddings = {"plain": conditioning[key]}
    if setting.enabled and setting.alpha < 1.0:
        memory = open_memory(context, context.path, subject, progress=False, keys=setting.keys)
        config = EcphoryConfig(k=min(setting.k, len(memory)), alpha=setting.alpha, fusion=fusion,
                               neighbours=neighbours)
        query = memory_query(setting.keys, predict_embeddings(context.model, test.betas, subject), test.betas)
        embeddings["fused"] = fuse(conditioning, memory, config, query).embeddings[key].mean(axis=1)
    rows = {}
    for name, predicted in embeddings.items():
        scores = cosine_scores(predicted, truth)
        retrieval = retrieval_top1(scores, way, draws, seed)
        rows[name] = {"embedding_cosine": float(np.mean(np.diag(scores))), "image_top1": retrieval.image_top1,
                      "brain_top1": retrieval.brain_top1, "image_ci95": retrieval.image_ci95,
                      "brain_ci95": retrieval.brain_ci95}
    return {"subject": subject, "target": key, "setting": setting.model_dump(mode="json"), "fusion": fusion,
            "neighbours": neighbours, "way": way, "draws": draws, "rows": rows}
