"""Measure a small model set on held-out scenes: decode its true CLIP embeddings, score the decodings.

`check_assets` decodes the small CLIP's embeddings of the default world's shared test images with the
set's unCLIP decoder and reports 2-way identification (with a VAE round-trip ceiling and a shuffled
chance reference) and the CLIP's image -> caption retrieval; `save_grid` draws originals over decodings.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from brainrecon.assets.manifest import read_manifest, recorded_guidance, write_manifest
from brainrecon.assets.scenes import heldout_scenes
from brainrecon.embed.clip import ClipImageEmbedder, ClipTextEmbedder
from brainrecon.evaluate.metrics import two_way_identification
from brainrecon.generate.base import GenerationRequest
from brainrecon.generate.unclip import UnclipGenerator
from brainrecon.io import atomic_save_image


def load_set(folder: Path):
    """The set's small CLIP image embedder and its unCLIP decoder."""
    return ClipImageEmbedder(Path(folder) / "clip", batch_size=64), UnclipGenerator(Path(folder) / "decoder",
                                                                                    batch_size=50)


def decode_true_embeddings(embedder, generator, originals: np.ndarray, steps: int, guidance_scale: float,
                           seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(true embeddings, decodings, decodings' embeddings, 2-way identification) for `originals`."""
    true_embeds = embedder.pooled(originals)
    decoded = generator.generate(GenerationRequest(image_pooled=true_embeds, steps=steps,
                                                   guidance_scale=guidance_scale, seed=seed))
    decoded_embeds = embedder.pooled(decoded)
    return true_embeds, decoded, decoded_embeds, two_way_identification(true_embeds, decoded_embeds)


def check_assets(folder: Path, n: int = 200, steps: int = 25, guidance_scale: float | None = None, seed: int = 0,
                 grid_path: Path | None = None, grid_columns: int = 10, command: str | None = None,
                 log=print) -> dict:
    """Decode the TRUE small-CLIP embeddings of n held-out scenes; score with the same small CLIP.

    2-way identification is metrics.two_way_identification (the N-way form: each decoding's
    embedding against every other held-out original; chance 0.5). Two references put the number
    in context: the VAE round trip of the originals (the decoder's ceiling through its latent
    space) and the decodings matched against shuffled originals (chance). The guidance scale defaults
    to the one `tune_guidance` chose on validation scenes.
    """
    folder = Path(folder)
    guidance_scale = recorded_guidance(folder) if guidance_scale is None else guidance_scale
    started = time.perf_counter()
    originals, caption_lists = heldout_scenes(n)
    embedder, generator = load_set(folder)
    true_embeds, decoded, decoded_embeds, identification = decode_true_embeddings(
        embedder, generator, originals, steps, guidance_scale, seed)
    # the CLIP on its own: image -> caption retrieval among the n held-out scenes, per caption template
    text_embedder = ClipTextEmbedder(folder / "clip", batch_size=64)
    unit = true_embeds / np.linalg.norm(true_embeds, axis=1, keepdims=True)
    retrieval = {}
    for template, name in enumerate(("full", "count", "relation", "short")):
        text = text_embedder.pooled([captions[template] for captions in caption_lists])
        similarity = unit @ (text / np.linalg.norm(text, axis=1, keepdims=True)).T
        retrieval[name] = float((similarity.argmax(axis=1) == np.arange(n)).mean())
    vae = generator.vae  # the pipeline's own VAE (what VaePath(folder / "decoder") loads)
    round_trip = vae.decode(vae.encode(originals))
    shuffled = np.random.default_rng(seed).permutation(n)
    quality = {
        "command": command or f"brainrecon assets check {folder}",
        "heldout_scenes": n, "steps": steps, "guidance_scale": guidance_scale, "seed": seed, "noise_level": 0,
        "two_way_identification": identification,
        "clip_image_to_caption_top1": retrieval,
        "two_way_identification_vae_round_trip": two_way_identification(true_embeds, embedder.pooled(round_trip)),
        "two_way_identification_shuffled": two_way_identification(true_embeds, decoded_embeds[shuffled]),
        "pixel_correlation": float(np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1]
                                            for a, b in zip(originals.astype(float), decoded.astype(float))])),
        "vae_round_trip_psnr_db": float(10 * np.log10(255.0 ** 2 / np.mean(
            (originals.astype(float) - round_trip.astype(float)) ** 2))),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if grid_path is not None:
        save_grid(originals[:2 * grid_columns], decoded[:2 * grid_columns], Path(grid_path), grid_columns)
        quality["grid"] = str(grid_path)
    if (folder / "manifest.json").is_file():
        manifest = read_manifest(folder)
        manifest["quality"] = quality
        write_manifest(folder, manifest)
    log(json.dumps(quality, indent=2))
    return quality


def save_grid(originals: np.ndarray, decoded: np.ndarray, path: Path, columns: int, scale: int = 2) -> None:
    """Rows of originals each followed by a row of their decodings, upscaled (nearest) for viewing."""
    from PIL import Image

    gap, size = 4, originals.shape[1] * scale
    n_blocks = math.ceil(len(originals) / columns)
    canvas = Image.new("RGB", (columns * (size + gap) + gap, n_blocks * (2 * size + 3 * gap) + gap), "white")
    for i, (orig, dec) in enumerate(zip(originals, decoded)):
        block, col = divmod(i, columns)
        x, y = gap + col * (size + gap), gap + block * (2 * size + 3 * gap)
        canvas.paste(Image.fromarray(orig).resize((size, size), Image.NEAREST), (x, y))
        canvas.paste(Image.fromarray(dec).resize((size, size), Image.NEAREST), (x, y + size + gap))
    atomic_save_image(path, canvas)
