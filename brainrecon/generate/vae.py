"""The VAE alone: images <-> latents (MindEye's low-level "blurry" path).

MindEye regresses brain activity onto Stable-Diffusion VAE latents and decodes
them to a blurry image that later seeds img2img. `VaePath` gives the two
halves of that: `encode` for training targets, `decode` for predictions.
Latents are scaled by the VAE's `scaling_factor` (0.18215 for SD), the
convention the UNets and MindEye's targets use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from brainrecon.generate.base import (
    images_to_tensor,
    tensor_to_images,
)
from brainrecon.pretrained import require_local_dir


class VaePath:
    """An AutoencoderKL loaded from a local directory (or a pipeline dir's `vae/` subfolder)."""

    def __init__(self, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 batch_size: int = 8, subfolder: str | None = None):
        from diffusers import AutoencoderKL

        folder = require_local_dir(path, "VaePath(path)")
        if subfolder is None and not (folder / "config.json").exists() and (folder / "vae").is_dir():
            subfolder = "vae"  # a whole pipeline directory was given: use its VAE
        self.vae = AutoencoderKL.from_pretrained(folder, subfolder=subfolder, local_files_only=True,
                                                 dtype=dtype).to(device).eval()
        self.device, self.dtype, self.batch_size = device, dtype, batch_size

    @classmethod
    def from_model(cls, vae, batch_size: int = 8) -> VaePath:
        """Wrap an already loaded AutoencoderKL (e.g. a generator's own)."""
        self = cls.__new__(cls)
        self.vae, self.batch_size = vae, batch_size
        parameter = next(vae.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        return self

    @property
    def scale_factor(self) -> int:
        """Pixels per latent cell along each side (8 for SD's VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @torch.no_grad()
    def encode(self, images: np.ndarray, sample: bool = False, seed: int = 0) -> torch.Tensor:
        """uint8 (n, H, W, 3) -> scaled latents (n, C, H/f, W/f), float32 on CPU.

        The posterior mean is used by default so encoding is deterministic;
        `sample=True` draws from the posterior with per-image seeds seed + i.
        """
        images = np.asarray(images)
        height, width = images.shape[1:3]
        out = []
        for start in range(0, len(images), self.batch_size):
            pixels = images_to_tensor(images[start:start + self.batch_size], height, width, self.device, self.dtype)
            out.append(self._encode_pixels(pixels, sample, seed + start).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor | np.ndarray) -> np.ndarray:
        """Scaled latents (n, C, h, w) -> uint8 images (n, h*f, w*f, 3)."""
        latents = torch.as_tensor(latents)
        out = [tensor_to_images(self.decode_to_pixels(latents[start:start + self.batch_size]))
               for start in range(0, len(latents), self.batch_size)]
        return np.concatenate(out)

    def _encode_pixels(self, pixels: torch.Tensor, sample: bool, seed: int) -> torch.Tensor:
        posterior = self.vae.encode(pixels).latent_dist
        if sample:
            generators = [torch.Generator(device=pixels.device).manual_seed(seed + i) for i in range(len(pixels))]
            noise = torch.stack([torch.randn(posterior.mean.shape[1:], generator=g, device=pixels.device)
                                 for g in generators]).to(pixels.dtype)
            latents = posterior.mean + posterior.std * noise
        else:
            latents = posterior.mean
        return self._scale(latents)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """float (n, 3, H, W) in [-1, 1] -> scaled posterior-mean latents (used by img2img)."""
        return self._encode_pixels(pixels, sample=False, seed=0)

    def decode_to_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> float pixels in about [-1, 1]."""
        latents = latents.to(self.device, self.dtype)
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return self.vae.decode(latents / self.vae.config.scaling_factor + shift, return_dict=False)[0]

    def _scale(self, latents: torch.Tensor) -> torch.Tensor:
        # SD-style VAEs only scale; newer ones (SD3, Flux) also shift
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * self.vae.config.scaling_factor
