"""A disk cache of embeddings, so each stimulus is embedded once per model.

Layout under the cache directory::

    <model_key>/<kind>/index.json             which stimulus is in which shard, row shape, dtype
    <model_key>/<kind>/shard-<n>-<tag>.safetensors   one shard per batch of newly computed rows

`model_key` identifies the model (see :func:`model_identity`), `kind` the
representation (e.g. "clip-image-tokens", "clip-text-pooled"). Every file is
written atomically (temporary name, then rename), and a shard is always
written before the index that points at it, so an interrupted run leaves at
worst an unreferenced shard, never an index naming missing data. One writer
per (model, kind) at a time is assumed: concurrent writers cannot corrupt the
cache, but one may lose the other's index update (those rows are recomputed).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import numpy as np

from brainrecon.errors import BrainreconError
from brainrecon.io import atomic_write_bytes, atomic_write_json
from brainrecon.pretrained import require_local_dir

INDEX_FORMAT = 1
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class CacheError(BrainreconError, ValueError):
    """The embedding cache is inconsistent with what is being asked of it."""


def model_identity(path: str | Path, weights: str = "content") -> str:
    """A 24-hex-digit key for a local model directory.

    Hashes every file's relative path together with: the full contents of small
    files (configs, tokenizer, preprocessor) and, for weights, their contents
    (`weights="content"`: exact and stable when the directory is copied, but
    reads every byte once) or only their size and modification time
    (`weights="stat"`: instant; a re-saved or copied directory gets a new key,
    which costs a recompute but never a wrong hit).
    """
    if weights not in ("content", "stat"):
        raise ValueError(f"weights must be 'content' or 'stat', got {weights!r}")
    folder = require_local_dir(path, "model_identity(path)")
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(file.relative_to(folder)).encode() + b"\0")
        stat = file.stat()
        if weights == "stat" and stat.st_size > (1 << 20):
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:
            with open(file, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:24]


class EmbeddingCache:
    """Embeddings on disk keyed by (model key, kind, stimulus id)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def get_or_compute(self, model_key: str, kind: str, stimulus_ids: Sequence[Hashable],
                       compute_fn: Callable[[list], np.ndarray]) -> np.ndarray:
        """Rows for `stimulus_ids` in the order given, computing only those not cached yet.

        `compute_fn(missing_ids)` receives the missing ids (as given, each once,
        in first-seen order) and must return an array with one row per id.
        """
        folder = self._folder(model_key, kind)
        index = self._read_index(folder, model_key, kind)
        keys = [str(i) for i in stimulus_ids]
        missing = list({key: original for key, original in zip(keys, stimulus_ids)
                        if key not in index["rows"]}.items())
        if missing:
            values = np.ascontiguousarray(compute_fn([original for _, original in missing]))
            self._check_rows(values, len(missing), index, folder)
            self._add_shard(folder, index, [key for key, _ in missing], values)
        return self._gather(folder, index, keys)

    def cached_ids(self, model_key: str, kind: str) -> list[str]:
        folder = self._folder(model_key, kind)
        return sorted(self._read_index(folder, model_key, kind)["rows"])

    # -- internals ------------------------------------------------------------

    def _folder(self, model_key: str, kind: str) -> Path:
        for name, value in (("model_key", model_key), ("kind", kind)):
            if not _SAFE_NAME.match(str(value)):
                raise CacheError(f"{name} {value!r} must be letters, digits, '.', '_' or '-' "
                                 f"(it becomes a directory name)")
        return self.directory / model_key / kind

    @staticmethod
    def _read_index(folder: Path, model_key: str, kind: str) -> dict:
        path = folder / "index.json"
        if not path.is_file():
            return {"format": INDEX_FORMAT, "model_key": model_key, "kind": kind,
                    "row_shape": None, "dtype": None, "shards": [], "rows": {}}
        index = json.loads(path.read_text())
        if index.get("format") != INDEX_FORMAT:
            raise CacheError(f"{path} has index format {index.get('format')}, expected {INDEX_FORMAT}; "
                             f"delete {folder} to rebuild it")
        return index

    @staticmethod
    def _check_rows(values: np.ndarray, expected: int, index: dict, folder: Path) -> None:
        if values.ndim == 0 or len(values) != expected:
            raise CacheError(f"compute_fn returned {values.shape[:1] if values.ndim else 'a scalar'} rows "
                             f"for {expected} stimulus ids")
        if index["row_shape"] is not None and (list(values.shape[1:]) != index["row_shape"]
                                               or str(values.dtype) != index["dtype"]):
            raise CacheError(f"compute_fn returned rows {values.dtype} {values.shape[1:]}, but {folder} holds "
                             f"{index['dtype']} {tuple(index['row_shape'])}; use another kind or model key")

    @staticmethod
    def _add_shard(folder: Path, index: dict, keys: list[str], values: np.ndarray) -> None:
        from safetensors.numpy import save

        # a random tag keeps shard names unique even if two writers race
        name = f"shard-{len(index['shards']):05d}-{uuid.uuid4().hex[:8]}.safetensors"
        atomic_write_bytes(folder / name, save({"embeddings": values}, metadata={"ids": json.dumps(keys)}))
        index["shards"].append(name)
        index["row_shape"], index["dtype"] = list(values.shape[1:]), str(values.dtype)
        index["rows"].update({key: [name, row] for row, key in enumerate(keys)})
        atomic_write_json(folder / "index.json", index)  # after the shard: the index never names missing data

    @staticmethod
    def _gather(folder: Path, index: dict, keys: list[str]) -> np.ndarray:
        from safetensors.numpy import load_file

        out = np.empty((len(keys), *index["row_shape"]), dtype=np.dtype(index["dtype"]))
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for position, key in enumerate(keys):
            shard, row = index["rows"][key]
            by_shard.setdefault(shard, []).append((position, row))
        for shard, pairs in by_shard.items():
            path = folder / shard
            if not path.is_file():
                raise CacheError(f"{folder / 'index.json'} names {shard}, which is missing; delete {folder}")
            data = load_file(path)["embeddings"]
            positions, rows = zip(*pairs)
            out[list(positions)] = data[list(rows)]
        return out
