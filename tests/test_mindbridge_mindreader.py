"""MindBridge (multi-subject, reset-tuning) and Mind Reader (single-subject CNN) learn on the synthetic testbed."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from model_testbed import LinearTestbed, small_space

from brainrecon.errors import ConfigError
from brainrecon.models import StepInfo, TargetSpace, build_model
from brainrecon.models.mindbridge import AdaptivePool

torch.set_num_threads(1)

CHANCE = 1 / 64  # the testbed's 64 test stimuli
SMALL_BRIDGE = {"pool_length": 32, "adapter_bottleneck": 8, "hidden": 64}
SMALL_READER = {"channels": 8, "n_res_blocks": 2, "token_channels": 32, "fc_hidden": 16}
SOURCES = {"s1": 40, "s2": 57, "s3": 90}  # voxel counts above and below pool_length


def _fit(model, testbed, subjects, steps, params=None, lr=1e-3, seed=0):
    """Like LinearTestbed.fit, but on a subset of the testbed's subjects and a chosen parameter set."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(list(params if params is not None else model.parameters()), lr=lr)
    model.train()
    for step in range(steps):
        batches = [b for b in testbed.train_batches(step) if b.subject in subjects]
        loss, _ = model.training_loss(batches, StepInfo(step, steps), torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.fixture(scope="module")
def bridge_world():
    """A MindBridge trained on three source subjects; the testbed also holds a fourth, "new", for reset-tuning."""
    space = small_space()
    testbed = LinearTestbed({**SOURCES, "new": 66}, space, seed=1)
    model = build_model("mindbridge", {**SMALL_BRIDGE, "cycle_into": "new"}, SOURCES, space)
    _fit(model, testbed, SOURCES, steps=200)
    return model, testbed


# --- MindBridge -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["max", "avg", "resize"])
def test_pooling_gives_fixed_length_for_any_voxel_count(mode):
    pool = AdaptivePool(32, mode)
    for n_voxels in (7, 31, 32, 33, 101, 1000):
        assert pool(torch.randn(3, n_voxels)).shape == (3, 32)
    if mode == "max":  # max pooling keeps the peak of each bin
        x = torch.arange(64.0).unsqueeze(0)
        assert torch.equal(pool(x), torch.arange(1.0, 64.0, 2).unsqueeze(0))


def test_mindbridge_learns_every_subject(bridge_world):
    model, testbed = bridge_world
    for subject in SOURCES:
        top1 = testbed.retrieval_top1(model, subject)
        assert top1 > 3 * CHANCE, f"{subject}: top-1 {top1:.3f} is not above 3x chance"
    model.eval()
    with torch.no_grad():
        out = model.predict(testbed.betas["s2"][:5], "s2")
    assert out["image_tokens"].shape == (5, 5, 16) and out["text_tokens"].shape == (5, 4, 16)


def test_cycle_term_needs_two_subjects():
    space = small_space()
    testbed = LinearTestbed({"a": 20, "b": 45}, space, n_train=64)
    generator = torch.Generator().manual_seed(0)
    two = build_model("mindbridge", SMALL_BRIDGE, {"a": 20, "b": 45}, space)
    _, logs = two.training_loss(testbed.train_batches(0), StepInfo(0, 1), generator)
    assert logs["cyc"] > 0 and logs["rec"] > 0
    _, logs = two.training_loss(testbed.train_batches(0)[:1], StepInfo(0, 1), generator)
    assert "cyc" not in logs  # only one subject in this step
    one = build_model("mindbridge", SMALL_BRIDGE, {"a": 20}, space)
    _, logs = one.training_loss(testbed.train_batches(0)[:1], StepInfo(0, 1), generator)
    assert "cyc" not in logs and "rec" in logs


def test_cycle_pair_draws_and_cycle_into():
    space = small_space()
    free = build_model("mindbridge", SMALL_BRIDGE, {"a": 10, "b": 10, "c": 10}, space)
    generator = torch.Generator().manual_seed(0)
    pairs = {free.cycle_pair(["a", "b", "c"], generator) for _ in range(200)}
    assert pairs == {(x, y) for x in "abc" for y in "abc" if x != y}
    assert free.cycle_pair(["a"], generator) is None
    into = build_model("mindbridge", {**SMALL_BRIDGE, "cycle_into": "c"}, {"a": 10, "b": 10, "c": 10}, space)
    pairs = {into.cycle_pair(["a", "b", "c"], generator) for _ in range(100)}
    assert pairs == {("a", "c"), ("b", "c")}
    # while the target is not in the step (pretraining the sources), the pair is drawn freely
    assert {into.cycle_pair(["a", "b"], generator) for _ in range(100)} == {("a", "b"), ("b", "a")}


def test_reset_tuning_trains_only_the_new_subject(bridge_world):
    model, testbed = copy.deepcopy(bridge_world[0]), bridge_world[1]
    model.add_subject("new", 66)
    tuned = model.subject_parameters("new")
    tuned_ids = {id(p) for p in tuned}
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if id(p) not in tuned_ids}
    assert frozen and len(frozen) + len(tuned) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        p.requires_grad_(id(p) in tuned_ids)  # what the trainer does

    _fit(model, testbed, {"s1", "s2", "new"}, steps=150, params=tuned, lr=2e-3)

    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"{name} changed during reset-tuning"
    top1 = testbed.retrieval_top1(model, "new")
    assert top1 > 3 * CHANCE, f"new subject: top-1 {top1:.3f} after reset-tuning"
    with pytest.raises(ConfigError, match="already part"):
        model.add_subject("new", 66)


