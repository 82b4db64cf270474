"""Virtual subjects: an explicit voxel-wise encoding model with shared archetypes.

Every voxel is one of three kinds, each a linear read-out of fixed image
features followed by a kind-specific nonlinearity:

- low:  Gabor energy (4 orientations x 3 scales) pooled over a Gaussian
        retinotopic receptive field, then a compressive square root
        (the classic V1 energy / compressive-spatial-summation model);
- mid:  the vision model's patch tokens pooled over a larger retinotopic
        receptive field, read out along a tuning direction, then rectified
        (softplus); in the hand-crafted control world, colour-opponent and
        texture statistics read out with signed weights;
- high: the vision model's pooled embedding along a tuning direction through a
        softplus (category-selective cortex is well predicted by CLIP); in the
        control world, semantic content (visible categories, colours, count,
        background).

The vision model is a CLIP image tower from a local directory (see
``vision_model.py``); with ``vision_model: null`` the world is the earlier,
hand-crafted one, kept as a control.

Voxels are drawn around tuning *archetypes* shared by all subjects; each
subject adds its own deviations, voxel count, voxel order and noise levels.
That shared-plus-individual structure is what multi-subject models exploit.

The archetypes, evaluated as a population of model units, define the world's
**shared code**: the top ``code_dims`` principal components of their responses
over a fixed calibration set of scenes. Each voxel's signal is its tuning model
projected onto that code (the best linear read-out of the code, over the
calibration scenes), standardised to zero mean and unit variance. The code's
components are whitened, or (``code_scaling: natural``) keep their share of
the population's variance, so that, as in cortex, the stimulus directions that
drive many units strongly are read more reliably than weak ones under the
same code noise. A
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
from brainrecon.errors import ConfigError
from brainrecon.rng import derive_rng

KINDS = ("low", "mid", "high")
N_SEMANTIC = len(SEMANTIC_FEATURES)
N_MID = len(vision.COLOUR_CHANNELS)
# A code axis whose singular value is below this fraction of the largest is float noise, not a direction the
# calibration scenes vary along
UNDETERMINED = 1e-6


@dataclass(frozen=True)
class ImageFeatures:
    low: torch.Tensor  # (n, GABOR_CHANNELS * grid * grid)
    mid: torch.Tensor  # (n, N_MID * grid * grid)
    semantic: torch.Tensor  # (n, N_SEMANTIC)
    patches: torch.Tensor | None = None  # (n, C, g, g): the vision model's normalised patch tokens
    pooled: torch.Tensor | None = None  # (n, D): its normalised pooled embedding


def image_features(images: np.ndarray, semantic: np.ndarray, grid: int, vision_model=None,
                   vision_features: tuple | None = None) -> ImageFeatures:
    """Gabor energy, plus either the hand-crafted colour/texture maps or, when a calibrated
    ``VisionModel`` is given, its features (which mid-level voxels then read instead).
    ``vision_features``: those features when the caller has them already (the calibration scenes)."""
    if vision_features is None and vision_model is not None:
        vision_features = vision_model.features(np.asarray(images))
    patches, pooled = vision_features if vision_features is not None else (None, None)
    low, mid = [], []
    step = vision.images_per_batch(images.shape[1])
    for start in range(0, len(images), step):
        pixels = vision.to_float_images(images[start:start + step])
        energy = vision.gabor_energy(pixels)
        low.append(vision.pool_grid(energy, grid).flatten(1))
        if vision_model is None:
            mid.append(vision.pool_grid(vision.colour_texture_maps(pixels, energy), grid).flatten(1))
    return ImageFeatures(low=torch.cat(low), mid=torch.cat(mid) if mid else torch.zeros(len(images), 0),
                         semantic=torch.as_tensor(np.asarray(semantic, dtype=np.float32)),
                         patches=patches, pooled=pooled)


# -- archetypes ------------------------------------------------------------------------------------


def feature_covariance(features: ImageFeatures) -> tuple[np.ndarray, np.ndarray]:
    """(token channels', pooled embedding's) covariance over the calibration scenes' normalised vision
    features; the token channels' is over every patch position."""
    tokens = features.patches.double().transpose(0, 1).flatten(1)  # (C, n * g * g)
    return np.cov(tokens.numpy()), np.cov(features.pooled.double().numpy(), rowvar=False)


