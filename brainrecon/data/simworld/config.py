"""Typed configuration of a simulated world (YAML presets in brainrecon/configs/worlds/)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from brainrecon.config import StrictConfig
from brainrecon.errors import ConfigError

# said wherever a simulated-world figure is shown (demo, simulate, evaluate, report, benchmarks)
SIMULATED_NOTE = ("Simulated world: a testbed with a known ceiling. These figures are not NSD results and are "
                  "not comparable with published tables.")


class VoxelCounts(StrictConfig):
    min: int = Field(1500, ge=10)
    max: int = Field(2500, ge=10)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min > self.max:
            raise ValueError(f"voxels.min ({self.min}) must not exceed voxels.max ({self.max})")
        return self


class VoxelMix(StrictConfig):
    """Fractions of voxels of each tuning kind (normalised to sum to 1)."""

    low: float = Field(0.45, ge=0)
    mid: float = Field(0.25, ge=0)
    high: float = Field(0.30, ge=0)


class Archetypes(StrictConfig):
    """Number of shared tuning archetypes of each kind."""

    low: int = Field(64, ge=1)
    mid: int = Field(32, ge=1)
    high: int = Field(32, ge=1)


class NoiseConfig(StrictConfig):
    """Trial-wise noise: code noise shared by all of a subject's voxels, plus each voxel's own noise.

    A voxel's noise-ceiling SNR is 1 / sqrt(code_noise + 1 / voxel_snr^2); voxel_snr is
    log-normal across voxels.
    """

    code_noise: float = Field(3.0, ge=0, description="variance of the per-trial noise in the shared code")
    median_voxel_snr: float = Field(0.6, gt=0)
    log_spread: float = Field(0.5, ge=0)
    subject_spread: float = Field(0.15, ge=0, description="log-sd of a per-subject SNR factor")
    drift_fraction: float = Field(0.15, ge=0, lt=1, description="share of the noise variance from session drift")


class SessionConfig(StrictConfig):
    """Nuisance that per-session z-scoring must remove."""

    trials_per_session: int = Field(300, ge=10)
    offset_sd: float = Field(1.0, ge=0)
    log_gain_sd: float = Field(0.25, ge=0)


class WorldConfig(StrictConfig):
    seed: int = 0
    image_size: int = Field(64, ge=32, le=256)
    n_subjects: int = Field(4, ge=1, le=8)
    n_train_images: int = Field(1500, ge=10, description="per subject, seen by that subject only")
    n_test_images: int = Field(500, ge=10, description="shared: seen by every subject")
    n_repeats: int = Field(3, ge=1)
    voxels: VoxelCounts = VoxelCounts()
    voxel_mix: VoxelMix = VoxelMix()
    archetypes: Archetypes = Archetypes()
    shared_archetypes: bool = Field(True, description="false: each subject draws its own archetypes (a control)")
    individual_deviation: float = Field(0.5, ge=0, description="scale of subject-specific deviations from archetypes")
    code_dims: int = Field(32, ge=1, description="dimensions of the shared code voxel signals live in")
    noise: NoiseConfig = NoiseConfig()
    session: SessionConfig = SessionConfig()
    betas_dtype: Literal["float32", "float16"] = "float32"
    feature_grid: int = Field(16, ge=4, le=64, description="resolution of the feature maps voxels pool over")
    calibration_images: int = Field(512, ge=64, description="images used to standardise each voxel's signal")
    vision_model: str | None = Field(
        None, description="a local CLIP directory (or 'simworld', the shipped small CLIP) whose patch tokens the "
                          "mid-level and whose pooled embedding the high-level voxels read; null: hand-crafted "
                          "colour/texture and semantic features (the control world)")
    code_scaling: Literal["whitened", "natural"] = Field(
        "whitened", description="whitened: every code component has unit variance; natural: components keep their "
                                "share of the archetype population's variance (strong feature directions carry "
                                "more signal than weak ones at the same code noise)")
    vision_tuning: Literal["isotropic", "feature_covariance", "orthogonal"] = Field(
        "isotropic", description="how archetypes' tuning directions in the vision model's spaces are drawn: "
                                 "isotropic (uniform on the sphere); orthogonal (high-level directions in the "
                                 "pooled embedding form orthonormal bases, tiling it evenly); feature_covariance "
                                 "(mid and high directions drawn from the features' covariance over the "
                                 "calibration scenes, so more units prefer the directions natural images vary "
                                 "most along, each read-out scaled to unit variance)")
    voxel_layout: Literal["random", "cortical"] = Field(
        "random", description="voxel order and coordinates: random (no locality), or cortical (by kind, then "
                              "retinotopy or category patch, with i/j/k coordinates in voxels.csv)")

    @model_validator(mode="after")
    def _vision_model_named(self):
        if self.vision_model is not None and not self.vision_model.strip():
            raise ValueError("vision_model must name a local CLIP directory or 'simworld' (or be null)")
        if self.vision_model is None and self.vision_tuning != "isotropic":
            raise ValueError(f"vision_tuning: {self.vision_tuning} shapes tunings in a vision model's feature "
                             f"spaces, but vision_model is null; name a vision model or use isotropic")
        return self

    @model_validator(mode="after")
    def _code_fits_the_calibration_scenes(self):
        # the code is the top principal axes of the calibration scenes' responses; centred, n scenes span at most
        # n - 1 directions, and an axis beyond them is whatever direction the SVD returns (it differed between two
        # builds of one world on one machine)
        if self.code_dims >= self.calibration_images:
            raise ValueError(f"code_dims ({self.code_dims}) must be below calibration_images "
                             f"({self.calibration_images}): the code's axes are principal axes of the calibration "
                             f"scenes, which span at most calibration_images - 1 directions; raise "
                             f"calibration_images or lower code_dims")
        return self
    chunk_images: int = Field(512, ge=16, description="images rendered and encoded at a time (memory bound)")


def check_way(config: WorldConfig, way: int) -> None:
    """Refuse, from the config alone, N-way retrieval on a world with fewer than N test images."""
    if way > config.n_test_images:
        raise ConfigError(f"{way}-way retrieval needs at least {way} test items, but the world has "
                          f"{config.n_test_images} test images; lower --way or raise n_test_images")
