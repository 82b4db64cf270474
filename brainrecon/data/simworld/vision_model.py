"""The vision model a simulated world's mid- and high-level voxels read.

Real high-level visual cortex is well predicted by CLIP image features (Wang et al., "Better
models of human high-level visual cortex emerge from natural language supervision with a large
and diverse dataset", Nature Machine Intelligence 2023), and that is the assumption every
CLIP-space decoder rests on. A world whose voxels encode only hand-crafted features that the
decoders' CLIP barely carries caps every method far below its oracle for a reason NSD does not
have. So, by default, a world's mid-level voxels pool the CLIP tower's patch tokens over
retinotopic receptive fields and its high-level voxels read the pooled embedding.

The tower comes from a local directory (``vision_model`` in the world config; "simworld" is the
shipped small CLIP). Features are normalised with statistics of the world's calibration scenes
(fixed by the seed, never the stimuli), and the directory's weights are hashed into the store's
manifest, so a world is always tied to the exact model that drove it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from brainrecon.clip_image import ClipImageEmbedder
from brainrecon.errors import ConfigError
from brainrecon.io import sha256_file
from brainrecon.pretrained import resolve_model_dir

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weights_sha256(model_dir: Path) -> str:
    """One sha256 over the model's config and weight files (names and contents), in name order."""
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES
                                                                      or p.name == "config.json"))
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise ConfigError(f"vision_model: {model_dir} holds no weight file (*.safetensors or *.bin); give the "
                          f"directory a transformers CLIP model was saved to")
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{sha256_file(file)}\0".encode())
    return digest.hexdigest()


@dataclass
class FeatureNormaliser:
    """Centre each channel and divide by one global sd, so a random unit read-out has unit variance."""

    patch_mean: np.ndarray  # (C,)
    patch_scale: float
    pooled_mean: np.ndarray  # (D,)
    pooled_scale: float

    @classmethod
    def fit(cls, patches: torch.Tensor, pooled: torch.Tensor) -> "FeatureNormaliser":
        """From raw calibration features: patches (n, C, g, g), pooled (n, D)."""
        p = patches.double().transpose(0, 1).flatten(1)  # (C, n*g*g)
        patch_mean = p.mean(1)
        pooled64 = pooled.double()
        return cls(patch_mean.numpy(), float((p - patch_mean[:, None]).std()),
                   pooled64.mean(0).numpy(), float((pooled64 - pooled64.mean(0)).std()))

    def apply(self, patches: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.as_tensor(self.patch_mean, dtype=torch.float32)[None, :, None, None]
        return ((patches - mean) / self.patch_scale,
                (pooled - torch.as_tensor(self.pooled_mean, dtype=torch.float32)) / self.pooled_scale)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"patch_mean": self.patch_mean, "patch_scale": np.asarray([self.patch_scale]),
                "pooled_mean": self.pooled_mean, "pooled_scale": np.asarray([self.pooled_scale])}


class VisionModel:
    """A CLIP image tower: post-layernorm patch tokens on the model's patch grid, and the pooled embedding."""

    # 32 images a batch: the same bytes as any other batch size (each image's forward pass is its own), and
    # 1.4x faster on CPU than 256, whose 30 MB activations glibc maps and unmaps on every layer (page faults)
    def __init__(self, value: str, batch_size: int = 32):
        self.value = value
        self.path = resolve_model_dir(value, "vision_model", "clip", label="vision_model")
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise ConfigError(f"vision_model: {self.path} has no config.json; give the directory a transformers "
                              f"CLIP model (CLIPModel or CLIPVisionModelWithProjection) was saved to")
        self.sha256 = weights_sha256(self.path)
        try:
            self.embedder = ClipImageEmbedder(self.path, batch_size=batch_size, token_style="open_clip")
        except Exception as error:  # noqa: BLE001 - a foreign directory can fail in many ways; name it
            raise ConfigError(f"vision_model: {self.path} could not be loaded as a CLIP image tower "
                              f"({type(error).__name__}: {error}); give a transformers CLIP model directory") from error
        vision = self.embedder.model.config
        if vision.image_size % vision.patch_size:
            raise ConfigError(f"vision_model: {self.path} has image_size {vision.image_size} not divisible by "
                              f"patch_size {vision.patch_size}; its patch tokens do not form a square grid")
        self.grid = vision.image_size // vision.patch_size
        self.token_dim = vision.hidden_size
        self.pooled_dim = self.embedder.dim
        self.normaliser: FeatureNormaliser | None = None

    def describe(self) -> dict:
        """What the store's manifest records about the model that drove the world."""
        return {"value": self.value, "path": str(self.path), "weights_sha256": self.sha256,
                "patch_grid": self.grid, "token_dim": self.token_dim, "pooled_dim": self.pooled_dim}

    def raw_features(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images -> patch tokens (n, C, g, g) and pooled embeddings (n, D), float32."""
        tokens, pooled = self.embedder.embed(images)
        patches = torch.from_numpy(tokens).reshape(len(images), self.grid, self.grid, self.token_dim)
        return patches.permute(0, 3, 1, 2).contiguous(), torch.from_numpy(pooled)

    def calibrate(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit the normaliser on the calibration scenes; return their normalised features."""
        patches, pooled = self.raw_features(images)
        self.normaliser = FeatureNormaliser.fit(patches, pooled)
        return self.normaliser.apply(patches, pooled)

    def features(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.normaliser is None:
            raise RuntimeError("call calibrate() on the calibration scenes before features()")
        return self.normaliser.apply(*self.raw_features(images))