def _directions(rng: np.random.Generator, k: int, width: int,
                covariance: np.ndarray | None, orthogonal: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """``k`` unit tuning directions, and (with a covariance) each one's gain.

    Isotropic: uniform on the sphere. Orthogonal: each run of ``width`` directions is an orthonormal basis
    (a random rotation), so the units tile the space evenly instead of crowding some directions by chance.
    From a covariance C: z C^(1/2) with z standard normal, so units prefer the directions the features vary
    most along, each scaled by a gain that gives its read-out unit variance over the calibration scenes
    (as a random unit direction has on average)."""
    directions = rng.normal(size=(k, width))
    if orthogonal:  # the same draws, rotated onto orthonormal rows (signs fixed so the rotation is unique)
        for start in range(0, k, width):
            q, r = np.linalg.qr(directions[start:start + width].T)
            directions[start:start + width] = (q * np.sign(np.diag(r))).T
    if covariance is not None:
        values, vectors = np.linalg.eigh(covariance)
        directions = directions @ (vectors * np.sqrt(values.clip(0))) @ vectors.T
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    if covariance is None:
        return directions, None
    return directions, 1.0 / np.sqrt(np.einsum("kd,de,ke->k", directions, covariance, directions))


def make_archetypes(config: WorldConfig, rng: np.random.Generator, vision_dims: tuple[int, int] | None = None,
                    covariance: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Shared tuning archetypes. ``vision_dims`` = (token width, pooled width) of the vision model the
    mid/high archetypes read; None draws the hand-crafted control world's archetypes. ``covariance``
    (token channels', pooled embedding's; ``vision_tuning: feature_covariance``) shapes the mid and high
    tuning directions: their archetypes then also carry each direction's gain (``mid_gain``, ``high_gain``)."""
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
    token_cov, pooled_cov = covariance if covariance is not None else (None, None)
    tuning_mid, mid_gain = _directions(rng, k_mid, N_MID if vision_dims is None else vision_dims[0], token_cov)
    low = {"low_centre": centre_low, "low_size": size_low, "low_tuning": tuning_low,
           "mid_centre": centre_mid, "mid_size": size_mid, "mid_tuning": tuning_mid}
    if vision_dims is not None:
        # a unit direction in the pooled embedding: features are normalised by one global sd, so a random
        # one's response to a scene has about unit variance (a covariance-shaped one gets a gain that
        # gives it exactly that), and the softplus rectifies it around a threshold drawn per archetype
        weights_high, high_gain = _directions(rng, k_high, vision_dims[1], pooled_cov,
                                              config.vision_tuning == "orthogonal")
        gains = {} if covariance is None else {"mid_gain": mid_gain, "high_gain": high_gain}
        return low | gains | {"high_weights": weights_high, "high_bias": rng.normal(-0.5, 0.3, k_high),
                              "reads_vision_model": np.ones(1)}

    weights_high = rng.normal(0, 0.3, size=(k_high, N_SEMANTIC))
    for k in range(k_high):  # each high-level archetype prefers one or two categories
        preferred = rng.choice(len(CATEGORIES), size=rng.integers(1, 3), replace=False)
        weights_high[k, preferred] = rng.uniform(1.5, 3.0, size=preferred.size)
    bias_high = rng.normal(-0.5, 0.3, k_high)
    return low | {"high_weights": weights_high, "high_bias": bias_high}


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
        if mid.size and features.patches is not None:
            out[:, mid] = torch.nn.functional.softplus(2 * self._pooled_tokens(mid, features.patches))
        elif mid.size:
            out[:, mid] = features.mid @ self._pooling_weights(mid, self.tuning_mid[mid], grid)
        if high.size:
            content = features.pooled if features.pooled is not None else features.semantic
            if content.shape[1] != self.weights_high.shape[1]:
                raise ValueError(f"high-level voxels read {self.weights_high.shape[1]} features but the images "
                                 f"have {content.shape[1]}: the world was built with another vision model")
            drive = content @ torch.as_tensor(self.weights_high[high].T, dtype=torch.float32)
            out[:, high] = torch.nn.functional.softplus(2 * (drive + torch.as_tensor(self.bias_high[high], dtype=torch.float32)))
        return out.numpy().astype(np.float64)

    def _receptive_fields(self, voxels: np.ndarray, grid: int) -> np.ndarray:
        """(len(voxels), grid, grid): each voxel's Gaussian receptive field on a grid, summing to 1."""
        cells = (np.arange(grid) + 0.5) / grid
        sd = self.size[voxels][:, None]
        wx = np.exp(-((cells[None] - self.centre[voxels, 0:1]) ** 2) / (2 * sd ** 2))
        wy = np.exp(-((cells[None] - self.centre[voxels, 1:2]) ** 2) / (2 * sd ** 2))
        rf = wy[:, :, None] * wx[:, None, :]
        return rf / rf.sum(axis=(1, 2), keepdims=True)

    def _pooling_weights(self, voxels: np.ndarray, tuning: np.ndarray, grid: int) -> torch.Tensor:
        """(channels * grid * grid, len(voxels)): tuning over channels x Gaussian receptive field."""
        weights = tuning[:, :, None, None] * self._receptive_fields(voxels, grid)[:, None]  # (V, channels, g, g)
        return torch.as_tensor(weights.reshape(len(voxels), -1).T, dtype=torch.float32)

    def _pooled_tokens(self, voxels: np.ndarray, patches: torch.Tensor, block: int = 64) -> torch.Tensor:
        """(n, len(voxels)): patch tokens pooled over each voxel's receptive field, read along its tuning.

        Pooled per voxel first, then projected, in blocks of images, so memory stays at
        block x channels x voxels rather than channels x grid^2 x voxels."""
        n, channels, grid, _ = patches.shape
        if channels != self.tuning_mid.shape[1]:
            raise ValueError(f"mid-level voxels read {self.tuning_mid.shape[1]} token channels but the images "
                             f"have {channels}: the world was built with another vision model")
        rf = torch.as_tensor(self._receptive_fields(voxels, grid).reshape(len(voxels), -1).T, dtype=torch.float32)
        tuning = torch.as_tensor(self.tuning_mid[voxels].T, dtype=torch.float32)  # (C, V)
        out = torch.empty(n, len(voxels))
        for start in range(0, n, block):
            pooled = patches[start:start + block].flatten(2) @ rf  # (b, C, V)
            out[start:start + block] = (pooled * tuning).sum(1)
        return out


def mean_squared_session_position(trials_per_session: int) -> float:
    """E[u^2] for u running linearly from -1 to 1 over a session: how drift variance averages out."""
    u = session_position(np.arange(trials_per_session), trials_per_session)
    return float(np.mean(u ** 2))


def session_position(index_in_session: np.ndarray, trials_per_session: int) -> np.ndarray:
    half = (trials_per_session - 1) / 2
    return (index_in_session - half) / half


def subject_archetypes(config: WorldConfig, index: int, shared: dict[str, np.ndarray],
                       vision_dims: tuple[int, int] | None = None,
                       covariance: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The world's archetypes, or (in a control world without commonality) the subject's own."""
    if config.shared_archetypes:
        return shared
    return make_archetypes(config, derive_rng(config.seed, "archetypes", "subject", index), vision_dims, covariance)


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
    tuning_mid = np.zeros((n_voxels, archetypes["mid_tuning"].shape[1]))
    weights_high = np.zeros((n_voxels, archetypes["high_weights"].shape[1]))
    bias_high = np.zeros(n_voxels)
    for mask, prefix in ((low, "low"), (mid, "mid")):
        n = int(mask.sum())
        centre[mask] = np.clip(archetypes[f"{prefix}_centre"][arch[mask]] + shift + rng.normal(0, 0.04 * dev, (n, 2)),
                               0.02, 0.98)
        size[mask] = archetypes[f"{prefix}_size"][arch[mask]] * np.exp(rng.normal(0, 0.3 * dev, n))
    n_low, n_mid, n_high = counts
    t = archetypes["low_tuning"][arch[low]] * np.exp(rng.normal(0, 0.6 * dev, (n_low, vision.GABOR_CHANNELS)))
    tuning_low[low] = t / t.sum(axis=1, keepdims=True)
    # vision-model tunings are unit vectors in wide spaces: their deviations are scaled so they stay the
    # same size relative to the archetype as in the hand-crafted world (whose draws are unchanged)
    mid_width, high_width = archetypes["mid_tuning"].shape[1], archetypes["high_weights"].shape[1]
    reads_vision = "reads_vision_model" in archetypes
    mid_spread = np.sqrt(N_MID / mid_width) if reads_vision else 1.0
    high_spread = 1.0 / np.sqrt(high_width) if reads_vision else 1.0
    t = archetypes["mid_tuning"][arch[mid]] + rng.normal(0, 0.6 * dev * mid_spread, (n_mid, mid_width))
    tuning_mid[mid] = t / np.linalg.norm(t, axis=1, keepdims=True)
    weights_high[high] = archetypes["high_weights"][arch[high]] + rng.normal(0, 0.5 * dev * high_spread,
                                                                             (n_high, high_width))
    if "mid_gain" in archetypes:  # covariance-shaped directions: the voxel keeps its archetype's gain
        tuning_mid[mid] *= archetypes["mid_gain"][arch[mid], None]
        weights_high[high] *= archetypes["high_gain"][arch[high], None]
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
    # plus the code noise: its variance in a voxel depends on the read-out (set_ncsnr, once it is fitted)
    ncsnr = 1.0 / np.sqrt(own_var + noise.code_noise)

    if config.voxel_layout == "random":
        order = rng.permutation(n_voxels)  # each subject has its own voxel order
    else:
        order = cortical_order(kind, centre, arch)
    return SubjectModel(kind=kind[order], archetype=arch[order].astype(np.int64), centre=centre[order],
                        size=size[order], tuning_low=tuning_low[order], tuning_mid=tuning_mid[order],
                        weights_high=weights_high[order], bias_high=bias_high[order],
                        calib_mean=np.zeros(n_voxels), calib_sd=np.ones(n_voxels),
                        readout=np.zeros((n_voxels, config.code_dims)), ncsnr=ncsnr[order],
                        noise_sd=noise_sd[order], drift_sd=drift_sd[order])


# -- voxel layout ----------------------------------------------------------------------------------

ANGLE_BINS = 16  # wedges of polar angle on the virtual cortical sheet


def _sheet_position(kind: np.ndarray, centre: np.ndarray, archetype: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, rank key) of each voxel on a virtual cortical sheet: low and mid voxels by polar angle
    (row) and eccentricity, as retinotopic maps are laid out; high voxels by archetype (a category
    patch), so neighbours share tuning as they do in cortex."""
    offset = centre - 0.5
    angle = np.arctan2(offset[:, 1], offset[:, 0])
    wedge = np.minimum((angle + np.pi) / (2 * np.pi) * ANGLE_BINS, ANGLE_BINS - 1).astype(np.int64)
    eccentricity = np.linalg.norm(offset, axis=1)
    high = kind == KINDS.index("high")
    row = np.where(high, archetype, wedge)
    return row, np.where(high, 0.0, eccentricity)


def cortical_order(kind: np.ndarray, centre: np.ndarray, archetype: np.ndarray) -> np.ndarray:
    """Voxel order of a cortex-like layout: by kind (early, mid, high areas), then sheet row, then
    eccentricity, as nsdgeneral voxels come in volume order and neighbours have neighbouring fields."""
    row, key = _sheet_position(kind, centre, archetype)
    return np.lexsort((np.arange(len(kind)), key, row, kind))


def voxel_coordinates(model: SubjectModel, layout: str) -> np.ndarray:
    """(V, 3) integer i/j/k of each voxel: k the area (kind), i the sheet row (polar-angle wedge or
    category patch), j the rank along it (by eccentricity). All -1 when the layout is random."""
    if layout == "random":
        return np.full((model.n_voxels, 3), -1, dtype=np.int64)
    row, key = _sheet_position(model.kind, model.centre, model.archetype)
    ijk = np.empty((model.n_voxels, 3), dtype=np.int64)
    ijk[:, 0], ijk[:, 2] = row, model.kind
    for group in np.unique(np.stack([model.kind, row], 1), axis=0):
        members = np.flatnonzero((model.kind == group[0]) & (row == group[1]))
        ijk[members[np.argsort(key[members], kind="stable")], 1] = np.arange(members.size)
    return ijk


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
    tuning_low = np.zeros((n, vision.GABOR_CHANNELS))
    tuning_mid = np.zeros((n, archetypes["mid_tuning"].shape[1]))
    weights_high, bias_high = np.zeros((n, archetypes["high_weights"].shape[1])), np.zeros(n)
    tuning_low[low], tuning_mid[mid] = archetypes["low_tuning"], archetypes["mid_tuning"]
    weights_high[high], bias_high[high] = archetypes["high_weights"], archetypes["high_bias"]
    if "mid_gain" in archetypes:
        tuning_mid[mid] *= archetypes["mid_gain"][:, None]
        weights_high[high] *= archetypes["high_gain"][:, None]
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
        """(n_images, code_dims): zero mean and uncorrelated over the calibration scenes; unit variance
        (whitened) or mean variance 1 across components (natural)."""
        return self.units.tuning_response(features, grid) @ self.axes / self.scale

    @classmethod
    def fit(cls, archetypes: dict[str, np.ndarray], features: ImageFeatures, grid: int, dims: int,
            scaling: str = "whitened") -> "SharedCode":
        units = archetype_units(archetypes)
        response = standardise(units, features, grid)
        if dims > min(response.shape):
            raise ConfigError(f"code_dims={dims} exceeds the {min(response.shape)} components available "
                              f"(archetype units x calibration images); lower code_dims")
        _, singular, vt = np.linalg.svd(response - response.mean(0), full_matrices=False)
        determined = int((singular > UNDETERMINED * singular[0]).sum())
        if dims > determined:
            # an axis the scenes do not vary along is whatever direction the SVD returns, which can change from
            # one run to the next, and every image's code value along it with it
            raise ConfigError(f"code_dims={dims}: the calibration scenes' responses vary along only {determined} "
                              f"directions, so the code's last axes are undetermined; lower code_dims or raise "
                              f"calibration_images")
        axes = vt[:dims].T
        scale = (response - response.mean(0)).dot(axes).std(axis=0)
        if scaling == "natural":  # one scale for all: the components keep their variance profile, mean 1
            scale = np.full_like(scale, np.sqrt(np.mean(scale ** 2)))
        return cls(units, axes, scale)

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


def set_ncsnr(subject: SubjectModel, code_noise: float, trials_per_session: int) -> None:
    """The voxel's noise-ceiling SNR, signal sd / total noise sd (the signal sd is 1), once its read-out
    is known: its own white noise and drift, plus the code noise it reads out. Isotropic code noise adds
    code_noise times the read-out's squared norm: 1 with a whitened code and a unit-variance signal;
    larger, with a natural-variance code, for a voxel that reads weak components."""
    own_var = subject.noise_sd ** 2 + subject.drift_sd ** 2 * mean_squared_session_position(trials_per_session)
    subject.ncsnr = 1.0 / np.sqrt(own_var + code_noise * (subject.readout ** 2).sum(axis=1))
