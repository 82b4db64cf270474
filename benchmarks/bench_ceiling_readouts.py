"""Benchmark: why a space's ceiling sits below the oracle: the code's own space against the CLIP spaces (on demand).

    .venv/bin/python benchmarks/bench_ceiling_readouts.py --workdir /tmp/bench-readouts [--world default]

`brainrecon simulate` reports, per target space, a *ceiling*: the Bayes posterior mean of the code given a
test image's averaged responses, read into the space by a map fitted on the training images, with the read-out
chosen among held-out training stimuli. This diagnostic scores, for one subject and on the test images:

- the oracle (the true likelihood) and the capacity (the noise-free code read into the space);
- the posterior mean scored by cosine in the *code's own* space, against the candidates' true codes (centred with
  the training codes' mean): what cosine retrieval loses to the likelihood, with no target space in between;
- the spread of the training images' codes against the error of their code estimates, in the code's own metric
  and through each space's linear map: how many directions the candidates differ along, and how reliably the
  brain's code gives the main ones;
- the share of each space's variance over the test images that the noise-free code explains: what the space
  holds that the brain does not encode, which every candidate carries and no prediction can;
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


def axes_reliability(spread: np.ndarray, error: np.ndarray, top: int = 6) -> tuple[float, np.ndarray]:
    """The spread's effective dimensions (participation ratio of its eigenvalues) and, along its ``top``
    principal axes, spread / error variance: how reliably the brain's code gives the directions in which
    the space's candidates differ most."""
    values, axes = np.linalg.eigh(spread)
    values, axes = values[::-1], axes[:, ::-1]
    dims = values.sum() ** 2 / (values ** 2).sum()
    return dims, values[:top] / np.einsum("dk,de,ek->k", axes[:, :top], error, axes[:, :top])


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
    # where each space puts its variance: the code's spread over training images against the error of their
    # code estimates (training stimuli only), in the code's own metric and through each space's map
    spread = np.cov(codes.train_true, rowvar=False)
    error = np.cov(codes.train_posterior - codes.train_true, rowvar=False)
    geometry = {"the code's own space": axes_reliability(spread, error)}
    explained = {}  # the share of a space's variance over the test images that the noise-free code's map explains
    targets = ceilings.space_targets(store)
    for space in ("clip_pooled", "clip_tokens"):
        values = targets[space]
        truth, mean = values[test_rows], values[train_rows].mean(0)
        code_map = Ridge(RidgeConfig()).fit(codes.train_true, values[train_rows])
        label = ceilings.SPACE_LABELS[space]
        weight = code_map.weight.numpy()  # (code_dims, D)
        geometry[label] = axes_reliability(weight.T @ spread @ weight, weight.T @ error @ weight)
        unexplained = truth - code_map.predict(codes.test_true).numpy()
        explained[label] = 1 - (unexplained ** 2).sum() / ((truth - mean) ** 2).sum()
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
    print("\nthe code's spread over the training images, and the error of their code estimates, in each space's "
          "metric (through its linear map): the spread's effective dimensions (participation ratio), and spread / "
          "error variance along the spread's top principal axes:")
    for label, (dims, reliability) in geometry.items():
        print(f"- {label}: {dims:.1f} effective dimensions; along the top {len(reliability)} axes "
              f"{', '.join(f'{r:.1f}' for r in reliability)}")
    print("\nshare of each space's variance over the test images (around the training mean) that the noise-free "
          "code explains through the space's linear map (R²):")
    for label, share in explained.items():
        print(f"- {label}: {share:.2f}")
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
