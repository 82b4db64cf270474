"""File plumbing shared by memories and banks: atomic paths, streamed safetensors, faiss indexes.

Why not ``safetensors.numpy.save``: it builds the whole file in memory, and a
memory of 27,000 images x 257 x 768 float16 tokens is 10.6 GB. The safetensors
format is simple (an 8-byte little-endian header length, a JSON header, then
the raw little-endian tensors back to back), so it is written here chunk by
chunk and read back as numpy memory maps: a loaded memory costs almost no RAM
until rows are gathered. The files stay readable by the official library.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainrecon.errors import BrainreconError
from brainrecon.io import atomic_path

_DTYPES = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
           "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "U8": np.dtype("u1")}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}


@dataclass(frozen=True)
class TensorSource:
    """A tensor to stream into a safetensors file: its dtype, shape, and a function yielding its rows in order."""

    dtype: np.dtype
    shape: tuple[int, ...]
    chunks: Callable[[], Iterator[np.ndarray]]

    @classmethod
    def of(cls, array: np.ndarray) -> TensorSource:
        array = np.ascontiguousarray(array)
        return cls(array.dtype, tuple(array.shape), lambda: iter([array]))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def write_safetensors(path: str | Path, tensors: dict[str, TensorSource],
                      metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` to a safetensors file atomically, one chunk at a time."""
    header: dict = {"__metadata__": dict(metadata or {})} if metadata else {}
    offset = 0
    for name, source in tensors.items():
        dtype = np.dtype(source.dtype).newbyteorder("<") if np.dtype(source.dtype).itemsize > 1 \
            else np.dtype(source.dtype)
        if dtype not in _CODES:
            raise BrainreconError(f"cannot store tensor {name!r} of dtype {source.dtype} in safetensors")
        header[name] = {"dtype": _CODES[dtype], "shape": list(source.shape),
                        "data_offsets": [offset, offset + source.nbytes]}
        offset += source.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep the data 8-byte aligned, as the reference writer does
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for name, source in tensors.items():
            dtype = _DTYPES[header[name]["dtype"]]
            written = 0
            for chunk in source.chunks():
                data = np.ascontiguousarray(chunk, dtype=dtype)
                handle.write(memoryview(data).cast("B"))
                written += data.nbytes
            if written != source.nbytes:
                raise BrainreconError(f"tensor {name!r}: wrote {written} bytes, expected {source.nbytes} "
                                      f"for shape {source.shape}")


def read_safetensors(path: str | Path, mmap: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors of a safetensors file as read-only memory maps (or in-memory copies), and its metadata."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise BrainreconError(f"{path} is too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise BrainreconError(f"{path} has a corrupt header (length {header_len} > file size)")
        header = json.loads(handle.read(header_len))
    metadata = header.pop("__metadata__", {}) or {}
    start = 8 + header_len
    tensors = {}
    for name, info in header.items():
        dtype, shape = _DTYPES[info["dtype"]], tuple(info["shape"])
        begin, end = info["data_offsets"]
        if start + end > size:
            raise BrainreconError(f"{path} is truncated: tensor {name!r} ends at byte {start + end} of {size}")
        if end == begin:
            tensors[name] = np.zeros(shape, dtype)
        elif mmap:
            tensors[name] = np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)
        else:
            with open(path, "rb") as handle:
                handle.seek(start + begin)
                tensors[name] = np.frombuffer(handle.read(end - begin), dtype=dtype).reshape(shape).copy()
    return tensors, metadata


def write_faiss_index(index, path: str | Path) -> None:
    """faiss.write_index to a temporary file, then rename: never a half-written index."""
    import faiss

    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def read_faiss_index(path: str | Path):
    import faiss

    return faiss.read_index(str(path))
