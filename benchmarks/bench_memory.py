"""Benchmark: Ecphory memory at NSD scale, ours vs the naive flattened float32 search (not a test).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_memory.py --workdir /tmp/bench-memory

A memory of 27,000 entries with 257 x 768 image-token keys and values is
built with `SubjectMemory.build` (`--search`: the library's default "pca" search
keys, or "pooled"; centred by the keys' mean unless `--no-centre`; exact faiss
index) and saved (float16 values, 10.6 GB, memory-mapped on load). Each measurement that
reports memory runs in a fresh child process, so its RSS is its own.

The naive approach (Psychometry's released code: keys and values as flattened
float32 matrices in RAM, brute-force cosine) would need 27,000 x 197,376 x 4 B
= 21.3 GB for the keys alone, so it is NOT allocated: it is measured on the
first 2,000 entries and extrapolated linearly in the number of entries (a
brute-force scan and its memory are both linear in N). The output says so.

Data are synthetic but shaped like a linear decoder head's output, in
`World`: key = M + z @ W + e, where z is a 64-d latent drawn around one of 300
cluster centres (the stimulus) plus "prediction noise", W holds 64 token-
structured factors (half the same at every token, half with zero-mean spatial
patterns, decaying in strength), M is a common mean, and e is full-rank
token noise gathered from a table of random rows (cheap to make, but no
low-rank shortcut). Values are CLS-normalised float16 token rows gathered per
cluster from a prototype table (only their size and reading cost matter here).

Recall@10 of ours is measured against the exact full-key cosine top-10 of 100
held-out query predictions over all 27,000 entries, with the memory's own
similarity: keys and queries centred by the keys' mean (a first pass over the
keys computes it) unless `--no-centre`. Those exact cosines are accumulated
while the keys are generated for the build (each key chunk is scored against
the queries when it is made), so the 21 GB key matrix never exists; the naive
child checks them against its own brute force on the subset.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

TOKENS, DIM = 257, 768
FLAT = TOKENS * DIM
SEED = 0


def l2(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class World:
    """Deterministic synthetic keys (predictions), values (true tokens) and held-out queries."""

    def __init__(self, n_entries: int, rank: int = 64, clusters: int = 300, seed: int = SEED):
        rng = np.random.default_rng(seed)
        features = l2(rng.standard_normal((rank, DIM)))
        spatial = rng.standard_normal((rank, TOKENS))
        spatial[: rank // 2] = 1.0  # global factors: the same at every token (survive mean pooling)
        spatial[rank // 2:] -= spatial[rank // 2:].mean(axis=1, keepdims=True)  # spatial: vanish when pooled
        factors = spatial[:, :, None] * features[:, None, :] + 0.02 * rng.standard_normal((rank, TOKENS, DIM))
        factors *= (1.0 / np.sqrt(1.0 + np.arange(rank)))[:, None, None]  # a decaying spectrum
        mean = 0.6 * l2(rng.standard_normal(DIM))[None] + 0.04 * rng.standard_normal((TOKENS, DIM))
        self.centres = rng.standard_normal((clusters, rank)).astype(np.float32)
        typical = np.linalg.norm(np.einsum("r,rtd->td", self.centres[0], factors))
        mean *= typical / np.linalg.norm(mean)  # common part as large as a typical entry's own part
        self.basis = np.concatenate([mean.reshape(1, FLAT), factors.reshape(rank, FLAT)]).astype(np.float32)
        self.noise_table = (0.25 * typical / np.sqrt(FLAT) * rng.standard_normal((4096, DIM))).astype(np.float32)
        self.labels = rng.integers(0, clusters, n_entries)
        value_latent = self.centres[self.labels] + 0.7 * rng.standard_normal((n_entries, rank)).astype(np.float32)
        self.key_latent = value_latent + 0.3 * rng.standard_normal((n_entries, rank)).astype(np.float32)
        prototypes = rng.standard_normal((64, TOKENS, DIM)).astype(np.float32)
        prototypes /= np.linalg.norm(prototypes[:, :1], axis=-1, keepdims=True)  # CLS norm 1, as real values
        self.prototypes = prototypes.astype(np.float16)
        self.recorder = None  # (normalised queries (Q, FLAT), scores (Q, N), offset) to fill while keys are made

    def _make(self, latent: np.ndarray, noise_seeds) -> np.ndarray:
        import torch

        z = np.concatenate([np.ones((len(latent), 1), np.float32), latent], axis=1)
        keys = (torch.from_numpy(z) @ torch.from_numpy(self.basis)).numpy().reshape(-1, TOKENS, DIM)
        for i, seed in enumerate(noise_seeds):
            keys[i] += self.noise_table[np.random.default_rng(seed).integers(0, len(self.noise_table), TOKENS)]
        return keys

    def keys(self, rows: np.ndarray) -> np.ndarray:
        keys = self._make(self.key_latent[rows], [(SEED, 1, int(r)) for r in rows])
        if self.recorder is not None:
            queries, scores, offset = self.recorder
            scores[:, rows] = queries @ l2(keys.reshape(len(rows), FLAT) - offset).T
        return keys

    def values(self, rows: np.ndarray) -> np.ndarray:
        variant = np.stack([np.random.default_rng((SEED, 2, int(r))).integers(0, 4, TOKENS) for r in rows])
        which = (self.labels[rows, None] * 7 + variant) % len(self.prototypes)
        return self.prototypes[which, np.arange(TOKENS)[None]]

    def queries(self, n: int) -> np.ndarray:
        rng = np.random.default_rng((SEED, 3))
        latent = self.centres[rng.integers(0, len(self.centres), n)] \
            + 0.7 * rng.standard_normal((n, self.centres.shape[1])).astype(np.float32)
        latent += 0.3 * rng.standard_normal(latent.shape).astype(np.float32)
        return self._make(latent, [(SEED, 4, i) for i in range(n)])


class Lazy:
    """An array-like whose rows are computed on demand (slices and integer arrays)."""

    def __init__(self, n: int, item_shape: tuple[int, ...], dtype, make):
        self.shape, self.dtype, self.make = (n, *item_shape), np.dtype(dtype), make

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        return self.make(np.arange(self.shape[0])[index])


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2 ** 20


class PeakRss:
    def __init__(self, interval: float = 0.2):
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.interval = interval

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def latency_ms(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls fn(0), fn(1), ..., in ms."""
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth, strict=True)]))


