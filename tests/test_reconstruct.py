"""Ecphory and reconstruction from a trained run, on the simulated world with the shipped small models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from brainrecon.cli import app
from brainrecon.errors import ConfigError
from brainrecon.evaluate.ecphory import ecphory_embedding_scores
from brainrecon.memory import SubjectMemory
from brainrecon.memory.choice import EcphoryGrid, EcphorySetting
from brainrecon.evaluate.choice import ecphory_choice, make_choices
from brainrecon.reconstruct import (ECPHORY_CHOICE, LOWLEVEL_CHOICE, LowLevelGrid, ReconstructConfig, build_memory,
                                    lowlevel_decoder, lowlevel_images, reconstruct, recon_models)
from brainrecon.train.run import RunContext

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def validated_run(train_world, tmp_path_factory):
    """A short gradient run on subj01 with MindEye's low-level head, holding out a fifth of its training
    stimuli as a validation slice."""
    from brainrecon.config import validate_config
    from brainrecon.train.config import TrainConfig
    from brainrecon.train.trainer import train

    config = validate_config(TrainConfig, {
        "model": {"kind": "mindeye2", "target": "image_pooled", "hidden": 128, "n_blocks": 1, "prior": None,
                  "lowlevel": True, "lowlevel_channels": [8, 16]},
        "targets": {"clip": "simworld", "image_tokens": False, "image_pooled": True, "lowlevel": True,
                    "vae": "simworld"}, "subjects": ["subj01"],
        "batch_size": 32, "max_steps": 30, "optim": {"lr": 1e-3}, "log_every": 10, "tensorboard": False,
        "validation": {"fraction": 0.2, "every": 15, "select": "last"}, "eval": {"way": 50, "draws": 5}})
    return train(config, train_world, tmp_path_factory.mktemp("validated") / "run", progress=False)


def test_memory_holds_training_stimuli_only(ridge_run):
    context = RunContext.open(ridge_run)
    memory = build_memory(context, ridge_run, "subj01", progress=False)
    test_ids = set(context.store.subject("subj01").test().stimulus_ids.tolist())
    assert test_ids.isdisjoint(memory.stimulus_ids.tolist())
    assert memory.n_trials == len(context.store.subject("subj01").train())
    again = SubjectMemory.load(ridge_run / "memory" / "prediction" / "subj01")
    assert again.n_entries == memory.n_entries
    brain = build_memory(context, ridge_run, "subj01", progress=False, keys="brain")
    assert brain.config.search_on == ("betas",) and brain.n_entries == memory.n_entries
    np.testing.assert_array_equal(brain.prediction_mean("image_tokens"), memory.prediction_mean("image_tokens"))


def test_fused_retrieval_is_reported_beside_the_predictions(ridge_run):
    context = RunContext.open(ridge_run)
    on = ecphory_embedding_scores(context, "subj01", EcphorySetting(enabled=True, keys="prediction", k=5, alpha=0.5),
                                  way=50, draws=3)
    off = ecphory_embedding_scores(context, "subj01", EcphorySetting(enabled=False), way=50, draws=3)
    assert set(on["rows"]) == {"plain", "fused"} and set(off["rows"]) == {"plain"}
    assert on["rows"]["plain"] == off["rows"]["plain"]  # the prediction's retrieval is not Ecphory's to change
    assert on["rows"]["fused"]["embedding_cosine"] != on["rows"]["plain"]["embedding_cosine"]


def test_ecphory_is_chosen_on_the_validation_slice_and_used_by_default(validated_run, tmp_path):
    context = RunContext.open(validated_run)
    grid = EcphoryGrid(keys=("prediction", "brain"), k=(3,), alpha=(0.5, 0.0), max_stimuli=8)
    config = ReconstructConfig(steps=2, batch_size=16, ecphory_grid=grid)
    record = ecphory_choice(context, validated_run, config, *recon_models(context, config), progress=False)
    assert record["validation_stimuli"] == {"subj01": 8}
    assert len(record["grid"]) == 4 and {row["keys"] for row in record["grid"]} == {"prediction", "brain"}
    for row in record["grid"]:
        assert row["gain_ci95_low"] <= row["gain"] <= row["gain_ci95_high"]
    assert record["choice"]["enabled"] == any(row["gain_ci95_low"] > 0 for row in record["grid"])
    # the memories hold the trained stimuli only: neither the validation slice nor any test image
    held_out = set(context.store.subject("subj01").trials.stimulus_id[context.validation_rows("subj01")].tolist())
    test_ids = set(context.store.subject("subj01").test().stimulus_ids.tolist())
    for keys in ("prediction", "brain"):
        stored = set(SubjectMemory.load(validated_run / "memory" / keys / "subj01").stimulus_ids.tolist())
        assert held_out and stored.isdisjoint(held_out) and stored.isdisjoint(test_ids)
    assert ecphory_choice(context, validated_run, config, *recon_models(context, config), progress=False) == record

    # reconstruct with no Ecphory options needs the run's choice for its settings, uses it, and says so
    small = config.model_copy(update={"n_images": 2, "samples": 1})
    other = small.model_copy(update={"ecphory_grid": EcphoryGrid(keys=("brain",), k=(3,), alpha=(0.5,),
                                                                   max_stimuli=8)})
    with pytest.raises(ConfigError, match="has not been chosen for this run's weights"):
        reconstruct(validated_run, tmp_path / "r", other, progress=False)
    assert make_choices(validated_run, small, progress=False) == {}  # made above, for the same settings
    manifest = reconstruct(validated_run, tmp_path / "r", small, progress=False)
    assert manifest["ecphory"]["source"].startswith("chosen on held-out training stimuli")
    assert manifest["ecphory"]["enabled"] == record["choice"]["enabled"]
    assert json.loads((validated_run / ECPHORY_CHOICE).read_text()) == record


def test_the_lowlevel_path_starts_from_the_predicted_blurry_image_at_a_chosen_strength(validated_run, ridge_run,
                                                                                       tmp_path):
    # the run's validation curve scored the low-level head on its latents too, and logged it
    curve = json.loads((validated_run / "validation.json").read_text())["curve"]
    assert all(e["lowlevel_l1"] > 0 and -1 <= e["lowlevel_corr"] <= 1 for e in curve)
    assert ",val_lowlevel_corr," in (validated_run / "log.csv").read_text()
    grid = LowLevelGrid(strengths=(0.75, 0.5), max_stimuli=6)
    config = ReconstructConfig(steps=4, batch_size=16, ecphory=False, lowlevel=True, lowlevel_grid=grid,
                               n_images=3, samples=1)
    made = make_choices(validated_run, config, progress=False)
    record = made[LOWLEVEL_CHOICE]
    assert [row["strength"] for row in record["grid"]] == [1.0, 0.75, 0.5]
    assert record["validation_stimuli"] == {"subj01": 6} and record["strength"] in (1.0, 0.75, 0.5)
    allowed = [r for r in record["grid"][1:] if r["clip"] >= record["grid"][0]["clip"] - grid.clip_tolerance]
    if record["strength"] < 1.0:  # the rule: the best PixCorr + SSIM among strengths that keep CLIP two-way
        best = max(allowed, key=lambda r: r["pixcorr"] + r["ssim"])
        assert record["strength"] == best["strength"]
    manifest = reconstruct(validated_run, tmp_path / "chosen", config, progress=False)
    assert manifest["lowlevel"]["strength"] == record["strength"]
    assert manifest["lowlevel"]["source"].startswith("chosen on held-out training stimuli")

    # a given strength near 0 keeps the blurry image; the same seeds without it give other images
    given = config.model_copy(update={"lowlevel_strength": 0.25})
    near = reconstruct(validated_run, tmp_path / "near", given, progress=False)
    assert near["lowlevel"] == {"enabled": True, "strength": 0.25, "source": "given"}
    plain = reconstruct(validated_run, tmp_path / "plain", config.model_copy(update={"lowlevel": False}),
                        progress=False)
    context = RunContext.open(validated_run)
    test = context.store.subject("subj01").test()
    blurry = lowlevel_images(context, lowlevel_decoder(context), test.betas[:3], "subj01").astype(float)
    read = lambda folder, m: np.stack([np.asarray(Image.open(folder / e["file"])) for e in m["images"]]).astype(float)
    assert np.abs(read(tmp_path / "near", near) - blurry).mean() < np.abs(read(tmp_path / "plain", plain)
                                                                          - blurry).mean()

    with pytest.raises(ConfigError, match="no low-level image"):
        reconstruct(ridge_run, tmp_path / "ridge", config.model_copy(update={"lowlevel_strength": 0.8}),
                    progress=False)


def test_the_benches_compare_arms_that_differ_only_in_ecphory_or_the_lowlevel_path(validated_run, tmp_path):
    from brainrecon.bench.ecphory import EcphoryBenchConfig, run_ecphory_bench
    from brainrecon.bench.lowlevel import run_lowlevel_bench

    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "mindeye2").symlink_to(validated_run)
    config = EcphoryBenchConfig(models=("mindeye2",), samples=2, n_images=4, steps=2,
                                ecphory_grid=EcphoryGrid(keys=("prediction",), k=(3,), alpha=(0.5,), max_stimuli=6))
    records = run_ecphory_bench(config, runs, tmp_path / "eb", echo=lambda message: None)
    assert [r["variant"] for r in records] == ["chosen", "psychometry"]
    saved = json.loads((tmp_path / "eb" / "ecphory.json").read_text())["records"]
    for record in saved:
        assert {"model", "variant", "k", "alpha", "samples", "control_two_way", "ecphory_two_way", "gain",
                "gain_ci95_low", "gain_ci95_high", "commit"} <= set(record)
        assert record["samples"] == 2 and record["gain_ci95_low"] <= record["gain"] <= record["gain_ci95_high"]
        assert record["gain"] == pytest.approx(record["ecphory_two_way"] - record["control_two_way"])
    manifests = {arm: json.loads((tmp_path / "eb" / "recons" / "mindeye2" / arm / "manifest.json").read_text())
                 for arm in ("control", "chosen", "psychometry")}
    assert len({(m["settings"]["samples"], m["settings"]["seed"], m["selection"]) for m in manifests.values()}) == 1
    assert manifests["psychometry"]["ecphory"]["fusion"] == "raw" and not manifests["control"]["ecphory"]["enabled"]
    assert "| mindeye2 | chosen |" in (tmp_path / "eb" / "ecphory.md").read_text()

    record = run_lowlevel_bench(validated_run, tmp_path / "ll", samples=1, n_images=3, steps=2,
                                grid=LowLevelGrid(strengths=(0.5,), max_stimuli=4), echo=lambda message: None)
    assert record["strength"] in (0.5, 1.0) and record["pixcorr_ratio"] == pytest.approx(
        record["pixcorr"]["lowlevel"] / record["pixcorr"]["without"])
    for reference in ("blurry_image", "vae_round_trip"):  # what img2img starts from, and the VAE's own limit
        assert -1 <= record[reference]["pixcorr"] <= 1 and 0 <= record[reference]["clip"] <= 1
    page = (tmp_path / "ll" / "lowlevel.md").read_text()
    assert "PixCorr with ÷ without" in page and "the blurry image alone" in page and "round trip" in page


def test_a_run_without_a_validation_slice_keeps_ecphory_off(ridge_run):
    context = RunContext.open(ridge_run)
    config = ReconstructConfig(steps=2)
    record = ecphory_choice(context, ridge_run, config, *recon_models(context, config), progress=False)
    assert not record["choice"]["enabled"] and "no validation slice" in record["reason"] and record["grid"] == []


def test_reconstruct_manifest_selection_and_alpha_one(ridge_run, tmp_path):
    base = {"n_images": 3, "samples": 2, "steps": 4, "batch_size": 8, "k": 2, "alpha": 0.6}
    honest = reconstruct(ridge_run, tmp_path / "honest", ReconstructConfig(**base), progress=False)
    assert honest["selection"] == "brain-predicted (honest)" and not honest["oracle_selection"]
    assert len(honest["images"]) == 3
    for entry in honest["images"]:
        assert {"subject", "stimulus_id", "file", "seed", "sample_index", "selection",
                "retrieved_stimuli"} <= set(entry)
        assert len(entry["retrieved_stimuli"]) == 2
        image = np.asarray(Image.open(tmp_path / "honest" / entry["file"]))
        assert image.dtype == np.uint8 and image.ndim == 3
    saved = json.loads((tmp_path / "honest" / "manifest.json").read_text())
    assert saved["settings"]["alpha"] == 0.6 and saved["settings"]["ecphory"] is True
    assert saved["ecphory"] == {"enabled": True, "keys": "prediction", "k": 2, "alpha": 0.6, "fusion": "common",
                                "neighbours": "weighted", "source": "given"}

    oracle = reconstruct(ridge_run, tmp_path / "oracle", ReconstructConfig(**base, selection="oracle"),
                         progress=False)
    assert oracle["oracle_selection"] and oracle["selection"].startswith("ORACLE")

    # alpha = 1 fuses nothing: the same images as no Ecphory at all
    plain = reconstruct(ridge_run, tmp_path / "plain", ReconstructConfig(**{**base, "samples": 1}, ecphory=False),
                        progress=False)
    alpha_one = reconstruct(ridge_run, tmp_path / "alpha1", ReconstructConfig(**{**base, "samples": 1, "alpha": 1.0}),
                            progress=False)
    for a, b in zip(plain["images"], alpha_one["images"]):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "plain" / a["file"])),
                                      np.asarray(Image.open(tmp_path / "alpha1" / b["file"])))


def test_cli_memory_build_and_reconstruct(ridge_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["memory", "build", "--run", str(ridge_run), "--search", "pooled",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "prediction keys" in result.output and "brain keys" in result.output
    assert "Ecphory setting" in result.output and ": off (the run has no validation slice" in result.output
    result = runner.invoke(app, ["memory", "build", "--run", str(ridge_run), "--keys", "fmri", "--no-progress"])
    assert result.exit_code != 0 and "--keys: Input should be 'prediction' or 'brain'" in str(result.exception)
    result = runner.invoke(app, ["reconstruct", "--run", str(ridge_run), "--out", str(tmp_path / "r"),
                                 "--n-images", "2", "--samples", "2", "--steps", "3", "--no-ecphory",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["settings"]["ecphory"] is False and manifest["images"][0]["retrieved_stimuli"] is None


def test_cli_bank_build_and_search(ridge_run, train_world, tmp_path):
    from brainrecon.data import open_store

    store = open_store(train_world)
    folder = tmp_path / "images"
    folder.mkdir()
    ids = store.subject("subj01").test().stimulus_ids[:12]
    for stimulus, image in zip(ids.tolist(), store.images_for(ids)):
        Image.fromarray(image).save(folder / f"{stimulus}.png")
    runner = CliRunner()
    result = runner.invoke(app, ["bank", "build", "--images", str(folder), "--clip", "simworld", "--out",
                                 str(tmp_path / "bank"), "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["bank", "search", "--bank", str(tmp_path / "bank"), "--run", str(ridge_run),
                                 "--out", str(tmp_path / "nearest.json"), "--k", "3"])
    assert result.exit_code == 0, result.output
    nearest = json.loads((tmp_path / "nearest.json").read_text())["results"]["subj01"]
    assert len(nearest) == len(store.subject("subj01").test()) and len(nearest[0]["paths"]) == 3


def test_generators_get_image_tokens_at_the_targets_scale():
    """Predictions whose scale is arbitrary (contrastive losses) reach the generator with a unit token 0."""
    from brainrecon.reconstruct import _requests

    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(3, 5, 8)) * np.array([45.0, 0.2, 3.0])[:, None, None]
    request = _requests({"image_tokens": tokens}, ReconstructConfig(), pooled_norm=7.0, seed=0)
    np.testing.assert_allclose(np.linalg.norm(request.image_pooled, axis=1), 7.0, rtol=1e-5)
    direction = tokens[:, 0] / np.linalg.norm(tokens[:, 0], axis=1, keepdims=True)
    np.testing.assert_allclose(request.image_pooled / 7.0, direction, rtol=1e-5)
    text = rng.normal(size=(3, 4, 8))
    versatile = _requests({"image_tokens": tokens, "text_tokens": text},
                          ReconstructConfig(generator="versatile", mix_ratio=0.5), pooled_norm=7.0, seed=0)
    np.testing.assert_allclose(np.linalg.norm(versatile.image_tokens[:, 0], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(versatile.text_tokens, text)  # text tokens keep their own scale


def test_killed_reconstruct_leaves_nothing_and_a_rerun_gives_the_same_bytes(ridge_run, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    def command(out):
        return [sys.executable, "-m", "brainrecon.cli", "reconstruct", "--run", str(ridge_run), "--out", str(out),
                "--n-images", "4", "--samples", "2", "--steps", "2", "--no-progress"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(tmp_path / "whole"), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if (tmp_path / "killed.partial").is_dir():  # it has started writing
            time.sleep(0.5)
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not killed.exists()  # no PNGs without a manifest
    subprocess.run(command(killed), check=True, env=env, capture_output=True)
    assert not (tmp_path / "killed.partial").exists()
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    again = json.loads((killed / "manifest.json").read_text())
    assert [e["sha256"] for e in whole["images"]] == [e["sha256"] for e in again["images"]]
    for entry in again["images"]:
        assert (killed / entry["file"]).read_bytes() == (tmp_path / "whole" / entry["file"]).read_bytes()


def test_reconstruct_replaces_its_own_output_only_when_asked(ridge_run, tmp_path):
    from brainrecon.errors import OutputError

    out = tmp_path / "r"
    config = ReconstructConfig(n_images=3, samples=1, steps=2, ecphory=False)
    reconstruct(ridge_run, out, config, progress=False)
    with pytest.raises(OutputError, match="already holds brainrecon reconstructions"):
        reconstruct(ridge_run, out, config, progress=False)
    smaller = reconstruct(ridge_run, out, config.model_copy(update={"n_images": 2}), progress=False,
                          overwrite=True)
    assert sorted(p.name for p in (out / "subj01").iterdir()) == sorted(
        f"{e['stimulus_id']}.png" for e in smaller["images"])  # no stale PNGs of the larger run
