"""One trainer for every brain model, from a laptop CPU to many GPUs.

The loop is plain to see in :func:`train`: draw balanced per-subject batches,
compute the model's loss, step AdamW, log, checkpoint. accelerate supplies
the device, data parallelism (DDP; launch with `torchrun` or `accelerate
launch`) and mixed precision; the rest is ours:

- batches, learning rate and all loss randomness are pure functions of
  (seed, step, rank), so `--resume` after a kill reproduces the uninterrupted
  run exactly on CPU (and with the same kernels on GPU);
- each process takes its rows of the global batch, so N processes with the same
  global batch follow the 1-process loss curve;
- the held-out test set is not read here: the command layer evaluates the
  finished run once (`brainrecon train` does it right after training), so no
  checkpoint is chosen by test performance; a validation slice of the
  *training* stimuli (`validation:`, train/validation.py) is scored at
  checkpoints, and can choose the final weights;
- torch's global random state is the caller's again when training returns.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from brainrecon.data.store import Store, open_store
from brainrecon.errors import ConfigError, DivergenceError
from brainrecon.io import atomic_write_json, atomic_write_text, exclusive_lock
from brainrecon.models import build_model
from brainrecon.models.base import (
    BrainModel,
    StepInfo,
    TrainingStep,
)
from brainrecon.provenance import source_commit
from brainrecon.rng import derive_rng
from brainrecon.train.batches import BalancedBatches, SubjectStream, training_rows
from brainrecon.train.config import OptimConfig, TrainConfig
from brainrecon.train.run import CLOSED_FORM_FIT, RunDir, RunInfo, load_run, training_stimuli
from brainrecon.train.targets import Targets, load_targets
from brainrecon.train.validation import ValidationRecord, ValidationSet, paired_gain, split_validation


def learning_rate(step: int, total: int, optim: OptimConfig, epochs: int) -> float:
    """LR at an optimiser step: torch's OneCycleLR (cosine, two phases), a cosine decay, or constant.

    "cosine" warms up linearly over ``optim.warmup_steps`` steps, then decays from ``optim.lr`` to
    ``optim.lr * optim.min_lr_fraction`` (SGDR's cosine annealing, Loshchilov & Hutter 2017, §3, without
    restarts); with the defaults (no warm-up, floor 0) it is the plain cosine from lr to 0.
    """
    if optim.schedule == "constant":
        return optim.lr
    if optim.schedule == "cosine":
        warmup, floor = optim.warmup_steps, optim.min_lr_fraction
        if step < warmup:
            return optim.lr * (step + 1) / warmup
        # the plain cosine is evaluated in the order it always was, so earlier configs keep bit-identical values
        if warmup == 0 and floor == 0:
            angle = math.pi * step / max(1, total)
        else:
            angle = math.pi * ((step - warmup) / max(1, total - warmup))
        return optim.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(angle)))
    pct = optim.pct_start if optim.pct_start is not None else min(0.5, 2 / epochs)
    warm = max(1.0, pct * total - 1)
    start, floor = optim.lr / optim.div_factor, optim.lr / optim.div_factor / optim.final_div_factor
    cos_between = lambda a, b, t: b + (a - b) / 2 * (1 + math.cos(math.pi * min(1.0, t)))
    if step <= warm:
        return cos_between(start, optim.lr, step / warm)
    return cos_between(optim.lr, floor, (step - warm) / max(1.0, total - 1 - warm))


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(derive_rng(seed, "step", step, rank).integers(2**62))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation parameters (anything with fewer than 2 dims)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


FUSED_DEVICES = ("cpu", "cuda")  # where torch 2.13's fused AdamW runs


def make_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters, with the kernel ``optim.kernel`` asks for.

    At NSD widths the optimiser was 39-52% of a CPU training step with torch's default kernel;
    the fused kernel updates every parameter in one pass (docs/benchmarks/training.md).
    """
    groups = parameter_groups(model, optim.weight_decay)
    devices = {p.device.type for group in groups for p in group["params"]}
    kernel = optim.kernel
    if kernel == "auto":
        kernel = "fused" if devices <= set(FUSED_DEVICES) else "foreach"
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[kernel]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, **flags)