def log(message: str) -> None:
    print(f"[bench_memory {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class NaiveMemory:
    """Psychometry's released approach: flattened, L2-normalised float32 keys and float32 values in RAM."""

    def __init__(self, world: World, n: int, offset: np.ndarray):
        self.offset = offset  # the exact search's centring (0: Psychometry's raw cosine)
        self.keys = np.empty((n, FLAT), np.float32)
        self.values = np.empty((n, FLAT), np.float32)
        for start in range(0, n, 100):
            rows = np.arange(start, min(start + 100, n))
            self.keys[rows] = l2(world.keys(rows).reshape(len(rows), FLAT) - offset)
            self.values[rows] = world.values(rows).reshape(len(rows), FLAT)

    def search(self, queries: np.ndarray, k: int = 10) -> np.ndarray:
        sims = l2(queries.reshape(len(queries), FLAT) - self.offset) @ self.keys.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)


# -- child processes -------------------------------------------------------------------------------


def phase_ours(work: Path, settings: dict) -> dict:
    from brainrecon.memory import EcphoryConfig, SubjectMemory, fuse

    queries = np.load(work / "queries.npy")
    before = rss_mb()
    start = time.perf_counter()
    memory = SubjectMemory.load(work / "memory")
    load_s = time.perf_counter() - start
    after_load = rss_mb()
    memory.search({"image_tokens": queries[:1]}, 10)  # warm up
    single = latency_ms(lambda i: memory.search({"image_tokens": queries[i % len(queries)][None]}, 10), 50)
    batch = latency_ms(lambda i: memory.search({"image_tokens": queries}, 10), 5)
    _, top10 = memory.search({"image_tokens": queries}, 10)
    after_search = rss_mb()
    config = EcphoryConfig(k=10, alpha=0.6)
    fuse_single = latency_ms(lambda i: fuse({"image_tokens": queries[i % len(queries)][None]}, memory, config), 20)
    np.save(work / "ours_top10.npy", top10)
    return {"load_s": load_s, "rss_before_mb": before, "rss_after_load_mb": after_load,
            "rss_after_search_mb": after_search, "rss_after_fuse_mb": rss_mb(),
            "search_batch1_ms": single, "search_batch100_ms_per_query": batch / len(queries),
            "fuse_k10_batch1_ms": fuse_single,
            "disk_bytes": {p.name: p.stat().st_size for p in (work / "memory").iterdir()}}


