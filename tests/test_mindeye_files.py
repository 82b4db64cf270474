"""Importing MindEye1's and MindEye2's published NSD files (on schema-exact fakes, brainrecon.data.mindeye_fake)."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from brainrecon.data import open_store
from brainrecon.data.mindeye_fake import fake_experiment, make_fake_mindeye1, make_fake_mindeye2
from brainrecon.data.mindeye1_files import import_mindeye1
from brainrecon.data.mindeye2_files import import_mindeye2
from brainrecon.errors import OutputError, StoreError
from brainrecon.io import sha256_file
from store_compare import folder_differences


@pytest.fixture(scope="module")
def experiment():
    return fake_experiment(subject=1, n_sessions=2, n_voxels=12, image_size=8, seed=4)


@pytest.fixture(scope="module")
def one_session():
    """A smaller experiment for the MindEye1 variants (reading tars sample by sample is the slow part)."""
    return fake_experiment(subject=1, n_sessions=1, n_voxels=6, n_shared=20, image_size=8, seed=5)


@pytest.fixture(scope="module")
def me2_root(experiment, tmp_path_factory):
    root = tmp_path_factory.mktemp("me2") / "mindeyev2"
    make_fake_mindeye2(root, experiment)
    return root


@pytest.fixture(scope="module")
def me2_store(me2_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "me2"
    import_mindeye2(me2_root, 1, out, progress=False)
    return out


@pytest.fixture(scope="module")
def me1_root(experiment, tmp_path_factory):
    root = tmp_path_factory.mktemp("me1")
    make_fake_mindeye1(root, experiment)
    return root / "webdataset_avg_split"


@pytest.fixture(scope="module")
def me1_store(me1_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "me1"
    import_mindeye1(me1_root.parent, 1, out, progress=False)  # the parent of webdataset_avg_split/ works too
    return out


def earlier_presentations(ids: np.ndarray) -> np.ndarray:
    return np.asarray([int(np.sum(ids[:t] == ids[t])) for t in range(len(ids))])


def assert_fails_cleanly(importer, root, out: Path, match: str, **kwargs) -> str:
    with pytest.raises(StoreError, match=match) as info:
        importer(root, 1, out, progress=False, **kwargs)
    assert not out.exists()
    assert not Path(str(out) + ".partial").exists()
    return str(info.value)


def rewrite_tar(path: Path, change) -> None:
    """Rewrite a tar in place, member by member: change(name, data) gives new bytes, or None to drop it."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            data = change(member.name, data)
            if data is not None:
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# MindEye2: contents


def test_me2_trials_follow_the_behaviour_in_global_trial_order(experiment, me2_store):
    trials = open_store(me2_store).subject("subj01").trials
    n = len(experiment.image_ids)
    assert len(trials) == n == 1500
    np.testing.assert_array_equal(trials.stimulus_id, experiment.image_ids)
    np.testing.assert_array_equal(trials.session, np.repeat([1, 2], 750))
    np.testing.assert_array_equal(trials.is_test, experiment.shared[experiment.image_ids])
    np.testing.assert_array_equal(trials.repeat, earlier_presentations(experiment.image_ids))
    assert 0 < trials.is_test.sum() < n and set(trials.repeat.tolist()) == {0, 1, 2}


def test_me2_betas_are_the_source_rows_of_each_global_trial(me2_root, me2_store):
    data = open_store(me2_store).subject("subj01")
    with h5py.File(me2_root / "betas_all_subj01_fp32_renorm.hdf5") as f:
        source = f["betas"][:]
    with tarfile.open(me2_root / "wds" / "subj01" / "new_test" / "0.tar") as tar:
        behav = [np.load(io.BytesIO(tar.extractfile(m).read()), allow_pickle=False) for m in tar.getmembers()
                 if m.name.endswith(".behav.npy")]
    test_trials = np.asarray([int(b[0, 5]) for b in behav])
    assert data.raw_betas.dtype == np.float32
    np.testing.assert_array_equal(data.raw_betas, source)  # all 1500 trials present, row = global trial
    np.testing.assert_array_equal(data.raw_betas[data.trials.is_test], source[np.sort(test_trials)])
    # already normalised by MindEye: the reader must use the stored values as they are
    np.testing.assert_array_equal(data.read_trials(np.arange(5)), source[:5])


def test_me2_images_become_uint8_nhwc_within_rounding(experiment, me2_root, me2_store):
    store = open_store(me2_store)
    ids = store.stimuli.stimulus_id
    np.testing.assert_array_equal(ids, np.unique(experiment.image_ids))  # only the images used, sorted
    assert store.stimuli.source_id == [str(i) for i in ids.tolist()]
    assert all(c == [] for c in store.stimuli.captions)
    assert store.images.shape == (len(ids), 8, 8, 3) and store.images.dtype == np.uint8
    with h5py.File(me2_root / "coco_images_224_float16.hdf5") as f:
        source = f["images"][ids].astype(np.float64)  # (n, 3, H, W) in [0, 1]
    assert np.abs(store.images.transpose(0, 3, 1, 2) - source * 255).max() <= 0.5 + 1e-6
    np.testing.assert_array_equal(store.images, experiment.images[ids])


