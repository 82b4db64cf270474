"""A validation slice of the *training* stimuli, scored while a run trains; the test set is never read.

The slice is held out by stimulus: every trial of a held-out stimulus leaves training, so a
validation score never rewards a model for remembering an image it was trained on (NSD shows each
image three times, and a split by trial would put repeats on both sides). Which stimuli are held
out is a pure function of the run's seed and training stimuli, drawn from the union of the
config's subjects' stimuli, so a stimulus is held out for every subject that saw it.

A validation score is taken at checkpoints (and every ``validation.every`` steps, each of which
then checkpoints too), so ``select: best`` can always go back to the scored weights: the best
checkpoint is kept out of the rotation. The scores go to RUN/log.csv (``val_retrieval``,
``val_cosine`` and, with their metrics, ``val_centred_cosine`` or ``val_slice_centred_cosine``; plotted by the
report) and, per subject,
to RUN/validation.json.

The score is MindEye's test protocol on the slice: repeats averaged at the input, the model's
retrieval prediction compared by cosine with every held-out stimulus's target, top-1 over all of
them (not 300-way: the slice is smaller), and the mean cosine to the true target (with the
``centred_cosine`` metric, also centred with the training stimuli's mean target; with
``slice_centred_cosine``, predictions and truths each centred with their own mean over the slice). A model with a
low-level head (MindEye's VAE-latent path) is also scored on its latents: their mean absolute error
(the head's training loss, MindEye2 §2.3) and their mean Pearson correlation with the true latents,
so the curve shows whether that head, which the retrieval score never sees, has stopped learning.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from brainrecon.config import StrictConfig
from brainrecon.data.store import Store
from brainrecon.errors import ConfigError
from brainrecon.io import atomic_write_json
from brainrecon.models.base import BrainModel
from brainrecon.rng import derive_rng
from brainrecon.train.targets import Targets

VALIDATION = "validation.json"
MIN_STIMULI = 2  # retrieval needs at least one wrong candidate


class ValidationConfig(StrictConfig):
    """`validation:` in a training config. The default (fraction 0) trains on every training stimulus."""

    fraction: float = Field(0.0, ge=0.0, le=0.5)  # share of the training stimuli held out
    every: int = Field(0, ge=0)  # optimiser steps between scores (each also checkpoints); 0: at checkpoints
    select: Literal["last", "best"] = "last"  # the final weights: the last step's, or the best-scoring ones
    # what "best" means. "cosine" (the default): the mean cosine to the truth, as Psychometry chooses its checkpoint.
    # Not "retrieval": top-1 among a slice of ~150 stimuli moves by several points between checkpoints from noise
    # alone (measured: MindEye1's sim preset peaked at step 275 of 381 by retrieval while the cosine still rose).
    # "centred_cosine": the same after subtracting the subject's training stimuli's mean target from prediction and
    # truth. It sees through a prediction near that mean, which the plain cosine can rank first (Psychometry with
    # `decoder: linear` peaked in plain cosine at step 25 of 128, validation retrieval 0.10 against 0.56 at the
    # end), but it also penalises a prediction whose mean or scale is off the targets', which retrieval ignores:
    # Mind Reader-style's centred cosine peaks near step 500 of 5,080, where its validation retrieval is about
    # 0.3, and falls while the retrieval rises to 0.6 (22.0% 300-way on test against 42.2% by the plain cosine,
    # three seeds each; docs/benchmarks/checkpoint-rule.md). "slice_centred_cosine": the cosine after subtracting
    # from the predictions their own mean over the subject's slice, and from the truths theirs, so neither a
    # prediction near one mean nor an offset or scale that retrieval ignores moves it. Not the default either: it
    # gains 1.1 points on Mind Reader-style, but peaks at steps 128-175 of 512 on MindBridge-style while the
    # validation retrieval still rises (48.9% against 68.6% on test; checkpoint-rule.md)
    metric: Literal["cosine", "centred_cosine", "slice_centred_cosine", "retrieval"] = "cosine"
    # with select: best, keep an earlier checkpoint only if it beats the last weights beyond the slice's noise: the
    # 95% Student-t interval of its paired gain in `metric` over the slice's stimuli excludes zero. Otherwise the
    # last weights, which saw the whole schedule, as the papers' fixed-budget runs keep. The maximum over dozens of
    # checkpoints of a noisy score is otherwise noise: a per-subject 1-session run's slice holds 21 stimuli, and by
    # the plain cosine one kept step 39 of 300 (6.3% 300-way on test, against 11.0% with its last weights).
    # false: the best-scoring checkpoint whatever its margin (the rule before 2026-12-04)
    confirm: bool = True

    @property
    def enabled(self) -> bool:
        return self.fraction > 0


def split_validation(store: Store, rows: dict[str, np.ndarray], fraction: float, seed: int,
                     seen: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each subject's training rows split into (training, validation) by stimulus.

    ``round(fraction * n)`` of the n distinct stimuli in ``rows`` (all subjects together) that are not in
    ``seen`` are held out, in a seeded order; a subject's validation rows are its trials of those stimuli.
    ``seen``: stimuli the starting model already trained on (an ``init_from`` run's), which would make a
    validation score on them a training score; they always stay in training.
    """
    ids = {s: store.subject(s).trials.stimulus_id[r] for s, r in rows.items()}
    union = np.unique(np.concatenate(list(ids.values())))
    unseen = union if seen is None else np.setdiff1d(union, seen)
    if fraction > 0 and unseen.size == 0:
        raise ConfigError(f"validation.fraction {fraction}: every training stimulus of {sorted(rows)} was trained on "
                          f"by the init_from run, so none can validate it; set validation.fraction to 0, or train "
                          f"on sessions the init_from run did not")
    held = derive_rng(seed, "validation").permutation(unseen)[:round(fraction * len(unseen))]
    train, validation = {}, {}
    for subject, subject_rows in rows.items():
        out = np.isin(ids[subject], held)
        train[subject], validation[subject] = subject_rows[~out], subject_rows[out]
        stimuli = len(np.unique(ids[subject][out]))
        if fraction > 0 and (stimuli < MIN_STIMULI or not (~out).any()):
            raise ConfigError(f"validation.fraction {fraction} leaves subject {subject} {stimuli} validation "
                              f"stimuli and {int((~out).sum())} training trials (it has "
                              f"{len(np.unique(ids[subject]))} training stimuli"
                              + ("; stimuli the init_from run trained on are never held out" if seen is not None else "")
                              + f"); a validation slice needs at least {MIN_STIMULI} stimuli and training at least "
                              f"one trial: change validation.fraction, or set it to 0")
    return train, validation


