"""Atomic file writing and checksums.

Nothing brainrecon writes is ever left half-written: each file is written to a
temporary name in the same directory and renamed into place, which POSIX
guarantees to be atomic.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _default_mode() -> int:
    umask = os.umask(0)  # reading the umask means setting it; it is restored at once, at import
    os.umask(umask)
    return 0o666 & ~umask


_DEFAULT_MODE = _default_mode()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to `path`; on success it is fsynced and renamed onto `path`.

    For writers that want a file name rather than a handle (faiss.write_index,
    safetensors) or that stream large data. On any exception the temporary file
    is removed and `path` is untouched, so a reader never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, _DEFAULT_MODE)  # mkstemp makes 0600; a finished file gets what open() would give it
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write(path: Path, write_fn, mode: str) -> None:
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        write_fn(handle)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(Path(path), lambda f: f.write(data), "wb")


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic_write(Path(path), lambda f: f.write(text), "w")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    _atomic_write(Path(path), lambda f: np.save(f, array, allow_pickle=False), "wb")


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
