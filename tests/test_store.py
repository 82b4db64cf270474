"""The data store: round trip, honest normalisation, every validation error, atomic writes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from brainrecon.data import StimulusTable, StoreWriter, TrialTable, VoxelTable, open_store
from brainrecon.io import partial_dir as partial_path
from brainrecon.errors import OutputError, StoreError


def make_tables(n_stimuli=12, n_test=4, repeats=3, sessions=3):
    ids = np.arange(n_stimuli)
    order = np.random.default_rng(0).permutation(np.repeat(ids, repeats))
    seen = {}
    rep = []
    for s in order.tolist():
        rep.append(seen.get(s, 0))
        seen[s] = rep[-1] + 1
    n = order.size
    session = np.arange(n) * sessions // n + 1
    trials = TrialTable(order.astype(np.int64), session.astype(np.int64), np.asarray(rep, np.int64),
                        np.where(order < n_test, "test", "train"))
    stimuli = StimulusTable(ids, [[f"caption {i} a", f"caption {i} b"] for i in ids], [str(100 + i) for i in ids])
    return trials, stimuli


def write_store(path, betas, trials, stimuli, voxels=None, images=None, **kwargs):
    voxels = voxels or VoxelTable.unknown(betas.shape[1], np.asarray(["V1"] * betas.shape[1]))
    with StoreWriter(path, source={"kind": "test"}, **kwargs) as writer:
        img = writer.write_stimuli(stimuli, (8, 8, 3))
        img[:] = images if images is not None else np.arange(len(stimuli))[:, None, None, None] % 255
        writer.add_subject("subj01", trials, voxels)[:] = betas


@pytest.fixture()
def simple(tmp_path):
    trials, stimuli = make_tables()
    rng = np.random.default_rng(1)
    betas = (rng.normal(size=(len(trials), 5)) * 2 + trials.session[:, None]).astype(np.float32)
    path = tmp_path / "store"
    write_store(path, betas, trials, stimuli)
    return path, betas, trials, stimuli


def test_round_trip(simple):
    path, betas, trials, stimuli = simple
    store = open_store(path, verify_checksums=True)
    assert store.subjects == ["subj01"]
    data = store.subject("subj01")
    np.testing.assert_array_equal(np.asarray(data.raw_betas), betas)
    np.testing.assert_array_equal(data.trials.stimulus_id, trials.stimulus_id)
    np.testing.assert_array_equal(data.trials.split, trials.split)
    np.testing.assert_array_equal(data.trials.repeat, trials.repeat)
    assert list(data.voxels.roi) == ["V1"] * 5
    assert store.captions_for(np.array([3]))[0] == ["caption 3 a", "caption 3 b"]
    assert store.stimuli.source_id[3] == "103"
    assert store.images_for(np.array([5, 2]))[:, 0, 0, 0].tolist() == [5, 2]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["version"] == 1 and "subjects/subj01/betas.npy" in manifest["files"]


def test_zscoring_uses_training_trials_only(simple):
    path, betas, trials, _ = simple
    data = open_store(path).subject("subj01")
    for session in (1, 2, 3):
        train = (trials.session == session) & ~trials.is_test
        z = data.read_trials(np.flatnonzero(train))
        np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(z.std(0), 1, atol=1e-5)
        # test trials are normalised with the *training* mean and sd of their session
        test_rows = np.flatnonzero((trials.session == session) & trials.is_test)
        mean, std = betas[train].mean(0), betas[train].std(0)
        np.testing.assert_allclose(data.read_trials(test_rows), (betas[test_rows] - mean) / std, rtol=1e-4,
                                   atol=1e-5)


def test_test_view_averages_repeats_and_train_view_keeps_trials(simple):
    path, _, trials, _ = simple
    data = open_store(path).subject("subj01")
    test = data.test()
    assert test.stimulus_ids.tolist() == [0, 1, 2, 3] and test.n_repeats.tolist() == [3, 3, 3, 3]
    rows = np.flatnonzero(trials.stimulus_id == 2)
    np.testing.assert_allclose(test.betas[2], data.read_trials(rows).mean(0), rtol=1e-5, atol=1e-6)
    train = data.train()
    assert len(train) == int((~trials.is_test).sum())
    assert not set(train.stimulus_ids.tolist()) & set(test.stimulus_ids.tolist())
    batches = list(data.iter_batches(7, seed=3))
    assert sum(len(b) for b in batches) == len(train)
    assert sorted(np.concatenate([b.stimulus_ids for b in batches]).tolist()) == sorted(train.stimulus_ids.tolist())
    with pytest.raises(StoreError, match="min_repeats"):
        data.test(min_repeats=4)


def tamper(path, rel, text):
    """Rewrite a file as a faulty tool would, keeping the manifest's size record in step."""
    (path / rel).write_text(text)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][rel]["bytes"] = (path / rel).stat().st_size
    (path / "manifest.json").write_text(json.dumps(manifest))


def expect_error(path, match):
    with pytest.raises(StoreError, match=match):
        store = open_store(path)
        store.subject("subj01")


def test_shape_mismatches_are_refused(simple):
    path = simple[0]
    rows = (path / "subjects/subj01/voxels.csv").read_text().splitlines()
    tamper(path, "subjects/subj01/voxels.csv", "\n".join(rows[:-1]) + "\n")
    expect_error(path, "has 5 voxel columns but .*voxels.csv lists 4 voxels")
    tamper(path, "subjects/subj01/voxels.csv", "\n".join(rows) + "\n")
    rows = (path / "subjects/subj01/trials.csv").read_text().splitlines()
    tamper(path, "subjects/subj01/trials.csv", "\n".join(rows[:-1]) + "\n")
    expect_error(path, "has 36 rows but .*trials.csv lists 35 trials")


