"""NSD preparation on schema-identical fake NSD trees (brainrecon.data.nsd_fake)."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io

from brainrecon.data import StimulusTable, StoreWriter, open_store
from brainrecon.data.nsd import prepare_nsd
from brainrecon.data.nsd_fake import make_fake_nsd, stim_info_header
from brainrecon.data.nsd_files import NSDPaths, read_hdf5_trials, read_nifti_trials
from brainrecon.errors import OutputError, StoreError
from store_compare import folder_differences

VERSION = "betas_fithrf_GLMdenoise_RR"
SPACE = "func1pt8mm"


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return make_fake_nsd(tmp_path_factory.mktemp("nsd"), subjects=(1, 2), n_sessions=2, image_size=16, seed=3)


@pytest.fixture(scope="module")
def store_path(fake, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "nsd"
    prepare_nsd(fake.root, [1, 2], out, progress=False)
    return out


def copy_tree(fake, tmp_path) -> NSDPaths:
    shutil.copytree(fake.root, tmp_path / "nsd")
    return NSDPaths(tmp_path / "nsd")


def expected_trials(fake, subject: int, n_sessions: int):
    """Trial ids, split and repeat computed here, independently, from the design file."""
    mat = scipy.io.loadmat(fake.paths.expdesign)
    order = mat["masterordering"].ravel().astype(int)[:750 * n_sessions]
    ids = mat["subjectim"][subject - 1, order - 1].astype(int) - 1
    shared = set((mat["sharedix"].ravel().astype(int) - 1).tolist())
    counts: dict[int, int] = {}
    repeats = []
    for i in ids.tolist():
        repeats.append(counts.get(i, 0))
        counts[i] = counts.get(i, 0) + 1
    return ids, np.array([i in shared for i in ids.tolist()]), np.array(repeats)


def mask_of(fake, subject: int) -> np.ndarray:
    return np.asanyarray(nib.load(fake.paths.roi(subject, SPACE, "nsdgeneral")).dataobj) > 0


# ---------------------------------------------------------------------------------------------
# Contents


@pytest.mark.parametrize("subject", [1, 2])
def test_store_trials_follow_the_design(fake, store_path, subject):
    data = open_store(store_path).subject(f"subj{subject:02d}")
    ids, is_test, repeats = expected_trials(fake, subject, 2)
    np.testing.assert_array_equal(data.trials.stimulus_id, ids)
    np.testing.assert_array_equal(data.trials.is_test, is_test)
    np.testing.assert_array_equal(data.trials.repeat, repeats)
    np.testing.assert_array_equal(data.trials.session, np.repeat([1, 2], 750))
    assert data.trials.is_test.sum() == 30 and np.unique(ids[is_test]).size == 10  # 10 shared images x 3


def test_voxels_are_the_mask_in_nifti_c_order(fake, store_path):
    for subject in (1, 2):
        voxels = open_store(store_path).subject(f"subj{subject:02d}").voxels
        mask = mask_of(fake, subject)
        assert len(voxels) == mask.sum()
        np.testing.assert_array_equal(voxels.ijk, np.argwhere(mask))  # argwhere = C order over (x, y, z)
        assert set(voxels.roi.tolist()) == {"nsdgeneral"}


def test_betas_are_int16_over_300_at_the_right_voxels(fake, store_path):
    data = open_store(store_path).subject("subj02")
    nii = np.asanyarray(nib.load(fake.paths.betas(2, SPACE, VERSION, 2, "nifti")).dataobj)
    assert nii.dtype == np.int16
    rng = np.random.default_rng(0)
    for v in rng.choice(data.n_voxels, 5, replace=False):
        x, y, z = data.voxels.ijk[v]
        for t in (0, 17, 749):
            expected = float(nii[x, y, z, t]) / 300.0
            assert data.raw_betas[750 + t, v] == pytest.approx(expected, abs=1e-6)
    assert data.raw_betas.dtype == np.float32
    assert np.abs(np.asarray(data.raw_betas)).max() > 1.0  # not z-scored, not left x300
    assert np.abs(np.asarray(data.raw_betas)).max() < 40.0


def test_reader_zscores_sessions_with_training_statistics(store_path):
    data = open_store(store_path).subject("subj01")
    train = data.train()
    sessions = data.trials.session[data.train_rows()]
    for s in (1, 2):
        block = train.betas[sessions == s]
        np.testing.assert_allclose(block.mean(axis=0), 0, atol=1e-4)
        np.testing.assert_allclose(block.std(axis=0), 1, atol=1e-3)


def test_stimuli_images_and_captions(fake, store_path):
    store = open_store(store_path, verify_checksums=True)
    seen = np.union1d(expected_trials(fake, 1, 2)[0], expected_trials(fake, 2, 2)[0])
    np.testing.assert_array_equal(store.stimuli.stimulus_id, seen)
    assert store.stimuli.source_id == [str(i) for i in seen]
    with h5py.File(fake.paths.stimuli, "r") as f:
        for row in (0, len(seen) // 2, len(seen) - 1):
            np.testing.assert_array_equal(store.images[row], f["imgBrick"][seen[row]])
    with open(fake.paths.stim_info, newline="") as handle:
        rows = list(csv.DictReader(handle))
    i = int(seen[5])
    coco_id, split = int(rows[i]["cocoId"]), rows[i]["cocoSplit"]
    annotations = json.loads(fake.paths.captions(split).read_text())["annotations"]
    expected = [a["caption"] for a in sorted(annotations, key=lambda a: a["id"]) if a["image_id"] == coco_id]
    assert len(expected) == 5 and store.captions_for(np.array([i]))[0] == expected


def test_manifest_records_inputs_and_options(fake, store_path):
    manifest = json.loads((store_path / "manifest.json").read_text())
    source = manifest["source"]
    assert source["kind"] == "nsd" and source["options"]["sessions"] is None
    assert source["options"]["betas"] == VERSION and manifest["brainrecon_version"]
    design = source["inputs"]["nsddata/experiments/nsd/nsd_expdesign.mat"]
    assert design["bytes"] == fake.paths.expdesign.stat().st_size and len(design["sha256"]) == 64
    assert sum(k.endswith(".hdf5") and "betas_session" in k for k in source["inputs"]) == 4
    assert manifest["subjects"]["subj01"]["normalization"] == "none"
    assert not any(".resume" in f for f in manifest["files"])


def test_sessions_option_limits_trials_and_split(fake, tmp_path):
    summary = prepare_nsd(fake.root, [1], tmp_path / "one", sessions=1, progress=False, betas_dtype="float16")
    data = open_store(tmp_path / "one").subject("subj01")
    ids, is_test, _ = expected_trials(fake, 1, 1)
    assert len(data.trials) == 750 and data.raw_betas.dtype == np.float16
    assert summary.subjects["subj01"]["test_images"] == np.unique(ids[is_test]).size
    assert summary.subjects["subj01"]["train_images"] == np.unique(ids[~is_test]).size
    assert int(data.trials.is_test.sum()) == int(is_test.sum())


# ---------------------------------------------------------------------------------------------
# Readers and formats


def test_hdf5_and_nifti_inputs_give_identical_stores(fake, tmp_path, store_path):
    prepare_nsd(fake.root, [1, 2], tmp_path / "nii", betas_format="nifti", progress=False)
    # only the manifest, which names different input files, may differ
    assert folder_differences(store_path, tmp_path / "nii") in ({}, {"manifest.json": "bytes differ"})


def test_hdf5_reader_reverses_axes_to_nifti_order(fake):
    mask = mask_of(fake, 2)
    coords = np.argwhere(mask)
    from_h5 = read_hdf5_trials(fake.paths.betas(2, SPACE, VERSION, 1, "hdf5"), coords, block_bytes=4096)
    from_nii = read_nifti_trials(fake.paths.betas(2, SPACE, VERSION, 1, "nifti"), coords, block_bytes=4096)
    np.testing.assert_array_equal(from_h5, from_nii)
    with h5py.File(fake.paths.betas(2, SPACE, VERSION, 1, "hdf5"), "r") as f:
        naive = f["betas"][:][:, mask.T]  # the trap: same voxels, (z, y, x) order
    assert not np.array_equal(naive, from_h5)
    np.testing.assert_array_equal(np.sort(naive, axis=1), np.sort(from_h5, axis=1))


def test_nifti_reader_on_a_real_nibabel_file():
    path = Path(nib.__file__).parent / "tests" / "data" / "functional.nii"
    img = nib.load(path)
    assert img.shape == (17, 21, 3, 20)
    expected_all = img.get_fdata()
    mask = expected_all[..., 0] > np.median(expected_all[..., 0])
    got = read_nifti_trials(path, np.argwhere(mask), block_bytes=17 * 21 * 3 * 8 * 3)  # several blocks
    assert got.shape == (20, mask.sum())
    np.testing.assert_array_equal(got, expected_all[mask].T)
    x, y, z = np.argwhere(mask)[7]
    assert got[11, 7] == expected_all[x, y, z, 11]


# ---------------------------------------------------------------------------------------------
# Determinism and resume


def test_two_runs_are_byte_identical(fake, tmp_path, store_path):
    prepare_nsd(fake.root, [1, 2], tmp_path / "again", progress=False)
    assert folder_differences(tmp_path / "again", store_path) == {}


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from brainrecon.data.nsd import prepare_nsd

    def kill_after_subj01_session2(name, session, n_sessions):
        if name == "subj01" and session == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    prepare_nsd(sys.argv[1], [1, 2], sys.argv[2], progress=False, on_session=kill_after_subj01_session2)
""")


