"""Benchmark: which deep model `brainrecon demo` trains, chosen on held-out *training* stimuli (not a test).

    .venv/bin/brainrecon simulate --config default --out /tmp/demo-choice/store --no-score
    .venv/bin/python benchmarks/choose_demo_model.py --store /tmp/demo-choice/store --workdir /tmp/demo-choice \\
        --doc docs/benchmarks/demo-model.md

Every candidate in ``brainrecon.demo.DEEP_CANDIDATES`` is trained exactly as the demo trains it
(``demo.deep_model_config``: its preset, the demo's steps and precision), once per training seed, the seeds
interleaved so that both candidates see the machine in the same state. Each run is read from its own
RUN/validation.json: the validation retrieval (top-1 among each subject's held-out training stimuli, averaged
over subjects) at the weights the preset keeps. The wall time is that of ``train()`` in this process, start-up
and target loading excluded. Nothing here evaluates on test images: ``final_evaluation`` is never called, so
the choice cannot have seen them. The candidate with the best mean validation retrieval, among those whose
median wall time fits the budget (the slowest candidate's median, unless ``--budget-seconds`` says otherwise),
is the one to name in ``demo.DEEP``; the page says which it is.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from brainrecon.bench.leaderboard import world_record, world_text
from brainrecon.config import preset_names
from brainrecon.data import open_store
from brainrecon.data.simworld import WorldConfig
from brainrecon.demo import DEEP, DEEP_CANDIDATES, deep_model_config
from brainrecon.evaluate.evaluation import student_t_interval
from brainrecon.io import atomic_write_json, atomic_write_text
from brainrecon.provenance import source_commit
from brainrecon.train import train

SIMULATED = ("**Simulated world: a testbed with a known ceiling. These figures are not NSD results and are not "
             "comparable with published tables.**")


def kept_validation(run: Path) -> dict:
    """The validation score at the weights the run kept (its chosen step; the last score if none was chosen)."""
    record = json.loads((run / "validation.json").read_text())
    chosen = record.get("chosen_step")
    entries = [e for e in record["curve"] if e["step"] == chosen] or record["curve"][-1:]
    return {"step": entries[0]["step"], "retrieval": entries[0]["retrieval"], "cosine": entries[0]["cosine"],
            "stimuli": record.get("stimuli")}


def run_candidates(store: Path, workdir: Path, seeds: list[int]) -> list[dict]:
    """Train every candidate for every seed (seed-major, so the candidates alternate); reuse finished runs."""
    rows = {choice.preset: {"preset": choice.preset, "label": choice.label, "steps": choice.steps, "runs": {}}
            for choice in DEEP_CANDIDATES}
    for seed in seeds:
        for choice in DEEP_CANDIDATES:
            run, saved = workdir / f"{choice.preset}-seed{seed}", workdir / f"{choice.preset}-seed{seed}.json"
            if not saved.is_file():
                config = deep_model_config(choice, training_seed=seed)
                started = time.perf_counter()
                train(config, store, run, progress=False, overwrite=True)
                seconds = time.perf_counter() - started
                atomic_write_json(saved, {"seconds": seconds, "mixed_precision": config.mixed_precision,
                                          **kept_validation(run)})
            result = json.loads(saved.read_text())
            rows[choice.preset]["runs"][str(seed)] = result
            print(f"{choice.label} ({choice.steps} steps), seed {seed}: validation retrieval "
                  f"{100 * result['retrieval']:.1f}% at step {result['step']}, {result['seconds']:.1f} s", flush=True)
    for row in rows.values():
        values = [r["retrieval"] for r in row["runs"].values()]
        row["retrieval_mean"], row["retrieval_ci95"] = student_t_interval(values) if len(values) > 1 \
            else (values[0], None)
        row["seconds_median"] = statistics.median(r["seconds"] for r in row["runs"].values())
        row["mixed_precision"] = next(iter(row["runs"].values()))["mixed_precision"]
    return list(rows.values())


def choose(rows: list[dict], budget: float) -> dict:
    """The best mean validation retrieval among the candidates whose median wall time fits ``budget``."""
    fitting = [row for row in rows if row["seconds_median"] <= budget]
    return max(fitting, key=lambda row: row["retrieval_mean"])


def store_world(store: Path) -> dict:
    """The store's world as the bench pages record it (config and its sha256), named by the world preset of the
    same content, if one has it, so that the page still says which world it measured after a preset changes."""
    record = world_record(WorldConfig.model_validate(open_store(store).source["config"]))
    same = [name for name in preset_names("worlds") if world_record(name)["sha256"] == record["sha256"]]
    return {**record, "name": same[0] if same else "the store's world (no preset has its config)"}


def _per_subject(counts: dict[str, int] | None) -> str:
    return "; ".join(f"{subject} {n}" for subject, n in (counts or {}).items()) or "sizes not recorded"


def markdown(result: dict) -> str:
    lines = ["# The demo's deep model, chosen on held-out training stimuli", "",
             "Made by `benchmarks/choose_demo_model.py` (commands below). Each candidate is trained as "
             "`brainrecon demo` trains it, once per training seed.", "",
             "| candidate (preset, steps) | validation retrieval at the kept weights | per seed | median wall time |",
             "|---|---:|---|---:|"]
    for row in result["rows"]:
        mean, ci = row["retrieval_mean"], row["retrieval_ci95"]
        spread = f" ± {100 * ci:.1f}" if ci is not None else ""
        seeds = ", ".join(f"{100 * r['retrieval']:.1f}" for r in row["runs"].values())
        mark = "**" if row["preset"] == result["chosen"] else ""
        lines.append(f"| {mark}{row['label']} (`{row['preset']}`, {row['steps']} steps){mark} | "
                     f"{100 * mean:.1f}{spread} | {seeds} | {row['seconds_median']:.1f} s |")
    chosen = next(row for row in result["rows"] if row["preset"] == result["chosen"])
    lines += ["",
              f"- **Chosen: {chosen['label']} (`{chosen['preset']}`, {chosen['steps']} steps)**, the best mean "
              f"validation retrieval among the candidates whose median wall time fits the budget of "
              f"{result['budget_seconds']:.1f} s. `brainrecon.demo.DEEP` names "
              f"`{result['demo_deep']}`{'' if result['demo_deep'] == result['chosen'] else ' (NOT the choice)'}.",
              f"- Validation retrieval: top-1 among each subject's held-out *training* stimuli "
              f"({_per_subject(result['validation_stimuli'])}), averaged over the subjects; mean ± 95% Student-t "
              f"CI over the training seeds {result['seeds']}. Each run's validation slice is drawn by its seed, "
              f"the same for every candidate. The candidates predict different spaces (small-CLIP image tokens, "
              f"small-CLIP pooled), so the score is identification of the same held-out images, each in its "
              f"model's own space, which is what the demo reports.",
              "- Wall time: `train()` in one process (start-up and target loading excluded), precision "
              f"{chosen['mixed_precision']} (the demo's choice on this CPU).",
              "- No test image was read: the runs are never evaluated here.",
              *[f"- {line}" for line in world_text(result)],
              f"- Machine: {result['machine']}; commit {result['commit']}; {result['date']}.",
              "", "```bash", *result["commands"], "```", "", SIMULATED]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True,
                        help="a world's store (brainrecon simulate); the page names its world")
    parser.add_argument("--workdir", type=Path, required=True, help="runs and per-run results (resumable)")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help="the wall-time budget (default: the slowest candidate's median)")
    parser.add_argument("--doc", type=Path, default=None, help="also write the page here (and its .json beside)")
    args = parser.parse_args()
    if not (args.store / "manifest.json").is_file():
        parser.error(f"--store {args.store}: not a brainrecon store (no manifest.json); make one with "
                     f"`brainrecon simulate --out {args.store} --no-score`")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give integers separated by commas, e.g. 0,1,2")
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = run_candidates(args.store, args.workdir, seeds)
    budget = args.budget_seconds or max(row["seconds_median"] for row in rows)
    commit = source_commit()  # "+uncommitted" when the package differs from it (e.g. the candidates' budgets)
    stimuli = json.loads((args.workdir / f"{rows[0]['preset']}-seed{seeds[0]}.json").read_text()).get("stimuli")
    world = store_world(args.store)
    simulate = (f"brainrecon simulate --config {world['name']} --out STORE --no-score"
                if world["name"] in preset_names("worlds") else "brainrecon simulate --out STORE --no-score")
    result = {"rows": rows, "seeds": seeds, "world": world, "budget_seconds": budget,
              "chosen": choose(rows, budget)["preset"],
              "demo_deep": DEEP.preset, "validation_stimuli": stimuli, "commit": commit,
              "date": datetime.now(UTC).date().isoformat(),
              "machine": f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
                         f"{platform.processor() or platform.machine()}",
              "commands": [simulate,
                           f"python benchmarks/choose_demo_model.py --store STORE --workdir DIR --seeds {args.seeds}"]}
    page = markdown(result)
    atomic_write_json(args.workdir / "demo-model.json", result)
    atomic_write_text(args.workdir / "demo-model.md", page)
    if args.doc:
        atomic_write_text(args.doc, page)
        atomic_write_json(args.doc.with_suffix(".json"), result)
    print(page)


if __name__ == "__main__":
    main()
