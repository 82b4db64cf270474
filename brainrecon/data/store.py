"""The brainrecon data store: one on-disk format that every source writes and every model reads.

Layout (format version 1; see docs/store-format.md)::

    STORE/
      manifest.json                 format, version, source, per-subject summary, file sizes + sha256
      stimuli/stimuli.jsonl         stimulus id -> captions (+ source id, e.g. the NSD 73k index)
      stimuli/images.npy            uint8 (n_stimuli, H, W, 3), row i = i-th line of stimuli.jsonl
      subjects/<name>/betas.npy     float16/float32 (n_trials, n_voxels), memory-mapped
      subjects/<name>/trials.csv    trial, stimulus_id, session, repeat, split
      subjects/<name>/voxels.csv    voxel, i, j, k, roi
      extra/...                     source-specific files (e.g. the simulator's ground truth)

Plain .npy is used for arrays because it memory-maps with no dependency and no
chunking decisions, and can be filled row-block by row-block while streaming.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np

from brainrecon.errors import StoreError
from brainrecon.data.tables import StimulusTable, TrialTable, VoxelTable
from brainrecon.io import partial_dir, sha256_file

FORMAT_NAME = "brainrecon-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STIMULI_TABLE = "stimuli/stimuli.jsonl"
IMAGES = "stimuli/images.npy"
BETAS_DTYPES = ("float16", "float32")
# "none": raw betas; SubjectData z-scores each session with its training trials' statistics.
# "session-zscore-train": already z-scored that way when written; used as stored.
# "voxel-zscore-train": z-scored per voxel with all training trials' statistics (for datasets
#   whose test runs hold no training trials, e.g. Kamitani-lab BData); used as stored.
# "session-zscore-all": z-scored with statistics that include test trials (the MindEye2
#   notebook's convention). Readable, but evaluation flags it as a leak.
NORMALIZATIONS = ("none", "session-zscore-train", "voxel-zscore-train", "session-zscore-all")
REMAKE = "Re-create the store with `brainrecon simulate` or `brainrecon nsd prepare`."


def subject_files(name: str) -> dict[str, str]:
    base = f"subjects/{name}"
    return {"betas": f"{base}/betas.npy", "trials": f"{base}/trials.csv", "voxels": f"{base}/voxels.csv"}


# ---------------------------------------------------------------------------------------------
# Validation shared by the writer (before a store is published) and the reader (on open).


def load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise StoreError(f"{path} is missing; the store is incomplete. {REMAKE}") from None
    except (ValueError, OSError) as exc:
        raise StoreError(f"{path} is not a readable .npy array ({exc}); it may be truncated. {REMAKE}") from None


def check_subject_tables(root: Path, name: str, betas: np.ndarray, trials: TrialTable,
                         voxels: VoxelTable, stimuli: StimulusTable) -> None:
    files = subject_files(name)
    where = root / files["betas"]
    if betas.ndim != 2:
        raise StoreError(f"{where} must be 2-D (trials x voxels), got shape {betas.shape}. {REMAKE}")
    if str(betas.dtype) not in BETAS_DTYPES:
        raise StoreError(f"{where} has dtype {betas.dtype}; the store holds float16 or float32 betas. {REMAKE}")
    if betas.shape[0] != len(trials):
        raise StoreError(f"{where} has {betas.shape[0]} rows but {root / files['trials']} lists "
                         f"{len(trials)} trials; they must match one to one. {REMAKE}")
    if betas.shape[1] != len(voxels):
        raise StoreError(f"{where} has {betas.shape[1]} voxel columns but {root / files['voxels']} lists "
                         f"{len(voxels)} voxels; they must match one to one. {REMAKE}")
    unknown = np.setdiff1d(trials.stimulus_id, stimuli.stimulus_id)
    if unknown.size:
        raise StoreError(f"{root / files['trials']} refers to {unknown.size} stimulus id(s) absent from "
                         f"{root / STIMULI_TABLE} (e.g. {unknown[:5].tolist()}). {REMAKE}")
    check_no_test_in_train(trials, root / files["trials"])


def check_no_test_in_train(trials: TrialTable, where: Path | str) -> None:
    """The split is by image: no stimulus may appear in both training and test trials."""
    leaked = np.intersect1d(trials.stimulus_id[trials.is_test], trials.stimulus_id[~trials.is_test])
    if leaked.size:
        raise StoreError(f"{where}: {leaked.size} test stimulus id(s) also appear among the training trials "
                         f"(e.g. {leaked[:5].tolist()}). The split must be by image; fix the split and "
                         f"re-create the store.")


def check_finite(betas: np.ndarray, where: Path | str, rows_per_chunk: int = 4096) -> None:
    """Scan the betas in row blocks (so a memory-mapped array is never loaded whole)."""
    for start in range(0, betas.shape[0], rows_per_chunk):
        block = np.asarray(betas[start:start + rows_per_chunk])
        bad = ~np.isfinite(block)
        if bad.any():
            trial, voxel = np.argwhere(bad)[0]
            total = int(bad.sum())
            raise StoreError(
                f"{where} contains NaN or Inf betas ({total}+ values; first at trial {start + trial}, voxel "
                f"{voxel}). Exclude those voxels at preparation (e.g. a tighter ROI mask) or fix the source "
                f"data, then re-create the store.")


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class BrainSet:
    """A block of brain responses with the stimulus each row belongs to."""

    betas: np.ndarray  # (n, n_voxels) float32
    stimulus_ids: np.ndarray  # (n,) int64
    n_repeats: np.ndarray  # (n,) int64: trials averaged into each row (1 for single trials)

    def __len__(self) -> int:
        return len(self.stimulus_ids)


class SubjectData:
    """One subject's betas, trial table and voxel table, with honest normalisation.

    Betas are z-scored per session with the mean and standard deviation of that
    session's *training* trials only, so no statistic of the test set reaches a model.
    """

    def __init__(self, root: Path, name: str, info: dict, stimuli: StimulusTable):
        files = subject_files(name)
        self.root, self.name = root, name
        self.normalization = info.get("normalization", "none")
        self.betas_path = root / files["betas"]
        self.trials = TrialTable.read(root / files["trials"])
        self.voxels = VoxelTable.read(root / files["voxels"])
        self.raw_betas = load_npy(self.betas_path)
        check_subject_tables(root, name, self.raw_betas, self.trials, self.voxels, stimuli)
        check_finite(self.raw_betas, self.betas_path)

    def __repr__(self) -> str:
        return (f"SubjectData({self.name!r}, trials={len(self.trials)}, voxels={self.n_voxels}, "
                f"train={int((~self.trials.is_test).sum())}, test={int(self.trials.is_test.sum())})")

    @property
    def n_voxels(self) -> int:
        return self.raw_betas.shape[1]

    @property
    def sessions(self) -> np.ndarray:
        return np.unique(self.trials.session)

    @cached_property
    def session_stats(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per session: (mean, std) over its training trials, one value per voxel."""
        stats = {}
        is_train = ~self.trials.is_test
        for session in self.sessions.tolist():
            rows = np.flatnonzero((self.trials.session == session) & is_train)
            if rows.size < 2:
                raise StoreError(
                    f"{self.root / subject_files(self.name)['trials']}: session {session} has {rows.size} "
                    f"training trial(s); per-session z-scoring needs at least 2. Drop that session at "
                    f"preparation or store pre-normalised betas.")
            block = np.asarray(self.raw_betas[rows], dtype=np.float64)
            std = block.std(axis=0)
            std[std < 1e-8] = 1.0  # constant voxels map to 0 rather than NaN
            stats[session] = (block.mean(axis=0).astype(np.float32), std.astype(np.float32))
        return stats

    def read_trials(self, rows: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Betas of the given trial rows as float32, z-scored unless the store already is."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")  # memmaps read fastest in increasing order
        block = np.empty((rows.size, self.n_voxels), dtype=np.float32)
        block[order] = self.raw_betas[rows[order]]
        if normalize and self.normalization == "none":
            sessions = self.trials.session[rows]
            for session in np.unique(sessions).tolist():
                mean, std = self.session_stats[session]
                hit = sessions == session
                block[hit] = (block[hit] - mean) / std
        return block

    def train_rows(self, sessions: list[int] | None = None) -> np.ndarray:
        keep = ~self.trials.is_test
        if sessions is not None:
            keep &= np.isin(self.trials.session, sessions)
        return np.flatnonzero(keep)

    def train(self, sessions: list[int] | None = None) -> BrainSet:
        """Single training trials (each repeat its own row), optionally from some sessions only."""
        rows = self.train_rows(sessions)
        return BrainSet(self.read_trials(rows), self.trials.stimulus_id[rows], np.ones(rows.size, np.int64))

    def test(self, average_repeats: bool = True, min_repeats: int = 1) -> BrainSet:
        """Test responses; by default one row per stimulus, averaging its available repeats."""
        rows = np.flatnonzero(self.trials.is_test)
        if rows.size == 0:
            raise StoreError(f"subject {self.name} has no test trials in {self.root}; evaluation needs the shared "
                             f"test images. Prepare more sessions (NSD) or use a subject that saw them.")
        betas = self.read_trials(rows)
        ids = self.trials.stimulus_id[rows]
        if not average_repeats:
            return BrainSet(betas, ids, np.ones(rows.size, np.int64))
        unique, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        sums = np.zeros((unique.size, self.n_voxels), dtype=np.float64)
        np.add.at(sums, inverse, betas)
        keep = counts >= min_repeats
        if not keep.any():
            raise StoreError(f"subject {self.name}: no test stimulus has {min_repeats} or more repeats; "
                             f"lower min_repeats (most seen: {counts.max()}).")
        mean = (sums / counts[:, None]).astype(np.float32)
        return BrainSet(mean[keep], unique[keep], counts[keep])

    def iter_batches(self, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                     sessions: list[int] | None = None) -> Iterator[BrainSet]:
        """Training trials in batches, read from disk batch by batch (memory stays bounded)."""
        rows = self.train_rows(sessions)
        if shuffle:
            rows = np.random.default_rng(seed).permutation(rows)
        for start in range(0, rows.size, batch_size):
            chunk = rows[start:start + batch_size]
            yield BrainSet(self.read_trials(chunk), self.trials.stimulus_id[chunk], np.ones(chunk.size, np.int64))


