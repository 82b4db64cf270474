"""A subject's retrieval memory for Ecphory: predicted-embedding keys -> true-embedding values.

Psychometry's Ecphory (Psychometry, Quan et al., CVPR 2024; ``utils.Ecphory`` in the
released code) keeps, per subject,
the model's predictions for the training fMRI (*keys*) next to the true CLIP
embeddings of the stimuli those trials showed (*values*). At test time the
prediction for new fMRI is compared with the keys, and the values of the top-k
matches are blended into the prediction. The released code holds both as
flattened float32 257 x 768 matrices and searches them by brute force: about
21 GB each for 27,000 entries. This module stores the same information
compactly and searches it with faiss:

**Entries are stimuli, not trials.** NSD shows most images three times. Keys
are averaged over a stimulus's trials (a less noisy key: the mean of the
model's predictions for the same image) and each stimulus is stored once, so
its value is stored once and top-k returns k *different* images instead of
spending diffusion samples on the same image retrieved three times. Values of
repeated trials are embeddings of the same image and are assumed identical;
the first trial's row is kept.

**Search keys are small.** Only a per-entry search vector is kept from the
keys, derived by ``MemoryConfig.search``:

- ``"pca"`` (default): projection onto the top ``pca_dims`` (256) principal
  directions of the flattened keys themselves, fitted by a randomised SVD on
  ``pca_fit_rows`` trials, of the keys as they are compared: centred by their
  mean with ``centre`` (the default), raw otherwise. Keys and queries are
  divided by the length of the *whole* (centred) item, not of its projection,
  so a search score is the exact full-key cosine less the product of the parts
  outside the projection, which is near zero. The default because it keeps the
  ranking of exact full-key search (recall@10 0.999 at 27,000 NSD-sized entries,
  docs/benchmarks/memory.md). It costs a one-off
  projection of every trial at build time (N x 197,376 x 256 multiply-adds,
  about 1-2 min per NSD subject on one core) and 0.2 GB for the projection.
- ``"pooled"``: the mean over tokens (257 x 768 -> 768): builds in seconds,
  but mean pooling discards where in the image things are, which the full
  keys' cosine (256 of 257 tokens are patches) weighs heavily. The mean
  rather than the CLS token because it uses every token, and because text
  tokens have no fixed summary position (CLIP's pooled text token is the
  end-of-text token, whose index varies per caption); to search with the CLS
  summary use ``search_on=("image_pooled",)``. Pooled vectors (n, D) are used
  as they are (in every mode but "pca").
- ``"full"``: the flattened keys: Psychometry's exact search, as large as the
  naive memory (only for small memories or for reference).

Each searched name gives one L2-normalised block; with several names in
``search_on`` (e.g. image and text tokens) the blocks are concatenated and
scaled by 1/sqrt(n_names), so the inner product is the mean of the per-name
cosines and both modalities retrieve the *same* stimulus, whose image and text
values are then fused together. Psychometry instead ranks image and text
separately; one joint ranking keeps each fused pair consistent.

**Keys are centred** (``centre``, the default): the mean key over the training trials is
subtracted from keys and queries before the cosine, so keys are compared by how they differ
from what every key shares, and a PCA spends no direction on the mean. Psychometry compares
raw keys (``centre: false``). **Brain-space keys** (``betas``:
voxel responses, averaged over a stimulus's trials like any key) compare the test fMRI
with the training fMRI directly, so keys and queries come from the same distribution;
a model's predictions for the trials it was trained on do not (they are fitted).

**Values keep full resolution** in float16 (half the bytes of float32; CLIP
tokens need no more precision), in a safetensors file that is memory-mapped on
load, so only the rows a query retrieves are read.

Layout of a saved memory directory::

    memory.json           format version, subject, search settings, shapes, counts (written last)
    keys.safetensors      stimulus_ids, trial_counts, search_keys (float32), projection.<name> (pca)
    values.safetensors    value.<name>: (n_entries, *shape) float16
    index.faiss           the faiss index over search_keys
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from brainrecon import __version__
from brainrecon.config import StrictConfig
from brainrecon.errors import BrainreconError
from brainrecon.io import atomic_write_json
from brainrecon.memory._arrays import (
    CHUNK_BYTES,
    chunk_rows,
    item_size,
    row_mean,
    shape_of,
    take_rows,
    to_numpy,
)
from brainrecon.memory._files import (
    TensorSource,
    read_faiss_index,
    read_safetensors,
    write_faiss_index,
    write_safetensors,
)
from brainrecon.memory._index import (
    configure_search,
    faiss_search,
    fill_index,
    make_index,
    sample_rows,
    training_sample_size,
)
from brainrecon.memory.errors import MemoryStoreError

FORMAT_VERSION = 3  # 2: centred search keys and the means Ecphory's fusion centres with; 3: PCA keys over whole-key norms
MEMORY_NAMES = ("image_tokens", "text_tokens", "image_pooled", "text_pooled")
TOKEN_NAMES = ("image_tokens", "text_tokens")
BRAIN_KEY = "betas"  # brain-space keys: the trials' voxel responses (n_trials, n_voxels)
KEY_NAMES = (*MEMORY_NAMES, BRAIN_KEY)
MemoryName = Literal["image_tokens", "text_tokens", "image_pooled", "text_pooled", "betas"]
FILES = ("memory.json", "keys.safetensors", "values.safetensors", "index.faiss")


class MemoryConfig(StrictConfig):
    """How a subject memory turns keys into search vectors and indexes them."""

    search: Literal["full", "pooled", "pca"] = "pca"
    pca_dims: int = Field(256, ge=1)
    # trials the PCA is fitted on (a seeded random subsample); the fit streams over them 4 times
    pca_fit_rows: int = Field(2048, ge=2)
    search_on: tuple[MemoryName, ...] = ("image_tokens",)
    # subtract the keys' mean (over the training trials) from keys and queries before the cosine, so the
    # similarity is of deviations from what every key shares (and a PCA spends no direction on the mean);
    # False: Psychometry's raw cosine
    centre: bool = True
    index: Literal["exact", "ivf", "hnsw", "auto"] = "auto"
    auto_exact_below: int = Field(100_000, ge=1)  # "auto": exact search below this many entries, IVF above
    nprobe: int = Field(32, ge=1)
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(80, ge=8)
    hnsw_ef_search: int = Field(128, ge=1)

    @field_validator("search_on")
    @classmethod
    def _distinct(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if not names:
            raise ValueError("search_on needs at least one name, e.g. [image_tokens]")
        if len(set(names)) != len(names):
            raise ValueError(f"search_on lists a name twice: {list(names)}")
        return names

    def index_kind(self, n_entries: int) -> str:
        if self.index != "auto":
            return self.index
        return "exact" if n_entries < self.auto_exact_below else "ivf"


class _ValueRows:
    """The value rows of a memory, read on demand from an array-like (in-memory, memory map or tensor).

    `rows` maps entry -> row of `source` (the first trial of each stimulus) before
    saving; after loading the source is the memory-mapped file and rows is None.
    Rows are always returned as float16, so a memory gives the same values
    before and after a save/load round trip.
    """

    def __init__(self, source, rows: np.ndarray | None):
        self.source, self.rows = source, rows
        n = len(rows) if rows is not None else shape_of(source)[0]
        self.shape = (n, *shape_of(source)[1:])

    def take(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        flat = indices.reshape(-1)
        source_rows = self.rows[flat] if self.rows is not None else flat
        unique, inverse = np.unique(source_rows, return_inverse=True)  # sorted reads; repeats read once
        data = take_rows(self.source, unique, dtype=None).astype(np.float16, copy=False)
        return data[inverse].reshape(*indices.shape, *self.shape[1:])

    def chunks(self):
        step = chunk_rows(self.shape)
        for start in range(0, self.shape[0], step):
            yield self.take(np.arange(start, min(start + step, self.shape[0])))


def _features(x: np.ndarray, mode: str, projection: np.ndarray | None,
              offset: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(features, norms) of float32 (n, *shape) key or query rows (less `offset`), before normalisation.

    ``norms`` is the length of what the similarity compares: the whole flattened item in "full" and
    "pca" mode, the pooled vector in "pooled" mode. Dividing PCA features by the *whole* item's length
    rather than their own makes their inner product the exact cosine less only the residuals' product
    (which is near zero), instead of a cosine of the projections, which inflates items with much of
    their length outside the projection (recall@10 in docs/benchmarks/memory.md)."""
    if offset is not None:
        x = x - offset
    n = x.shape[0]
    if mode == "pooled":
        pooled = x.mean(axis=1) if x.ndim == 3 else x.reshape(n, -1)
        return pooled, np.linalg.norm(pooled, axis=1)
    flat = x.reshape(n, -1)
    return (flat if mode == "full" else flat @ projection.T), np.linalg.norm(flat, axis=1)