def resolve_subjects(store: Store, config: TrainConfig) -> dict[str, int]:
    names = config.subjects or store.subjects
    missing = [s for s in names if s not in store.subjects]
    if missing:
        raise ConfigError(f"subjects {missing} are not in the store {store.root} (it holds "
                          f"{', '.join(store.subjects)}); fix `subjects:` in the config")
    stray = [s for s in config.subject_sessions if s not in names]
    if stray:
        raise ConfigError(f"subject_sessions names {stray}, which this run does not train (subjects: {names})")
    return {name: store.subject(name).n_voxels for name in names}


def initial_model(config: TrainConfig, subjects: dict[str, int], targets: Targets) -> tuple[BrainModel, list[str]]:
    """A fresh model, or one from `init_from` extended with the subjects it has not seen (returned too)."""
    torch.manual_seed(config.seed)
    if config.init_from is None:
        if config.tune != "all":
            raise ConfigError("tune: new-subjects needs init_from: a finished run to start from")
        return build_model(config.model_kind, config.model_options, subjects, targets.space), []
    model, info = load_run(config.init_from)
    if info.kind != config.model_kind:
        raise ConfigError(f"init_from {config.init_from} is a {info.kind!r} run but the config's model kind is "
                          f"{config.model_kind!r}")
    if info.space != targets.space:
        raise ConfigError(f"init_from {config.init_from} predicts {info.space.shapes}, but the config's targets "
                          f"give {targets.space.shapes}; use the same `targets:`")
    new = [s for s in subjects if s not in model.subjects]
    for subject, n_voxels in subjects.items():
        if subject in model.subjects and model.subjects[subject] != n_voxels:
            raise ConfigError(f"subject {subject} has {n_voxels} voxels in the store but "
                              f"{model.subjects[subject]} in {config.init_from}; voxel counts must match")
    for subject in new:
        model.add_subject(subject, subjects[subject])
        model.subjects[subject] = subjects[subject]
    if config.tune == "new-subjects":
        if not new:
            raise ConfigError("tune: new-subjects, but every subject is already in init_from")
        keep = {id(p) for s in new for p in model.subject_parameters(s)}
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in keep)
    return model.train(), new


class CsvLog:
    """Tidy CSV (step, epoch, metric, value): new metrics can appear without changing the header."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        if resume_step and path.is_file():  # drop rows the killed run logged after its last checkpoint
            rows = [r for r in csv.reader(path.open()) if r and (r[0] == "step" or int(r[0]) <= resume_step)]
            buffer = io.StringIO()
            csv.writer(buffer).writerows(rows)
            atomic_write_text(path, buffer.getvalue())  # a kill here must not lose the logged history
        elif not path.is_file() or not resume_step:
            atomic_write_text(path, "step,epoch,metric,value\n")

    def write(self, step: int, epoch: int, values: dict[str, float]) -> None:
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            for key, value in values.items():
                writer.writerow([step, epoch, key, f"{value:.6g}"])


def _tensorboard(run: RunDir, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run.path / "tensorboard"))


def train(config: TrainConfig, store_path: str | Path, out: str | Path, resume: bool = False,
          progress: bool = True, overwrite: bool = False) -> Path:
    """Train (or continue, or with ``overwrite`` replace) a run; returns the run directory.

    The run is not evaluated here: call ``evaluate.evaluation.final_evaluation`` on it (the
    `train` command does).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedDataParallelKwargs

    # accelerate keeps one state per process and refuses a second Accelerator with another precision. One
    # process may train runs of different precisions one after another (the demo, a notebook), so a single
    # process drops the earlier run's state; processes under a distributed launcher train one run each
    earlier = AcceleratorState._shared_state.get("_mixed_precision")
    if earlier is not None and earlier != config.mixed_precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()
    # cpu=True on CPU-only machines: without it accelerate does not set up gloo under torchrun, and each
    # process would train alone, as if it were rank 0
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=config.mixed_precision,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    main = accelerator.is_main_process
    run = RunDir(out)
    # everything a bad input can break is checked before the run folder is touched
    store = open_store(store_path)
    subjects = resolve_subjects(store, config)
    with accelerator.main_process_first():  # one process computes the targets cache, the others read it
        targets = load_targets(store, config.targets, progress=progress and main)
    # initialisation and dropout draw from torch's global generator, seeded per step; the fork hands
    # the caller its own state back
    with contextlib.ExitStack() as held, torch.random.fork_rng(devices=_cuda_devices()):
        model, _ = initial_model(config, subjects, targets)
        rows, held_out = _training_and_validation_rows(config, store, list(subjects))
        if main:
            held.enter_context(exclusive_lock(run.path))  # one writer per run: a second `--resume` is refused
            run.start(config, resume, overwrite, store)
        accelerator.wait_for_everyone()
        return _train(config, store, model, rows, held_out, targets, run, resume, progress, accelerator)


