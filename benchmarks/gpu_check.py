"""GPU check at NSD dimensions, sized for a short GPU slot (run through benchmarks/gpu_check.sh; not a test).

    benchmarks/gpu_check.sh                 # one H200: about a minute (docs/benchmarks/gpu.md)
    benchmarks/gpu_check.sh --tiny          # the same code at toy sizes on CPU, in seconds (run in CI)

Three stages, each on synthetic data made on the device (nothing is downloaded, nothing read from disk):

1. **MindEye2-style training at NSD dimensions** in bf16 autocast: 4 subjects x 15,724 voxels, the paper's
   widths (hidden 4096, 4 residual blocks, a 6-deep diffusion prior), ViT-L image tokens 257 x 768 as
   targets, the paper's fine-tuning batch of 24 (6 per subject), AdamW as the trainer makes it (fused).
   A fixed number of timed steps after warm-up; steps per second and peak memory.
2. **The NSD-scale ridge**: `Ridge.fit` with its default cross-validation (13 alphas x 5 folds) on
   24,980 trials x 15,724 voxels -> 197,376 targets (subj01's training trials to ViT-L tokens), float32.
3. **The Ecphory memory search**: a 27,000-entry subject memory (about one NSD subject's training trials)
   of 768-d pooled keys, exact search, top-10; time per query over a batch of queries.

It prints one table and, with --json, writes the figures there. Record them in docs/benchmarks/gpu.md with
the command and the commit.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

SIZES = {
    "full": {"subjects": 4, "voxels": 15724, "tokens": (257, 768), "batch": 6, "steps": 20, "warmup": 3,
             "model": {"hidden": 4096, "n_blocks": 4, "prior": {"depth": 6, "heads": 12, "dim_head": 64}},
             "ridge": (24980, 15724, 257 * 768), "memory": 27000, "key_dim": 768, "queries": 1000},
    "tiny": {"subjects": 2, "voxels": 64, "tokens": (5, 16), "batch": 2, "steps": 3, "warmup": 1,
             "model": {"hidden": 32, "n_blocks": 1, "prior": {"depth": 1, "heads": 2, "dim_head": 8}},
             "ridge": (200, 64, 80), "memory": 300, "key_dim": 16, "queries": 20},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def train_stage(size: dict, device: torch.device) -> dict:
    from brainrecon.models import StepInfo, SubjectBatch, TargetSpace, build_model
    from brainrecon.train.config import OptimConfig
    from brainrecon.train.trainer import make_optimizer

    reset_peak(device)
    torch.manual_seed(0)
    subjects = {f"subj{i + 1:02d}": size["voxels"] for i in range(size["subjects"])}
    space = TargetSpace({"image_tokens": tuple(size["tokens"])})
    model = build_model("mindeye2", size["model"], subjects, space).to(device).train()
    optimizer = make_optimizer(model, OptimConfig(lr=3e-4))
    generator = torch.Generator(device=device).manual_seed(1)

    def batch(offset: int) -> list[SubjectBatch]:
        b = size["batch"]
        return [SubjectBatch(name, torch.randn(b, n, generator=generator, device=device),
                             {"image_tokens": torch.randn(b, *size["tokens"], generator=generator, device=device)},
                             torch.arange(b, device=device) + 1000 * i + offset)
                for i, (name, n) in enumerate(subjects.items())]

    batches = [batch(0), batch(10_000)]  # made once and alternated: making data is not timed

    def step(i: int) -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = model.training_loss(batches[i % 2], StepInfo(i, 10_000), torch.Generator().manual_seed(i))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    for i in range(size["warmup"]):
        step(i)
    sync(device)
    started = time.perf_counter()
    losses = [step(size["warmup"] + i) for i in range(size["steps"])]
    sync(device)
    seconds = time.perf_counter() - started
    if not all(np.isfinite(losses)):
        raise RuntimeError(f"MindEye2-style training produced a non-finite loss: {losses}")
    samples = size["subjects"] * size["batch"]
    return {"stage": "MindEye2-style training, bf16", "size": f"{size['subjects']} x {size['voxels']} voxels -> "
            f"{size['tokens'][0]} x {size['tokens'][1]}, batch {samples}, "
            f"{sum(p.numel() for p in model.parameters()):,} params",
            "seconds": seconds, "rate": f"{size['steps'] / seconds:.2f} steps/s ({samples * size['steps'] / seconds:.0f} "
            f"samples/s)", "peak_gb": peak_gb(device)}


def ridge_stage(size: dict, device: torch.device) -> dict:
    from brainrecon.models.ridge import Ridge, RidgeConfig

    reset_peak(device)
    n, p, t = size["ridge"]
    generator = torch.Generator(device=device).manual_seed(2)
    latent = torch.randn(n, 48, generator=generator, device=device)
    x = latent @ torch.randn(48, p, generator=generator, device=device) + torch.randn(n, p, generator=generator,
                                                                                   device=device)
    y = latent @ torch.randn(48, t, generator=generator, device=device)
    y += 3 * torch.randn(n, t, generator=generator, device=device)  # in place: Y is 20 GB at NSD scale
    del latent
    groups = torch.arange(n, device="cpu") // 3  # repeats of a stimulus stay in one fold
    sync(device)
    started = time.perf_counter()
    ridge = Ridge(RidgeConfig(dtype="float32", device=str(device))).fit(x, y, groups=groups.numpy())
    sync(device)
    seconds = time.perf_counter() - started
    return {"stage": "ridge, 13 alphas x 5 folds, float32", "size": f"{n:,} x {p:,} -> {t:,} targets",
            "seconds": seconds, "rate": f"alpha {float(ridge.alpha[0]):g}", "peak_gb": peak_gb(device)}


def memory_stage(size: dict) -> dict:
    from brainrecon.memory import MemoryConfig, SubjectMemory

    rng = np.random.default_rng(3)
    n, d = size["memory"], size["key_dim"]
    keys = rng.standard_normal((n, d), dtype=np.float32)
    values = keys + rng.standard_normal((n, d), dtype=np.float32)
    ids = np.arange(n, dtype=np.int64)  # one entry per trial, as a memory of single trials holds
    memory = SubjectMemory.build("subj01", {"image_pooled": keys}, {"image_pooled": values}, ids,
                                 MemoryConfig(search="full", search_on=("image_pooled",), index="exact"))
    queries = {"image_pooled": rng.standard_normal((size["queries"], d), dtype=np.float32)}
    memory.search(queries, 10)  # warm-up
    started = time.perf_counter()
    memory.search(queries, 10)
    seconds = time.perf_counter() - started
    return {"stage": "Ecphory memory search, exact, top-10", "size": f"{len(memory):,} entries x {d}-d keys, "
            f"{size['queries']} queries", "seconds": seconds,
            "rate": f"{1e3 * seconds / size['queries']:.3f} ms/query", "peak_gb": None}


def table(rows: list[dict]) -> str:
    lines = ["| stage | size | seconds | rate | peak GPU memory |", "|---|---|---:|---|---:|"]
    for r in rows:
        peak = f"{r['peak_gb']:.1f} GB" if r["peak_gb"] is not None else "n/a"
        lines.append(f"| {r['stage']} | {r['size']} | {r['seconds']:.2f} | {r['rate']} | {peak} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes (CPU unless --device says otherwise)")
    parser.add_argument("--device", default=None, help="default: cuda for the full check, cpu with --tiny")
    parser.add_argument("--stages", default="train,ridge,memory")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    size = SIZES["tiny" if args.tiny else "full"]
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device is visible to torch; run with --tiny to check the script on CPU")
    header = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "sizes": "tiny" if args.tiny else "full", "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(json.dumps(header), flush=True)
    stages = {"train": lambda: train_stage(size, device), "ridge": lambda: ridge_stage(size, device),
              "memory": lambda: memory_stage(size)}
    rows = []
    for name in args.stages.split(","):
        rows.append(stages[name]())
        print(f"{name}: {rows[-1]['seconds']:.2f} s, {rows[-1]['rate']}", flush=True)
    print("\n" + table(rows))
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
