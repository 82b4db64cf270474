"""The Bayes-optimal identification oracle of a simulated world.

It knows everything the simulator knows except the noise draws: each voxel's
true encoding model, the shared code, the noise and drift levels, and each
session's gain and offset. For a test stimulus it undoes gain and offset
exactly, averages the repeats, and scores every candidate image by the exact
Gaussian log-likelihood of that average under the true model. The averaged
noise has covariance (code_noise / n) A A^T + D, with A the voxels' read-out
of the code and D diagonal (each voxel's white noise plus the drift at the
trials' positions in their sessions), so picking the maximum-likelihood
candidate is the Bayes-optimal decision under a uniform prior. No decoder can
beat it in expectation: it is the world's ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from brainrecon.data.simworld.encoding import image_features, session_position
from brainrecon.data.simworld.world import EXTRA, load_code_values, load_subject_truth, load_world_config
from brainrecon.data.store import Store
from brainrecon.errors import StoreError


@dataclass(frozen=True)
class OracleEvidence:
    stimulus_ids: np.ndarray  # test stimuli, sorted
    mean_response: np.ndarray  # (n, V): gain/offset removed, repeats averaged
    variance: np.ndarray  # (n, V): variance of the averaged noise
    signal: np.ndarray  # (n, V): true noise-free response to each test image
    readout: np.ndarray  # (V, code_dims): the voxels' read-out of the shared code
    code_variance: np.ndarray  # (n,): variance of the averaged code noise per stimulus (code_noise / n)


def oracle_evidence(store: Store, subject: str, split: str = "test") -> OracleEvidence:
    """What the true model says about each stimulus of ``split`` ("test", or "train" for choices made on
    training data): its repeat-averaged response with gains and offsets undone, and the noise levels."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    config = load_world_config(store)
    truth = load_subject_truth(store, subject)
    model, gain, offset = truth.model, truth.session_gain, truth.session_offset
    data = store.subject(subject)
    trials = data.trials
    rows = np.flatnonzero(trials.is_test if split == "test" else ~trials.is_test)
    sessions = trials.session[rows]
    raw = np.asarray(data.raw_betas[rows], dtype=np.float64)
    cleaned = (raw - offset[sessions - 1]) / gain[sessions - 1]
    # simulated trials are stored in presentation order, trials_per_session to a session
    per_session = config.session.trials_per_session
    u = session_position(rows % per_session, per_session)

    ids, inverse = np.unique(trials.stimulus_id[rows], return_inverse=True)
    counts = np.bincount(inverse)
    mean = np.zeros((ids.size, model.n_voxels))
    np.add.at(mean, inverse, cleaned)
    mean /= counts[:, None]
    # drift: repeats in the same session share that session's slope, so sum u within each session first
    drift_load = np.zeros(ids.size)
    for stim_row in range(ids.size):
        hit = inverse == stim_row
        drift_load[stim_row] = np.sum(np.bincount(sessions[hit], weights=u[hit]) ** 2)
    variance = (model.noise_sd[None] ** 2 / counts[:, None]
                + model.drift_sd[None] ** 2 * drift_load[:, None] / counts[:, None] ** 2)
    signal = model.signal(true_code(store, subject, ids)).astype(np.float64)
    return OracleEvidence(ids, mean, variance, signal, model.readout, config.noise.code_noise / counts)


def true_code(store: Store, subject: str, stimulus_ids: np.ndarray) -> np.ndarray:
    """The stimuli's noise-free shared code: as saved by the simulator, or (stores written before the
    values were saved, always hand-crafted worlds) recomputed from the images."""
    try:
        return load_code_values(store, subject, stimulus_ids)
    except StoreError:
        config = load_world_config(store)
        if config.vision_model:
            raise
        semantic = np.load(store.extra_path(f"{EXTRA}/semantic.npy"), allow_pickle=False)
        features = image_features(store.images_for(stimulus_ids), semantic[store.stimuli.rows(stimulus_ids)],
                                  config.feature_grid)
        return load_subject_truth(store, subject).code.encode(features, config.feature_grid)


