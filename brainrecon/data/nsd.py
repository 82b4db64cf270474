"""Prepare the Natural Scenes Dataset (NSD) as a brainrecon store.

:func:`prepare_nsd` reads the NSD design, stimulus table, images, ROI masks and
single-trial betas for chosen subjects and writes one store (see
docs/nsd.md for the conventions and docs/store-format.md for the format):

* trials in time order; ``stimulus_id`` = the 0-based NSD 73k index; split "test"
  for the shared-1000 images, "train" for the rest (the split is by image);
* voxels = ROI label > 0, in C order over (x, y, z) of the NIfTI grid (the order of
  brain-diffuser and MindEye), whichever file format the betas come from;
* betas = int16 / 300 as float32 (percent signal change), stored *raw* with
  ``normalization="none"``: the store reader z-scores each session with the statistics
  of that session's training trials only, so no test statistic reaches a model.

Work is streamed one session at a time and checkpointed, so memory stays far below
one subject's data and an interrupted run continues where it stopped.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from brainrecon.data.nsd_files import (TRIALS_PER_SESSION, Design, NSDPaths, betas_shape, image_brick_shape,
                                       mask_coords, open_hdf5, read_betas, read_captions, read_design,
                                       read_images, read_mask, read_stim_info, subject_trial_ids,
                                       to_percent_signal)
from brainrecon.data.store import BETAS_DTYPES
from brainrecon.data.tables import StimulusTable, TrialTable, VoxelTable, repeat_index
from brainrecon.data.writer import StoreWriter
from brainrecon.errors import StoreError
from brainrecon.io import sha256_file

# NSD core sessions per subject (NSD, Allen et al., Nature Neuroscience 2022; NSD Data Manual, "Technical
# notes"); used when `sessions` is not given.
NSD_CORE_SESSIONS = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}
BETAS_FORMATS = ("auto", "hdf5", "nifti")
IMAGE_BLOCK_BYTES = 64 << 20

AVAILABLE = "available"  # sessions=: each subject's sessions on disk
SessionCallback = Callable[[str, int, int], None]  # (subject name, session, n_sessions) after each session


@dataclass
class SubjectPlan:
    """Everything needed to write one subject, decided and checked before anything is written."""

    number: int
    n_sessions: int
    image_ids: np.ndarray  # (n_trials,) 0-based 73k ids in time order
    is_test: np.ndarray
    mask_path: Path
    volume_shape: tuple[int, int, int]
    coords: np.ndarray  # (n_voxels, 3) x, y, z
    roi_labels: np.ndarray
    session_files: list[Path]

    @property
    def name(self) -> str:
        return f"subj{self.number:02d}"

    @property
    def summary(self) -> dict:
        return {"nsd_subject": self.number, "sessions": self.n_sessions, "volume_shape": list(self.volume_shape),
                "train_trials": int((~self.is_test).sum()), "test_trials": int(self.is_test.sum()),
                "train_images": int(np.unique(self.image_ids[~self.is_test]).size),
                "test_images": int(np.unique(self.image_ids[self.is_test]).size)}

    def trial_table(self) -> TrialTable:
        n = len(self.image_ids)
        return TrialTable(stimulus_id=self.image_ids.astype(np.int64),
                          session=np.arange(n, dtype=np.int64) // TRIALS_PER_SESSION + 1,
                          repeat=repeat_index(self.image_ids), split=np.where(self.is_test, "test", "train"))

    def voxel_table(self) -> VoxelTable:
        return VoxelTable(ijk=self.coords.astype(np.int64), roi=self.roi_labels)


@dataclass
class NSDSummary:
    out: Path
    subjects: dict[str, dict]
    n_stimuli: int
    n_voxels: dict[str, int] = field(default_factory=dict)


def prepare_nsd(root: str | Path, subjects: list[int], out: str | Path, *, space: str = "func1pt8mm",
                roi: str = "nsdgeneral", sessions: int | str | None = None,
                betas: str = "betas_fithrf_GLMdenoise_RR",
                overwrite: bool = False, progress: bool = True, betas_format: str = "auto",
                betas_dtype: str = "float32", on_session: SessionCallback | None = None) -> NSDSummary:
    """Write NSD subjects (numbers 1..8) to a brainrecon store at ``out``.

    ``sessions`` limits every subject to its first N sessions (default: all its core
    sessions); ``"available"`` gives each subject the sessions it has on disk (1..n, up to its
    core count), so a partial download of one subject does not truncate the others. The counts
    go into the manifest (``source.sessions_per_subject``); the split rule (shared images are
    test) holds for any count. ``betas_format`` "auto" reads each session's .hdf5 when present, else its
    .nii.gz. Every input is checked before anything is written; a run that stops part-way
    leaves ``out.partial`` and is continued by re-running with the same arguments.
    """
    root = Path(root)
    _check_options(root, subjects, sessions, space, roi, betas, betas_format, betas_dtype)
    paths = NSDPaths(root)
    design = read_design(paths.expdesign)
    plans = [_plan_subject(paths, design, s, sessions, space, roi, betas, betas_format) for s in subjects]
    per_subject = {plan.name: plan.n_sessions for plan in plans}
    info = read_stim_info(paths.stim_info, subjects)
    _check_stim_info_matches_design(paths, info, design, plans)
    stimulus_ids = np.unique(np.concatenate([p.image_ids for p in plans]))
    brick_shape = image_brick_shape(paths.stimuli)
    if stimulus_ids.max() >= brick_shape[0] or stimulus_ids.max() >= len(info["nsdId"]):
        raise StoreError(f"image id {stimulus_ids.max()} is used by the design but {paths.stimuli} holds "
                         f"{brick_shape[0]} images and {paths.stim_info} {len(info['nsdId'])} rows. "
                         f"The files come from different releases; download them again.")
    captions, caption_files = _captions(paths, info, stimulus_ids)
    table = StimulusTable(stimulus_id=stimulus_ids.astype(np.int64), captions=captions,
                          source_id=[str(i) for i in stimulus_ids.tolist()])

    inputs = [paths.expdesign, paths.stim_info, paths.stimuli, *caption_files]
    for plan in plans:
        inputs += [plan.mask_path, *plan.session_files]
    source = {"kind": "nsd", "root": str(root.resolve()), "brainrecon_function": "prepare_nsd",
              "options": {"subjects": list(subjects), "space": space, "roi": roi, "sessions": sessions,
                          "betas": betas, "betas_format": betas_format, "betas_dtype": betas_dtype},
              "sessions_per_subject": per_subject,
              "conventions": {"stimulus_id": "NSD 73k index, 0-based", "session": "1-based",
                              "repeat": "0-based count of earlier presentations",
                              "split": "test = shared-1000 images (sharedix), train = the rest",
                              "voxel_order": "C order over (x, y, z) of the NIfTI grid, ROI label > 0",
                              "betas": "int16 / 300 as percent signal change",
                              "normalization": "none: the reader z-scores each session with its training trials"},
              "inputs": {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size} for p in inputs}}

    with StoreWriter(out, source, overwrite=overwrite, resume=True) as writer:
        _write_images(writer, paths.stimuli, table, brick_shape[1:], progress)
        for plan in plans:
            _write_subject(writer, plan, betas_dtype, progress, on_session)
        for path in tqdm(inputs, desc="checksums", unit="file", file=sys.stderr, disable=not progress):
            source["inputs"][path.relative_to(root).as_posix()]["sha256"] = _checksum(writer, path)
    return NSDSummary(out=Path(out), subjects={p.name: p.summary for p in plans}, n_stimuli=len(table),
                      n_voxels={p.name: len(p.coords) for p in plans})


# ---------------------------------------------------------------------------------------------
# Planning and checking (nothing is written until all of this has passed)


def _check_options(root: Path, subjects, sessions, space, roi, betas, betas_format, betas_dtype) -> None:
    if not root.is_dir():
        raise StoreError(f"NSD root {root} is not a folder; pass --root the folder that holds nsddata/, "
                         f"nsddata_betas/ and nsddata_stimuli/.")
    if not subjects:
        raise StoreError("no subjects given; pass NSD subject numbers such as --subjects 1 2 5 7.")
    if len(set(subjects)) != len(subjects):
        raise StoreError(f"subjects {list(subjects)} list a subject twice; give each once.")
    if sessions is not None and sessions != AVAILABLE and (not isinstance(sessions, int) or sessions < 1):
        raise StoreError(f"--sessions takes a number of sessions (at least 1) or '{AVAILABLE}', got {sessions!r}.")
    for name, value in (("space", space), ("roi", roi), ("betas", betas)):
        if not value or "/" in value or "\\" in value or value.startswith("."):
            raise StoreError(f"--{name} {value!r} must be a plain folder or file name such as the defaults.")
    if betas_format not in BETAS_FORMATS:
        raise StoreError(f"betas_format must be one of {BETAS_FORMATS}, got {betas_format!r}.")
    if betas_dtype not in BETAS_DTYPES:
        raise StoreError(f"betas_dtype must be one of {BETAS_DTYPES}, got {betas_dtype!r}.")


def _plan_subject(paths: NSDPaths, design: Design, subject: int, sessions: int | None, space: str, roi: str,
                  version: str, betas_format: str) -> SubjectPlan:
    n_subjects = design.subjectim.shape[0]
    if not 1 <= subject <= n_subjects:
        raise StoreError(f"subject {subject} does not exist: {paths.expdesign} describes subjects 1..{n_subjects}.")
    available = design.n_sessions
    if isinstance(sessions, int) and sessions > available:
        raise StoreError(f"--sessions {sessions} asks for more sessions than {paths.expdesign} describes "
                         f"({available}); use --sessions {available} or fewer.")
    core = min(NSD_CORE_SESSIONS.get(subject, available), available)
    if sessions == AVAILABLE:
        n_sessions = _sessions_on_disk(paths, subject, space, version, betas_format, core)
    else:
        n_sessions = sessions or core
    image_ids = subject_trial_ids(design, subject, n_sessions)
    is_test = np.isin(image_ids, design.sharedix - 1)
    if not is_test.any():
        raise StoreError(f"subject {subject} saw none of the shared test images in its first {n_sessions} "
                         f"session(s) (masterordering in {paths.expdesign}), so it would have no test set. "
                         f"Prepare more sessions with --sessions.")
    if is_test.all():
        raise StoreError(f"subject {subject} saw only shared test images in its first {n_sessions} session(s) "
                         f"({paths.expdesign}); there would be no training trials. Prepare more sessions.")

    mask_path = paths.roi(subject, space, roi)
    labels = read_mask(mask_path)
    coords = mask_coords(labels)
    if len(coords) == 0:
        raise StoreError(f"{mask_path} has no voxel with a label > 0, so the ROI is empty. Check the file or "
                         f"choose another --roi.")
    values = labels[tuple(coords.T)]
    roi_labels = np.full(len(coords), roi) if np.all(values == 1) else np.asarray([f"{roi}:{v}" for v in values])
    files = [_session_file(paths, subject, space, version, session, betas_format, labels.shape, mask_path)
             for session in range(1, n_sessions + 1)]
    return SubjectPlan(number=subject, n_sessions=n_sessions, image_ids=image_ids, is_test=is_test,
                       mask_path=mask_path, volume_shape=tuple(labels.shape), coords=coords,
                       roi_labels=roi_labels.astype(str), session_files=files)


def _sessions_on_disk(paths: NSDPaths, subject: int, space: str, version: str, betas_format: str,
                      most: int) -> int:
    """How many of the subject's sessions 1, 2, ... (at most ``most``) have a betas file, counting up to a gap."""
    formats = ("hdf5", "nifti") if betas_format == "auto" else (betas_format,)
    count = 0
    while count < most and any(paths.betas(subject, space, version, count + 1, f).is_file() for f in formats):
        count += 1
    if count == 0:
        raise StoreError(f"subject {subject} has no session 1 betas under {paths.root} (--space {space}, --betas "
                         f"{version}); download them, or leave the subject out.")
    return count


