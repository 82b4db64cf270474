"""Kamitani-lab BData files (e.g. Generic Object Decoding, `Subject1.h5`) as a brainrecon source.

BData (bdpy) is HDF5 with ``/dataset`` (samples x columns: voxels and metadata
columns), ``/metadata/key`` and ``/metadata/description`` (bytes), and
``/metadata/value`` (n_keys x n_columns): a flag (1, else NaN) marking the columns a
key selects (``VoxelData``, ``ROI_VC``, ``DataType``, ``stimulus_id``, ...) or a value
per column (``voxel_x``/``y``/``z``).

Conventions (recorded in the manifest):

- samples with DataType 1 (training perception) are ``train``, DataType 2 (test
  perception) ``test``; imagery (3) and anything else is left out;
- ``stimulus_id`` (float: WordNet id + image number / 1e6, e.g. 1518878.005958) becomes
  the integer ``round(id * 1e6)``; its source id is ``n01518878_5958``, the image file name;
- ``session`` is the ``Session`` column if the file has one, else ``Run``, else 1;
- GOD's test runs hold no training samples, so per-session training statistics do not
  exist for them: betas are z-scored per voxel with *all training samples'* mean and sd
  at import (``normalization="voxel-zscore-train"``); no test statistic is used.

Stimulus images are not in the BData file (GOD distributes them on request): pass the
folder that holds them, named by source id (``n01518878_5958.JPEG``, any extension).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from brainrecon.data.sources import SourceData, SubjectSource, describe_inputs, write_source
from brainrecon.data.tables import StimulusTable, TrialTable, VoxelTable, repeat_index
from brainrecon.errors import StoreError

DATA_TYPES = {1: "train", 2: "test"}
REQUIRED_KEYS = ("VoxelData", "DataType", "stimulus_id")


class BData:
    """Read-only view of a BData HDF5 file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.file = h5py.File(self.path, "r")
            self.dataset = self.file["dataset"]
            keys = [k.decode() if isinstance(k, bytes) else str(k) for k in self.file["metadata/key"][()]]
            self.values = np.asarray(self.file["metadata/value"][()], dtype=np.float64)
        except FileNotFoundError:
            raise StoreError(f"{self.path} does not exist; pass the BData file (e.g. Subject1.h5).") from None
        except (OSError, KeyError) as exc:
            raise StoreError(f"{self.path} is not a readable BData file (needs /dataset, /metadata/key and "
                             f"/metadata/value): {exc}") from None
        self.keys = {k: i for i, k in enumerate(keys)}
        if self.values.shape != (len(keys), self.dataset.shape[1]):
            raise StoreError(f"{self.path}: /metadata/value has shape {self.values.shape} but there are "
                             f"{len(keys)} keys and {self.dataset.shape[1]} dataset columns.")
        missing = [k for k in REQUIRED_KEYS if k not in self.keys]
        if missing:
            raise StoreError(f"{self.path} lacks metadata key(s) {', '.join(missing)}; it is not a perception "
                             f"BData file of the GOD kind.")

    def columns(self, key: str) -> np.ndarray:
        """Indices of the columns a flag key selects."""
        if key not in self.keys:
            raise StoreError(f"{self.path} has no metadata key {key!r}; available: {', '.join(sorted(self.keys))}")
        return np.flatnonzero(self.values[self.keys[key]] == 1)

    def column_values(self, key: str, columns: np.ndarray) -> np.ndarray:
        return self.values[self.keys[key], columns]

    def single_column(self, key: str) -> np.ndarray:
        cols = self.columns(key)
        if cols.size != 1:
            raise StoreError(f"{self.path}: metadata key {key!r} selects {cols.size} columns, expected 1.")
        return np.asarray(self.dataset[:, int(cols[0])])


def image_name(stimulus_id: float) -> str:
    wnid, number = divmod(int(round(stimulus_id * 1e6)), 1_000_000)
    return f"n{wnid:08d}_{number}"


def _find_image(folder: Path, name: str) -> Path:
    matches = sorted(folder.glob(f"{name}.*"))
    if not matches:
        raise StoreError(f"no image named {name}.* in {folder}; GOD images come from the dataset's authors on "
                         f"request. Put every stimulus image there, named by its ImageNet id.")
    return matches[0]