def oracle_loglik(evidence: OracleEvidence, block: int = 64) -> np.ndarray:
    """loglik[i, j] = log p(response to stimulus i | the image was stimulus j), up to a per-row constant.

    With r = x_i - mu_j and Sigma_i = D_i + c_i A A^T, the Woodbury identity gives
    r^T Sigma_i^-1 r = r^T D_i^-1 r - (A^T D_i^-1 r)^T (I / c_i + A^T D_i^-1 A)^-1 (A^T D_i^-1 r).
    """
    x = torch.as_tensor(evidence.mean_response)
    mu = torch.as_tensor(evidence.signal)
    a = torch.as_tensor(evidence.readout, dtype=torch.float64)
    precision = 1.0 / torch.as_tensor(evidence.variance)
    out = torch.empty(len(x), len(mu), dtype=torch.float64)
    for start in range(0, len(x), block):
        i = slice(start, start + block)
        p = precision[i]  # (b, V)
        diag = ((x[i] ** 2 * p).sum(1)[:, None] - 2 * (x[i] * p) @ mu.T + p @ (mu ** 2).T)
        pa = p[:, :, None] * a[None]  # (b, V, k): D^-1 A
        code_precision = 1.0 / torch.as_tensor(evidence.code_variance[i], dtype=torch.float64)
        inner = torch.linalg.inv(code_precision[:, None, None] * torch.eye(a.shape[1], dtype=torch.float64)
                                 + a.T @ pa)  # (b, k, k)
        ax = torch.einsum("bv,bvk->bk", x[i], pa)  # A^T D^-1 x_i
        amu = torch.einsum("jv,bvk->bjk", mu, pa)  # A^T D^-1 mu_j
        r = ax[:, None, :] - amu  # (b, n, k)
        low_rank = torch.einsum("bjk,bkl,bjl->bj", r, inner, r)
        out[i] = -0.5 * (diag - low_rank)
    return out.numpy()


def posterior_code(evidence: OracleEvidence, prior_mean: np.ndarray, prior_cov: np.ndarray,
                   block: int = 64) -> np.ndarray:
    """E[code | averaged response] for each test stimulus (n, code_dims), under the true model.

    The averaged response is x = A (c + e) + d with code noise e ~ N(0, s I) and voxel noise
    d ~ N(0, D). The generalised least-squares read-out w = (A^T D^-1 A)^-1 A^T D^-1 x is c plus
    noise of covariance N = s I + (A^T D^-1 A)^-1; with a Gaussian prior N(m, S) on the code
    (from training stimuli only) the posterior mean is m + S (S + N)^-1 (w - m). It is what a
    decoder that knows the encoding model can say about the code, so mapping it into a target
    space gives that space's ceiling (a decoder like any other: it cannot beat the oracle).
    """
    a = torch.as_tensor(evidence.readout, dtype=torch.float64)
    x = torch.as_tensor(evidence.mean_response)
    m = torch.as_tensor(prior_mean, dtype=torch.float64)
    s_prior = torch.as_tensor(prior_cov, dtype=torch.float64)
    eye = torch.eye(a.shape[1], dtype=torch.float64)
    out = torch.empty(len(x), a.shape[1], dtype=torch.float64)
    for start in range(0, len(x), block):
        i = slice(start, start + block)
        pa = a[None] / torch.as_tensor(evidence.variance[i])[:, :, None]  # D^-1 A (b, V, k)
        fisher = torch.einsum("vk,bvl->bkl", a, pa)  # A^T D^-1 A
        w = torch.linalg.solve(fisher, torch.einsum("bv,bvk->bk", x[i], pa))
        noise = torch.as_tensor(evidence.code_variance[i], dtype=torch.float64)[:, None, None] * eye \
            + torch.linalg.inv(fisher)
        gain = torch.linalg.solve(s_prior[None] + noise, (w - m)[:, :, None])  # (S + N)^-1 (w - m)
        out[i] = m + (s_prior @ gain).squeeze(-1)
    return out.numpy()