def _combine(blocks: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Divide each (features, norms) block by its norms, concatenate, and scale so the inner product of two
    search vectors is the mean of the per-name cosines."""
    scale = 1.0 / math.sqrt(len(blocks))
    parts = [features.astype(np.float32, copy=False) / np.where(norms > 0, norms, 1)[:, None].astype(np.float32)
             for features, norms in blocks]
    return np.ascontiguousarray(np.concatenate(parts, axis=1) * scale, dtype=np.float32)


def _fit_projection(source, n_rows: int, dims: int, fit_rows: int, offset: np.ndarray | None, seed: int = 0,
                    oversample: int = 16) -> np.ndarray:
    """Top `dims` right singular vectors of the flattened keys less `offset` (their mean when the memory
    centres), by a randomised SVD.

    Randomised range finder with one power iteration (Halko et al. 2011), then
    the small SVD done through the (l x l) Gram matrix. Streams the fit rows
    from `source` four times and holds, besides a chunk of rows, two (l x F)
    float32 matrices (F = the flattened size, l = dims + oversample): about
    0.4 GB for 257 x 768 tokens at 256 dims. No QR or SVD of an F-sized matrix
    is ever taken (those alone cost tens of seconds at F = 197,376).
    """
    rows = sample_rows(n_rows, fit_rows, seed)
    shape = shape_of(source)
    size = item_size(shape)
    width = min(dims + oversample, len(rows), size)
    step = chunk_rows(shape, 4 * CHUNK_BYTES)  # larger chunks: each one updates an (l x F) accumulator

    def chunks():
        for start in range(0, len(rows), step):
            part = take_rows(source, rows[start:start + step])
            yield start, (part if offset is None else part - offset).reshape(-1, size)

    def sketch(basis_t: np.ndarray) -> np.ndarray:  # X @ basis_t.T, (m, l)
        return np.concatenate([x @ basis_t.T for _, x in chunks()])

    def row_space(q: np.ndarray) -> np.ndarray:  # q.T @ X, (l, F)
        out, part = np.zeros((q.shape[1], size), np.float32), np.empty((q.shape[1], size), np.float32)
        for start, x in chunks():
            np.matmul(q[start:start + len(x)].T, x, out=part)
            out += part
        return out

    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(sketch(rng.standard_normal((width, size), dtype=np.float32)))
    q, _ = np.linalg.qr(sketch(row_space(q)))  # one power iteration sharpens a slowly decaying spectrum
    b = row_space(q)  # X ~= q @ b, so X's top right singular vectors are b's
    # SVD of b through its (l x l) Gram matrix: float32 resolves singular values down to ~1e-3 of the
    # largest, far below anything that changes a cosine ranking
    eigenvalues, u = np.linalg.eigh((b @ b.T).astype(np.float64))
    order = np.argsort(eigenvalues)[::-1][:min(dims, width)]
    singular = np.sqrt(np.maximum(eigenvalues[order], 0))
    keep = order[singular > singular[0] * 1e-3] if singular[0] > 0 else order[:1]
    scale = (1.0 / np.sqrt(eigenvalues[keep]))[:, None].astype(np.float32)
    return np.ascontiguousarray((u[:, keep].T.astype(np.float32) @ b) * scale)


def _check_arrays(kind: str, arrays: dict, n_trials: int, names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    if not isinstance(arrays, dict) or not arrays:
        raise MemoryStoreError(f"{kind} must be a non-empty dict of target name -> array (n_trials, *shape), "
                               f"names among {', '.join(names)}")
    shapes = {}
    for name, array in arrays.items():
        if name not in names:
            raise MemoryStoreError(f"{kind}: {name!r} cannot be stored in a memory; use names among "
                                   f"{', '.join(names)}")
        shape = shape_of(array)
        expected_ndim = 3 if name in TOKEN_NAMES else 2
        if len(shape) != expected_ndim or shape[0] != n_trials:
            wanted = "(n_trials, tokens, dim)" if expected_ndim == 3 else "(n_trials, dim)"
            raise MemoryStoreError(f"{kind}[{name!r}] has shape {shape}; expected {wanted} with n_trials = "
                                   f"{n_trials} (the length of stimulus_ids)")
        shapes[name] = shape[1:]
    return shapes


class SubjectMemory:
    """One subject's Ecphory memory: search with `search`, read values with `values_at`.

    Make one with `SubjectMemory.build(...)` or `SubjectMemory.load(dir)`.
    """

    def __init__(self, *, subject: str, config: MemoryConfig, stimulus_ids: np.ndarray,
                 trial_counts: np.ndarray, search_keys: np.ndarray, projections: dict[str, np.ndarray],
                 key_shapes: dict[str, tuple[int, ...]], values: dict[str, _ValueRows], index, index_kind: str,
                 means: dict[str, np.ndarray]):
        self.subject, self.config = subject, config
        self.means = means  # "key.<name>", "value.<name>", "prediction.<name>" -> (*shape) float32
        self.stimulus_ids, self.trial_counts = stimulus_ids, trial_counts
        self.search_keys, self.projections = search_keys, projections
        self.key_shapes, self._values = key_shapes, values
        self.index, self.index_kind = index, index_kind

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def build(cls, subject: str, keys: dict, values: dict, stimulus_ids, config: MemoryConfig | None = None,
              *, prediction_means: dict | None = None, progress: bool = False) -> SubjectMemory:
        """A memory from one subject's training trials.

        keys: name -> (n_trials, *shape) model predictions for the trials, or ``betas``: the
        trials' voxel responses (brain-space keys);
        values: name -> (n_trials, *shape) true embeddings of each trial's stimulus;
        stimulus_ids: (n_trials,) integer ids (repeats share an id);
        prediction_means: name -> (*shape) the mean of what the model conditions the generator
        on for the training trials, which Ecphory's common-scale fusion centres predictions
        with (defaults to the mean of the keys of the same names).

        Arrays may be numpy arrays, memory maps or torch tensors and are read a
        chunk of rows at a time, so memory maps larger than RAM work. Values are
        *not copied*: rows are read from the given arrays when needed (by
        `save`, `values_at`, `fuse`), so do not modify them while the memory is
        in use; a loaded memory reads from its own file instead.
        """
        config = config or MemoryConfig()
        ids = to_numpy(stimulus_ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise MemoryStoreError(f"stimulus_ids must be a 1-D integer array (one id per trial), got "
                                   f"{ids.dtype} {ids.shape}")
        if len(ids) == 0:
            raise MemoryStoreError("stimulus_ids is empty: a memory needs at least one training trial")
        key_shapes = _check_arrays("keys", keys, len(ids), KEY_NAMES)
        value_shapes = _check_arrays("values", values, len(ids), MEMORY_NAMES)
        if prediction_means is None:
            prediction_means = {name: row_mean(keys[name]) for name in values if name in keys}
        missing = [name for name in config.search_on if name not in keys]
        if missing:
            raise MemoryStoreError(f"config.search_on names {missing}, but keys has only {sorted(keys)}; "
                                   f"pass those predictions as keys or change search_on")
        for name in set(keys) & set(values):
            if key_shapes[name] != value_shapes[name]:
                raise MemoryStoreError(f"keys[{name!r}] items have shape {key_shapes[name]} but values[{name!r}] "
                                       f"items {value_shapes[name]}: keys and values must live in the same space")
        for name, mean in prediction_means.items():
            if name not in values or tuple(np.shape(mean)) != value_shapes[name]:
                raise MemoryStoreError(f"prediction_means[{name!r}] has shape {tuple(np.shape(mean))}, but the "
                                       f"values hold {value_shapes.get(name, 'nothing')} for it: give one mean "
                                       f"item per value name")
        means = {f"value.{name}": row_mean(array) for name, array in values.items()}
        means.update({f"prediction.{name}": np.asarray(mean, np.float32) for name, mean in prediction_means.items()})
        if config.centre:
            means.update({f"key.{name}": row_mean(keys[name]) for name in config.search_on})

        unique_ids, first_trial, inverse, counts = np.unique(ids, return_index=True, return_inverse=True,
                                                             return_counts=True)
        projections, blocks = {}, []
        for name in config.search_on:
            source = keys[name]
            if config.search == "pca":
                projections[name] = _fit_projection(source, len(ids), config.pca_dims, config.pca_fit_rows,
                                                    means.get(f"key.{name}"))
            blocks.append(cls._stimulus_features(source, config.search, projections.get(name),
                                                 means.get(f"key.{name}"), inverse, counts, progress,
                                                 f"memory keys {name}"))
        search_keys = _combine(blocks)

        kind = config.index_kind(len(unique_ids))
        index = make_index(kind, search_keys.shape[1], len(unique_ids), hnsw_m=config.hnsw_m,
                           hnsw_ef_construction=config.hnsw_ef_construction)
        sample = sample_rows(len(search_keys), training_sample_size(index, len(search_keys)))
        fill_index(index, [search_keys], training=search_keys[sample])
        return cls(subject=subject, config=config, stimulus_ids=unique_ids.astype(np.int64),
                   trial_counts=counts.astype(np.int64), search_keys=search_keys, projections=projections,
                   key_shapes={name: key_shapes[name] for name in config.search_on},
                   values={name: _ValueRows(array, first_trial) for name, array in values.items()},
                   index=index, index_kind=kind, means=means)

    @staticmethod
    def _stimulus_features(source, mode: str, projection, offset, inverse: np.ndarray, counts: np.ndarray,
                           progress: bool, desc: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, norms) of each stimulus's mean key: its trials are read together (a chunk of stimuli
        at a time) and averaged before the features, because the norm of the mean is not the mean of the
        norms."""
        shape = shape_of(source)
        step = chunk_rows(shape)
        by_stimulus = np.argsort(inverse, kind="stable")
        ends = np.cumsum(counts)
        features, norms, first = [], [], 0
        with tqdm(total=shape[0], desc=desc, unit="trial", disable=not progress) as bar:
            while first < len(counts):
                # whole stimuli whose trials fit a chunk (at least one stimulus)
                last = max(first + 1, int(np.searchsorted(ends, ends[first] - counts[first] + step, "right")))
                start, stop = ends[first] - counts[first], ends[last - 1]
                rows = by_stimulus[start:stop]
                order = np.argsort(rows)  # read in file order, then put back
                part = np.empty((len(rows), *shape[1:]), np.float32)
                part[order] = take_rows(source, rows[order])
                sums = np.add.reduceat(part, (ends[first:last] - counts[first:last]) - start, axis=0)
                mean = sums / counts[first:last].reshape(-1, *([1] * (len(shape) - 1))).astype(np.float32)
                f, n = _features(mean, mode, projection, offset)
                features.append(f.astype(np.float32))
                norms.append(n)
                bar.update(len(rows))
                first = last
        return np.concatenate(features), np.concatenate(norms)

    # -- properties ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.stimulus_ids)

    @property
    def n_entries(self) -> int:
        return len(self.stimulus_ids)

    @property
    def n_trials(self) -> int:
        return int(self.trial_counts.sum())

    @property
    def value_names(self) -> tuple[str, ...]:
        return tuple(self._values)

    def value_shape(self, name: str) -> tuple[int, ...]:
        """Per-entry shape of a value, e.g. (257, 768) for image_tokens."""
        return self._values[name].shape[1:]

    def values_at(self, name: str, indices) -> np.ndarray:
        """float16 values of entries `indices` (any shape): (*indices.shape, *value_shape)."""
        if name not in self._values:
            raise MemoryStoreError(f"memory of subject {self.subject!r} has no values for {name!r}; "
                                   f"it holds {list(self._values)}")
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise MemoryStoreError(f"entry index out of range [0, {len(self)}): {indices.min()}..{indices.max()}")
        return self._values[name].take(indices)

    def value_mean(self, name: str) -> np.ndarray:
        """The mean true embedding of the training trials (*value_shape), float32."""
        return self.means[f"value.{name}"]

    def prediction_mean(self, name: str) -> np.ndarray:
        """The mean of the model's predictions for the training trials (*value_shape), float32."""
        if f"prediction.{name}" not in self.means:
            raise MemoryStoreError(f"memory of subject {self.subject!r} has no mean prediction for {name!r}; "
                                   f"build it with the model's predictions for its training trials")
        return self.means[f"prediction.{name}"]

    # -- searching -----------------------------------------------------------------------------

    def query_vectors(self, query: dict) -> np.ndarray:
        """(B, search_dim) float32 search vectors for predictions, made exactly as the memory's keys were."""
        if not isinstance(query, dict):
            raise MemoryStoreError("query must be a dict of target name -> array (batch, *shape)")
        missing = [name for name in self.config.search_on if name not in query]
        if missing:
            raise MemoryStoreError(f"this memory searches on {list(self.config.search_on)}, but the query has no "
                                   f"{missing}; pass the model's predictions for them")
        blocks, batch = [], None
        for name in self.config.search_on:
            x = to_numpy(query[name], np.float32)
            if x.shape[1:] != self.key_shapes[name]:
                raise MemoryStoreError(f"query[{name!r}] items have shape {x.shape[1:]}, but this memory's keys "
                                       f"were {self.key_shapes[name]}: was it built from another model or embedder?")
            if batch is not None and x.shape[0] != batch:
                raise MemoryStoreError(f"query arrays disagree on the batch size: {batch} vs {x.shape[0]}")
            batch = x.shape[0]
            blocks.append(_features(x, self.config.search, self.projections.get(name),
                                    self.means.get(f"key.{name}")))
        return _combine(blocks)

    def search(self, query: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k entries for each query item: (scores (B, k) float32 cosine in search space, indices (B, k) int64).

        Map indices to stimuli with `memory.stimulus_ids[indices]`.
        """
        if not 1 <= k <= len(self):
            raise MemoryStoreError(f"k = {k} must be between 1 and the memory's {len(self)} entries "
                                   f"(subject {self.subject!r})")
        vectors = self.query_vectors(query)
        configure_search(self.index, k, nprobe=self.config.nprobe, hnsw_ef_search=self.config.hnsw_ef_search)
        scores, indices = faiss_search(self.index, vectors, k)
        if (indices < 0).any():
            raise MemoryStoreError(f"the {self.index_kind} index returned fewer than k = {k} results; raise "
                                   f"nprobe / hnsw_ef_search in the memory config or use index: exact")
        return scores.astype(np.float32), indices.astype(np.int64)

    # -- saving and loading --------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the memory to `directory` (created if needed); every file atomically, memory.json last.

        memory.json is removed first and written last, so a save that is
        interrupted leaves a directory that `load` rejects instead of a mix of
        old and new files.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "memory.json").unlink(missing_ok=True)
        write_safetensors(directory / "values.safetensors",
                          {f"value.{name}": TensorSource(np.dtype(np.float16), rows.shape, rows.chunks)
                           for name, rows in self._values.items()},
                          metadata={"subject": self.subject})
        key_tensors = {"stimulus_ids": TensorSource.of(self.stimulus_ids),
                       "trial_counts": TensorSource.of(self.trial_counts),
                       "search_keys": TensorSource.of(self.search_keys)}
        key_tensors.update({f"projection.{name}": TensorSource.of(p) for name, p in self.projections.items()})
        key_tensors.update({f"mean.{name}": TensorSource.of(m) for name, m in self.means.items()})
        write_safetensors(directory / "keys.safetensors", key_tensors, metadata={"subject": self.subject})
        write_faiss_index(self.index, directory / "index.faiss")
        import faiss

        atomic_write_json(directory / "memory.json", {
            "format": "brainrecon.subject_memory", "format_version": FORMAT_VERSION, "subject": self.subject,
            "config": self.config.model_dump(mode="json"), "index_kind": self.index_kind,
            "n_entries": len(self), "n_trials": self.n_trials, "search_dim": int(self.search_keys.shape[1]),
            "key_shapes": {name: list(shape) for name, shape in self.key_shapes.items()},
            "value_shapes": {name: list(rows.shape[1:]) for name, rows in self._values.items()},
            "value_dtype": "float16",
            "file_bytes": {name: (directory / name).stat().st_size for name in FILES[1:]},
            "faiss_version": faiss.__version__, "brainrecon_version": __version__})
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = True) -> SubjectMemory:
        """A memory saved with `save`. Values are memory-mapped (read on demand) unless mmap=False."""
        directory = Path(directory)
        if not directory.is_dir():
            raise MemoryStoreError(f"memory directory {directory} does not exist; build a memory with "
                                   f"SubjectMemory.build(...) and save it there first")
        meta_path = directory / "memory.json"
        if not meta_path.is_file():
            partial = [name for name in FILES[1:] if (directory / name).exists()]
            if partial:
                raise MemoryStoreError(f"{meta_path} is missing but {partial} exist: a save was interrupted "
                                       f"(memory.json is written last); save the memory again")
            raise MemoryStoreError(f"{directory} is not a subject memory (no memory.json); build one with "
                                   f"SubjectMemory.build(...).save({str(directory)!r})")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise MemoryStoreError(f"{meta_path} is not valid JSON ({exc}); save the memory again") from None
        if meta.get("format") != "brainrecon.subject_memory" or meta.get("format_version") != FORMAT_VERSION:
            raise MemoryStoreError(f"{meta_path}: format {meta.get('format')!r} version "
                                   f"{meta.get('format_version')!r} is not a subject memory of version "
                                   f"{FORMAT_VERSION}; rebuild it with this brainrecon")
        for name in FILES[1:]:
            path = directory / name
            if not path.is_file():
                raise MemoryStoreError(f"{path} is missing; the memory directory is incomplete: save it again")
            expected = meta["file_bytes"][name]
            if path.stat().st_size != expected:
                raise MemoryStoreError(f"{path} has {path.stat().st_size} bytes, but memory.json recorded "
                                       f"{expected}: the files come from different saves; save the memory again")
        config = MemoryConfig.model_validate(meta["config"])
        n, dim = meta["n_entries"], meta["search_dim"]
        try:
            key_tensors, _ = read_safetensors(directory / "keys.safetensors", mmap=False)
            value_tensors, _ = read_safetensors(directory / "values.safetensors", mmap=mmap)
        except (OSError, ValueError, KeyError, BrainreconError) as exc:
            raise MemoryStoreError(f"cannot read the tensors of {directory}: {exc}; save the memory again") from None

        def expect(file: str, name: str, tensors: dict, shape: tuple[int, ...]):
            if name not in tensors:
                raise MemoryStoreError(f"{directory / file} has no tensor {name!r}; save the memory again")
            if tuple(tensors[name].shape) != tuple(shape):
                raise MemoryStoreError(f"{directory / file}: {name!r} has shape {tuple(tensors[name].shape)}, "
                                       f"memory.json says {tuple(shape)}; save the memory again")
            return tensors[name]

        ids = expect("keys.safetensors", "stimulus_ids", key_tensors, (n,))
        counts = expect("keys.safetensors", "trial_counts", key_tensors, (n,))
        search_keys = expect("keys.safetensors", "search_keys", key_tensors, (n, dim))
        key_shapes = {name: tuple(shape) for name, shape in meta["key_shapes"].items()}
        projections = {}
        if config.search == "pca":
            for name in config.search_on:
                projection = key_tensors.get(f"projection.{name}")
                if projection is None or projection.shape[1] != math.prod(key_shapes[name]):
                    raise MemoryStoreError(f"{directory / 'keys.safetensors'}: PCA projection for {name!r} is "
                                           f"missing or does not match key shape {key_shapes[name]}; save again")
                projections[name] = projection
        values = {name: _ValueRows(expect("values.safetensors", f"value.{name}", value_tensors, (n, *shape)), None)
                  for name, shape in meta["value_shapes"].items()}
        means = {name[len("mean."):]: np.asarray(t, np.float32) for name, t in key_tensors.items()
                 if name.startswith("mean.")}
        try:
            index = read_faiss_index(directory / "index.faiss")
        except RuntimeError as exc:
            raise MemoryStoreError(f"cannot read {directory / 'index.faiss'}: {exc}; save the memory again") from None
        if index.ntotal != n or index.d != dim:
            raise MemoryStoreError(f"{directory / 'index.faiss'} holds {index.ntotal} vectors of dim {index.d}, but "
                                   f"memory.json says {n} of dim {dim}; save the memory again")
        return cls(subject=meta["subject"], config=config, stimulus_ids=ids, trial_counts=counts,
                   search_keys=search_keys, projections=projections, key_shapes=key_shapes, values=values,
                   index=index, index_kind=meta["index_kind"], means=means)

    def __repr__(self) -> str:
        return (f"SubjectMemory(subject={self.subject!r}, entries={len(self)}, trials={self.n_trials}, "
                f"search={self.config.search!r} on {list(self.config.search_on)}, dim={self.search_keys.shape[1]}, "
                f"index={self.index_kind!r}, values={ {n: v.shape[1:] for n, v in self._values.items()} })")
