"""Import MindEye1's and MindEye2's published, preprocessed NSD files into a brainrecon store.

Both readers follow the file formats of the reference mindeye.md §7 and the
store conventions of :mod:`brainrecon.data.nsd` (docs/nsd.md, "MindEye published
files"): ``stimulus_id`` = the 0-based NSD 73k index (``source_id`` its string),
subject ``subjAA``, split "test" = the shared-1000 images, captions empty (the
files hold none), one trial-table row per single-trial beta vector.

* :func:`import_mindeye2` reads ``betas_all_subjAA_fp32_renorm.hdf5``,
  ``coco_images_224_float16.hdf5`` and the behaviour tars under ``wds/subjAA/``.
* :func:`import_mindeye1` reads the tar shards of ``webdataset_avg_split/``.

Normalisation is recorded as ``session-zscore-all`` for both (see each function's
docstring): the betas are already normalised by MindEye's own pipelines, so the
store reader uses them as stored, and because the statistics behind them cannot be
shown to exclude the test trials, evaluation flags the possible leak instead of the
store claiming a train-only normalisation nobody can verify.

Everything is checked before the store writer opens; the writer builds
``OUT.partial`` and publishes ``OUT`` only when complete, so a failure leaves nothing.
"""

from __future__ import annotations

import io
import json
import re
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from brainrecon.data.nsd_files import TRIALS_PER_SESSION, open_hdf5, require_file
from brainrecon.data.tables import StimulusTable, TrialTable, VoxelTable, repeat_index
from brainrecon.data.writer import StoreWriter
from brainrecon.errors import StoreError
from brainrecon.io import sha256_file

NORMALIZATION = "session-zscore-all"
READ_BLOCK_BYTES = 64 << 20  # upper bound on one read from an HDF5 file
ROI = "nsdgeneral"
ME2_FIX = "Download it again from the Hugging Face dataset pscotti/mindeyev2 (see docs/nsd.md)."
ME1_FIX = "Download it again from the Hugging Face dataset pscotti/naturalscenesdataset (see docs/nsd.md)."

# MindEye2 behaviour columns (mindeye.md §7.2); -1 stands for NaN.
BEHAV_COLUMNS = 17
COL_IMAGE, COL_SUBJECT, COL_SESSION, COL_GLOBAL_TRIAL, COL_SHARED = 0, 1, 2, 5, 16


@dataclass
class MindEyeSummary:
    """What an import wrote (the CLI prints it)."""

    out: Path
    subject: str
    sessions: int | None  # None when the files do not say (MindEye1 without per-repeat trial numbers)
    n_stimuli: int
    n_voxels: int
    info: dict = field(default_factory=dict)  # train/test trials and images, as in the manifest


def _subject_name(subject: int) -> str:
    if not isinstance(subject, (int, np.integer)) or not 1 <= subject <= 8:
        raise StoreError(f"subject must be an NSD subject number 1..8, got {subject!r}.")
    return f"subj{int(subject):02d}"


def _split_summary(image_ids: np.ndarray, is_test: np.ndarray) -> dict:
    return {"train_trials": int((~is_test).sum()), "test_trials": int(is_test.sum()),
            "train_images": int(np.unique(image_ids[~is_test]).size),
            "test_images": int(np.unique(image_ids[is_test]).size)}


def _check_split(image_ids: np.ndarray, is_test: np.ndarray, where: str, fix: str) -> None:
    if not is_test.any():
        raise StoreError(f"{where} hold no test (shared-1000) trials for this subject, so the store would have "
                         f"no test set. {fix}")
    if is_test.all():
        raise StoreError(f"{where} hold only test (shared-1000) trials, so there would be no training trials. "
                         f"{fix}")
    both = np.intersect1d(image_ids[is_test], image_ids[~is_test])
    if both.size:
        raise StoreError(f"{where}: {both.size} image(s) appear among both training and test trials (e.g. 73k "
                         f"index {both[:3].tolist()}); the split must be by image. The files are mixed up. {fix}")


