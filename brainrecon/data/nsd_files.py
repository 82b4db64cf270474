"""Low-level readers for the Natural Scenes Dataset (NSD) files.

Each reader checks the one file it reads and raises :class:`StoreError` naming
that file and how to fix it. Sizes (number of images, volume shape, trials per
file) are always read from the files, never assumed, so the same code reads the
real data and the small schema-identical fakes of :mod:`brainrecon.data.nsd_fake`.

Conventions (docs/nsd.md; NSD, Allen et al., Nature Neuroscience 2022, and the NSD Data
Manual's pages on ``nsd_expdesign.mat``, ``nsd_stim_info_merged.csv`` and the betas):

* ``nsd_expdesign.mat`` holds 1-based indices; :class:`Design` keeps them 1-based
  exactly as stored and :func:`subject_trial_ids` converts to 0-based 73k ids.
* Volumes are addressed by (x, y, z) in nibabel's axis order. A voxel selection is
  an (V, 3) array of (x, y, z) coordinates; the readers return (trials, V) arrays
  whose columns follow that array, whatever the on-disk axis order.
"""

from __future__ import annotations

import csv
import json
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import nibabel as nib
import numpy as np
import scipy.io

from brainrecon.errors import StoreError

TRIALS_PER_SESSION = 750  # every NSD core session has 12 runs of 63/62 stimulus trials
BETA_SCALE = 300.0  # NSD stores betas as int16 percent signal change x 300
READ_BLOCK_BYTES = 64 << 20  # upper bound on one raw read while streaming a session
REDOWNLOAD = "Download it again from the NSD bucket (see docs/nsd.md)."


# ---------------------------------------------------------------------------------------------
# Where the files are


@dataclass(frozen=True)
class NSDPaths:
    """File locations inside an NSD root folder (the folder holding nsddata/, nsddata_betas/, ...)."""

    root: Path

    @property
    def expdesign(self) -> Path:
        return self.root / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"

    @property
    def stim_info(self) -> Path:
        return self.root / "nsddata" / "experiments" / "nsd" / "nsd_stim_info_merged.csv"

    @property
    def stimuli(self) -> Path:
        return self.root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"

    def captions(self, coco_split: str) -> Path:
        return self.root / "nsddata_stimuli" / "stimuli" / "nsd" / "annotations" / f"captions_{coco_split}.json"

    def roi(self, subject: int, space: str, roi: str) -> Path:
        return self.root / "nsddata" / "ppdata" / f"subj{subject:02d}" / space / "roi" / f"{roi}.nii.gz"

    def betas_dir(self, subject: int, space: str, version: str) -> Path:
        return self.root / "nsddata_betas" / "ppdata" / f"subj{subject:02d}" / space / version

    def betas(self, subject: int, space: str, version: str, session: int, fmt: str) -> Path:
        suffix = {"hdf5": "hdf5", "nifti": "nii.gz"}[fmt]
        return self.betas_dir(subject, space, version) / f"betas_session{session:02d}.{suffix}"

    def responses(self, subject: int) -> Path:
        return self.root / "nsddata" / "ppdata" / f"subj{subject:02d}" / "behav" / "responses.tsv"


def require_file(path: Path, what: str, fix: str = REDOWNLOAD) -> Path:
    if not path.is_file():
        raise StoreError(f"{path} is missing ({what}). {fix}")
    return path


# ---------------------------------------------------------------------------------------------
# Design


@dataclass(frozen=True)
class Design:
    """The three design arrays of nsd_expdesign.mat, 1-based as stored."""

    masterordering: np.ndarray  # (n_trials,) int64, indices 1..K into a subject's image list
    subjectim: np.ndarray  # (n_subjects, K) int64, 1-based 73k ids
    sharedix: np.ndarray  # (n_shared,) int64, sorted 1-based 73k ids

    @property
    def n_sessions(self) -> int:
        return len(self.masterordering) // TRIALS_PER_SESSION


def _integer_array(path: Path, name: str, value: np.ndarray) -> np.ndarray:
    values = np.asarray(value)
    if values.size == 0 or not np.issubdtype(values.dtype, np.number):
        raise StoreError(f"{path}: variable {name!r} is empty or not numeric. {REDOWNLOAD}")
    as_int = values.astype(np.int64)
    if not np.array_equal(as_int, values):  # MATLAB doubles are fine as long as they hold integers
        raise StoreError(f"{path}: variable {name!r} holds non-integer values. {REDOWNLOAD}")
    return as_int


