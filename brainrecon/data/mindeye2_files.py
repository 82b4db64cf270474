"""Import MindEye2's released, preprocessed NSD files (``pscotti/mindeyev2``) into a brainrecon store.

MindEye2 (Scotti et al., ICML 2024), §3 and Appendix A.2: GLMsingle single-trial betas of the
"nsdgeneral" voxels, sessions taken in chronological order, test = the shared-1000 images.
:func:`import_mindeye2` reads ``betas_all_subjAA_fp32_renorm.hdf5``, ``coco_images_224_float16.hdf5``
and the behaviour tars under ``wds/subjAA/``; the file layout is described in docs/nsd.md,
"MindEye published files". Shared conventions and helpers are in :mod:`brainrecon.data.mindeye_common`.

Everything is checked before the store writer opens; the writer builds ``OUT.partial`` and publishes
``OUT`` only when complete, so a failure leaves nothing.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from brainrecon.data.mindeye_common import (
    NORMALIZATION,
    ROI,
    MindEyeSummary,
    MomentAccumulator,
    _check_split,
    _input_records,
    _integer_values,
    _npy,
    _split_summary,
    _subject_name,
    iter_tar_samples,
)
from brainrecon.data.nsd_files import TRIALS_PER_SESSION, open_hdf5
from brainrecon.data.tables import StimulusTable, TrialTable, VoxelTable, repeat_index
from brainrecon.data.writer import StoreWriter
from brainrecon.errors import StoreError

READ_BLOCK_BYTES = 64 << 20  # upper bound on one read from an HDF5 file
ME2_FIX = "Download it again from the Hugging Face dataset pscotti/mindeyev2 (see docs/nsd.md)."

# MindEye2 behaviour columns (MindEyeV2 repository README; docs/nsd.md); -1 stands for NaN.
BEHAV_COLUMNS = 17
COL_IMAGE, COL_SUBJECT, COL_SESSION, COL_GLOBAL_TRIAL, COL_SHARED = 0, 1, 2, 5, 16


@dataclass(frozen=True)
class MindEye2Paths:
    """File locations inside a local copy of the pscotti/mindeyev2 dataset."""

    root: Path
    subject: int

    @property
    def name(self) -> str:
        return f"subj{self.subject:02d}"

    @property
    def betas(self) -> Path:
        return self.root / f"betas_all_{self.name}_fp32_renorm.hdf5"

    @property
    def images(self) -> Path:
        return self.root / "coco_images_224_float16.hdf5"

    @property
    def shared1000(self) -> Path:
        return self.root / "shared1000.npy"

    def train_tar(self, index: int) -> Path:  # one tar per session, index = session - 1
        return self.root / "wds" / self.name / "train" / f"{index}.tar"

    @property
    def test_tar(self) -> Path:  # all shared1000 trials (the "new_test" set; wds/.../test/ is the older one)
        return self.root / "wds" / self.name / "new_test" / "0.tar"

    def n_train_tars(self) -> int:
        n = 0
        while self.train_tar(n).is_file():
            n += 1
        return n


@dataclass
class BehavTrials:
    """The behaviour rows a subject's tars hold, in global-trial order."""

    image_ids: np.ndarray  # column 0: 0-based 73k index
    global_trials: np.ndarray  # column 5: row of the betas file
    sessions: np.ndarray  # 1-based, = global trial // 750 + 1
    is_test: np.ndarray  # from the tar the row came from (new_test = shared1000)
    sources: list[str]  # tar of each row (for error messages)


