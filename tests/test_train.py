"""The trainer: every model learns on the simulated world, resume after a kill is exact, DDP matches 1 process."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from brainrecon.config import validate_config
from brainrecon.data import open_store
from brainrecon.errors import ConfigError, DivergenceError
from brainrecon.evaluate.evaluation import final_evaluation
from brainrecon.provenance import source_commit
from brainrecon.train.batches import BalancedBatches, SubjectStream, training_rows
from brainrecon.train.config import OptimConfig, TrainConfig
from brainrecon.train.run import load_run, recorded_training_rows
from brainrecon.train.targets import TargetsConfig, load_targets
from brainrecon.train.trainer import learning_rate, train

torch.set_num_threads(1)

# Small versions of each model, sized to learn the train_world in a minute of CPU
SMALL = {
    "ridge": ({"kind": "ridge", "alphas": [10.0, 100.0, 1000.0, 10000.0], "folds": 3}, {}),
    "mindreader": ({"kind": "mindreader", "channels": 16, "n_res_blocks": 1, "token_channels": 64,
                    "fc_hidden": 32}, {"image_tokens": False, "image_pooled": True, "text_pooled": True}),
    "mindbridge": ({"kind": "mindbridge", "pool_length": 256, "adapter_bottleneck": 16, "hidden": 256,
                    "n_blocks": 1}, {"text_tokens": True}),
    "psychometry": ({"kind": "psychometry", "d_model": 64, "fmri_seq_len": 8, "encoder_hidden": [128],
                     "decoder_layers": 1, "heads": 4, "ff": 128, "num_experts": 4, "slots_per_expert": 2},
                    {"text_tokens": True}),
    "mindeye1": ({"kind": "mindeye1", "hidden": 256, "n_blocks": 1, "projector_hidden": 256,
                  "prior": {"depth": 1, "heads": 2, "dim_head": 32}}, {}),
    "mindeye2": ({"kind": "mindeye2", "hidden": 256, "n_blocks": 1, "prior": {"depth": 1, "heads": 2,
                                                                               "dim_head": 32}}, {}),
}
SINGLE_SUBJECT = {"mindeye1", "mindreader"}
EPOCHS = {"mindreader": 8, "mindeye2": 1}  # the 1-D conv mapper learns pooled embeddings more slowly


def small_config(kind: str, **overrides) -> TrainConfig:
    model, targets = SMALL[kind]
    data = {"model": model, "targets": {"clip": "simworld", **targets}, "batch_size": 32, "epochs": EPOCHS.get(kind, 2),
            "eval": {"way": 100, "draws": 5}, "optim": {"lr": 1e-3}, "log_every": 5, "tensorboard": False}
    if kind in SINGLE_SUBJECT:
        data["subjects"] = ["subj01"]
    data.update(overrides)
    return validate_config(TrainConfig, data)


@pytest.mark.parametrize("kind", list(SMALL))
def test_every_model_learns_above_chance(kind, train_world, tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    run = train(small_config(kind), train_world, tmp_path / "run", progress=False)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is its own again
    assert not (run / "metrics.json").exists()  # the library trains; the command layer evaluates
    final_evaluation(run)
    metrics = json.loads((run / "metrics.json").read_text())
    for subject, result in metrics["subjects"].items():
        retrieval = result["values"]["image_retrieval"]
        assert retrieval["way"] == 100
        assert retrieval["value"] > 3 * (1 / 100), (kind, subject, retrieval)
    model, info = load_run(run)  # the saved run reloads into the same predictions
    assert info.kind == kind and set(info.subjects) == set(metrics["subjects"])
    if kind != "ridge":
        assert (run / "log.csv").read_text().startswith("step,epoch,metric,value")


def test_learning_rate_follows_one_cycle():
    optim = OptimConfig(lr=1e-3, pct_start=0.25)
    lrs = [learning_rate(s, 100, optim, epochs=10) for s in range(100)]
    peak = int(np.argmax(lrs))
    assert lrs[0] == pytest.approx(1e-3 / 25)
    assert max(lrs) == pytest.approx(1e-3) and 20 <= peak <= 26
    assert lrs[-1] == pytest.approx(1e-3 / 25 / 1000, rel=1e-3)
    assert all(np.diff(lrs[peak:]) <= 0)


def test_cosine_and_constant_schedules_are_unchanged_by_the_warmup_options():
    import math

    for total in (1, 10, 97, 1000):
        for lr in (3e-4, 1e-3):
            cosine, constant = OptimConfig(lr=lr, schedule="cosine"), OptimConfig(lr=lr, schedule="constant")
            for step in range(total):  # the formulas before warmup_steps / min_lr_fraction existed
                assert learning_rate(step, total, cosine, epochs=3) == \
                    lr * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
                assert learning_rate(step, total, constant, epochs=3) == lr
    with pytest.raises(ValueError, match="'cosine' schedule only"):
        OptimConfig(schedule="onecycle", warmup_steps=10)


def test_batches_are_balanced_deterministic_and_split_across_ranks(train_world):
    store = open_store(train_world)
    targets = load_targets(store, TargetsConfig(), progress=False)
    streams = [SubjectStream(store, s, targets, 3, training_rows(store, s, 3)) for s in store.subjects]
    whole = BalancedBatches(streams, 8)(5)
    assert [b.subject for b in whole] == store.subjects and all(len(b) == 8 for b in whole)
    again = BalancedBatches(streams, 8)(5)
    assert all(torch.equal(a.betas, b.betas) for a, b in zip(whole, again))
    ranks = [BalancedBatches(streams, 8, rank=r, world=2)(5) for r in range(2)]
    for i, part in enumerate(whole):
        union = torch.cat([ranks[0][i].stimulus_ids, ranks[1][i].stimulus_ids]).sort().values
        assert torch.equal(union, part.stimulus_ids.sort().values)
    # one pass of draws covers every training trial of the largest subject exactly once
    draws = BalancedBatches(streams, 8)
    seen = np.concatenate([draws(i)[0].stimulus_ids.numpy() for i in range(len(streams[0]) // 8)])
    assert len(seen) == len(streams[0]) // 8 * 8
    with pytest.raises(ConfigError, match="divisible"):
        BalancedBatches(streams, 7, rank=0, world=2)


def test_trial_columns_read_blocks_of_the_targets_get_returns(train_world):
    """Closed-form fits read targets a block of columns at a time; the blocks are exactly get()'s columns."""
    store = open_store(train_world)
    targets = load_targets(store, TargetsConfig(), progress=False)
    ids = store.subject("subj01").trials.stimulus_id[:50][::-1]  # repeats, in trial order
    whole = targets.get("image_tokens", ids).reshape(len(ids), -1)
    columns = targets.columns("image_tokens", ids).reshape(len(ids), -1)
    assert columns.shape == whole.shape and len(columns) == len(ids)
    for start in range(0, whole.shape[1], 3000):
        np.testing.assert_array_equal(columns[:, start:start + 3000], whole[:, start:start + 3000])
    with pytest.raises(IndexError, match="blocks of whole columns"):
        columns[:10]


