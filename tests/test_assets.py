"""The shipped simulated-world model set loads and decodes; `brainrecon assets train --quick` works end to end."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json

import numpy as np
import pytest
import torch

from brainrecon.assets import SIMWORLD_ASSETS


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small models gain nothing from threads on a shared 2-core machine; restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def heldout_images():
    from brainrecon.assets.train import heldout_scenes

    images, caption_lists = heldout_scenes(2)
    return images, caption_lists


@pytest.fixture(scope="module")
def shipped_embedder():
    from brainrecon.embed.clip import ClipImageEmbedder

    return ClipImageEmbedder(SIMWORLD_ASSETS / "clip")


def test_shipped_clip_loads_with_both_embedders(shipped_embedder, heldout_images):
    from brainrecon.embed.clip import ClipTextEmbedder

    images, caption_lists = heldout_images
    tokens, pooled = shipped_embedder.embed(images)
    assert pooled.shape == (2, shipped_embedder.dim) and tokens.shape == (2, shipped_embedder.n_tokens,
                                                                          shipped_embedder.dim)
    assert np.isfinite(pooled).all()
    text = ClipTextEmbedder(SIMWORLD_ASSETS / "clip")
    text_pooled = text.pooled([c[0] for c in caption_lists])
    assert text_pooled.shape == (2, text.dim) == (2, shipped_embedder.dim)
    # a trained CLIP matches each image with its own caption (two scenes: an easy check, not a benchmark)
    similarity = (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)) @ \
                 (text_pooled / np.linalg.norm(text_pooled, axis=1, keepdims=True)).T
    assert np.all(similarity.argmax(axis=1) == np.arange(2))


def test_shipped_vae_round_trip(heldout_images):
    from brainrecon.generate.vae import VaePath

    images, _ = heldout_images
    vae = VaePath(SIMWORLD_ASSETS / "decoder")  # a pipeline directory: VaePath uses its vae/
    latents = vae.encode(images)
    assert latents.shape == (2, 4, 16, 16)
    round_trip = vae.decode(latents)
    assert round_trip.shape == (2, 64, 64, 3) and round_trip.dtype == np.uint8
    assert np.abs(round_trip.astype(float) - images.astype(float)).mean() < 40  # recognisably the same image


def test_shipped_decoder_generates_deterministically(shipped_embedder, heldout_images):
    from brainrecon.generate.base import GenerationRequest
    from brainrecon.generate.unclip import UnclipGenerator

    generator = UnclipGenerator(SIMWORLD_ASSETS / "decoder")
    assert generator.embed_dim == shipped_embedder.dim
    embeds = shipped_embedder.pooled(heldout_images[0])
    request = GenerationRequest(image_pooled=embeds, steps=3, guidance_scale=2.0, seed=5)
    first = generator.generate(request)
    assert first.shape == (2, 64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, generator.generate(request))
    other_seed = generator.generate(GenerationRequest(image_pooled=embeds, steps=3, guidance_scale=2.0, seed=6))
    assert not np.array_equal(first, other_seed)


def test_shipped_manifest_records_training():
    manifest = json.loads((SIMWORLD_ASSETS / "manifest.json").read_text())
    assert manifest["command"].startswith("brainrecon assets train")
    assert manifest["quick"] is False
    for key in ("seed", "data", "steps", "training_seconds", "parameters", "file_bytes", "quality"):
        assert key in manifest
    assert set(manifest["steps"]) == {"clip", "vae", "decoder"}
    assert set(manifest["training_seconds"]) >= {"clip", "vae", "decoder", "total"}
    assert manifest["file_bytes"]["total"] < 30e6
    on_disk = sum(f.stat().st_size for f in SIMWORLD_ASSETS.rglob("*") if f.is_file())
    assert on_disk < 30e6
    assert 0.0 <= manifest["quality"]["two_way_identification"] <= 1.0


def test_quick_train_cli_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from brainrecon.cli_assets import app
    from brainrecon.embed.clip import ClipImageEmbedder, ClipTextEmbedder
    from brainrecon.generate.base import GenerationRequest
    from brainrecon.generate.unclip import UnclipGenerator

    out = tmp_path / "assets"
    result = CliRunner().invoke(app, ["train", "--out", str(out), "--quick", "--seed", "1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quick"] is True and manifest["seed"] == 1
    assert manifest["command"] == f"brainrecon assets train --out {out} --seed 1 --quick"
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    embeds = ClipImageEmbedder(out / "clip").pooled(images)
    assert ClipTextEmbedder(out / "clip").pooled(["a red circle", "two shapes"]).shape == embeds.shape
    decoded = UnclipGenerator(out / "decoder").generate(GenerationRequest(image_pooled=embeds, steps=2, seed=0))
    assert decoded.shape == (2, 64, 64, 3) and decoded.dtype == np.uint8
