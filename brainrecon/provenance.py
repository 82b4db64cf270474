"""Which code made a result: the git commit of the brainrecon source that runs.

Runs record it in model.json and benches on their pages, so a figure can be traced to the code that
measured it, even when a resumable bench spans several commits.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

UNKNOWN = "unknown"


def _git(package: Path, *args: str) -> str | None:
    try:
        # --no-optional-locks: `git status` would otherwise take the index lock, and a user's own `git commit`
        # during a long bench could fail on it
        done = subprocess.run(["git", "--no-optional-locks", *args], capture_output=True, text=True, cwd=package,
                              check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_commit(package: Path | None = None) -> str:
    """The short commit of the checkout brainrecon's package is run from, with ``+uncommitted`` when tracked
    files of the package differ from it; ``unknown`` when the package is not a checkout's (an installed wheel,
    or a virtual environment that happens to sit inside some other repository) or git is missing."""
    package = (package or Path(__file__).resolve().parent).resolve()
    if _git(package, "ls-files", "--error-unmatch", "__init__.py") is None:
        return UNKNOWN  # not tracked there: the commit would be the enclosing repository's, not this code's
    commit = _git(package, "rev-parse", "--short", "HEAD")
    if not commit:
        return UNKNOWN
    # tracked files only: an untracked file (a preset being drafted, a cache) is not part of the commit's code
    # and may never be; what a run loads is named in its own config
    edited = _git(package, "status", "--porcelain", "--untracked-files=no", "--", ".")
    return commit + ("+uncommitted" if edited else "")
