"""The one interface every image generator implements, plus shared helpers.

A generator turns predicted embeddings (and optionally a low-level "blurry"
init image) into uint8 images. Concrete generators wrap real pretrained
diffusion models loaded from local directories:

- :mod:`brainrecon.generate.unclip` — SD-unCLIP, conditioned on pooled CLIP
  image embeddings (MindEye2-style).
- :mod:`brainrecon.generate.versatile` — Versatile-Diffusion-style dual
  guidance from CLIP image tokens and CLIP text tokens (MindEye1, MindBridge,
  Psychometry, Brain-Diffuser).
- :mod:`brainrecon.generate.vae` — the VAE alone (MindEye's low-level path).

Pretrained weights are never downloaded: every path argument must be an
existing local directory, checked by :func:`brainrecon.pretrained.require_local_dir`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class GenerationRequest:
    """Everything a generator needs for one batch of n images.

    Which conditioning fields are required depends on the generator: SD-unCLIP
    reads `image_pooled`; Versatile Diffusion reads `image_tokens` and/or
    `text_tokens`, mixed by `mix_ratio` (the share given to text: 0 = image
    only as in MindEye1, 0.5 as in MindBridge/Psychometry).

    With `init_images` (uint8 (n, H, W, 3), e.g. the low-level blurry
    reconstruction) generation is img2img: the init image is encoded, noised to
    `strength` of the way along the schedule, and only that last fraction of
    the `steps` is denoised (strength 1 ignores the init image, 0 returns its
    VAE round trip). Sample i is seeded with `seed + i`, so an image does not
    depend on the batch it was generated in.
    """

    image_tokens: ArrayLike | None = None   # (n, n_image_tokens, dim), VD-normalised
    image_pooled: ArrayLike | None = None   # (n, dim), CLIP image_embeds
    text_tokens: ArrayLike | None = None    # (n, n_text_tokens, dim), VD-normalised
    init_images: np.ndarray | None = None   # uint8 (n, H, W, 3)
    strength: float = 1.0
    steps: int = 20
    guidance_scale: float = 3.5
    seed: int = 0
    mix_ratio: float = 0.0
    height: int | None = None
    width: int | None = None

    def __post_init__(self):
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must lie in [0, 1], got {self.strength}")
        if not 0.0 <= self.mix_ratio <= 1.0:
            raise ValueError(f"mix_ratio must lie in [0, 1], got {self.mix_ratio}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        sizes = {name: len(value) for name, value in self._batched_fields() if value is not None}
        if not sizes:
            raise ValueError("a GenerationRequest needs at least one of image_tokens, image_pooled, "
                             "text_tokens or init_images")
        if len(set(sizes.values())) > 1:
            raise ValueError(f"batch sizes disagree across request fields: {sizes}")
        if self.init_images is not None:
            images = np.asarray(self.init_images)
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"init_images must be uint8 (n, H, W, 3), got {images.dtype} {images.shape}")

    def _batched_fields(self):
        return [("image_tokens", self.image_tokens), ("image_pooled", self.image_pooled),
                ("text_tokens", self.text_tokens), ("init_images", self.init_images)]

    @property
    def n(self) -> int:
        return next(len(value) for _, value in self._batched_fields() if value is not None)


class Generator(abc.ABC):
    """Turns a GenerationRequest into uint8 images (n, H, W, 3)."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> np.ndarray:
        ...


# ---------------------------------------------------------------------------
# helpers shared by the diffusion generators


def quiet_model_loading() -> None:
    """Silence transformers/diffusers load bars and notices: in a command's output they drown the results."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_progress_bar()
        library.set_verbosity_error()


def as_tensor(value: ArrayLike, device, dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value).to(device, dtype)


def images_to_tensor(images: np.ndarray, height: int, width: int, device, dtype) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> float (n, 3, height, width) in [-1, 1], resized (bicubic) when needed."""
    from PIL import Image

    images = np.asarray(images)
    if images.shape[1:3] != (height, width):
        images = np.stack([np.asarray(Image.fromarray(im).resize((width, height), Image.BICUBIC))
                           for im in images])
    pixels = torch.from_numpy(images.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return pixels.to(device, dtype)


def tensor_to_images(pixels: torch.Tensor) -> np.ndarray:
    """float (n, 3, H, W) in [-1, 1] -> uint8 (n, H, W, 3), rounded rather than truncated."""
    pixels = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round()
    return pixels.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


def sample_generators(seed: int, n: int, device="cpu") -> list[torch.Generator]:
    """One generator per sample (seed + i): sample i's noise never depends on the batch size."""
    return [torch.Generator(device=device).manual_seed(seed + i) for i in range(n)]


def per_sample_noise(shape: Sequence[int], generators: list[torch.Generator], device, dtype) -> torch.Tensor:
    return torch.stack([torch.randn(tuple(shape), generator=g, device=g.device, dtype=torch.float32)
                        for g in generators]).to(device, dtype)


def run_denoising(predict_noise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler,
                  steps: int, noise: torch.Tensor, init_latents: torch.Tensor | None, strength: float,
                  generators: list[torch.Generator]) -> torch.Tensor:
    """The sampling loop shared by the generators, with img2img truncation.

    Without init latents this is plain sampling from pure noise. With them, the
    schedule is cut so that only the last round(steps * strength) steps run,
    starting from the init latents noised to the first of those timesteps —
    the standard SDEdit/img2img recipe. No steps (strength ~ 0) returns the
    init latents untouched.
    """
    scheduler.set_timesteps(steps, device=noise.device)
    timesteps = scheduler.timesteps
    order = getattr(scheduler, "order", 1)
    if init_latents is None:
        latents = noise * scheduler.init_noise_sigma
    else:
        n_run = min(steps, round(steps * strength))
        if n_run == 0:
            return init_latents
        start = (steps - n_run) * order
        timesteps = timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)  # multistep schedulers index their state by step
        latents = scheduler.add_noise(init_latents, noise, timesteps[:1].repeat(len(noise)))
    step_kwargs = {"generator": generators} if _accepts(scheduler.step, "generator") else {}
    for t in timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        latents = scheduler.step(predict_noise(model_input, t), t, latents, return_dict=False, **step_kwargs)[0]
    return latents


def classifier_free(noise_uncond: torch.Tensor, noise_cond: torch.Tensor, scale: float) -> torch.Tensor:
    return noise_uncond + scale * (noise_cond - noise_uncond)


def _accepts(fn, name: str) -> bool:
    import inspect

    return name in inspect.signature(fn).parameters


def latent_size(height: int | None, width: int | None, default: int, vae_scale: int) -> tuple[int, int]:
    """Output pixel size, defaulting to the UNet's native sample size; must be a multiple of the VAE scale."""
    height = height or default * vae_scale
    width = width or default * vae_scale
    if height % vae_scale or width % vae_scale:
        raise ValueError(f"height and width must be multiples of {vae_scale}, got {height}x{width}")
    return height, width


def chunks(request: GenerationRequest, batch_size: int):
    """Split a request into sub-requests of at most batch_size, seeds shifted so sample i keeps seed + i."""
    for start in range(0, request.n, batch_size):
        sliced = {name: (None if value is None else value[start:start + batch_size])
                  for name, value in request._batched_fields()}
        yield dataclasses.replace(request, seed=request.seed + start, **sliced)
