"""Evaluation: the field's metrics, implemented exactly and labelled honestly."""

from brainrecon.evaluate.retrieval import RetrievalScore, cosine_scores, retrieval_top1

__all__ = ["RetrievalScore", "cosine_scores", "retrieval_top1"]
