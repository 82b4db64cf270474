"""Virtual subjects: an explicit voxel-wise encoding model with shared archetypes.

Every voxel is one of three kinds, each a linear read-out of fixed image
features followed by a kind-specific nonlinearity:

- low:  Gabor energy (4 orientations x 3 scales) pooled over a Gaussian
        retinotopic receptive field, then a compressive square root
        (the classic V1 energy / compressive-spatial-summation model);
- mid:  colour-opponent and texture statistics pooled over a larger receptive
        field, read out with signed weights;
- high: semantic content (visible categories, colours, count, background)
        through a softplus, like category-selective cortex.

Voxels are drawn around tuning *archetypes* shared by all subjects; each
subject adds its own deviations, voxel count, voxel order and noise levels.
That shared-plus-individual structure is what multi-subject models exploit.

The archetypes, evaluated as a population of model units, define the world's
**shared code**: the top ``code_dims`` principal components of their responses
over a fixed calibration set of scenes. Each voxel's signal is its tuning model
projected onto that code (the best linear read-out of the code, over the
calibration scenes), standardised to zero mean and unit variance. A
low-dimensional signal plus trial-wise noise *in the code* ("signal-like"
noise, as in real cortex, where noise correlations follow signal correlations)
is what keeps the information in a brain finite: without it a Bayes-optimal
reader of 2,000 independent-noise voxels identifies every image perfectly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from brainrecon import vision
from brainrecon.data.simworld.config import WorldConfig
from brainrecon.data.simworld.scenes import CATEGORIES, SEMANTIC_FEATURES
from brainrecon.rng import derive_rng

KINDS = ("low", "mid", "high")
N_SEMANTIC = len(SEMANTIC_FEATURES)
N_MID = len(vision.COLOUR_CHANNELS)


@dataclass(frozen=True)
class ImageFeatures:
    low: torch.Tensor  # (n, GABOR_CHANNELS * grid * grid)
    mid: torch.Tensor  # (n, N_MID * grid * grid)
    semantic: torch.Tensor  # (n, N_SEMANTIC)


def image_features(images: np.ndarray, semantic: np.ndarray, grid: int) -> ImageFeatures:
    low, mid = [], []
    step = vision.images_per_batch(images.shape[1])
    for start in range(0, len(images), step):
        pixels = vision.to_float_images(images[start:start + step])
        energy = vision.gabor_energy(pixels)
        low.append(vision.pool_grid(energy, grid).flatten(1))
        mid.append(vision.pool_grid(vision.colour_texture_maps(pixels, energy), grid).flatten(1))
    return ImageFeatures(low=torch.cat(low), mid=torch.cat(mid),
                         semantic=torch.as_tensor(np.asarray(semantic, dtype=np.float32)))


# -- archetypes ------------------------------------------------------------------------------------


def make_archetypes(config: WorldConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    k_low, k_mid, k_high = config.archetypes.low, config.archetypes.mid, config.archetypes.high
    centre_low = rng.uniform(0.08, 0.92, size=(k_low, 2))
    eccentricity = np.linalg.norm(centre_low - 0.5, axis=1)
    # receptive fields grow with eccentricity, as in early visual cortex
    size_low = (0.04 + 0.15 * eccentricity) * np.exp(rng.normal(0, 0.15, k_low))
    preferred_orientation = rng.uniform(0, np.pi, k_low)
    preferred_scale = rng.uniform(0, len(vision.CYCLES_PER_IMAGE) - 1, k_low)
    orientations = np.pi * np.arange(vision.ORIENTATIONS) / vision.ORIENTATIONS
    scales = np.arange(len(vision.CYCLES_PER_IMAGE))
    orient_tuning = np.exp(2.0 * (np.cos(2 * (orientations[None] - preferred_orientation[:, None])) - 1))
    scale_tuning = np.exp(-((scales[None] - preferred_scale[:, None]) ** 2) / (2 * 0.6 ** 2))
    tuning_low = (scale_tuning[:, :, None] * orient_tuning[:, None, :]).reshape(k_low, -1) + 0.05
    tuning_low /= tuning_low.sum(axis=1, keepdims=True)

    centre_mid = rng.uniform(0.1, 0.9, size=(k_mid, 2))
    size_mid = rng.uniform(0.12, 0.3, k_mid)
    tuning_mid = rng.normal(size=(k_mid, N_MID))
    tuning_mid /= np.linalg.norm(tuning_mid, axis=1, keepdims=True)

    weights_high = rng.normal(0, 0.3, size=(k_high, N_SEMANTIC))
    for k in range(k_high):  # each high-level archetype prefers one or two categories
        preferred = rng.choice(len(CATEGORIES), size=rng.integers(1, 3), replace=False)
        weights_high[k, preferred] = rng.uniform(1.5, 3.0, size=preferred.size)
    bias_high = rng.normal(-0.5, 0.3, k_high)
    return {"low_centre": centre_low, "low_size": size_low, "low_tuning": tuning_low,
            "mid_centre": centre_mid, "mid_size": size_mid, "mid_tuning": tuning_mid,
            "high_weights": weights_high, "high_bias": bias_high}


# -- subjects --------------------------------------------------------------------------------------


@dataclass
class SubjectModel:
    """Ground truth of one virtual subject: one row per voxel, in the subject's own voxel order."""

    kind: np.ndarray  # int8 index into KINDS
    archetype: np.ndarray  # int64 archetype index within its kind
    centre: np.ndarray  # (V, 2) receptive-field centre (x, y) in image fractions (low/mid)
    size: np.ndarray  # (V,) receptive-field sd in image fractions (low/mid)
    tuning_low: np.ndarray  # (V, GABOR_CHANNELS), zero unless kind == low
    tuning_mid: np.ndarray  # (V, N_MID), zero unless kind == mid
    weights_high: np.ndarray  # (V, N_SEMANTIC), zero unless kind == high
    bias_high: np.ndarray  # (V,)
    calib_mean: np.ndarray  # (V,) standardisation of the tuning model's raw response
    calib_sd: np.ndarray  # (V,)
    readout: np.ndarray  # (V, code_dims) weights on the shared code; the signal is code @ readout.T
    ncsnr: np.ndarray  # (V,) signal sd / total noise sd (signal sd is 1)
    noise_sd: np.ndarray  # (V,) sd of the voxel's own trial-wise white noise
    drift_sd: np.ndarray  # (V,) sd of each session's linear-drift slope (drift at session ends = +/- slope)

    @property
    def n_voxels(self) -> int:
        return len(self.kind)

    def save(self, path: Path, extra: dict[str, np.ndarray] | None = None) -> None:
        arrays = {f.name: getattr(self, f.name) for f in fields(self)} | (extra or {})
        # safetensors writes an array's raw buffer: a transposed view would be saved scrambled
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))

    @classmethod
    def load(cls, path: Path) -> tuple["SubjectModel", dict[str, np.ndarray]]:
        arrays = load_file(str(path))
        names = {f.name for f in fields(cls)}
        return cls(**{k: arrays[k] for k in names}), {k: v for k, v in arrays.items() if k not in names}

    def tuning_response(self, features: ImageFeatures, grid: int) -> np.ndarray:
        """The tuning model's response, standardised over the calibration scenes (n_images, V)."""
        return (self.raw_response(features, grid) - self.calib_mean) / self.calib_sd

    def signal(self, code: np.ndarray) -> np.ndarray:
        """Noise-free response (n_images, V) to images whose shared code is ``code`` (n_images, code_dims)."""
        return (np.asarray(code, dtype=np.float64) @ self.readout.T).astype(np.float32)

    def raw_response(self, features: ImageFeatures, grid: int) -> np.ndarray:
        out = torch.zeros(features.low.shape[0], self.n_voxels)
        low, mid, high = (np.flatnonzero(self.kind == k) for k in range(3))
        if low.size:
            drive = features.low @ self._pooling_weights(low, self.tuning_low[low], grid)
            out[:, low] = torch.sqrt(drive.clamp_min(0))
        if mid.size:
            out[:, mid] = features.mid @ self._pooling_weights(mid, self.tuning_mid[mid], grid)
        if high.size:
            drive = features.semantic @ torch.as_tensor(self.weights_high[high].T, dtype=torch.float32)
            out[:, high] = torch.nn.functional.softplus(2 * (drive + torch.as_tensor(self.bias_high[high], dtype=torch.float32)))
        return out.numpy().astype(np.float64)

    def _pooling_weights(self, voxels: np.ndarray, tuning: np.ndarray, grid: int) -> torch.Tensor:
        """(channels * grid * grid, len(voxels)): tuning over channels x Gaussian receptive field."""
        cells = (np.arange(grid) + 0.5) / grid
        sd = self.size[voxels][:, None]
        wx = np.exp(-((cells[None] - self.centre[voxels, 0:1]) ** 2) / (2 * sd ** 2))
        wy = np.exp(-((cells[None] - self.centre[voxels, 1:2]) ** 2) / (2 * sd ** 2))
        rf = wy[:, :, None] * wx[:, None, :]
        rf /= rf.sum(axis=(1, 2), keepdims=True)
        weights = tuning[:, :, None, None] * rf[:, None]  # (V, channels, grid, grid)
        return torch.as_tensor(weights.reshape(len(voxels), -1).T, dtype=torch.float32)