def test_resume_after_sigkill_gives_the_same_store(fake, tmp_path, store_path):
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(fake.root), str(out)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not out.exists()
    checkpoints = json.loads((tmp_path / "killed.partial" / ".resume" / "checkpoints.json").read_text())
    assert {"subj01/session01", "subj01/session02"} <= checkpoints.keys()
    assert "subj02/session01" not in checkpoints

    done = []
    prepare_nsd(fake.root, [1, 2], out, progress=False, on_session=lambda *a: done.append(a))
    assert [a[:2] for a in done] == [("subj01", 1), ("subj01", 2), ("subj02", 1), ("subj02", 2)]
    assert not (tmp_path / "killed.partial").exists()
    assert folder_differences(out, store_path) == {}


def test_failure_keeps_a_resumable_partial_and_other_options_start_fresh(fake, tmp_path, store_path):
    out = tmp_path / "failed"

    def fail_in_subj02(name, session, n_sessions):
        if name == "subj02":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_nsd(fake.root, [1, 2], out, progress=False, on_session=fail_in_subj02)
    assert not out.exists() and (tmp_path / "failed.partial").exists()

    # Different options: the partial is discarded, not mixed in.
    prepare_nsd(fake.root, [1], out, sessions=1, progress=False)
    prepare_nsd(fake.root, [1], tmp_path / "fresh", sessions=1, progress=False)
    assert folder_differences(out, tmp_path / "fresh") == {}

    # Same options after a failure: continued, identical to an uninterrupted run.
    with pytest.raises(KeyboardInterrupt):
        prepare_nsd(fake.root, [1, 2], tmp_path / "again", progress=False, on_session=fail_in_subj02)
    prepare_nsd(fake.root, [1, 2], tmp_path / "again", progress=False)
    assert folder_differences(tmp_path / "again", store_path) == {}


