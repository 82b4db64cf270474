"""Schema-exact fakes of MindEye1's and MindEye2's published NSD files, for tests.

Same file names, folder layout, dataset keys, dtypes, axis orders, tar member
naming (webdataset ``<key>.<suffix>``) and the 17 behaviour columns as the real
files released with MindEye1 (Scotti et al., NeurIPS 2023) and MindEye2 (Scotti
et al., ICML 2024); only the sizes shrink (few sessions, few voxels, few small
images, a 73k index space of a few hundred).

Both fakes are cut from one seeded fake experiment (:func:`fake_experiment`):
750 trials per session, every image of a pool shown up to 3 times, the first
``750 * n_sessions`` presentations kept, so some images are seen only once or
twice (as in the real data for subjects with fewer sessions).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from brainrecon.data.nsd_files import TRIALS_PER_SESSION

REPEATS = 3
BEHAV_COLUMNS = 17
RUN_TRIALS = [63, 62] * 6  # 12 runs per session, 750 stimulus trials
CONTEXT_ROWS = {"past_behav": 15, "future_behav": 15, "olds_behav": 3}  # unused by readers, present in files


@dataclass
class FakeExperiment:
    """Ground truth shared by both fakes (tests compare the imported store with it)."""

    subject: int
    n_sessions: int
    image_ids: np.ndarray  # (n_trials,) 0-based 73k index shown at each global trial
    shared: np.ndarray  # (n_images,) bool: the fake "shared1000" images
    betas: np.ndarray  # (n_trials, n_voxels) float32, row = global trial
    images: np.ndarray  # (n_images, H, W, 3) uint8 (the MindEye2 fake stores them as float16 / 255)

    @property
    def is_test(self) -> np.ndarray:
        return self.shared[self.image_ids]


def fake_experiment(subject: int = 1, n_sessions: int = 2, n_voxels: int = 12, n_images: int | None = None,
                    n_shared: int = 30, image_size: int = 8, seed: int = 0) -> FakeExperiment:
    """A seeded fake subject: which 73k image each global trial showed, its betas and the images."""
    rng = np.random.default_rng(seed)
    n_trials = TRIALS_PER_SESSION * n_sessions
    pool_size = n_trials * 2 // REPEATS  # 3 showings each for 2x the images needed: some get fewer
    n_images = n_images or pool_size + n_shared + 20  # some images in the files are never shown
    shared = np.zeros(n_images, dtype=bool)
    shared[rng.choice(n_images, n_shared, replace=False)] = True
    pool = np.concatenate([rng.choice(np.flatnonzero(shared), n_shared * 4 // 5, replace=False),
                           rng.choice(np.flatnonzero(~shared), pool_size - n_shared * 4 // 5, replace=False)])
    image_ids = rng.permutation(np.repeat(pool, REPEATS))[:n_trials]
    betas = rng.normal(size=(n_trials, n_voxels)).astype(np.float32)
    images = rng.integers(0, 256, (n_images, image_size, image_size, 3), dtype=np.uint8)
    return FakeExperiment(subject, n_sessions, image_ids, shared, betas, images)


# ---------------------------------------------------------------------------------------------
# Tar shards (webdataset layout: members "<key>.<suffix>", one sample's members contiguous)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """A plain POSIX tar with fixed metadata, so the same samples give the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))


def sample_key(index: int) -> str:
    return f"sample{index:09d}"


# ---------------------------------------------------------------------------------------------
# MindEye2: betas_all_subjXX_fp32_renorm.hdf5, coco_images_224_float16.hdf5, wds/subjXX/...


def behav_row(exp: FakeExperiment, trial: int) -> np.ndarray:
    """The 17 behaviour columns of one global trial (MindEye2's released behaviour table); -1 stands for NaN."""
    session, in_session = divmod(trial, TRIALS_PER_SESSION)
    run_starts = np.cumsum([0] + RUN_TRIALS)
    run = int(np.searchsorted(run_starts, in_session, side="right"))  # 1-based
    image = int(exp.image_ids[trial])
    earlier = int(np.sum(exp.image_ids[:trial] == image))
    row = np.full(BEHAV_COLUMNS, -1.0)
    row[:6] = [image, exp.subject, session + 1, run, in_session - run_starts[run - 1] + 1, trial]
    row[6] = 4.0 * in_session  # time (s)
    row[7] = row[11] = float(earlier > 0)  # isold, isoldcurrent
    row[8] = row[12] = 1.0  # iscorrect, iscorrectcurrent
    row[9] = 800.0 + trial % 97  # rt (ms)
    row[10] = 0.0  # changemind
    row[13], row[14] = earlier, earlier  # total1, total2
    row[15] = 1.0 + float(earlier > 0)  # button
    row[16] = float(exp.shared[image])
    return row


def _behav_sample(exp: FakeExperiment, trial: int) -> dict[str, bytes]:
    members = {"behav.npy": npy_bytes(behav_row(exp, trial)[None, :])}
    for name, rows in CONTEXT_ROWS.items():  # context matrices: real shape and dtype, -1 (absent) filler
        members[f"{name}.npy"] = npy_bytes(np.full((rows, BEHAV_COLUMNS), -1.0))
    return members