def _interrupt_on_fourth_compute(store, config: TargetsConfig, monkeypatch) -> None:
    """Compute ``config``'s targets, interrupted (KeyboardInterrupt) at the fourth chunk, as a kill would."""
    from brainrecon.train import targets as targets_module

    calls = {"n": 0}
    original = targets_module._Embedders.compute

    def failing(self, names, store, ids):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, names, store, ids)

    monkeypatch.setattr(targets_module._Embedders, "compute", failing)
    with pytest.raises(KeyboardInterrupt):
        load_targets(store, config, progress=False)
    monkeypatch.setattr(targets_module._Embedders, "compute", original)


def test_targets_resume_an_interrupted_computation(train_world, tmp_path, monkeypatch):
    store = open_store(train_world)
    config = TargetsConfig(cache_dir=str(tmp_path), batch_size=16)
    _interrupt_on_fourth_compute(store, config, monkeypatch)
    assert list(tmp_path.glob("*.partial.json"))
    resumed = load_targets(store, config, progress=False)
    fresh = load_targets(store, config.model_copy(update={"cache_dir": str(tmp_path / "fresh")}), progress=False)
    np.testing.assert_array_equal(resumed.arrays["image_tokens"], fresh.arrays["image_tokens"])
    assert not list(tmp_path.glob("*.partial*"))


