"""A fixed, training-free image embedding: coarse Gabor energy and colour maps.

It stands in for CLIP as a decoding target until learned embedders are
available (and stays useful as a low-level baseline, in the spirit of the
Gabor-wavelet models of Kay et al. 2008). It sees pixels only: nothing from
the simulator's scene descriptions or ground truth.
"""

from __future__ import annotations

import numpy as np
import torch

from brainrecon import vision


class LowLevelEmbedder:
    """Images (n, H, W, 3) uint8 -> (n, (12 + 3) * grid^2) float32 features."""

    def __init__(self, grid: int = 4):
        self.grid = grid

    @property
    def dim(self) -> int:
        return (vision.GABOR_CHANNELS + 3) * self.grid ** 2

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = []
        step = vision.images_per_batch(images.shape[1])
        for start in range(0, len(images), step):
            pixels = vision.to_float_images(np.asarray(images[start:start + step]))
            energy = vision.gabor_energy(pixels)
            colour = vision.colour_texture_maps(pixels, energy)[:, :3]  # luminance, red-green, blue-yellow
            maps = torch.cat([torch.sqrt(energy), colour], dim=1)
            out.append(vision.pool_grid(maps, self.grid).flatten(1).numpy())
        return np.concatenate(out).astype(np.float32)
