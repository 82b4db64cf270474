"""Writing a store, atomically.

A store is assembled in ``STORE.partial/`` and renamed to ``STORE`` only after
every file is written, validated and check-summed and the manifest is in place.
A process killed mid-write therefore never leaves a directory that looks like a
store; the next write removes the stale ``.partial`` and starts again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from brainrecon import __version__
from brainrecon.data.store import (BETAS_DTYPES, FORMAT_NAME, FORMAT_VERSION, IMAGES, MANIFEST, NORMALIZATIONS,
                                   STIMULI_TABLE, check_finite, check_subject_tables, load_npy, partial_path,
                                   subject_files)
from brainrecon.data.tables import StimulusTable, TrialTable, VoxelTable
from brainrecon.errors import StoreError
from brainrecon.io import atomic_write_json, atomic_write_text, sha256_file


class StoreWriter:
    """Context manager that builds a store and publishes it on success.

    Usage::

        with StoreWriter(out, source={"kind": "simulated", ...}) as w:
            images = w.write_stimuli(table, image_shape=(64, 64, 3))   # fill images[...] in chunks
            betas = w.add_subject("subj01", trials, voxels)           # fill betas[...] in chunks
    """

    def __init__(self, path: str | Path, source: dict, overwrite: bool = False):
        self.path = Path(path)
        self.tmp = partial_path(self.path)
        self.source = source
        self.overwrite = overwrite
        self._stimuli: StimulusTable | None = None
        self._subjects: dict[str, dict] = {}
        self._arrays: list[np.memmap] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> "StoreWriter":
        if self.path.exists() and not self.overwrite:
            raise StoreError(f"{self.path} already exists; choose another --out or pass --overwrite to replace it.")
        if self.tmp.exists():  # left by an interrupted run
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._arrays.clear()
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        self._finish()
        return False

    # -- content -------------------------------------------------------------------------------
    def write_stimuli(self, table: StimulusTable, image_shape: tuple[int, int, int]) -> np.memmap:
        """Write the stimulus table; return the image array (n, H, W, 3) for the caller to fill."""
        if len(image_shape) != 3 or image_shape[2] != 3:
            raise StoreError(f"image_shape must be (H, W, 3), got {image_shape}")
        self._stimuli = table
        atomic_write_text(self.tmp / STIMULI_TABLE, table.to_jsonl())
        return self._memmap(IMAGES, (len(table), *image_shape), np.uint8)

    def add_subject(self, name: str, trials: TrialTable, voxels: VoxelTable, betas_dtype: str = "float32",
                    normalization: str = "none", extra_info: dict | None = None) -> np.memmap:
        """Write a subject's tables; return its betas array (n_trials, n_voxels) for the caller to fill."""
        if betas_dtype not in BETAS_DTYPES:
            raise StoreError(f"betas_dtype must be one of {BETAS_DTYPES}, got {betas_dtype!r}")
        if normalization not in NORMALIZATIONS:
            raise StoreError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        if not name or "/" in name or name.startswith("."):
            raise StoreError(f"invalid subject name {name!r}; use names like 'subj01'")
        files = subject_files(name)
        atomic_write_text(self.tmp / files["trials"], trials.to_csv())
        atomic_write_text(self.tmp / files["voxels"], voxels.to_csv())
        self._subjects[name] = {"trials": len(trials), "voxels": len(voxels), "betas_dtype": betas_dtype,
                                "normalization": normalization, **(extra_info or {})}
        return self._memmap(files["betas"], (len(trials), len(voxels)), np.dtype(betas_dtype))

    def extra_dir(self, name: str) -> Path:
        """A folder for source-specific files (listed and check-summed in the manifest like the rest)."""
        path = self.tmp / "extra" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- internals -----------------------------------------------------------------------------
    def _memmap(self, rel: str, shape: tuple, dtype) -> np.memmap:
        target = self.tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        array = open_memmap(target, mode="w+", dtype=dtype, shape=shape)
        self._arrays.append(array)
        return array

    def _finish(self) -> None:
        for array in self._arrays:
            array.flush()
        self._arrays.clear()
        if self._stimuli is None:
            raise StoreError("a store needs a stimulus table: call write_stimuli() before closing the writer")
        self._validate()
        files = {}
        for file in sorted(p for p in self.tmp.rglob("*") if p.is_file()):
            rel = file.relative_to(self.tmp).as_posix()
            files[rel] = {"bytes": file.stat().st_size, "sha256": sha256_file(file)}
        manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "brainrecon_version": __version__,
                    "source": self.source, "stimuli": {"count": len(self._stimuli)},
                    "subjects": self._subjects, "files": files}
        atomic_write_json(self.tmp / MANIFEST, manifest)
        self._publish()

    def _validate(self) -> None:
        for name in self._subjects:
            files = subject_files(name)
            betas = load_npy(self.tmp / files["betas"])
            trials = TrialTable.read(self.tmp / files["trials"])
            voxels = VoxelTable.read(self.tmp / files["voxels"])
            check_subject_tables(self.tmp, name, betas, trials, voxels, self._stimuli)
            check_finite(betas, self.path / files["betas"])

    def _publish(self) -> None:
        if self.path.exists():
            old = self.path.with_name(f"{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(old)
        else:
            os.replace(self.tmp, self.path)
