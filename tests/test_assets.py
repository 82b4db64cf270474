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
    from brainrecon.assets.scenes import heldout_scenes

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

    from brainrecon.cli.assets import app
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


@pytest.fixture(scope="module")
def quick_set(tmp_path_factory):
    from brainrecon.assets.train import train_assets

    out = tmp_path_factory.mktemp("quick-assets")
    train_assets(out, seed=2, quick=True, log=lambda *_: None)
    return out


def test_decoder_resumes_bit_for_bit_from_its_checkpoint(quick_set, tmp_path):
    from brainrecon.assets.scenes import render_scenes
    from brainrecon.assets.train import (
        TrainPlan,
        build_pipeline,
        clip_image_embeds,
        encode_latents,
        load_clip_and_vae,
        train_decoder,
    )
    from brainrecon.embed.clip import byte_level_tokenizer

    plan = TrainPlan.quick()  # 3 steps, a checkpoint after step 2
    images, _ = render_scenes(2, "assets-train", range(plan.n_scenes))
    clip_model, vae = load_clip_and_vae(quick_set)
    latents, embeds = encode_latents(vae, images), clip_image_embeds(clip_model, images)

    def fresh_pipe():
        return build_pipeline(plan, clip_model, byte_level_tokenizer(), vae, embeds, seed=2)

    checkpoint = tmp_path / "ckpt"
    straight = train_decoder(plan, fresh_pipe(), latents, embeds, 2, checkpoint_dir=checkpoint, log=lambda *_: None)
    assert (checkpoint / "state.json").is_file() and json.loads((checkpoint / "state.json").read_text())["step"] == 2
    lines = []
    resumed = train_decoder(plan, fresh_pipe(), latents, embeds, 2, checkpoint_dir=checkpoint, log=lines.append)
    assert any("resuming at step 2" in line for line in lines)
    for (name, a), b in zip(straight.unet.named_parameters(), resumed.unet.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    untrained = fresh_pipe().unet
    assert any(not torch.equal(a, b) for a, b in zip(straight.unet.parameters(), untrained.parameters()))
    other = TrainPlan(**{**TrainPlan.quick().__dict__, "unet_lr": 1e-2})
    with pytest.raises(ValueError, match="different training plan"):
        train_decoder(other, fresh_pipe(), latents, embeds, 2, checkpoint_dir=checkpoint)


def test_decoder_only_stage_keeps_clip_and_records_both_stages(quick_set, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from brainrecon.cli.assets import app

    out = tmp_path / "set"
    shutil.copytree(quick_set, out)
    clip_before = (out / "clip" / "model.safetensors").read_bytes()
    result = CliRunner().invoke(app, ["train", "--out", str(out), "--quick", "--seed", "2", "--decoder-only"])
    assert result.exit_code == 0, result.output
    assert (out / "clip" / "model.safetensors").read_bytes() == clip_before
    assert not (out / "decoder-checkpoint").exists() and not (out / "decoder.partial").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [stage["trained"] for stage in manifest["stages"]] == [["clip", "vae"], ["decoder"]]
    assert manifest["stages"][1]["command"].endswith("--decoder-only")
    assert manifest["training_seconds"]["total"] >= manifest["training_seconds"]["clip"]
    wrong_seed = CliRunner().invoke(app, ["train", "--out", str(out), "--quick", "--seed", "3", "--decoder-only"])
    assert wrong_seed.exit_code == 2 and "same --seed" in wrong_seed.output
    empty = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "none"), "--quick", "--decoder-only"])
    assert empty.exit_code == 2 and "run it without --decoder-only" in empty.output


def test_guidance_is_chosen_on_validation_scenes_and_used_by_check(quick_set, tmp_path):
    import shutil

    from brainrecon.assets.check import check_assets
    from brainrecon.assets.manifest import DEFAULT_GUIDANCE, recorded_guidance
    from brainrecon.assets.scenes import heldout_scenes, validation_scenes
    from brainrecon.assets.tune import tune_guidance

    out = tmp_path / "set"
    shutil.copytree(quick_set, out)
    assert recorded_guidance(out) == DEFAULT_GUIDANCE
    # validation scenes are neither the held-out scenes nor training scenes
    assert not np.array_equal(validation_scenes(2)[0], heldout_scenes(2)[0])
    sampling = tune_guidance(out, [1.0, 4.0], n=4, steps=2, log=lambda *_: None)
    assert set(sampling["two_way_identification_by_guidance"]) == {"1", "4"}
    assert sampling["guidance_scale"] in (1.0, 4.0) and "validation" in sampling["chosen_on"]
    assert recorded_guidance(out) == sampling["guidance_scale"]
    quality = check_assets(out, n=4, steps=2, log=lambda *_: None)
    assert quality["guidance_scale"] == sampling["guidance_scale"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sampling"] == sampling and manifest["quality"]["two_way_identification"] == \
        quality["two_way_identification"]


def test_min_snr_weights_cap_easy_steps():
    from brainrecon.assets.train import min_snr_weights

    alphas = torch.tensor([0.999, 5 / 6, 0.5, 0.01])  # SNR 999, 5, 1, ~0.01
    weights = min_snr_weights(alphas, 5.0)
    torch.testing.assert_close(weights, torch.tensor([5 / 999, 1.0, 1.0, 1.0]), rtol=1e-4, atol=1e-6)
    assert torch.equal(min_snr_weights(alphas, 0.0), torch.ones(4))


def test_assets_learning_rate_is_the_old_warmup_cosine_exactly():
    """The assets' schedule is the trainer's "cosine" with warm-up and a 10% floor, bit for bit the old `lr_at`."""
    import math

    from brainrecon.assets.train import TrainPlan, lr_schedule
    from brainrecon.train.trainer import learning_rate

    def old_lr_at(step, total, peak, warmup):  # the assets' own schedule before they used the trainer's
        if step < warmup:
            return peak * (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    full, quick = TrainPlan.full(), TrainPlan.quick()
    cases = [(plan, total, peak) for plan in (full, quick)
             for total, peak in ((plan.clip_steps, plan.clip_lr), (plan.vae_steps, plan.vae_lr),
                                 (plan.unet_steps, plan.unet_lr))]
    cases += [(TrainPlan(**{**full.__dict__, "warmup": warmup}), total, peak)
              for warmup in (0, 1, 7, 100) for total in (1, 10, 101, 999) for peak in (3e-4, 1e-3, 0.1)]
    for plan, total, peak in cases:
        schedule = lr_schedule(peak, plan)
        for step in range(total):
            assert learning_rate(step, total, schedule, epochs=1) == old_lr_at(step, total, peak, plan.warmup), \
                (step, total, peak, plan.warmup)


def test_training_leaves_global_torch_state_alone_and_is_deterministic():
    from brainrecon.assets.scenes import render_scenes
    from brainrecon.assets.train import TrainPlan, train_vae

    plan = TrainPlan.quick()
    images, _ = render_scenes(3, "assets-train", range(16))
    threads, rng_state = torch.get_num_threads(), torch.get_rng_state()
    first = train_vae(plan, images, seed=3, log=lambda *_: None)
    assert torch.equal(torch.get_rng_state(), rng_state) and torch.get_num_threads() == threads
    torch.rand(5)  # a caller's own draws do not change what the same seed trains
    second = train_vae(plan, images, seed=3, log=lambda *_: None)
    for (name, a), b in zip(first.named_parameters(), second.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
