"""Schedules by optimiser step, MSE weights that keep the papers' balance, and a validation slice of the
training stimuli that is scored during training and can choose the final weights."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))

from test_train import small_config

from brainrecon.config import load_config, preset_names, validate_config
from brainrecon.data import open_store
from brainrecon.errors import ConfigError
from brainrecon.models.losses import ContrastiveSchedule, normalized_mse
from brainrecon.train.batches import training_rows
from brainrecon.train.config import OptimConfig, TrainConfig
from brainrecon.train.run import RunDir, load_run
from brainrecon.train.trainer import _return_to_best, learning_rate, train
from brainrecon.models.base import TargetSpace
from brainrecon.train.targets import Targets
from brainrecon.train.validation import (ValidationConfig, ValidationRecord, ValidationSet, better, paired_gain,
                                         split_validation)

torch.set_num_threads(1)


def test_a_run_of_e_steps_follows_the_papers_e_epoch_contrastive_schedule():
    schedule = ContrastiveSchedule()
    for epochs in (150, 240):
        mix = int(0.33 * epochs)  # MindEye: BiMixCo for int(mixup_pct * num_epochs) epochs, then SoftCLIP with
        n = epochs - mix  # soft_loss_temps = cosine_anneal(0.004, 0.0075, n), one temperature per epoch
        temps = [0.0075 + (0.004 - 0.0075) / 2 * (1 + math.cos(math.pi * i / (n - 1))) for i in range(n)]
        for epoch in range(epochs):
            expected = ("bimixco", 0.006) if epoch < mix else ("softclip", temps[epoch - mix])
            phase, temperature = schedule.phase(epoch, epochs)
            assert phase == expected[0] and temperature == pytest.approx(expected[1], abs=1e-15)


def test_a_short_run_keeps_the_mixco_third_and_anneals_its_softclip_temperature():
    phases = [ContrastiveSchedule().phase(step, 423) for step in range(423)]  # 3 epochs of 141 steps
    assert sum(p == "bimixco" for p, _ in phases) == int(0.33 * 423)  # per epoch: int(0.33 * 3) = 0
    temps = [t for p, t in phases if p == "softclip"]
    assert temps[0] == pytest.approx(0.004) and temps[-1] == pytest.approx(0.0075)
    assert all(np.diff(temps) >= 0) and len(set(temps)) == len(temps)


def test_normalized_mse_keeps_its_weight_at_every_target_size():
    torch.manual_seed(0)
    small_p, small_t = torch.randn(4, 65, 128), torch.randn(4, 65, 128)
    literal = normalized_mse(small_p, small_t)
    reference = F.mse_loss(F.normalize(small_p.flatten(1), dim=-1), F.normalize(small_t.flatten(1), dim=-1))
    assert literal == pytest.approx(reference, rel=1e-5)
    # the same unit-vector geometry in a 4x larger target (zero padding keeps every cosine)
    big_p, big_t = (F.pad(x, (0, 3 * 128)) for x in (small_p, small_t))
    assert normalized_mse(big_p, big_t) == pytest.approx(float(literal) / 4, rel=1e-5)  # the literal mean shrinks
    paper = 257 * 768
    assert normalized_mse(big_p, big_t, paper) == pytest.approx(float(normalized_mse(small_p, small_t, paper)),
                                                                rel=1e-5)
    assert normalized_mse(small_p, small_t, paper) == pytest.approx(float(literal) * 65 * 128 / paper, rel=1e-5)


def test_warm_up_is_a_small_fraction_of_the_steps():
    steps = 141  # one epoch of a simulated-world preset
    by_steps = [learning_rate(s, steps, OptimConfig(lr=1e-3), epochs=1) for s in range(steps)]
    assert int(np.argmax(by_steps)) <= math.ceil(0.02 * steps)  # the default: 2% of the steps
    per_epoch = [learning_rate(s, steps, OptimConfig(lr=1e-3, pct_start=None), epochs=1) for s in range(steps)]
    assert int(np.argmax(per_epoch)) >= steps // 2 - 2  # the papers' 2 / epochs rule: half of a 1-epoch run


def test_validation_holds_out_whole_stimuli_for_every_subject_with_a_seed(train_world):
    store = open_store(train_world)
    rows = {s: training_rows(store, s, 0) for s in store.subjects}
    stimuli = lambda subject, r: set(store.subject(subject).trials.stimulus_id[r].tolist())  # noqa: E731
    train, held = split_validation(store, rows, 0.2, seed=0)
    union = set().union(*(stimuli(s, r) for s, r in rows.items()))
    held_ids = set().union(*(stimuli(s, r) for s, r in held.items()))
    assert len(held_ids) == round(0.2 * len(union))
    for subject in rows:
        assert not stimuli(subject, train[subject]) & held_ids  # no repeat of a held-out stimulus trains
        assert np.array_equal(np.sort(np.concatenate([train[subject], held[subject]])), np.sort(rows[subject]))
    again, _ = split_validation(store, rows, 0.2, seed=0)
    other, _ = split_validation(store, rows, 0.2, seed=1)
    assert all(np.array_equal(again[s], train[s]) for s in rows)
    assert any(not np.array_equal(other[s], train[s]) for s in rows)
    few = {"subj01": rows["subj01"][:3]}
    with pytest.raises(ConfigError, match="validation.fraction 0.1 leaves subject subj01"):
        split_validation(store, few, 0.1, seed=0)

    # stimuli a starting model (init_from) trained on stay in training: a score on them would be a training score
    seen = np.asarray(sorted(union))[::2]
    train, held = split_validation(store, rows, 0.2, seed=0, seen=seen)
    held_ids = set().union(*(stimuli(s, r) for s, r in held.items()))
    assert held_ids and not held_ids & set(seen.tolist())
    assert len(held_ids) == round(0.2 * (len(union) - len(seen)))
    with pytest.raises(ConfigError, match="every training stimulus .* was trained on by the init_from run"):
        split_validation(store, rows, 0.2, seed=0, seen=np.asarray(sorted(union)))


def test_closed_form_models_refuse_a_validation_slice():
    with pytest.raises(ConfigError, match="cross-validation on every training stimulus"):
        validate_config(TrainConfig, {"model": {"kind": "ridge"}, "validation": {"fraction": 0.1}})


@pytest.mark.parametrize("metric,confirm", [("cosine", False), ("centred_cosine", True),
                                           ("slice_centred_cosine", True)])
def test_a_run_scores_its_slice_and_returns_to_the_best_checkpoint(train_world, tmp_path, metric, confirm):
    config = small_config("mindeye2", keep_checkpoints=1, max_steps=16,
                          validation={"fraction": 0.2, "every": 4, "select": "best", "metric": metric,
                                      "confirm": confirm})
    run = train(config, train_world, tmp_path / "run", progress=False)
    record = json.loads((run / "validation.json").read_text())
    steps = [entry["step"] for entry in record["curve"]]
    assert steps == [4, 8, 12, 16]
    assert all((name in e) == (metric == name) for name in ("centred_cosine", "slice_centred_cosine")
               for e in record["curve"])
    best = max(record["curve"], key=lambda e: (e[metric], e["retrieval"]))
    comparison = record["best_against_last"]  # taken whenever the best is not the last step
    assert (comparison is None) == (best["step"] == steps[-1]) and record["metric"] == metric
    kept = best["step"] if comparison is None or not confirm or comparison["beyond_noise"] else steps[-1]
    assert record["chosen_step"] == kept and record["confirm"] == confirm
    assert comparison is None or (comparison["best_step"] == best["step"] and comparison["items"] > 1)
    assert all(0 <= e["retrieval"] <= 1 and set(e["subjects"]) == set(record["stimuli"]) for e in record["curve"])
    # the chosen checkpoint survived the rotation (keep 1), and the final weights are its weights
    chosen = load_file(str(run / "checkpoints" / f"step-{kept:08d}" / "model.safetensors"))
    final = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(chosen[name], final[name]) for name in final)
    log = (run / "log.csv").read_text()
    assert f"{steps[0]},0,val_retrieval," in log and ",val_cosine," in log
    assert (",val_centred_cosine," in log) == (metric == "centred_cosine")
    assert (",val_slice_centred_cosine," in log) == (metric == "slice_centred_cosine")
    # the record keeps the slice apart from what trained
    saw = json.loads((run / "training_stimuli.json").read_text())
    store = open_store(train_world)
    for subject, held in saw["validation_rows"].items():
        held_ids = set(store.subject(subject).trials.stimulus_id[held].tolist())
        assert held_ids and not held_ids & set(saw["subjects"][subject])
        assert len(held_ids) == record["stimuli"][subject]


class _Scripted:
    """A validation slice whose item scores are given: the first call scores the last weights, the second the
    best checkpoint's."""

    def __init__(self, last: list[float], best: list[float]):
        self.calls = [torch.tensor(last, dtype=torch.float64), torch.tensor(best, dtype=torch.float64)]

    def item_scores(self, model, device, metric: str) -> torch.Tensor:
        return self.calls.pop(0)


