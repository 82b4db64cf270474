"""Train the simulated world's small model set: CLIP, VAE and an unCLIP-style decoder.

Everything is trained from scratch on procedural scenes rendered straight from
`brainrecon.data.simworld.scenes` (≈2 ms a scene, so tens of thousands are cheap)
and saved with `save_pretrained` in the layouts the real checkpoints use:

    OUT/clip/      CLIPModel + byte-level CLIPTokenizer + CLIPImageProcessor config
    OUT/decoder/   StableUnCLIPImg2ImgPipeline (unet, vae, scheduler, image_encoder,
                   image_normalizer, image_noising_scheduler, text_encoder, tokenizer,
                   feature_extractor); vae/ is the small VAE
    OUT/manifest.json

The three training loops are written out in plain sight (nanoGPT style):

1. CLIP: symmetric InfoNCE between an image and one random caption of its four.
2. VAE: AutoencoderKL, 64 px -> 16x16x4, MSE plus a very small KL term; the
   latent scaling factor is set to 1 / std of the trained latents.
3. Decoder: a latent-space UNet2DConditionModel trained to predict noise, conditioned
   exactly the way StableUnCLIPImg2ImgPipeline conditions it at sampling time:
   `class_labels = pipe.noise_image_embeddings(clip_image_embeds, noise_level)`
   (normalised + noise-augmented embedding concatenated with the noise-level code),
   zeroed with probability `cfg_dropout` (the pipeline's unconditional input is
   zeros), and cross-attention on the text encoder's states of the empty prompt.

All three follow the trainer's "cosine" learning-rate schedule (`brainrecon.train.trainer.learning_rate`)
with a linear warm-up and a floor of 10% of the peak. Held-out scenes are never rendered for training
(`brainrecon.assets.scenes`); `brainrecon.assets.tune` and `brainrecon.assets.check` then choose the
guidance scale and measure the trained set.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from brainrecon.assets.manifest import read_manifest, write_manifest
from brainrecon.assets.scenes import (
    HELDOUT_KEY,
    HELDOUT_WORLD_SEED,
    IMAGE_SIZE,
    TRAIN_KEY,
    VALIDATION_KEY,
    render_scenes,
)
from brainrecon.embed.clip import CLIP_MEAN, CLIP_STD, byte_level_tokenizer
from brainrecon.io import check_output_dir, partial_dir, publish_dir
from brainrecon.train.config import OptimConfig
from brainrecon.train.run import optimizer_from_safetensors, optimizer_to_safetensors
from brainrecon.train.trainer import learning_rate


# ---------------------------------------------------------------------------------------------
# plan: model sizes and step counts


@dataclass(frozen=True)
class TrainPlan:
    n_scenes: int
    # CLIP
    clip_width: int
    clip_layers: int
    clip_steps: int
    clip_batch: int
    clip_lr: float
    # VAE
    vae_channels: tuple[int, ...]
    vae_steps: int
    vae_batch: int
    vae_lr: float
    vae_kl_weight: float
    # decoder
    unet_channels: tuple[int, ...]
    unet_steps: int
    unet_batch: int
    unet_lr: float
    cfg_dropout: float
    max_noise_level: int   # embedding noise augmentation, sampled per batch in [0, max] half of the time
    warmup: int
    # decoder recipe (defaults = the first shipped set's, so older manifests still describe their run)
    unet_attention: bool = True    # transformer blocks in the down/up path (the mid block always has one)
    unet_film: bool = False        # scale-and-shift ("FiLM") time/condition injection instead of a bias
    unet_ema: float = 0.0          # EMA decay of the UNet weights; 0 = no EMA, ship the raw weights
    unet_min_snr: float = 0.0      # Min-SNR-gamma loss weighting (Hang et al. 2023); 0 = plain MSE
    checkpoint_every: int = 250    # decoder steps between resumable checkpoints

    @classmethod
    def full(cls) -> TrainPlan:
        # CLIP and VAE sized to train in ~20 minutes on 2 CPU cores; the decoder is the long part (~55 min).
        # Decoder recipe (docs/assets.md): no attention in the down/up path (it cost half of each step and,
        # with a constant empty prompt, cross-attention carries nothing), FiLM conditioning so the CLIP
        # embedding scales as well as shifts every ResNet block, Min-SNR-5 weighting and an EMA.
        return cls(n_scenes=24000,
                   clip_width=128, clip_layers=4, clip_steps=480, clip_batch=128, clip_lr=1e-3,
                   vae_channels=(16, 32, 64), vae_steps=700, vae_batch=16, vae_lr=1e-3, vae_kl_weight=1e-7,
                   unet_channels=(32, 64, 128), unet_steps=5000, unet_batch=64, unet_lr=1e-3, cfg_dropout=0.1,
                   max_noise_level=300, warmup=100, unet_attention=False, unet_film=True, unet_ema=0.999,
                   unet_min_snr=5.0, checkpoint_every=250)

    @classmethod
    def quick(cls) -> TrainPlan:
        # for tests: tiny models and a handful of steps, loadable but not good
        return cls(n_scenes=64,
                   clip_width=32, clip_layers=1, clip_steps=2, clip_batch=16, clip_lr=1e-3,
                   vae_channels=(8, 8, 8), vae_steps=2, vae_batch=8, vae_lr=1e-3, vae_kl_weight=1e-7,
                   unet_channels=(16, 16, 32), unet_steps=3, unet_batch=8, unet_lr=5e-4, cfg_dropout=0.1,
                   max_noise_level=300, warmup=1, unet_attention=False, unet_film=True, unet_ema=0.9,
                   unet_min_snr=5.0, checkpoint_every=2)


def lr_schedule(peak: float, plan: TrainPlan) -> OptimConfig:
    """The trainer's "cosine" schedule: linear warm-up over plan.warmup steps, then cosine from peak to 0.1 peak.

    Read with `learning_rate(step, total, schedule, epochs=1)` (epochs only matters for "onecycle").
    """
    return OptimConfig(lr=peak, schedule="cosine", warmup_steps=plan.warmup, min_lr_fraction=0.1)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@contextmanager
def private_torch_rng(seed: int | None = None) -> Iterator[None]:
    """torch's global CPU generator, seeded with `seed` if given, for this block only.

    Model initialisation (and VAE posterior sampling) draw from the global generator; inside this
    block they draw from `seed`, and the caller's generator state is restored on the way out.
    """
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.default_generator.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------------------
# data: scenes (brainrecon.assets.scenes) as the pixels CLIP and the VAE take


def to_clip_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 64, 64, 3) -> CLIP-normalised (n, 3, 64, 64); equals ClipPreprocess at this size (no resize)."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (pixels - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def to_vae_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 -> [-1, 1], the diffusers convention (same as generate.base.images_to_tensor)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ---------------------------------------------------------------------------------------------
# model builders


def image_processor():
    """64 px in, no resize or crop needed; OpenAI CLIP mean/std (what ClipImageEmbedder reads)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                              crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                              image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def make_clip(plan: TrainPlan):
    from transformers import CLIPConfig, CLIPModel

    width, layers = plan.clip_width, plan.clip_layers
    heads = max(1, width // 32)
    text = dict(vocab_size=514, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                num_attention_heads=heads, max_position_embeddings=77, projection_dim=width,
                bos_token_id=512, eos_token_id=513, pad_token_id=513)
    vision = dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=width, intermediate_size=4 * width,
                  num_hidden_layers=layers, num_attention_heads=heads, projection_dim=width)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=width))


