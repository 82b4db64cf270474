"""`brainrecon bench efficiency`: does one multi-subject model beat per-subject models on little data?

For a target subject and 1, 2, 4 and all of its sessions:
- per-subject: the model trained on the target's sessions alone;
- multi-subject: the same model trained on every subject at once, the others with all their sessions;
and new-subject adaptation (MindEye2's one-hour claim):
- pretrain on the other subjects, then fine-tune on one session of the target (``init_from``),
  against training on that session alone (the per-subject 1-session run).

Every run gets the same optimiser-step budget (``steps``; the learning-rate schedule spans it),
so less data means more passes over it, not less training. Scores are the target subject's
held-out retrieval. Each run is a child `brainrecon train`; finished runs are reused on resume. The page says
which weights the runs keep, and names every run whose validation choice kept a step before its last.
With several training seeds the whole plan trains once per seed, and the page gives each figure's mean and
95% Student-t interval over seeds.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import model_validator

from brainrecon.bench.leaderboard import (TrainingSeeds, bench_world, claim_workdir, machine, run_commit,
                                          sim_train_config, train_in_child, trained_at_text, world_record, world_text)
from brainrecon.config import StrictConfig, load_config, validate_config
from brainrecon.data import open_store
from brainrecon.data.simworld import SIMULATED_NOTE, WorldConfig, subject_name
from brainrecon.evaluate.evaluation import student_t_interval
from brainrecon.io import atomic_write_json, atomic_write_text
from brainrecon.provenance import source_commit
from brainrecon.report.figures import pyplot, save_figure
from brainrecon.train.config import TrainConfig
from brainrecon.train.validation import VALIDATION


class EfficiencyConfig(StrictConfig):
    world: str = "default"
    model: str = "mindeye2"  # a multi-subject model with a sim-<model> preset
    target: str = "subj01"
    session_counts: list[int] = [1, 2, 4]  # plus "all" of the target's sessions
    steps: int = 300  # optimiser steps of every run
    train_overrides: dict[str, Any] = {}
    way: int = 300
    draws: int = 30
    seed: int = 42  # the retrieval draws'
    # training seeds: the first seed's runs keep the plain names (single-1, multi-1, ...), which older benches
    # wrote, and every further seed trains the whole plan again as NAME-seedN
    seeds: TrainingSeeds = [0]

    @model_validator(mode="after")
    def _world_model_and_target_exist(self) -> EfficiencyConfig:
        # checked before the bench folder is claimed and the world simulated, so a typo costs a second
        world = load_config(WorldConfig, self.world, "worlds")
        subjects = [subject_name(i) for i in range(world.n_subjects)]
        if self.target not in subjects:
            raise ValueError(f"target {self.target!r} is not a subject of world {self.world!r}; choose one of "
                             f"{subjects}")
        if world.n_subjects < 2:
            raise ValueError(f"world {self.world!r} has one subject; multi-subject training needs two or more")
        validate_config(TrainConfig, sim_train_config(self.model, self.train_overrides, self.way, self.draws,
                                                      self.seed, seed=0, steps=self.steps),
                        source=f"the efficiency bench's {self.model!r} training config")
        return self


def plan_runs(config: EfficiencyConfig, subjects: list[str], sessions: list[int], runs: Path) -> list[dict]:
    """The runs to train, seed by seed, in order (each adaptation needs its own seed's pretraining first)."""
    plan = []
    for index, seed in enumerate(config.seeds):
        plan += _seed_plan(config, subjects, sessions, runs, seed, "" if index == 0 else f"-seed{seed}")
    return plan


def _seed_plan(config: EfficiencyConfig, subjects: list[str], sessions: list[int], runs: Path, seed: int,
               suffix: str) -> list[dict]:
    others = [s for s in subjects if s != config.target]
    counts = [c for c in sorted(set(config.session_counts)) if c < len(sessions)] + [len(sessions)]
    base = sim_train_config(config.model, config.train_overrides, config.way, config.draws, config.seed, seed=seed,
                            steps=config.steps)
    plan = []
    for count in counts:
        label = "all" if count == len(sessions) else str(count)
        own = {config.target: sessions[:count]} if count < len(sessions) else {}
        plan.append({"name": f"single-{label}{suffix}", "kind": "per-subject", "sessions": count,
                     "config": {**base, "subjects": [config.target], "subject_sessions": own}})
        plan.append({"name": f"multi-{label}{suffix}", "kind": "multi-subject", "sessions": count,
                     "config": {**base, "subjects": subjects, "subject_sessions": own}})
    plan.append({"name": f"pretrain-others{suffix}", "kind": "pretraining", "sessions": 0,
                 "config": {**base, "subjects": others, "subject_sessions": {}}})
    plan.append({"name": f"adapt-1{suffix}", "kind": "adapted", "sessions": 1,
                 "config": {**base, "subjects": [config.target], "subject_sessions": {config.target: sessions[:1]},
                            "init_from": str(runs / f"pretrain-others{suffix}")}})
    return [{**item, "seed": seed} for item in plan]


def run_efficiency(config: EfficiencyConfig, out: Path, echo=print, preset: str = "custom") -> dict:
    commit = source_commit()  # the code that runs now, whatever is edited while it runs
    claim_workdir(out, "efficiency", config)
    store_path, runs = bench_world(out, config.world, echo), out / "runs"
    runs.mkdir(exist_ok=True)
    store = open_store(store_path)
    sessions = sorted(store.subject(config.target).sessions.tolist())
    rows = []
    plan = plan_runs(config, store.subjects, sessions, runs)
    for item in plan:
        run = runs / item["name"]
        done = out / "rows" / f"{item['name']}.json"
        if done.is_file():  # rows of older benches lack the seed and the kept step
            rows.append({**kept_steps(run), **json.loads(done.read_text()), "seed": item["seed"]})
            continue
        started = time.perf_counter()
        cost = train_in_child(item["name"], item["config"], store_path, run, runs / f"{item['name']}.log")
        row = {key: item[key] for key in ("name", "kind", "sessions", "seed")}
        row.update(cost, subjects=item["config"]["subjects"], commit=run_commit(run), **kept_steps(run))
        if item["kind"] != "pretraining":
            values = json.loads((run / "metrics.json").read_text())["subjects"][config.target]["values"]
            row.update(image_top1=values["image_retrieval"]["value"], image_ci95=values["image_retrieval"]["ci95"],
                       brain_top1=values["brain_retrieval"]["value"], brain_ci95=values["brain_retrieval"]["ci95"],
                       way=values["image_retrieval"]["way"])
        atomic_write_json(done, row)
        rows.append(row)
        echo(f"{item['name']}: {time.perf_counter() - started:.0f} s"
             + (f", image {100 * row['image_top1']:.1f}%" if "image_top1" in row else ""))
    trials_per_session = int(len(store.subject(config.target).train_rows()) / len(sessions))
    result = {"preset": preset, "config": config.model_dump(mode="json"), "world": world_record(config.world),
              "target": config.target,
              "weights": plan[0]["config"]["validation"],
              "n_sessions": len(sessions), "train_trials_per_session": trials_per_session, "rows": rows,
              "machine": machine(), "commit": commit, "date": datetime.now(UTC).isoformat(),
              "note": SIMULATED_NOTE}
    atomic_write_json(out / "efficiency.json", result)
    plot_efficiency(result, out / "efficiency.png")
    atomic_write_text(out / "efficiency.md", efficiency_markdown(result))
    return result


def cells(result: dict, kind: str) -> list[dict]:
    """One figure per session count of a kind: with one training seed its run's retrieval and CI over draws; with
    several (``n``), the mean and 95% Student-t interval over seeds."""
    out = []
    for sessions in sorted({r["sessions"] for r in result["rows"] if r["kind"] == kind}):
        rows = [r for r in result["rows"] if r["kind"] == kind and r["sessions"] == sessions]
        cell = {"sessions": sessions, "n": len(rows)}
        for metric in ("image", "brain"):
            values = [r[f"{metric}_top1"] for r in rows]
            cell[metric], cell[f"{metric}_ci95"] = ((values[0], rows[0][f"{metric}_ci95"]) if len(rows) == 1
                                                    else student_t_interval(values))
        out.append(cell)
    return out


def one_session_ratios(result: dict) -> dict[int, float]:
    """Per training seed, multi-subject over per-subject image retrieval with one session of the target."""
    def by_seed(kind: str) -> dict[int, float]:
        return {r["seed"]: r["image_top1"] for r in result["rows"] if r["kind"] == kind and r["sessions"] == 1}

    single, multi = by_seed("per-subject"), by_seed("multi-subject")
    return {seed: multi[seed] / single[seed] for seed in sorted(single.keys() & multi.keys()) if single[seed] > 0}


def plot_efficiency(result: dict, path: Path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.6, 3.6))
    for kind, marker in (("per-subject", "o"), ("multi-subject", "s")):
        points = cells(result, kind)
        axis.errorbar([c["sessions"] for c in points], [100 * c["image"] for c in points],
                      yerr=[100 * c["image_ci95"] for c in points], marker=marker, capsize=3, label=kind)
    for cell in cells(result, "adapted"):
        axis.errorbar([cell["sessions"]], [100 * cell["image"]], yerr=[100 * cell["image_ci95"]], marker="*",
                      markersize=11, ls="none", capsize=3, label="pretrained on others, adapted")
    axis.set_xscale("log", base=2)
    axis.set_xlabel(f"sessions of {result['target']} ({result['train_trials_per_session']} training trials each)")
    axis.set_ylabel("image retrieval top-1 (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)


def kept_steps(run: Path) -> dict:
    """``kept_step``, the step whose weights ``run`` kept, and ``last_step``, its last scored step (both None
    without a validation slice)."""
    path = run / VALIDATION
    record = json.loads(path.read_text()) if path.is_file() else {}
    curve = record.get("curve") or [{"step": None}]
    return {"kept_step": record.get("chosen_step"), "last_step": curve[-1]["step"]}


def weights_text(result: dict) -> str:
    """Which weights the runs keep, and every run that kept a step before its last: an early choice scores a
    barely trained model, which a table of means would hide."""
    weights = result["weights"]
    held = f"{100 * weights['fraction']:.0f}% of the training stimuli held out by stimulus"
    if weights["select"] == "last" or not weights["fraction"]:
        return ("Each run keeps its last weights"
                + (f" ({held} for the validation curves)" if weights["fraction"] else "") + ".")
    rule = f"the checkpoint with the best validation {weights['metric']}" + (
        ", if its paired gain over the last weights is beyond the slice's noise (else the last weights)"
        if weights["confirm"] else "")
    early = [f"{r['name']} (step {r['kept_step']} of {r['last_step']})" for r in result["rows"]
             if r.get("kept_step") is not None and r["kept_step"] < r["last_step"]]
    return (f"Each run keeps {rule} ({held}). "
            + (f"Runs that kept weights from before their last step: {', '.join(early)}." if early
               else "Every run kept its last step."))


def efficiency_markdown(result: dict) -> str:
    pct = lambda c, metric: f"{100 * c[metric]:.1f} ± {100 * c[metric + '_ci95']:.1f}"  # noqa: E731
    lines = ["| sessions of the target | per-subject image / brain | multi-subject image / brain |", "|---|---:|---:|"]
    single, multi = cells(result, "per-subject"), cells(result, "multi-subject")
    for a, b in zip(single, multi, strict=True):
        label = "all" if a["sessions"] == result["n_sessions"] else str(a["sessions"])
        lines.append(f"| {label} ({a['sessions'] * result['train_trials_per_session']} trials) | "
                     f"{pct(a, 'image')} / {pct(a, 'brain')} | {pct(b, 'image')} / {pct(b, 'brain')} |")
    adapted = cells(result, "adapted")
    alone = [c for c in single if c["sessions"] == 1]
    extra = ""
    if adapted and alone:
        a, b = adapted[0], alone[0]
        extra = (f"\n\nNew-subject adaptation, one session of {result['target']}: pretrained on the other subjects "
                 f"then fine-tuned, image {pct(a, 'image')}, brain {pct(a, 'brain')}; trained on that session alone, "
                 f"image {pct(b, 'image')}, brain {pct(b, 'brain')}.")
    ratios = one_session_ratios(result)
    if ratios:
        extra += ("\n\nOne session of the target: multi-subject ÷ per-subject image retrieval, per training seed: "
                  + ", ".join(f"{ratio:.2f} (seed {seed})" for seed, ratio in ratios.items()) + ".")
    config = result["config"]
    way = result["rows"][0].get("way", config["way"]) if result["rows"] else config["way"]
    seeds = config.get("seeds", [0])
    spread = (f"mean ± 95% Student-t CI over the {len(seeds)} training seeds {seeds}, each seed's figure over "
              f"{config['draws']} draws" if len(seeds) > 1 else f"± 95% CI over {config['draws']} draws; one training "
              f"seed")
    seconds = sum(r["train_seconds"] for r in result["rows"])
    return (f"# Data efficiency on the simulated world (preset `{result['preset']}`)\n\n"
            f"Made by `brainrecon bench efficiency --preset {result['preset']}` ({seconds / 60:.0f} min of training; "
            f"page written at commit {result['commit']}, {result['date'][:19]} UTC, {result['machine']['cpus']} "
            f"CPUs; {trained_at_text({r['name']: [r.get('commit')] for r in result['rows']})}).\n\n"
            + "".join(f"{sentence}\n\n" for sentence in world_text(result)) +
            f"Model: `sim-{config['model']}`, {config['steps']} optimiser steps for every run. Every step draws the "
            f"same number of the target's trials (the preset's batch per subject); multi-subject steps add as "
            f"many from each other subject, so those runs see more data in all but no more of the target's. "
            f"Held-out {way}-way top-1 retrieval of {result['target']} in % ({spread}); chance "
            f"{100 / way:.2f}%. {weights_text(result)}\n\n" + "\n".join(lines) + extra
            + "\n\n![efficiency](efficiency.png)\n\n" + f"**{result['note']}**\n")


__all__ = ["EfficiencyConfig", "cells", "efficiency_markdown", "kept_steps", "one_session_ratios", "plan_runs",
           "run_efficiency"]
