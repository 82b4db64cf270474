"""Versatile-Diffusion-style dual guidance: CLIP image tokens + CLIP text tokens.

Versatile Diffusion's dual-guided mode runs every cross-attention transformer
block of its image UNet twice — once on the image context (257 CLIP image
tokens through the image UNet's block) and once on the text context (77 CLIP
text tokens through the *text* UNet's block at the same position) — and mixes
the two residuals:

    out = x + (1 - mix) * (image_block(x, image_ctx) - x) + mix * (text_block(x, text_ctx) - x)

`mix` is the share of text (diffusers' `text_to_image_strength`, MindEye's
`text_image_ratio`; 0 = image only). This is rebuilt here from components
(UNet + VAE + scheduler) rather than through diffusers' deprecated
`VersatileDiffusionDualGuidedPipeline`, so brain-predicted tokens can be fed
directly and img2img at a strength is possible (MindEye1: strength 0.85 from
the blurry image).

Classifier-free guidance uses an unconditional context; by default all-zero
tokens (as MindBridge/Psychometry do). The original VD pipeline instead uses
the embeddings of an empty prompt and a mid-grey image; pass those as
`uncond_image_tokens` / `uncond_text_tokens` to reproduce it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from brainrecon.generate.base import (
    GenerationRequest,
    Generator,
    as_tensor,
    chunks,
    classifier_free,
    images_to_tensor,
    latent_size,
    per_sample_noise,
    run_denoising,
    sample_generators,
    tensor_to_images,
)
from brainrecon.generate.vae import VaePath
from brainrecon.pretrained import require_local_dir


class DualCrossAttention(nn.Module):
    """Replaces one Transformer2DModel: image and text contexts through their own blocks, residuals mixed.

    The context passed by the UNet is [image tokens | text tokens] concatenated
    along the token axis; `n_image_tokens` and `mix_ratio` are set before each
    UNet call by VersatileGenerator.
    """

    def __init__(self, image_block: nn.Module, text_block: nn.Module):
        super().__init__()
        self.image_block, self.text_block = image_block, text_block
        self.n_image_tokens = 0
        self.mix_ratio = 0.0

    def forward(self, hidden_states, encoder_hidden_states=None, return_dict=False, **kwargs):
        kwargs.pop("encoder_attention_mask", None)  # a mask would not match the split contexts
        image_context = encoder_hidden_states[:, :self.n_image_tokens]
        text_context = encoder_hidden_states[:, self.n_image_tokens:]
        out = hidden_states
        # skip a block whose weight is zero: MindEye1's image-only setting costs one pass, not two
        if self.mix_ratio < 1.0:
            image_out = self.image_block(hidden_states, encoder_hidden_states=image_context,
                                         return_dict=False, **kwargs)[0]
            out = out + (1.0 - self.mix_ratio) * (image_out - hidden_states)
        if self.mix_ratio > 0.0:
            text_out = self.text_block(hidden_states, encoder_hidden_states=text_context,
                                       return_dict=False, **kwargs)[0]
            out = out + self.mix_ratio * (text_out - hidden_states)
        return (out,)


def install_dual_attention(image_unet: nn.Module, text_unet: nn.Module | None) -> list[DualCrossAttention]:
    """Swap every Transformer2DModel of image_unet for a DualCrossAttention.

    The text block is the text UNet's block at the same module path (as in
    Versatile Diffusion). Without a text UNet the image UNet's own block also
    reads the text context — an approximation for UNets trained on one context
    type, useful for tests and text-free (mix 0) use.
    """
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    targets = [name for name, module in image_unet.named_modules() if isinstance(module, Transformer2DModel)]
    duals = []
    for name in targets:
        parent_name, index = name.rsplit(".", 1)
        image_block = image_unet.get_submodule(name)
        text_block = text_unet.get_submodule(name) if text_unet is not None else image_block
        dual = DualCrossAttention(image_block, text_block)
        image_unet.get_submodule(parent_name)[int(index)] = dual
        duals.append(dual)
    if not duals:
        raise ValueError("the image UNet has no cross-attention transformer blocks to condition on tokens")
    return duals


def _load_unet(folder: Path, subfolder: str, dtype: torch.dtype) -> nn.Module:
    """Load a UNet by the class named in its config (VD's text UNet is the deprecated UNetFlatConditionModel)."""
    from diffusers import UNet2DConditionModel

    class_name = json.loads((folder / subfolder / "config.json").read_text()).get("_class_name")
    cls = UNet2DConditionModel
    if class_name == "UNetFlatConditionModel":
        from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import (
            UNetFlatConditionModel,
        )
        cls = UNetFlatConditionModel
    return cls.from_pretrained(folder, subfolder=subfolder, local_files_only=True, dtype=dtype)


def _load_scheduler(folder: Path, class_name: str | None):
    """The saved scheduler, or another diffusers scheduler class built from the same config (e.g. UniPC)."""
    import diffusers

    if class_name is None:
        class_name = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise ValueError(f"diffusers has no scheduler class {class_name!r}")
    return cls.from_pretrained(folder, subfolder="scheduler", local_files_only=True)


class VersatileGenerator(Generator):
    """Dual-guided generation from a local Versatile-Diffusion-style components directory.

    Layout: `image_unet/`, `vae/`, `scheduler/` and, for true dual guidance,
    `text_unet/` (the layout of a diffusers Versatile Diffusion save;
    other subfolders are ignored). `scheduler` names a diffusers scheduler class
    to build from the saved scheduler config, e.g. "UniPCMultistepScheduler"
    as MindEye/MindBridge use.
    """

    def __init__(self, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 batch_size: int = 4, scheduler: str | None = None,
                 uncond_image_tokens: torch.Tensor | np.ndarray | None = None,
                 uncond_text_tokens: torch.Tensor | np.ndarray | None = None):
        folder = require_local_dir(path, "VersatileGenerator(path)", expect=("image_unet", "vae", "scheduler"))
        self.unet = _load_unet(folder, "image_unet", dtype)
        text_unet = _load_unet(folder, "text_unet", dtype) if (folder / "text_unet").is_dir() else None
        self.duals = install_dual_attention(self.unet, text_unet)
        del text_unet  # only its transformer blocks are kept, inside the duals
        self.unet.to(device).eval()
        self.vae = VaePath(folder, subfolder="vae", device=device, dtype=dtype)
        self.scheduler = _load_scheduler(folder, scheduler)
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.uncond_image_tokens, self.uncond_text_tokens = uncond_image_tokens, uncond_text_tokens

    @property
    def context_dim(self) -> int:
        return self.unet.config.cross_attention_dim

    def generate(self, request: GenerationRequest) -> np.ndarray:
        self._check(request)
        return np.concatenate([self._generate_batch(part) for part in chunks(request, self.batch_size)])

    def _check(self, request: GenerationRequest) -> None:
        if request.mix_ratio < 1.0 and request.image_tokens is None:
            raise ValueError(f"mix_ratio {request.mix_ratio} < 1 gives image tokens weight, "
                             "but request.image_tokens is missing")
        if request.mix_ratio > 0.0 and request.text_tokens is None:
            raise ValueError(f"mix_ratio {request.mix_ratio} > 0 gives text tokens weight, "
                             "but request.text_tokens is missing")
        for name in ("image_tokens", "text_tokens"):
            tokens = getattr(request, name)
            if tokens is not None and (np.ndim(tokens) != 3 or np.shape(tokens)[-1] != self.context_dim):
                raise ValueError(f"{name} must be (n, tokens, {self.context_dim}) for this UNet, "
                                 f"got {tuple(np.shape(tokens))}")

    def _contexts(self, request: GenerationRequest) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(conditional, unconditional) contexts [image | text] and the number of image tokens."""
        def pair(tokens, uncond_default):
            if tokens is None:  # unused side (its weight is 0): one placeholder token
                tokens = torch.zeros(request.n, 1, self.context_dim)
            cond = as_tensor(tokens, self.device, self.dtype)
            if uncond_default is None:
                return cond, torch.zeros_like(cond)
            uncond = as_tensor(uncond_default, self.device, self.dtype)
            if tuple(uncond.shape[-2:]) != tuple(cond.shape[1:]):
                raise ValueError(f"unconditional tokens {tuple(uncond.shape)} do not match the request's "
                                 f"tokens {tuple(cond.shape[1:])}")
            return cond, uncond.expand_as(cond)

        image, image_uncond = pair(request.image_tokens, self.uncond_image_tokens)
        text, text_uncond = pair(request.text_tokens, self.uncond_text_tokens)
        return torch.cat([image, text], 1), torch.cat([image_uncond, text_uncond], 1), image.shape[1]

    @torch.no_grad()
    def _generate_batch(self, request: GenerationRequest) -> np.ndarray:
        height, width = latent_size(request.height, request.width, self.unet.config.sample_size,
                                    self.vae.scale_factor)
        cond, uncond, n_image_tokens = self._contexts(request)
        for dual in self.duals:
            dual.n_image_tokens, dual.mix_ratio = n_image_tokens, request.mix_ratio
        use_cfg = request.guidance_scale > 1.0
        context = torch.cat([uncond, cond]) if use_cfg else cond

        def predict_noise(latents, t):
            batch = torch.cat([latents] * 2) if use_cfg else latents
            noise = self.unet(batch, t, encoder_hidden_states=context, return_dict=False)[0]
            return classifier_free(*noise.chunk(2), request.guidance_scale) if use_cfg else noise

        generators = sample_generators(request.seed, request.n)
        shape = (self.unet.config.in_channels, height // self.vae.scale_factor, width // self.vae.scale_factor)
        init_latents = None
        if request.init_images is not None and request.strength < 1.0:
            pixels = images_to_tensor(request.init_images, height, width, self.device, self.dtype)
            init_latents = self.vae.encode_pixels(pixels)
        noise = per_sample_noise(shape, generators, self.device, self.dtype)
        latents = run_denoising(predict_noise, self.scheduler, request.steps, noise, init_latents,
                                request.strength, generators)
        return tensor_to_images(self.vae.decode_to_pixels(latents))