def read_behav_tar(path: Path, subject: int, is_test: bool) -> np.ndarray:
    """Columns 0, 1, 2, 5, 16 (image, subject, session, global trial, shared) of one tar's ``behav`` rows.

    Each row is checked against the column meanings (see :func:`import_mindeye2`), which catches tars of
    another subject or release and shared/non-shared trials in the wrong tar.
    """
    rows = []
    for key, members in iter_tar_samples(path, {"behav.npy"}, ME2_FIX):
        where = f"{path} sample {key!r}"
        if "behav.npy" not in members:
            raise StoreError(f"{where} has no behav.npy member; is this a MindEye2 wds tar? {ME2_FIX}")
        behav = _npy(members["behav.npy"], f"{where} behav.npy", ME2_FIX)
        if behav.shape not in ((1, BEHAV_COLUMNS), (BEHAV_COLUMNS,)):
            raise StoreError(f"{where}: behav.npy has shape {behav.shape}; MindEye2 behaviour rows are "
                             f"(1, {BEHAV_COLUMNS}). {ME2_FIX}")
        rows.append(behav.reshape(BEHAV_COLUMNS))
    if not rows:
        return np.zeros((0, 5), dtype=np.int64)
    table = np.stack(rows)
    used = _integer_values(table[:, [COL_IMAGE, COL_SUBJECT, COL_SESSION, COL_GLOBAL_TRIAL, COL_SHARED]],
                           f"{path}: behaviour columns 0, 1, 2, 5 and 16", ME2_FIX)
    image, subj, session, trial, shared = used.T
    if (image < 0).any() or (trial < 0).any():
        raise StoreError(f"{path}: a behaviour row has no image (column 0) or no global trial (column 5) "
                         f"(-1 = NaN). {ME2_FIX}")
    if np.any(subj != subject):
        raise StoreError(f"{path} holds behaviour of subject {subj[subj != subject][0]} (column 1), not subject "
                         f"{subject}; the files are mixed up. {ME2_FIX}")
    if np.any(session != trial // TRIALS_PER_SESSION + 1):
        bad = np.flatnonzero(session != trial // TRIALS_PER_SESSION + 1)[0]
        raise StoreError(f"{path}: global trial {trial[bad]} (column 5) is not in session {session[bad]} "
                         f"(column 2); global trial = (session - 1) * 750 + trial in session. {ME2_FIX}")
    if np.any(shared != int(is_test)):
        raise StoreError(f"{path}: column 16 (is_shared1000) is {1 - int(is_test)} for some rows, but this tar "
                         f"holds only {'shared1000' if is_test else 'non-shared1000'} trials. {ME2_FIX}")
    return used


def read_behaviour(paths: MindEye2Paths, n_sessions: int) -> BehavTrials:
    """Training trials of sessions 1..n from train/{0..n-1}.tar plus the test trials of those sessions."""
    parts, sources, flags = [], [], []
    for index in range(n_sessions):
        path = paths.train_tar(index)
        parts.append(read_behav_tar(path, paths.subject, is_test=False))
        sources.append(str(path))
        flags.append(False)
    test = read_behav_tar(paths.test_tar, paths.subject, is_test=True)
    parts.append(test[test[:, 2] <= n_sessions])  # new_test covers every session; keep the chosen ones
    sources.append(str(paths.test_tar))
    flags.append(True)
    used = np.concatenate(parts)
    origin = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)]).astype(np.int64)
    is_test = np.asarray(flags)[origin] if len(origin) else np.zeros(0, dtype=bool)
    if np.any(used[:, 2] > n_sessions):
        bad = np.flatnonzero(used[:, 2] > n_sessions)[0]
        raise StoreError(f"{sources[origin[bad]]} holds a trial of session {used[bad, 2]}, but the training tars "
                         f"train/0.tar .. train/{n_sessions - 1}.tar should hold sessions 1..{n_sessions}. "
                         f"{ME2_FIX}")
    order = np.argsort(used[:, 3], kind="stable")
    used, origin, is_test = used[order], origin[order], is_test[order]
    repeated = np.flatnonzero(np.diff(used[:, 3]) == 0)
    if repeated.size:
        t = repeated[0]
        raise StoreError(f"global trial {used[t, 3]} appears twice (in {sources[origin[t]]} and "
                         f"{sources[origin[t + 1]]}); each trial must be listed once. {ME2_FIX}")
    return BehavTrials(image_ids=used[:, 0], global_trials=used[:, 3], sessions=used[:, 2], is_test=is_test,
                       sources=[sources[i] for i in origin.tolist()])