def read_design(path: Path) -> Design:
    require_file(path, "the NSD design file")
    try:
        mat = scipy.io.loadmat(path, variable_names=["masterordering", "subjectim", "sharedix"])
    except (ValueError, OSError, TypeError, zlib.error) as exc:
        raise StoreError(f"{path} is not a readable MATLAB file ({exc}); it may be truncated. {REDOWNLOAD}") from None
    missing = [k for k in ("masterordering", "subjectim", "sharedix") if k not in mat]
    if missing:
        raise StoreError(f"{path} lacks variable(s) {', '.join(missing)}; is it nsd_expdesign.mat? {REDOWNLOAD}")
    order = _integer_array(path, "masterordering", mat["masterordering"]).ravel()
    subjectim = _integer_array(path, "subjectim", mat["subjectim"])
    shared = _integer_array(path, "sharedix", mat["sharedix"]).ravel()
    if subjectim.ndim != 2:
        raise StoreError(f"{path}: 'subjectim' must be 2-D (subjects x images), got shape {subjectim.shape}.")
    if order.min() < 1 or order.max() > subjectim.shape[1]:
        raise StoreError(f"{path}: 'masterordering' values must lie in 1..{subjectim.shape[1]} (1-based), got "
                         f"{order.min()}..{order.max()}. {REDOWNLOAD}")
    if subjectim.min() < 1 or shared.min() < 1:
        raise StoreError(f"{path}: 'subjectim' and 'sharedix' hold 1-based image ids; found values < 1.")
    if len(order) % TRIALS_PER_SESSION:
        raise StoreError(f"{path}: 'masterordering' has {len(order)} trials, not a multiple of "
                         f"{TRIALS_PER_SESSION} trials per session. {REDOWNLOAD}")
    return Design(masterordering=order, subjectim=subjectim, sharedix=shared)


def subject_trial_ids(design: Design, subject: int, n_sessions: int) -> np.ndarray:
    """0-based 73k image id of each of the subject's first ``n_sessions`` sessions' trials, in time order."""
    order = design.masterordering[:TRIALS_PER_SESSION * n_sessions]
    return design.subjectim[subject - 1, order - 1] - 1


# ---------------------------------------------------------------------------------------------
# Stimulus table (CSV)


def stim_info_columns(subjects: list[int]) -> list[str]:
    """Columns of nsd_stim_info_merged.csv that preparing these subjects reads."""
    cols = ["cocoId", "cocoSplit", "nsdId", "shared1000"]
    for s in subjects:
        cols += [f"subject{s}"] + [f"subject{s}_rep{r}" for r in range(3)]
    return cols


def read_stim_info(path: Path, subjects: list[int]) -> dict[str, np.ndarray]:
    """The needed columns, as arrays indexed by row (= 0-based 73k id, checked)."""
    require_file(path, "the NSD stimulus table")
    wanted = stim_info_columns(subjects)
    try:
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None) or []
            missing = [c for c in wanted if c not in header]
            if missing:
                raise StoreError(f"{path} lacks column(s) {', '.join(missing)}; nsd_stim_info_merged.csv has 41 "
                                 f"columns including these. {REDOWNLOAD}")
            index = {c: header.index(c) for c in wanted}
            raw = {c: [] for c in wanted}
            for line_no, row in enumerate(reader, start=2):
                if len(row) != len(header):
                    raise StoreError(f"{path}, line {line_no}: {len(row)} fields, header has {len(header)}; the "
                                     f"file is truncated or damaged. {REDOWNLOAD}")
                for c, i in index.items():
                    raw[c].append(row[i])
    except UnicodeDecodeError:
        raise StoreError(f"{path} is not a text CSV file. {REDOWNLOAD}") from None
    cols: dict[str, np.ndarray] = {"cocoSplit": np.asarray(raw.pop("cocoSplit"), dtype=str)}
    cols["shared1000"] = np.asarray([v == "True" for v in raw.pop("shared1000")], dtype=bool)
    for c, values in raw.items():
        try:
            cols[c] = np.asarray([int(v) for v in values], dtype=np.int64)
        except ValueError:
            raise StoreError(f"{path}: column {c!r} must hold integers. {REDOWNLOAD}") from None
    if not np.array_equal(cols["nsdId"], np.arange(len(cols["nsdId"]))):
        raise StoreError(f"{path}: rows must be in nsdId order 0, 1, 2, ...; the file is not the NSD table.")
    return cols


