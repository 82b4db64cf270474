"""Voxel reliability from repeats: the NSD noise-ceiling SNR and noise ceiling.

Following the NSD data paper: with betas z-scored per session, the noise
variance is the mean over stimuli of the variance across repeats, the signal
variance is what is left of the total, and ncsnr = signal sd / noise sd. The
noise ceiling for responses averaged over n repeats is 100 * ncsnr^2 / (ncsnr^2 + 1/n).
"""

from __future__ import annotations

import numpy as np

from brainrecon.data.store import SubjectData


def noise_ceiling(ncsnr: np.ndarray, n_repeats: int) -> np.ndarray:
    """Percent of variance explainable in responses averaged over ``n_repeats``."""
    ncsnr = np.asarray(ncsnr, dtype=np.float64)
    return 100.0 * ncsnr ** 2 / (ncsnr ** 2 + 1.0 / n_repeats)


def estimate_ncsnr(data: SubjectData, min_repeats: int = 2) -> np.ndarray:
    """Per-voxel ncsnr from every stimulus with at least ``min_repeats`` trials (train and test alike)."""
    rows = np.arange(len(data.trials))
    betas = data.read_trials(rows).astype(np.float64)
    ids, inverse, counts = np.unique(data.trials.stimulus_id, return_inverse=True, return_counts=True)
    repeated = counts[inverse] >= min_repeats
    inverse, betas = inverse[repeated], betas[repeated]
    n = np.bincount(inverse, minlength=ids.size).astype(np.float64)
    sums = np.zeros((ids.size, data.n_voxels))
    squares = np.zeros((ids.size, data.n_voxels))
    np.add.at(sums, inverse, betas)
    np.add.at(squares, inverse, betas ** 2)
    used = n >= min_repeats
    n, sums, squares = n[used, None], sums[used], squares[used]
    within = (squares - sums ** 2 / n) / (n - 1)  # unbiased variance across repeats, per stimulus
    noise_var = within.mean(axis=0)
    total_var = betas.var(axis=0)
    signal_var = np.clip(total_var - noise_var, 0, None)
    return np.sqrt(signal_var / noise_var)