def _input_records(paths: list[Path], base: Path, progress: bool) -> dict[str, dict]:
    """Relative path -> bytes and sha256 of every file read (recorded in the manifest's source)."""
    records = {}
    for path in tqdm(paths, desc="checksums", unit="file", file=sys.stderr, disable=not progress):
        records[path.relative_to(base).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return records


class MomentAccumulator:
    """Per-session voxel means and sds of the imported betas: evidence of how they were normalised.

    Recorded in the manifest (``betas_moments``) so a user can see whether each session is
    centred and scaled over all its trials or over its training trials only.
    """

    def __init__(self, n_voxels: int):
        self.n_voxels = n_voxels
        self.sums: dict[tuple[int, bool], np.ndarray] = {}

    def add(self, rows: np.ndarray, sessions: np.ndarray, is_test: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        for session in np.unique(sessions).tolist():
            for test in (False, True):
                hit = (sessions == session) & (is_test == test)
                if hit.any():
                    acc = self.sums.setdefault((session, test), np.zeros((3, self.n_voxels)))
                    acc += [np.full(self.n_voxels, hit.sum()), rows[hit].sum(0), (rows[hit] ** 2).sum(0)]

    def summary(self) -> dict:
        """Averaged over sessions: mean |voxel mean| and mean voxel sd, over all trials and over train trials."""
        out = {}
        for label, parts in (("all_trials", (False, True)), ("train_trials", (False,))):
            means, sds = [], []
            for session in sorted({s for s, _ in self.sums}):
                acc = np.zeros((3, self.n_voxels))
                for test in parts:
                    acc += self.sums.get((session, test), 0.0)
                if acc[0, 0] < 2:
                    continue
                mean = acc[1] / acc[0]
                means.append(np.abs(mean).mean())
                sds.append(np.sqrt(np.maximum(acc[2] / acc[0] - mean ** 2, 0)).mean())
            if means:
                out[label] = {"mean_abs_voxel_mean": round(float(np.mean(means)), 6),
                              "mean_voxel_sd": round(float(np.mean(sds)), 6)}
        return out


# ---------------------------------------------------------------------------------------------
# Tar shards (webdataset layout: plain POSIX tar, members "<dir>/<key>.<suffix>", samples contiguous)

_MEMBER = re.compile(r"^((?:.*/)?[^./][^/]*?)\.([^/]+)$")


def _split_member(name: str) -> tuple[str, str] | None:
    """webdataset's naming: key = path up to the first dot of the file name, suffix = the rest."""
    match = _MEMBER.match(name)
    return (match.group(1), match.group(2)) if match else None


def iter_tar_samples(path: Path, suffixes: set[str], fix: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) per sample in tar order, reading only the wanted members."""
    require_file(path, "a webdataset tar shard", fix)
    key, members, done = None, {}, set()
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                parts = _split_member(member.name) if member.isfile() else None
                if parts is None:
                    continue
                if parts[0] != key:
                    if key is not None:
                        yield key, members
                    if parts[0] in done:
                        raise StoreError(f"{path}: the members of sample {parts[0]!r} are not contiguous (or the "
                                         f"sample occurs twice); this is not a valid webdataset shard. {fix}")
                    done.add(parts[0])
                    key, members = parts[0], {}
                if parts[1] in suffixes:
                    members[parts[1]] = tar.extractfile(member).read()
            if key is not None:
                yield key, members
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise StoreError(f"{path} cannot be read as a tar file ({exc}); it is truncated or damaged. {fix}") from None


def _npy(data: bytes, where: str, fix: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise StoreError(f"{where} is not a readable .npy array ({exc}). {fix}") from None


def _integer_values(values: np.ndarray, where: str, fix: str) -> np.ndarray:
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)):
        raise StoreError(f"{where} must hold finite numbers, got {values.dtype} {values.ravel()[:5].tolist()}. {fix}")
    as_int = values.astype(np.int64)
    if not np.array_equal(as_int, values):
        raise StoreError(f"{where} must hold whole numbers, got {values.ravel()[:5].tolist()}. {fix}")
    return as_int


# =============================================================================================
# MindEye2


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

    Each row is checked against the column definitions (mindeye.md §7.2), which catches tars of
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

    Reads (mindeye.md §7.2):

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
    own pipeline; the paper says with training-set statistics, but the public notebook z-scores each
    session over all its trials and does not reproduce the released file (mindeye.md §7.2, ME2#35).
    As the exclusion of the test trials cannot be verified, the store records the cautious value
    (the reader uses the betas as stored; evaluation flags the possible leak). Per-session moments of
    the imported betas are recorded as ``betas_moments`` for anyone who wants to judge for themselves.
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


# =============================================================================================
# MindEye1

ME1_SPLITS = ("train", "val", "test")  # train + val are training data (MindEye1 trains on both)
ME1_ARRAYS = ("nsdgeneral.npy", "coco73k.npy", "trial.npy", "num_uniques.npy")
ME1_IMAGES = ("jpg", "png")


@dataclass(frozen=True)
class MindEye1Paths:
    """Shards of ``webdataset_avg_split/`` (root may be that folder or the folder holding it)."""

    root: Path
    subject: int

    @classmethod
    def locate(cls, root: Path, subject: int) -> MindEye1Paths:
        if (root / "webdataset_avg_split").is_dir():
            root = root / "webdataset_avg_split"
        return cls(root, subject)

    @property
    def name(self) -> str:
        return f"subj{self.subject:02d}"

    @property
    def metadata(self) -> Path:
        return self.root / f"metadata_{self.name}.json"

    def shard(self, split: str, index: int) -> Path:
        return self.root / split / f"{split}_{self.name}_{index}.tar"

    def shards(self, split: str) -> list[Path]:
        """Shards 0..k-1 of a split; a gap in the numbering (a missing shard) is an error."""
        pattern = re.compile(rf"^{split}_{self.name}_(\d+)\.tar$")
        folder = self.root / split
        found = sorted(int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else [])
                       if (m := pattern.match(p.name)))
        if not found:
            raise StoreError(f"{self.shard(split, 0)} is missing: no {split} shards for {self.name} in "
                             f"{folder}. {ME1_FIX}")
        missing = sorted(set(range(found[-1] + 1)) - set(found))
        if missing:
            raise StoreError(f"{self.shard(split, missing[0])} is missing ({split} shards "
                             f"{found[0]}..{found[-1]} are expected without gaps). {ME1_FIX}")
        return [self.shard(split, i) for i in found]


@dataclass
class Me1Sample:
    """What pass 1 learned about one webdataset sample."""

    shard: Path
    key: str
    split: str  # "train", "val" or "test"
    image_id: int
    real_rows: list[int]  # rows of nsdgeneral.npy that are genuine repeats, in stored order
    trials: np.ndarray | None  # global trial of each real row, if trial.npy gives one per repeat


def real_repeat_rows(voxels: np.ndarray, where: str) -> list[int]:
    """Rows of a (3, V) sample that are genuine repeats.

    The 3 rows always exist; a missing repeat is padding (mindeye.md §7.1 gives the count in
    ``num_uniques.npy`` but not the padding). A row is padding if it is all NaN, all zero, or an
    exact copy of an earlier row (MindEye's convention for fewer than 3 repeats is to repeat the
    available ones; two real single-trial betas are never bit-identical).
    """
    rows = []
    for r, row in enumerate(voxels):
        finite = np.isfinite(row)
        if not finite.any() or not np.any(row):
            continue
        if not finite.all():
            raise StoreError(f"{where}: repeat {r} of nsdgeneral.npy has {int((~finite).sum())} NaN/Inf values "
                             f"among real ones; a repeat must be all real or all padding. {ME1_FIX}")
        if any(np.array_equal(row, voxels[k]) for k in rows):
            continue
        rows.append(r)
    return rows


def _scalar(array: np.ndarray, where: str) -> int:
    if array.size != 1:
        raise StoreError(f"{where} must hold one number, got shape {array.shape}. {ME1_FIX}")
    return int(_integer_values(array.ravel(), where, ME1_FIX)[0])


def _per_repeat_trials(trial: np.ndarray, n_rows: int, real_rows: list[int]) -> np.ndarray | None:
    """Global trial numbers of the real repeats, if trial.npy holds one whole number >= 0 per row."""
    flat = trial.ravel()
    if flat.size != n_rows or not np.issubdtype(flat.dtype, np.number):
        return None
    picked = flat[real_rows]
    if not np.all(np.isfinite(picked)) or np.any(picked < 0) or np.any(picked != np.round(picked)):
        return None
    return picked.astype(np.int64)


def _scan_me1_sample(shard: Path, split: str, key: str, members: dict[str, bytes]) -> tuple[Me1Sample, tuple]:
    where = f"{shard} sample {key!r}"
    missing = [s for s in ME1_ARRAYS if s not in members]
    if not any(s in members for s in ME1_IMAGES):
        missing.append("jpg/png")
    if missing:
        raise StoreError(f"{where} lacks member(s) {', '.join(missing)}; is this a MindEye1 webdataset_avg_split "
                         f"shard? {ME1_FIX}")
    voxels = _npy(members["nsdgeneral.npy"], f"{where} nsdgeneral.npy", ME1_FIX)
    if voxels.ndim != 2 or voxels.shape[0] != 3 or not np.issubdtype(voxels.dtype, np.floating):
        raise StoreError(f"{where}: nsdgeneral.npy must be a float array (3, voxels) holding the 3 repeats, got "
                         f"{voxels.dtype} {voxels.shape}. {ME1_FIX}")
    image_id = _scalar(_npy(members["coco73k.npy"], f"{where} coco73k.npy", ME1_FIX), f"{where} coco73k.npy")
    if image_id < 0:
        raise StoreError(f"{where}: coco73k.npy holds {image_id}; 73k indices are 0-based and >= 0. {ME1_FIX}")
    n_uniques = _scalar(_npy(members["num_uniques.npy"], f"{where} num_uniques.npy", ME1_FIX),
                        f"{where} num_uniques.npy")
    real = real_repeat_rows(voxels, where)
    if len(real) != n_uniques:
        raise StoreError(f"{where}: num_uniques.npy says {n_uniques} repeat(s) but nsdgeneral.npy holds {len(real)} "
                         f"distinct non-padding row(s); the sample is inconsistent. {ME1_FIX}")
    trials = _per_repeat_trials(_npy(members["trial.npy"], f"{where} trial.npy", ME1_FIX), 3, real)
    image_format = next(s for s in ME1_IMAGES if s in members)
    size = _image_size(members[image_format], f"{where} {image_format}")
    return Me1Sample(shard, key, split, image_id, real, trials), (voxels.shape[1], size)


def _image_size(data: bytes, where: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size  # (W, H)
    except (UnidentifiedImageError, OSError) as exc:
        raise StoreError(f"{where} is not a readable image ({exc}). {ME1_FIX}") from None


def _decode_image(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise StoreError(f"{where} is not a readable image ({exc}). {ME1_FIX}") from None


def scan_mindeye1(paths: MindEye1Paths, progress: bool) -> tuple[list[Me1Sample], int, tuple[int, int]]:
    """Pass 1 over every shard: per-sample metadata, voxel count and image size, all checked."""
    samples, shapes, counts = [], set(), {}
    for split in ME1_SPLITS:
        shards = paths.shards(split)
        counts[split] = 0
        for shard in tqdm(shards, desc=f"scan {split}", unit="shard", file=sys.stderr, disable=not progress):
            for key, members in iter_tar_samples(shard, set(ME1_ARRAYS) | set(ME1_IMAGES), ME1_FIX):
                sample, shape = _scan_me1_sample(shard, split, key, members)
                if shapes and shape not in shapes:
                    raise StoreError(f"{shard} sample {key!r} has {shape[0]} voxels and a {shape[1][0]}x"
                                     f"{shape[1][1]} image, unlike earlier samples {next(iter(shapes))}; all "
                                     f"samples of a subject must match. {ME1_FIX}")
                shapes.add(shape)
                samples.append(sample)
                counts[split] += 1
    _check_metadata(paths, counts)
    n_voxels, (width, height) = next(iter(shapes))
    return samples, n_voxels, (height, width)


def _check_metadata(paths: MindEye1Paths, counts: dict[str, int]) -> None:
    """metadata_subjAA.json's totals, when the file is present, must match the samples found."""
    if not paths.metadata.is_file():
        return
    try:
        totals = json.loads(paths.metadata.read_text())["totals"]
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{paths.metadata} is not MindEye1 metadata with 'totals' ({exc}). {ME1_FIX}") from None
    for split, found in counts.items():
        if split in totals and int(totals[split]) != found:
            raise StoreError(f"{paths.metadata} lists {totals[split]} {split} samples but the {split} shards hold "
                             f"{found}; a shard is missing or incomplete. {ME1_FIX}")


@dataclass
class Me1Plan:
    """Where every real repeat of every sample goes in the store."""

    image_ids: np.ndarray  # per trial row
    sessions: np.ndarray
    repeats: np.ndarray
    is_test: np.ndarray
    destination: list[np.ndarray]  # per sample: trial rows of its real repeats
    global_trials_known: bool


def plan_mindeye1(samples: list[Me1Sample]) -> Me1Plan:
    """Trial order: by global trial when every sample gives per-repeat trial numbers, else sample order."""
    ids = np.asarray([s.image_id for s in samples], dtype=np.int64)
    unique, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        image = unique[counts > 1][0]
        where = [f"{s.shard} ({s.key})" for s in samples if s.image_id == image][:2]
        raise StoreError(f"73k image {image} has more than one sample ({' and '.join(where)}); MindEye1 stores one "
                         f"sample per image. The shards are mixed up. {ME1_FIX}")
    n_real = np.asarray([len(s.real_rows) for s in samples], dtype=np.int64)
    image_ids = np.repeat(ids, n_real)
    is_test = np.repeat([s.split == "test" for s in samples], n_real)
    known = all(s.trials is not None for s in samples)
    if known:
        global_trials = np.concatenate([s.trials for s in samples])
        values, seen = np.unique(global_trials, return_counts=True)
        if np.any(seen > 1):
            raise StoreError(f"trial.npy lists global trial {values[seen > 1][0]} in more than one repeat; each "
                             f"trial must occur once. The shards are mixed up. {ME1_FIX}")
        order = np.argsort(global_trials, kind="stable")
        sessions = global_trials[order] // TRIALS_PER_SESSION + 1
        repeats = repeat_index(image_ids[order])
    else:
        order = np.arange(len(image_ids))
        sessions = np.ones(len(image_ids), dtype=np.int64)
        repeats = np.concatenate([np.arange(n) for n in n_real]).astype(np.int64)
    row_of = np.empty(len(order), dtype=np.int64)
    row_of[order] = np.arange(len(order))  # position before sorting -> trial row
    bounds = np.concatenate([[0], np.cumsum(n_real)])
    destination = [row_of[bounds[i]:bounds[i + 1]] for i in range(len(samples))]
    return Me1Plan(image_ids[order], sessions, repeats, is_test[order], destination, known)


def import_mindeye1(root: str | Path, subject: int, out: str | Path, *, overwrite: bool = False,
                    progress: bool = True) -> MindEyeSummary:
    """Import one subject from MindEye1's ``webdataset_avg_split/`` (``pscotti/naturalscenesdataset``).

    Reads (mindeye.md §7.1) ``train/train_subjAA_{0..}.tar``, ``val/val_subjAA_{0..}.tar`` and
    ``test/test_subjAA_{0..}.tar`` (plain POSIX tars, webdataset member names ``<key>.<suffix>``) and,
    when present, ``metadata_subjAA.json`` (its ``totals`` are checked against the samples). Each
    sample is one image: ``nsdgeneral.npy`` (3, V) its 3 repeats, ``coco73k.npy`` its 0-based 73k
    index, ``trial.npy``, ``num_uniques.npy`` its number of real repeats, and the image as ``jpg`` or
    ``png``. The shards are read twice (pass 1 plans and checks everything, pass 2 writes), so memory
    holds one sample at a time.

    Conventions:

    * **Repeats.** One trial row per *real* repeat. Padding rows of images seen fewer than 3 times
      (all NaN, all zero, or copies of an earlier row) are dropped; their number must agree with
      ``num_uniques.npy``.
    * **Sessions and order.** When ``trial.npy`` holds one whole number >= 0 per repeat in every
      sample, it is taken as the 0-based global trial (MindEye2's convention): trials are stored in
      that order, session = trial // 750 + 1, repeat = earlier presentations. Otherwise sessions are
      unknown: every trial gets session 1, trials follow the shards (train, val, test) and repeat =
      position among the sample's real repeats.
    * **Split.** train + val shards -> "train" (MindEye1 trains on both); test shards -> "test".
    * **Images** are decoded to RGB uint8 at their stored size (256 x 256 for the real data).
    * **Normalisation** ``session-zscore-all``: MindEye1's betas come from an unreleased pipeline
      (ME1#48) in the per-session z-scoring lineage, whose only public code (MindEye2's notebook)
      uses all of a session's trials; the store therefore uses them as stored and evaluation flags
      the possible test-statistics leak. Moments of the imported betas are recorded as ``betas_moments``.
    """
    root = Path(root)
    name = _subject_name(subject)
    if not root.is_dir():
        raise StoreError(f"MindEye1 root {root} is not a folder; pass --root the webdataset_avg_split folder "
                         f"(or the folder holding it).")
    paths = MindEye1Paths.locate(root, int(subject))
    samples, n_voxels, (height, width) = scan_mindeye1(paths, progress)
    plan = plan_mindeye1(samples)
    _check_split(plan.image_ids, plan.is_test, f"the shards in {paths.root}",
                 "Check that the test shards belong to this subject.")

    stimulus_ids = np.unique(plan.image_ids)
    image_row = {int(i): r for r, i in enumerate(stimulus_ids.tolist())}
    trials = TrialTable(stimulus_id=plan.image_ids, session=plan.sessions, repeat=plan.repeats,
                        split=np.where(plan.is_test, "test", "train"))
    table = StimulusTable(stimulus_id=stimulus_ids, captions=[[] for _ in stimulus_ids],
                          source_id=[str(i) for i in stimulus_ids.tolist()])
    shards = [s for split in ME1_SPLITS for s in paths.shards(split)]
    inputs = shards + ([paths.metadata] if paths.metadata.is_file() else [])
    source = _mindeye1_source(paths, plan.global_trials_known)
    summary = {"mindeye_subject": int(subject), "global_trials_known": plan.global_trials_known,
               **_split_summary(plan.image_ids, plan.is_test)}

    with StoreWriter(out, source, overwrite=overwrite) as writer:
        images = writer.write_stimuli(table, image_shape=(height, width, 3))
        moments = MomentAccumulator(n_voxels)
        betas = writer.add_subject(name, trials, VoxelTable.unknown(n_voxels, np.full(n_voxels, ROI)),
                                   normalization=NORMALIZATION, extra_info=summary)
        _write_mindeye1(samples, plan, images, image_row, betas, moments, progress)
        source["betas_moments"] = moments.summary()  # the writer reads `source` when it closes
        source["inputs"] = _input_records(inputs, paths.root, progress)
    return MindEyeSummary(out=Path(out), subject=name,
                          sessions=int(plan.sessions.max()) if plan.global_trials_known else None,
                          n_stimuli=len(table), n_voxels=n_voxels, info=summary)


def _mindeye1_source(paths: MindEye1Paths, global_trials_known: bool) -> dict:
    """The manifest's record of what was read and how it was interpreted (checksums are added later)."""
    session_rule = ("global trial // 750 + 1 (trial.npy read as the 0-based global trial of each repeat)"
                    if global_trials_known else "unknown (trial.npy gives no per-repeat trial): 1 for all")
    return {"kind": "mindeye1", "root": str(paths.root.resolve()), "brainrecon_function": "import_mindeye1",
            "options": {"subject": paths.subject},
            "conventions": {
                "stimulus_id": "NSD 73k index, 0-based (coco73k.npy)",
                "repeats": "one trial per real repeat; all-NaN, all-zero or duplicated rows are padding",
                "trial_order": "global trial" if global_trials_known else "shard order (train, val, test)",
                "session": session_rule,
                "split": "test = test shards; train = train + val shards",
                "images": "decoded jpg/png as RGB uint8 at stored size",
                "normalization": "session-zscore-all: MindEye1's (unreleased) normalisation, used as stored"}}


def _write_mindeye1(samples: list[Me1Sample], plan: Me1Plan, images: np.ndarray, image_row: dict[int, int],
                    betas: np.ndarray, moments: MomentAccumulator, progress: bool) -> None:
    """Pass 2: each sample's real repeats to their trial rows, its image to its stimulus row."""
    by_key = {(s.shard, s.key): (s, dest) for s, dest in zip(samples, plan.destination, strict=True)}
    for shard in tqdm(list(dict.fromkeys(s.shard for s in samples)), desc="write", unit="shard",
                      file=sys.stderr, disable=not progress):
        for key, members in iter_tar_samples(shard, {"nsdgeneral.npy", *ME1_IMAGES}, ME1_FIX):
            where = f"{shard} sample {key!r}"
            if (shard, key) not in by_key or "nsdgeneral.npy" not in members:
                raise StoreError(f"{where} was not there (or not complete) when the shards were first read: the "
                                 f"file changed during the import. Run the import again.")
            sample, dest = by_key[(shard, key)]
            voxels = _npy(members["nsdgeneral.npy"], f"{where} nsdgeneral.npy", ME1_FIX)
            rows = np.asarray(voxels[sample.real_rows], dtype=np.float32)
            betas[dest] = rows
            moments.add(rows, plan.sessions[dest], plan.is_test[dest])
            image_format = next(s for s in ME1_IMAGES if s in members)
            image = _decode_image(members[image_format], f"{where} {image_format}")
            if image.shape != images.shape[1:]:
                raise StoreError(f"{where} {image_format} decodes to {image.shape}, unlike the other images "
                                 f"{images.shape[1:]}. {ME1_FIX}")
            images[image_row[sample.image_id]] = image