def test_me2_manifest_records_inputs_and_normalisation(me2_root, me2_store):
    manifest = open_store(me2_store).manifest
    assert manifest["subjects"]["subj01"]["normalization"] == "session-zscore-all"
    assert manifest["subjects"]["subj01"]["sessions"] == 2
    source = manifest["source"]
    assert source["kind"] == "mindeye2" and source["options"] == {"subject": 1, "sessions": 2}
    betas = "betas_all_subj01_fp32_renorm.hdf5"
    assert set(source["inputs"]) == {betas, "coco_images_224_float16.hdf5", "shared1000.npy",
                                     "wds/subj01/train/0.tar", "wds/subj01/train/1.tar",
                                     "wds/subj01/new_test/0.tar"}
    assert source["inputs"][betas]["sha256"] == sha256_file(me2_root / betas)
    assert source["inputs"][betas]["bytes"] == (me2_root / betas).stat().st_size
    assert 0.9 < source["betas_moments"]["all_trials"]["mean_voxel_sd"] < 1.1  # fake betas are N(0, 1)


def test_me2_sessions_option_keeps_the_first_sessions(experiment, me2_root, tmp_path):
    summary = import_mindeye2(me2_root, 1, tmp_path / "one", sessions=1, progress=False)
    data = open_store(tmp_path / "one").subject("subj01")
    first = experiment.image_ids[:750]
    np.testing.assert_array_equal(data.trials.stimulus_id, first)
    np.testing.assert_array_equal(data.trials.is_test, experiment.shared[first])
    assert summary.sessions == 1 and set(data.trials.session.tolist()) == {1}
    np.testing.assert_array_equal(data.raw_betas, experiment.betas[:750])


def test_me2_two_imports_are_byte_identical(me2_root, me2_store, tmp_path):
    import_mindeye2(me2_root, 1, tmp_path / "again", progress=False)
    assert folder_differences(tmp_path / "again", me2_store) == {}


# ---------------------------------------------------------------------------------------------
# MindEye2: bad inputs give one clear error and no store


@pytest.fixture()
def me2_copy(me2_root, tmp_path):
    return Path(shutil.copytree(me2_root, tmp_path / "copy"))


@pytest.mark.parametrize("name", ["betas_all_subj01_fp32_renorm.hdf5", "coco_images_224_float16.hdf5",
                                  "wds/subj01/new_test/0.tar", "wds/subj01/train/0.tar"])
def test_me2_missing_file(me2_copy, tmp_path, name):
    (me2_copy / name).unlink()
    message = assert_fails_cleanly(import_mindeye2, me2_copy, tmp_path / "out", "is missing")
    assert str(me2_copy / name) in message


def test_me2_wrong_key_and_wrong_shape(me2_copy, tmp_path):
    path = me2_copy / "betas_all_subj01_fp32_renorm.hdf5"
    with h5py.File(path, "r+") as f:
        f.move("betas", "data")
    message = assert_fails_cleanly(import_mindeye2, me2_copy, tmp_path / "out", "no dataset 'betas'")
    assert str(path) in message and "'data'" in message
    with h5py.File(path, "r+") as f:
        f["betas"] = f["data"][:].reshape(1500, 3, 4)
    assert_fails_cleanly(import_mindeye2, me2_copy, tmp_path / "out", r"must be a 2-D .* \(1500, 3, 4\)")


def test_me2_behaviour_pointing_past_the_betas(me2_copy, tmp_path):
    path = me2_copy / "betas_all_subj01_fp32_renorm.hdf5"
    with h5py.File(path, "r+") as f:
        rows = f["betas"][:1000]
        del f["betas"]
        f["betas"] = rows
    message = assert_fails_cleanly(import_mindeye2, me2_copy, tmp_path / "out", "points past the 1000 rows")
    assert str(path) in message and "column 5" in message


def test_me2_image_missing_for_a_73k_index(experiment, me2_copy, tmp_path):
    path = me2_copy / "coco_images_224_float16.hdf5"
    n_keep = int(np.max(experiment.image_ids))  # the largest index used is now one past the end
    with h5py.File(path, "r+") as f:
        kept = f["images"][:n_keep]
        del f["images"]
        f["images"] = kept
    message = assert_fails_cleanly(import_mindeye2, me2_copy, tmp_path / "out", "is missing")
    assert str(path) in message and f"73k index {n_keep}" in message