def make_vae(plan: TrainPlan):
    from diffusers import AutoencoderKL

    n = len(plan.vae_channels)  # n blocks = n - 1 downsamplings: 64 -> 16 needs 3
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=plan.vae_channels,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         layers_per_block=1, norm_num_groups=min(8, plan.vae_channels[0]), sample_size=IMAGE_SIZE)


def make_unet(plan: TrainPlan, embed_dim: int, text_dim: int):
    from diffusers import UNet2DConditionModel

    n = len(plan.unet_channels)
    # never attention at full latent resolution (16x16, costly on CPU); optionally none in the down/up path.
    # The mid block keeps its transformer, so the pipeline's (empty-prompt) cross-attention input is still used.
    inner_down, inner_up = ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D") if plan.unet_attention else \
        ("DownBlock2D", "UpBlock2D")
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=plan.unet_channels,
        down_block_types=("DownBlock2D",) + (inner_down,) * (n - 1),
        up_block_types=(inner_up,) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=text_dim, attention_head_dim=16, norm_num_groups=min(16, plan.unet_channels[0]),
        resnet_time_scale_shift="scale_shift" if plan.unet_film else "default",
        # unCLIP conditioning: [noised embedding, noise-level code] -> projected and added to the time embedding
        class_embed_type="projection", projection_class_embeddings_input_dim=2 * embed_dim)