def test_a_stale_partial_of_another_target_group_is_never_resumed(train_world, tmp_path, monkeypatch):
    """An interrupted pooled-only computation, then an interrupted tokens+pooled one: the second starts
    afresh, so the first's progress record must not let the resume skip rows it never wrote."""
    from brainrecon.train import targets as targets_module

    store = open_store(train_world)
    pooled_only = TargetsConfig(cache_dir=str(tmp_path), image_tokens=False, image_pooled=True, batch_size=16)
    _interrupt_on_fourth_compute(store, pooled_only, monkeypatch)
    written, write_state = [], targets_module.atomic_write_json

    def stop_after_first_state(path, data):  # interrupted between the two targets of the first chunk
        write_state(path, data)
        written.append(path)
        if len(written) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(targets_module, "atomic_write_json", stop_after_first_state)
    both = pooled_only.model_copy(update={"image_tokens": True})
    with pytest.raises(KeyboardInterrupt):
        load_targets(store, both, progress=False)
    monkeypatch.setattr(targets_module, "atomic_write_json", write_state)
    resumed = load_targets(store, both, progress=False)
    fresh = load_targets(store, both.model_copy(update={"cache_dir": str(tmp_path / "fresh")}), progress=False)
    for name in ("image_tokens", "image_pooled"):
        np.testing.assert_array_equal(resumed.arrays[name], fresh.arrays[name])


