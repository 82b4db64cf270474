"""Carry a resumable leaderboard bench's finished work to another machine in a few kilobytes.

A `brainrecon bench leaderboard --out OUT` folder holds the simulated store, every run's checkpoints and the
reconstructions: gigabytes. What the same command needs of it to skip finished work is small:
- OUT/bench.json, the bench's config (a resumed bench refuses another), and OUT/world.json, a fingerprint of the
  store the work was made on (the store is simulated again from the world config, and must hold the same betas);
- OUT/rows/*.json, the finished rows (each already scored: nothing of its runs is read again), except a row
  whose run an unfinished Ecphory row will still reconstruct from (Psychometry's, until Psychometry + Ecphory
  is done: then both are kept);
- for every trained row, the training seeds after the first that have finished (a finished row's too: a bench
  given more seeds scores all of a row's seeds again): their bench_cost.json, config.yaml (a resumed bench
  reuses a run only for the config it trained with), metrics.json and model.json.
  Such a seed is scored by its own held-out evaluation (metrics.json), so no checkpoint of it is needed again.
The first seed of an unfinished row is trained again: its run is reconstructed and scored in full, which needs
its weights.

    python benchmarks/bench_progress.py save OUT KEEP      # copy OUT's finished work into the small folder KEEP
    python benchmarks/bench_progress.py restore KEEP OUT   # into a new or resumed OUT; then the bench command
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from pydantic import ValidationError

from brainrecon.bench.leaderboard import (WORLD_FINGERPRINT, LeaderboardConfig, check_world_fingerprint, claim_workdir,
                                          planned_rows, row_seeds)
from brainrecon.config import describe
from brainrecon.data import open_store
from brainrecon.errors import ConfigError

BENCH_FILES = ("bench.json", WORLD_FINGERPRINT)
SEED_RUN_FILES = ("bench_cost.json", "config.yaml", "metrics.json", "model.json")


def bench_config(folder: Path) -> LeaderboardConfig:
    """The leaderboard config a bench folder (or a saved one) was made with."""
    marker = folder / "bench.json"
    if not marker.is_file():
        raise SystemExit(f"{folder} is not a bench folder (no bench.json); give the --out of `brainrecon bench "
                         f"leaderboard`, or a folder `save` wrote")
    saved = json.loads(marker.read_text())
    if saved.get("bench") != "leaderboard":
        raise SystemExit(f"{folder} holds a {saved.get('bench')} bench; only leaderboard benches are carried")
    try:
        return LeaderboardConfig.model_validate(saved["config"])
    except ValidationError as error:
        raise SystemExit(f"{marker}: its config is no longer valid ({describe(error)}); finish that bench with the "
                         f"code that started it, or start afresh") from None


def finished_rows(folder: Path, config: LeaderboardConfig) -> list[str]:
    """The rows whose JSON is written and that no unfinished row still needs: an Ecphory row reconstructs from
    its model's run, so until it is done (with its paired gain), neither it nor its model's row counts."""
    done = {name for name, *_ in planned_rows(config) if (folder / "rows" / f"{name}.json").is_file()}
    for name, model, _, _, ecphory in planned_rows(config):
        if ecphory and (name not in done or "gain" not in
                        json.loads((folder / "rows" / f"{name}.json").read_text()).get("ecphory", {})):
            done -= {name, model}
    return sorted(done)


def finished_seeds(folder: Path, config: LeaderboardConfig) -> list[str]:
    """The extra training seeds (``NAME-seedN``, as `seed_retrievals` names them) that have finished: every file
    a resumed bench reads of them is there. A finished row's are kept too: a bench given more seeds scores all
    of a row's seeds again."""
    names = [f"{name}-seed{seed}" for name, _, _, _, ecphory in planned_rows(config) if not ecphory
             for seed in row_seeds(config, name)[1:]]
    return [name for name in names if all((folder / "runs" / name / f).is_file() for f in SEED_RUN_FILES)]


def work_files(folder: Path, config: LeaderboardConfig) -> tuple[list[Path], list[str], list[str]]:
    """The files (relative to ``folder``) that carry its finished work, its finished rows and extra seeds."""
    rows, files = finished_rows(folder, config), [Path(f) for f in BENCH_FILES if (folder / f).is_file()]
    seeds = finished_seeds(folder, config)
    files += [Path("rows") / f"{name}.json" for name in rows]
    files += [Path("runs") / name / f for name in seeds for f in SEED_RUN_FILES]
    return files, rows, seeds


def copy_files(source: Path, target: Path, files: list[Path]) -> None:
    """Copy each file under the same relative path, through a temporary name: never a half-copied file."""
    for relative in files:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        temporary = (target / relative).with_name((target / relative).name + ".partial")
        shutil.copyfile(source / relative, temporary)
        temporary.replace(target / relative)


def check_apart(first: Path, second: Path) -> None:
    a, b = first.resolve(), second.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise SystemExit(f"{first} and {second} overlap; keep the saved work in a folder outside the bench's --out")


def save(out: Path, keep: Path) -> tuple[list[str], list[str]]:
    """Replace ``keep`` with ``out``'s finished work (written beside it first, then swapped in)."""
    check_apart(out, keep)
    if not (out / WORLD_FINGERPRINT).is_file() and (out / "store").is_dir():  # a bench begun before benches
        check_world_fingerprint(out, open_store(out / "store"))                # recorded it: record it now
    files, rows, seeds = work_files(out, bench_config(out))
    if keep.exists() and not (keep / "bench.json").is_file():
        raise SystemExit(f"{keep} exists and holds no saved bench; choose another folder to keep the work in")
    staging = keep.with_name(keep.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    copy_files(out, staging, files)
    if keep.exists():
        shutil.rmtree(keep)
    staging.rename(keep)
    return rows, seeds


def restore(keep: Path, out: Path) -> tuple[list[str], list[str]]:
    """Copy ``keep``'s saved work into ``out``: a new folder or a bench of the same config. A row or a seed
    already finished in ``out`` is left as it is; a seed's files are copied together."""
    check_apart(keep, out)
    config = bench_config(keep)
    files, rows, seeds = work_files(keep, config)
    try:  # the bench's own rule: a new folder, or one holding this bench with this config
        claim_workdir(out, "leaderboard", config)
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    for name in [WORLD_FINGERPRINT, *(Path("rows") / f"{row}.json" for row in rows)]:
        if Path(name) in files and not (out / name).exists():
            copy_files(keep, out, [Path(name)])
    restored = [seed for seed in seeds if not (out / "runs" / seed / "bench_cost.json").is_file()]
    copy_files(keep, out, [Path("runs") / seed / f for seed in restored for f in SEED_RUN_FILES])
    return rows, restored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["save", "restore"])
    parser.add_argument("source", type=Path, help="save: the bench's --out; restore: the saved folder")
    parser.add_argument("target", type=Path, help="save: the folder to keep the work in; restore: the bench's --out")
    args = parser.parse_args()
    rows, seeds = (save if args.action == "save" else restore)(args.source, args.target)
    print(f"{args.action}d into {args.target}: rows {rows or 'none'}, finished extra seeds {seeds or 'none'}")


if __name__ == "__main__":
    main()