def _check_shared1000(paths: MindEye2Paths, behav: BehavTrials) -> bool:
    """Cross-check the tars' split with shared1000.npy when it is present; True if it was used."""
    if not paths.shared1000.is_file():
        return False
    shared = _npy(paths.shared1000.read_bytes(), str(paths.shared1000), ME2_FIX)
    if shared.ndim != 1 or not (shared.dtype == np.bool_ or np.isin(shared, (0, 1)).all()):
        raise StoreError(f"{paths.shared1000} must be a 1-D bool (or 0/1) array over the 73k images, got "
                         f"{shared.dtype} {shared.shape}. {ME2_FIX}")
    shared = shared.astype(bool)
    inside = behav.image_ids < len(shared)
    flagged = np.zeros(len(behav.image_ids), dtype=bool)
    flagged[inside] = shared[behav.image_ids[inside]]
    if np.any(flagged != behav.is_test):
        bad = np.flatnonzero(flagged != behav.is_test)[0]
        raise StoreError(f"{paths.shared1000} and {behav.sources[bad]} disagree on whether 73k image "
                         f"{behav.image_ids[bad]} is a shared1000 (test) image. {ME2_FIX}")
    return True


def _hdf5_dataset_shape(path: Path, key: str, what: str, ndim: int, layout: str) -> tuple[tuple, np.dtype]:
    with open_hdf5(path, what) as f:
        if key not in f or not isinstance(f[key], h5py.Dataset):
            raise StoreError(f"{path} has no dataset {key!r} (it has {sorted(f.keys())}); is it {what}? {ME2_FIX}")
        ds = f[key]
        if ds.ndim != ndim or not np.issubdtype(ds.dtype, np.floating):
            raise StoreError(f"{path}: {key!r} must be a {ndim}-D float array {layout}, got {ds.dtype} "
                             f"{ds.shape}. {ME2_FIX}")
        return ds.shape, ds.dtype


def float_images_to_uint8(block: np.ndarray) -> np.ndarray:
    """(n, 3, H, W) floats in [0, 1] -> (n, H, W, 3) uint8, rounding to the nearest level."""
    scaled = np.clip(np.asarray(block, dtype=np.float32), 0.0, 1.0) * 255.0
    return np.rint(scaled).astype(np.uint8).transpose(0, 2, 3, 1)


