"""The run directory: what a training run leaves on disk, and how it is read back.

    RUN/config.yaml              the full config, written before the first step
    RUN/model.json               model kind, options, subjects (name -> voxels), target space, store,
                                 and the source commit of the code that trained it
    RUN/model.safetensors        final weights (written when training ends)
    RUN/training_stimuli.json    per subject, every stimulus id the run trained on (init_from's included),
                                 the trial rows of the store this run itself trained on, and the rows of
                                 the training stimuli it held out for validation
    RUN/validation.json          validation scores during training and the step chosen (train/validation.py)
    RUN/closed_form_fit.json     closed-form models (the ridge): what each subject's fit chose
    RUN/metrics.json             held-out evaluation (docs/evaluation.md; after the final weights)
    RUN/log.csv                  step, epoch, metric, value (one row per logged number)
    RUN/checkpoints/step-N/      model.safetensors, optimizer.safetensors, state.json
    RUN/checkpoints/latest.json  which checkpoint is the newest complete one

A run pins what it was made from: model.json holds the sha256 of the store's manifest,
and `--resume`, `evaluate` and `reconstruct` refuse another store. Weights are checked
to be finite before any checkpoint or final model is written.

Checkpoints are assembled in `step-N.partial/` and renamed into place, and
`latest.json` is replaced only afterwards, so a kill at any moment leaves the
previous checkpoint intact. Weights are safetensors; everything else is JSON.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from brainrecon import __version__
from brainrecon.config import load_config
from brainrecon.data.store import Store, open_store
from brainrecon.errors import ConfigError, DivergenceError, OutputError
from brainrecon.io import atomic_path, atomic_write_json, check_output_dir
from brainrecon.models import build_model
from brainrecon.models.base import BrainModel, TargetSpace
from brainrecon.train.batches import training_rows
from brainrecon.train.config import TrainConfig
from brainrecon.train.targets import Targets, load_targets

RUN_FORMAT = 1
TRAINING_STIMULI = "training_stimuli.json"
CLOSED_FORM_FIT = "closed_form_fit.json"  # what a closed-form model's fit chose (the ridge's alpha), per subject


class RunError(ConfigError):
    """A run directory is missing, incomplete, or does not match what was asked."""


@dataclass
class RunInfo:
    kind: str
    options: dict
    subjects: dict[str, int]
    space: TargetSpace
    store: str
    store_manifest_sha256: str | None = None  # None for runs made before runs pinned their store
    # the source commit of the code that started the run (provenance.source_commit), and of each resume since;
    # None for runs made before runs recorded it
    commit: str | None = None
    resumed_at: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"format": RUN_FORMAT, "brainrecon": __version__, "commit": self.commit,
                "resumed_at": self.resumed_at, "kind": self.kind, "options": self.options,
                "subjects": self.subjects, "space": self.space.to_dict(), "store": self.store,
                "store_manifest_sha256": self.store_manifest_sha256}

    @classmethod
    def from_dict(cls, data: dict) -> RunInfo:
        return cls(data["kind"], data["options"], {k: int(v) for k, v in data["subjects"].items()},
                   TargetSpace.from_dict(data["space"]), data.get("store", ""), data.get("store_manifest_sha256"),
                   data.get("commit"), list(data.get("resumed_at", [])))

    def check_store(self, run: Path, store_root: Path, store_sha256: str) -> None:
        """Refuse a store other than the one this run was trained on (a re-made store included)."""
        if self.store_manifest_sha256 is not None and self.store_manifest_sha256 != store_sha256:
            pinned = self.store_manifest_sha256[:12]
            raise RunError(f"{run} was trained on a store whose manifest sha256 is {pinned}…, "
                           f"but {store_root} has {store_sha256[:12]}… (another store, or one re-made or edited "
                           f"since); give --data the store the run was trained on, or train a new run on this one")


def is_run(path: Path) -> bool:
    """Whether a folder holds a training run (its config is written first, before anything else)."""
    return (Path(path) / "config.yaml").is_file()


def check_finite(model: torch.nn.Module, what: str) -> None:
    """Refuse to write non-finite weights: a NaN model must never look like a finished run."""
    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise DivergenceError(f"{what}: {len(bad)} weight tensor(s) are not finite (first: {bad[0]}); training "
                              f"diverged. Lower optim.lr or set optim.grad_clip, then start again with --overwrite")


def _save_model_atomic(model: torch.nn.Module, path: Path) -> None:
    with atomic_path(path) as temporary:
        save_model(model, str(temporary))  # handles tied weights, unlike save_file


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"

    # -- starting ---------------------------------------------------------------------------------
    def start(self, config: TrainConfig, resume: bool, overwrite: bool = False, store: Store | None = None) -> None:
        """Create the run, or check that `--resume` continues the same config on the same store.

        Called with everything else already validated, so a bad config or store never leaves a
        half-made run folder behind that would block the corrected command.
        """
        saved = self.path / "config.yaml"
        if resume and not overwrite and is_run(self.path):
            previous = load_config(TrainConfig, saved, "train")
            if previous != config:
                raise RunError(f"{saved} differs from the config given now; a resumed run must use the same "
                               f"config (or start again with --overwrite, or choose a new --out)")
            info = self.path / "model.json"
            if store is not None and info.is_file():
                RunInfo.from_dict(json.loads(info.read_text())).check_store(self.path, store.root,
                                                                            store.manifest_sha256)
            return
        try:
            replace = check_output_dir(self.path, "a brainrecon run", is_run, overwrite)
        except OutputError as error:
            if is_run(self.path) and not overwrite:
                raise RunError(f"{self.path} already holds a run; pass --resume to continue it, --overwrite to "
                               f"replace it, or choose a new --out") from None
            raise error
        if replace:
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        config.save(saved)

    def write_info(self, info: RunInfo) -> None:
        """Write model.json. A resumed run keeps the commit it was started at, and adds the one resuming it to
        ``resumed_at``: a run trained mostly by one version of the code must not be credited to the last."""
        path = self.path / "model.json"
        if path.is_file():
            earlier = RunInfo.from_dict(json.loads(path.read_text()))
            if earlier.commit is not None:
                info = dataclasses.replace(info, commit=earlier.commit, resumed_at=[*earlier.resumed_at, info.commit])
        atomic_write_json(path, info.to_dict())

    def write_training_stimuli(self, store: Store, rows: dict[str, np.ndarray],
                               inherited: dict[str, list[int]] | None = None,
                               validation: dict[str, np.ndarray] | None = None) -> None:
        """Record what training saw, once, for everyone who needs it: the trial rows this run trains
        on (the memory's keys, the closed-form fit) and every stimulus id, so evaluation can prove no
        test stimulus was among them.

        ``inherited``: the stimulus record of an ``init_from`` run, whose training is part of this one.
        ``validation``: the rows of the training stimuli held out for validation (recorded apart).
        """
        merged = {subject: set(ids) for subject, ids in (inherited or {}).items()}
        for subject, subject_rows in rows.items():
            merged.setdefault(subject, set()).update(np.unique(store.subject(subject).trials.stimulus_id[subject_rows])
                                                     .tolist())
        atomic_write_json(self.path / TRAINING_STIMULI, {
            "store": str(store.root.resolve()),
            "subjects": {s: sorted(int(i) for i in ids) for s, ids in merged.items()},
            "rows": {s: [int(r) for r in subject_rows] for s, subject_rows in rows.items()},
            "validation_rows": {s: [int(r) for r in subject_rows] for s, subject_rows in (validation or {}).items()}})

    # -- checkpoints ------------------------------------------------------------------------------
    @staticmethod
    def checkpoint_name(step: int) -> str:
        return f"step-{step:08d}"

    def save_checkpoint(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        extra: dict, keep: int, protect: int | None = None) -> None:
        """Write the checkpoint of ``step`` and delete all but the newest ``keep`` (never the one of step
        ``protect``: the best-scoring weights that ``validation.select: best`` will return to)."""
        check_finite(model, f"checkpoint at step {step}")
        name = self.checkpoint_name(step)
        final, partial = self.checkpoints / name, self.checkpoints / f"{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_model(model, str(partial / "model.safetensors"))
        tensors, meta = optimizer_to_safetensors(optimizer.state_dict())
        save_file(tensors, str(partial / "optimizer.safetensors"))
        (partial / "state.json").write_text(json.dumps({"step": step, "optimizer": meta, **extra}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        atomic_write_json(self.checkpoints / "latest.json", {"checkpoint": name, "step": step})
        kept = self.checkpoint_name(protect) if protect is not None else None
        for old in sorted(self.checkpoints.glob("step-????????"))[:-keep]:
            if old.name != kept:
                shutil.rmtree(old, ignore_errors=True)

    def resume_from(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
        """Load the newest intact checkpoint into model and optimizer; its state, or None if there is none.

        A checkpoint that cannot be read (truncated, deleted files) or holds non-finite weights is
        skipped for the one before it, with a warning; if none is usable, the error names each file.
        """
        names = sorted((p.name for p in self.checkpoints.glob("step-????????")), reverse=True)
        pointer = self.checkpoints / "latest.json"
        if pointer.is_file():
            try:
                latest = json.loads(pointer.read_text())["checkpoint"]
                names = [latest] + [n for n in names if n != latest]
            except (ValueError, KeyError):
                pass  # a broken pointer: the folders themselves say which checkpoints exist
        problems = []
        for name in names:
            folder = self.checkpoints / name
            try:
                state = self.load_checkpoint(folder, model, optimizer)
                check_finite(model, str(folder))
            except (OSError, ValueError, KeyError, RuntimeError, DivergenceError, SafetensorError) as error:
                problems.append(f"{folder}: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
                continue
            if problems:
                warnings.warn(f"unusable checkpoint(s) skipped ({'; '.join(problems)}); resumed from {folder}",
                              stacklevel=2)
            return state
        if problems:
            raise RunError(f"no usable checkpoint in {self.checkpoints}: {'; '.join(problems)}. Delete the "
                           f"broken checkpoint folders to start from step 0, or start again with --overwrite")
        return None

    @staticmethod
    def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        load_model(model, str(folder / "model.safetensors"), strict=True, device="cpu")
        state = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "optimizer.safetensors"))
        optimizer.load_state_dict(optimizer_from_safetensors(tensors, state["optimizer"]))
        return state

    def load_checkpoint_weights(self, step: int, model: torch.nn.Module) -> None:
        """The model weights of the checkpoint of ``step`` (the optimizer's state is left)."""
        load_model(model, str(self.checkpoints / self.checkpoint_name(step) / "model.safetensors"), strict=True,
                   device="cpu")

    # -- the finished run -------------------------------------------------------------------------
    def save_final(self, model: torch.nn.Module) -> None:
        check_finite(model, "the final model")
        _save_model_atomic(model, self.path / "model.safetensors")

    @property
    def finished(self) -> bool:
        return (self.path / "model.safetensors").is_file() and (self.path / "model.json").is_file()


def optimizer_to_safetensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able rest."""
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, per_param in state["state"].items():
        meta["state"][str(index)] = {}
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
                meta["state"][str(index)][key] = "tensor"
            else:
                meta["state"][str(index)][key] = value
    return tensors, meta


def optimizer_from_safetensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for index, per_param in meta["state"].items():
        state[int(index)] = {key: tensors[f"{index}.{key}"] if value == "tensor" else value
                             for key, value in per_param.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def load_run(path: str | Path, device: str = "cpu") -> tuple[BrainModel, RunInfo]:
    """A finished run's model (eval mode) and its description."""
    run = RunDir(path)
    if not (run.path / "model.json").is_file():
        raise RunError(f"{run.path} is not a brainrecon run (no model.json); train one with `brainrecon train`")
    if not (run.path / "model.safetensors").is_file():
        raise RunError(f"{run.path} has no final model.safetensors: training has not finished; continue it "
                       f"with `brainrecon train ... --out {run.path} --resume`")
    info = RunInfo.from_dict(json.loads((run.path / "model.json").read_text()))
    model = build_model(info.kind, info.options, info.subjects, info.space)
    load_model(model, str(run.path / "model.safetensors"), strict=True, device=device)
    return model.to(device).eval(), info


def read_training_stimuli(run: str | Path) -> dict[str, list[int]] | None:
    """A run's record of the stimulus ids it trained on, per subject (None for runs made before the record)."""
    path = Path(run) / TRAINING_STIMULI
    if not path.is_file():
        return None
    return {subject: list(ids) for subject, ids in json.loads(path.read_text())["subjects"].items()}


def training_stimuli(run: str | Path) -> dict[str, list[int]]:
    """What a run trained on, per subject: its record, or for runs made before the record, rebuilt.

    Rebuilt from the run's config and store with the trainer's own row selection, and an
    ``init_from`` run's stimuli added (recursively), so the leakage guard never sees less than
    training did.
    """
    record = read_training_stimuli(run)
    if record is not None:
        return record
    run = Path(run)
    config = load_config(TrainConfig, run / "config.yaml", "train")
    store = _store_of(run)
    merged: dict[str, set[int]] = {}
    for subject in config.subjects or store.subjects:
        rows = training_rows(store, subject, config.seed, config.sessions_for(subject), config.max_trials)
        merged[subject] = set(np.unique(store.subject(subject).trials.stimulus_id[rows]).tolist())
    if config.init_from:
        for subject, ids in training_stimuli(config.init_from).items():
            merged.setdefault(subject, set()).update(ids)
    return {subject: sorted(ids) for subject, ids in merged.items()}


def _store_of(run: Path) -> Store:
    info = RunInfo.from_dict(json.loads((run / "model.json").read_text()))
    if not Path(info.store).is_dir():
        raise RunError(f"{run} has no {TRAINING_STIMULI} and its store {info.store} is gone, so what it trained on "
                       f"cannot be checked; restore the store or retrain")
    return open_store(info.store)


def recorded_training_rows(run: str | Path, store: Store, subject: str) -> np.ndarray:
    """The store's trial rows of ``subject`` that the run trained on, from the run's record.

    A subject the run inherited from its ``init_from`` run (kept in the model, not trained on here) has
    the rows that run recorded. Runs made before rows were recorded: recomputed with the trainer's own
    selection from the run's config."""
    path = Path(run) / TRAINING_STIMULI
    record = json.loads(path.read_text()) if path.is_file() else {}
    if subject in record.get("rows", {}):
        return np.asarray(record["rows"][subject], dtype=np.int64)
    config = load_config(TrainConfig, Path(run) / "config.yaml", "train")
    trained_here = subject in (config.subjects or store.subjects)
    if "rows" in record and not trained_here and config.init_from:
        return recorded_training_rows(config.init_from, store, subject)
    return training_rows(store, subject, config.seed, config.sessions_for(subject), config.max_trials)


@dataclass
class RunContext:
    """A finished run loaded together with its store (checked to be the one it was trained on) and targets."""

    model: BrainModel
    info: RunInfo
    store: Store
    targets: Targets
    config: TrainConfig
    path: Path

    @classmethod
    def open(cls, run: str | Path, data: str | Path | None = None, device: str = "cpu") -> RunContext:
        model, info = load_run(run, device)
        config = load_config(TrainConfig, Path(run) / "config.yaml", "train")
        store_path = Path(data) if data else Path(info.store)
        if not store_path.is_dir():
            raise ConfigError(f"the store this run was trained on ({info.store}) is not there; pass --data STORE")
        store = open_store(store_path)
        info.check_store(Path(run), store.root, store.manifest_sha256)
        return cls(model, info, store, load_targets(store, config.targets, progress=False), config, Path(run))

    def subjects(self, names: list[str] | None) -> list[str]:
        names = names or list(self.model.subjects)
        unknown = [s for s in names if s not in self.model.subjects]
        if unknown:
            raise ConfigError(f"subjects {unknown} are not in this run (it has {sorted(self.model.subjects)})")
        return names

    def training_rows(self, subject: str) -> np.ndarray:
        """The subject's trial rows this run trained on (its record)."""
        return recorded_training_rows(self.path, self.store, subject)

    def validation_rows(self, subject: str) -> np.ndarray:
        """The subject's trial rows held out from training as the run's validation slice (empty if none)."""
        path = self.path / TRAINING_STIMULI
        record = json.loads(path.read_text()) if path.is_file() else {}
        return np.asarray(record.get("validation_rows", {}).get(subject, []), dtype=np.int64)