def make_fake_mindeye2(root: str | Path, exp: FakeExperiment | None = None, **experiment) -> FakeExperiment:
    """Write MindEye2's published files for one fake subject under ``root``.

    ``root/betas_all_subj0S_fp32_renorm.hdf5`` ('betas' (750 n_sessions, V) float32, row = global trial),
    ``root/coco_images_224_float16.hdf5`` ('images' (n_images, 3, H, W) float16 in [0, 1]),
    ``root/shared1000.npy`` (bool over the 73k index space) and
    ``root/wds/subj0S/{train/<session-1>.tar, new_test/0.tar, test/0.tar}`` with ``behav.npy`` (1 x 17),
    ``past_behav.npy``, ``future_behav.npy`` (15 x 17) and ``olds_behav.npy`` (3 x 17) per sample.
    """
    root = Path(root)
    exp = exp or fake_experiment(**experiment)
    name = f"subj{exp.subject:02d}"
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / f"betas_all_{name}_fp32_renorm.hdf5", "w") as f:
        f.create_dataset("betas", data=exp.betas)
    with h5py.File(root / "coco_images_224_float16.hdf5", "w") as f:
        f.create_dataset("images", data=(exp.images.transpose(0, 3, 1, 2) / 255.0).astype(np.float16))
    np.save(root / "shared1000.npy", exp.shared, allow_pickle=False)

    wds = root / "wds" / name
    session_of = np.arange(len(exp.image_ids)) // TRIALS_PER_SESSION
    for session in range(exp.n_sessions):
        trials = np.flatnonzero((session_of == session) & ~exp.is_test)
        write_tar(wds / "train" / f"{session}.tar",
                  [(sample_key(int(t)), _behav_sample(exp, int(t))) for t in trials])
    test_trials = np.flatnonzero(exp.is_test)
    write_tar(wds / "new_test" / "0.tar", [(sample_key(int(t)), _behav_sample(exp, int(t))) for t in test_trials])
    older = test_trials[session_of[test_trials] < exp.n_sessions - 1]  # the older, smaller test set (unused)
    write_tar(wds / "test" / "0.tar", [(sample_key(int(t)), _behav_sample(exp, int(t))) for t in older])
    return exp


# ---------------------------------------------------------------------------------------------
# MindEye1: webdataset_avg_split/{train,val,test}/<split>_subj0S_<i>.tar + metadata_subj0S.json


def _fill_missing_repeats(rows: np.ndarray, trials: np.ndarray, fill: str) -> tuple[np.ndarray, np.ndarray]:
    """Pad 1-2 real repeats to 3 rows: by repeating the real ones in turn, or with NaN / zero rows."""
    n_real = len(rows)
    if fill == "duplicate":
        pick = np.arange(REPEATS) % n_real
        return rows[pick], trials[pick]
    filler = np.full((REPEATS - n_real, rows.shape[1]), np.nan if fill == "nan" else 0.0, dtype=rows.dtype)
    return np.concatenate([rows, filler]), np.concatenate([trials, np.full(REPEATS - n_real, -1)])


def _encode_image(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format={"png": "PNG", "jpg": "JPEG"}[fmt])
    return buffer.getvalue()


def _me1_sample(exp: FakeExperiment, image: int, fill: str, image_format: str,
                trial_format: str) -> dict[str, bytes]:
    trials = np.flatnonzero(exp.image_ids == image)  # chronological
    voxels, trial_numbers = _fill_missing_repeats(exp.betas[trials], trials, fill)
    trial = trial_numbers.astype(np.int64) if trial_format == "per_repeat" else np.asarray([trials[0]])
    return {"nsdgeneral.npy": npy_bytes(voxels.astype(np.float32)),
            "coco73k.npy": npy_bytes(np.asarray([image], dtype=np.int64)),
            "trial.npy": npy_bytes(trial),
            "num_uniques.npy": npy_bytes(np.asarray([len(trials)], dtype=np.int64)),
            image_format: _encode_image(exp.images[image], image_format)}


def _shards(samples: list, n_shards: int) -> list[list]:
    return [list(part) for part in np.array_split(np.arange(len(samples)), n_shards)] if samples else [[]]


def make_fake_mindeye1(root: str | Path, exp: FakeExperiment | None = None, *, n_train_shards: int = 2,
                       n_test_shards: int = 2, val_fraction: float = 0.1, fill: str = "duplicate",
                       image_format: str = "png", trial_format: str = "per_repeat",
                       **experiment) -> FakeExperiment:
    """Write MindEye1's ``webdataset_avg_split/`` for one fake subject under ``root``.

    One sample per image the subject saw: ``nsdgeneral.npy`` (3, V) float32 with its repeats in time
    order, missing repeats padded per ``fill`` ("duplicate", "nan" or "zeros"); ``coco73k.npy`` (1,);
    ``trial.npy`` (3,) global trials (-1 for NaN/zero padding) or, with ``trial_format="first"``, only
    the first presentation's; ``num_uniques.npy`` (1,) the number of real repeats; the image as
    ``png`` or ``jpg``. Shared images go to test, the rest to train/val at random, samples shuffled.
    """
    root = Path(root) / "webdataset_avg_split"
    exp = exp or fake_experiment(**experiment)
    rng = np.random.default_rng(exp.betas.shape[0] + exp.subject)
    name = f"subj{exp.subject:02d}"
    seen = np.unique(exp.image_ids)
    test = rng.permutation(seen[exp.shared[seen]])
    rest = rng.permutation(seen[~exp.shared[seen]])
    n_val = round(len(rest) * val_fraction)
    splits = {"train": (rest[n_val:], n_train_shards), "val": (rest[:n_val], 1), "test": (test, n_test_shards)}
    counter = 0
    for split, (images, n_shards) in splits.items():
        for shard, part in enumerate(_shards(list(images), n_shards)):
            samples = []
            for i in part:
                samples.append((sample_key(counter), _me1_sample(exp, int(images[i]), fill, image_format,
                                                                 trial_format)))
                counter += 1
            write_tar(root / split / f"{split}_{name}_{shard}.tar", samples)
    totals = {split: len(images) for split, (images, _) in splits.items()}
    (root / f"metadata_{name}.json").write_text(json.dumps({"totals": totals}))
    return exp
