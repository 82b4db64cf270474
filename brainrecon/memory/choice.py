"""Choose Ecphory's keys, k and alpha on held-out *training* stimuli, never on test.

Psychometry fixes k and alpha (10 and 0.6) and never tests whether a setting helps. Here
every setting of a grid is scored on the run's validation slice: training stimuli the
model was not fitted on, so their predictions are distributed like test-time predictions,
and the memory (built from the trained stimuli only) cannot contain them. The score is
the field's two-way identification (Pearson correlation, each item against all others) of
the CLIP embeddings of images generated from each setting, against the true images'. The
embeddings themselves would not do: among a slice's stimuli the predicted embeddings are
identified almost perfectly already (0.99 for Psychometry-style on the simulated world)
while the images generated from them are not (about 0.65). Every
setting is compared, stimulus by stimulus, with alpha = 1 (no memory) on the same
stimuli; a setting is chosen only if its gain's 95% interval excludes 0, otherwise
Ecphory stays off. The record says which, and why.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from brainrecon.config import StrictConfig

KeyKind = Literal["prediction", "brain"]
CHOICE_FORMAT = "brainrecon.ecphory_choice"


class EcphoryGrid(StrictConfig):
    """The settings tried: memory keys x k x alpha (alpha = 1, no memory, is always the baseline)."""

    keys: tuple[KeyKind, ...] = ("prediction", "brain")
    k: tuple[int, ...] = (5, 20)
    alpha: tuple[float, ...] = (0.75, 0.5, 0.25)
    max_stimuli: int = Field(40, ge=2)  # held-out stimuli scored per subject (one generated image each)

    @field_validator("k")
    @classmethod
    def _positive(cls, values: tuple[int, ...]) -> tuple[int, ...]:
        if not values or min(values) < 1:
            raise ValueError(f"k must list at least one value, each >= 1; got {list(values)}")
        return values

    @field_validator("alpha")
    @classmethod
    def _weights(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if not values or min(values) < 0 or max(values) >= 1:
            raise ValueError(f"alpha must list values in [0, 1) (alpha = 1, no memory, is the baseline); "
                             f"got {list(values)}")
        return values


class EcphorySetting(StrictConfig):
    """What reconstruction uses: off, or these keys, k and alpha."""

    enabled: bool
    keys: KeyKind = "prediction"
    k: int = Field(10, ge=1)
    alpha: float = Field(1.0, ge=0.0, le=1.0)


def two_way_fractions(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per-item two-way identification of (n, F) predictions among n items, chance 0.5.

    r[i, j] = corr(truth_i, predicted_j); item j scores the share of i != j with
    r[i, j] < r[j, j] (the protocol of MindEye and Psychometry, on embeddings).
    """
    t = truth.reshape(len(truth), -1).astype(np.float64)
    p = predicted.reshape(len(predicted), -1).astype(np.float64)
    t = t - t.mean(axis=1, keepdims=True)
    p = p - p.mean(axis=1, keepdims=True)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    r = t @ p.T
    return (r < np.diag(r)[None, :]).sum(axis=0) / (len(r) - 1)


def paired_gain(scores: np.ndarray, baseline: np.ndarray) -> dict:
    """Mean per-item gain over the baseline with a 95% normal interval (items: held-out stimuli)."""
    gain = np.asarray(scores, np.float64) - np.asarray(baseline, np.float64)
    half = 1.96 * gain.std(ddof=1) / np.sqrt(len(gain)) if len(gain) > 1 else float("inf")
    return {"gain": float(gain.mean()), "gain_ci95_low": float(gain.mean() - half),
            "gain_ci95_high": float(gain.mean() + half)}


def choose(baseline: np.ndarray, scored: dict[tuple[str, int, float], np.ndarray]) -> tuple[EcphorySetting, list,
                                                                                            str]:
    """The setting with the largest mean gain whose 95% interval excludes 0, else off.

    baseline: per-item scores at alpha = 1; scored: (keys, k, alpha) -> per-item scores
    on the same items. Returns the setting, the grid rows and the reason.
    """
    rows = [{"keys": keys, "k": k, "alpha": alpha, "two_way": float(np.mean(values)),
             **paired_gain(values, baseline)} for (keys, k, alpha), values in scored.items()]
    helpful = [row for row in rows if row["gain_ci95_low"] > 0]
    if not helpful:
        best = max(rows, key=lambda row: row["gain"]) if rows else None
        reason = ("no setting raised two-way identification on held-out training stimuli (95% interval of the "
                  "gain excludes 0 for none)" + (f"; the best, keys {best['keys']}, k {best['k']}, alpha "
                                                 f"{best['alpha']}, changed it by {100 * best['gain']:+.1f} points"
                                                 if best else ""))
        return EcphorySetting(enabled=False), rows, reason
    best = max(helpful, key=lambda row: (row["gain"], row["alpha"], -row["k"]))
    reason = (f"raised two-way identification on held-out training stimuli by {100 * best['gain']:+.1f} points "
              f"(95% CI {100 * best['gain_ci95_low']:+.1f} to {100 * best['gain_ci95_high']:+.1f})")
    return EcphorySetting(enabled=True, keys=best["keys"], k=best["k"], alpha=best["alpha"]), rows, reason
