"""Every command is safe at its boundary: bad input is one `brainrecon: error:` line, exit 2, nothing written.

Each row of CASES is a command as a user would type it, the exit code and a phrase of the message it
must give, and the path that must be left exactly as it was (or stay absent). The commands run in
this process through the real entry point (`brainrecon.cli.main`), so a traceback fails the test.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from brainrecon.cli import main
from brainrecon.config import load_config
from brainrecon.data.simworld import WorldConfig
from brainrecon.errors import ConfigError, OutputError
from brainrecon.io import atomic_copy, atomic_save_image, exclusive_lock
from brainrecon.reconstruct import ReconstructConfig, reconstruct

torch.set_num_threads(1)


def snapshot(path: Path) -> dict | None:
    """Every file under ``path`` with its sha256 (None if absent): 'untouched' means an equal snapshot."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def places(tiny_world, train_world, ridge_run, tmp_path_factory) -> dict[str, Path]:
    """The inputs the cases refer to by name: stores, a run and its reconstructions, bad configs, a user's files."""
    root = tmp_path_factory.mktemp("boundaries")
    run = root / "run"
    shutil.copytree(ridge_run, run)
    recons = root / "recons"
    reconstruct(run, recons, ReconstructConfig(n_images=2, k=1, steps=2, ecphory=False), progress=False)
    tampered = root / "tampered"
    shutil.copytree(recons, tampered)
    png = next((tampered / "subj01").glob("*.png"))
    shutil.copyfile(next(p for p in (tampered / "subj01").glob("*.png") if p != png), png)  # a swapped image
    mine = root / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    (root / "a-file").write_text("not a folder")
    (root / "tiny").write_text("")  # a file named like a preset
    (root / "empty.yaml").write_text("")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    good = {"model": {"kind": "ridge", "alphas": [100.0], "folds": 2}, "targets": {"clip": "simworld"},
            "subjects": ["subj01"], "eval": {"way": 50, "draws": 2}}
    configs = {"bad-lr": {**good, "model": {"kind": "mindeye2"}, "optim": {"lr": -1.0}},
               "typo": {**good, "model": {"kind": "mindeye2", "hiden": 64}},
               "stranger": {**good, "subjects": ["subj09"]}, "good": good,
               "no-sessions": {**good, "sessions": [99]}}
    for name, values in configs.items():
        (root / f"{name}.yaml").write_text(json.dumps(values))  # JSON is YAML
    benches = {"lb-nowhere": {"world": "nowhere", "models": ["ridge"]},
               "eff-stranger": {"world": "tiny", "target": "subj09", "session_counts": [1], "steps": 2}}
    for name, values in benches.items():
        (root / f"{name}.yaml").write_text(json.dumps(values))
    return {"root": root, "store": tiny_world, "train_store": train_world, "run": run, "recons": recons,
            "tampered": tampered, "mine": mine, "file": root / "a-file", "new": root / "new",
            "absent": root / "absent", **{name: root / f"{name}.yaml" for name in [*configs, *benches]},
            "empty": root / "empty.yaml", "list": root / "list.yaml", "noext": root / "tiny"}


