#!/usr/bin/env bash
# GPU check at NSD dimensions (benchmarks/gpu_check.py): MindEye2-style training in bf16, the NSD-scale
# ridge, the Ecphory memory search; one table. About a minute on one H200; no downloads.
#
#   benchmarks/gpu_check.sh [--json FILE]     # the full check, on cuda
#   benchmarks/gpu_check.sh --tiny            # toy sizes on CPU, in seconds (CI runs this)
#
# PYTHON picks the interpreter (default: the checkout's .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
exec "$python" benchmarks/gpu_check.py "$@"
