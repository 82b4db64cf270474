"""The store's small tables: trials, voxels and stimuli.

Trial and voxel tables are CSV (readable, diffable, any tool opens them);
the stimulus table is JSON Lines because captions are lists of free text.
Each table is held in memory as numpy columns.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainrecon.errors import StoreError

SPLITS = ("train", "test")


def _read_csv(path: Path, required: tuple[str, ...]) -> dict[str, list[str]]:
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise StoreError(f"{path} lacks column(s) {', '.join(missing)}; expected columns "
                                 f"{', '.join(required)}. Re-create the store with brainrecon.")
            rows = list(reader)
    except FileNotFoundError:
        raise StoreError(f"{path} is missing; the store is incomplete. Re-create it.") from None
    return {c: [r[c] for r in rows] for c in required}


def _int_column(path: Path, name: str, values: list[str]) -> np.ndarray:
    try:
        return np.asarray([int(v) for v in values], dtype=np.int64)
    except ValueError:
        raise StoreError(f"{path}: column {name!r} must hold integers") from None


def _csv_text(columns: dict[str, np.ndarray]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns.keys())
    writer.writerows(zip(*[c.tolist() for c in columns.values()]))
    return out.getvalue()


def repeat_index(ids: np.ndarray) -> np.ndarray:
    """0-based count of earlier presentations of the same id, for each position."""
    seen: dict[int, int] = {}
    out = np.empty(len(ids), dtype=np.int64)
    for t, image in enumerate(ids.tolist()):
        out[t] = seen.get(image, 0)
        seen[image] = out[t] + 1
    return out


@dataclass(frozen=True)
class TrialTable:
    """One row per trial, in the order of the rows of the subject's betas."""

    stimulus_id: np.ndarray  # int64, key into the stimulus table
    session: np.ndarray  # int64, 1-based session number
    repeat: np.ndarray  # int64, 0-based: how many times this stimulus was seen before
    split: np.ndarray  # str, "train" or "test"

    COLUMNS = ("trial", "stimulus_id", "session", "repeat", "split")

    def __post_init__(self):
        n = len(self.stimulus_id)
        if not (len(self.session) == len(self.repeat) == len(self.split) == n):
            raise ValueError("trial table columns must all have the same length")

    def __len__(self) -> int:
        return len(self.stimulus_id)

    @property
    def is_test(self) -> np.ndarray:
        return self.split == "test"

    def to_csv(self) -> str:
        return _csv_text({"trial": np.arange(len(self)), "stimulus_id": self.stimulus_id,
                          "session": self.session, "repeat": self.repeat, "split": self.split})

    @classmethod
    def read(cls, path: Path) -> "TrialTable":
        cols = _read_csv(path, cls.COLUMNS)
        trial = _int_column(path, "trial", cols["trial"])
        if not np.array_equal(trial, np.arange(len(trial))):
            raise StoreError(f"{path}: column 'trial' must count 0, 1, 2, ... in row order")
        split = np.asarray(cols["split"], dtype=object).astype(str)
        bad = sorted(set(split.tolist()) - set(SPLITS))
        if bad:
            raise StoreError(f"{path}: split values {bad} are not 'train' or 'test'")
        return cls(stimulus_id=_int_column(path, "stimulus_id", cols["stimulus_id"]),
                   session=_int_column(path, "session", cols["session"]),
                   repeat=_int_column(path, "repeat", cols["repeat"]), split=split)


@dataclass(frozen=True)
class VoxelTable:
    """One row per voxel (column of the betas). Coordinates are -1 when unknown."""

    ijk: np.ndarray  # (V, 3) int64 voxel indices in the source volume, or -1
    roi: np.ndarray  # str label per voxel ("" when unknown)

    COLUMNS = ("voxel", "i", "j", "k", "roi")

    def __len__(self) -> int:
        return len(self.roi)

    def to_csv(self) -> str:
        return _csv_text({"voxel": np.arange(len(self)), "i": self.ijk[:, 0], "j": self.ijk[:, 1],
                          "k": self.ijk[:, 2], "roi": self.roi})

    @classmethod
    def unknown(cls, n_voxels: int, roi: np.ndarray | None = None) -> "VoxelTable":
        roi = np.full(n_voxels, "", dtype=object).astype(str) if roi is None else np.asarray(roi).astype(str)
        return cls(ijk=np.full((n_voxels, 3), -1, dtype=np.int64), roi=roi)

    @classmethod
    def read(cls, path: Path) -> "VoxelTable":
        cols = _read_csv(path, cls.COLUMNS)
        ijk = np.stack([_int_column(path, c, cols[c]) for c in ("i", "j", "k")], axis=1) if cols["i"] \
            else np.zeros((0, 3), dtype=np.int64)
        return cls(ijk=ijk, roi=np.asarray(cols["roi"], dtype=object).astype(str))


@dataclass(frozen=True)
class StimulusTable:
    """Stimulus id -> row of the image array, and its captions."""

    stimulus_id: np.ndarray  # int64, unique
    captions: list[list[str]]
    source_id: list[str] = field(default_factory=list)  # e.g. the NSD 73k index, "" if none
    _row: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if not self.source_id:
            object.__setattr__(self, "source_id", [""] * len(self.stimulus_id))
        object.__setattr__(self, "_row", {int(s): i for i, s in enumerate(self.stimulus_id.tolist())})

    def __len__(self) -> int:
        return len(self.stimulus_id)

    def rows(self, stimulus_ids: np.ndarray) -> np.ndarray:
        """Rows of the image array for the given stimulus ids."""
        try:
            return np.asarray([self._row[int(s)] for s in np.asarray(stimulus_ids).tolist()], dtype=np.int64)
        except KeyError as exc:
            raise StoreError(f"stimulus id {exc.args[0]} is not in the stimulus table") from None

    def to_jsonl(self) -> str:
        return "".join(json.dumps({"stimulus_id": int(s), "source_id": src, "captions": caps}) + "\n"
                       for s, src, caps in zip(self.stimulus_id.tolist(), self.source_id, self.captions))

    @classmethod
    def read(cls, path: Path) -> "StimulusTable":
        ids, caps, src = [], [], []
        try:
            with open(path) as handle:
                for line_no, line in enumerate(handle, start=1):
                    try:
                        record = json.loads(line)
                        ids.append(int(record["stimulus_id"]))
                        caps.append([str(c) for c in record.get("captions", [])])
                        src.append(str(record.get("source_id", "")))
                    except (ValueError, KeyError, TypeError):
                        raise StoreError(f"{path}, line {line_no}: expected a JSON object with an integer "
                                         "'stimulus_id' and a list of 'captions'") from None
        except FileNotFoundError:
            raise StoreError(f"{path} is missing; the store is incomplete. Re-create it.") from None
        return cls(stimulus_id=np.asarray(ids, dtype=np.int64), captions=caps, source_id=src)