class Store:
    """An opened store. Use :func:`open_store` to get one."""

    def __init__(self, root: Path, manifest: dict):
        self.root, self.manifest = root, manifest
        self.stimuli = StimulusTable.read(root / STIMULI_TABLE)
        self.images = load_npy(root / IMAGES)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise StoreError(f"{root / IMAGES} must be uint8 (n, H, W, 3), got {self.images.dtype} "
                             f"{self.images.shape}. {REMAKE}")
        if len(self.images) != len(self.stimuli):
            raise StoreError(f"{root / IMAGES} has {len(self.images)} images but {root / STIMULI_TABLE} lists "
                             f"{len(self.stimuli)} stimuli. {REMAKE}")
        if len(np.unique(self.stimuli.stimulus_id)) != len(self.stimuli):
            raise StoreError(f"{root / STIMULI_TABLE} lists a stimulus id more than once. {REMAKE}")
        self._subjects: dict[str, SubjectData] = {}

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, subjects={self.subjects}, stimuli={len(self.stimuli)})"

    @property
    def manifest_sha256(self) -> str:
        """The store's identity: the manifest lists every file's sha256, so a re-made or edited store differs."""
        return sha256_file(self.root / MANIFEST)

    @property
    def subjects(self) -> list[str]:
        return sorted(self.manifest["subjects"])

    @property
    def source(self) -> dict:
        return self.manifest.get("source", {})

    def subject(self, name: str) -> SubjectData:
        """Open a subject; its tables and betas (shapes, NaN/Inf, split) are validated on first access."""
        if name not in self.manifest["subjects"]:
            raise StoreError(f"subject {name!r} is not in {self.root}; it holds {', '.join(self.subjects)}")
        if name not in self._subjects:
            self._subjects[name] = SubjectData(self.root, name, self.manifest["subjects"][name], self.stimuli)
        return self._subjects[name]

    def images_for(self, stimulus_ids: np.ndarray) -> np.ndarray:
        rows = self.stimuli.rows(stimulus_ids)
        order = np.argsort(rows, kind="stable")
        out = np.empty((rows.size, *self.images.shape[1:]), dtype=np.uint8)
        out[order] = self.images[rows[order]]
        return out

    def captions_for(self, stimulus_ids: np.ndarray) -> list[list[str]]:
        return [self.stimuli.captions[r] for r in self.stimuli.rows(stimulus_ids).tolist()]

    def extra_path(self, relpath: str) -> Path:
        path = self.root / "extra" / relpath
        if not path.exists():
            raise StoreError(f"{path} is missing: this store (source {self.source.get('kind', '?')!r}) has no "
                             f"{relpath!r}.")
        return path

    def verify_checksums(self) -> None:
        """Recompute every file's sha256 and compare with the manifest (reads every byte)."""
        for rel, meta in self.manifest["files"].items():
            if sha256_file(self.root / rel) != meta["sha256"]:
                raise StoreError(f"{self.root / rel} does not match the checksum in {self.root / MANIFEST}: the "
                                 f"file changed or is corrupt. {REMAKE}")


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{path} is missing, so {root} is not a complete brainrecon store. {REMAKE}") from None
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path} is not valid JSON ({exc}). {REMAKE}") from None
    if manifest.get("format") != FORMAT_NAME:
        raise StoreError(f"{path} is not a brainrecon store manifest (format {manifest.get('format')!r}).")
    if manifest.get("version") != FORMAT_VERSION:
        raise StoreError(f"{root} is store format version {manifest.get('version')}, but this brainrecon reads "
                         f"version {FORMAT_VERSION}. Install a matching brainrecon or re-create the store.")
    return manifest