def _copy_images_me2(path: Path, ids: np.ndarray, images: np.ndarray, progress: bool) -> None:
    """Images of the sorted unique ``ids`` (h5py needs increasing indices), block by block."""
    per_image = int(np.prod(images.shape[1:])) * 4
    block = max(1, READ_BLOCK_BYTES // per_image)
    with open_hdf5(path, "MindEye2's image file") as f:
        ds = f["images"]
        for start in tqdm(range(0, len(ids), block), desc="images", unit="block", file=sys.stderr,
                          disable=not progress):
            chunk = ds[ids[start:start + block]]
            finite = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
            if not finite.all():
                raise StoreError(f"{path}: the image of 73k index {ids[start + np.flatnonzero(~finite)[0]]} holds "
                                 f"NaN/Inf values, so it is missing. {ME2_FIX}")
            images[start:start + len(chunk)] = float_images_to_uint8(chunk)


def _copy_betas_rows(path: Path, rows: np.ndarray, target: np.ndarray, behav: BehavTrials,
                     moments: MomentAccumulator, progress: bool) -> None:
    """target[i] = betas[rows[i]] for increasing ``rows``, reading contiguous row spans of bounded size."""
    with open_hdf5(path, "MindEye2's betas file") as f:
        ds = f["betas"]
        span_rows = max(1, READ_BLOCK_BYTES // (ds.shape[1] * 4))
        bar = tqdm(total=len(rows), desc="betas", unit="trial", file=sys.stderr, disable=not progress)
        with bar:
            start = 0
            while start < len(rows):
                stop = int(np.searchsorted(rows, rows[start] + span_rows, side="left"))
                span = ds[rows[start]:rows[stop - 1] + 1]
                block = np.asarray(span[rows[start:stop] - rows[start]], dtype=np.float32)
                target[start:stop] = block
                moments.add(block, behav.sessions[start:stop], behav.is_test[start:stop])
                bar.update(stop - start)
                start = stop


def import_mindeye2(root: str | Path, subject: int, out: str | Path, *, sessions: int | None = None,
                    overwrite: bool = False, progress: bool = True) -> MindEyeSummary:
    """Import one subject from a local copy of MindEye2's ``pscotti/mindeyev2`` files.

    Reads (layout: docs/nsd.md, "MindEye published files"):

    * ``wds/subjAA/train/{0..n-1}.tar`` (one per session, non-shared1000 trials) and
      ``wds/subjAA/new_test/0.tar`` (all shared1000 trials); of each sample only ``behav.npy``
      (1 x 17): column 0 = 73k index, 1 = subject, 2 = session, 5 = global trial
      = (session - 1) * 750 + trial in session, 16 = is_shared1000. Trials from ``new_test`` are
      the test split (cross-checked with column 16 and, when present, ``shared1000.npy``).
      ``sessions`` keeps sessions 1..N (default: every ``train/*.tar`` present).
    * ``betas_all_subjAA_fp32_renorm.hdf5``: ``'betas'`` (750 * n_sessions, V), row = global trial.
    * ``coco_images_224_float16.hdf5``: ``'images'`` (73000, 3, 224, 224) float16 in [0, 1]; the
      images used are stored as uint8 (n, 224, 224, 3) = round(clip(x, 0, 1) * 255).

    Writes trials in global-trial order (session = global trial // 750 + 1, repeat = earlier
    presentations among the imported trials), the betas rows gathered by global trial, and a stimulus
    table of the images used, sorted by 73k index.

    Normalisation: ``session-zscore-all``. The ``_fp32_renorm`` betas were normalised by MindEye2's
    own pipeline; the paper says with training-set statistics (MindEye2, Appendix A.2), but the
    public notebook z-scores each session over all its trials and does not reproduce the released
    file (MindEyeV2 GitHub issue #35). As the exclusion of the test trials cannot be verified, the
    store records the cautious value (the reader uses the betas as stored; evaluation flags the
    possible leak). Per-session moments of the imported betas are recorded as ``betas_moments`` for
    anyone who wants to judge for themselves.
    """
    root = Path(root)
    name = _subject_name(subject)
    if not root.is_dir():
        raise StoreError(f"MindEye2 root {root} is not a folder; pass --root the folder holding "
                         f"betas_all_{name}_fp32_renorm.hdf5, coco_images_224_float16.hdf5 and wds/.")
    plan = plan_mindeye2(MindEye2Paths(root, int(subject)), sessions)
    behav = plan.behav
    trials = TrialTable(stimulus_id=behav.image_ids, session=behav.sessions, repeat=repeat_index(behav.image_ids),
                        split=np.where(behav.is_test, "test", "train"))
    table = StimulusTable(stimulus_id=plan.stimulus_ids, captions=[[] for _ in plan.stimulus_ids],
                          source_id=[str(i) for i in plan.stimulus_ids.tolist()])
    source = _mindeye2_source(plan)
    summary = {"mindeye_subject": int(subject), "sessions": plan.n_sessions,
               **_split_summary(behav.image_ids, behav.is_test)}

    with StoreWriter(out, source, overwrite=overwrite) as writer:
        images = writer.write_stimuli(table, image_shape=(plan.image_shape[2], plan.image_shape[3], 3))
        _copy_images_me2(plan.paths.images, plan.stimulus_ids, images, progress)
        moments = MomentAccumulator(plan.n_voxels)
        voxels = VoxelTable.unknown(plan.n_voxels, np.full(plan.n_voxels, ROI))
        betas = writer.add_subject(name, trials, voxels, normalization=NORMALIZATION, extra_info=summary)
        _copy_betas_rows(plan.paths.betas, behav.global_trials, betas, behav, moments, progress)
        source["betas_moments"] = moments.summary()  # the writer reads `source` when it closes
        source["inputs"] = _input_records(plan.inputs, root, progress)
    return MindEyeSummary(out=Path(out), subject=name, sessions=plan.n_sessions, n_stimuli=len(table),
                          n_voxels=plan.n_voxels, info=summary)


@dataclass
class Me2Plan:
    """Everything an import needs, read and checked before anything is written."""

    paths: MindEye2Paths
    n_sessions: int
    behav: BehavTrials
    n_voxels: int
    image_shape: tuple  # (n_images, 3, H, W) of the image file
    stimulus_ids: np.ndarray  # sorted unique 73k indices used
    inputs: list[Path]


def plan_mindeye2(paths: MindEye2Paths, sessions: int | None) -> Me2Plan:
    """Read the behaviour tars and the HDF5 headers; check that they fit together."""
    available = paths.n_train_tars()
    if available == 0:
        raise StoreError(f"{paths.train_tar(0)} is missing: no behaviour tars for {paths.name}. {ME2_FIX}")
    if sessions is not None and not 1 <= sessions <= available:
        raise StoreError(f"--sessions {sessions} is not possible: {paths.train_tar(0).parent} holds tars for "
                         f"sessions 1..{available} (0.tar .. {available - 1}.tar); use 1..{available}.")
    n_sessions = sessions or available
    behav = read_behaviour(paths, n_sessions)
    shared_list = [paths.shared1000] if _check_shared1000(paths, behav) else []
    _check_split(behav.image_ids, behav.is_test, f"{paths.train_tar(0).parent.parent} (sessions 1..{n_sessions})",
                 "Use a subject with shared1000 trials, more sessions (--sessions), or check wds/.")

    (n_rows, n_voxels), _ = _hdf5_dataset_shape(paths.betas, "betas", "MindEye2's betas file", 2,
                                                "(global trials, voxels)")
    past = np.flatnonzero(behav.global_trials >= n_rows)
    if past.size:
        raise StoreError(f"{behav.sources[past[0]]}: global trial {behav.global_trials[past[0]]} (column 5) points "
                         f"past the {n_rows} rows of {paths.betas}; the behaviour and betas files do not belong "
                         f"together. {ME2_FIX}")
    image_shape, _ = _hdf5_dataset_shape(paths.images, "images", "MindEye2's image file", 4,
                                         "(73000, 3, H, W)")
    if image_shape[1] != 3:
        raise StoreError(f"{paths.images}: 'images' must be (n, 3, H, W) (channels first), got {image_shape}. "
                         f"{ME2_FIX}")
    stimulus_ids = np.unique(behav.image_ids)
    if stimulus_ids[-1] >= image_shape[0]:
        missing = stimulus_ids[stimulus_ids >= image_shape[0]]
        raise StoreError(f"{paths.images} holds {image_shape[0]} images, so the image of 73k index {missing[0]} "
                         f"({missing.size} index(es) in all) used by the behaviour tars is missing. {ME2_FIX}")

    tars = [paths.train_tar(i) for i in range(n_sessions)] + [paths.test_tar]
    return Me2Plan(paths, n_sessions, behav, n_voxels, tuple(image_shape), stimulus_ids,
                   inputs=[paths.betas, paths.images, *tars, *shared_list])


def _mindeye2_source(plan: Me2Plan) -> dict:
    """The manifest's record of what was read and how it was interpreted (checksums are added later)."""
    return {"kind": "mindeye2", "root": str(plan.paths.root.resolve()), "brainrecon_function": "import_mindeye2",
            "options": {"subject": plan.paths.subject, "sessions": plan.n_sessions},
            "conventions": {
                "stimulus_id": "NSD 73k index, 0-based (behav column 0)",
                "trial_order": "global trial (behav column 5) = betas row",
                "session": "global trial // 750 + 1",
                "repeat": "0-based count of earlier presentations among the imported trials",
                "split": "test = trials of wds/subjAA/new_test/0.tar (shared1000), train = train/*.tar",
                "images": "round(clip(float16, 0, 1) * 255) as uint8, NCHW -> NHWC",
                "normalization": "session-zscore-all: MindEye2's released normalisation, used as stored; "
                                 "exclusion of test trials from its statistics is unverifiable (ME2#35)"}}

