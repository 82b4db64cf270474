"""Atomic file writing and checksums.

Nothing brainrecon writes is ever left half-written: each file is written to a
temporary name in the same directory and renamed into place, which POSIX
guarantees to be atomic.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from brainrecon.errors import OutputError


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


def strict_json(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, ±Inf) replaced by None, so that it is valid JSON.

    Python's json writes bare ``NaN``, which strict parsers (browsers, jq, most languages) reject.
    A missing value is written as ``null`` instead; writers of numbers that must be finite (a
    training loss) check them before they get here.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: strict_json(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(value) for value in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(strict_json(obj), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_text(path, text + "\n")


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    _atomic_write(Path(path), lambda f: np.save(f, array, allow_pickle=False), "wb")


def atomic_save_image(path: str | Path, image, format: str = "PNG") -> None:
    """Save a PIL image (or anything with PIL's ``save(fp, format=...)``) without a half-written file."""
    with atomic_path(path) as temporary:
        image.save(temporary, format=format)


def atomic_copy(source: str | Path, destination: str | Path) -> None:
    """Copy a file's bytes to ``destination``, which only ever holds the old file or the whole new one."""
    with atomic_path(destination) as temporary:
        shutil.copyfile(source, temporary)


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# -- output folders ---------------------------------------------------------------------------------
# Every command that writes a folder owns it: it refuses a file or a folder of something else, replaces
# its own kind of output only when asked, holds a lock while it writes, and publishes by renaming.


def lock_path(path: str | Path) -> Path:
    """The lock file of an output: hidden, beside it, so it exists before the output and outlives a rename."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold the exclusive right to write ``path``; fail at once if another process holds it.

    ``fcntl.flock`` locks are released by the kernel when their process dies, so a killed
    writer never leaves a stale lock. The empty lock file stays (removing it would let two
    processes lock two different files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path(path)
    handle = open(lock, "a")  # noqa: SIM115 (held open for the life of the lock)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OutputError(f"another brainrecon process is writing {path} (it holds {lock}); wait for it to "
                          f"finish, or choose another --out") from None
    try:
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def check_output_dir(path: str | Path, what: str, is_own, overwrite: bool, flag: str = "--out") -> bool:
    """Refuse an output folder this command may not write; True if it holds an earlier output to replace.

    ``is_own(path)`` says whether a non-empty folder holds ``what`` (e.g. a store's manifest). A
    file, or a folder of anything else, is refused even with ``--overwrite``: that flag replaces a
    command's own output, never someone's data.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file; give the path of a folder to create")
    if not path.is_dir() or not any(path.iterdir()):
        return False
    if not is_own(path):
        raise OutputError(f"{flag} {path} holds files that are not {what}; choose an empty or new {flag} "
                          f"(--overwrite only replaces {what})")
    if not overwrite:
        raise OutputError(f"{flag} {path} already holds {what}; pass --overwrite to replace it, or choose "
                          f"another {flag}")
    return True


def check_output_file(path: str | Path, flag: str = "--out") -> None:
    """Refuse an output file path that is a folder, before the work that would end in writing it."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give the path of a file to write")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"{flag} {path}: {path.parent} is a file, not a folder; choose another {flag}")


def partial_dir(path: str | Path) -> Path:
    """Where a folder is assembled before it is published under ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def publish_dir(assembled: Path, path: Path) -> None:
    """Put a finished folder in place of ``path`` (replacing an earlier one) by renames.

    The old folder is moved aside first and deleted only once the new one is in place, so a
    kill at any moment leaves either the old or the new folder under ``path``, never a mix.
    """
    if path.exists():
        old = path.with_name(f"{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(assembled, path)
        shutil.rmtree(old)
    else:
        os.replace(assembled, path)