def is_store(path: Path) -> bool:
    """Whether a folder holds a brainrecon store (its manifest names the format)."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def open_store(path: str | Path, verify_checksums: bool = False) -> Store:
    """Open and validate a store.

    Structure, file sizes and stimulus tables are checked here; each subject's
    shapes, NaN/Inf and split are checked when it is first accessed. With
    ``verify_checksums`` every byte is re-hashed against the manifest.
    """
    root = Path(path)
    if not root.is_dir():
        hint = ""
        if partial_dir(root).exists():
            hint = (f" An unfinished write was found at {partial_dir(root)} (the writing process was "
                    f"interrupted); run the command that writes the store again.")
        raise StoreError(f"no brainrecon store at {root}.{hint} Create one with `brainrecon simulate --out "
                         f"{root}` or `brainrecon nsd prepare --out {root}`.")
    manifest = read_manifest(root)
    for rel, meta in manifest.get("files", {}).items():
        file = root / rel
        if not file.is_file():
            raise StoreError(f"{file} is listed in {root / MANIFEST} but missing. {REMAKE}")
        if file.stat().st_size != meta["bytes"]:
            raise StoreError(f"{file} has {file.stat().st_size} bytes but {root / MANIFEST} records "
                             f"{meta['bytes']}: it was truncated or changed. {REMAKE}")
    store = Store(root, manifest)
    if verify_checksums:
        store.verify_checksums()
    return store