def test_image_tokens_and_pooled_come_from_one_pass_of_the_image_tower(train_world, tmp_path, monkeypatch):
    from brainrecon.embed.clip import ClipImageEmbedder

    store = open_store(train_world)
    calls = {"n": 0}
    original = ClipImageEmbedder.embed

    def counting(self, images):
        calls["n"] += 1
        return original(self, images)

    monkeypatch.setattr(ClipImageEmbedder, "embed", counting)
    config = TargetsConfig(cache_dir=str(tmp_path), image_tokens=True, image_pooled=True, batch_size=64)
    both = load_targets(store, config, progress=False)
    chunks = -(-len(store.stimuli) // (64 * 8))
    assert calls["n"] == 1 + chunks  # one probe for the shapes, then one pass per chunk serves both targets
    alone = load_targets(store, config.model_copy(update={"cache_dir": str(tmp_path / "alone"),
                                                          "image_tokens": False}), progress=False)
    np.testing.assert_array_equal(both.arrays["image_pooled"], alone.arrays["image_pooled"])


def test_open_clip_token_targets_are_cached_apart(train_world, tmp_path):
    """MindEye2-style tokens (patch tokens, no CLS, tower width) get their own cache file and shape."""
    store = open_store(train_world)
    default = load_targets(store, TargetsConfig(cache_dir=str(tmp_path)), progress=False)
    styled = load_targets(store, TargetsConfig(cache_dir=str(tmp_path), image_token_style="open_clip"), progress=False)
    (n_default, width_default), (n_styled, width_styled) = (default.space.shapes["image_tokens"],
                                                            styled.space.shapes["image_tokens"])
    from brainrecon.assets import SIMWORLD_ASSETS

    vision = json.loads((SIMWORLD_ASSETS / "clip" / "config.json").read_text())["vision_config"]
    assert n_styled == n_default - 1 and width_styled == vision["hidden_size"]
    assert width_default == json.loads((SIMWORLD_ASSETS / "clip" / "config.json").read_text())["projection_dim"]
    # unprojected and not CLS-normalised: a different representation of the same images
    patch_tokens = np.asarray(default.arrays["image_tokens"][:4, 1:])
    assert not np.allclose(np.asarray(styled.arrays["image_tokens"][:4]), patch_tokens)
    assert len(list(tmp_path.glob("image_tokens-*.npy"))) == 2
    with pytest.raises(ConfigError, match="image_token_style"):
        validate_config(TargetsConfig, {"image_token_style": "bigG"})


def test_bad_configs_fail_clearly(train_world, tmp_path):
    with pytest.raises(ConfigError, match="unknown_key"):
        validate_config(TrainConfig, {"model": {"kind": "mindbridge"}, "unknown_key": 1})
    with pytest.raises(ConfigError, match="hidden_size"):
        train(small_config("mindbridge", model={"kind": "mindbridge", "hidden_size": 3}), train_world,
              tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="subj09"):
        train(small_config("mindbridge", subjects=["subj01", "subj09"]), train_world, tmp_path / "b",
              progress=False)
    with pytest.raises(ConfigError, match="unknown model kind"):
        train(small_config("mindbridge", model={"kind": "mindeye9"}), train_world, tmp_path / "c", progress=False)
    with pytest.raises(ConfigError, match="single-subject|one subject|1 subject"):
        train(small_config("mindreader", subjects=None), train_world, tmp_path / "d", progress=False)


def test_voxel_count_mismatch_with_init_run_is_an_error(train_world, tiny_world, tmp_path):
    # a run trained on one store cannot be continued on a store whose subject has other voxels
    first = train(small_config("mindbridge", max_steps=2, subjects=["subj01"]), tiny_world, tmp_path / "first",
                  progress=False)
    with pytest.raises(ConfigError, match="voxels"):
        train(small_config("mindbridge", init_from=str(first), subjects=["subj01"]), train_world,
              tmp_path / "second", progress=False)


def test_existing_run_needs_resume(train_world, tmp_path):
    config = small_config("mindbridge", max_steps=2)
    train(config, train_world, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(config, train_world, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="differs"):
        train(small_config("mindbridge", max_steps=3), train_world, tmp_path / "run", resume=True, progress=False)


def test_reset_tuning_trains_only_the_new_subject(train_world, tmp_path):
    base = train(small_config("mindbridge", subjects=["subj01", "subj02"], max_steps=10), train_world,
                 tmp_path / "base", progress=False)
    tuned = train(small_config("mindbridge", subjects=["subj01", "subj02", "subj03"], init_from=str(base),
                               tune="new-subjects", max_steps=10), train_world, tmp_path / "tuned", progress=False)
    before, after = load_file(str(base / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    assert any("subj03" in name for name in after)


def test_fine_tuning_trains_on_the_configs_subjects_only(train_world, tmp_path):
    """init_from a multi-subject run, then train on one new subject: its trials are all the run sees (the
    pretrained subjects stay in the model, and their stimuli in the record, but give no batches)."""
    # the pretraining drew a seeded subset of trials, which the fine-tuning's own settings would not give
    base = train(small_config("mindbridge", subjects=["subj01", "subj02"], max_steps=4, max_trials=200, seed=7),
                 train_world, tmp_path / "base", progress=False)
    tuned = train(small_config("mindbridge", subjects=["subj03"], init_from=str(base), max_steps=4), train_world,
                  tmp_path / "tuned", progress=False)
    record = json.loads((tuned / "training_stimuli.json").read_text())
    assert list(record["rows"]) == ["subj03"]
    assert set(record["subjects"]) == {"subj01", "subj02", "subj03"}  # the pretraining's history is kept
    assert set(load_run(tuned)[1].subjects) == {"subj01", "subj02", "subj03"}
    # an inherited subject's rows (its Ecphory memory's keys) are the ones the pretraining recorded
    store = open_store(train_world)
    pretrained = json.loads((base / "training_stimuli.json").read_text())["rows"]["subj01"]
    assert recorded_training_rows(tuned, store, "subj01").tolist() == pretrained


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "brainrecon.cli", *args]


def _write_config(path: Path, config: TrainConfig) -> Path:
    config.save(path)
    return path


def test_kill_and_resume_equals_uninterrupted(train_world, tmp_path):
    config = _write_config(tmp_path / "c.yaml", small_config("mindbridge", epochs=1, max_steps=12,
                                                             checkpoint_every=3, keep_checkpoints=50, log_every=1,
                                                             validation={"fraction": 0.1, "select": "best"}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--config", str(config), "--data", str(train_world), "--no-progress"]
    subprocess.run(_cli("train", *common, "--out", str(tmp_path / "whole")), check=True, env=env,
                   capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_cli("train", *common, "--out", str(killed)), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if latest.is_file() and json.loads(latest.read_text())["step"] >= 6:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "model.safetensors").exists()
    subprocess.run(_cli("train", *common, "--out", str(killed), "--resume"), check=True, env=env,
                   capture_output=True)

    whole, resumed = load_file(str(tmp_path / "whole" / "model.safetensors")), \
        load_file(str(killed / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name
    losses = lambda run: [line.split(",")[3] for line in (run / "log.csv").read_text().splitlines()  # noqa: E731
                          if ",loss," in line]
    assert losses(tmp_path / "whole") == losses(killed)
    # the validation curve and the checkpoint it chose, too (the killed run's later scores are dropped)
    record = lambda run: json.loads((run / "validation.json").read_text())  # noqa: E731
    assert record(tmp_path / "whole") == record(killed)


def test_two_process_ddp_follows_one_process(train_world, tmp_path):
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun is not installed")
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    config = _write_config(tmp_path / "c.yaml", small_config("mindreader", max_steps=12, log_every=1,
                                                             optim={"lr": 1e-3, "schedule": "constant"}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--config", str(config), "--data", str(train_world), "--no-progress"]
    subprocess.run(_cli("train", *common, "--out", str(tmp_path / "one")), check=True, env=env,
                   capture_output=True)
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "brainrecon.cli", "train",
                           *common, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    def losses(run):
        return np.array([float(line.split(",")[3]) for line in (run / "log.csv").read_text().splitlines()
                         if ",loss," in line])

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 12
    np.testing.assert_allclose(two, one, rtol=1e-4)
    assert one[-1] < one[0]
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" /
                                                                                "model.safetensors"))
    # float32 sums in another order (two half-batch gradients averaged, convolutions over half the batch), then 12
    # Adam steps, which rescale each gradient element to about lr = 1e-3 a step however small it is: a few
    # elements whose gradient is near 0 may differ by up to 3e-4 (seen on one CPU), so each tensor is compared
    # as a whole (its relative difference was 3.3e-4 at most there)
    for name in a:
        assert torch.linalg.vector_norm(b[name] - a[name]) <= 2e-3 * torch.linalg.vector_norm(a[name]), name


def test_every_preset_is_valid_for_its_model():
    from brainrecon.config import load_config, preset_names
    from brainrecon.models import model_class

    names = preset_names("train")
    assert {f"{p}-{k}" for p in ("sim", "nsd") for k in SMALL} <= set(names)
    for name in names:
        config = load_config(TrainConfig, name, "train")
        validate_config(model_class(config.model_kind).config_class, config.model_options, source=name)
        assert (config.targets.clip == "simworld") == name.startswith("sim-")


def test_divergence_stops_training_and_saves_nothing_final(train_world, tmp_path):
    config = small_config("mindbridge", optim={"lr": 1e6}, max_steps=40, log_every=1)
    with pytest.raises(DivergenceError, match=r"diverged at step \d+.*Lower optim.lr"):
        train(config, train_world, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()
    for folder in (tmp_path / "run" / "checkpoints").glob("step-*"):  # any checkpoint kept is finite
        assert all(torch.isfinite(t).all() for t in load_file(str(folder / "model.safetensors")).values())


def test_resume_skips_a_truncated_checkpoint_for_the_one_before(train_world, tmp_path):
    config = small_config("mindbridge", max_steps=4, checkpoint_every=2, keep_checkpoints=5)
    run = train(config, train_world, tmp_path / "run", progress=False)
    finished = (run / "model.safetensors").read_bytes()
    latest = run / "checkpoints" / "step-00000004" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])  # a disk that filled up mid-write
    with pytest.warns(UserWarning, match="step-00000004.*resumed from .*step-00000002"):
        train(config, train_world, run, resume=True, progress=False)
    assert (run / "model.safetensors").read_bytes() == finished  # steps 3-4 redone exactly
    for folder in (run / "checkpoints").glob("step-*"):
        (folder / "state.json").unlink()
    with pytest.raises(ConfigError, match="no usable checkpoint.*state.json"):
        train(config, train_world, run, resume=True, progress=False)


def test_a_resumed_run_keeps_the_commit_it_was_started_at(tmp_path):
    from brainrecon.models.base import TargetSpace
    from brainrecon.train.run import RunDir, RunInfo

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    info = RunInfo("ridge", {}, {"subj01": 10}, TargetSpace({"image_pooled": (4,)}), "store", "sha", commit="aaa")
    run.write_info(info)
    run.write_info(dataclasses.replace(info, commit="bbb"))  # resumed by newer code
    run.write_info(dataclasses.replace(info, commit="ccc"))
    saved = json.loads((run.path / "model.json").read_text())
    assert saved["commit"] == "aaa" and saved["resumed_at"] == ["bbb", "ccc"]


def test_overwrite_replaces_a_run_and_nothing_else(train_world, tmp_path):
    config = small_config("mindbridge", max_steps=2)
    run = train(config, train_world, tmp_path / "run", progress=False)
    (run / "stale.txt").write_text("from the first run")
    train(small_config("mindbridge", max_steps=3), train_world, run, progress=False, overwrite=True)
    assert not (run / "stale.txt").exists() and "max_steps: 3" in (run / "config.yaml").read_text()
    info = json.loads((run / "model.json").read_text())
    assert info["store_manifest_sha256"] == open_store(train_world).manifest_sha256
    assert info["commit"] == source_commit()  # the code that trained it


def test_adamw_kernel_is_fused_where_torch_has_it_and_steps_like_the_reference():
    from brainrecon.train.trainer import make_optimizer

    def trained(kernel: str) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 2))
        optimizer = make_optimizer(model, OptimConfig(lr=1e-2, kernel=kernel))
        for step in range(5):
            model(torch.randn(4, 8, generator=torch.Generator().manual_seed(step))).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        return [p.detach().clone() for p in model.parameters()], optimizer

    fused, optimizer = trained("auto")
    assert optimizer.defaults["fused"] is True  # on CPU, torch 2.13 has the fused kernel
    reference, reference_optimizer = trained("for-loop")
    assert not reference_optimizer.defaults["fused"] and reference_optimizer.defaults["foreach"] is False
    for a, b in zip(fused, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_one_process_trains_runs_of_different_precisions_one_after_another(train_world, tmp_path):
    """accelerate keeps one state per process; the demo trains a bf16 run and then a float32 one."""
    for precision in ("bf16", "no", "bf16"):
        config = small_config("mindbridge", max_steps=2).model_copy(update={"mixed_precision": precision})
        run = train(config, train_world, tmp_path / f"run-{precision}", progress=False, overwrite=True)
        assert (run / "model.safetensors").is_file()
