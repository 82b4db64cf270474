"""Benchmark: build time and peak memory of a simulated world (not a test; run on demand).

    .venv/bin/python benchmarks/bench_simulate.py --config default --out /tmp/bench-world

Peak memory is sampled from /proc/self/status every 0.2 s: RssAnon is the process's own
(anonymous) memory, the figure that must stay bounded; RssFile counts pages of the memory-mapped
output files, which the kernel writes back and drops under pressure.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakMemory:
    def __init__(self, interval: float = 0.2):
        self.interval, self.peak = interval, {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for field in self.peak:
                self.peak[field] = max(self.peak[field], _status_kb(field))
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="default")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from brainrecon.config import load_config
    from brainrecon.data.simworld import WorldConfig, simulate_world

    config = load_config(WorldConfig, args.config, "worlds")
    with PeakMemory() as memory:
        started = time.perf_counter()
        simulate_world(config, args.out, overwrite=True, progress=False)
        seconds = time.perf_counter() - started
    total_trials = config.n_subjects * (config.n_train_images + config.n_test_images) * config.n_repeats
    store_bytes = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(json.dumps({"config": args.config, "seconds": round(seconds, 1), "trials": total_trials,
                      "trials_per_second": round(total_trials / seconds),
                      "store_MB": round(store_bytes / 2 ** 20), "peak_RssAnon_MB": round(memory.peak["RssAnon"] / 1024),
                      "peak_RssFile_MB": round(memory.peak["RssFile"] / 1024),
                      "peak_VmRSS_MB": round(memory.peak["VmRSS"] / 1024)}, indent=2))


if __name__ == "__main__":
    main()
