"""The report's PNG figures: ground truth beside reconstructions, training curves, per-subject bars.

matplotlib runs on its Agg backend (no display, no GUI toolkit); the grid is drawn with PIL so
that its pixels are the images themselves, only enlarged with nearest-neighbour sampling.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from brainrecon.io import atomic_path, atomic_save_image


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(figure)


def truth_and_reconstruction_grid(truth: np.ndarray, recons: np.ndarray, path: Path, columns: int = 6,
                                  tile: int = 128) -> None:
    """Pairs of rows: ground truth above its reconstruction, ``columns`` images per pair of rows."""
    gap, label = 6, 16
    blocks = -(-len(truth) // columns)
    width = columns * (tile + gap) + gap + 64
    height = blocks * (2 * tile + 3 * gap) + gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for block in range(blocks):
        top = gap + block * (2 * tile + 3 * gap)
        draw.text((gap, top + tile // 2 - label // 2), "truth", fill="black")
        draw.text((gap, top + tile + gap + tile // 2 - label // 2), "recon", fill="black")
    for i in range(len(truth)):
        block, column = divmod(i, columns)
        left = 64 + gap + column * (tile + gap)
        top = gap + block * (2 * tile + 3 * gap)
        for row, image in enumerate((truth[i], recons[i])):
            canvas.paste(Image.fromarray(image).resize((tile, tile), Image.NEAREST), (left, top + row * (tile + gap)))
    atomic_save_image(path, canvas)


def read_log(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """RUN/log.csv (step, epoch, metric, value) -> metric -> (steps, values)."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            series.setdefault(row["metric"], []).append((int(row["step"]), float(row["value"])))
    return {name: (np.array([s for s, _ in points]), np.array([v for _, v in points])) for name, points in
            series.items()}


CURVE_SKIP = ("lr", "samples_per_second")  # shown in the log, not as curves of learning


def training_curves(log: Path, path: Path, chosen_step: int | None = None) -> list[str]:
    """One panel per logged term (losses, and the validation scores when the run had a slice); returns the
    names plotted (none: no figure written). ``chosen_step``: marked on every panel (the weights kept)."""
    series = {k: v for k, v in read_log(log).items() if k not in CURVE_SKIP}
    if not series:
        return []
    plt = pyplot()
    names = sorted(series, key=lambda n: (n != "loss", n))
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.8 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names, strict=False):
        steps, values = series[name]
        axis.plot(steps, values, lw=1.2, marker="o" if name.startswith("val_") else None, ms=3)
        if chosen_step is not None:
            axis.axvline(chosen_step, color="0.4", ls="--", lw=0.8)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    figure.tight_layout()
    save_figure(figure, path)
    return names


def validation_curves(curves: dict[str, list[tuple[int, float]]], path: Path,
                      chosen: dict[str, int | None] | None = None) -> None:
    """One line per run: its validation retrieval (%) against the optimiser step, on shared axes, so that
    runs of different budgets show where each curve flattens. ``chosen``: the step whose weights a run
    kept, marked with a ring."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    for label, curve in curves.items():
        steps = np.array([step for step, _ in curve])
        values = 100 * np.array([value for _, value in curve])
        line, = axis.plot(steps, values, lw=1.2, marker="o", ms=2.5, label=label)
        step = (chosen or {}).get(label)
        if step is not None and step in steps:
            axis.plot([step], [values[list(steps).index(step)]], "o", ms=8, mfc="none", color=line.get_color())
    axis.set_xlabel("optimiser step", fontsize=9)
    axis.set_ylabel("validation retrieval (%)", fontsize=9)
    axis.tick_params(labelsize=8)
    axis.grid(alpha=0.3)
    # below the axes, not on them: with a leaderboard's ten rows a legend inside hides the curves
    axis.legend(fontsize=7, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    figure.tight_layout()
    save_figure(figure, path)


def per_subject_bars(values: dict[str, dict[str, float]], labels: dict[str, str], path: Path) -> None:
    """Grouped bars: for each metric (``labels``), one bar per subject with its 95% CI."""
    plt = pyplot()
    subjects = list(values)
    metrics = [m for m in labels if all(m in values[s] for s in subjects)]
    figure, axis = plt.subplots(figsize=(max(5.0, 1.6 * len(metrics) * max(1, len(subjects)) / 2), 3.2))
    width = 0.8 / max(1, len(subjects))
    for j, subject in enumerate(subjects):
        means = [values[subject][m][0] for m in metrics]
        errors = [values[subject][m][1] for m in metrics]
        positions = np.arange(len(metrics)) + (j - (len(subjects) - 1) / 2) * width
        axis.bar(positions, means, width, yerr=errors, capsize=3, label=subject)
    axis.set_xticks(np.arange(len(metrics)), [labels[m] for m in metrics], fontsize=9)
    axis.legend(fontsize=8, ncols=min(4, len(subjects)))
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    save_figure(figure, path)


__all__ = ["per_subject_bars", "pyplot", "read_log", "save_figure", "training_curves", "truth_and_reconstruction_grid",
           "validation_curves"]