class ValidationSet:
    """The held-out stimuli of each subject: repeat-averaged normalised betas, scored against their targets."""

    def __init__(self, store: Store, rows: dict[str, np.ndarray], targets: Targets, target_name: str,
                 batch_size: int = 256, training_rows: dict[str, np.ndarray] | None = None,
                 lowlevel: bool = False, slice_centred: bool = False):
        """``training_rows``: each subject's training rows, whose stimuli's mean target centres the
        ``centred_cosine`` score (none given: that score is not taken). ``lowlevel``: also score the model's
        ``lowlevel`` prediction against the ``lowlevel`` target (VAE latents). ``slice_centred``: also take the
        ``slice_centred_cosine`` score."""
        self.targets, self.target_name, self.batch_size, self.lowlevel = targets, target_name, batch_size, lowlevel
        self.slice_centred = slice_centred
        self.betas: dict[str, torch.Tensor] = {}
        self.stimulus_ids: dict[str, np.ndarray] = {}
        self.centres: dict[str, torch.Tensor] = {}
        for subject, subject_rows in (training_rows or {}).items():
            stimuli = np.unique(store.subject(subject).trials.stimulus_id[subject_rows])
            self.centres[subject] = self._mean_target(stimuli)
        for subject, subject_rows in rows.items():
            data = store.subject(subject)
            ids = data.trials.stimulus_id[subject_rows]
            unique, inverse = np.unique(ids, return_inverse=True)
            betas = data.read_trials(subject_rows).astype(np.float64)
            sums = np.zeros((len(unique), betas.shape[1]))
            np.add.at(sums, inverse, betas)
            self.betas[subject] = torch.from_numpy((sums / np.bincount(inverse)[:, None]).astype(np.float32))
            self.stimulus_ids[subject] = unique

    def _mean_target(self, stimuli: np.ndarray) -> torch.Tensor:
        """The flattened target's mean over ``stimuli``, read a batch of stimuli at a time (NSD's token targets
        are about 0.8 MB a stimulus in float32)."""
        total = 0.0
        for start in range(0, len(stimuli), self.batch_size):
            block = self.targets.get(self.target_name, stimuli[start:start + self.batch_size])
            total = total + block.reshape(len(block), -1).sum(0, dtype=np.float64)
        return torch.from_numpy(np.asarray(total / len(stimuli), np.float32))

    def stimuli(self) -> dict[str, int]:
        return {subject: len(ids) for subject, ids in self.stimulus_ids.items()}

    @torch.no_grad()
    def score(self, model: BrainModel, device: torch.device | str) -> dict:
        """Top-1 retrieval among each subject's held-out stimuli and the mean cosine to the truth, per
        subject and averaged over subjects. The model is scored in eval mode and handed back as it came."""
        per_subject = {}
        with _evaluating(model):
            for subject in self.betas:
                items, latents = self._subject_items(model, subject, device)
                per_subject[subject] = {name: float(values.mean()) for name, values in items.items()}
                if latents is not None:
                    per_subject[subject].update(self._lowlevel_scores(latents, self.stimulus_ids[subject]))
        names = (["retrieval", "cosine"] + (["centred_cosine"] if self.centres else [])
                 + (["slice_centred_cosine"] if self.slice_centred else [])
                 + (["lowlevel_l1", "lowlevel_corr"] if self.lowlevel else []))
        return {**{name: float(np.mean([v[name] for v in per_subject.values()])) for name in names},
                "subjects": per_subject}

    @torch.no_grad()
    def item_scores(self, model: BrainModel, device: torch.device | str, metric: str) -> torch.Tensor:
        """``metric`` for every held-out stimulus of every subject, subjects in order: what two checkpoints'
        paired comparison (`paired_gain`) reads. Pooled, each (subject, stimulus) one item, where `score`
        averages per subject first; a stimulus held out for several subjects counts once for each of them, so
        with several subjects the comparison's interval is somewhat narrower than independent items would give."""
        with _evaluating(model):
            return torch.cat([self._subject_items(model, subject, device)[0][metric] for subject in self.betas])

    def _subject_items(self, model: BrainModel, subject: str,
                       device: torch.device | str) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Each held-out stimulus's retrieval hit (0 or 1), cosine, (with centres) centred cosine and (with
        slice_centred) slice-centred cosine, and the predicted low-level latents (None without that head)."""
        betas = self.betas[subject]
        # only the scored outputs are kept from each batch (at NSD size MindEye2's backbone is ~1.7 MB a stimulus)
        wanted = (model.retrieval_target,) + (("lowlevel",) if self.lowlevel else ())
        outputs = [{name: out[name].float().flatten(1).cpu() for name in wanted}
                   for out in (model.predict(betas[i:i + self.batch_size].to(device), subject)
                               for i in range(0, len(betas), self.batch_size))]
        predicted = torch.cat([out[model.retrieval_target] for out in outputs])
        # read from the targets cache at each score rather than held: at NSD size a slice's token targets
        # are about 0.7 GB per subject in float32
        truth = torch.from_numpy(np.asarray(self.targets.get(self.target_name, self.stimulus_ids[subject]),
                                            np.float32)).flatten(1)
        similarity = F.normalize(predicted, dim=1) @ F.normalize(truth, dim=1).T
        items = {"retrieval": (similarity.argmax(dim=1) == torch.arange(len(similarity))).double(),
                 "cosine": similarity.diagonal().double()}
        if subject in self.centres:
            centre = self.centres[subject]
            items["centred_cosine"] = F.cosine_similarity(predicted - centre, truth - centre, dim=1).double()
        if self.slice_centred:
            items["slice_centred_cosine"] = F.cosine_similarity(predicted - predicted.mean(0), truth - truth.mean(0),
                                                                dim=1).double()
        latents = torch.cat([out["lowlevel"] for out in outputs]) if self.lowlevel else None
        return items, latents

    def _lowlevel_scores(self, predicted: torch.Tensor, stimuli: np.ndarray) -> dict[str, float]:
        """Mean absolute error of the predicted VAE latents, and their mean per-stimulus Pearson correlation."""
        truth = torch.from_numpy(np.asarray(self.targets.get("lowlevel", stimuli), np.float32)).flatten(1)
        if truth.shape != predicted.shape:
            raise ConfigError(f"the model's lowlevel prediction has shape {tuple(predicted.shape[1:])} per stimulus "
                              f"but the lowlevel target {tuple(truth.shape[1:])}: train with the VAE the targets "
                              f"were made with")
        centred_p = predicted - predicted.mean(1, keepdim=True)
        centred_t = truth - truth.mean(1, keepdim=True)
        correlation = F.cosine_similarity(centred_p, centred_t, dim=1)
        return {"lowlevel_l1": float((predicted - truth).abs().double().mean()),
                "lowlevel_corr": float(correlation.double().mean())}


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module):
    """``model`` in eval mode for the block, then handed back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def paired_gain(first: torch.Tensor, second: torch.Tensor) -> dict:
    """The mean of ``first - second`` over the same items (two checkpoints' item scores) and the half-width of
    its 95% Student-t interval; ``beyond_noise``: the interval lies above zero."""
    from scipy import stats

    differences = (first - second).double().numpy()
    n = len(differences)
    mean = float(differences.mean())
    half = (float(stats.t.ppf(0.975, n - 1) * differences.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf)
    return {"gain": mean, "ci95": half, "items": n, "beyond_noise": mean - half > 0}


def better(score: dict, best: dict | None, metric: str) -> bool:
    """Whether ``score`` beats ``best`` on ``metric`` (see ValidationConfig), ties broken by retrieval (by the
    cosine when the metric is retrieval)."""
    other = "cosine" if metric == "retrieval" else "retrieval"
    return best is None or (score[metric], score[other]) > (best[metric], best[other])


class ValidationRecord:
    """RUN/validation.json: the slice, every score so far, and (when training ends) the chosen step.

    On ``--resume`` the scores after the checkpoint resumed from are dropped: the resumed run
    scores those steps again.
    """

    def __init__(self, run: Path, config: ValidationConfig, stimuli: dict[str, int], resume_step: int):
        self.path, self.config, self.stimuli = Path(run) / VALIDATION, config, stimuli
        self.curve: list[dict] = []
        self.best_against_last: dict | None = None  # the best checkpoint's paired gain over the last weights
        if resume_step and self.path.is_file():
            self.curve = [e for e in json.loads(self.path.read_text())["curve"] if e["step"] <= resume_step]

    @property
    def best(self) -> dict | None:
        best = None
        for entry in self.curve:
            best = entry if better(entry, best, self.config.metric) else best
        return best

    def add(self, step: int, score: dict) -> None:
        self.curve.append({"step": step, **score})
        self.write()

    def write(self, chosen_step: int | None = None) -> None:
        atomic_write_json(self.path, {"fraction": self.config.fraction, "select": self.config.select,
                                      "metric": self.config.metric, "stimuli": self.stimuli,
                                      "scores": "retrieval: top-1 among the slice; cosine: mean cosine to the truth; "
                                                "centred_cosine (with that metric): the same, both centred with "
                                                "the subject's training stimuli's mean target; "
                                                "slice_centred_cosine (with that metric): the same, predictions "
                                                "and truths each centred with their own mean over the subject's "
                                                "slice; lowlevel_l1 and "
                                                "lowlevel_corr (with a low-level head): the predicted VAE latents' "
                                                "mean absolute error and mean correlation with the truth",
                                      "confirm": self.config.confirm, "chosen_step": chosen_step,
                                      "best_against_last": self.best_against_last, "curve": self.curve})