def diffusion_schedulers():
    """Training (DDPM) and sampling (DDIM) schedulers with SD's scaled-linear betas."""
    from diffusers import DDIMScheduler, DDPMScheduler

    betas = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                 prediction_type="epsilon", clip_sample=False)
    return DDPMScheduler(**betas), DDIMScheduler(**betas, steps_offset=1, set_alpha_to_one=False)


def count_parameters(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


# ---------------------------------------------------------------------------------------------
# 1. CLIP


def train_clip(plan: TrainPlan, images: np.ndarray, caption_lists: list[list[str]], tokenizer, seed: int,
               log=print):
    with private_torch_rng(seed):
        rng = np.random.default_rng([seed, 1])
        model = make_clip(plan).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=plan.clip_lr, weight_decay=0.05)
        schedule = lr_schedule(plan.clip_lr, plan)
        for step in range(plan.clip_steps):
            set_lr(optimizer, learning_rate(step, plan.clip_steps, schedule, epochs=1))
            idx = rng.choice(len(images), plan.clip_batch, replace=False)
            texts = [caption_lists[i][int(rng.integers(len(caption_lists[i])))] for i in idx]
            # no attention mask, as ClipTextEmbedder encodes: the causal mask keeps padding out of the EOS state
            ids = tokenizer(texts, padding="longest", max_length=77, truncation=True, return_tensors="pt").input_ids
            out = model(input_ids=ids, pixel_values=to_clip_pixels(images[idx]))
            logits = out.logits_per_image  # (B, B), already scaled by exp(logit_scale)
            target = torch.arange(len(idx))
            loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # CLIP's clamp of the temperature
                model.logit_scale.clamp_(0, math.log(100))
            if step % 50 == 0 or step == plan.clip_steps - 1:
                accuracy = (logits.argmax(1) == target).float().mean().item()
                log(f"clip step {step:5d}  loss {loss.item():.3f}  in-batch top-1 {accuracy:.2f}")
        return model.eval()


# ---------------------------------------------------------------------------------------------
# 2. VAE


def train_vae(plan: TrainPlan, images: np.ndarray, seed: int, log=print):
    with private_torch_rng(seed):
        rng = np.random.default_rng([seed, 2])
        vae = make_vae(plan).train()
        optimizer = torch.optim.AdamW(vae.parameters(), lr=plan.vae_lr, weight_decay=0.0)
        schedule = lr_schedule(plan.vae_lr, plan)
        for step in range(plan.vae_steps):
            set_lr(optimizer, learning_rate(step, plan.vae_steps, schedule, epochs=1))
            pixels = to_vae_pixels(images[rng.choice(len(images), plan.vae_batch, replace=False)])
            posterior = vae.encode(pixels).latent_dist
            recon = vae.decode(posterior.sample()).sample
            mse = F.mse_loss(recon, pixels)
            loss = mse + plan.vae_kl_weight * posterior.kl().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % 50 == 0 or step == plan.vae_steps - 1:
                psnr = 10 * math.log10(4 / max(mse.item(), 1e-8))  # pixels span [-1, 1]: peak-to-peak 2
                log(f"vae  step {step:5d}  mse {mse.item():.4f}  (psnr {psnr:.1f} dB)")
        vae.eval()
        # unit-variance latents for the diffusion model, the role 0.18215 plays for SD's VAE
        with torch.no_grad():
            sample = to_vae_pixels(images[:min(len(images), 512)])
            std = float(vae.encode(sample).latent_dist.mean.std())
        vae.register_to_config(scaling_factor=1.0 / std)
        return vae


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Scaled posterior means (as VaePath.encode gives them)."""
    out = [vae.encode(to_vae_pixels(images[i:i + batch])).latent_dist.mean * vae.config.scaling_factor
           for i in range(0, len(images), batch)]
    return torch.cat(out)


@torch.no_grad()
def clip_image_embeds(clip_model, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Pooled image_embeds (unnormalised), what ClipImageEmbedder.pooled returns."""
    out = [clip_model.visual_projection(clip_model.vision_model(pixel_values=to_clip_pixels(images[i:i + batch]))
                                        .pooler_output) for i in range(0, len(images), batch)]
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# 3. the decoder, inside the pipeline it will be sampled with


