"""Comparing two folders written by brainrecon (stores) file by file.

A failed ``assert files_a == files_b`` over whole files makes pytest diff their bytes, which took longer than the
test's time limit on a store of a few MB. These helpers name what differs instead: a file only one folder has,
or a file whose bytes differ, with the largest difference of its arrays where it holds any.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def folder_files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def _arrays(path: Path) -> dict[str, np.ndarray] | None:
    if path.suffix == ".npy":
        return {"": np.load(path, allow_pickle=False)}
    if path.suffix == ".safetensors":
        return load_file(path)
    return None


def relative_difference(a: Path, b: Path) -> float | None:
    """The largest |a - b| over two array files' values, as a fraction of b's largest |value|; None where they
    are not array files with the same names, shapes and dtypes."""
    left, right = _arrays(a), _arrays(b)
    if left is None or right is None or left.keys() != right.keys():
        return None
    worst = 0.0
    for name, value in right.items():
        other = left[name]
        if other.shape != value.shape or other.dtype != value.dtype:
            return None
        if value.size and value.dtype.kind in "fiu":
            gap = float(np.max(np.abs(other.astype(np.float64) - value.astype(np.float64))))
            worst = max(worst, gap / max(float(np.max(np.abs(value.astype(np.float64)))), 1e-30))
        elif other.tobytes() != value.tobytes():
            return None
    return worst


def folder_differences(a: Path, b: Path) -> dict[str, str | float]:
    """Each file that is not byte-identical in ``a`` and ``b``: why (text), or for array files the largest
    difference of their values as a fraction of the largest value (a float)."""
    left, right = folder_files(Path(a)), folder_files(Path(b))
    out = {name: f"only in {a}" for name in left.keys() - right.keys()}
    out |= {name: f"only in {b}" for name in right.keys() - left.keys()}
    for name in sorted(left.keys() & right.keys()):
        if left[name].read_bytes() != right[name].read_bytes():
            gap = relative_difference(left[name], right[name])
            out[name] = "bytes differ" if gap is None else gap
    return out