def _session_file(paths: NSDPaths, subject: int, space: str, version: str, session: int, betas_format: str,
                  volume_shape: tuple, mask_path: Path) -> Path:
    """The session's betas file (HDF5 preferred), its header checked against the mask and the design."""
    candidates = {fmt: paths.betas(subject, space, version, session, fmt) for fmt in ("hdf5", "nifti")}
    order = ("hdf5", "nifti") if betas_format == "auto" else (betas_format,)
    found = [candidates[fmt] for fmt in order if candidates[fmt].is_file()]
    if not found:
        names = " or ".join(str(candidates[fmt]) for fmt in order)
        raise StoreError(f"{names} is missing: subject {subject} session {session} is needed. Download it, or "
                         f"prepare fewer sessions with --sessions {session - 1}." if session > 1 else
                         f"{names} is missing: subject {subject} has no session {session} betas. Download them "
                         f"(and check --space {space} and --betas {version}).")
    path = found[0]
    grid, n_trials, dtype = betas_shape(path)
    if n_trials != TRIALS_PER_SESSION:
        raise StoreError(f"{path} holds {n_trials} trials, but every NSD session has {TRIALS_PER_SESSION}; the file "
                         f"is damaged or not an NSD single-trial betas file. Download it again.")
    if tuple(grid) != tuple(volume_shape):
        raise StoreError(f"{mask_path} has shape {tuple(volume_shape)} but the volumes in {path} are "
                         f"{tuple(grid)}: the mask must be on the betas' grid. Use the same subject's mask from "
                         f"the same space (--space).")
    if np.dtype(dtype) != np.int16:
        raise StoreError(f"{path} stores {np.dtype(dtype)} values, but NSD volume betas are int16 (x300); "
                         f"this is not an NSD betas file. Download it again.")
    return path


