"""Kamitani-lab BData (GOD) through the generic source interface."""

import h5py
import numpy as np
import pytest

from brainrecon.data import open_store
from brainrecon.data.bdata import image_name, import_bdata, make_fake_bdata
from brainrecon.io import partial_dir as partial_path
from brainrecon.errors import StoreError


@pytest.fixture()
def fake(tmp_path):
    make_fake_bdata(tmp_path / "Subject1.h5", tmp_path / "images")
    return tmp_path / "Subject1.h5", tmp_path / "images"


def test_import_fake_god_file(fake, tmp_path):
    h5, images = fake
    import_bdata(h5, images, tmp_path / "store", image_size=32, progress=False)
    store = open_store(tmp_path / "store", verify_checksums=True)
    data = store.subject("subj01")
    assert data.n_voxels == 40 and len(data.trials) == 24 + 6 * 3  # imagery left out
    test = data.test()
    assert len(test) == 6 and test.n_repeats.tolist() == [3] * 6
    train = data.train()
    np.testing.assert_allclose(train.betas.mean(0), 0, atol=1e-5)  # z-scored with training statistics
    np.testing.assert_allclose(train.betas.std(0), 1, atol=1e-4)
    with h5py.File(h5) as f:
        raw = f["dataset"][()]
    perception = raw[raw[:, 40] != 3]
    train_raw = perception[perception[:, 40] == 1][:, :40]
    first_test = perception[perception[:, 40] == 2][0]
    expected = (first_test[:40] - train_raw.mean(0)) / train_raw.std(0)
    row = int(np.flatnonzero(data.trials.is_test)[0])
    np.testing.assert_allclose(data.read_trials(np.array([row]))[0], expected, rtol=1e-4, atol=1e-5)
    assert data.trials.stimulus_id[row] == round(first_test[41] * 1e6)
    assert store.stimuli.source_id[store.stimuli.rows(np.array([data.trials.stimulus_id[row]]))[0]] == \
        image_name(first_test[41])
    assert store.images.shape[1:] == (32, 32, 3) and store.captions_for(test.stimulus_ids[:1]) == [[]]
    assert store.manifest["subjects"]["subj01"]["normalization"] == "voxel-zscore-train"
    v1 = tmp_path / "v1"
    import_bdata(h5, images, v1, roi="ROI_V1", image_size=32, progress=False)
    assert open_store(v1).subject("subj01").n_voxels == 20


def test_bad_bdata_inputs_give_clear_errors(fake, tmp_path):
    h5, images = fake
    out = tmp_path / "store"
    next(images.glob("*.JPEG")).unlink()
    with pytest.raises(StoreError, match="no image named n.* in .*images"):
        import_bdata(h5, images, out, progress=False)
    make_fake_bdata(h5, images)
    with pytest.raises(StoreError, match="no metadata key 'ROI_FFA'"):
        import_bdata(h5, images, out, roi="ROI_FFA", progress=False)
    with h5py.File(h5, "a") as f:
        data = f["dataset"][()]
        data[data[:, 40] == 2, 40] = 3  # column 40 is DataType: turn test perception into imagery
        f["dataset"][...] = data
    with pytest.raises(StoreError, match="no test-perception samples"):
        import_bdata(h5, images, out, progress=False)
    with pytest.raises(StoreError, match="not a readable BData file"):
        import_bdata(images / "..", images, out, progress=False)
    assert not out.exists() and not partial_path(out).exists()


def test_import_bdata_command(fake, tmp_path):
    from typer.testing import CliRunner

    from brainrecon.cli import app

    h5, images = fake
    result = CliRunner().invoke(app, ["store", "import-bdata", "--file", str(h5), "--images", str(images),
                                      "--out", str(tmp_path / "s"), "--image-size", "32", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "subj01: 42 trials" in result.output and "40 voxels" in result.output