def _training_and_validation_rows(config: TrainConfig, store: Store, subjects: list[str]):
    """The one place a run's training trials are chosen (the run records them for everyone after it), and its
    validation slice: stimuli an ``init_from`` run trained on are never held out, since that model has seen them."""
    rows = {s: training_rows(store, s, config.seed, config.sessions_for(s), config.max_trials) for s in subjects}
    if not config.validation.enabled:
        return rows, {}
    seen = None
    if config.init_from:
        seen = np.unique(np.concatenate([np.asarray(ids, np.int64) for ids in
                                         training_stimuli(config.init_from).values()] or [np.zeros(0, np.int64)]))
    return split_validation(store, rows, config.validation.fraction, config.seed, seen=seen)


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _train(config: TrainConfig, store: Store, model: BrainModel, rows: dict[str, np.ndarray],
           held_out: dict[str, np.ndarray], targets: Targets, run: RunDir, resume: bool, progress: bool,
           accelerator) -> Path:
    """``rows``: the training rows of the config's subjects, the ones trained on (``held_out``: their validation
    rows). The model may hold more subjects (an ``init_from`` run's): they stay in it, but none of their trials
    is drawn."""
    subjects = list(rows)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    info = RunInfo(config.model_kind, config.model_options, dict(model.subjects), targets.space,
                   str(store.root.resolve()), store.manifest_sha256, source_commit() if main else None)
    if main:
        run.write_info(info)
        run.write_training_stimuli(store, rows, training_stimuli(config.init_from) if config.init_from else None,
                                   held_out)
    if model.closed_form:
        return _fit_closed_form(store, model, targets, rows, run, accelerator)

    streams = [SubjectStream(store, s, targets, config.seed, rows[s]) for s in subjects]
    batches = BalancedBatches(streams, config.batch_size, rank, world)
    steps_per_epoch = -(-batches.draws_per_epoch() // config.grad_accum)
    total_steps = config.steps or config.epochs * steps_per_epoch
    epochs = -(-total_steps // steps_per_epoch)  # what `steps` amounts to, for epoch-based schedules
    last_step = min(total_steps, config.max_steps or total_steps)

    optimizer = make_optimizer(model, config.optim)
    state = run.resume_from(model, optimizer) if resume else None
    start_step = int(state["step"]) if state else 0
    step_module, optimizer = accelerator.prepare(TrainingStep(model), optimizer)
    unwrapped = accelerator.unwrap_model(step_module).model
    log = CsvLog(run.path / "log.csv", start_step) if main else None
    board = _tensorboard(run, config.tensorboard) if main else None
    checkpoint_every = config.checkpoint_every or steps_per_epoch
    validation = record = None
    if held_out and main:  # scored on the main process only, at checkpoints (every process has the same weights)
        validation = ValidationSet(store, held_out, targets, model.retrieval_target,
                                   training_rows=rows if config.validation.metric == "centred_cosine" else None,
                                   slice_centred=config.validation.metric == "slice_centred_cosine",
                                   lowlevel="lowlevel" in model.required_targets)
        record = ValidationRecord(run.path, config.validation, validation.stimuli(), start_step)

    bar = tqdm(total=last_step, initial=start_step, desc=f"train {config.model_kind}", unit="step",
               disable=not (progress and main))
    samples, clock = 0, time.perf_counter()
    for step in range(start_step, last_step):
        epoch = step // steps_per_epoch
        info_step = StepInfo(step, total_steps)
        lr = learning_rate(step, total_steps, config.optim, epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logged: dict[str, float] = {}
        for micro in range(config.grad_accum):
            seed = step_seed(config.seed, step * config.grad_accum + micro, rank)
            torch.manual_seed(seed)  # dropout and anything else drawing from the global generator
            generator = torch.Generator().manual_seed(seed + 1)
            parts = [b.to(accelerator.device) for b in batches(step * config.grad_accum + micro)]
            syncing = micro == config.grad_accum - 1
            context = accelerator.no_sync(step_module) if not syncing else contextlib.nullcontext()
            with context, accelerator.autocast():
                loss, values = step_module(parts, info_step, generator)
                accelerator.backward(loss / config.grad_accum)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise DivergenceError(
                    f"training diverged at step {step + 1}: the loss is {value} (learning rate {lr:.3g}, peak "
                    f"optim.lr {config.optim.lr:g}). Lower optim.lr or set optim.grad_clip, then start again with "
                    f"--overwrite; nothing was saved as final")
            for key, value in {"loss": value, **values}.items():
                logged[key] = logged.get(key, 0.0) + value / config.grad_accum
            samples += sum(len(b) for b in parts) * world
        if config.optim.grad_clip:
            accelerator.clip_grad_norm_(step_module.parameters(), config.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if done % config.log_every == 0 or done == last_step:
            logged = _mean_over_processes(logged, accelerator)  # every process takes part in the reduction
        if main and (done % config.log_every == 0 or done == last_step):
            rate = samples / max(1e-9, time.perf_counter() - clock)
            logged.update(lr=lr, samples_per_second=rate)
            log.write(done, epoch, logged)
            if board:
                for key, value in logged.items():
                    board.add_scalar(key, value, done)
            bar.set_postfix(loss=f"{logged['loss']:.4g}", samples_s=f"{rate:.0f}")
        bar.update(1)
        validating = bool(held_out) and config.validation.every > 0 and done % config.validation.every == 0
        if done % checkpoint_every == 0 or done == last_step or validating:
            accelerator.wait_for_everyone()
            if record is not None:
                score = validation.score(unwrapped, accelerator.device)
                record.add(done, score)
                log.write(done, epoch, {f"val_{name}": score[name] for name in
                                        ("retrieval", "cosine", "centred_cosine", "slice_centred_cosine",
                                         "lowlevel_l1", "lowlevel_corr")
                                        if name in score})
            if main:
                best = record.best if record is not None else None
                run.save_checkpoint(done, unwrapped, optimizer.optimizer, {"epoch": epoch}, config.keep_checkpoints,
                                    protect=best["step"] if best else None)
    bar.close()
    if board:
        board.close()
    accelerator.wait_for_everyone()
    if main:
        if record is not None:
            chosen = record.best["step"] if config.validation.select == "best" else last_step
            if chosen != last_step:
                chosen = _return_to_best(run, unwrapped, validation, record, chosen, last_step, accelerator.device)
            record.write(chosen_step=chosen)
        run.save_final(unwrapped)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run.path


def _return_to_best(run: RunDir, model: BrainModel, validation: ValidationSet, record: ValidationRecord, best: int,
                    last: int, device) -> int:
    """Load the best-scoring checkpoint's weights into ``model`` and return its step; with ``validation.confirm``
    only if it beats the last weights beyond the slice's noise, else the last weights stay (``last``). The paired
    comparison goes to the record either way."""
    metric = record.config.metric
    last_items = validation.item_scores(model, device, metric)
    run.load_checkpoint_weights(best, model)
    record.best_against_last = {"best_step": best, "metric": metric,
                                **paired_gain(validation.item_scores(model, device, metric), last_items)}
    if not record.config.confirm or record.best_against_last["beyond_noise"]:
        return best
    run.load_checkpoint_weights(last, model)  # the last step always checkpoints, and is the newest kept
    return last


def _mean_over_processes(values: dict[str, float], accelerator) -> dict[str, float]:
    """Logged numbers averaged over processes, so a DDP run logs the global batch's loss."""
    if accelerator.num_processes == 1:
        return values
    keys = sorted(values)
    stacked = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    return dict(zip(keys, accelerator.reduce(stacked, reduction="mean").tolist()))


def _fit_closed_form(store: Store, model: BrainModel, targets: Targets, rows: dict, run: RunDir,
                     accelerator) -> Path:
    """Models fitted in one solve (the ridge): each subject on all its training trials, through the
    model's ``fit_subject`` hook; what each fit chose goes to RUN/closed_form_fit.json."""
    if accelerator.is_main_process:
        fits = {}
        for subject, subject_rows in rows.items():
            data = store.subject(subject)
            ids = data.trials.stimulus_id[subject_rows]
            fits[subject] = model.fit_subject(subject, data.read_trials(subject_rows),
                                              {name: targets.columns(name, ids) for name in model.fit_targets}, ids)
        atomic_write_json(run.path / CLOSED_FORM_FIT, fits)
        run.save_final(model)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run.path
