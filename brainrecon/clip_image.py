"""The CLIP image tower over a local transformers checkpoint: preprocessing and one forward pass.

Neutral ground, like `vision.py`: the simulated world's encoding model (a data source) reads
what this tower sees, and the embedders (`brainrecon.embed.clip`) turn its output into training
targets. Keeping it here lets both use one implementation without the data layer importing
the embedding layer.

Image tokens come in two styles (`token_style`):

- "versatile" (default): all tokens, projected into the joint space and divided by the L2 norm
  of the projected CLS token (257 x 768 for ViT-L/14; what Versatile Diffusion expects:
  MindEye1, MindBridge, Psychometry);
- "open_clip": the OpenCLIP `output_tokens` convention MindEye2 trains on: post-layernorm
  patch tokens without the CLS token and without projection (256 x 1664 for ViT-bigG/14).

Images are uint8 (n, H, W, 3) and are preprocessed from the checkpoint's own
`preprocessor_config.json` with PIL and torch (resize the shortest edge, centre-crop,
rescale, normalise): no torchvision.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from PIL import Image

from brainrecon.errors import ModelPathError
from brainrecon.pretrained import require_local_dir

TokenStyle = Literal["versatile", "open_clip"]
TOKEN_STYLES = get_args(TokenStyle)

# OpenAI CLIP's normalisation, used when a checkpoint ships no preprocessor config
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@contextlib.contextmanager
def quiet_transformers():
    """Silence load reports (e.g. unused text weights when loading the vision half of a CLIPModel)."""
    from transformers.utils import logging

    previous = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(previous)


def _side(value, key: str) -> int | None:
    return value if isinstance(value, int) else (value or {}).get(key)


@dataclass(frozen=True)
class ClipPreprocess:
    """The image preprocessing of a CLIP checkpoint, reimplemented with PIL."""

    shortest_edge: int | None          # resize so the shorter side has this length (aspect kept) ...
    resize_to: tuple[int, int] | None  # ... or resize to exactly (height, width)
    crop: tuple[int, int] | None       # centre crop (height, width)
    resample: int
    rescale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_config(cls, config: dict, image_size: int) -> ClipPreprocess:
        size = config.get("size", image_size) if config.get("do_resize", True) else None
        shortest = size if isinstance(size, int) else (size or {}).get("shortest_edge")
        resize_to = None
        if isinstance(size, dict) and "height" in size:
            resize_to = (size["height"], size["width"])
        crop = None
        if config.get("do_center_crop", True):
            crop_size = config.get("crop_size", image_size)
            crop = (_side(crop_size, "height"), _side(crop_size, "width"))
        normalise = config.get("do_normalize", True)
        return cls(shortest_edge=shortest, resize_to=resize_to, crop=crop,
                   resample=int(config.get("resample", Image.BICUBIC)),
                   rescale=config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) else 1.0,
                   mean=tuple(config.get("image_mean", CLIP_MEAN)) if normalise else (0.0, 0.0, 0.0),
                   std=tuple(config.get("image_std", CLIP_STD)) if normalise else (1.0, 1.0, 1.0))

    @classmethod
    def from_dir(cls, folder: Path | None, image_size: int) -> ClipPreprocess:
        config = {}
        if folder is not None and (folder / "preprocessor_config.json").is_file():
            config = json.loads((folder / "preprocessor_config.json").read_text())
        return cls.from_config(config, image_size)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (n, H, W, 3) -> float32 pixel_values (n, 3, h, w)."""
        arrays = [np.asarray(self._geometry(Image.fromarray(np.asarray(im)).convert("RGB")), dtype=np.float32)
                  for im in images]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) * self.rescale
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def _geometry(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if self.resize_to is not None:
            image = image.resize((self.resize_to[1], self.resize_to[0]), self.resample)
        elif self.shortest_edge is not None:
            short, long = sorted((width, height))
            new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
            new_size = (new_short, new_long) if width <= height else (new_long, new_short)
            image = image.resize(new_size, self.resample)
        if self.crop is not None:
            width, height = image.size
            top, left = (height - self.crop[0]) // 2, (width - self.crop[1]) // 2
            image = image.crop((left, top, left + self.crop[1], top + self.crop[0]))
        return image


def model_dir_of(path, argument: str, subfolder: str | None) -> tuple[Path, Path]:
    folder = require_local_dir(path, argument)
    model_dir = folder / subfolder if subfolder else folder
    if not (model_dir / "config.json").is_file():
        raise ModelPathError(
            f"{argument}: {model_dir} has no config.json; give the directory a transformers CLIP model was "
            f"saved to (or its parent plus subfolder=...)")
    return folder, model_dir


def first_dir_with(candidates: Sequence[Path], filenames: Sequence[str]) -> Path | None:
    for candidate in candidates:
        if any((candidate / name).is_file() for name in filenames):
            return candidate
    return None


class ClipImageEmbedder:
    """CLIP vision tower + projection from a local dir (a CLIPModel or CLIPVisionModelWithProjection save).

    For diffusers-style layouts give the parent dir and `subfolder="image_encoder"`;
    the preprocessor config is looked up in the model dir, then in the sibling
    `feature_extractor/` or `image_feature_extractor/` folders, unless
    `processor_path` is given. Without one, OpenAI CLIP defaults are used at the
    model's image size.
    """

    def __init__(self, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 batch_size: int = 32, subfolder: str | None = None, processor_path: str | Path | None = None,
                 token_style: TokenStyle = "versatile"):
        from transformers import CLIPVisionModelWithProjection

        if token_style not in TOKEN_STYLES:
            raise ValueError(f"token_style must be one of {TOKEN_STYLES}, got {token_style!r}")
        self.token_style = token_style

        folder, model_dir = model_dir_of(path, "ClipImageEmbedder(path)", subfolder)
        with quiet_transformers():
            self.model = CLIPVisionModelWithProjection.from_pretrained(
                model_dir, local_files_only=True, dtype=dtype).to(device).eval()
        if processor_path is not None:
            processor_dir = require_local_dir(processor_path, "ClipImageEmbedder(processor_path)")
        else:
            processor_dir = first_dir_with([model_dir, folder / "feature_extractor",
                                             folder / "image_feature_extractor"], ["preprocessor_config.json"])
        self.preprocess = ClipPreprocess.from_dir(processor_dir, self.model.config.image_size)
        self.device, self.dtype, self.batch_size = device, dtype, batch_size

    @property
    def n_tokens(self) -> int:
        config = self.model.config
        patches = (config.image_size // config.patch_size) ** 2
        return patches if self.token_style == "open_clip" else patches + 1

    @property
    def dim(self) -> int:
        """Width of the pooled embedding (the joint CLIP space)."""
        return self.model.config.projection_dim

    @property
    def token_dim(self) -> int:
        """Width of a token: the joint space for "versatile", the tower's width for "open_clip"."""
        return self.model.config.hidden_size if self.token_style == "open_clip" else self.dim

    def tokens(self, images: np.ndarray) -> np.ndarray:
        """uint8 (n, H, W, 3) -> float32 (n, n_tokens, token_dim) in this embedder's token style."""
        return self.embed(images)[0]

    def pooled(self, images: np.ndarray) -> np.ndarray:
        """uint8 (n, H, W, 3) -> float32 (n, dim): the model's standard image_embeds (not normalised)."""
        return self.embed(images)[1]

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and pooled embeddings from one forward pass."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (n, H, W, 3), got {images.dtype} {images.shape}")
        tokens, pooled = [], []
        for start in range(0, len(images), self.batch_size):
            batch_tokens, batch_pooled = self.embed_pixels(self.preprocess(images[start:start + self.batch_size]))
            tokens.append(batch_tokens.float().cpu().numpy())
            pooled.append(batch_pooled.float().cpu().numpy())
        return np.concatenate(tokens), np.concatenate(pooled)

    @torch.no_grad()
    def embed_pixels(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed pixel_values -> (tokens in this embedder's style, image_embeds) as tensors."""
        output = self.model(pixel_values=pixel_values.to(self.device, self.dtype))
        hidden = self.model.vision_model.post_layernorm(output.last_hidden_state)
        if self.token_style == "open_clip":
            return hidden[:, 1:], output.image_embeds
        projected = self.model.visual_projection(hidden)
        cls_norm = projected[:, :1].norm(dim=-1, keepdim=True)
        return projected / cls_norm, output.image_embeds