# ---------------------------------------------------------------------------------------------
# Bad inputs: a clear error naming the file, and no store


def assert_fails_cleanly(root, out, match, **kwargs):
    with pytest.raises(StoreError, match=match) as info:
        prepare_nsd(root, [1], out, progress=False, **kwargs)
    assert not out.exists()
    assert not Path(str(out) + ".partial").exists()
    return str(info.value)


def test_missing_session_file(fake, tmp_path):
    paths = copy_tree(fake, tmp_path)
    for fmt in ("hdf5", "nifti"):
        paths.betas(1, SPACE, VERSION, 2, fmt).unlink()
    message = assert_fails_cleanly(paths.root, tmp_path / "out", "betas_session02.hdf5")
    assert "--sessions 1" in message
    prepare_nsd(paths.root, [1], tmp_path / "ok", sessions=1, progress=False)  # the suggested fix works


def test_each_subject_can_use_the_sessions_it_has(fake, tmp_path):
    paths = copy_tree(fake, tmp_path)
    for fmt in ("hdf5", "nifti"):  # subject 2 has only its first session, as a partial download would
        paths.betas(2, SPACE, VERSION, 2, fmt).unlink()
    with pytest.raises(StoreError, match="betas_session02"):
        prepare_nsd(paths.root, [1, 2], tmp_path / "out", progress=False)
    prepare_nsd(paths.root, [1, 2], tmp_path / "ok", sessions="available", progress=False)
    store = open_store(tmp_path / "ok")
    assert store.source["sessions_per_subject"] == {"subj01": 2, "subj02": 1}
    assert len(store.subject("subj01").trials) == 1500 and len(store.subject("subj02").trials) == 750
    # the split rule holds for each count: the shared images are test for everyone, nothing else is
    trials = {name: store.subject(name).trials for name in store.subjects}
    test = {name: set(t.stimulus_id[t.is_test].tolist()) for name, t in trials.items()}
    train = {name: set(t.stimulus_id[~t.is_test].tolist()) for name, t in trials.items()}
    assert test["subj02"] and test["subj02"] <= test["subj01"]
    assert not (train["subj01"] | train["subj02"]) & (test["subj01"] | test["subj02"])
    with pytest.raises(StoreError, match="'available'"):
        prepare_nsd(paths.root, [1], tmp_path / "bad", sessions="some", progress=False)