# ---------------------------------------------------------------------------------------------
# Images and captions


def image_brick_shape(path: Path) -> tuple[int, ...]:
    """Shape of ``imgBrick`` (n_images, H, W, 3), checking dtype and that the file opens."""
    with open_hdf5(path, "the NSD image file") as f:
        if "imgBrick" not in f:
            raise StoreError(f"{path} has no dataset 'imgBrick'; is it nsd_stimuli.hdf5? {REDOWNLOAD}")
        brick = f["imgBrick"]
        if brick.ndim != 4 or brick.shape[3] != 3 or brick.dtype != np.uint8:
            raise StoreError(f"{path}: 'imgBrick' must be uint8 (images, H, W, 3) as h5py reads it, got "
                             f"{brick.dtype} {brick.shape}. {REDOWNLOAD}")
        return tuple(brick.shape)


def read_images(brick: h5py.Dataset, ids: np.ndarray) -> np.ndarray:
    """Images for strictly increasing 0-based ids (h5py fancy indexing needs sorted unique indices)."""
    return brick[np.asarray(ids, dtype=np.int64)]


def read_captions(path: Path) -> dict[int, list[str]]:
    """COCO caption annotations: image id -> captions in annotation-id order (stable across runs)."""
    try:
        data = json.loads(path.read_text())
        annotations = sorted(data["annotations"], key=lambda a: int(a["id"]))
        out: dict[int, list[str]] = {}
        for a in annotations:
            out.setdefault(int(a["image_id"]), []).append(str(a["caption"]).strip())
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{path} is not a COCO captions file ({exc!r}). Re-extract captions_*.json from "
                         f"COCO's annotations_trainval2017.zip, or remove it to prepare without captions.") from None
    return out


# ---------------------------------------------------------------------------------------------
# Volumes: ROI masks and betas


def read_mask(path: Path) -> np.ndarray:
    """ROI label volume (X, Y, Z) as int64; voxels with label > 0 are in the ROI (-1 = outside brain)."""
    require_file(path, "the ROI mask", fix="Download the subject's roi/ folder, or choose another --roi.")
    try:
        img = nib.load(path)
        labels = np.asarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise StoreError(f"{path} is not a readable NIfTI file ({exc}); it may be truncated. {REDOWNLOAD}") from None
    if labels.ndim == 4 and labels.shape[3] == 1:
        labels = labels[..., 0]
    if labels.ndim != 3:
        raise StoreError(f"{path}: an ROI mask must be a 3-D volume, got shape {labels.shape}.")
    return np.rint(labels).astype(np.int64)


def mask_coords(labels: np.ndarray) -> np.ndarray:
    """(V, 3) (x, y, z) of voxels with label > 0, in C order over (x, y, z): the published pipelines' order."""
    return np.argwhere(labels > 0)