def _load_image(path: Path, size: int) -> np.ndarray:
    """Centre square crop, then bicubic resize (the images are photographs of varied aspect)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        return np.asarray(img, dtype=np.uint8)


def read_bdata(path: str | Path, images: str | Path, *, subject: str = "subj01", roi: str = "ROI_VC",
               image_size: int = 256, block_rows: int = 512) -> SourceData:
    """Plan a store from one BData file: everything is checked here, data is read lazily in blocks."""
    if image_size < 1:
        raise StoreError(f"image_size must be a positive number of pixels (the stored images' side, --image-size; "
                         f"default 256), got {image_size}")
    data, images = BData(Path(path)), Path(images)
    if not images.is_dir():
        raise StoreError(f"image folder {images} does not exist; pass the folder of GOD stimulus images.")
    voxels = np.intersect1d(data.columns("VoxelData"), data.columns(roi))
    if voxels.size == 0:
        raise StoreError(f"{data.path}: no voxel column is in {roi}; choose another --roi (e.g. ROI_VC, ROI_V1).")
    data_type = data.single_column("DataType")
    rows = np.flatnonzero(np.isin(data_type, list(DATA_TYPES)))
    ids_float = data.single_column("stimulus_id")[rows]
    split = np.asarray([DATA_TYPES[int(t)] for t in data_type[rows]])
    session_key = next((k for k in ("Session", "Run") if k in data.keys), None)
    session = (data.single_column(session_key)[rows].astype(np.int64) if session_key
               else np.ones(rows.size, np.int64))
    stimulus_id = np.round(ids_float * 1e6).astype(np.int64)
    if not (split == "test").any():
        raise StoreError(f"{data.path} has no test-perception samples (DataType 2), so there is no test set.")
    unique, first = np.unique(stimulus_id, return_index=True)
    names = [image_name(ids_float[i]) for i in first]
    image_files = [_find_image(images, name) for name in names]  # fail before writing anything
    trials = TrialTable(stimulus_id, session, repeat_index(stimulus_id), split)
    ijk = np.stack([data.column_values(k, voxels) if k in data.keys else np.full(voxels.size, -1)
                    for k in ("voxel_x", "voxel_y", "voxel_z")], axis=1)
    voxel_table = VoxelTable(np.nan_to_num(ijk, nan=-1).astype(np.int64), np.full(voxels.size, roi))
    mean, std = _training_stats(data, rows[split == "train"], voxels, block_rows)

    def image_blocks():
        for start in range(0, len(names), 64):
            yield start, np.stack([_load_image(p, image_size) for p in image_files[start:start + 64]])

    def beta_blocks():
        for start in range(0, rows.size, block_rows):
            block = np.asarray(data.dataset[rows[start:start + block_rows]][:, voxels], dtype=np.float64)
            yield start, ((block - mean) / std).astype(np.float32)

    source = {"kind": "bdata", "file": str(data.path.resolve()),
              "inputs": describe_inputs([data.path] + image_files),
              "options": {"subject": subject, "roi": roi, "image_size": image_size},
              "conventions": {"split": "DataType 1 = train, 2 = test; others left out",
                              "stimulus_id": "round(BData stimulus_id * 1e6)", "session": session_key or "1",
                              "normalization": "voxel z-score with all training samples' statistics"}}
    stimuli = StimulusTable(unique, [[] for _ in names], names)
    subject_source = SubjectSource(subject, trials, voxel_table, beta_blocks, normalization="voxel-zscore-train")
    return SourceData(source, stimuli, (image_size, image_size, 3), image_blocks, [subject_source])


def _training_stats(data: BData, rows: np.ndarray, voxels: np.ndarray, block_rows: int):
    total = np.zeros(voxels.size)
    squares = np.zeros(voxels.size)
    for start in range(0, rows.size, block_rows):
        block = np.asarray(data.dataset[rows[start:start + block_rows]][:, voxels], dtype=np.float64)
        if not np.isfinite(block).all():
            raise StoreError(f"{data.path}: NaN or Inf in the voxel data of training samples; exclude those "
                             f"voxels (choose another --roi) or fix the file.")
        total += block.sum(0)
        squares += (block ** 2).sum(0)
    mean = total / rows.size
    std = np.sqrt(np.maximum(squares / rows.size - mean ** 2, 0))
    std[std < 1e-8] = 1.0
    return mean, std


def import_bdata(path: str | Path, images: str | Path, out: str | Path, *, subject: str = "subj01",
                 roi: str = "ROI_VC", image_size: int = 256, overwrite: bool = False,
                 progress: bool = True) -> Path:
    """Write one BData file (one subject) to a store at ``out``."""
    return write_source(read_bdata(path, images, subject=subject, roi=roi, image_size=image_size), out,
                        overwrite=overwrite, progress=progress)


def make_fake_bdata(path: str | Path, images: str | Path, *, n_voxels: int = 40, n_train: int = 24,
                    n_test: int = 6, test_repeats: int = 3, seed: int = 0) -> None:
    """A schema-exact miniature GOD BData file plus its stimulus images, for tests."""
    rng = np.random.default_rng(seed)
    wnids = rng.choice(np.arange(1_000_000, 9_999_999), size=n_train + n_test, replace=False)
    ids = wnids + rng.integers(1, 99999, size=wnids.size) / 1e6
    train, test = ids[:n_train], ids[n_train:]
    samples = [(1, s, 1 + i // 8) for i, s in enumerate(train)]
    samples += [(2, s, 10 + r) for r in range(test_repeats) for s in rng.permutation(test)]
    samples += [(3, test[0], 20)]  # an imagery sample, which the reader leaves out
    n = len(samples)
    keys = ["VoxelData", "ROI_VC", "ROI_V1", "voxel_x", "voxel_y", "voxel_z", "DataType", "stimulus_id", "Run"]
    n_cols = n_voxels + 3
    value = np.full((len(keys), n_cols), np.nan)
    value[0, :n_voxels] = 1
    value[1, :n_voxels] = 1
    value[2, : n_voxels // 2] = 1
    for k in (3, 4, 5):  # voxel_x, voxel_y, voxel_z
        value[k, :n_voxels] = rng.integers(0, 64, n_voxels)
    value[6, n_voxels], value[7, n_voxels + 1], value[8, n_voxels + 2] = 1, 1, 1
    dataset = np.empty((n, n_cols))
    dataset[:, :n_voxels] = rng.normal(size=(n, n_voxels)) * 3 + 5
    dataset[:, n_voxels:] = np.asarray(samples, dtype=np.float64)
    with h5py.File(path, "w") as f:
        f["dataset"] = dataset
        f["metadata/key"] = np.asarray([k.encode() for k in keys])
        f["metadata/description"] = np.asarray([f"fake {k}".encode() for k in keys])
        f["metadata/value"] = value
    images = Path(images)
    images.mkdir(parents=True, exist_ok=True)
    for s in ids:
        pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{image_name(s)}.JPEG", quality=95)
