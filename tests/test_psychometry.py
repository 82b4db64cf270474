"""Psychometry: shapes, shared experts with per-subject gates, Soft-MoE routing, learning, bad input."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from model_testbed import LinearTestbed, small_space

from brainrecon.errors import ConfigError
from brainrecon.models import build_model
from brainrecon.models.base import StepInfo, TargetSpace
from brainrecon.models.losses import PAPER_TARGET_ELEMENTS
from brainrecon.models.psychometry import (
    Psychometry,
    PsychometryConfig,
    SoftMoE,
    count_parameters,
)

torch.set_num_threads(1)

SMALL = {"d_model": 32, "fmri_seq_len": 8, "encoder_hidden": (64, 64), "decoder_layers": 1, "heads": 4, "ff": 64,
         "num_experts": 4, "slots_per_expert": 2}
SUBJECTS = {"subj01": 40, "subj02": 56, "subj05": 72}


def make(subjects=None, space=None, **overrides) -> Psychometry:
    torch.manual_seed(0)
    return Psychometry(PsychometryConfig(**{**SMALL, **overrides}), dict(subjects or SUBJECTS),
                       space or small_space())


def randomize_experts(model: Psychometry) -> None:
    """Experts' linear2 starts at zero, which would hide any effect of routing on the output."""
    for moe in model.moe_layers():
        for expert in moe.experts:
            torch.nn.init.normal_(expert.linear2.weight, std=0.2)


def test_shapes_and_registry():
    model = build_model("psychometry", SMALL, SUBJECTS, small_space()).eval()
    assert isinstance(model, Psychometry)
    assert model.required_targets == ("image_tokens", "text_tokens")
    for subject, n_vox in SUBJECTS.items():
        out = model.predict(torch.randn(3, n_vox), subject)
        assert out["image_tokens"].shape == (3, 5, 16)  # d_model 32 mapped to the target width 16
        assert out["text_tokens"].shape == (3, 4, 16)

    image_only = TargetSpace({"image_tokens": (5, 16)})
    model = make(space=image_only, predict_text=False).eval()
    assert model.required_targets == ("image_tokens",)
    assert set(model.predict(torch.randn(2, 40), "subj01")) == {"image_tokens"}

    model = make(lowlevel=True, lowlevel_hidden=32).eval()
    assert model.predict(torch.randn(2, 40), "subj01")["lowlevel"].shape == (2, 4, 8, 8)


def test_experts_shared_and_gates_per_subject():
    one, three = make({"subj01": 40}), make(SUBJECTS)
    names_one = {n: p.numel() for n, p in one.named_parameters()}
    names_three = {n: p.numel() for n, p in three.named_parameters()}
    assert set(names_one) <= set(names_three)
    extra = set(names_three) - set(names_one)
    # the only new parameters are the new subjects' encoders and gate tensors (one per decoder's MoE layer)
    for name in extra:
        assert name.startswith(("encoders.subj02.", "encoders.subj05.")) or name.endswith(
            ("moe.gates.subj02", "moe.gates.subj05")), name
    assert sum(n.endswith(".moe.gates.subj05") for n in extra) == 2
    added = sum(names_three[n] for n in extra)
    assert added == sum(p.numel() for s in ("subj02", "subj05") for p in three.subject_parameters(s))

    experts = [n for n in names_three if ".experts." in n]
    assert experts and all(n in names_one for n in experts)
    for moe in three.moe_layers():
        assert len(moe.experts) == 4
        assert set(moe.gates) == set(SUBJECTS)
        assert moe.gates["subj01"].shape == (32, 4, 2)

    # add_subject adds exactly subject_parameters
    before = {id(p) for p in three.parameters()}
    three.add_subject("subj07", 24)
    new = [p for p in three.parameters() if id(p) not in before]
    assert {id(p) for p in new} == {id(p) for p in three.subject_parameters("subj07")}
    assert three.predict(torch.randn(2, 24), "subj07")["image_tokens"].shape == (2, 5, 16)


def test_soft_moe_routing_sums_to_one():
    torch.manual_seed(0)
    moe = SoftMoE(d_model=16, ff=32, num_experts=3, slots_per_expert=2, subjects=["a", "b"])
    x = torch.randn(4, 7, 16)
    for subject in ("a", "b"):
        dispatch, combine = moe.routing(x, subject)
        assert dispatch.shape == combine.shape == (4, 7, 3, 2)
        # each slot is a convex combination of the tokens, each output token of the expert-slots
        torch.testing.assert_close(dispatch.sum(dim=1), torch.ones(4, 3, 2))
        torch.testing.assert_close(combine.sum(dim=(2, 3)), torch.ones(4, 7))
        assert (dispatch > 0).all() and (combine > 0).all()
    assert moe(x, "a").shape == x.shape


