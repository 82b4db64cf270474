"""Ecphory and reconstruction from a trained run, on the simulated world with the shipped small models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from brainrecon.cli import app
from brainrecon.memory import SubjectMemory
from brainrecon.evaluate.ecphory import ecphory_embedding_scores
from brainrecon.reconstruct import ReconstructConfig, build_memory, reconstruct
from brainrecon.train.run import RunContext

torch.set_num_threads(1)


def test_memory_holds_training_stimuli_only(ridge_run):
    context = RunContext.open(ridge_run)
    memory = build_memory(context, ridge_run, "subj01", progress=False)
    test_ids = set(context.store.subject("subj01").test().stimulus_ids.tolist())
    assert test_ids.isdisjoint(memory.stimulus_ids.tolist())
    assert memory.n_trials == len(context.store.subject("subj01").train())
    again = SubjectMemory.load(ridge_run / "memory" / "subj01")
    assert again.n_entries == memory.n_entries


def test_ecphory_improves_the_embedding_on_the_simulated_world(ridge_run):
    """Measured, not assumed: the fused embedding at the paper's alpha (0.6) is closer to the truth.

    On this world the gain is small (about +0.01 cosine) and retrieval barely moves; the
    closing note of the Ecphory issue reports it.
    """
    context = RunContext.open(ridge_run)
    memory = build_memory(context, ridge_run, "subj01", progress=False)
    rows = {row["alpha"]: row for row in ecphory_embedding_scores(context, memory, "subj01")["rows"]}
    assert rows[0.6]["embedding_cosine"] > rows[1.0]["embedding_cosine"]


def test_reconstruct_manifest_selection_and_alpha_one(ridge_run, tmp_path):
    base = {"n_images": 3, "k": 2, "steps": 4, "batch_size": 8}
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

    oracle = reconstruct(ridge_run, tmp_path / "oracle", ReconstructConfig(**base, selection="oracle"),
                         progress=False)
    assert oracle["oracle_selection"] and oracle["selection"].startswith("ORACLE")

    # alpha = 1 fuses nothing: the same images as no Ecphory at all
    plain = reconstruct(ridge_run, tmp_path / "plain", ReconstructConfig(**{**base, "k": 1}, ecphory=False),
                        progress=False)
    alpha_one = reconstruct(ridge_run, tmp_path / "alpha1", ReconstructConfig(**{**base, "k": 1}, alpha=1.0),
                            progress=False)
    for a, b in zip(plain["images"], alpha_one["images"]):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "plain" / a["file"])),
                                      np.asarray(Image.open(tmp_path / "alpha1" / b["file"])))


def test_cli_memory_build_and_reconstruct(ridge_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["memory", "build", "--run", str(ridge_run), "--search", "pooled",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "alpha 0.6" in result.output and "(no Ecphory)" in result.output
    result = runner.invoke(app, ["reconstruct", "--run", str(ridge_run), "--out", str(tmp_path / "r"),
                                 "--n-images", "2", "--k", "2", "--steps", "3", "--no-ecphory",
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
                "--n-images", "4", "--k", "2", "--steps", "2", "--no-progress"]

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
    config = ReconstructConfig(n_images=3, k=1, steps=2, ecphory=False)
    reconstruct(ridge_run, out, config, progress=False)
    with pytest.raises(OutputError, match="already holds brainrecon reconstructions"):
        reconstruct(ridge_run, out, config, progress=False)
    smaller = reconstruct(ridge_run, out, config.model_copy(update={"n_images": 2}), progress=False,
                          overwrite=True)
    assert sorted(p.name for p in (out / "subj01").iterdir()) == sorted(
        f"{e['stimulus_id']}.png" for e in smaller["images"])  # no stale PNGs of the larger run