def measure_naive(world: World, n: int, queries: np.ndarray, offset: np.ndarray) -> tuple[dict, np.ndarray]:
    before = rss_mb()
    naive = NaiveMemory(world, n, offset)
    held = rss_mb()
    naive.search(queries[:1])
    single = latency_ms(lambda i: naive.search(queries[i % len(queries)][None]), 30)
    batch = latency_ms(lambda i: naive.search(queries), 3)
    figures = {"rss_before_mb": before, "rss_holding_mb": held, "rss_after_search_mb": rss_mb(),
               "search_batch1_ms": single, "search_batch100_ms_per_query": batch / len(queries)}
    return figures, naive.search(queries)


def phase_naive(work: Path, settings: dict) -> dict:
    from brainrecon.memory import MemoryConfig, SubjectMemory

    n = settings["naive_entries"]
    world = World(settings["entries"])
    queries = np.load(work / "queries.npy")
    exact = np.load(work / "exact_scores.npy")[:, :n]
    truth = np.argsort(-exact, axis=1)[:, :10]
    offset = np.load(work / "key_mean.npy")
    figures, naive_top10 = measure_naive(world, n, queries, offset)  # its 2 x n x FLAT floats are freed on return

    # ours on the same subset, pooled and PCA keys, against the subset's exact top-10 (centred, as the
    # memory centres, by the subset's own mean)
    raw = np.concatenate([world.keys(np.arange(s, min(s + 100, n))) for s in range(0, n, 100)])
    flat = raw.reshape(n, FLAT)
    subset_offset = flat.mean(axis=0) if settings["centre"] else np.zeros(FLAT, np.float32)
    sims = l2(queries.reshape(len(queries), FLAT) - subset_offset) @ l2(flat - subset_offset).T
    truth = np.argsort(-sims, axis=1)[:, :10]
    del flat, sims
    ids = np.arange(n)
    subset = {}
    for search_mode in ("pooled", "pca"):
        start = time.perf_counter()
        memory = SubjectMemory.build("bench", {"image_tokens": raw}, {"image_tokens": raw}, ids,
                                     MemoryConfig(search=search_mode, index="exact", pca_fit_rows=n,
                                                  centre=settings["centre"]))
        build_s = time.perf_counter() - start
        _, found = memory.search({"image_tokens": queries}, 10)
        subset[search_mode] = {"build_s": build_s, "recall_at_10": recall_at(found, truth),
                               "search_dim": int(memory.search_keys.shape[1])}
    exact_truth = np.argsort(-exact, axis=1)[:, :10]
    return {"entries": n, **figures, "ground_truth_agreement": recall_at(naive_top10, exact_truth),
            "subset_ours": subset}