def test_changing_one_subjects_gate_affects_only_that_subject():
    torch.manual_seed(0)
    moe = SoftMoE(d_model=16, ff=32, num_experts=3, slots_per_expert=2, subjects=["a", "b"])
    for expert in moe.experts:
        torch.nn.init.normal_(expert.linear2.weight, std=0.2)
    x = torch.randn(2, 5, 16)
    a0, b0 = moe(x, "a"), moe(x, "b")
    with torch.no_grad():
        moe.gates["a"].add_(torch.randn_like(moe.gates["a"]))
    assert not torch.allclose(moe(x, "a"), a0)
    torch.testing.assert_close(moe(x, "b"), b0)

    model = make().eval()
    randomize_experts(model)
    betas = {s: torch.randn(3, n) for s, n in SUBJECTS.items()}
    with torch.no_grad():
        before = {s: model.predict(b, s)["image_tokens"] for s, b in betas.items()}
        model.image_decoder.moe_layer.moe.gates["subj01"].add_(1.0)
        after = {s: model.predict(b, s)["image_tokens"] for s, b in betas.items()}
    assert not torch.allclose(after["subj01"], before["subj01"])
    for s in ("subj02", "subj05"):
        torch.testing.assert_close(after[s], before[s])


def test_training_loss_sums_subjects_and_logs_parts():
    model = make()
    bed = LinearTestbed(SUBJECTS, small_space())
    loss, logs = model.training_loss(bed.train_batches(0, 8), StepInfo(0, 10), torch.Generator())
    assert torch.isfinite(loss)
    for key in ("softclip_image", "softclip_text", "mse_image", "mse_text", "loss"):
        assert isinstance(logs[key], float)
    assert logs["loss"] == pytest.approx(sum(logs[f"loss_{s}"] for s in SUBJECTS), rel=1e-5)
    assert logs["loss"] == pytest.approx(sum(logs[k] for k in ("softclip_image", "softclip_text", "mse_image",
                                                               "mse_text")), rel=1e-5)
    loss.backward()
    for s in SUBJECTS:
        assert all(p.grad is not None for p in model.subject_parameters(s))

    lowlevel = make(lowlevel=True, lowlevel_hidden=32)
    _, logs = lowlevel.training_loss(bed.train_batches(0, 8), StepInfo(0, 10), torch.Generator())
    assert logs["l1_lowlevel"] > 0


def test_mse_weighs_against_softclip_as_in_the_paper_at_any_target_size():
    batches = LinearTestbed(SUBJECTS, small_space()).train_batches(0, 8)
    paper, literal = make().eval(), make(mse_scale="literal").eval()  # eval: no dropout, equal predictions
    _, by_paper = paper.training_loss(batches, StepInfo(0, 10), torch.Generator())
    _, by_element = literal.training_loss(batches, StepInfo(0, 10), torch.Generator())
    assert by_paper["softclip_image"] == pytest.approx(by_element["softclip_image"])
    for name, short in (("image_tokens", "image"), ("text_tokens", "text")):
        shape = small_space()[name]
        ratio = shape[0] * shape[1] / PAPER_TARGET_ELEMENTS[name]  # the paper's 1e4 is per element of its size
        assert by_paper[f"mse_{short}"] == pytest.approx(by_element[f"mse_{short}"] * ratio, rel=1e-5)


def test_the_dense_ablation_replaces_the_omni_moe_with_one_shared_feed_forward_block():
    dense, omni = make(moe="dense"), make()
    assert dense.moe_layers() == [] and len(omni.moe_layers()) == 2
    assert not any(".gates." in name or ".experts." in name for name, _ in dense.named_parameters())
    assert dense.subject_parameters("subj01") == list(dense.encoders["subj01"].parameters())
    experts = sum(p.numel() for moe in omni.moe_layers() for p in moe.experts.parameters())
    gates = sum(moe.gates[s].numel() for moe in omni.moe_layers() for s in SUBJECTS)
    dense_ff = sum(p.numel() for d in (dense.image_decoder, dense.text_decoder) for p in d.moe_layer.moe.parameters())
    # the dense block is one expert's size; the Omni MoE has num_experts of them, the gates and a scale each
    assert sum(p.numel() for p in omni.parameters()) - sum(p.numel() for p in dense.parameters()) == \
        experts + gates + 2 - dense_ff
    dense.add_subject("subj07", 24)  # a new subject gets an encoder only
    loss, _ = dense.training_loss(LinearTestbed({**SUBJECTS, "subj07": 24}, small_space()).train_batches(0, 8),
                                  StepInfo(0, 10), torch.Generator())
    loss.backward()
    assert torch.isfinite(loss) and dense.image_decoder.moe_layer.moe.ff.linear2.weight.grad is not None


