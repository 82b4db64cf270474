"""Schema-identical fake NSD trees, for tests and benchmarks.

The fake has the real file names, folder layout, dataset keys, dtypes, axis
orders, 1-based indices, the 41 CSV columns and 750 trials per session; only the
sizes shrink (few sessions, tiny volumes, few and small images). See docs/nsd.md
for the real layout (NSD, Allen et al., Nature Neuroscience 2022).

Image counts: with 750 trials per session and at most
3 presentations per image (the CSV has rep0..rep2 columns only), a subject needs
at least 250 images per session, so each subject sees 250 x n_sessions images,
each exactly 3 times across the full design, drawn from a pool of ``n_images``.
Unlike the real data, subjects' non-shared images may overlap; nothing in the
preparation relies on them being disjoint.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import scipy.io

from brainrecon.data.nsd_files import TRIALS_PER_SESSION, NSDPaths

BETAS_VERSION = "betas_fithrf_GLMdenoise_RR"
N_SUBJECTS_IN_DESIGN = 8
REPEATS = 3
RUN_TRIALS = [63, 62] * 6  # 12 runs per session, 750 stimulus trials
RESPONSES_COLUMNS = ["SUBJECT", "SESSION", "RUN", "TRIAL", "73KID", "10KID", "TIME", "ISOLD", "ISCORRECT", "RT",
                     "CHANGEMIND", "MEMORYRECENT", "MEMORYFIRST", "ISOLDCURRENT", "ISCORRECTCURRENT", "TOTAL1",
                     "TOTAL2", "BUTTON", "MISSINGDATA"]


def stim_info_header() -> list[str]:
    """The 41 columns of nsd_stim_info_merged.csv, in order (the first one is unnamed)."""
    cols = ["", "cocoId", "cocoSplit", "cropBox", "loss", "nsdId", "flagged", "BOLD5000", "shared1000"]
    cols += [f"subject{s}" for s in range(1, 9)]
    cols += [f"subject{s}_rep{r}" for s in range(1, 9) for r in range(REPEATS)]
    return cols


@dataclass
class FakeNSD:
    """What was written (for tests that want to cross-check)."""

    root: Path
    subjects: list[int]
    n_sessions: int
    volume_shapes: dict[int, tuple[int, int, int]]
    n_images: int
    formats: tuple[str, ...]
    paths: NSDPaths = field(init=False)

    def __post_init__(self):
        self.paths = NSDPaths(self.root)


def make_fake_nsd(root: str | Path, *, subjects: tuple[int, ...] = (1,), n_sessions: int = 2,
                  volume_shape: tuple[int, int, int] = (6, 7, 5), n_shared: int = 10, n_images: int | None = None,
                  image_size: int = 425, formats: tuple[str, ...] = ("hdf5", "nifti"), captions: bool = True,
                  shared_from_session: int = 1, space: str = "func1pt8mm", betas_version: str = BETAS_VERSION,
                  roi_fraction: float = 0.4, roi_voxels: int | None = None, hdf5_chunks: bool = True,
                  seed: int = 0) -> FakeNSD:
    """Write a fake NSD tree under ``root`` and describe it.

    Subject s's volume is ``volume_shape`` with x grown by (s - 1) % 3, so subjects differ
    in grid size as in the real data. ``shared_from_session`` > 1 keeps every shared-image
    presentation out of the earlier sessions (to exercise the "no test images" error).
    The ROI is a random ``roi_fraction`` of the brain, or with ``roi_voxels`` a contiguous
    posterior cap of about that many voxels (nsdgeneral-like, for benchmarks).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    paths = NSDPaths(root)
    per_subject = TRIALS_PER_SESSION * n_sessions // REPEATS  # images per subject, each shown 3 times
    n_images = n_images or n_shared + 2 * (per_subject - n_shared)
    if n_images < per_subject:
        raise ValueError(f"n_images must be at least {per_subject} for {n_sessions} sessions")

    order = _masterordering(rng, per_subject, n_shared, n_sessions, shared_from_session)
    shared = np.sort(rng.choice(n_images, n_shared, replace=False))  # 0-based 73k ids
    pool = np.setdiff1d(np.arange(n_images), shared)
    subjectim = np.stack([np.concatenate([shared, rng.choice(pool, per_subject - n_shared, replace=False)])
                          for _ in range(N_SUBJECTS_IN_DESIGN)])  # 0-based here, written 1-based
    _write_design(paths.expdesign, order, subjectim, shared, n_sessions)
    coco_ids, coco_split = _write_stim_info(paths.stim_info, rng, n_images, shared, order, subjectim)
    _write_images(paths.stimuli, rng, n_images, image_size)
    if captions:
        _write_captions(paths, coco_ids, coco_split)

    shapes = {}
    for s in subjects:
        shape = (volume_shape[0] + (s - 1) % 3, volume_shape[1], volume_shape[2])
        shapes[s] = shape
        brain, labels = _fake_mask(rng, shape, roi_fraction, roi_voxels)
        _save_nifti(paths.roi(s, space, "nsdgeneral"), labels.astype(np.int16))
        for session in range(1, n_sessions + 1):
            _write_session(paths, s, session, space, betas_version, formats, rng, brain, hdf5_chunks)
        _write_responses(paths.responses(s), s, order, subjectim[s - 1], n_sessions)
    return FakeNSD(root, list(subjects), n_sessions, shapes, n_images, tuple(formats))