def mean_squared_session_position(trials_per_session: int) -> float:
    """E[u^2] for u running linearly from -1 to 1 over a session: how drift variance averages out."""
    u = session_position(np.arange(trials_per_session), trials_per_session)
    return float(np.mean(u ** 2))


def session_position(index_in_session: np.ndarray, trials_per_session: int) -> np.ndarray:
    half = (trials_per_session - 1) / 2
    return (index_in_session - half) / half


def subject_archetypes(config: WorldConfig, index: int, shared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The world's archetypes, or (in a control world without commonality) the subject's own."""
    if config.shared_archetypes:
        return shared
    return make_archetypes(config, derive_rng(config.seed, "archetypes", "subject", index))


def make_subject(config: WorldConfig, index: int, archetypes: dict[str, np.ndarray]) -> SubjectModel:
    """Draw one subject's voxels around its archetypes (standardisation and read-out are fitted later)."""
    rng = derive_rng(config.seed, "subject", index)
    n_voxels = int(rng.integers(config.voxels.min, config.voxels.max + 1))
    mix = np.array([config.voxel_mix.low, config.voxel_mix.mid, config.voxel_mix.high], dtype=float)
    if mix.sum() <= 0:
        raise ValueError("voxel_mix must give at least one kind a positive share")
    shares = rng.dirichlet(200 * mix / mix.sum() + 1e-6)
    counts = np.floor(shares * n_voxels).astype(int)
    counts[np.argmax(shares)] += n_voxels - counts.sum()

    dev = config.individual_deviation
    shift = rng.normal(0, 0.02 * dev, size=2)  # subject-wide retinotopic offset
    kind = np.repeat(np.arange(3, dtype=np.int8), counts)
    arch = np.concatenate([rng.integers(len(archetypes[f"{k}_bias" if k == "high" else f"{k}_size"]), size=c)
                           for k, c in zip(KINDS, counts)])
    low, mid, high = (kind == 0), (kind == 1), (kind == 2)
    centre = np.full((n_voxels, 2), 0.5)
    size = np.full(n_voxels, 0.5)
    tuning_low = np.zeros((n_voxels, vision.GABOR_CHANNELS))
    tuning_mid = np.zeros((n_voxels, N_MID))
    weights_high = np.zeros((n_voxels, N_SEMANTIC))
    bias_high = np.zeros(n_voxels)
    for mask, prefix in ((low, "low"), (mid, "mid")):
        n = int(mask.sum())
        centre[mask] = np.clip(archetypes[f"{prefix}_centre"][arch[mask]] + shift + rng.normal(0, 0.04 * dev, (n, 2)),
                               0.02, 0.98)
        size[mask] = archetypes[f"{prefix}_size"][arch[mask]] * np.exp(rng.normal(0, 0.3 * dev, n))
    n_low, n_mid, n_high = counts
    t = archetypes["low_tuning"][arch[low]] * np.exp(rng.normal(0, 0.6 * dev, (n_low, vision.GABOR_CHANNELS)))
    tuning_low[low] = t / t.sum(axis=1, keepdims=True)
    t = archetypes["mid_tuning"][arch[mid]] + rng.normal(0, 0.6 * dev, (n_mid, N_MID))
    tuning_mid[mid] = t / np.linalg.norm(t, axis=1, keepdims=True)
    weights_high[high] = archetypes["high_weights"][arch[high]] + rng.normal(0, 0.5 * dev, (n_high, N_SEMANTIC))
    bias_high[high] = archetypes["high_bias"][arch[high]] + rng.normal(0, 0.3 * dev, n_high)

    noise = config.noise
    subject_factor = np.exp(rng.normal(0, noise.subject_spread))
    # the voxel's own noise: log-normal SNR, split between white noise and session drift
    own_snr = np.clip(noise.median_voxel_snr * subject_factor * np.exp(rng.normal(0, noise.log_spread, n_voxels)),
                      0.02, 10.0)
    own_var = 1.0 / own_snr ** 2
    noise_sd = np.sqrt(own_var * (1 - noise.drift_fraction))
    drift_sd = np.sqrt(own_var * noise.drift_fraction / mean_squared_session_position(
        config.session.trials_per_session))
    # plus the code noise, whose variance in every voxel is code_noise (the signal variance is 1)
    ncsnr = 1.0 / np.sqrt(own_var + noise.code_noise)

    order = rng.permutation(n_voxels)  # each subject has its own voxel order
    return SubjectModel(kind=kind[order], archetype=arch[order].astype(np.int64), centre=centre[order],
                        size=size[order], tuning_low=tuning_low[order], tuning_mid=tuning_mid[order],
                        weights_high=weights_high[order], bias_high=bias_high[order],
                        calib_mean=np.zeros(n_voxels), calib_sd=np.ones(n_voxels),
                        readout=np.zeros((n_voxels, config.code_dims)), ncsnr=ncsnr[order],
                        noise_sd=noise_sd[order], drift_sd=drift_sd[order])


def standardise(units: SubjectModel, features: ImageFeatures, grid: int) -> np.ndarray:
    """Standardise the units' tuning response over the calibration scenes; return it (n_calib, V)."""
    raw = units.raw_response(features, grid)
    units.calib_mean = raw.mean(axis=0)
    units.calib_sd = np.maximum(raw.std(axis=0), 1e-6)
    return (raw - units.calib_mean) / units.calib_sd


def archetype_units(archetypes: dict[str, np.ndarray]) -> SubjectModel:
    """The archetypes as a population of model units (one per archetype, no deviation, no noise)."""
    counts = [len(archetypes["low_size"]), len(archetypes["mid_size"]), len(archetypes["high_bias"])]
    n = sum(counts)
    kind = np.repeat(np.arange(3, dtype=np.int8), counts)
    low, mid, high = (kind == k for k in range(3))
    centre, size = np.full((n, 2), 0.5), np.full(n, 0.5)
    centre[low], size[low] = archetypes["low_centre"], archetypes["low_size"]
    centre[mid], size[mid] = archetypes["mid_centre"], archetypes["mid_size"]
    tuning_low, tuning_mid = np.zeros((n, vision.GABOR_CHANNELS)), np.zeros((n, N_MID))
    weights_high, bias_high = np.zeros((n, N_SEMANTIC)), np.zeros(n)
    tuning_low[low], tuning_mid[mid] = archetypes["low_tuning"], archetypes["mid_tuning"]
    weights_high[high], bias_high[high] = archetypes["high_weights"], archetypes["high_bias"]
    zeros = np.zeros(n)
    return SubjectModel(kind=kind, archetype=np.concatenate([np.arange(c) for c in counts]), centre=centre,
                        size=size, tuning_low=tuning_low, tuning_mid=tuning_mid, weights_high=weights_high,
                        bias_high=bias_high, calib_mean=zeros, calib_sd=np.ones(n), readout=np.zeros((n, 0)),
                        ncsnr=zeros, noise_sd=zeros, drift_sd=zeros)


@dataclass
class SharedCode:
    """The world's shared representation: top principal components of the archetype units' responses."""

    units: SubjectModel
    axes: np.ndarray  # (n_units, code_dims) principal axes
    scale: np.ndarray  # (code_dims,) sd of each component over the calibration scenes

    def encode(self, features: ImageFeatures, grid: int) -> np.ndarray:
        """(n_images, code_dims): zero mean, unit variance, uncorrelated over the calibration scenes."""
        return self.units.tuning_response(features, grid) @ self.axes / self.scale

    @classmethod
    def fit(cls, archetypes: dict[str, np.ndarray], features: ImageFeatures, grid: int, dims: int) -> "SharedCode":
        units = archetype_units(archetypes)
        response = standardise(units, features, grid)
        if dims > min(response.shape):
            raise ValueError(f"code_dims={dims} exceeds the {min(response.shape)} components available "
                             f"(archetype units x calibration images); lower code_dims")
        _, singular, vt = np.linalg.svd(response - response.mean(0), full_matrices=False)
        axes = vt[:dims].T
        return cls(units, axes, (response - response.mean(0)).dot(axes).std(axis=0))

    def save(self, path: Path) -> None:
        self.units.save(path, {"code_axes": self.axes, "code_scale": self.scale})

    @classmethod
    def load(cls, path: Path) -> "SharedCode":
        units, extra = SubjectModel.load(path)
        return cls(units, extra["code_axes"], extra["code_scale"])


def fit_readout(subject: SubjectModel, code: SharedCode, features: ImageFeatures, grid: int) -> None:
    """Each voxel's read-out of the code: its tuning response regressed on the code over the calibration
    scenes, rescaled so the signal has unit variance there (the code's components are uncorrelated)."""
    tuning = standardise(subject, features, grid)
    z = code.encode(features, grid)
    z = z - z.mean(0)
    weights, *_ = np.linalg.lstsq(z, tuning, rcond=None)  # (code_dims, V)
    weights /= np.maximum((z @ weights).std(axis=0), 1e-6)
    subject.readout = weights.T
