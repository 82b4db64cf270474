#!/usr/bin/env bash
# Reproduce every table in docs/benchmarks/ with the project's own commands.
# Hours on 2 CPU cores: run it on an otherwise idle machine (two torch jobs sharing 2 cores slow each
# other 10-50x, see docs/benchmarks/training.md). Each step resumes or can be rerun on its own.
#
#   bash benchmarks/reproduce_all.sh [WORKDIR]
#
# Pages made before the default world changed name their world (`isotropic-code64-noise3`) here or in their
# bench preset, so each command reproduces its page.
# leaderboard.md/.json and efficiency.md/.json/.png are written into docs/benchmarks/ by the commands
# themselves; the other tables are transcribed from what the scripts print (and --json where offered),
# each doc naming its command.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/brainrecon-bench}
PY=.venv/bin/python
BR=.venv/bin/brainrecon
mkdir -p "$WORK"
export OMP_NUM_THREADS=2

$BR bench leaderboard --preset default --out "$WORK/leaderboard" --doc docs/benchmarks/leaderboard.md
$BR bench leaderboard --preset equal-budget --out "$WORK/equal-budget" --doc docs/benchmarks/equal-budget.md
$BR bench leaderboard --preset psychometry-ablation --out "$WORK/psychometry-ablation" \
    --doc docs/benchmarks/psychometry-ablation.md
$BR bench leaderboard --preset psychometry-width --out "$WORK/psychometry-width" \
    --doc docs/benchmarks/psychometry-width.md
$BR bench leaderboard --preset psychometry-decoder --out "$WORK/psychometry-decoder" \
    --doc docs/benchmarks/psychometry-decoder.md
$BR bench leaderboard --preset convergence --out "$WORK/convergence" --doc docs/benchmarks/convergence.md
$BR bench efficiency --preset efficiency-default --out "$WORK/efficiency" --doc docs/benchmarks/efficiency.md
$BR bench leaderboard --preset checkpoint-rule --out "$WORK/checkpoint-rule" \
    --doc docs/benchmarks/checkpoint-rule.md
$PY benchmarks/bench_pooling.py --workdir "$WORK/pooling" --world isotropic-code64-noise3
$BR bench leaderboard --preset convergence-mindeye --out "$WORK/convergence-mindeye" \
    --doc docs/benchmarks/convergence-mindeye.md
$BR bench leaderboard --preset pooled-space --out "$WORK/pooled-space" --doc docs/benchmarks/pooled-space.md
$BR bench leaderboard --preset candidate-world --out "$WORK/candidate-world" --doc docs/benchmarks/candidate-world.md
$BR bench leaderboard --preset candidate-world-train3000 --out "$WORK/candidate-world-train3000" \
    --doc docs/benchmarks/candidate-world-train3000.md
$BR bench leaderboard --preset convergence-mindeye1-long --out "$WORK/convergence-mindeye1-long" \
    --doc docs/benchmarks/convergence-mindeye1-long.md
$BR bench leaderboard --preset convergence-mindreader-long --out "$WORK/convergence-mindreader-long" \
    --doc docs/benchmarks/convergence-mindreader-long.md
$BR bench leaderboard --preset convergence-psychometry --out "$WORK/convergence-psychometry" \
    --doc docs/benchmarks/convergence-psychometry.md
# convergence-lowlevel.md (and training.md's end-to-end runs) on the world before the switch
$BR simulate --config isotropic-code64-noise3 --out "$WORK/lowlevel-store" --no-score --no-progress --overwrite
$BR train --config sim-mindeye2-lowlevel --data "$WORK/lowlevel-store" --out "$WORK/lowlevel-6" --overwrite --no-progress
sed 's/^epochs: 6$/epochs: 24/' brainrecon/configs/train/sim-mindeye2-lowlevel.yaml > "$WORK/lowlevel-24.yaml"
$BR train --config "$WORK/lowlevel-24.yaml" --data "$WORK/lowlevel-store" --out "$WORK/lowlevel-24" --overwrite --no-progress
(cat brainrecon/configs/train/sim-mindeye2-lowlevel.yaml; echo "seed: 1") > "$WORK/lowlevel-6s1.yaml"
(cat "$WORK/lowlevel-24.yaml"; echo "seed: 1") > "$WORK/lowlevel-24s1.yaml"
for run in 6s1 24s1; do
    $BR train --config "$WORK/lowlevel-$run.yaml" --data "$WORK/lowlevel-store" --out "$WORK/lowlevel-$run" --overwrite --no-progress
done
$PY benchmarks/validation_curves.py "$WORK/lowlevel-6" "$WORK/lowlevel-24" "$WORK/lowlevel-6s1" "$WORK/lowlevel-24s1" \
    --label "6 epochs (the preset), seed 0" --label "24 epochs, seed 0" --label "6 epochs (the preset), seed 1" \
    --label "24 epochs, seed 1" --png docs/benchmarks/convergence-lowlevel.png
$BR bench lowlevel --run "$WORK/lowlevel-6" --n-images 100 --out "$WORK/lowlevel" --doc docs/benchmarks/lowlevel.md
$PY benchmarks/choose_demo_model.py --store "$WORK/leaderboard/store" --workdir "$WORK/demo-model" \
    --doc docs/benchmarks/demo-model.md
$PY benchmarks/bench_ceiling_readouts.py --workdir "$WORK/readouts" --world isotropic-code64-noise3
mkdir -p "$WORK/worlds"
for world in benchmarks/worlds/*.yaml; do  # the ceiling frontier (docs/simulated-world.md)
    $BR simulate --config "$world" --out "$WORK/worlds/$(basename "$world" .yaml)" --overwrite --no-progress
done
$PY benchmarks/bench_ridge.py --workdir "$WORK/ridge" --threads 2 --json "$WORK/ridge.json"
$PY benchmarks/bench_train.py --parts params,sim,nsd,scaling --threads 2 --json "$WORK/train.json"
$PY benchmarks/bench_train.py --parts e2e --store "$WORK/lowlevel-store" --threads 2 --workdir "$WORK/e2e"
$PY benchmarks/bench_train.py --parts nsd --kinds mindeye2 --kernels for-loop,auto --precisions no,bf16 --threads 2 \
    --nsd-seconds 30 --json "$WORK/train-bf16.json"
$PY benchmarks/bench_memory.py --workdir "$WORK/memory"
$PY benchmarks/bench_nsd_prepare.py --workdir "$WORK/nsd"
$PY benchmarks/bench_simulate.py --config isotropic-code64-noise3 --out "$WORK/world"
rm -rf "$WORK/demo"
/usr/bin/time -v $BR demo --out "$WORK/demo" --no-progress 2> "$WORK/demo-time.txt"
grep -E "Elapsed|Maximum resident" "$WORK/demo-time.txt"
