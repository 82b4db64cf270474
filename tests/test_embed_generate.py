"""CLIP embedders, the embedding cache and the diffusion generators, on tiny random models.

Every model is a randomly initialised instance of the real transformers /
diffusers class, saved with `save_pretrained` and reloaded through brainrecon,
so loading, preprocessing, normalisation and sampling code paths are the ones
real checkpoints take. Sizes: 32x32 images, 16x16 latents, a few steps.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from brainrecon.embed.clip import byte_level_tokenizer

PROJ = 16        # CLIP projection width = UNet cross-attention width, so CLIP tokens can condition VD
IMAGE = 32       # pixel size of everything


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP threads that wait
    for each other make these tests several times slower; restored afterwards for other modules."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------
# tiny model builders


TEXT_CONFIG = {"vocab_size": 514, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "max_position_embeddings": 77, "projection_dim": PROJ, "bos_token_id": 512, "eos_token_id": 513,
                   "pad_token_id": 513}
VISION_CONFIG = {"image_size": IMAGE, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "projection_dim": PROJ}


def image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, sample_size=IMAGE)


def tiny_unet(cross_attention_dim, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=IMAGE // 2, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
                                **extra)


def tiny_text_unet():
    """VD's text UNet class (deprecated in diffusers); only its cross-attention blocks are used."""
    from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import (
        UNetFlatConditionModel,
    )

    return UNetFlatConditionModel(sample_size=IMAGE // 2, in_channels=4, out_channels=4, layers_per_block=1,
                                  block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockFlat", "DownBlockFlat"),
                                  up_block_types=("UpBlockFlat", "CrossAttnUpBlockFlat"),
                                  mid_block_type="UNetMidBlockFlatCrossAttn", cross_attention_dim=PROJ,
                                  attention_head_dim=8, norm_num_groups=8)


def ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                         clip_sample=False, set_alpha_to_one=False)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(CLIPConfig(text_config=TEXT_CONFIG, vision_config=VISION_CONFIG, projection_dim=PROJ)) \
        .save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    image_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def unclip_dir(tmp_path_factory):
    from diffusers import DDPMScheduler, StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(1)
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=image_processor(),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION_CONFIG)),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=PROJ),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=byte_level_tokenizer(),
        text_encoder=CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)),
        # class embedding input = the image embedding plus its noise-level code, each PROJ wide
        unet=tiny_unet(32, class_embed_type="projection", projection_class_embeddings_input_dim=2 * PROJ),
        scheduler=ddim(), vae=tiny_vae())
    folder = tmp_path_factory.mktemp("unclip")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vd_dir(tmp_path_factory):
    """A Versatile-Diffusion-style components dir: image_unet, text_unet, vae, scheduler."""
    folder = tmp_path_factory.mktemp("vd")
    torch.manual_seed(2)
    tiny_unet(PROJ).save_pretrained(folder / "image_unet")
    tiny_text_unet().save_pretrained(folder / "text_unet")
    tiny_vae().save_pretrained(folder / "vae")
    ddim().save_pretrained(folder / "scheduler")
    return folder


def random_images(n, seed, size=IMAGE):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------
# CLIP embedders


@pytest.fixture(scope="module")
def image_embedder(clip_dir):
    from brainrecon.embed.clip import ClipImageEmbedder

    return ClipImageEmbedder(clip_dir, batch_size=2)


@pytest.fixture(scope="module")
def text_embedder(clip_dir):
    from brainrecon.embed.clip import ClipTextEmbedder

    return ClipTextEmbedder(clip_dir, batch_size=2)


