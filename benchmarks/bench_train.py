"""Benchmark: training throughput, peak memory and parameter counts of the brain models (not a test).

    .venv/bin/python benchmarks/bench_train.py --parts params,sim,nsd --threads 2
    .venv/bin/python benchmarks/bench_train.py --parts e2e --store /tmp/w/default --threads 2

Figures go to docs/benchmarks/training.md. Parts:

``params``
    Parameter counts at NSD dimensions with the papers' sizes. Models are built on the meta device, so
    nothing is allocated. They are compared with the published counts, as printed by the released
    notebooks of MindEye (Scotti et al., NeurIPS 2023; Train_MindEye.ipynb) and MindEye2 (Scotti et al.,
    ICML 2024; Train.ipynb and recon_inference.ipynb).
    They are also compared with an analytic count of the upstream dalle2 / MindEye prior and MindEye2
    backbone, written here from the upstream code. That analytic count reproduces the published figures
    exactly, so it can attribute every difference to a component.
``sim``
    Each model kind at simulated-world size, with its ``sim-<kind>`` preset's model options and batch size.
    Targets are the shipped small CLIP's: image tokens 65 x 128, text tokens 77 x 128, pooled 128. Voxel
    counts are the default world's subjects (1718, 2398, 2364, 1775). Multi-subject kinds get all 4
    subjects; single-subject kinds get subj01.
``nsd``
    The same at NSD dimensions (subj01 15,724 voxels; subjects 1/2/5/7 for multi-subject kinds; image
    tokens 257 x 768, text tokens 77 x 768) with reduced widths (``NSD_REDUCED``), so they fit in CPU RAM
    and run in seconds per step.
``scaling``
    How a training step's cost grows: each kind at its sim preset's options and batch, at 1,000, 4,000 and
    16,000 voxels (one subject), and, for the multi-subject kinds, with 1, 2 and 4 subjects of 2,000
    voxels. Trials do not enter a step: an epoch's cost is steps per epoch (trials / batch) times this.
``e2e``
    ``brainrecon train --config sim-<kind> --data STORE --max-steps 30`` for real. It reports the
    trainer's own ``samples_per_second`` from log.csv at step 30, and the process wall time (which
    includes start-up, target loading from the cache, the checkpoint and the held-out evaluation).

In ``sim`` and ``nsd``, every model trains in a FRESH child process. The child mirrors the trainer's
step: ``training_loss`` on per-subject ``SubjectBatch``es of synthetic tensors, backward, optional grad
clip, AdamW (no decay on biases and norms; torch's default implementation, as the trainer). It runs
warm-up steps (2 in ``sim``, 1 in ``nsd``), then timed steps until ``--seconds`` have passed (at least
3 steps). Peak memory is the child's VmHWM (/proc/self/status), not ``ru_maxrss``: Linux gives a
forked child the parent's RSS as its starting ``ru_maxrss``, and that survives exec. Steps run at
epoch 0, so the MindEye models are in their BiMixCo phase, as in the first steps of a real run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

KINDS = ("mindeye1", "mindeye2", "mindbridge", "psychometry", "mindreader")
MULTI = {"mindeye2", "mindbridge", "psychometry"}
SIM_SUBJECTS = {"subj01": 1718, "subj02": 2398, "subj03": 2364, "subj04": 1775}  # default world
SIM_SPACE = {"image_tokens": [65, 128], "text_tokens": [77, 128], "image_pooled": [128], "text_pooled": [128]}
NSD_SUBJECTS = {"subj01": 15724, "subj02": 14278, "subj05": 13039, "subj07": 12682}
NSD_SPACE = {"image_tokens": [257, 768], "text_tokens": [77, 768], "image_pooled": [768], "text_pooled": [768]}
# per subject; MindEye2 gets 2 x 4 subjects = 8 samples a step, as MindEye1 (its prior makes steps slow)
NSD_BATCH = {"mindeye1": 8, "mindeye2": 2, "mindbridge": 8, "psychometry": 8, "mindreader": 8}

# Reduced widths at NSD dimensions. The paper's value is in the comment where it differs.
NSD_REDUCED = {
    "mindeye1": {"hidden": 512, "n_blocks": 4, "projector_hidden": 512,  # paper: hidden 4096, projector 2048
                 "prior": {"depth": 1, "heads": 12, "dim_head": 64}},  # paper: depth 6
    "mindeye2": {"hidden": 512, "n_blocks": 4,  # paper: 4096 (bigG targets; ours ViT-L 257 x 768)
                 "prior": {"depth": 1, "heads": 12, "dim_head": 64, "embed_scale": 1.0}},  # paper: depth 6
    "mindbridge": {"pool_length": 8192, "adapter_bottleneck": 128, "hidden": 256, "n_blocks": 4},  # paper: 2048
    "psychometry": {"d_model": 128, "fmri_seq_len": 100, "encoder_hidden": [512],  # paper: 768, [4096, 2048]
                    "decoder_layers": 1, "heads": 8, "ff": 512,  # paper: 3 layers, ff 3072
                    "num_experts": 16, "slots_per_expert": 4, "mse_mult": 1e6},
    # Mind Reader at the paper's own sizes (it is small); targets are ViT-B/32 pooled 512 as in nsd-mindreader
    "mindreader": {"channels": 64, "n_res_blocks": 4, "kernel": 4, "stride": 2, "token_channels": 512,
                   "fc_hidden": 128},
}
MINDREADER_NSD_SPACE = {"image_pooled": [512], "text_pooled": [512]}


# --------------------------------------------------------------------------------------------------
# helpers


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def thread_env(threads: int) -> dict:
    return dict(os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                          "MKL_NUM_THREADS")})


def preset(kind: str):
    from brainrecon.config import load_config
    from brainrecon.train.config import TrainConfig

    return load_config(TrainConfig, f"sim-{kind}", "train")


def sim_spec(kind: str) -> dict:
    config = preset(kind)
    names = config.subjects or list(SIM_SUBJECTS)
    return {"kind": kind, "options": config.model_options, "subjects": {s: SIM_SUBJECTS[s] for s in names},
            "space": SIM_SPACE, "batch": config.batch_size, "grad_clip": config.optim.grad_clip,
            "lr": config.optim.lr, "weight_decay": config.optim.weight_decay, "epochs": config.epochs, "warmup": 2}


SCALING_VOXELS = (1000, 4000, 16000)
SCALING_SUBJECTS = (1, 2, 4)


def scaling_specs(kind: str) -> list[dict]:
    """The sim preset's model at several voxel counts (one subject) and, if multi-subject, subject counts."""
    base = sim_spec(kind)
    specs = [{**base, "subjects": {"subj01": n}, "axis": "voxels", "size": n} for n in SCALING_VOXELS]
    if kind in MULTI:
        specs += [{**base, "subjects": {f"subj{i + 1:02d}": 2000 for i in range(n)}, "axis": "subjects", "size": n}
                  for n in SCALING_SUBJECTS]
    return specs