def test_me2_subject_without_test_images(tmp_path):
    root = tmp_path / "noshared"
    make_fake_mindeye2(root, n_sessions=1, n_shared=0, n_voxels=4, image_size=4, seed=2)
    message = assert_fails_cleanly(import_mindeye2, root, tmp_path / "out", "no test")
    assert "shared-1000" in message


def test_me2_too_many_sessions_and_existing_output(me2_root, tmp_path):
    message = assert_fails_cleanly(import_mindeye2, me2_root, tmp_path / "out", "--sessions 3", sessions=3)
    assert "1..2" in message
    out = tmp_path / "exists"
    import_mindeye2(me2_root, 1, out, sessions=2, progress=False)
    with pytest.raises(OutputError, match="already holds a brainrecon store"):
        import_mindeye2(me2_root, 1, out, progress=False)
    import_mindeye2(me2_root, 1, out, sessions=1, overwrite=True, progress=False)
    assert len(open_store(out).subject("subj01").trials) == 750


def test_me2_split_disagreeing_with_shared1000(experiment, me2_copy, tmp_path):
    shared = experiment.shared.copy()
    image = int(experiment.image_ids[~experiment.shared[experiment.image_ids]][0])
    shared[image] = True
    np.save(me2_copy / "shared1000.npy", shared)
    message = assert_fails_cleanly(import_mindeye2, me2_copy, tmp_path / "out", "disagree")
    assert f"73k image {image}" in message


# ---------------------------------------------------------------------------------------------
# MindEye1


def test_me1_one_trial_per_real_repeat_in_global_trial_order(experiment, me1_store):
    data = open_store(me1_store).subject("subj01")
    ids = experiment.image_ids
    np.testing.assert_array_equal(data.trials.stimulus_id, ids)  # padding rows dropped: 1500 real trials
    np.testing.assert_array_equal(data.trials.session, np.repeat([1, 2], 750))
    np.testing.assert_array_equal(data.trials.repeat, earlier_presentations(ids))
    np.testing.assert_array_equal(data.trials.is_test, experiment.shared[ids])
    np.testing.assert_array_equal(data.raw_betas, experiment.betas)
    seen = np.bincount(ids)[np.unique(ids)]
    assert seen.min() == 1 and seen.max() == 3  # images seen once, twice and three times were all imported


def test_me1_images_stimuli_and_manifest(experiment, me1_root, me1_store):
    store = open_store(me1_store)
    ids = store.stimuli.stimulus_id
    np.testing.assert_array_equal(ids, np.unique(experiment.image_ids))
    np.testing.assert_array_equal(store.images, experiment.images[ids])  # png: lossless
    assert all(c == [] for c in store.stimuli.captions)
    manifest = store.manifest
    assert manifest["subjects"]["subj01"]["normalization"] == "session-zscore-all"
    inputs = manifest["source"]["inputs"]
    assert set(inputs) == {"metadata_subj01.json", "train/train_subj01_0.tar", "train/train_subj01_1.tar",
                           "val/val_subj01_0.tar", "test/test_subj01_0.tar", "test/test_subj01_1.tar"}
    shard = me1_root / "val" / "val_subj01_0.tar"
    assert inputs["val/val_subj01_0.tar"] == {"bytes": shard.stat().st_size, "sha256": sha256_file(shard)}


@pytest.mark.parametrize("fill", ["nan", "zeros"])
def test_me1_other_padding_of_missing_repeats_gives_the_same_trials(one_session, tmp_path, fill):
    make_fake_mindeye1(tmp_path / "src", one_session, fill=fill, image_format="jpg")
    import_mindeye1(tmp_path / "src" / "webdataset_avg_split", 1, tmp_path / "out", progress=False)
    store = open_store(tmp_path / "out")
    data = store.subject("subj01")
    np.testing.assert_array_equal(data.trials.stimulus_id, one_session.image_ids)
    np.testing.assert_array_equal(data.trials.repeat, earlier_presentations(one_session.image_ids))
    np.testing.assert_array_equal(data.raw_betas, one_session.betas)
    assert store.images.shape == (len(np.unique(one_session.image_ids)), 8, 8, 3)
    for row, image in enumerate(store.stimuli.stimulus_id[:20].tolist()):  # jpg: the decoded stored bytes
        jpg = io.BytesIO()
        Image.fromarray(one_session.images[image]).save(jpg, format="JPEG")
        np.testing.assert_array_equal(store.images[row], np.asarray(Image.open(jpg).convert("RGB")))