def run_child(phase: str, work: Path) -> dict:
    log(f"child: {phase}")
    output = subprocess.run([sys.executable, __file__, "--phase", phase, "--workdir", str(work)],
                            check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--entries", type=int, default=27_000)
    parser.add_argument("--naive-entries", type=int, default=2_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the 10.6 GB memory directory")
    parser.add_argument("--search", choices=["pca", "pooled"], default="pca", help="the memory's search keys")
    parser.add_argument("--no-centre", dest="centre", action="store_false", help="raw cosine, as Psychometry")
    parser.add_argument("--phase", choices=["main", "ours", "naive"], default="main", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.workdir
    if args.phase != "main":
        settings = json.loads((work / "settings.json").read_text())
        result = phase_ours(work, settings) if args.phase == "ours" else phase_naive(work, settings)
        print(json.dumps(result))
        return

    from brainrecon.memory import MemoryConfig, SubjectMemory

    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    settings = {"entries": args.entries, "naive_entries": args.naive_entries, "queries": args.queries,
                "search": args.search, "centre": args.centre}
    (work / "settings.json").write_text(json.dumps(settings))
    world = World(args.entries)
    queries = world.queries(args.queries)
    np.save(work / "queries.npy", queries)
    offset = np.zeros(FLAT, np.float32)
    if args.centre:  # a first pass over the keys for their exact mean, the memory's centring
        log("first pass over the keys: their mean")
        total = np.zeros(FLAT, np.float64)
        for start in range(0, args.entries, 500):
            total += world.keys(np.arange(start, min(start + 500, args.entries))).reshape(-1, FLAT).sum(axis=0)
        offset = (total / args.entries).astype(np.float32)
    np.save(work / "key_mean.npy", offset)
    scores = np.empty((args.queries, args.entries), np.float32)
    world.recorder = (l2(queries.reshape(args.queries, FLAT) - offset), scores, offset)

    log(f"building a {args.entries}-entry memory ({args.search} search keys; keys generated and scored against "
        f"the queries)")
    keys = Lazy(args.entries, (TOKENS, DIM), np.float32, world.keys)
    values = Lazy(args.entries, (TOKENS, DIM), np.float16, world.values)
    with PeakRss() as peak:
        start = time.perf_counter()
        memory = SubjectMemory.build("bench", {"image_tokens": keys}, {"image_tokens": values},
                                     np.arange(args.entries),
                                     MemoryConfig(search=args.search, index="auto", centre=args.centre),
                                     progress=True)
        build_s = time.perf_counter() - start
        world.recorder = None
        start = time.perf_counter()
        memory.save(work / "memory")
        save_s = time.perf_counter() - start
    np.save(work / "exact_scores.npy", scores)
    exact_top10 = np.argsort(-scores, axis=1)[:, :10]
    index_kind = memory.index_kind
    del memory, keys, values

    ours = run_child("ours", work)
    naive = run_child("naive", work)
    ours_top10 = np.load(work / "ours_top10.npy")
    scale = args.entries / args.naive_entries
    naive_held_mb = naive["rss_holding_mb"] - naive["rss_before_mb"]
    result = {
        "entries": args.entries, "queries": args.queries, "index": index_kind, "search": args.search,
        "centre": args.centre,
        "build_s": build_s, "save_s": save_s, "build_save_peak_rss_mb": peak.peak,
        "ours": ours, "ours_recall_at_10": recall_at(ours_top10, exact_top10),
        "ours_recall_at_1_in_exact_top10": float(np.mean([o[0] in t for o, t in zip(ours_top10, exact_top10,
                                                                                     strict=True)])),
        "ours_disk_gb": sum(ours["disk_bytes"].values()) / 1e9,
        "naive_measured": naive,
        "naive_extrapolated": {
            "factor": scale,
            "search_batch1_ms": naive["search_batch1_ms"] * scale,
            "search_batch100_ms_per_query": naive["search_batch100_ms_per_query"] * scale,
            "held_memory_gb": naive_held_mb * scale / 1024,
            "disk_gb_float32_keys_plus_values": 2 * args.entries * FLAT * 4 / 1e9},
        "total_runtime_s": time.perf_counter() - started,
    }
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(work / "memory")
        for name in ("queries.npy", "exact_scores.npy", "ours_top10.npy", "settings.json", "key_mean.npy"):
            (work / name).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