class open_hdf5:
    """``h5py.File`` opened read-only, with unreadable or truncated files reported as StoreError."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = path, what

    def __enter__(self) -> h5py.File:
        require_file(self.path, self.what)
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as exc:
            raise StoreError(f"{self.path} ({self.what}) cannot be opened as HDF5 ({exc}); it is truncated or "
                             f"damaged. {REDOWNLOAD}") from None
        return self.file

    def __exit__(self, *exc) -> None:
        self.file.close()


def betas_shape(path: Path) -> tuple[tuple[int, int, int], int, np.dtype]:
    """((X, Y, Z), n_trials, on-disk dtype) of a betas file (.hdf5 or .nii.gz), reading headers only."""
    if path.suffix == ".hdf5":
        with open_hdf5(path, "an NSD betas file") as f:
            if "betas" not in f:
                raise StoreError(f"{path} has no dataset 'betas'. {REDOWNLOAD}")
            ds = f["betas"]
            if ds.ndim != 4:
                raise StoreError(f"{path}: 'betas' must be 4-D (trials, Z, Y, X) as h5py reads it, got {ds.shape}.")
            n, z, y, x = ds.shape  # h5py sees MATLAB's X x Y x Z x trials reversed
            return (x, y, z), n, ds.dtype
    with _open_nifti(path) as img:
        shape, dtype = img.shape, img.get_data_dtype()
    if len(shape) != 4:
        raise StoreError(f"{path}: betas must be 4-D (X, Y, Z, trials), got shape {shape}.")
    return tuple(shape[:3]), shape[3], dtype


@contextmanager
def _open_nifti(path: Path) -> Iterator[nib.Nifti1Image]:
    """A NIfTI image whose data is read from one open (possibly gzip) stream.

    Trial blocks are read in increasing order, so the gzip stream only ever seeks
    forward and the file is decompressed once, however many blocks are read.
    """
    require_file(path, "an NSD betas file")
    try:
        with nib.openers.ImageOpener(path) as stream:
            try:
                img = nib.Nifti1Image.from_stream(stream.fobj)
            except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
                raise StoreError(f"{path} is not a readable NIfTI file ({exc}); it may be truncated. "
                                 f"{REDOWNLOAD}") from None
            yield img
    except OSError as exc:
        raise StoreError(f"{path} cannot be read ({exc}). {REDOWNLOAD}") from None


def read_nifti_trials(path: Path, coords: np.ndarray, block_bytes: int = READ_BLOCK_BYTES) -> np.ndarray:
    """(n_trials, V) raw values of a 4-D NIfTI (X, Y, Z, trials) at voxels ``coords`` (V, 3), streamed.

    NIfTI is stored x-fastest, so a block of trials is one contiguous run of the file;
    blocks are read in order and only the selected voxels are kept.
    """
    x, y, z = np.asarray(coords).T
    with _open_nifti(path) as img:
        if len(img.shape) != 4:
            raise StoreError(f"{path}: expected a 4-D (X, Y, Z, trials) volume series, got shape {img.shape}.")
        n_trials = img.shape[3]
        volume_bytes = int(np.prod(img.shape[:3])) * 8  # as float64, in case the header scales the values
        step = max(1, block_bytes // volume_bytes)
        out = None
        try:
            for start in range(0, n_trials, step):
                block = np.asarray(img.dataobj[..., start:start + step])
                if out is None:
                    out = np.empty((n_trials, len(x)), dtype=block.dtype)
                out[start:start + block.shape[3]] = block[x, y, z, :].T
        except (OSError, EOFError, ValueError, zlib.error) as exc:
            raise StoreError(f"{path} could not be read to the end ({exc}); it is truncated or damaged. "
                             f"{REDOWNLOAD}") from None
    return out


def read_hdf5_trials(path: Path, coords: np.ndarray, block_bytes: int = READ_BLOCK_BYTES) -> np.ndarray:
    """(n_trials, V) raw values of an NSD betas HDF5 (h5py view trials, Z, Y, X) at (x, y, z) ``coords``.

    Reads z-slabs of the mask's bounding box and picks the voxels out of each, so the
    columns follow ``coords`` (NIfTI order) even though the file's axes are reversed.
    """
    coords = np.asarray(coords)
    x, y, z = coords.T
    with open_hdf5(path, "an NSD betas file") as f:
        ds = f["betas"]
        n_trials = ds.shape[0]
        out = np.empty((n_trials, len(coords)), dtype=ds.dtype)
        if len(coords) == 0:
            return out
        y0, y1, x0, x1 = y.min(), y.max() + 1, x.min(), x.max() + 1
        slab_bytes = n_trials * (y1 - y0) * (x1 - x0) * ds.dtype.itemsize
        depth = max(1, int(block_bytes // slab_bytes))
        try:
            for z0 in range(z.min(), z.max() + 1, depth):
                inside = (z >= z0) & (z < z0 + depth)
                if not inside.any():
                    continue
                slab = ds[:, z0:z0 + depth, y0:y1, x0:x1]
                out[:, inside] = slab[:, z[inside] - z0, y[inside] - y0, x[inside] - x0]
        except OSError as exc:
            raise StoreError(f"{path} could not be read ({exc}); it is truncated or damaged. {REDOWNLOAD}") from None
    return out


def read_betas(path: Path, coords: np.ndarray) -> np.ndarray:
    """Raw (n_trials, V) values from an NSD betas file, .hdf5 or .nii.gz, in ``coords`` order."""
    if path.suffix == ".hdf5":
        return read_hdf5_trials(path, coords)
    return read_nifti_trials(path, coords)


def to_percent_signal(raw: np.ndarray) -> np.ndarray:
    """int16 x300 betas -> float32 percent signal change (the same float32 arithmetic for every format)."""
    return raw.astype(np.float32) / np.float32(BETA_SCALE)