def test_me1_without_per_repeat_trials_sessions_are_unknown(one_session, tmp_path):
    experiment = one_session
    make_fake_mindeye1(tmp_path / "src", experiment, trial_format="first")
    summary = import_mindeye1(tmp_path / "src", 1, tmp_path / "out", progress=False)
    store = open_store(tmp_path / "out")
    data = store.subject("subj01")
    assert summary.sessions is None and set(data.trials.session.tolist()) == {1}
    assert "unknown" in store.manifest["source"]["conventions"]["session"]
    # each image's real repeats are still its own betas, in time order
    assert len(data.trials) == len(experiment.image_ids)
    for image in np.unique(experiment.image_ids)[:50].tolist():
        rows = np.flatnonzero(data.trials.stimulus_id == image)
        np.testing.assert_array_equal(data.trials.repeat[rows], np.arange(rows.size))
        np.testing.assert_array_equal(data.raw_betas[rows], experiment.betas[experiment.image_ids == image])


def test_me1_two_imports_are_byte_identical(me1_root, me1_store, tmp_path):
    import_mindeye1(me1_root, 1, tmp_path / "again", progress=False)
    assert folder_differences(tmp_path / "again", me1_store) == {}


@pytest.fixture()
def me1_copy(me1_root, tmp_path):
    return Path(shutil.copytree(me1_root, tmp_path / "copy" / "webdataset_avg_split"))


def test_me1_missing_shard(me1_copy, tmp_path):
    (me1_copy / "train" / "train_subj01_0.tar").unlink()
    message = assert_fails_cleanly(import_mindeye1, me1_copy, tmp_path / "out", "is missing")
    assert "train_subj01_0.tar" in message
    (me1_copy / "test" / "test_subj01_1.tar").unlink()
    (me1_copy / "train" / "train_subj01_1.tar").rename(me1_copy / "train" / "train_subj01_0.tar")
    message = assert_fails_cleanly(import_mindeye1, me1_copy, tmp_path / "out", "shard is missing or incomplete")
    assert "metadata_subj01.json" in message and "test" in message


def test_me1_sample_without_image_or_with_wrong_shape(me1_copy, tmp_path):
    shard = me1_copy / "val" / "val_subj01_0.tar"
    original = shard.read_bytes()
    rewrite_tar(shard, lambda name, data: None if name.endswith(".png") else data)
    message = assert_fails_cleanly(import_mindeye1, me1_copy, tmp_path / "out", "lacks member")
    assert str(shard) in message and "jpg/png" in message

    shard.write_bytes(original)
    wrong = npy_bytes(np.zeros((2, 12), np.float32))  # 2 repeats instead of 3
    rewrite_tar(shard, lambda name, data: wrong if name.endswith(".nsdgeneral.npy") else data)
    message = assert_fails_cleanly(import_mindeye1, me1_copy, tmp_path / "out", r"\(3, voxels\)")
    assert str(shard) in message and "(2, 12)" in message


def test_me1_subject_without_test_images(tmp_path):
    make_fake_mindeye1(tmp_path / "src", n_sessions=1, n_shared=0, n_voxels=4, image_size=4, seed=2)
    message = assert_fails_cleanly(import_mindeye1, tmp_path / "src", tmp_path / "out", "no test")
    assert "webdataset_avg_split" in message


def test_me1_num_uniques_disagreeing_with_the_rows(me1_copy, tmp_path):
    def claim_other_count(name, data):
        if not name.endswith(".num_uniques.npy"):
            return data
        count = int(np.load(io.BytesIO(data), allow_pickle=False)[0])
        return npy_bytes(np.asarray([1 if count != 1 else 2]))

    rewrite_tar(me1_copy / "test" / "test_subj01_0.tar", claim_other_count)
    message = assert_fails_cleanly(import_mindeye1, me1_copy, tmp_path / "out", "num_uniques.npy says")
    assert "test_subj01_0.tar" in message


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_import_commands_and_error_exit_code(me1_root, me2_root, tmp_path):
    from typer.testing import CliRunner

    from brainrecon.cli.nsd import app

    runner = CliRunner()
    result = runner.invoke(app, ["import-mindeye2", "--root", str(me2_root), "--subject", "1", "--out",
                                 str(tmp_path / "me2"), "--sessions", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "subj01" in result.output and "750 trials" in result.output
    assert len(open_store(tmp_path / "me2").subject("subj01").trials) == 750

    result = runner.invoke(app, ["import-mindeye1", "--root", str(me1_root), "--subject", "1", "--out",
                                 str(tmp_path / "me1"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "1500 trials" in result.output and open_store(tmp_path / "me1").subjects == ["subj01"]

    for command in ("import-mindeye1", "import-mindeye2"):
        result = runner.invoke(app, [command, "--root", str(tmp_path / "nowhere"), "--subject", "1", "--out",
                                     str(tmp_path / "bad")])
        assert result.exit_code == 2
        assert "nowhere" in result.output and "Traceback" not in result.output
        assert not (tmp_path / "bad").exists()