# ---------------------------------------------------------------------------------------------


def _masterordering(rng, per_subject: int, n_shared: int, n_sessions: int, shared_from: int) -> np.ndarray:
    """0-based indices into a subject's image list; each index 3 times; shared = index < n_shared."""
    trials = TRIALS_PER_SESSION * n_sessions
    shared = np.repeat(np.arange(n_shared), REPEATS)
    unique = rng.permutation(np.repeat(np.arange(n_shared, per_subject), REPEATS))
    head = TRIALS_PER_SESSION * (shared_from - 1)  # trials that get no shared image
    if head + shared.size > trials:
        raise ValueError("shared_from_session leaves no room for the shared images")
    tail = rng.permutation(np.concatenate([shared, unique[head:]]))
    return np.concatenate([unique[:head], tail])


def _write_design(path: Path, order, subjectim, shared, n_sessions: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    stimpattern = np.zeros((n_sessions, 12, 75))
    for run, n in enumerate(RUN_TRIALS):
        stimpattern[:, run, :n] = 1
    scipy.io.savemat(path, {
        "masterordering": (order + 1).astype(np.float64)[None, :],  # MATLAB doubles, 1-based
        "subjectim": (subjectim + 1).astype(np.float64),
        "sharedix": (shared + 1).astype(np.float64)[None, :],
        "stimpattern": stimpattern,
        "basiccnt": np.zeros((3, n_sessions)),
    })


def _write_stim_info(path: Path, rng, n_images: int, shared, order, subjectim):
    coco_ids = rng.choice(np.arange(1, 600_000), n_images, replace=False)
    coco_split = np.where(rng.random(n_images) < 0.8, "train2017", "val2017")
    reps = np.zeros((n_images, N_SUBJECTS_IN_DESIGN, REPEATS), dtype=np.int64)
    for s in range(N_SUBJECTS_IN_DESIGN):
        seen = np.zeros(n_images, dtype=np.int64)
        for t, k in enumerate(order.tolist()):
            image = subjectim[s, k]
            reps[image, s, seen[image]] = t + 1  # 1-based trial id
            seen[image] += 1
    is_shared = np.isin(np.arange(n_images), shared)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(stim_info_header())
        for i in range(n_images):
            crop = round(float(rng.uniform(0, 0.2)), 7)
            box = f"(0, 0, {crop}, {crop})" if i % 2 else f"({crop}, {crop}, 0, 0)"
            shown = [int(i in subjectim[s]) for s in range(N_SUBJECTS_IN_DESIGN)]
            writer.writerow([i, int(coco_ids[i]), coco_split[i], box, round(float(rng.random()), 3), i, False,
                             False, bool(is_shared[i]), *shown, *reps[i].ravel().tolist()])
    return coco_ids, coco_split


def _write_images(path: Path, rng, n_images: int, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        brick = f.create_dataset("imgBrick", shape=(n_images, size, size, 3), dtype=np.uint8)
        for start in range(0, n_images, 64):
            stop = min(start + 64, n_images)
            brick[start:stop] = rng.integers(0, 256, (stop - start, size, size, 3), dtype=np.uint8)


def _write_captions(paths: NSDPaths, coco_ids, coco_split) -> None:
    for split in ("train2017", "val2017"):
        ids = [int(c) for c, s in zip(coco_ids, coco_split) if s == split]
        images = [{"id": c, "file_name": f"{c:012d}.jpg", "width": 640, "height": 480, "license": 1,
                   "coco_url": "", "flickr_url": "", "date_captured": ""} for c in ids]
        annotations = [{"image_id": c, "id": c * 10 + k, "caption": f"fake caption {k} of image {c}."}
                       for c in ids for k in range(5)]
        path = paths.captions(split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations}))


