"""Writing a store, atomically.

A store is assembled in ``STORE.partial/`` and renamed to ``STORE`` only after
every file is written, validated and check-summed and the manifest is in place.
A process killed mid-write therefore never leaves a directory that looks like a
store; the next write removes the stale ``.partial`` and starts again.

With ``resume=True`` a long write (e.g. NSD preparation) may instead continue a
``.partial`` left by an interrupted run with the *same* ``source``: the caller
records finished steps with :meth:`StoreWriter.checkpoint` and skips them on
the next run. The checkpoints live in ``.partial/.resume/`` and are removed
before the manifest is written, so a resumed store is identical to one written
in a single run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from brainrecon import __version__
from brainrecon.data.store import (BETAS_DTYPES, FORMAT_NAME, FORMAT_VERSION, IMAGES, MANIFEST, NORMALIZATIONS,
                                   STIMULI_TABLE, check_finite, check_subject_tables, is_store, load_npy,
                                   subject_files)
from brainrecon.data.tables import StimulusTable, TrialTable, VoxelTable
from brainrecon.errors import StoreError
from brainrecon.io import (atomic_write_json, atomic_write_text, check_output_dir, exclusive_lock, partial_dir,
                           publish_dir, sha256_file)

RESUME_DIR = ".resume"  # inside STORE.partial; never published


class StoreWriter:
    """Context manager that builds a store and publishes it on success.

    Usage::

        with StoreWriter(out, source={"kind": "simulated", ...}) as w:
            images = w.write_stimuli(table, image_shape=(64, 64, 3))   # fill images[...] in chunks
            betas = w.add_subject("subj01", trials, voxels)           # fill betas[...] in chunks
    """

    def __init__(self, path: str | Path, source: dict, overwrite: bool = False, resume: bool = False):
        self.path = Path(path)
        self.tmp = partial_dir(self.path)
        self.source = source
        self.overwrite = overwrite
        self.resume = resume
        # What a .partial must have been started with to be continued (the source as given now;
        # the caller may still add to self.source, e.g. checksums, before the writer closes).
        self._resume_key = json.loads(json.dumps(source, sort_keys=True))
        self._checkpoints: dict[str, dict] = {}
        self._stimuli: StimulusTable | None = None
        self._subjects: dict[str, dict] = {}
        self._arrays: list[np.memmap] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> "StoreWriter":
        check_output_dir(self.path, "a brainrecon store", is_store, self.overwrite)
        # two writers of one store would interleave their files in one .partial: the second one waits for nothing
        self._lock = exclusive_lock(self.path)
        self._lock.__enter__()
        try:
            return self._start()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise

    def _start(self) -> "StoreWriter":
        check_output_dir(self.path, "a brainrecon store", is_store, self.overwrite)  # as it is now we hold the lock
        if self.resume and self._resumable():
            self._checkpoints = json.loads((self.tmp / RESUME_DIR / "checkpoints.json").read_text())
            return self
        if self.tmp.exists():  # left by an interrupted run
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        if self.resume:
            atomic_write_json(self.tmp / RESUME_DIR / "source.json", self._resume_key)
            atomic_write_json(self.tmp / RESUME_DIR / "checkpoints.json", {})
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            return self._close(exc_type)
        finally:
            self._lock.__exit__(None, None, None)

    def _close(self, exc_type) -> bool:
        if exc_type is not None:
            if self.resume:
                for array in self._arrays:
                    array.flush()
            self._arrays.clear()
            if not self.resume:  # a resumable .partial is kept for the next run to continue
                shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        try:
            self._finish()
        except BaseException:
            # content that fails validation cannot become valid by resuming: discard it
            self._arrays.clear()
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return False

    # -- resuming ------------------------------------------------------------------------------
    def _resumable(self) -> bool:
        try:
            started_with = json.loads((self.tmp / RESUME_DIR / "source.json").read_text())
            json.loads((self.tmp / RESUME_DIR / "checkpoints.json").read_text())
        except (OSError, ValueError):
            return False
        return started_with == self._resume_key

    def checkpoint(self, key: str, info: dict | None = None) -> None:
        """Record that a step is complete (its output flushed); only with ``resume=True``."""
        if not self.resume:
            raise StoreError("checkpoint() needs a StoreWriter opened with resume=True")
        for array in self._arrays:  # the step's data must be on disk before it is marked done
            array.flush()
        self._checkpoints[key] = info or {}
        atomic_write_json(self.tmp / RESUME_DIR / "checkpoints.json", self._checkpoints)

    def checkpointed(self, key: str) -> dict | None:
        """The info recorded for a completed step by this or an interrupted earlier run, else None."""
        return self._checkpoints.get(key)

    # -- content -------------------------------------------------------------------------------
    def write_stimuli(self, table: StimulusTable, image_shape: tuple[int, int, int]) -> np.memmap:
        """Write the stimulus table; return the image array (n, H, W, 3) for the caller to fill."""
        self.write_stimulus_table(table)
        return self.create_images(len(table), image_shape)

    def create_images(self, n_stimuli: int, image_shape: tuple[int, int, int]) -> np.memmap:
        """The image array (n, H, W, 3) uint8 to fill; row i belongs to the table's i-th stimulus."""
        if len(image_shape) != 3 or image_shape[2] != 3:
            raise StoreError(f"image_shape must be (H, W, 3), got {image_shape}")
        return self._memmap(IMAGES, (n_stimuli, *image_shape), np.uint8)

    def write_stimulus_table(self, table: StimulusTable) -> None:
        """Write (or replace, e.g. once captions are known) the stimulus table."""
        self._stimuli = table
        atomic_write_text(self.tmp / STIMULI_TABLE, table.to_jsonl())

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
        array = self._reopen(target, shape, dtype) if self.resume else None
        if array is None:
            array = open_memmap(target, mode="w+", dtype=dtype, shape=shape)
        self._arrays.append(array)
        return array

    @staticmethod
    def _reopen(target: Path, shape: tuple, dtype) -> np.memmap | None:
        """An array left by an interrupted run, if it has the expected shape and dtype."""
        if not target.is_file():
            return None
        try:
            array = open_memmap(target, mode="r+")
        except (ValueError, OSError):
            return None
        if array.shape == tuple(shape) and array.dtype == np.dtype(dtype):
            return array
        del array
        return None

    def _finish(self) -> None:
        for array in self._arrays:
            array.flush()
        self._arrays.clear()
        if self._stimuli is None:
            raise StoreError("a store needs a stimulus table: call write_stimuli() before closing the writer")
        self._validate()
        shutil.rmtree(self.tmp / RESUME_DIR, ignore_errors=True)  # checkpoints are not part of the store
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
        publish_dir(self.tmp, self.path)
