"""MindEye1/2, the diffusion prior and the shared blocks: they learn, sample reproducibly, and count as published."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from model_testbed import LinearTestbed, small_space

from brainrecon.errors import ConfigError
from brainrecon.models import build_model, model_class
from brainrecon.models.base import StepInfo, TargetSpace
from brainrecon.models.blocks import LowLevelHead, ResidualMLP, TokenProjector
from brainrecon.models.losses import MixCo, draw_mixco
from brainrecon.models.mindeye1 import MindEye1, MindEye1Config
from brainrecon.models.mindeye2 import MindEye2, MindEye2Config, subject_mixes
from brainrecon.models.prior import DiffusionPrior, PriorConfig

torch.set_num_threads(1)

TINY_PRIOR = PriorConfig(depth=2, heads=2, dim_head=8, timesteps=50, sample_steps=10)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _step_info(step: int) -> StepInfo:
    return StepInfo(step, 10)  # steps 0-2 of 10: the BiMixCo phase


# ---------------------------------------------------------------- prior


@pytest.fixture(scope="module")
def fitted_prior():
    """A tiny prior fitted to target = normalise(cond @ W), with its first and last losses."""
    torch.manual_seed(0)
    cond = torch.randn(32, 5, 16)
    target = torch.nn.functional.normalize(cond @ torch.randn(16, 16), dim=-1)
    prior = DiffusionPrior(5, 16, TINY_PRIOR)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=1e-2)
    losses = []
    for step in range(150):
        loss = prior.loss(cond, target, _gen(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return prior.eval(), cond, target, losses


def test_prior_loss_decreases(fitted_prior):
    _, _, _, losses = fitted_prior
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.6 * first, (first, last)


def test_prior_sample_shape_and_reproducibility(fitted_prior):
    prior, cond, target, _ = fitted_prior
    a = prior.sample(cond[:4], _gen(7))
    b = prior.sample(cond[:4], _gen(7))
    c = prior.sample(cond[:4], _gen(8))
    assert a.shape == (4, 5, 16)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.isfinite(a).all()
    # the fitted prior's samples pick out their own targets among the 32 well above chance (~0.35 seen)
    sims = torch.nn.functional.normalize(prior.sample(cond, _gen(1), steps=20).flatten(1), dim=1) @ \
        torch.nn.functional.normalize(target.flatten(1), dim=1).T
    assert (sims.argmax(1) == torch.arange(len(cond))).float().mean() > 3 / len(cond)


def test_prior_guidance_one_is_the_conditional_path(fitted_prior, monkeypatch):
    prior, cond, _, _ = fitted_prior
    x, t = torch.randn(3, 5, 16), torch.tensor([3, 20, 49])
    conditional = prior.denoise(x, t, cond[:3])
    assert torch.equal(prior.predict_x0(x, t, cond[:3], 1.0), conditional)
    both = prior.denoise(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond[:3]] * 2),
                         torch.tensor([True] * 3 + [False] * 3))
    torch.testing.assert_close(prior.predict_x0(x, t, cond[:3], 2.5), both[3:] + 2.5 * (both[:3] - both[3:]))

    plain = prior.sample(cond[:3], _gen(3), guidance=1.0)
    # the same DDIM run with the explicit CFG combination at scale 1 gives the same samples
    def cfg_at_one(x_t, t, c, guidance):
        n = len(x_t)
        out = prior.denoise(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, c]),
                            torch.arange(2 * n) < n)
        return out[n:] + 1.0 * (out[:n] - out[n:])
    monkeypatch.setattr(prior, "predict_x0", cfg_at_one)
    torch.testing.assert_close(prior.sample(cond[:3], _gen(3)), plain, atol=1e-5, rtol=1e-5)


def test_prior_rejects_wrong_condition_shape():
    prior = DiffusionPrior(5, 16, TINY_PRIOR)
    with pytest.raises(ConfigError, match="condition tokens"):
        prior.loss(torch.randn(2, 4, 16), torch.randn(2, 4, 16), _gen(0))


# ---------------------------------------------------------------- blocks


@pytest.mark.parametrize("shape", [(4, 8, 8), (4, 16, 16), (4, 28, 28), (4, 64, 64), (3, 7, 5)])
def test_lowlevel_head_shapes(shape):
    head = LowLevelHead(32, shape, channels=(8, 16, 16))
    assert head(torch.randn(2, 32)).shape == (2, *shape)


def test_blocks_shapes():
    assert ResidualMLP(8, 2, 0.1, pre_norm=True)(torch.randn(3, 8)).shape == (3, 8)
    assert ResidualMLP(8, 2, 0.1, pre_norm=False)(torch.randn(3, 8)).shape == (3, 8)
    assert TokenProjector(8, 12, 3)(torch.randn(3, 5, 8)).shape == (3, 5, 8)


# ---------------------------------------------------------------- MixCo within subjects


def test_draw_mixco_stays_within_groups():
    sizes = [3, 5, 4]
    for seed in range(20):
        mix = draw_mixco(sizes, _gen(seed))
        offset = 0
        for size in sizes:
            part = mix.perm[offset:offset + size]
            assert sorted(part.tolist()) == list(range(offset, offset + size))
            offset += size
        for part, size in zip(subject_mixes(mix, sizes), sizes):
            assert sorted(part.perm.tolist()) == list(range(size))


def test_subject_mixes_rejects_cross_subject_partners():
    # upstream's bug: each subject's local permutation concatenated without its offset
    mix = MixCo(torch.tensor([2, 0, 1, 1, 2, 0]), torch.full((6,), 0.5), torch.ones(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="outside its subject"):
        subject_mixes(mix, [3, 3])


# ---------------------------------------------------------------- models learn


def _me1_config(**overrides) -> MindEye1Config:
    options = {"hidden": 64, "n_blocks": 2, "projector_hidden": 64, "prior": TINY_PRIOR, "lowlevel": True,
               "lowlevel_channels": (8, 16)}
    return MindEye1Config(**{**options, **overrides})


def test_mindeye1_learns_and_generates():
    space = small_space(5, 16)
    bed = LinearTestbed({"subj01": 100}, space)
    torch.manual_seed(0)
    model = MindEye1(_me1_config(), bed.subjects, space)
    losses = bed.fit(model, steps=100)
    assert sum(losses[-10:]) < sum(losses[:10])
    top1 = bed.retrieval_top1(model, "subj01")
    assert top1 > 0.5, top1  # chance is 1/64; about 0.9 is typical
    _, log = model.training_loss(bed.train_batches(0), _step_info(0), _gen(0))
    assert {"loss", "loss_clip", "loss_prior", "loss_lowlevel", "temperature", "mixco"} <= set(log)
    emb = model.embeddings_for_generation(bed.betas["subj01"][:3], "subj01", _gen(0))
    assert emb["image_tokens"].shape == (3, 5, 16) and emb["lowlevel"].shape == (3, 4, 8, 8)
    again = model.embeddings_for_generation(bed.betas["subj01"][:3], "subj01", _gen(0))
    assert torch.equal(emb["image_tokens"], again["image_tokens"])


def test_mindeye1_config_errors():
    space = small_space(5, 16)
    with pytest.raises(ConfigError, match="single-subject"):
        MindEye1(_me1_config(), {"a": 10, "b": 12}, space)
    model = MindEye1(_me1_config(prior=None, lowlevel=False), {"a": 10}, space)
    with pytest.raises(ConfigError, match="expects betas"):
        model.predict(torch.randn(2, 11), "a")
    with pytest.raises(ConfigError, match="lowlevel"):
        MindEye1(_me1_config(), {"a": 10}, TargetSpace({"image_tokens": (5, 16)}))
    with pytest.raises(ConfigError, match="hiden"):
        build_model("mindeye1", {"hiden": 64}, {"a": 10}, space)
    assert model_class("mindeye1") is MindEye1 and model_class("mindeye2") is MindEye2


def test_mindeye2_two_subjects_learn_and_add_subject():
    space = small_space(5, 16)
    bed = LinearTestbed({"a": 80, "b": 120}, space)
    torch.manual_seed(0)
    config = MindEye2Config(hidden=64, n_blocks=2, prior=TINY_PRIOR, lowlevel=True, lowlevel_channels=(8, 16))
    model = MindEye2(config, bed.subjects, space)
    losses = bed.fit(model, steps=100)
    assert sum(losses[-10:]) < sum(losses[:10])
    for subject in ("a", "b"):
        top1 = bed.retrieval_top1(model, subject)
        assert top1 > 0.5, (subject, top1)  # chance is 1/64; about 0.85-0.9 is typical
    with pytest.raises(ConfigError, match="expects betas"):
        model.predict(torch.randn(2, 81), "a")
    with pytest.raises(ConfigError, match="unknown subject"):
        model.predict(torch.randn(2, 80), "c")

    model.add_subject("c", 50)
    params = model.subject_parameters("c")
    assert [tuple(p.shape) for p in params] == [(64, 50), (64,)]
    assert model.predict(torch.randn(2, 50), "c")["image_tokens"].shape == (2, 5, 16)
    with pytest.raises(ConfigError, match="already"):
        model.add_subject("c", 50)
    with pytest.raises(ConfigError, match="unknown subject"):
        model.subject_parameters("d")
    emb = model.embeddings_for_generation(torch.randn(2, 80), "a", _gen(0))
    assert emb["image_tokens"].shape == (2, 5, 16) and emb["contrastive"].shape == (2, 5, 16)


def test_mindeye2_pooled_target_without_prior():
    space = small_space(5, 16)
    model = MindEye2(MindEye2Config(hidden=32, n_blocks=1, prior=None, target="image_pooled"), {"a": 20}, space)
    assert model.retrieval_target == "image_pooled"
    assert model.predict(torch.randn(3, 20), "a")["image_pooled"].shape == (3, 16)
    bed = LinearTestbed({"a": 20}, space, n_train=64, n_test=16)
    loss, log = model.training_loss(bed.train_batches(0, 8), _step_info(0), _gen(0))
    assert torch.isfinite(loss) and "loss_prior" not in log


def test_mindeye2_prior_reads_a_pooled_target_at_its_own_scale():
    """Image tokens are divided by the CLS norm (unit norm), so sqrt(dim) gives their elements unit variance; a
    pooled CLIP embedding is not normalised, so its prior scales by 1 unless the config names a scale."""
    space = small_space(5, 16)
    tokens = MindEye2(MindEye2Config(hidden=32, n_blocks=1, prior=PriorConfig(depth=1)), {"a": 20}, space)
    pooled = MindEye2(MindEye2Config(hidden=32, n_blocks=1, prior=PriorConfig(depth=1), target="image_pooled"),
                      {"a": 20}, space)
    chosen = MindEye2(MindEye2Config(hidden=32, n_blocks=1, prior=PriorConfig(depth=1, embed_scale=3.0),
                                     target="image_pooled"), {"a": 20}, space)
    assert tokens.prior.scale == math.sqrt(16) and pooled.prior.scale == 1.0 and chosen.prior.scale == 3.0
    assert pooled.config.prior.embed_scale is None  # the saved config stays the user's; the default is re-derived
    bed = LinearTestbed({"a": 20}, space, n_train=64, n_test=16)
    loss, log = pooled.training_loss(bed.train_batches(0, 8), _step_info(0), _gen(0))
    assert torch.isfinite(loss) and "loss_prior" in log


# ---------------------------------------------------------------- parameter counts (meta device: no memory)


def _count(model: torch.nn.Module, prefixes: tuple[str, ...]) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if name.startswith(prefixes))


def test_mindeye1_parameter_count_matches_published():
    space = TargetSpace({"image_tokens": (257, 768)})
    with torch.device("meta"):
        model = MindEye1(MindEye1Config(prior=None), {"subj01": 15724}, space)
    # voxel2clip as printed by MindEye's (Scotti et al., NeurIPS 2023) released Train_MindEye.ipynb
    assert _count(model, ("lin0", "mlp", "lin1", "projector")) == 947_579_904


def test_mindeye2_parameter_count_matches_published():
    space = TargetSpace({"image_tokens": (256, 1664)})
    with torch.device("meta"):
        model = MindEye2(MindEye2Config(hidden=1024, prior=None), {"subj01": 15724}, space)
    assert _count(model, ("adapters",)) == 16_102_400  # ridge, MindEye2 (Scotti et al., ICML 2024) Train.ipynb
    # upstream's vestigial mixer_blocks2 (4 x [LayerNorm(1) + Linear(1,1) + Linear(1,1)] = 4 x 6) are left out
    assert _count(model, ("mlp", "lin1", "projector")) == 453_360_280 - 24