def _check_stim_info_matches_design(paths: NSDPaths, info: dict, design: Design, plans: list[SubjectPlan]) -> None:
    """The CSV's shared1000 flags and rep trial ids must agree with the design (catches mixed releases)."""
    where = f"{paths.stim_info} and {paths.expdesign} disagree"
    fix = "The two files come from different releases or one is damaged; download both again."
    shared_rows = np.flatnonzero(info["shared1000"])
    if not np.array_equal(shared_rows, np.sort(design.sharedix - 1)):
        raise StoreError(f"{where} on the shared images (column shared1000 vs sharedix). {fix}")
    for plan in plans:
        if plan.image_ids.max() >= len(info["nsdId"]):
            raise StoreError(f"{where}: image {plan.image_ids.max()} has no row in the CSV. {fix}")
        repeat = repeat_index(plan.image_ids)
        for r in range(3):  # the CSV records the 1-based trial id of presentations 0..2
            trials = np.flatnonzero(repeat == r)
            listed = info[f"subject{plan.number}_rep{r}"][plan.image_ids[trials]]
            wrong = np.flatnonzero(listed != trials + 1)
            if wrong.size:
                t = trials[wrong[0]]
                raise StoreError(f"{where}: subject {plan.number} trial {t + 1} shows image {plan.image_ids[t]} "
                                 f"(presentation {r}), but column subject{plan.number}_rep{r} says trial "
                                 f"{listed[wrong[0]]}. {fix}")


