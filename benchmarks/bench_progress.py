"""Carry a resumable leaderboard bench's finished work to another machine in a few kilobytes.

A `brainrecon bench leaderboard --out OUT` folder holds the simulated store, every run's checkpoints and the
reconstructions: gigabytes. What the same command needs of it to skip finished work is small:
- OUT/bench.json, the bench's config (a resumed bench refuses another);
- OUT/rows/*.json, the finished rows (each already scored: nothing of its runs is read again), except a row
  whose run an unfinished Ecphory row will still reconstruct from (Psychometry's, until Psychometry + Ecphory
  is done: then both are kept);
- for the row in progress, the training seeds after the first that have finished: their bench_cost.json,
  metrics.json and model.json. Such a seed is scored by its own held-out evaluation (metrics.json), so no
  checkpoint of it is needed again.
The store is simulated again from the world config, deterministically. The first seed of an unfinished row is
trained again: its run is reconstructed and scored in full, which needs its weights.

    python benchmarks/bench_progress.py save OUT KEEP      # copy OUT's finished work into the small folder KEEP
    python benchmarks/bench_progress.py restore KEEP OUT   # into a new or resumed OUT; then the bench command
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from brainrecon.bench.leaderboard import LeaderboardConfig, planned_rows

SEED_RUN_FILES = ("bench_cost.json", "metrics.json", "model.json")


def finished_work(out: Path) -> list[Path]:
    """The files of ``out`` (relative) that a resumed bench reads instead of redoing the work."""
    if not (out / "bench.json").is_file():
        raise SystemExit(f"{out} is not a bench folder (no bench.json); give the --out of `brainrecon bench`")
    needed = runs_still_needed(out)
    files = [Path("bench.json"), *(p.relative_to(out) for p in sorted((out / "rows").glob("*.json"))
                                   if p.stem not in needed)]
    for run in sorted((out / "runs").glob("*-seed*")):
        if run.is_dir() and all((run / name).is_file() for name in SEED_RUN_FILES):
            files += [(run / name).relative_to(out) for name in SEED_RUN_FILES]
    return files


def runs_still_needed(out: Path) -> set[str]:
    """The rows whose runs a planned but unfinished Ecphory row reconstructs from (it scores its model's run)."""
    config = LeaderboardConfig.model_validate(json.loads((out / "bench.json").read_text())["config"])
    return {model for name, model, _, _, ecphory in planned_rows(config)
            if ecphory and not (out / "rows" / f"{name}.json").is_file()}


def copy_files(source: Path, target: Path, files: list[Path]) -> None:
    for relative in files:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        temporary = (target / relative).with_name((target / relative).name + ".partial")
        shutil.copyfile(source / relative, temporary)
        temporary.replace(target / relative)  # never a half-copied file under the real name


def save(out: Path, keep: Path) -> list[Path]:
    """Replace ``keep`` with ``out``'s finished work."""
    files = finished_work(out)
    if keep.exists():
        if not (keep / "bench.json").is_file():
            raise SystemExit(f"{keep} exists and holds no saved bench; choose another folder to keep the work in")
        shutil.rmtree(keep)
    copy_files(out, keep, files)
    return files


def restore(keep: Path, out: Path) -> list[Path]:
    """Copy ``keep``'s saved work into ``out``, refusing a bench folder of another config; files already in
    ``out`` are kept (they are as new or newer)."""
    files = finished_work(keep)
    marker = out / "bench.json"
    if marker.is_file() and json.loads(marker.read_text()) != json.loads((keep / "bench.json").read_text()):
        raise SystemExit(f"{out} holds a bench of another config than the one saved in {keep}; choose another --out")
    missing = [relative for relative in files if not (out / relative).exists()]
    copy_files(keep, out, missing)
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["save", "restore"])
    parser.add_argument("source", type=Path, help="save: the bench's --out; restore: the saved folder")
    parser.add_argument("target", type=Path, help="save: the folder to keep the work in; restore: the bench's --out")
    args = parser.parse_args()
    copied = (save if args.action == "save" else restore)(args.source, args.target)
    rows = sorted(p.stem for p in copied if p.parent.name == "rows")
    seeds = sorted({p.parent.name for p in copied if p.parent.parent.name == "runs"})
    print(f"{args.action}d {len(copied)} files into {args.target}: rows {rows or 'none'}, "
          f"finished extra seeds {seeds or 'none'}")


if __name__ == "__main__":
    main()