def _fake_mask(rng, shape, roi_fraction: float, roi_voxels: int | None):
    """(brain bool, labels in {-1, 0, 1}): an ellipsoid brain, part of it labelled 1."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius2 = (grid ** 2).sum(axis=0)
    brain = radius2 <= 1.3
    labels = np.where(brain, 0, -1)
    if roi_voxels is None:
        labels[brain & (rng.random(shape) < roi_fraction)] = 1
    else:  # the most posterior (low y), outer (cortex-like) brain voxels
        score = np.where(brain, grid[1] - 0.5 * radius2, np.inf).ravel()
        labels.ravel()[np.argsort(score, kind="stable")[:roi_voxels]] = 1
    return brain, labels


def _write_session(paths: NSDPaths, subject: int, session: int, space: str, version: str, formats, rng,
                   brain: np.ndarray, hdf5_chunks: bool) -> None:
    """One session's betas, generated z-slab by z-slab so real-sized fakes fit in memory.

    Values are int16 round(300 * percent signal change), zero outside the brain; the
    HDF5 and NIfTI files hold the same numbers (the HDF5 with its axes reversed).
    """
    shape = (*brain.shape, TRIALS_PER_SESSION)
    slab_depth = max(1, (32 << 20) // (shape[0] * shape[1] * shape[3] * 4))
    voxel_offset = rng.normal(0, 1, brain.shape).astype(np.float32)
    full = np.empty(shape, dtype=np.int16) if "nifti" in formats else None
    h5file = None
    if "hdf5" in formats:
        path = paths.betas(subject, space, version, session, "hdf5")
        path.parent.mkdir(parents=True, exist_ok=True)
        h5file = h5py.File(path, "w")
        dataset = h5file.create_dataset("betas", shape=shape[::-1], dtype=np.int16,
                                        chunks=(shape[3], 1, 1, 1) if hdf5_chunks else None)
    try:
        for z0 in range(0, shape[2], slab_depth):
            z1 = min(z0 + slab_depth, shape[2])
            noise = rng.standard_normal((shape[0], shape[1], z1 - z0, shape[3]), dtype=np.float32) * 2.0
            pct = noise + voxel_offset[:, :, z0:z1, None]
            slab = np.where(brain[:, :, z0:z1, None], np.rint(300 * pct), 0).astype(np.int16)
            if full is not None:
                full[:, :, z0:z1] = slab
            if h5file is not None:  # h5py view (750, Z, Y, X): the reverse of the NIfTI axes
                dataset[:, z0:z1] = slab.transpose(3, 2, 1, 0)
    finally:
        if h5file is not None:
            h5file.close()
    if full is not None:
        _save_nifti(paths.betas(subject, space, version, session, "nifti"), full)


def _save_nifti(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, np.diag([1.8, 1.8, 1.8, 1.0]))
    img.header.set_data_dtype(data.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, path)


def _write_responses(path: Path, subject: int, order, subjectim_row, n_sessions: int) -> None:
    """responses.tsv: one row per stimulus trial, 19 columns, 1-based 73KID/10KID."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(RESPONSES_COLUMNS)]
    seen: set[int] = set()
    t = 0
    for session in range(1, n_sessions + 1):
        for run, n in enumerate(RUN_TRIALS, start=1):
            for trial in range(1, n + 1):
                k = int(order[t])
                image = int(subjectim_row[k])
                is_old = int(image in seen)
                seen.add(image)
                row = [subject, session, run, trial, image + 1, k + 1, 737000.0 + t / 1e4, is_old, 1, 800.0,
                       0, 0, 0, is_old, 1, 0, 0, 1, 0]
                lines.append("\t".join(str(v) for v in row))
                t += 1
    path.write_text("\n".join(lines) + "\n")
