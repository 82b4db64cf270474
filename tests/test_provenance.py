"""`provenance.source_commit`: which code made a result, and never an enclosing repository's commit."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from brainrecon.provenance import UNKNOWN, source_commit

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(folder, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false",
                           *args], cwd=folder, check=True, capture_output=True, text=True).stdout.strip()


@needs_git
def test_a_tracked_package_gives_its_commit_and_says_when_its_files_are_edited(tmp_path):
    package = tmp_path / "repo" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    git(tmp_path / "repo", "init", "-q")
    git(tmp_path / "repo", "add", ".")
    git(tmp_path / "repo", "commit", "-q", "-m", "one")
    head = git(tmp_path / "repo", "rev-parse", "--short", "HEAD")
    assert source_commit(package) == head
    (tmp_path / "repo" / "notes.md").write_text("not the package\n")  # untracked, outside the package: clean
    assert source_commit(package) == head
    (package / "__init__.py").write_text("x = 2\n")
    assert source_commit(package) == head + "+uncommitted"


@needs_git
def test_an_untracked_package_inside_another_repository_has_no_commit(tmp_path):
    git(tmp_path, "init", "-q")  # e.g. a virtual environment kept inside a project's checkout
    (tmp_path / "README").write_text("a project\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "one")
    package = tmp_path / "venv" / "site-packages" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    assert source_commit(package) == UNKNOWN
    outside = tmp_path.parent / f"{tmp_path.name}-nogit"
    outside.mkdir()
    assert source_commit(outside) == UNKNOWN


def test_without_git_the_commit_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on it
    assert source_commit() == UNKNOWN
