"""Benchmark: why a space's ceiling sits below the oracle: the code's own space against the CLIP spaces (on demand).

    .venv/bin/python benchmarks/bench_ceiling_readouts.py --workdir /tmp/bench-readouts [--world default]

`brainrecon simulate` reports, per target space, a *ceiling*: the Bayes posterior mean of the code given a
test image's averaged responses, read into the space by a map fitted on the training images, with the read-out
chosen among held-out training stimuli. This diagnostic scores, for one subject and on the test images:

- the oracle (the true likelihood) and the capacity (the noise-free code read into the space);
- the posterior mean scored by cosine in the *code's own* space, against the candidates' true codes (centred with
  the training codes' mean): what cosine retrieval loses to the likelihood, with no target space in between;
- every read-out the ceiling chooses from, each scored on test. None is chosen from this table (the ceiling
  chooses on training stimuli); it shows how far apart they lie. The contrastive read-out is also trained 10x
  longer than shipped, to see whether its budget limits it. Here the read-outs are fitted on every training
  image (the ceiling fits them on 80% and keeps 20% to choose among them).

Everything is centred with the training images' mean, 300-way top-1 over 30 draws. WORKDIR/store holds the
world (kept for a rerun). A simulated world is a testbed: these are not NSD results.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--world", default="default", help="a world preset or YAML file")
    parser.add_argument("--subject", default="subj01")
    parser.add_argument("--way", type=int, default=300)
    parser.add_argument("--draws", type=int, default=30)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    from brainrecon.bench.leaderboard import bench_world
    from brainrecon.data import open_store
    from brainrecon.data.simworld.oracle import oracle_evidence, oracle_loglik
    from brainrecon.evaluate import ceilings
    from brainrecon.evaluate.retrieval import retrieval_top1
    from brainrecon.models.ridge import Ridge, RidgeConfig

    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    store = open_store(bench_world(args.workdir, args.world))
    evidence = oracle_evidence(store, args.subject)
    codes = ceilings._CodeEstimates.of(store, args.subject, evidence)
    test_rows, train_rows = store.stimuli.rows(evidence.stimulus_ids), store.stimuli.rows(codes.train_ids)

    def pct(score) -> str:
        return f"{100 * score.image_top1:.1f} ± {100 * score.image_ci95:.1f}"

    def centred(predicted: np.ndarray, truth: np.ndarray, mean: np.ndarray) -> str:
        return pct(ceilings.centred_retrieval(predicted, truth, mean, args.way, args.draws, args.seed)[0])

    print(f"world {args.world!r}, {args.subject}, {args.way}-way image retrieval (%), scored on test\n")
    print("| what | retrieval |\n|---|---:|")
    print(f"| oracle (true likelihood) | "
          f"{pct(retrieval_top1(oracle_loglik(evidence), args.way, args.draws, args.seed, loglik=True))} |")
    print(f"| posterior mean, cosine in the code's own space | "
          f"{centred(codes.test_posterior, codes.test_true, codes.train_true.mean(0))} |")
    targets = ceilings.space_targets(store)
    for space in ("clip_pooled", "clip_tokens"):
        values = targets[space]
        truth, mean = values[test_rows], values[train_rows].mean(0)
        code_map = Ridge(RidgeConfig()).fit(codes.train_true, values[train_rows])
        label = ceilings.SPACE_LABELS[space]
        print(f"| {label}: capacity (noise-free code, linear map) | "
              f"{centred(code_map.predict(codes.test_true).numpy(), truth, mean)} |")
        for readout in ceilings.CEILING_READOUTS:
            if readout == "contrastive":
                continue
            predicted = ceilings._read_out(code_map, codes.test_posterior, readout)
            print(f"| {label}: posterior mean, {ceilings.readout_label(readout)} | {centred(predicted, truth, mean)} |")
        for steps in (ceilings.CONTRASTIVE_STEPS, 10 * ceilings.CONTRASTIVE_STEPS):
            learned = ceilings._contrastive_readout(code_map, codes.train_posterior, values[train_rows], args.seed,
                                                    steps)
            predicted = ceilings._read_out(code_map, codes.test_posterior, "contrastive", learned)
            print(f"| {label}: posterior mean, contrastive read-out, {steps} steps | "
                  f"{centred(predicted, truth, mean)} |", flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