def _captions(paths: NSDPaths, info: dict, stimulus_ids: np.ndarray) -> tuple[list[list[str]], list[Path]]:
    """Captions per stimulus from COCO annotation files when present (else empty lists)."""
    captions: list[list[str]] = [[] for _ in stimulus_ids]
    used = []
    splits = info["cocoSplit"][stimulus_ids]
    for split in sorted(set(splits.tolist())):
        path = paths.captions(split)
        if not path.is_file():
            continue
        by_coco_id = read_captions(path)
        used.append(path)
        for row in np.flatnonzero(splits == split).tolist():
            captions[row] = by_coco_id.get(int(info["cocoId"][stimulus_ids[row]]), [])
    return captions, used


# ---------------------------------------------------------------------------------------------
# Writing (each step checkpointed so an interrupted run continues where it stopped)


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _done(writer: StoreWriter, key: str, path: Path) -> bool:
    """True if the step was finished earlier from this same input file (same size and time)."""
    record = writer.checkpointed(key)
    return record is not None and record.get("input") == _file_identity(path)


def _checksum(writer: StoreWriter, path: Path) -> str:
    """sha256 of an input file, remembered in the checkpoints so a resumed run does not re-read it."""
    key = f"sha256:{path}"
    if not _done(writer, key, path):
        writer.checkpoint(key, {"input": _file_identity(path), "sha256": sha256_file(path)})
    return writer.checkpointed(key)["sha256"]