def test_the_linear_decoder_ablation_reads_every_target_token_from_all_fmri_tokens_by_its_own_weights():
    linear = make(decoder="linear")
    assert linear.moe_layers() == []
    assert not any("queries" in name or "attn" in name or ".moe" in name for name, _ in linear.named_parameters())
    space, config = small_space(), linear.config
    for decoder, name in ((linear.image_decoder, "image_tokens"), (linear.text_decoder, "text_tokens")):
        assert decoder.proj.weight.shape == (space[name][0] * space[name][1], config.fmri_seq_len * config.d_model)
    betas = {s: torch.randn(3, n) for s, n in SUBJECTS.items()}
    out = linear.eval().predict(betas["subj01"], "subj01")
    assert out["image_tokens"].shape == (3, *space["image_tokens"])
    # token 0 alone changes when only its own rows of the map change: no token shares another's weights
    with torch.no_grad():
        linear.image_decoder.proj.bias[: space["image_tokens"][1]].add_(1.0)
    moved = linear.predict(betas["subj01"], "subj01")["image_tokens"] - out["image_tokens"]
    assert torch.allclose(moved[:, 0], torch.ones(())) and moved[:, 1:].abs().max() == 0
    loss, _ = linear.train().training_loss(LinearTestbed(SUBJECTS, space).train_batches(0, 8), StepInfo(0, 10),
                                           torch.Generator())
    loss.backward()
    assert torch.isfinite(loss) and linear.image_decoder.proj.weight.grad.abs().sum() > 0


def test_learns_all_subjects_at_once():
    subjects = {"subj01": 40, "subj02": 56, "subj05": 72}
    bed = LinearTestbed(subjects, small_space())
    model = make(subjects)
    losses = bed.fit(model, steps=100, lr=1e-3)
    assert losses[-1] < 0.5 * losses[0]
    chance = 1 / len(bed.test_ids)
    for subject in subjects:
        assert bed.retrieval_top1(model, subject) > 3 * chance, subject


def test_bad_input_is_a_config_error():
    model = make().eval()
    with pytest.raises(ConfigError, match="unknown subject"):
        model.predict(torch.randn(2, 40), "subj09")
    with pytest.raises(ConfigError, match=r"\(batch, 40\)"):
        model.predict(torch.randn(2, 41), "subj01")
    with pytest.raises(ConfigError, match="already exists"):
        model.add_subject("subj01", 40)
    with pytest.raises(ConfigError, match="without dots"):
        model.add_subject("subj.7", 40)
    with pytest.raises(ConfigError, match="voxel count"):
        model.add_subject("subj07", 0)
    with pytest.raises(ConfigError, match="unknown subject"):
        model.subject_parameters("subj09")
    with pytest.raises(ConfigError, match="text_tokens"):
        make(space=TargetSpace({"image_tokens": (5, 16)}))  # predict_text needs text targets
    with pytest.raises(ConfigError, match="divisible"):
        build_model("psychometry", {**SMALL, "heads": 5}, SUBJECTS, small_space())
    with pytest.raises(ConfigError, match="num_experts"):
        build_model("psychometry", {**SMALL, "num_experts": 0}, SUBJECTS, small_space())
    with pytest.raises(ConfigError, match="moe_layers"):
        build_model("psychometry", {**SMALL, "moe_layers": 2}, SUBJECTS, small_space())


def test_count_parameters_on_meta_device():
    small = count_parameters(PsychometryConfig(**SMALL), SUBJECTS, small_space())
    real = make()
    assert small["total"] == sum(p.numel() for p in real.parameters())
    assert small["subject_subj02"] == sum(p.numel() for p in real.subject_parameters("subj02"))

    paper = count_parameters()  # subjects 1, 2, 5, 7 at 257x768 / 77x768, nothing allocated
    per_subject = [v for k, v in paper.items() if k.startswith("subject_")]
    assert len(per_subject) == 4
    assert paper["total"] == paper["shared"] + sum(per_subject)
    assert paper["experts"] == 2 * 16 * (768 * 3072 * 2 + 3072 + 768)  # one shared set per decoder
