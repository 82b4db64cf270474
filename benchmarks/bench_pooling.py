"""Benchmark: what MindBridge's adaptive pooling keeps, with voxels in cortical or random order (on demand).

    .venv/bin/python benchmarks/bench_pooling.py --workdir /tmp/bench-pooling [--world default]

MindBridge (Wang et al., CVPR 2024, §3.2) pools each subject's voxels to one fixed length with adaptive
max-pooling over *consecutive* voxels, a "biologically inspired aggregation" that assumes neighbours in the
vector are neighbours in cortex (in NSD, nsdgeneral voxels come in volume order). This probe asks how much
of the decodable signal survives that fixed first stage: a plain ridge (cross-validated alpha, folds split by
stimulus, training trials only) from the pooled betas into the shipped small CLIP's pooled and token spaces,
scored by 300-way retrieval of the repeat-averaged test images (centred with the training images' mean), beside
the same ridge from all voxels.

It builds the world (`--world`, a preset or YAML file) twice, identical but for `voxel_layout` (cortical: by
area, then retinotopy or category patch; random: shuffled per subject), into WORKDIR/cortical/store and
WORKDIR/random/store (kept for a rerun).
The pooling length is the `sim-mindbridge` preset's. A simulated world is a testbed: these are not NSD results.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def world(workdir: Path, name: str, layout: str) -> Path:
    from brainrecon.bench.leaderboard import bench_world
    from brainrecon.config import load_config
    from brainrecon.data.simworld import WorldConfig

    config = load_config(WorldConfig, name, "worlds").model_copy(update={"voxel_layout": layout})
    return bench_world(workdir / layout, config)


def pooling(length: int, mode: str | None):
    from brainrecon.models.mindbridge import AdaptivePool

    if mode is None:
        return None
    pool = AdaptivePool(length, mode)
    return lambda betas: pool(torch.as_tensor(np.asarray(betas, dtype=np.float32))).numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--world", default="default", help="a world preset or YAML file")
    parser.add_argument("--subject", default="subj01")
    parser.add_argument("--way", type=int, default=300)
    parser.add_argument("--draws", type=int, default=30)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    from brainrecon.config import load_config
    from brainrecon.data import open_store
    from brainrecon.evaluate.ceilings import SPACE_LABELS, centred_retrieval, ridge_into_spaces, space_targets
    from brainrecon.train.config import TrainConfig

    length = load_config(TrainConfig, "sim-mindbridge", "train").model_options["pool_length"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    spaces = ("clip_pooled", "clip_tokens")
    print(f"| voxel order | features | {' | '.join(SPACE_LABELS[s] for s in spaces)} | ridge s |")
    print("|---|---|" + "---:|" * (len(spaces) + 1))
    for layout in ("cortical", "random"):
        store = open_store(world(args.workdir, args.world, layout))
        targets = {name: values for name, values in space_targets(store).items() if name in spaces}
        test_rows = store.stimuli.rows(store.subject(args.subject).test().stimulus_ids)
        n_voxels = store.subject(args.subject).n_voxels
        for label, mode in ((f"all {n_voxels} voxels", None), (f"max-pool to {length}", "max"),
                            (f"avg-pool to {length}", "avg")):
            started = time.perf_counter()
            predicted, means = ridge_into_spaces(store, args.subject, targets, features=pooling(length, mode))
            seconds = time.perf_counter() - started
            cells = []
            for name in spaces:
                score, _ = centred_retrieval(predicted[name], targets[name][test_rows], means[name], args.way,
                                             args.draws, args.seed)
                cells.append(f"{100 * score.image_top1:.1f} ± {100 * score.image_ci95:.1f}")
            print(f"| {layout} | {label} | {' | '.join(cells)} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