def _write_images(writer: StoreWriter, stimuli: Path, table: StimulusTable, image_shape: tuple, progress: bool):
    images = writer.write_stimuli(table, image_shape=tuple(image_shape))
    ids = table.stimulus_id  # sorted and unique, as h5py fancy indexing requires
    block = max(1, IMAGE_BLOCK_BYTES // int(np.prod(image_shape)))
    with open_hdf5(stimuli, "the NSD image file") as f:
        brick = f["imgBrick"]
        for start in tqdm(range(0, len(ids), block), desc="images", unit="block", file=sys.stderr,
                          disable=not progress):
            key = f"images/{start}"
            if _done(writer, key, stimuli):
                continue
            try:
                images[start:start + block] = read_images(brick, ids[start:start + block])
            except OSError as exc:
                raise StoreError(f"{stimuli} could not be read ({exc}); it is truncated or damaged. Download it "
                                 f"again.") from None
            writer.checkpoint(key, {"input": _file_identity(stimuli)})


def _write_subject(writer: StoreWriter, plan: SubjectPlan, betas_dtype: str, progress: bool,
                   on_session: SessionCallback | None) -> None:
    betas = writer.add_subject(plan.name, plan.trial_table(), plan.voxel_table(), betas_dtype=betas_dtype,
                               normalization="none", extra_info=plan.summary)
    bar = tqdm(total=plan.n_sessions, desc=f"{plan.name} sessions", unit="session", file=sys.stderr,
               disable=not progress)
    with bar:
        for session, path in enumerate(plan.session_files, start=1):
            key = f"{plan.name}/session{session:02d}"
            if not _done(writer, key, path):
                raw = read_betas(path, plan.coords)  # (750, n_voxels), columns in NIfTI voxel order
                if raw.shape != (TRIALS_PER_SESSION, len(plan.coords)):
                    raise StoreError(f"{path} gave {raw.shape} values for {len(plan.coords)} voxels; expected "
                                     f"({TRIALS_PER_SESSION}, {len(plan.coords)}). Download it again.")
                rows = slice((session - 1) * TRIALS_PER_SESSION, session * TRIALS_PER_SESSION)
                betas[rows] = to_percent_signal(raw).astype(betas_dtype, copy=False)
                del raw
                _checksum(writer, path)
                writer.checkpoint(key, {"input": _file_identity(path)})
            bar.update(1)
            if on_session is not None:
                on_session(plan.name, session, plan.n_sessions)