RECONSTRUCT = ["reconstruct", "--run", "{run}", "--out", "{new}", "--no-progress"]
TRAIN = ["train", "--data", "{store}", "--out", "{new}", "--no-progress", "--config"]
# (name, command, exit code, phrase of the message, path that must stay as it was)
CASES = [
    ("simulate: empty YAML", ["simulate", "--config", "{empty}", "--out", "{new}"], 2, "is empty", "new"),
    ("simulate: YAML that is a list", ["simulate", "--config", "{list}", "--out", "{new}"], 2,
     "must hold a mapping", "new"),
    ("simulate: a preset name that is also a file here", ["simulate", "--config", "{noext}", "--out", "{new}"], 2,
     "give it a .yaml name", "new"),
    ("simulate: --out is a file", ["simulate", "--config", "tiny", "--out", "{file}"], 2, "is a file", "file"),
    ("simulate: --overwrite on someone's folder", ["simulate", "--config", "tiny", "--out", "{mine}",
                                                   "--overwrite"], 2, "not a brainrecon store", "mine"),
    ("simulate: existing store", ["simulate", "--config", "tiny", "--out", "{store}"], 2,
     "already holds a brainrecon store; pass --overwrite", "store"),
    ("simulate: --way 1", ["simulate", "--config", "tiny", "--out", "{new}", "--way", "1"], 2, "--way", "new"),
    ("train: negative learning rate", [*TRAIN, "{bad-lr}"], 2, "optim.lr", "new"),
    ("train: model option typo", [*TRAIN, "{typo}"], 2, "hiden", "new"),
    ("train: unknown subject", [*TRAIN, "{stranger}"], 2, "subj09", "new"),
    ("train: sessions the store lacks", [*TRAIN, "{no-sessions}"], 2, "no training trials", "new"),
    ("train: missing store", ["train", "--config", "{good}", "--data", "{absent}", "--out", "{new}"], 2,
     "no brainrecon store", "new"),
    ("train: --max-steps 0", [*TRAIN, "{good}", "--max-steps", "0"], 2, "max_steps", "new"),
    ("train: --max-steps -1", [*TRAIN, "{good}", "--max-steps", "-1"], 2, "max_steps", "new"),
    ("train: --out is a file", ["train", "--config", "{good}", "--data", "{store}", "--out", "{file}"], 2,
     "is a file", "file"),
    ("train: --overwrite on someone's folder", ["train", "--config", "{good}", "--data", "{store}", "--out",
                                                "{mine}", "--overwrite"], 2, "not a brainrecon run", "mine"),
    ("train: existing run", ["train", "--config", "{run}/config.yaml", "--data", "{train_store}", "--out",
                             "{run}"], 2, "already holds a run; pass --resume", "run"),
    ("train: --resume with --overwrite", ["train", "--config", "{run}/config.yaml", "--data", "{train_store}",
                                          "--out", "{run}", "--resume", "--overwrite"], 2, "give one of them", "run"),
    ("train: --resume on another store", ["train", "--config", "{run}/config.yaml", "--data", "{store}", "--out",
                                          "{run}", "--resume"], 2, "manifest sha256", "run"),
    ("reconstruct: into a store", ["reconstruct", "--run", "{run}", "--out", "{store}", "--overwrite"], 2,
     "not brainrecon reconstructions", "store"),
    ("reconstruct: existing reconstructions", ["reconstruct", "--run", "{run}", "--out", "{recons}"], 2,
     "already holds brainrecon reconstructions; pass --overwrite", "recons"),
    ("reconstruct: --out is a file", ["reconstruct", "--run", "{run}", "--out", "{file}"], 2, "is a file", "file"),
    ("reconstruct: --generator foo", [*RECONSTRUCT, "--generator", "foo"], 2, "--generator", "new"),
    ("reconstruct: --alpha 2", [*RECONSTRUCT, "--alpha", "2"], 2, "--alpha", "new"),
    ("reconstruct: --k 0", [*RECONSTRUCT, "--k", "0"], 2, "--k", "new"),
    ("reconstruct: --steps 0", [*RECONSTRUCT, "--steps", "0"], 2, "--steps", "new"),
    ("reconstruct: --n-images 0", [*RECONSTRUCT, "--n-images", "0"], 2, "--n-images", "new"),
    ("reconstruct: --device cuda without CUDA", [*RECONSTRUCT, "--device", "cuda"], 2, "--device", "new"),
    ("reconstruct: on another store", [*RECONSTRUCT, "--data", "{store}"], 2, "manifest sha256", "new"),
    ("memory build: --search foo", ["memory", "build", "--run", "{run}", "--search", "foo"], 2, "--search", "run"),
    ("evaluate: --way 1", ["evaluate", "--run", "{run}", "--way", "1"], 2, "--way", "run"),
    ("evaluate: --way 0", ["evaluate", "--run", "{run}", "--way", "0"], 2, "--way", "run"),
    ("evaluate: --draws 0", ["evaluate", "--run", "{run}", "--draws", "0"], 2, "--draws", "run"),
    ("evaluate: --device cuda without CUDA", ["evaluate", "--run", "{run}", "--device", "cuda"], 2, "--device",
     "run"),
    ("evaluate: an edited reconstruction", ["evaluate", "--run", "{run}", "--recons", "{tampered}"], 2,
     "sha256 differs", "run"),
    ("evaluate: on another store", ["evaluate", "--run", "{run}", "--data", "{store}"], 2, "manifest sha256",
     "run"),
    ("bank build: --device cuda without CUDA", ["bank", "build", "--images", "{mine}", "--clip", "simworld",
                                                "--out", "{new}", "--device", "cuda"], 2, "--device", "new"),
    ("nsd prepare: missing root", ["nsd", "prepare", "--root", "{absent}", "--subjects", "1", "--out", "{new}"], 2,
     "is not a folder", "new"),
    ("nsd prepare: a subject that is not a number", ["nsd", "prepare", "--root", "{root}", "--subjects", "one",
                                                     "--out", "{new}"], 2, "subject numbers", "new"),
    ("nsd prepare: --sessions that is not a count", ["nsd", "prepare", "--root", "{root}", "--subjects", "1",
                                                     "--out", "{new}", "--sessions", "many"], 2, "'available'",
     "new"),
    ("store info: no store", ["store", "info", "{absent}"], 2, "no brainrecon store at", "absent"),
    ("store import-bdata: --image-size 0", ["store", "import-bdata", "--file", "{absent}", "--images", "{mine}",
                                            "--out", "{new}", "--image-size", "0"], 2, "positive number of pixels",
     "mine"),
    ("evaluate: --recons is a store", ["evaluate", "--run", "{run}", "--recons", "{store}"], 2,
     "is not a folder written by `brainrecon reconstruct`", "run"),
    ("evaluate: --out is a folder", ["evaluate", "--run", "{run}", "--out", "{mine}"], 2, "is a folder", "run"),
    ("report: --metrics that is not a metrics file", ["report", "--run", "{run}", "--metrics", "{run}/model.json"],
     2, "is not a metrics file written by `brainrecon evaluate`", "run"),
    ("bank search: --out is a folder", ["bank", "search", "--bank", "{absent}", "--run", "{run}", "--out",
                                        "{mine}"], 2, "is a folder", "mine"),
    ("bank build: --out is someone's folder", ["bank", "build", "--images", "{recons}/subj01", "--clip",
                                               "simworld", "--out", "{mine}"], 2, "not an image bank", "mine"),
    ("bench leaderboard: --doc that is not a page", ["bench", "leaderboard", "--preset", "smoke", "--out", "{new}",
                                                     "--doc", "{mine}"], 2, "is not a .md page", "mine"),
    ("bench leaderboard: a world that does not exist", ["bench", "leaderboard", "--preset", "{lb-nowhere}",
                                                        "--out", "{new}"], 2, "no worlds preset named 'nowhere'",
     "new"),
    ("bench efficiency: a target the world lacks", ["bench", "efficiency", "--preset", "{eff-stranger}", "--out",
                                                    "{new}"], 2, "'subj09' is not a subject", "new"),
    ("demo: a world that does not exist", ["demo", "--config", "nowhere", "--out", "{new}"], 2,
     "no worlds preset named 'nowhere'", "new"),
    ("assets check: --n 1", ["assets", "check", "{absent}", "--n", "1"], 2, "--n", "absent"),
    ("assets train: --out is a file", ["assets", "train", "--out", "{file}", "--quick"], 2, "is a file", "file"),
]


