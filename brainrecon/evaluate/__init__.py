"""Evaluation: the field's metrics, implemented exactly and labelled honestly."""

from brainrecon.evaluate.evaluation import EvaluateConfig, evaluate_run, metrics_table
from brainrecon.evaluate.feature_nets import MetricUnavailable, load_feature_net
from brainrecon.evaluate.leakage import LeakageError, check_leakage
from brainrecon.evaluate.metrics import correlation_distance, pixcorr, ssim, two_way_identification
from brainrecon.evaluate.retrieval import RetrievalScore, cosine_scores, retrieval_top1

__all__ = ["EvaluateConfig", "LeakageError", "MetricUnavailable", "RetrievalScore", "check_leakage",
           "correlation_distance", "cosine_scores", "evaluate_run", "load_feature_net", "metrics_table", "pixcorr",
           "retrieval_top1", "ssim", "two_way_identification"]