def print_scaling(rows: list[dict]) -> None:
    print(f"{'kind':12s} {'axis':9s} {'size':>6s} {'params':>12s} {'ms/step':>8s} {'peak RSS':>9s}")
    for r in rows:
        print(f"{r['kind']:12s} {r['axis']:9s} {r['size']:6d} {r['params']:12,d} {1000 / r['steps_per_s']:8.1f} "
              f"{r['peak_mb']:7.0f}MB", flush=True)


def nsd_spec(kind: str) -> dict:
    subjects = dict(NSD_SUBJECTS) if kind in MULTI else {"subj01": NSD_SUBJECTS["subj01"]}
    space = MINDREADER_NSD_SPACE if kind == "mindreader" else {k: v for k, v in NSD_SPACE.items()
                                                               if k in ("image_tokens", "text_tokens")}
    config = preset(kind)
    return {"kind": kind, "options": NSD_REDUCED[kind], "subjects": subjects, "space": space,
            "batch": NSD_BATCH[kind], "warmup": 1, "grad_clip": config.optim.grad_clip, "lr": config.optim.lr,
            "weight_decay": config.optim.weight_decay, "epochs": config.epochs}


# --------------------------------------------------------------------------------------------------
# child: one model's training steps


def child(spec: dict, threads: int, seconds: float, profile: bool) -> dict:
    import contextlib

    import torch

    from brainrecon.models import StepInfo, SubjectBatch, TargetSpace, build_model
    from brainrecon.train.config import OptimConfig
    from brainrecon.train.trainer import make_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    space = TargetSpace.from_dict(spec["space"])
    started = time.perf_counter()
    model = build_model(spec["kind"], spec["options"], spec["subjects"], space).train()
    build_s = time.perf_counter() - started
    n_params = sum(p.numel() for p in model.parameters())
    # as the trainer makes it; spec["kernel"] picks AdamW's kernel, so kernels compare in one run
    optimizer = make_optimizer(model, OptimConfig(lr=spec["lr"], weight_decay=spec["weight_decay"],
                                                  kernel=spec.get("kernel", "auto")))
    needed = [n for n in space.shapes if n in model.required_targets]
    gen = torch.Generator().manual_seed(1)
    # as the trainer's `mixed_precision: bf16` does through accelerate: the forward and the loss under
    # torch.autocast, the backward and the optimizer outside it
    autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if spec.get("precision", "no") == "bf16"
                else contextlib.nullcontext)

    def batch(offset: int) -> list[SubjectBatch]:
        out = []
        for i, (name, n_vox) in enumerate(spec["subjects"].items()):
            b = spec["batch"]
            targets = {n: torch.randn(b, *space[n], generator=gen) for n in needed}
            out.append(SubjectBatch(name, torch.randn(b, n_vox, generator=gen), targets,
                                    torch.arange(b) + 1000 * i + offset))
        return out

    batches = [batch(0), batch(10_000)]  # made once, alternated: data making is not timed
    samples_per_step = sum(len(b) for b in batches[0])
    rss_before = status_mb("VmRSS")
    parts = {"loss": 0.0, "backward": 0.0, "optimizer": 0.0}

    def step(i: int, timed: bool) -> None:
        info = StepInfo(i, 10_000)
        generator = torch.Generator().manual_seed(i)
        t0 = time.perf_counter()
        with autocast():
            loss, _ = model.training_loss(batches[i % 2], info, generator)
        float(loss.detach())
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if spec["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if timed:
            parts["loss"] += t1 - t0
            parts["backward"] += t2 - t1
            parts["optimizer"] += t3 - t2

    warm_started = time.perf_counter()
    for i in range(spec["warmup"]):
        step(i, timed=False)
    warmup_s = time.perf_counter() - warm_started
    steps, started = 0, time.perf_counter()
    while steps < 3 or (time.perf_counter() - started < seconds and steps < 500):
        step(2 + steps, timed=True)
        steps += 1
    elapsed = time.perf_counter() - started
    result = {"kind": spec["kind"], "params": n_params, "axis": spec.get("axis"), "size": spec.get("size"), "subjects": len(spec["subjects"]),
              "batch_per_subject": spec["batch"], "samples_per_step": samples_per_step, "steps": steps,
              "seconds": elapsed, "steps_per_s": steps / elapsed, "samples_per_s": steps * samples_per_step / elapsed,
              "split": {k: v / elapsed for k, v in parts.items()}, "warmup_s": warmup_s, "build_s": build_s,
              "rss_after_build_mb": rss_before, "peak_mb": status_mb("VmHWM"),
              "torch_threads": torch.get_num_threads(), "options": spec["options"]}
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(3):
                step(1000 + i, timed=False)
        result["profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return result


def run_child(spec: dict, threads: int, seconds: float, profile: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec), "--threads", str(threads),
           "--seconds", str(seconds)] + (["--profile", "yes"] if profile else [])
    started = time.perf_counter()
    out = subprocess.run(cmd, check=False, env=thread_env(threads), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"child for {spec['kind']} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def print_throughput(rows: list[dict]) -> None:
    print(f"{'kind':12s} {'params':>12s} {'subj x batch':>12s} {'steps/s':>8s} {'samples/s':>9s} "
          f"{'peak RSS':>9s} {'after build':>11s}  loss/backward/optimizer share")
    for r in rows:
        split = "/".join(f"{100 * v:.0f}%" for v in r["split"].values())
        kind = r["kind"] + (f" {r['kernel']}" if "kernel" in r else "") + (
            f" {r['precision']}" if r.get("precision", "no") != "no" else "")
        print(f"{kind:12s} {r['params']:12,d} {r['subjects']:>5d} x {r['batch_per_subject']:<4d} "
              f"{r['steps_per_s']:8.2f} {r['samples_per_s']:9.1f} {r['peak_mb']:7.0f}MB "
              f"{r['rss_after_build_mb']:9.0f}MB"
              f"  {split}  ({r['steps']} steps in {r['seconds']:.1f} s)", flush=True)
        if "profile" in r:
            print(r["profile"])


# --------------------------------------------------------------------------------------------------
# parameter counts


def upstream_prior_count(dim: int, depth: int, heads: int, dim_head: int, tokens: int, ff_mult: int = 4) -> dict:
    """MindEye's dalle2-based prior (VersatileDiffusionPriorNetwork + FlaggedCausalTransformer), analytically.

    From the upstream code: the time embedding is dalle2's MLP(dim, dim) (expansion 2, depth 2: three
    Linears with bias). Three (tokens, dim) tensors: learned_query (pos_emb), null_brain_embeds and
    null_image_embed. RelPosBias(32 buckets x heads). RotaryEmbedding(32) holds 16 frozen freqs, counted as
    parameters but not trainable. Per layer, Attention has gain-only LayerNorm, null_kv (2, dim_head), to_q
    (dim -> heads*dim_head), to_kv (dim -> 2*dim_head: ONE key/value head shared by all query heads), to_out
    Linear + gain-only LayerNorm. FeedForward is LayerNorm, Linear(dim, 2*ff_mult*dim), SwiGLU,
    Linear(ff_mult*dim, dim), all without bias. Then a final gain-only LayerNorm and project_out
    Linear(dim, dim, bias=False).
    """
    inner = heads * dim_head
    return {
        "time embedding": (dim * 2 * dim + 2 * dim) + (2 * dim * 2 * dim + 2 * dim) + (2 * dim * dim + dim),
        "learned tokens": 3 * tokens * dim,
        "attention": depth * (dim + 2 * dim_head + dim * inner + dim * 2 * dim_head + inner * dim + dim),
        "feed-forward": depth * (dim + dim * 2 * ff_mult * dim + ff_mult * dim * dim),
        "position bias + rotary": 32 * heads + min(32, dim_head) // 2,
        "output": dim + dim * dim,
    }


def our_prior_count(prior) -> dict:
    def n(module_or_params) -> int:
        params = module_or_params.parameters() if hasattr(module_or_params, "parameters") else module_or_params
        return sum(p.numel() for p in params)

    attention = sum(n([b.attn_norm.weight, b.attn_norm.bias, b.qkv.weight, b.attn_out.weight]) for b in prior.blocks)
    return {"time embedding": n(prior.time_mlp),
            "learned tokens": n([prior.null_cond, prior.cond_pos, prior.target_pos]),
            "attention": attention,
            "feed-forward": n(prior.blocks) - attention,
            "position bias + rotary": 0,
            "output": n(prior.out_norm) + n(prior.out)}


def upstream_me2_backbone(h: int, tokens: int, dim: int) -> dict:
    """MindEye2 BrainNetwork without the blurry head, analytically (MindEye2, Scotti et al., ICML 2024; models.py)."""
    return {"mixer_blocks1": 4 * (2 * h + 2 * (h * h + h)), "mixer_blocks2 (vestigial)": 4 * 6,
            "backbone_linear": h * tokens * dim + tokens * dim, "clip_proj": 3 * (2 * dim + dim * dim + dim)}


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def params_part() -> list[dict]:
    import torch

    from brainrecon.models import TargetSpace, build_model
    from brainrecon.models.psychometry import count_parameters

    rows: list[dict] = []

    def row(model_name, part, ours, published=None, upstream=None, note=""):
        rows.append({"model": model_name, "part": part, "ours": int(ours), "published": published,
                     "upstream_analytic": upstream, "note": note})

    vitl = TargetSpace({"image_tokens": (257, 768), "text_tokens": (77, 768)})
    subj01 = {"subj01": NSD_SUBJECTS["subj01"]}
    prior_me1 = {"depth": 6, "heads": 12, "dim_head": 64}
    with torch.device("meta"):
        me1 = build_model("mindeye1", {"hidden": 4096, "n_blocks": 4, "projector_hidden": 2048, "prior": prior_me1},
                          subj01, vitl)
    up = upstream_prior_count(768, 6, 12, 64, 257)
    ours_prior = our_prior_count(me1.prior)
    row("MindEye1 (subj01, ViT-L 257x768)", "voxel2clip (lin0 + 4 blocks + lin1 + projector)",
        count(me1) - count(me1.prior), 947_579_904)
    row("MindEye1 (subj01, ViT-L 257x768)", "diffusion prior (depth 6, 12 x 64)", count(me1.prior),
        1_003_635_088 - 947_579_904, sum(up.values()))
    row("MindEye1 (subj01, ViT-L 257x768)", "total", count(me1), 1_003_635_088)
    prior_breakdown = {"MindEye1 prior (768, 12 x 64, 257 tokens)": (ours_prior, up)}

    bigg = TargetSpace({"image_tokens": (256, 1664), "lowlevel": (4, 28, 28)})
    prior_me2 = {"depth": 6, "heads": 32, "dim_head": 52, "embed_scale": 1.0}
    for hidden, lowlevel, published in ((1024, False, (16_102_400, 453_360_280, 259_865_216, 729_327_896)),
                                        (4096, True, (64_409_600, 1_903_020_028, 259_865_216, 2_227_294_844))):
        with torch.device("meta"):
            me2 = build_model("mindeye2", {"hidden": hidden, "n_blocks": 4, "prior": prior_me2,
                                           "lowlevel": lowlevel}, subj01, bigg)
        name = f"MindEye2 h={hidden}{' + blurry' if lowlevel else ', no blurry'} (subj01, bigG-shaped 256x1664)"
        backbone = count(me2) - count(me2.prior) - count(me2.adapters)
        up_backbone = upstream_me2_backbone(hidden, 256, 1664)
        row(name, "ridge (per-subject adapter)", count(me2.adapters), published[0])
        row(name, "backbone" + (" incl. low-level head" if lowlevel else ""), backbone, published[1],
            None if lowlevel else sum(up_backbone.values()))
        if lowlevel:
            up_blurry = published[1] - sum(up_backbone.values())
            row(name, "  of which low-level (blurry) head", count(me2.lowlevel), up_blurry,
                note="published: backbone minus the analytic non-blurry backbone")
        row(name, "diffusion prior (depth 6, 32 x 52)", count(me2.prior), published[2],
            sum(upstream_prior_count(1664, 6, 32, 52, 256).values()))
        row(name, "total", count(me2), published[3])
        if hidden == 1024:
            prior_breakdown["MindEye2 prior (1664, 32 x 52, 256 tokens)"] = (
                our_prior_count(me2.prior), upstream_prior_count(1664, 6, 32, 52, 256))
    # the nsd-mindeye2 preset as it actually runs: ViT-L tokens (257, 768), VAE latents (4, 28, 28) assumed
    with torch.device("meta"):
        me2v = build_model("mindeye2", {"hidden": 4096, "n_blocks": 4, "prior": {**prior_me1, "embed_scale": 1.0},
                                        "lowlevel": True}, subj01,
                           TargetSpace({"image_tokens": (257, 768), "lowlevel": (4, 28, 28)}))
    row("MindEye2 nsd preset (h=4096 + blurry, ViT-L 257x768)", "total (per subject +64.4M adapter)", count(me2v),
        note="our preset's target space; no published count")

    with torch.device("meta"):
        mb = build_model("mindbridge", {"pool_length": 8192, "adapter_bottleneck": 128, "hidden": 2048,
                                        "n_blocks": 4}, dict(NSD_SUBJECTS), vitl)
    per = count(mb.embedders["subj01"]) + count(mb.builders["subj01"])
    row("MindBridge (subj 1/2/5/7, pool 8192, h=2048)", "per subject (embedder + builder)", per)
    row("MindBridge (subj 1/2/5/7, pool 8192, h=2048)", "shared (translator + heads)", count(mb) - 4 * per)
    row("MindBridge (subj 1/2/5/7, pool 8192, h=2048)", "total", count(mb), note="no published count")

    psy = count_parameters()
    row("Psychometry (subj 1/2/5/7, main.py sizes)", "shared (decoders, experts, pos)", psy["shared"])
    row("Psychometry (subj 1/2/5/7, main.py sizes)", "  of which experts (2 x 16)", psy["experts"])
    for s in NSD_SUBJECTS:
        row("Psychometry (subj 1/2/5/7, main.py sizes)", f"{s} (encoder + 2 gates)", psy[f"subject_{s}"])
    row("Psychometry (subj 1/2/5/7, main.py sizes)", "total", psy["total"], note="no published count")

    with torch.device("meta"):
        mr = build_model("mindreader", NSD_REDUCED["mindreader"], subj01, TargetSpace(
            {k: tuple(v) for k, v in MINDREADER_NSD_SPACE.items()}))
    row("Mind Reader (subj01, ViT-B/32 512)", "total (image + caption mappers)", count(mr), note="no published count")

    print(f"{'model':58s} {'part':50s} {'ours':>15s} {'published':>15s} {'diff':>13s} {'upstream (analytic)':>19s}")
    for r in rows:
        pub = f"{r['published']:,}" if r["published"] is not None else "-"
        diff = f"{r['ours'] - r['published']:+,}" if r["published"] is not None else ""
        upa = f"{r['upstream_analytic']:,}" if r["upstream_analytic"] is not None else ""
        print(f"{r['model']:58s} {r['part']:50s} {r['ours']:15,} {pub:>15s} {diff:>13s} {upa:>19s}")
    for name, (ours, upstream) in prior_breakdown.items():
        print(f"\n{name}: component, ours, upstream (dalle2 structure), difference")
        for key in ours:
            print(f"  {key:24s} {ours[key]:13,} {upstream[key]:13,} {ours[key] - upstream[key]:+13,}")
        print(f"  {'total':24s} {sum(ours.values()):13,} {sum(upstream.values()):13,} "
              f"{sum(ours.values()) - sum(upstream.values()):+13,}")
    up = upstream_me2_backbone(1024, 256, 1664)
    print("\nMindEye2 backbone h=1024 (upstream, analytic): " + ", ".join(f"{k} {v:,}" for k, v in up.items())
          + f"; sum {sum(up.values()):,}")
    return rows


# --------------------------------------------------------------------------------------------------
# end to end through the CLI


def e2e_part(store: Path, kinds: list[str], threads: int, workdir: Path, max_steps: int) -> list[dict]:
    rows = []
    brainrecon = Path(sys.executable).with_name("brainrecon")
    for kind in kinds:
        out = workdir / f"e2e-{kind}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [str(brainrecon), "train", "--config", f"sim-{kind}", "--data", str(store), "--out", str(out),
               "--max-steps", str(max_steps), "--no-progress"]
        started = time.perf_counter()
        proc = subprocess.run(cmd, check=False, env=thread_env(threads), capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        logged = {}
        with (out / "log.csv").open() as handle:
            for r in csv.DictReader(handle):
                if r["metric"] == "samples_per_second":
                    logged[int(r["step"])] = float(r["value"])
        last = max(logged)
        config = preset(kind)
        n_subjects = len(config.subjects or SIM_SUBJECTS)
        rows.append({"kind": kind, "samples_per_second": logged[last], "at_step": last, "all_logged": logged,
                     "steps_per_second": logged[last] / (config.batch_size * n_subjects),
                     "process_wall_s": wall, "command": " ".join(cmd[1:])})
        print(f"{kind:12s} samples/s {logged[last]:8.1f} at step {last} (logged: "
              + ", ".join(f"{s}: {v:.0f}" for s, v in sorted(logged.items()))
              + f"); steps/s {rows[-1]['steps_per_second']:.2f}; process wall {wall:.1f} s", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    return rows


# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="params,sim,nsd", help="comma list of params, sim, nsd, scaling, e2e")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per model (after warm-up)")
    parser.add_argument("--nsd-seconds", type=float, default=20.0)
    parser.add_argument("--store", type=Path, default=Path("/tmp/w/default"), help="world store for e2e")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-train"))
    parser.add_argument("--profile", default="",
                        help="comma list of kinds to torch.profile (3 steps, after the timing)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--kernels", default="auto", help="comma list of AdamW kernels to time each model with "
                                                          "(auto, fused, foreach, for-loop), e.g. for-loop,auto")
    parser.add_argument("--precisions", default="no", help="comma list of autocast precisions to time each model "
                                                           "with (no, bf16), as the trainer's mixed_precision")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = [{"kernel": kernel, "precision": precision} for kernel in args.kernels.split(",")
                for precision in args.precisions.split(",")]
    if args.child:
        print(json.dumps(child(json.loads(args.child), args.threads, args.seconds, bool(args.profile))))
        return

    import torch

    header = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
              "threads": args.threads, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(json.dumps(header), flush=True)
    kinds = args.kinds.split(",")
    profiled = set(filter(None, args.profile.split(",")))
    results: dict = {"header": header}
    total = time.perf_counter()
    for part in args.parts.split(","):
        started = time.perf_counter()
        if part == "params":
            print("\n== parameter counts at NSD dimensions, papers' sizes (meta device)")
            results["params"] = params_part()
        elif part == "sim":
            print(f"\n== simulated-world size, sim-* presets ({args.threads} torch threads)")
            rows = [{**run_child({**sim_spec(k), **setting}, args.threads, args.seconds, k in profiled), **setting}
                    for k in kinds for setting in settings]
            print_throughput(rows)
            results["sim"] = rows
        elif part == "nsd":
            print(f"\n== NSD dimensions, reduced widths ({args.threads} torch threads)")
            rows = []
            for k in kinds:
                for setting in settings:
                    spec = {**nsd_spec(k), **setting}
                    print(f"{k} (AdamW {setting['kernel']}, autocast {setting['precision']}): "
                          f"{json.dumps(spec['options'])}; subjects "
                          f"{list(spec['subjects'].values())}; targets {spec['space']}", flush=True)
                    rows.append({**run_child(spec, args.threads, args.nsd_seconds, k in profiled), **setting})
            print_throughput(rows)
            results["nsd"] = rows
        elif part == "scaling":
            print(f"\n== scaling with voxels and subjects, sim-* presets ({args.threads} torch threads)")
            rows = [run_child(spec, args.threads, args.seconds) for k in kinds for spec in scaling_specs(k)]
            print_scaling(rows)
            results["scaling"] = rows
        elif part == "e2e":
            print(f"\n== end to end: brainrecon train --max-steps {args.max_steps} on {args.store}")
            args.workdir.mkdir(parents=True, exist_ok=True)
            results["e2e"] = e2e_part(args.store, kinds, args.threads, args.workdir, args.max_steps)
        else:
            raise SystemExit(f"unknown part {part!r}")
        print(f"[{part}: {time.perf_counter() - started:.0f} s]", flush=True)
    print(f"\ntotal {time.perf_counter() - total:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
