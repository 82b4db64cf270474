"""Array helpers that accept numpy arrays, numpy memory maps and torch tensors alike.

Memories are built from a trained model's predictions, which arrive as torch
tensors, in-memory numpy arrays, or float16 memory maps when they are too big
for RAM (27,000 x 257 x 768 float32 is 21 GB). Everything here reads such
"array-likes" a bounded number of rows at a time.
"""

from __future__ import annotations

import math

import numpy as np

# rows are read in chunks of about this many float32 bytes: small enough to stay under glibc's
# mmap threshold (32 MiB), so chunk buffers are reused instead of page-faulted in afresh
CHUNK_BYTES = 1 << 24


def is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def to_numpy(x, dtype=None) -> np.ndarray:
    """A numpy array (no copy when already numpy of that dtype) from numpy or torch input."""
    if is_torch(x):
        import torch

        x = x.detach().cpu()
        if x.dtype == torch.bfloat16 or (dtype is not None and np.dtype(dtype) == np.float32):
            x = x.float()  # numpy has no bfloat16
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def shape_of(x) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def item_size(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:])


def chunk_rows(shape: tuple[int, ...], chunk_bytes: int = CHUNK_BYTES) -> int:
    return max(1, chunk_bytes // max(1, 4 * item_size(shape)))


def take_rows(source, rows: np.ndarray, dtype=np.float32) -> np.ndarray:
    """source[rows] as numpy; contiguous runs are read as a slice (fast for memory maps)."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
        part = source[int(rows[0]):int(rows[-1]) + 1]
    elif is_torch(source):
        import torch

        part = source[torch.as_tensor(rows, device=source.device)]
    else:
        part = source[rows]
    return to_numpy(part, dtype)


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """x / ||x|| along `axis`; all-zero vectors stay zero instead of becoming NaN."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.where(norm > 0, norm, 1)


def row_mean(source) -> np.ndarray:
    """The mean item of an array-like (n, *shape), read a chunk of rows at a time, as float32 (*shape)."""
    shape = shape_of(source)
    step = chunk_rows(shape)
    total = np.zeros(shape[1:], np.float64)
    for start in range(0, shape[0], step):
        total += take_rows(source, np.arange(start, min(start + step, shape[0]))).sum(axis=0, dtype=np.float64)
    return (total / max(shape[0], 1)).astype(np.float32)