def test_image_tokens_are_vd_normalised_and_pooled_matches_transformers(image_embedder, clip_dir):
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    images = random_images(3, 0)
    tokens, pooled = image_embedder.embed(images)
    n_tokens = (IMAGE // 8) ** 2 + 1
    assert tokens.shape == (3, n_tokens, PROJ) and tokens.dtype == np.float32
    assert pooled.shape == (3, PROJ) and pooled.dtype == np.float32
    assert image_embedder.n_tokens == n_tokens and image_embedder.dim == PROJ
    np.testing.assert_allclose(np.linalg.norm(tokens[:, 0], axis=-1), 1.0, rtol=1e-5)
    assert not np.allclose(np.linalg.norm(tokens[:, 1:], axis=-1), 1.0)  # only CLS is unit by construction
    # transformers' own preprocessing + forward give the same pooled embedding ...
    reference_model = CLIPVisionModelWithProjection.from_pretrained(clip_dir, local_files_only=True)
    pixels = CLIPImageProcessor.from_pretrained(clip_dir)(images=list(images), return_tensors="pt").pixel_values
    with torch.no_grad():
        reference = reference_model(pixel_values=pixels).image_embeds.numpy()
    np.testing.assert_allclose(pooled, reference, atol=1e-4)
    # ... and the CLS token is the pooled embedding up to the normalisation
    np.testing.assert_allclose(tokens[:, 0], reference / np.linalg.norm(reference, axis=-1, keepdims=True),
                               atol=1e-4)
    # batching does not change results
    np.testing.assert_allclose(image_embedder.tokens(images[1:2]), tokens[1:2], atol=1e-5)


def test_open_clip_token_style_gives_mindeye2_shaped_tokens(image_embedder, clip_dir):
    """bigG-style targets: post-layernorm patch tokens, no CLS, unprojected (256x1664 for bigG; here 16x32)."""
    from transformers import CLIPVisionModelWithProjection

    from brainrecon.embed.clip import ClipImageEmbedder

    embedder = ClipImageEmbedder(clip_dir, batch_size=2, token_style="open_clip")
    images = random_images(3, 0)
    tokens, pooled = embedder.embed(images)
    width = VISION_CONFIG["hidden_size"]
    assert embedder.n_tokens == (IMAGE // 8) ** 2 and embedder.token_dim == width != embedder.dim
    assert tokens.shape == (3, embedder.n_tokens, width) and tokens.dtype == np.float32
    np.testing.assert_allclose(pooled, image_embedder.pooled(images), atol=1e-5)  # pooled is style-independent
    reference_model = CLIPVisionModelWithProjection.from_pretrained(clip_dir, local_files_only=True)
    with torch.no_grad():
        hidden = reference_model(pixel_values=embedder.preprocess(images)).last_hidden_state
        reference = reference_model.vision_model.post_layernorm(hidden)[:, 1:].numpy()
    np.testing.assert_allclose(tokens, reference, atol=1e-5)
    with pytest.raises(ValueError, match="token_style"):
        ClipImageEmbedder(clip_dir, token_style="bigG")


def test_preprocessing_matches_transformers_on_non_square_images(image_embedder, clip_dir):
    from transformers import CLIPImageProcessor

    images = np.random.default_rng(1).integers(0, 256, (2, 40, 57, 3), dtype=np.uint8)
    ours = image_embedder.preprocess(images)
    theirs = CLIPImageProcessor.from_pretrained(clip_dir)(images=list(images), return_tensors="pt").pixel_values
    assert ours.shape == theirs.shape == (2, 3, IMAGE, IMAGE)
    assert torch.allclose(ours, theirs, atol=0.02)  # same PIL bicubic resize; tiny rounding differences allowed


def test_text_tokens_normalised_by_pooled_norm(text_embedder, clip_dir):
    from transformers import CLIPModel

    captions = ["a cat on a mat", "two dogs", "x"]
    tokens, pooled = text_embedder.embed(captions)
    assert tokens.shape == (3, 77, PROJ) and tokens.dtype == np.float32
    assert pooled.shape == (3, PROJ)
    # the end-of-text token's projection is the pooled embedding, so it has unit norm after the division
    ids = text_embedder.tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    eos = (ids == 513).int().argmax(dim=1).numpy()
    np.testing.assert_allclose(np.linalg.norm(tokens[np.arange(3), eos], axis=-1), 1.0, rtol=1e-5)
    # CLIPModel's (L2-normalised) text_embeds agree with our pooled direction
    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True)
    with torch.no_grad():
        reference = model(input_ids=ids, pixel_values=torch.zeros(3, 3, IMAGE, IMAGE)).text_embeds.numpy()
    np.testing.assert_allclose(pooled / np.linalg.norm(pooled, axis=-1, keepdims=True), reference, atol=1e-5)
    # the pooled norm is a per-caption constant: other tokens keep their own (non-unit) norms
    assert not np.allclose(np.linalg.norm(tokens[0, 1:eos[0]], axis=-1), 1.0)
    np.testing.assert_allclose(text_embedder.tokens(captions[1:2]), tokens[1:2], atol=1e-5)


def test_hub_ids_are_rejected_with_a_clear_error(tmp_path):
    from brainrecon.embed.clip import ClipImageEmbedder, ClipTextEmbedder
    from brainrecon.errors import BrainreconError
    from brainrecon.generate.unclip import UnclipGenerator
    from brainrecon.generate.vae import VaePath
    from brainrecon.generate.versatile import VersatileGenerator

    cases = [(ClipImageEmbedder, "openai/clip-vit-large-patch14"), (ClipTextEmbedder, "openai/clip-vit-large-patch14"),
             (UnclipGenerator, "stabilityai/stable-diffusion-2-1-unclip"),
             (VersatileGenerator, "shi-labs/versatile-diffusion"), (VaePath, "stabilityai/sd-vae-ft-mse")]
    for cls, hub_id in cases:
        with pytest.raises(BrainreconError, match=r"hub id.*local") as info:
            cls(hub_id)
        assert f"{cls.__name__}(path)" in str(info.value) and "save_pretrained" in str(info.value)
    with pytest.raises(BrainreconError, match="lacks image_unet"):
        VersatileGenerator(tmp_path)  # a directory, but not a VD layout


# ---------------------------------------------------------------------------
# VAE path


def test_vae_round_trip_shapes_and_determinism(unclip_dir):
    from brainrecon.generate.vae import VaePath

    vae = VaePath(unclip_dir, batch_size=2)  # a pipeline dir: its vae/ subfolder is used
    images = random_images(3, 3)
    latents = vae.encode(images)
    assert latents.shape == (3, 4, IMAGE // 2, IMAGE // 2) and latents.dtype == torch.float32
    assert torch.equal(latents, vae.encode(images))
    sampled = vae.encode(images, sample=True, seed=5)
    assert torch.equal(sampled, vae.encode(images, sample=True, seed=5))
    assert not torch.equal(sampled, latents)
    decoded = vae.decode(latents)
    assert decoded.shape == images.shape and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, vae.decode(latents))


# ---------------------------------------------------------------------------
# SD-unCLIP


@pytest.fixture(scope="module")
def unclip(unclip_dir):
    from brainrecon.generate.unclip import UnclipGenerator

    return UnclipGenerator(unclip_dir, batch_size=2)


def test_unclip_from_image_embeds_is_seeded(unclip):
    from brainrecon.generate.base import GenerationRequest

    embeds = torch.randn(3, PROJ, generator=torch.Generator().manual_seed(0))
    request = GenerationRequest(image_pooled=embeds, steps=3, guidance_scale=3.0, seed=7)
    images = unclip.generate(request)
    assert images.shape == (3, IMAGE, IMAGE, 3) and images.dtype == np.uint8
    assert images.std() > 0
    np.testing.assert_array_equal(images, unclip.generate(request))
    other_seed = unclip.generate(GenerationRequest(image_pooled=embeds, steps=3, guidance_scale=3.0, seed=8))
    assert not np.array_equal(images, other_seed)
    # per-sample seeding: sample 2 alone (seed 7 + 2) equals sample 2 of the batch (batch_size 2 split it)
    alone = unclip.generate(GenerationRequest(image_pooled=embeds[2:], steps=3, guidance_scale=3.0, seed=9))
    np.testing.assert_array_equal(alone[0], images[2])
    with pytest.raises(ValueError, match="expects 16"):
        unclip.generate(GenerationRequest(image_pooled=torch.randn(1, 8), steps=2))


def test_unclip_img2img(unclip):
    from brainrecon.generate.base import GenerationRequest
    from brainrecon.generate.vae import VaePath

    embeds = torch.randn(2, PROJ, generator=torch.Generator().manual_seed(1))
    init = random_images(2, 4)
    request = GenerationRequest(image_pooled=embeds, init_images=init, strength=0.5, steps=4, guidance_scale=2.0)
    images = unclip.generate(request)
    assert images.shape == (2, IMAGE, IMAGE, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, unclip.generate(request))
    # strength 0 runs no denoising step: the output is the init image's VAE round trip
    untouched = unclip.generate(GenerationRequest(image_pooled=embeds, init_images=init, strength=0.0, steps=4))
    vae = VaePath.from_model(unclip.pipe.vae)
    np.testing.assert_array_equal(untouched, vae.decode(vae.encode(init)))
    assert not np.array_equal(images, untouched)


# ---------------------------------------------------------------------------
# Versatile-Diffusion dual guidance


@pytest.fixture(scope="module")
def versatile(vd_dir):
    from brainrecon.generate.versatile import VersatileGenerator

    return VersatileGenerator(vd_dir, batch_size=4)


def test_dual_guidance_from_clip_tokens(versatile, vd_dir, image_embedder, text_embedder):
    from diffusers import UNet2DConditionModel

    from brainrecon.generate.base import GenerationRequest
    from brainrecon.generate.versatile import DualCrossAttention

    # tiny UNet: one cross-attention block down, one in the middle, two up
    assert len(versatile.duals) == 4 and all(isinstance(d, DualCrossAttention) for d in versatile.duals)
    # the text blocks come from the text UNet (same module paths), not from the image UNet
    image_unet = UNet2DConditionModel.from_pretrained(vd_dir, subfolder="image_unet", local_files_only=True)
    first = versatile.duals[0]
    assert torch.equal(first.image_block.proj_in.weight, image_unet.down_blocks[0].attentions[0].proj_in.weight)
    assert not torch.equal(first.text_block.proj_in.weight, first.image_block.proj_in.weight)
    image_tokens = image_embedder.tokens(random_images(2, 5))
    text_tokens = text_embedder.tokens(["a red ball", "a house"])

    def run(**kwargs):
        settings = {"image_tokens": image_tokens, "text_tokens": text_tokens, "steps": 3, "guidance_scale": 3.5,
                        "mix_ratio": 0.5, "seed": 0}
        return versatile.generate(GenerationRequest(**{**settings, **kwargs}))

    mixed = run()
    assert mixed.shape == (2, IMAGE, IMAGE, 3) and mixed.dtype == np.uint8
    np.testing.assert_array_equal(mixed, run())
    assert not np.array_equal(mixed, run(seed=1))
    image_only = run(mix_ratio=0.0)
    assert not np.array_equal(mixed, image_only)
    # with mix 0 the text tokens are ignored entirely
    np.testing.assert_array_equal(image_only, run(mix_ratio=0.0, text_tokens=None))
    with pytest.raises(ValueError, match="text_tokens is missing"):
        run(text_tokens=None)


def test_dual_guidance_img2img(versatile, image_embedder):
    from brainrecon.generate.base import GenerationRequest

    init = random_images(2, 6)
    tokens = image_embedder.tokens(init)

    def run(strength, seed=0):
        return versatile.generate(GenerationRequest(image_tokens=tokens, init_images=init, strength=strength,
                                                    steps=4, guidance_scale=2.0, seed=seed))

    images = run(0.5)
    assert images.shape == (2, IMAGE, IMAGE, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, run(0.5))
    assert not np.array_equal(images, run(0.5, seed=3))
    untouched = run(0.0)
    np.testing.assert_array_equal(untouched, versatile.vae.decode(versatile.vae.encode(init)))
    assert not np.array_equal(images, untouched)


# ---------------------------------------------------------------------------
# embedding cache


def test_cache_computes_each_stimulus_once_per_model(tmp_path):
    from brainrecon.embed.cache import CacheError, EmbeddingCache

    calls = []

    def compute(ids):
        calls.append(list(ids))
        return np.stack([np.full((2, 3), float(i), dtype=np.float32) for i in ids])

    cache = EmbeddingCache(tmp_path / "cache")
    first = cache.get_or_compute("model-a", "clip-image-tokens", [3, 1, 2], compute)
    assert calls == [[3, 1, 2]] and first.shape == (3, 2, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first[:, 0, 0], [3, 1, 2])
    again = cache.get_or_compute("model-a", "clip-image-tokens", [3, 1, 2], compute)
    assert calls == [[3, 1, 2]]  # nothing recomputed
    np.testing.assert_array_equal(again, first)
    # a superset computes only the new ids; order and repeats follow the request
    mixed = cache.get_or_compute("model-a", "clip-image-tokens", [2, 5, 2, 4], compute)
    assert calls[-1] == [5, 4]
    np.testing.assert_array_equal(mixed[:, 0, 0], [2, 5, 2, 4])
    # a new cache object over the same directory reads it back from disk
    reopened = EmbeddingCache(tmp_path / "cache")
    assert reopened.cached_ids("model-a", "clip-image-tokens") == ["1", "2", "3", "4", "5"]
    reopened.get_or_compute("model-a", "clip-image-tokens", [1, 4], compute)
    assert len(calls) == 2
    # another model (or kind) is computed afresh
    cache.get_or_compute("model-b", "clip-image-tokens", [1, 2], compute)
    cache.get_or_compute("model-a", "clip-text-tokens", [1], compute)
    assert calls[-2:] == [[1, 2], [1]]
    folder = tmp_path / "cache" / "model-a" / "clip-image-tokens"
    assert (folder / "index.json").is_file() and len(list(folder.glob("shard-*.safetensors"))) == 2
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    with pytest.raises(CacheError, match="holds float32"):
        cache.get_or_compute("model-a", "clip-image-tokens", [9], lambda ids: np.zeros((1, 4)))
    with pytest.raises(CacheError, match="directory name"):
        cache.get_or_compute("../escape", "x", [1], compute)


def test_model_identity_follows_weights_not_location(tmp_path, clip_dir):
    import shutil

    from transformers import CLIPConfig, CLIPModel

    from brainrecon.embed.cache import model_identity

    key = model_identity(clip_dir)
    assert key == model_identity(shutil.copytree(clip_dir, tmp_path / "copy"))
    retrained = tmp_path / "retrained"
    shutil.copytree(clip_dir, retrained)
    CLIPModel(CLIPConfig(text_config=TEXT_CONFIG, vision_config=VISION_CONFIG, projection_dim=PROJ)) \
        .save_pretrained(retrained)  # same config, different (random) weights
    assert model_identity(retrained) != key
    assert model_identity(clip_dir, weights="stat") == model_identity(clip_dir, weights="stat")


def test_image_embedder_reads_diffusers_layouts_and_feeds_unclip(unclip_dir, unclip):
    from brainrecon.embed.clip import ClipImageEmbedder
    from brainrecon.generate.base import GenerationRequest

    # pipeline dir + subfolder; the preprocessor comes from the sibling feature_extractor/
    embedder = ClipImageEmbedder(unclip_dir, subfolder="image_encoder")
    images = random_images(2, 8)
    pooled = embedder.pooled(images)
    pixels = unclip.pipe.feature_extractor(images=list(images), return_tensors="pt").pixel_values
    with torch.no_grad():
        reference = unclip.pipe.image_encoder(pixels).image_embeds.numpy()
    np.testing.assert_allclose(pooled, reference, atol=1e-4)
    generated = unclip.generate(GenerationRequest(image_pooled=pooled, steps=2, guidance_scale=1.0))
    assert generated.shape == (2, IMAGE, IMAGE, 3) and generated.dtype == np.uint8


def test_generation_request_validation():
    from brainrecon.generate.base import GenerationRequest

    tokens = np.zeros((2, 5, PROJ), dtype=np.float32)
    with pytest.raises(ValueError, match="strength"):
        GenerationRequest(image_tokens=tokens, strength=1.5)
    with pytest.raises(ValueError, match="batch sizes disagree"):
        GenerationRequest(image_tokens=tokens, text_tokens=tokens[:1])
    with pytest.raises(ValueError, match="uint8"):
        GenerationRequest(image_tokens=tokens, init_images=np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="at least one"):
        GenerationRequest()
    assert GenerationRequest(image_tokens=tokens).n == 2


# diffusers' UniPC calls np.array on a tensor with copy=False, which numpy 2 flags; not ours to fix
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_multistep_scheduler_state_does_not_leak_between_calls(vd_dir):
    from brainrecon.generate.base import GenerationRequest
    from brainrecon.generate.versatile import VersatileGenerator

    generator = VersatileGenerator(vd_dir, scheduler="UniPCMultistepScheduler")  # as MindEye1 / MindBridge
    assert type(generator.scheduler).__name__ == "UniPCMultistepScheduler"
    tokens = np.random.default_rng(0).standard_normal((1, 5, PROJ)).astype(np.float32)
    init = random_images(1, 9)

    def run(strength):
        return generator.generate(GenerationRequest(image_tokens=tokens, init_images=init, strength=strength,
                                                    steps=4, guidance_scale=2.0))

    full = run(1.0)
    partial = run(0.5)  # starts mid-schedule (set_begin_index) ...
    np.testing.assert_array_equal(run(1.0), full)  # ... without affecting the next full run
    np.testing.assert_array_equal(run(0.5), partial)
    assert not np.array_equal(full, partial)


def test_torchvision_is_never_imported():
    import sys

    import brainrecon.embed.cache
    import brainrecon.embed.clip
    import brainrecon.generate.unclip
    import brainrecon.generate.vae
    import brainrecon.generate.versatile  # noqa: F401

    assert "torchvision" not in sys.modules
