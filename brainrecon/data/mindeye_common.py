"""What the MindEye1 and MindEye2 file readers share: constants, checks, the summary and tar reading.

Used by :mod:`brainrecon.data.mindeye1_files` and :mod:`brainrecon.data.mindeye2_files`, which import
the preprocessed NSD files released with MindEye1 (Scotti et al., NeurIPS 2023) and MindEye2
(Scotti et al., ICML 2024) into a brainrecon store. Both follow the store conventions of
:mod:`brainrecon.data.nsd` (docs/nsd.md, "MindEye published files"): ``stimulus_id`` = the 0-based NSD
73k index (``source_id`` its string), subject ``subjAA``, split "test" = the shared-1000 images (as in
both papers, §3), captions empty (the files hold none), one trial-table row per single-trial beta vector.

Normalisation is recorded as ``session-zscore-all`` for both: the betas are already normalised by
MindEye's own pipelines, so the store reader uses them as stored, and because the statistics behind
them cannot be shown to exclude the test trials, evaluation flags the possible leak instead of the
store claiming a train-only normalisation nobody can verify.
"""

from __future__ import annotations

import io
import re
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from brainrecon.data.nsd_files import require_file
from brainrecon.errors import StoreError
from brainrecon.io import sha256_file

NORMALIZATION = "session-zscore-all"
ROI = "nsdgeneral"


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
