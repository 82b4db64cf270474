"""Benchmark `prepare_nsd` on a fake NSD tree of real per-session size (not a test).

Builds (once, in --workdir) a schema-identical fake tree: 1 subject, 3 sessions of
750 trials on the subj01 1.8 mm grid 81 x 104 x 83 (int16 HDF5, chunked like the real
files), an nsdgeneral-like mask of 15,724 voxels and 425 x 425 images. Then runs
prepare in a child process (so interpreter and import overhead are measured apart)
and reports trials/second and peak memory.

    .venv/bin/python benchmarks/bench_nsd_prepare.py --workdir /tmp/nsd-bench
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, threading, time
import psutil
proc = psutil.Process()
t0 = time.perf_counter()
from brainrecon.data.nsd import prepare_nsd
import_s = time.perf_counter() - t0
after_import = proc.memory_info()
peak = {"rss": after_import.rss, "anon": after_import.rss - after_import.shared}
stop = threading.Event()

def sample():  # rss includes file-backed pages of the memory-mapped output; rss - shared approximates private memory
    while not stop.is_set():
        m = proc.memory_info()
        peak["rss"] = max(peak["rss"], m.rss)
        peak["anon"] = max(peak["anon"], m.rss - m.shared)
        time.sleep(0.02)

thread = threading.Thread(target=sample, daemon=True)
thread.start()
t0 = time.perf_counter()
summary = prepare_nsd(sys.argv[1], [1], sys.argv[2], progress=False)
run_s = time.perf_counter() - t0
stop.set(); thread.join()
info = summary.subjects["subj01"]
print(json.dumps({"import_s": import_s, "run_s": run_s, "trials": info["train_trials"] + info["test_trials"],
                  "voxels": summary.n_voxels["subj01"], "stimuli": summary.n_stimuli,
                  "rss_after_import_mb": after_import.rss / 2**20, "peak_rss_mb": peak["rss"] / 2**20,
                  "peak_private_mb": peak["anon"] / 2**20,
                  "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build(root: Path, sessions: int) -> float:
    from brainrecon.data.nsd_fake import make_fake_nsd

    t0 = time.perf_counter()
    make_fake_nsd(root, subjects=(1,), n_sessions=sessions, volume_shape=(81, 104, 83), formats=("hdf5",),
                  roi_voxels=15724, image_size=425, hdf5_chunks=True, seed=0)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="where the fake tree and store go")
    parser.add_argument("--sessions", type=int, default=3)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nsd-bench-"))
    root, out = workdir / "nsd", workdir / "store"
    if not (root / "nsddata").exists():
        print(f"building fake NSD tree in {root} ...", file=sys.stderr)
        print(f"built in {build(root, args.sessions):.1f} s", file=sys.stderr)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)
    child = subprocess.run([sys.executable, "-c", CHILD, str(root), str(out)], capture_output=True, text=True)
    if child.returncode:
        sys.exit(child.stderr)
    result = json.loads(child.stdout)
    result["trials_per_s"] = result["trials"] / result["run_s"]
    full_subject_gb = 40 * 750 * 81 * 104 * 83 * 4 / 1e9
    result["one_subject_full_float32_gb"] = full_subject_gb
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