def build_pipeline(plan: TrainPlan, clip_model, tokenizer, vae, embeds: torch.Tensor, seed: int):
    """A StableUnCLIPImg2ImgPipeline around a fresh UNet, reusing the small CLIP's towers."""
    from diffusers import DDPMScheduler, StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPTextModel, CLIPVisionModelWithProjection

    config = clip_model.config
    with private_torch_rng():  # their random initialisation is overwritten just below
        image_encoder = CLIPVisionModelWithProjection(config.vision_config)
        text_encoder = CLIPTextModel(config.text_config)
    image_encoder.vision_model.load_state_dict(clip_model.vision_model.state_dict())
    image_encoder.visual_projection.load_state_dict(clip_model.visual_projection.state_dict())
    text_encoder.load_state_dict(clip_model.text_model.state_dict())  # transformers 5: CLIPTextModel is flat

    embed_dim = config.projection_dim
    normalizer = StableUnCLIPImageNormalizer(embedding_dim=embed_dim)
    with torch.no_grad():  # the noise augmentation works on standardised embeddings, as in SD-unCLIP
        normalizer.mean.copy_(embeds.mean(0, keepdim=True))
        normalizer.std.copy_(embeds.std(0, keepdim=True))
    with private_torch_rng(seed):
        unet = make_unet(plan, embed_dim, config.text_config.hidden_size)
    _, sampler = diffusion_schedulers()
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=image_processor(), image_encoder=image_encoder.eval(), image_normalizer=normalizer,
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"), tokenizer=tokenizer,
        text_encoder=text_encoder.eval(), unet=unet, scheduler=sampler, vae=vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train_decoder(plan: TrainPlan, pipe, latents: torch.Tensor, embeds: torch.Tensor, seed: int,
                  checkpoint_dir: Path | None = None, log=print):
    """ε-prediction on the VAE latents, conditioned as the pipeline conditions; resumes from `checkpoint_dir`."""
    with private_torch_rng(seed):
        rng = np.random.default_rng([seed, 3])
        noise_gen = torch.Generator().manual_seed(seed)
        trainer, _ = diffusion_schedulers()
        alphas_cumprod = trainer.alphas_cumprod
        unet = pipe.unet.train()
        with torch.no_grad():  # the prompt is always empty, so its encoder states are one constant
            empty, _ = pipe.encode_prompt(prompt=[""], device="cpu", num_images_per_prompt=1,
                                          do_classifier_free_guidance=False)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=plan.unet_lr, weight_decay=0.0)
        schedule = lr_schedule(plan.unet_lr, plan)
        ema = {name: p.detach().clone() for name, p in unet.named_parameters()} if plan.unet_ema > 0 else None
        first = 0
        if checkpoint_dir is not None and (checkpoint_dir / "state.json").is_file():
            first = load_decoder_checkpoint(checkpoint_dir, plan, unet, optimizer, ema, rng, noise_gen)
            log(f"unet resuming at step {first} from {checkpoint_dir}")
        started, losses = time.perf_counter(), []
        for step in range(first, plan.unet_steps):
            set_lr(optimizer, learning_rate(step, plan.unet_steps, schedule, epochs=1))
            idx = torch.from_numpy(rng.choice(len(latents), plan.unet_batch, replace=False))
            x0, embed = latents[idx], embeds[idx]
            # conditioning exactly as the pipeline builds it; half the batches with some noise augmentation
            level = int(rng.integers(1, plan.max_noise_level + 1)) if rng.random() < 0.5 else 0
            with torch.no_grad():
                class_labels = pipe.noise_image_embeddings(embed, noise_level=level, generator=noise_gen)
            drop = torch.from_numpy(rng.random(len(idx)) < plan.cfg_dropout)
            class_labels[drop] = 0.0  # the pipeline's unconditional input for classifier-free guidance
            t = torch.randint(0, trainer.config.num_train_timesteps, (len(idx),), generator=noise_gen)
            noise = torch.randn(x0.shape, generator=noise_gen)
            a = alphas_cumprod[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
            predicted = unet(noisy, t, encoder_hidden_states=empty.expand(len(idx), -1, -1),
                             class_labels=class_labels).sample
            per_sample = F.mse_loss(predicted, noise, reduction="none").mean(dim=(1, 2, 3))
            loss = (min_snr_weights(alphas_cumprod[t], plan.unet_min_snr) * per_sample).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            if ema is not None:
                update_ema(ema, unet, decay=min(plan.unet_ema, (1 + step) / (10 + step)))
            losses.append(per_sample.mean().item())
            if step % 50 == 0 or step == plan.unet_steps - 1:
                rate = (time.perf_counter() - started) / (step - first + 1)
                log(f"unet step {step:5d}  mse {np.mean(losses[-50:]):.4f}  "
                    f"({rate:.2f} s/step, ~{rate * (plan.unet_steps - step - 1) / 60:.0f} min left)")
            if checkpoint_dir is not None and (step + 1) % plan.checkpoint_every == 0 and step + 1 < plan.unet_steps:
                save_decoder_checkpoint(checkpoint_dir, step + 1, plan, unet, optimizer, ema, rng, noise_gen)
        if ema is not None:  # ship the averaged weights
            with torch.no_grad():
                for name, p in unet.named_parameters():
                    p.copy_(ema[name])
        unet.eval()
        return pipe


def min_snr_weights(alphas_cumprod: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma for ε-prediction: min(SNR, gamma) / SNR, so easy low-noise steps stop dominating."""
    if gamma <= 0:
        return torch.ones_like(alphas_cumprod)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return snr.clamp(max=gamma) / snr


@torch.no_grad()
def update_ema(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    for name, p in model.named_parameters():
        ema[name].mul_(decay).add_(p.detach(), alpha=1 - decay)


def save_decoder_checkpoint(folder: Path, step: int, plan: TrainPlan, unet, optimizer, ema, rng, noise_gen) -> None:
    """Everything needed to continue bit-for-bit: weights, EMA, optimizer and both random streams."""
    from safetensors.torch import save_file

    def write(partial: Path) -> None:
        weights = {k: v.detach().contiguous() for k, v in unet.state_dict().items()}
        save_file(weights, str(partial / "unet.safetensors"))
        if ema is not None:
            save_file(ema, str(partial / "ema.safetensors"))
        tensors, meta = optimizer_to_safetensors(optimizer.state_dict())
        tensors["noise_generator_state"] = noise_gen.get_state()
        save_file(tensors, str(partial / "optimizer.safetensors"))
        (partial / "state.json").write_text(json.dumps({"step": step, "plan": asdict(plan), "optimizer": meta,
                                                        "numpy_rng": rng.bit_generator.state}))

    save_folder_atomic(Path(folder), write)


def load_decoder_checkpoint(folder: Path, plan: TrainPlan, unet, optimizer, ema, rng, noise_gen) -> int:
    from safetensors.torch import load_file

    state = json.loads((Path(folder) / "state.json").read_text())
    if state["plan"] != json.loads(json.dumps(asdict(plan))):
        raise ValueError(f"{folder} was written by a different training plan; delete it to start the decoder afresh")
    unet.load_state_dict(load_file(str(Path(folder) / "unet.safetensors")))
    if ema is not None:
        ema.update(load_file(str(Path(folder) / "ema.safetensors")))
    tensors = load_file(str(Path(folder) / "optimizer.safetensors"))
    noise_gen.set_state(tensors.pop("noise_generator_state"))
    optimizer.load_state_dict(optimizer_from_safetensors(tensors, state["optimizer"]))
    rng.bit_generator.state = state["numpy_rng"]
    return int(state["step"])


# ---------------------------------------------------------------------------------------------
# saving


def _half_copy(module):
    import copy

    return copy.deepcopy(module).half()


def save_clip(clip_model, tokenizer, folder: Path) -> None:
    _half_copy(clip_model).save_pretrained(folder)  # float16 halves the size; loaders cast back to float32
    tokenizer.save_pretrained(folder)
    image_processor().save_pretrained(folder)


def save_pipeline(pipe, folder: Path) -> None:
    """Save with float16 weights for the big parts; the normaliser's statistics stay float32."""
    from diffusers import StableUnCLIPImg2ImgPipeline

    components = dict(pipe.components)
    for name in ("unet", "vae", "image_encoder", "text_encoder"):
        components[name] = _half_copy(components[name])
    StableUnCLIPImg2ImgPipeline(**components).save_pretrained(folder)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


# ---------------------------------------------------------------------------------------------
# the whole run


def train_assets(out: Path, seed: int = 0, quick: bool = False, command: str | None = None,
                 decoder_only: bool = False, log=print) -> dict:
    """Train CLIP, VAE and decoder into `out`; returns (and writes) the manifest.

    `decoder_only` keeps the CLIP and VAE already in `out` and trains a fresh decoder on them (the
    manifest then lists both stages). The decoder checkpoints to `out/decoder-checkpoint` as it goes,
    so an interrupted run continues where it stopped when started again with the same arguments.
    """
    out = Path(out)
    # a model set's own folder is resumed (or its decoder retrained); a file or someone else's folder is refused
    check_output_dir(out, "a brainrecon model set", _is_model_set, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    plan = TrainPlan.quick() if quick else TrainPlan.full()
    command = command or (f"brainrecon assets train --out {out} --seed {seed}" + (" --quick" if quick else "")
                          + (" --decoder-only" if decoder_only else ""))
    previous = _previous_stage(out, seed, quick) if decoder_only else None
    seconds: dict[str, float] = {}
    started_all = time.perf_counter()

    started = time.perf_counter()
    images, caption_lists = render_scenes(seed, TRAIN_KEY, range(plan.n_scenes))
    seconds["data"] = time.perf_counter() - started
    log(f"rendered {len(images)} training scenes in {seconds['data']:.0f} s")

    tokenizer = byte_level_tokenizer()
    if decoder_only:
        clip_model, vae = load_clip_and_vae(out)
    else:
        started = time.perf_counter()
        clip_model = train_clip(plan, images, caption_lists, tokenizer, seed, log)
        seconds["clip"] = time.perf_counter() - started
        save_folder_atomic(out / "clip", lambda path: save_clip(clip_model, tokenizer, path))
        started = time.perf_counter()
        vae = train_vae(plan, images, seed, log)
        seconds["vae"] = time.perf_counter() - started
        # the decoder learns from what the saved (float16) models will give at sampling time
        clip_model, vae = _half_copy(clip_model).float(), _half_copy(vae).float()

    started = time.perf_counter()
    latents, embeds = encode_latents(vae, images), clip_image_embeds(clip_model, images)
    pipe = build_pipeline(plan, clip_model, tokenizer, vae, embeds, seed)
    seconds["encode"] = time.perf_counter() - started
    started = time.perf_counter()
    checkpoint = out / "decoder-checkpoint"
    train_decoder(plan, pipe, latents, embeds, seed, checkpoint_dir=checkpoint, log=log)
    seconds["decoder"] = time.perf_counter() - started
    save_pipeline_atomic(pipe, out / "decoder")
    shutil.rmtree(checkpoint, ignore_errors=True)
    seconds["total"] = time.perf_counter() - started_all

    stage = {"command": command, "trained": ["decoder"] if decoder_only else ["clip", "vae", "decoder"],
             "seconds": round(seconds["total"], 1)}
    if previous is not None:  # this stage's data rendering and encoding replace the earlier stage's
        earlier = {k: v for k, v in previous["training_seconds"].items() if k in ("clip", "vae")}
        seconds = {**earlier, **seconds}
        seconds["total"] = sum(v for k, v in seconds.items() if k != "total")
    manifest = {
        "what": "small CLIP, VAE and unCLIP-style decoder trained on the brainrecon simulated world "
                "(a testbed model set, not comparable to real CLIP / Versatile Diffusion / SD-unCLIP)",
        "command": command,
        "stages": (_stages(previous) if previous is not None else []) + [stage],
        "seed": seed,
        "quick": quick,
        "torch_threads": torch.get_num_threads(),
        "data": {
            "train": f"{plan.n_scenes} scenes sample_scene(derive_rng({seed}, '{TRAIN_KEY}', i)), i < {plan.n_scenes}, "
                     f"rendered at {IMAGE_SIZE} px, 4 template captions each (one drawn at random per CLIP step)",
            "heldout": f"the default world's shared test images: derive_rng({HELDOUT_WORLD_SEED}, '{HELDOUT_KEY}', i), "
                       f"ids 0..n-1 (never used for training)",
            "validation": f"scenes derive_rng({seed}, '{VALIDATION_KEY}', i) (for choosing sampling settings; "
                          f"neither trained on nor the held-out check set)",
        },
        "plan": asdict(plan),
        "steps": {"clip": plan.clip_steps, "vae": plan.vae_steps, "decoder": plan.unet_steps},
        "batch": {"clip": plan.clip_batch, "vae": plan.vae_batch, "decoder": plan.unet_batch},
        "training_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "parameters": {"clip": count_parameters(clip_model), "vae": count_parameters(pipe.vae),
                       "unet": count_parameters(pipe.unet)},
        "vae_scaling_factor": float(pipe.vae.config.scaling_factor),
        "file_bytes": {"clip": folder_bytes(out / "clip"), "decoder": folder_bytes(out / "decoder")},
        "dtype_on_disk": "float16 (image_normalizer float32)",
    }
    manifest["file_bytes"]["total"] = manifest["file_bytes"]["clip"] + manifest["file_bytes"]["decoder"]
    write_manifest(out, manifest)
    log(f"done in {seconds['total']:.0f} s; {manifest['file_bytes']['total'] / 1e6:.1f} MB in {out}")
    return manifest


def _is_model_set(folder: Path) -> bool:
    """Whether a folder holds (part of) a model set: what `train_assets` writes or resumes from."""
    return any((folder / name).exists() for name in ("manifest.json", "clip", "decoder", "decoder-checkpoint"))


def _previous_stage(out: Path, seed: int, quick: bool) -> dict:
    """The manifest of the run whose CLIP and VAE a --decoder-only run reuses (checked to match)."""
    needed = [out / "manifest.json", out / "clip" / "config.json", out / "decoder" / "vae" / "config.json"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"--decoder-only reuses the CLIP and VAE of an earlier `brainrecon assets train` "
                                f"in {out}, but {', '.join(missing)} is missing; run it without --decoder-only")
    previous = read_manifest(out)
    if previous.get("seed") != seed or previous.get("quick") != quick:
        raise ValueError(f"{out} was trained with seed {previous.get('seed')} and quick={previous.get('quick')}; "
                         f"--decoder-only must use the same --seed and --quick, so the decoder sees the same scenes")
    return previous


def _stages(previous: dict) -> list[dict]:
    """Earlier stages, minus the decoder this run replaces."""
    stages = previous.get("stages") or [{"command": previous["command"], "trained": ["clip", "vae", "decoder"],
                                         "seconds": previous["training_seconds"]["total"]}]
    kept = []
    for stage in stages:
        trained = [part for part in stage["trained"] if part != "decoder"]
        if trained:
            kept.append({**stage, "trained": trained})
    return kept


def load_clip_and_vae(out: Path):
    """The saved small CLIP and VAE, in float32 (what a decoder-only stage trains on)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPModel

    clip_model = CLIPModel.from_pretrained(out / "clip", local_files_only=True, dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(out / "decoder" / "vae", local_files_only=True, dtype=torch.float32).eval()
    return clip_model, vae


def save_folder_atomic(folder: Path, write) -> None:
    """``write(path)`` fills a folder assembled next to ``folder``, which then takes its place by renames, so a
    crash never leaves half a model (or no model where one was)."""
    partial = partial_dir(folder)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write(partial)
    publish_dir(partial, folder)


def save_pipeline_atomic(pipe, folder: Path) -> None:
    save_folder_atomic(folder, lambda path: save_pipeline(pipe, path))