def brainrecon(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["brainrecon", *args])
    with pytest.raises(SystemExit) as ended:
        main()
    captured = capsys.readouterr()
    return int(ended.value.code or 0), captured.out + captured.err


@pytest.mark.parametrize(("name", "command", "code", "phrase", "watched"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(name, command, code, phrase, watched, places, monkeypatch, capsys):
    args = [part.format(**{k: str(v) for k, v in places.items()}) for part in command]
    before = snapshot(places[watched])
    exit_code, output = brainrecon(args, monkeypatch, capsys)
    assert exit_code == code, output
    assert phrase in output, output
    assert "Traceback" not in output
    assert snapshot(places[watched]) == before, f"{watched} was changed"
    assert not places["new"].exists() and not Path(f"{places['new']}.partial").exists()


def test_preset_names_are_never_looked_up_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()  # e.g. left by `brainrecon simulate --config tiny --out tiny`
    assert load_config(WorldConfig, "tiny", "worlds").n_subjects == 2
    (tmp_path / "mine.yaml").write_text("seed: 3\n")
    assert load_config(WorldConfig, "mine.yaml", "worlds").seed == 3
    with pytest.raises(ConfigError, match="config file missing.yaml does not exist"):
        load_config(WorldConfig, "missing.yaml", "worlds")


def test_a_held_lock_refuses_a_second_writer(tmp_path):
    target = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from brainrecon.io import exclusive_lock\n"
        f"with exclusive_lock({str(target)!r}):\n    print('held', flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match="another brainrecon process is writing"):
            with exclusive_lock(target):
                pass
    finally:
        holder.kill()
        holder.wait()
    deadline = time.time() + 10  # the kernel releases a dead process's lock
    while True:
        try:
            with exclusive_lock(target):
                break
        except OutputError:
            assert time.time() < deadline
            time.sleep(0.1)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    page, source = tmp_path / "page.md", tmp_path / "new.md"
    page.write_text("old")

    class HalfWritten:  # a PNG writer that dies half-way
        def save(self, fp, format):
            Path(fp).write_bytes(b"half a png")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_save_image(page, HalfWritten())
    with pytest.raises(FileNotFoundError):
        atomic_copy(source, page)
    assert page.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["page.md"]
    source.write_text("new")
    atomic_copy(source, page)
    assert page.read_text() == "new"
