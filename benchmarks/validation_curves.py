"""Validation curves of finished runs, side by side: every score a run took on its held-out *training* stimuli.

For each run (a `brainrecon train` folder with a validation slice) this prints, as Markdown:
- the steps it trained, the scores at its last step and at the step it kept (``select``), and
- for every score, how much it moved over the run's second half (the last score minus the score nearest the
  middle step): near 0 when that curve has flattened; the low-level head's L1 should fall, the rest rise;
and writes one PNG with a panel per score, every run on it. Nothing here reads the test set.

    python benchmarks/validation_curves.py RUN [RUN ...] [--label NAME ...] [--png curves.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SCORES = ("retrieval", "cosine", "centred_cosine", "lowlevel_l1", "lowlevel_corr")


def read_curve(run: Path) -> dict:
    path = run / "validation.json"
    if not path.is_file():
        raise SystemExit(f"{run}: no validation.json (train with validation.fraction > 0)")
    record = json.loads(path.read_text())
    if not record["curve"]:
        raise SystemExit(f"{run}: its validation curve is empty (the run has not reached its first score)")
    return record


def late_change(curve: list[dict], name: str) -> float:
    """The last score minus the score nearest the middle step."""
    last = curve[-1]
    middle = min(curve, key=lambda entry: abs(entry["step"] - last["step"] / 2))
    return last[name] - middle[name]


def markdown(records: dict[str, dict]) -> str:
    names = [n for n in SCORES if all(n in r["curve"][-1] for r in records.values())]
    lines = ["| run | steps | kept step | " + " | ".join(f"{n} (last; kept; second half)" for n in names) + " |",
             "|---|---:|---:|" + "---:|" * len(names)]
    for label, record in records.items():
        curve = record["curve"]
        kept = next((e for e in curve if e["step"] == record.get("chosen_step")), curve[-1])
        cells = [f"{curve[-1][n]:.3f}; {kept[n]:.3f}; {late_change(curve, n):+.3f}" for n in names]
        lines.append(f"| {label} | {curve[-1]['step']} | {kept['step']} | " + " | ".join(cells) + " |")
    lines += ["", "Every score, by step:", ""]
    for label, record in records.items():
        lines += [f"**{label}**", "", "| step | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        lines += [f"| {e['step']} | " + " | ".join(f"{e[n]:.3f}" for n in names) + " |" for e in record["curve"]]
        lines.append("")
    return "\n".join(lines)


def figure(records: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in SCORES if any(n in r["curve"][-1] for r in records.values())]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
    for axis, name in zip(axes.flat, names):
        for label, record in records.items():
            points = [(e["step"], e[name]) for e in record["curve"] if name in e]
            axis.plot(*zip(*points), marker="o", ms=2, lw=1, label=label)
        axis.set_title(f"validation {name}", fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    partial = path.with_name(path.name + ".partial.png")
    fig.savefig(partial, dpi=110)
    partial.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--label", action="append", default=[], help="a name per run, in order (default: folder)")
    parser.add_argument("--png", type=Path, help="also write the curves here")
    args = parser.parse_args()
    if args.label and len(args.label) != len(args.runs):
        raise SystemExit(f"--label was given {len(args.label)} times for {len(args.runs)} runs: give one per run")
    labels = args.label or [run.name for run in args.runs]
    records = {label: read_curve(run) for label, run in zip(labels, args.runs)}
    print(markdown(records))
    if args.png:
        figure(records, args.png)


if __name__ == "__main__":
    main()