def test_the_best_checkpoint_is_kept_only_beyond_the_slices_noise(train_world, tmp_path):
    config = small_config("mindeye2", keep_checkpoints=4, max_steps=8,
                          validation={"fraction": 0.2, "every": 4, "select": "last"})
    run = train(config, train_world, tmp_path / "run", progress=False)
    weights = {step: load_file(str(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors")) for step in (4, 8)}
    assert any(not torch.equal(weights[4][name], weights[8][name]) for name in weights[8])
    last = [0.10, 0.12, 0.11, 0.13, 0.09, 0.10]
    noisy = [v + d for v, d in zip(last, [0.05, -0.04, 0.06, -0.05, 0.04, -0.03])]  # mean gain +0.005
    clear = [v + d for v, d in zip(last, [0.05, 0.04, 0.06, 0.05, 0.04, 0.05])]
    for confirm, best, kept in [(True, noisy, 8), (True, clear, 4), (False, noisy, 4)]:
        model, _ = load_run(run)
        record = ValidationRecord(tmp_path / "run", ValidationConfig(fraction=0.2, select="best", confirm=confirm),
                                  {"subj01": len(last)}, 0)
        assert _return_to_best(RunDir(run), model, _Scripted(last, best), record, 4, 8, "cpu") == kept
        state = model.state_dict()
        assert all(torch.equal(state[name], weights[kept][name]) for name in weights[kept])
        comparison = record.best_against_last
        assert comparison["best_step"] == 4 and comparison["items"] == len(last)
        assert comparison["gain"] == pytest.approx(np.mean(best) - np.mean(last))
        assert comparison["beyond_noise"] == (best is clear)
    assert paired_gain(torch.tensor([1.0]), torch.tensor([0.0]))["beyond_noise"] is False  # one item: no interval


class _Lookup:
    """A stand-in model whose 'betas' are row numbers and whose predictions are looked up by them."""

    retrieval_target, training = "image_pooled", False

    def __init__(self, predictions: np.ndarray):
        self.predictions = torch.from_numpy(predictions)

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def predict(self, betas: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        return {"image_pooled": self.predictions[betas[:, 0].long()]}


def test_the_centred_cosine_sees_through_a_prediction_of_the_training_mean(train_world):
    store = open_store(train_world)
    train_rows, held = split_validation(store, {"subj01": training_rows(store, "subj01", 0)}, 0.2, seed=0)
    stimulus_id = store.subject("subj01").trials.stimulus_id
    ids = np.unique(stimulus_id)
    # targets that share a large common part, as CLIP embeddings do
    values = 3.0 + np.random.default_rng(0).standard_normal((len(ids), 20))
    targets = Targets(TargetSpace({"image_pooled": (20,)}), ids, {"image_pooled": values.astype(np.float32)})
    slice_ = ValidationSet(store, held, targets, "image_pooled", training_rows=train_rows)
    training_mean = targets.get("image_pooled", np.unique(stimulus_id[train_rows["subj01"]])).mean(0)
    assert np.allclose(slice_.centres["subj01"].numpy(), training_mean, atol=1e-6)
    truth = targets.get("image_pooled", slice_.stimulus_ids["subj01"])
    slice_.betas["subj01"] = torch.arange(len(truth), dtype=torch.float32)[:, None]
    noise = 0.1 * np.random.default_rng(1).standard_normal(truth.shape).astype(np.float32)
    near_mean = _Lookup(training_mean + noise)  # says nothing about the stimulus
    informative = _Lookup(training_mean + 10 * (truth - training_mean))  # the truth's deviations, exaggerated
    uninformed, informed = slice_.score(near_mean, "cpu"), slice_.score(informative, "cpu")
    assert uninformed["cosine"] > 0.9 > 0.7 > informed["cosine"]  # the plain cosine prefers the mean ...
    assert abs(uninformed["centred_cosine"]) < 0.2 and informed["centred_cosine"] > 0.99  # ... the centred one not
    assert better(uninformed, informed, "cosine") and better(informed, uninformed, "centred_cosine")
    for metric in ("retrieval", "cosine", "centred_cosine"):  # one subject: the items average to the score
        items = slice_.item_scores(informative, "cpu", metric)
        assert len(items) == len(truth) and float(items.mean()) == pytest.approx(informed[metric])
    assert "centred_cosine" not in ValidationSet(store, held, targets, "image_pooled").score(informative, "cpu")


def test_the_slice_centred_cosine_sees_through_the_mean_and_an_offset_alike(train_world):
    store = open_store(train_world)
    train_rows, held = split_validation(store, {"subj01": training_rows(store, "subj01", 0)}, 0.2, seed=0)
    ids = np.unique(store.subject("subj01").trials.stimulus_id)
    values = 3.0 + np.random.default_rng(0).standard_normal((len(ids), 20))
    targets = Targets(TargetSpace({"image_pooled": (20,)}), ids, {"image_pooled": values.astype(np.float32)})
    slice_ = ValidationSet(store, held, targets, "image_pooled", training_rows=train_rows, slice_centred=True)
    truth = targets.get("image_pooled", slice_.stimulus_ids["subj01"])
    slice_.betas["subj01"] = torch.arange(len(truth), dtype=torch.float32)[:, None]
    centre = slice_.centres["subj01"].numpy()
    noise = 0.1 * np.random.default_rng(1).standard_normal(truth.shape).astype(np.float32)
    near_mean = _Lookup(centre + noise)  # says nothing about the stimulus
    informative = truth + noise
    # the same prediction scaled down onto an offset far from the targets' mean (as Mind Reader's clamped and
    # normalised predictions sit): what it says about each stimulus is unchanged
    uninformed, plain, shifted = (slice_.score(model, "cpu") for model in
                                  (near_mean, _Lookup(informative), _Lookup(-4.0 + 0.2 * informative)))
    assert abs(uninformed["slice_centred_cosine"]) < 0.2 and plain["slice_centred_cosine"] > 0.95
    assert shifted["slice_centred_cosine"] == pytest.approx(plain["slice_centred_cosine"], abs=1e-5)  # invariant
    assert plain["centred_cosine"] > 0.95 > 0.2 > shifted["centred_cosine"]  # the training-centred one misled
    assert better(shifted, uninformed, "slice_centred_cosine") and better(uninformed, shifted, "centred_cosine")
    items = slice_.item_scores(_Lookup(informative), "cpu", "slice_centred_cosine")  # one subject: items average
    assert float(items.mean()) == pytest.approx(plain["slice_centred_cosine"])


class _LookupWithLatents(_Lookup):
    def __init__(self, predictions: np.ndarray, latents: np.ndarray):
        super().__init__(predictions)
        self.latents = torch.from_numpy(latents)

    def predict(self, betas: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        return {**super().predict(betas, subject), "lowlevel": self.latents[betas[:, 0].long()]}


def test_a_low_level_head_is_scored_on_its_latents(train_world):
    store = open_store(train_world)
    _, held = split_validation(store, {"subj01": training_rows(store, "subj01", 0)}, 0.2, seed=0)
    ids = np.unique(store.subject("subj01").trials.stimulus_id)
    rng = np.random.default_rng(2)
    values = {"image_pooled": rng.standard_normal((len(ids), 20)).astype(np.float32),
              "lowlevel": rng.standard_normal((len(ids), 4, 3, 3)).astype(np.float32)}
    targets = Targets(TargetSpace({"image_pooled": (20,), "lowlevel": (4, 3, 3)}), ids, values)
    slice_ = ValidationSet(store, held, targets, "image_pooled", lowlevel=True)
    pooled, latents = (targets.get(name, slice_.stimulus_ids["subj01"]) for name in ("image_pooled", "lowlevel"))
    slice_.betas["subj01"] = torch.arange(len(pooled), dtype=torch.float32)[:, None]
    exact = slice_.score(_LookupWithLatents(pooled, latents), "cpu")
    assert exact["lowlevel_l1"] == pytest.approx(0.0, abs=1e-7) and exact["lowlevel_corr"] == pytest.approx(1.0)
    # an affine copy per stimulus correlates perfectly and is off by |0.5 x + 1| on average
    affine = slice_.score(_LookupWithLatents(pooled, 0.5 * latents + 1.0), "cpu")
    assert affine["lowlevel_corr"] == pytest.approx(1.0, abs=1e-6)
    assert affine["lowlevel_l1"] == pytest.approx(float(np.abs(0.5 * latents + 1.0 - latents).mean()), rel=1e-5)
    shuffled = slice_.score(_LookupWithLatents(pooled, latents[::-1].copy()), "cpu")
    assert abs(shuffled["lowlevel_corr"]) < 0.2 and shuffled["subjects"]["subj01"]["lowlevel_l1"] > 1.0
    assert "lowlevel_l1" not in ValidationSet(store, held, targets, "image_pooled").score(_Lookup(pooled), "cpu")
    with pytest.raises(ConfigError, match="lowlevel prediction has shape"):
        slice_.score(_LookupWithLatents(pooled, latents[:, :2]), "cpu")


def test_best_means_the_chosen_metric_with_the_other_breaking_ties():
    a, b = {"retrieval": 0.5, "cosine": 0.10}, {"retrieval": 0.4, "cosine": 0.12}
    assert better(b, a, "cosine") and not better(a, b, "cosine")
    assert better(a, b, "retrieval") and not better(b, a, "retrieval")
    tie = {"retrieval": 0.5, "cosine": 0.11}
    assert better(tie, a, "retrieval") and better(a, None, "cosine")


def test_the_sim_presets_keep_their_best_weights_by_the_cosine_only_beyond_the_slices_noise():
    # unconfirmed, the best cosine kept steps 13-39 of 300 in 4 of the efficiency bench's 12 per-subject runs; the
    # centred cosine chose Mind Reader-style's step 508 of 5,080 (checkpoint-rule.md), so it is not the default
    assert (ValidationConfig().metric, ValidationConfig().confirm) == ("cosine", True)
    chosen_by = {name: load_config(TrainConfig, name, "train").validation for name in preset_names("train")
                 if name.startswith("sim-")}
    best = {name: (v.metric, v.confirm) for name, v in chosen_by.items() if v.enabled and v.select == "best"}
    assert len(best) >= 5 and set(best.values()) == {("cosine", True)}, best
