"""CLIP image and text embedders over local transformers checkpoints.

Two representations per modality, as the reconstruction literature uses them:

- **pooled**: the standard CLIP embedding (`image_embeds` / `text_embeds`),
  the conditioning of SD-unCLIP and the space of CLIP retrieval.
- **tokens**: every token projected into the joint space and scaled the way
  Versatile Diffusion expects (MindEye1, MindBridge, Psychometry):
  image: last_hidden_state -> vision post_layernorm -> visual_projection, each
  token divided by the L2 norm of the projected CLS token (so CLS has unit
  norm; 257 x 768 for ViT-L/14);
  text: text_projection(last_hidden_state), divided by the norm of the pooled
  text embedding (77 x 768 for ViT-L/14).

The image tower and its preprocessing live in `brainrecon.clip_image` (shared with the
simulated world's encoding model) and are re-exported here.

Shapes come from the model config, so ViT-L/14, bigG-style and tiny test
models all work. Images are uint8 (n, H, W, 3) and are preprocessed from the
checkpoint's own `preprocessor_config.json` with PIL and torch (resize the
shortest edge, centre-crop, rescale, normalise) — no torchvision, and no
dependence on which image-processor class transformers can build offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from brainrecon.clip_image import (CLIP_MEAN, CLIP_STD, TOKEN_STYLES, ClipImageEmbedder, ClipPreprocess, TokenStyle,
                                   first_dir_with, model_dir_of, quiet_transformers)
from brainrecon.errors import ModelPathError
from brainrecon.pretrained import require_local_dir

__all__ = ["CLIP_MEAN", "CLIP_STD", "TOKEN_STYLES", "ClipImageEmbedder", "ClipPreprocess", "ClipTextEmbedder",
           "TokenStyle", "byte_level_tokenizer"]


class ClipTextEmbedder:
    """CLIP text tower + projection from a local dir (a CLIPModel or CLIPTextModelWithProjection save).

    The tokenizer is loaded from the model dir, or from a sibling `tokenizer/`
    folder (diffusers layouts), unless `tokenizer_path` is given. Captions are
    padded/truncated to the model's context length (77 for CLIP).
    """

    def __init__(self, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 batch_size: int = 64, subfolder: str | None = None, tokenizer_path: str | Path | None = None):
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        folder, model_dir = model_dir_of(path, "ClipTextEmbedder(path)", subfolder)
        with quiet_transformers():
            self.model = CLIPTextModelWithProjection.from_pretrained(
                model_dir, local_files_only=True, dtype=dtype).to(device).eval()
        if tokenizer_path is not None:
            tokenizer_dir = require_local_dir(tokenizer_path, "ClipTextEmbedder(tokenizer_path)")
        else:
            tokenizer_dir = first_dir_with([model_dir, folder / "tokenizer"],
                                            ["tokenizer.json", "vocab.json", "tokenizer_config.json"])
            if tokenizer_dir is None:
                raise ModelPathError(
                    f"ClipTextEmbedder(path): no tokenizer files in {model_dir} or {folder / 'tokenizer'}; "
                    f"pass tokenizer_path=")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        self.device, self.dtype, self.batch_size = device, dtype, batch_size

    @property
    def n_tokens(self) -> int:
        return self.model.config.max_position_embeddings

    @property
    def dim(self) -> int:
        return self.model.config.projection_dim

    def tokens(self, captions: Sequence[str]) -> np.ndarray:
        """Captions -> float32 (n, n_tokens, dim), divided by the norm of the pooled text embedding."""
        return self.embed(captions)[0]

    def pooled(self, captions: Sequence[str]) -> np.ndarray:
        """Captions -> float32 (n, dim): the model's standard text_embeds (not normalised)."""
        return self.embed(captions)[1]

    def embed(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(captions, str):
            raise TypeError("captions must be a sequence of strings, not one string")
        tokens, pooled = [], []
        for start in range(0, len(captions), self.batch_size):
            batch_tokens, batch_pooled = self._embed_batch(list(captions[start:start + self.batch_size]))
            tokens.append(batch_tokens.float().cpu().numpy())
            pooled.append(batch_pooled.float().cpu().numpy())
        return np.concatenate(tokens), np.concatenate(pooled)

    @torch.no_grad()
    def _embed_batch(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.tokenizer(captions, padding="max_length", max_length=self.n_tokens, truncation=True,
                                 return_tensors="pt")
        # no attention mask, as Versatile Diffusion and Stable Diffusion encode prompts: the padded
        # positions' states are part of the 77 target tokens and must match what the generator saw
        output = self.model(input_ids=encoded.input_ids.to(self.device))
        # last_hidden_state already went through the text final_layer_norm
        projected = self.model.text_projection(output.last_hidden_state)
        pooled = output.text_embeds
        return projected / pooled.norm(dim=-1, keepdim=True)[:, None], pooled


def byte_level_tokenizer():
    """An offline CLIP tokenizer (for small models trained here and tests): the 256 byte symbols, their </w> forms and two specials (no merges)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": i + 256 for i, s in enumerate(symbols)})
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