def test_wrong_number_of_trials(fake, tmp_path):
    paths = copy_tree(fake, tmp_path)
    path = paths.betas(1, SPACE, VERSION, 1, "hdf5")
    with h5py.File(path, "r+") as f:
        data = f["betas"][:700]
        del f["betas"]
        f["betas"] = data
    message = assert_fails_cleanly(paths.root, tmp_path / "out", "700 trials")
    assert str(path) in message and "750" in message


def test_truncated_hdf5(fake, tmp_path):
    paths = copy_tree(fake, tmp_path)
    path = paths.betas(1, SPACE, VERSION, 2, "hdf5")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = assert_fails_cleanly(paths.root, tmp_path / "out", "truncated")
    assert str(path) in message


def test_truncated_nifti_is_reported_and_leaves_no_store(fake, tmp_path):
    paths = copy_tree(fake, tmp_path)
    path = paths.betas(1, SPACE, VERSION, 2, "nifti")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    out = tmp_path / "out"
    with pytest.raises(StoreError, match="truncated") as info:
        prepare_nsd(paths.root, [1], out, betas_format="nifti", progress=False)
    assert str(path) in str(info.value)
    assert not out.exists()  # only a resumable partial (session 1 done) may remain, never a store
    partial = tmp_path / "out.partial"
    assert not partial.exists() or not (partial / "manifest.json").exists()


def test_mask_that_does_not_match_the_volumes(fake, tmp_path):
    paths = copy_tree(fake, tmp_path)
    mask_path = paths.roi(1, SPACE, "nsdgeneral")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.eye(4)), mask_path)
    message = assert_fails_cleanly(paths.root, tmp_path / "out", "must be on the betas' grid")
    assert str(mask_path) in message and "(4, 4, 4)" in message


def test_subject_without_shared_images_in_the_chosen_sessions(tmp_path):
    fake = make_fake_nsd(tmp_path / "nsd", n_sessions=2, image_size=8, formats=("hdf5",), captions=False,
                         shared_from_session=2, seed=5)
    message = assert_fails_cleanly(fake.root, tmp_path / "out", "none of the shared test images", sessions=1)
    assert str(fake.paths.expdesign) in message and "--sessions" in message


def test_csv_with_missing_columns(fake, tmp_path):
    paths = copy_tree(fake, tmp_path)
    with open(paths.stim_info, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == stim_info_header() and len(rows[0]) == 41
    drop = {rows[0].index("cocoSplit"), rows[0].index("subject1_rep2")}
    with open(paths.stim_info, "w", newline="") as handle:
        csv.writer(handle).writerows([[v for i, v in enumerate(r) if i not in drop] for r in rows])
    message = assert_fails_cleanly(paths.root, tmp_path / "out", "lacks column")
    assert "cocoSplit" in message and "subject1_rep2" in message and str(paths.stim_info) in message


def test_existing_output_is_not_replaced_without_overwrite(fake, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds files that are not a brainrecon store"):
        prepare_nsd(fake.root, [1], out, sessions=1, progress=False, overwrite=True)  # never someone's files
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()  # an empty folder may be written into
    prepare_nsd(fake.root, [1], out, sessions=1, progress=False)
    with pytest.raises(OutputError, match="already holds a brainrecon store"):
        prepare_nsd(fake.root, [1], out, progress=False)
    prepare_nsd(fake.root, [1], out, sessions=2, progress=False, overwrite=True)
    assert len(open_store(out).subject("subj01").trials) == 1500


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_prepare_and_error_exit_code(fake, tmp_path):
    from typer.testing import CliRunner

    from brainrecon.cli.nsd import app

    runner = CliRunner()
    result = runner.invoke(app, ["prepare", "--root", str(fake.root), "--subjects", "1", "2", "--out",
                                 str(tmp_path / "cli"), "--sessions", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "subj02" in result.output and "750" in result.output
    assert open_store(tmp_path / "cli").subjects == ["subj01", "subj02"]

    result = runner.invoke(app, ["prepare", "--root", str(tmp_path / "nowhere"), "--subjects", "1", "--out",
                                 str(tmp_path / "cli2")])
    assert result.exit_code == 2
    assert "nowhere" in result.output and "Traceback" not in result.output


def test_writer_without_resume_still_discards_its_partial(tmp_path):
    out = tmp_path / "plain"
    table = StimulusTable(stimulus_id=np.arange(2), captions=[[], []])
    with pytest.raises(RuntimeError):
        with StoreWriter(out, source={"kind": "test"}) as writer:
            writer.write_stimuli(table, image_shape=(4, 4, 3))
            with pytest.raises(StoreError, match="resume=True"):
                writer.checkpoint("step")
            raise RuntimeError("boom")
    assert not out.exists() and not (tmp_path / "plain.partial").exists()
