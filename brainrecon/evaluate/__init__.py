"""Evaluation: the field's metrics, implemented exactly and labelled honestly."""

from brainrecon.evaluate.feature_nets import MetricUnavailable, load_feature_net
from brainrecon.evaluate.metrics import correlation_distance, pixcorr, ssim, two_way_identification
from brainrecon.evaluate.retrieval import RetrievalScore, cosine_scores, retrieval_top1

__all__ = ["RetrievalScore", "cosine_scores", "retrieval_top1", "pixcorr", "ssim", "two_way_identification",
           "correlation_distance", "MetricUnavailable", "load_feature_net"]
