"""SD-unCLIP: images from pooled CLIP image embeddings (MindEye2's decoder family).

`StableUnCLIPImg2ImgPipeline` conditions a Stable Diffusion UNet on a CLIP
image embedding (through the UNet's class-embedding input) instead of, or as
well as, a text prompt. We feed it *predicted* embeddings directly with
`image_embeds=`, so the pipeline's own image encoder is never run. The prompt
is empty: brain-predicted text conditioning goes to Versatile Diffusion.

The pipeline's "img2img" name refers to image *variation* (the image is only
CLIP-encoded); it has no strength argument. Real img2img from a low-level init
image is therefore done here with the pipeline's own components: the init
image is VAE-encoded, noised to `strength`, and denoised by the same UNet with
the same conditioning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

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


class UnclipGenerator(Generator):
    """SD-unCLIP loaded from a local pipeline directory (one with model_index.json).

    `noise_level` is the pipeline's image-embedding noise augmentation (0 = use
    the embedding as given; higher values loosen adherence to it).
    """

    def __init__(self, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 batch_size: int = 4, noise_level: int = 0):
        from diffusers import StableUnCLIPImg2ImgPipeline

        folder = require_local_dir(path, "UnclipGenerator(path)", expect=("model_index.json", "unet", "vae"))
        self.pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(folder, local_files_only=True, dtype=dtype)
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.vae = VaePath.from_model(self.pipe.vae)
        self.device, self.dtype = device, dtype
        self.batch_size, self.noise_level = batch_size, noise_level

    @property
    def embed_dim(self) -> int:
        """Width of the pooled image embedding the UNet expects (half its class-embedding input)."""
        return self.pipe.unet.config.projection_class_embeddings_input_dim // 2

    def generate(self, request: GenerationRequest) -> np.ndarray:
        if request.image_pooled is None:
            raise ValueError("UnclipGenerator needs request.image_pooled: (n, dim) CLIP image embeddings")
        if request.text_tokens is not None or request.image_tokens is not None:
            raise ValueError("UnclipGenerator conditions on pooled image embeddings only; "
                             "leave image_tokens and text_tokens unset (use VersatileGenerator for tokens)")
        width = np.shape(request.image_pooled)[-1]
        if width != self.embed_dim:
            raise ValueError(f"image_pooled has width {width}, but this unCLIP model expects {self.embed_dim}")
        return np.concatenate([self._generate_batch(part) for part in chunks(request, self.batch_size)])

    @torch.no_grad()
    def _generate_batch(self, request: GenerationRequest) -> np.ndarray:
        height, width = latent_size(request.height, request.width, self.pipe.unet.config.sample_size,
                                    self.vae.scale_factor)
        embeds = as_tensor(request.image_pooled, self.device, self.dtype)
        generators = sample_generators(request.seed, request.n)
        if request.init_images is None or request.strength >= 1.0:
            latents = self._pipeline_latents(request, embeds, generators, height, width)
        else:
            latents = self._img2img_latents(request, embeds, generators, height, width)
        return tensor_to_images(self.vae.decode_to_pixels(latents))

    def _pipeline_latents(self, request, embeds, generators, height, width) -> torch.Tensor:
        """Plain generation: the pipeline itself, with predicted embeddings passed as image_embeds."""
        return self.pipe(prompt=[""] * request.n, image_embeds=embeds, height=height, width=width,
                         num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
                         noise_level=self.noise_level, generator=generators, output_type="latent").images

    def _img2img_latents(self, request, embeds, generators, height, width) -> torch.Tensor:
        pipe = self.pipe
        use_cfg = request.guidance_scale > 1.0
        prompt, negative = pipe.encode_prompt(prompt=[""] * request.n, device=self.device,
                                              num_images_per_prompt=1, do_classifier_free_guidance=use_cfg)
        # same embedding treatment as the pipeline: noise augmentation + noise-level code, zeros as uncond
        class_labels = pipe.noise_image_embeddings(embeds, noise_level=self.noise_level, generator=generators)
        if use_cfg:
            prompt = torch.cat([negative, prompt])
            class_labels = torch.cat([torch.zeros_like(class_labels), class_labels])

        def predict_noise(latents, t):
            batch = torch.cat([latents] * 2) if use_cfg else latents
            noise = pipe.unet(batch, t, encoder_hidden_states=prompt, class_labels=class_labels,
                              return_dict=False)[0]
            return classifier_free(*noise.chunk(2), request.guidance_scale) if use_cfg else noise

        pixels = images_to_tensor(request.init_images, height, width, self.device, self.dtype)
        init_latents = self.vae.encode_pixels(pixels)
        noise = per_sample_noise(init_latents.shape[1:], generators, self.device, self.dtype)
        return run_denoising(predict_noise, pipe.scheduler, request.steps, noise, init_latents,
                             request.strength, generators)