def test_nan_betas_refused_at_write_and_on_open(tmp_path, simple):
    trials, stimuli = make_tables()
    bad = np.zeros((len(trials), 5), np.float32)
    bad[7, 2] = np.nan
    with pytest.raises(StoreError, match="NaN or Inf.*trial 7, voxel 2"):
        write_store(tmp_path / "nan", bad, trials, stimuli)
    assert not (tmp_path / "nan").exists() and not partial_path(tmp_path / "nan").exists()
    path = simple[0]
    betas = np.load(path / "subjects/subj01/betas.npy", mmap_mode="r+")
    betas[3, 1] = np.inf
    betas.flush()
    expect_error(path, "betas.npy contains NaN or Inf")


def test_test_stimulus_among_training_trials_is_refused(tmp_path):
    trials, stimuli = make_tables()
    split = trials.split.copy()
    split[np.flatnonzero(trials.stimulus_id == 1)[0]] = "train"
    leaky = TrialTable(trials.stimulus_id, trials.session, trials.repeat, split)
    with pytest.raises(StoreError, match="test stimulus id.*also appear among the training trials"):
        write_store(tmp_path / "leak", np.zeros((len(trials), 3), np.float32), leaky, stimuli)


def test_unknown_stimulus_and_bad_split_values(tmp_path, simple):
    trials, stimuli = make_tables()
    fewer = StimulusTable(stimuli.stimulus_id[:-1], stimuli.captions[:-1])
    with pytest.raises(StoreError, match="absent from"):
        write_store(tmp_path / "x", np.zeros((len(trials), 3), np.float32), trials, fewer)
    path = simple[0]
    text = (path / "subjects/subj01/trials.csv").read_text()
    tamper(path, "subjects/subj01/trials.csv", text.replace(",train\n", ",training\n", 1))
    expect_error(path, "not 'train' or 'test'")


def test_missing_and_truncated_files(simple):
    path = simple[0]
    (path / "subjects/subj01/voxels.csv").unlink()
    expect_error(path, "voxels.csv is listed in .* but missing")
    betas_path = path / "subjects/subj01/betas.npy"
    with open(betas_path, "r+b") as handle:
        handle.truncate(betas_path.stat().st_size - 8)
    expect_error(path, "betas.npy has .* bytes but .*manifest.json records")


def test_missing_columns_manifest_and_version(simple, tmp_path):
    path = simple[0]
    tamper(path, "subjects/subj01/voxels.csv", "voxel,i,j\n0,1,2\n")
    expect_error(path, "voxels.csv lacks column.*k, roi")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    expect_error(path, "format version 99")
    (path / "manifest.json").unlink()
    expect_error(path, "manifest.json is missing")
    expect_error(tmp_path / "nowhere", "no brainrecon store at .*brainrecon simulate")


def test_checksum_verification_detects_changed_bytes(simple):
    path = simple[0]
    images = np.load(path / "stimuli/images.npy", mmap_mode="r+")
    images[0, 0, 0, 0] ^= 1
    images.flush()
    open_store(path)  # sizes still match: the fast checks pass
    with pytest.raises(StoreError, match="does not match the checksum"):
        open_store(path, verify_checksums=True)


def test_existing_store_needs_overwrite_and_failed_write_leaves_nothing(simple):
    path, betas, trials, stimuli = simple
    with pytest.raises(OutputError, match="already holds a brainrecon store.*--overwrite"):
        write_store(path, betas, trials, stimuli)
    before = (path / "manifest.json").read_bytes()
    with pytest.raises(RuntimeError):
        with StoreWriter(path, source={"kind": "test"}, overwrite=True) as writer:
            writer.write_stimuli(stimuli, (8, 8, 3))
            raise RuntimeError("boom")
    assert (path / "manifest.json").read_bytes() == before  # the old store is untouched
    assert not partial_path(path).exists()
    write_store(path, betas * 2, trials, stimuli, overwrite=True)
    np.testing.assert_array_equal(np.asarray(open_store(path).subject("subj01").raw_betas), betas * 2)


KILL_SCRIPT = """
import sys, time, numpy as np
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_store import make_tables
from brainrecon.data import StoreWriter, VoxelTable
trials, stimuli = make_tables()
with StoreWriter({out!r}, source={{"kind": "test"}}) as w:
    w.write_stimuli(stimuli, (8, 8, 3))
    betas = w.add_subject("subj01", trials, VoxelTable.unknown(3))
    betas[:5] = 1.0
    Path({marker!r}).write_text("mid-write")
    time.sleep(60)
"""


def test_process_killed_mid_write_leaves_no_store(tmp_path):
    out, marker = tmp_path / "store", tmp_path / "marker"
    script = KILL_SCRIPT.format(tests=os.path.dirname(__file__), out=str(out), marker=str(marker))
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), "writer subprocess did not reach the middle of its write"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial_path(out).exists()
    with pytest.raises(StoreError, match="unfinished write"):
        open_store(out)
    trials, stimuli = make_tables()
    write_store(out, np.zeros((len(trials), 3), np.float32), trials, stimuli)  # a re-run succeeds
    assert open_store(out).subject("subj01").n_voxels == 3 and not partial_path(out).exists()


def test_subject_without_test_trials_errors_clearly(tmp_path):
    trials, stimuli = make_tables(n_test=0)
    write_store(tmp_path / "s", np.random.default_rng(0).normal(size=(len(trials), 3)).astype(np.float32),
                trials, stimuli)
    with pytest.raises(StoreError, match="subj01 has no test trials"):
        open_store(tmp_path / "s").subject("subj01").test()
    with pytest.raises(StoreError, match="subject 'subj09' is not in"):
        open_store(tmp_path / "s").subject("subj09")