def test_mindbridge_config_and_input_errors():
    space = small_space()
    with pytest.raises(ConfigError, match="bogus"):
        build_model("mindbridge", {"bogus": 1}, {"a": 10}, space)
    with pytest.raises(ConfigError, match="pool"):
        build_model("mindbridge", {"pool": "median"}, {"a": 10}, space)
    no_text = TargetSpace({"image_tokens": (5, 16)})
    with pytest.raises(ConfigError, match="text_tokens"):
        build_model("mindbridge", SMALL_BRIDGE, {"a": 10}, no_text)
    model = build_model("mindbridge", {**SMALL_BRIDGE, "predict_text": False}, {"a": 10}, no_text)
    assert set(model.predict(torch.randn(2, 10), "a")) == {"image_tokens"}
    with pytest.raises(ConfigError, match="expects betas"):
        model.predict(torch.randn(2, 11), "a")


def test_mindbridge_paper_dims_on_meta_device():
    space = TargetSpace({"image_tokens": (257, 768), "text_tokens": (77, 768)})
    subjects = {"subj01": 15724, "subj02": 14278, "subj05": 13039, "subj07": 12682}
    with torch.device("meta"):
        model = build_model("mindbridge", {}, subjects, space)
        out = model.predict(torch.empty(2, 13039), "subj05")
    assert out["image_tokens"].shape == (2, 257, 768) and out["text_tokens"].shape == (2, 77, 768)
    per_subject = sum(p.numel() for p in model.subject_parameters("subj01"))
    # adapter 2*(8192*128)+128+8192, linear 8192*2048+2048, LN 2*2048 (embedder); mirrored in the builder
    adapter = 2 * 8192 * 128 + 128 + 8192
    assert per_subject == 2 * adapter + (8192 * 2048 + 2048) + 2 * 2048 + (2048 * 8192 + 8192) + 2 * 8192


# --- Mind Reader ------------------------------------------------------------------------------------


def test_mindreader_learns_retrieval_with_odd_voxel_count():
    space = small_space()
    testbed = LinearTestbed({"s1": 101}, space)
    torch.manual_seed(0)
    model = build_model("mindreader", SMALL_READER, {"s1": 101}, space)
    losses = testbed.fit(model, steps=200)
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:5])
    top1 = testbed.retrieval_top1(model, "s1")
    assert top1 > 3 * CHANCE, f"top-1 {top1:.3f} is not above 3x chance"


@pytest.mark.parametrize("n_voxels", [5, 8, 101, 1000])
def test_mindreader_any_voxel_count(n_voxels):
    model = build_model("mindreader", SMALL_READER, {"s1": n_voxels}, small_space())
    assert model.mappers["image_pooled"].length == n_voxels // 2  # k4 s2 halves the voxel axis
    out = model.predict(torch.randn(3, n_voxels), "s1")
    assert out["image_pooled"].shape == (3, 16) and out["text_pooled"].shape == (3, 16)


def test_mindreader_per_channel_fc_reads_each_channel_with_its_own_weights():
    from brainrecon.models.mindreader import PerChannelFC

    fc = PerChannelFC(channels=3, length=5, hidden=4)
    maps = torch.randn(2, 3, 5)
    moved = maps.clone()
    moved[:, 1] += 1.0  # change channel 1 only
    before, after = fc(maps), fc(moved)
    assert before.shape == (2, 3)
    assert torch.equal(before[:, [0, 2]], after[:, [0, 2]]) and not torch.allclose(before[:, 1], after[:, 1])
    # the same input in every channel gives different outputs: the channels do not share weights
    assert not torch.allclose(*fc(torch.ones(1, 3, 5))[0, :2])
    shared = build_model("mindreader", SMALL_READER, {"s1": 40}, small_space())
    own = build_model("mindreader", {**SMALL_READER, "fc": "per_channel"}, {"s1": 40}, small_space())
    assert "mappers.image_pooled.fc.0.weight" in shared.state_dict()  # the paper's fc keeps its checkpoint keys
    assert own.predict(torch.randn(3, 40), "s1")["image_pooled"].shape == (3, 16)
    space = small_space()
    testbed = LinearTestbed({"s1": 101}, space)
    torch.manual_seed(0)
    model = build_model("mindreader", {**SMALL_READER, "fc": "per_channel"}, {"s1": 101}, space)
    testbed.fit(model, steps=200)
    assert testbed.retrieval_top1(model, "s1") > 3 * CHANCE


def test_mindreader_normalises_clamped_targets():
    model = build_model("mindreader", SMALL_READER, {"s1": 20}, small_space())
    target = torch.tensor([[3.0, -4.0, 0.5]])
    expected = torch.nn.functional.normalize(torch.tensor([[1.5, -1.5, 0.5]]), dim=-1)
    assert torch.allclose(model.normalize_target(target), expected)


def test_mindreader_errors():
    space = small_space()
    with pytest.raises(ConfigError, match="single-subject"):
        build_model("mindreader", SMALL_READER, {"s1": 20, "s2": 30}, space)
    image_only = TargetSpace({"image_pooled": (16,)})
    with pytest.raises(ConfigError, match="text_pooled"):
        build_model("mindreader", SMALL_READER, {"s1": 20}, image_only)
    with pytest.raises(ConfigError, match="image_pooled"):
        build_model("mindreader", SMALL_READER, {"s1": 20}, TargetSpace({"text_pooled": (16,)}))
    model = build_model("mindreader", {**SMALL_READER, "text": False}, {"s1": 20}, image_only)
    assert set(model.predict(torch.randn(2, 20), "s1")) == {"image_pooled"}
    with pytest.raises(ConfigError, match="add subject"):
        model.add_subject("s2", 30)
