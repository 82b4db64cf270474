"""The source interface: how a dataset becomes a store.

A new dataset (THINGS-fMRI, BOLD5000, Kamitani-lab BData, ...) is a small module
with one function that reads and checks its files and returns a :class:`SourceData`:
the stimulus table, the subjects' trial and voxel tables, and *generators* of image
and beta blocks. :func:`write_source` streams those blocks into a store through the
atomic :class:`~brainrecon.data.writer.StoreWriter`, so a reader never holds a
dataset in memory and never deals with the store's files itself.

Rules for a source module (the NSD and MindEye readers follow them too):

1. Read and check everything that can be checked *before* returning; raise
   :class:`~brainrecon.errors.StoreError` naming the file and the fix.
2. Split by image: a stimulus is ``train`` or ``test`` for every trial it appears in.
3. Declare the betas' normalisation honestly (``none`` when raw; see store.NORMALIZATIONS).
4. Put everything needed to reproduce the store in ``source``: input files (with sizes;
   :func:`describe_inputs` adds sha256), options, and conventions chosen.
5. Test with schema-exact fake files built by a helper in the same module.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from brainrecon.data.tables import StimulusTable, TrialTable, VoxelTable
from brainrecon.data.writer import StoreWriter
from brainrecon.io import sha256_file

Blocks = Callable[[], Iterator[tuple[int, np.ndarray]]]  # yields (first row, block of rows)


@dataclass(frozen=True)
class SubjectSource:
    name: str
    trials: TrialTable
    voxels: VoxelTable
    betas: Blocks  # blocks of float rows (n, n_voxels), covering every trial once, in trial order
    normalization: str = "none"
    betas_dtype: str = "float32"


@dataclass(frozen=True)
class SourceData:
    source: dict  # provenance for the manifest
    stimuli: StimulusTable
    image_shape: tuple[int, int, int]
    images: Blocks  # blocks of uint8 images (n, H, W, 3), in stimulus-table order
    subjects: list[SubjectSource]


def describe_inputs(paths: list[Path], root: Path | None = None) -> dict[str, dict]:
    """Size and sha256 of each input file, keyed by its path (relative to ``root`` when given)."""
    out = {}
    for path in paths:
        key = path.relative_to(root).as_posix() if root else str(path)
        out[key] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def write_source(data: SourceData, out: str | Path, overwrite: bool = False, progress: bool = True) -> Path:
    """Stream a source's images and betas into a new store at ``out`` (atomically)."""
    bar = lambda it, desc: tqdm(it, desc=desc, file=sys.stderr, disable=not progress, leave=False)  # noqa: E731
    with StoreWriter(out, source=data.source, overwrite=overwrite) as writer:
        images = writer.write_stimuli(data.stimuli, data.image_shape)
        _fill(images, bar(data.images(), "images"), "images")
        for subject in data.subjects:
            betas = writer.add_subject(subject.name, subject.trials, subject.voxels, subject.betas_dtype,
                                       subject.normalization)
            _fill(betas, bar(subject.betas(), subject.name), f"{subject.name} betas")
    return Path(out)


def _fill(array: np.ndarray, blocks, what: str) -> None:
    filled = 0
    for start, block in blocks:
        if start != filled:
            raise ValueError(f"source bug: {what} block starts at row {start}, expected {filled}")
        array[start:start + len(block)] = block
        filled += len(block)
    if filled != len(array):
        raise ValueError(f"source bug: {what} blocks covered {filled} of {len(array)} rows")
