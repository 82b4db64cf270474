"""The leakage guard: evaluation refuses to score a run that saw its test set.

Three ways a test image can reach a model before it is scored, each checked by id:

1. training: the run's record of every stimulus it trained on (``RUN/training_stimuli.json``,
   an ``init_from`` run's included), for *any* of its subjects, since a multi-subject model
   that saw a test image through another subject's brain has still seen it;
2. Ecphory memories: the stimulus ids stored in ``RUN/memory/<keys>/<subject>/keys.safetensors``, for
   every kind of memory key;
3. reconstructions: the memories each reconstruction was built from (``retrieved_stimuli``
   in the reconstruction manifest).

A fourth leak is statistical: betas z-scored with statistics that include the test trials
(MindEye's released files, ``normalization: session-zscore-all``). That is refused unless
the caller opts in explicitly, and the result is then labelled as not held out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import numpy as np

from brainrecon.errors import EvaluationError
from brainrecon.memory.choice import KeyKind
from brainrecon.reconstruct import memory_dir

LEAKY_NORMALIZATION = "session-zscore-all"


class LeakageError(EvaluationError):
    """Evaluation would score a model on data it has seen."""


@dataclass
class LeakageReport:
    """What the guard checked (for metrics.json) and what it let through with a label."""

    checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def held_out(self) -> bool:
        return not self.warnings

    def to_dict(self) -> dict:
        return {"held_out": self.held_out, "checks": self.checks, "warnings": self.warnings}


def _overlap_message(what: str, subject: str, leaked: np.ndarray, fix: str) -> str:
    shown = ", ".join(str(i) for i in leaked[:5].tolist()) + (", ..." if leaked.size > 5 else "")
    return (f"evaluation refused: {leaked.size} test stimulus id(s) of {subject} appear {what} ({shown}). "
            f"Scores on them would not be held out. {fix}")


def memory_stimulus_ids(folder: Path) -> np.ndarray | None:
    """The stimulus ids held in an Ecphory memory, read without loading its keys or values."""
    path = folder / "keys.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        return np.asarray(handle.get_tensor("stimulus_ids"), dtype=np.int64)


def check_leakage(run: str | Path, test_ids: dict[str, np.ndarray], training_stimuli: dict[str, list[int]],
                  normalizations: dict[str, str], manifest: dict | None = None,
                  allow_test_normalization: bool = False) -> LeakageReport:
    """Raise ``LeakageError`` if any test stimulus was seen; return what was checked.

    ``test_ids``: per evaluated subject, the test stimulus ids scored. ``training_stimuli``:
    the run's record (per trained subject). ``normalizations``: each evaluated subject's
    store normalisation. ``manifest``: a reconstruction manifest, if reconstructions are scored.
    """
    run = Path(run)
    report = LeakageReport()
    seen_by = {subject: np.asarray(ids, dtype=np.int64) for subject, ids in training_stimuli.items()}
    for subject, ids in test_ids.items():
        ids = np.asarray(ids, dtype=np.int64)
        for trained, seen in seen_by.items():
            leaked = np.intersect1d(ids, seen)
            if leaked.size:
                raise LeakageError(_overlap_message(
                    f"among the training trials of run {run} (subject {trained})", subject, leaked,
                    "Train on a split whose training trials exclude every test image, or evaluate on a store "
                    "whose test split is disjoint from this run's training data."))
        for keys in get_args(KeyKind):
            folder = memory_dir(run, subject, keys)
            memory = memory_stimulus_ids(folder)
            if memory is None:
                continue
            leaked = np.intersect1d(ids, memory)
            if leaked.size:
                raise LeakageError(_overlap_message(
                    f"in the Ecphory memory {folder}", subject, leaked,
                    "Rebuild it with `brainrecon memory build` (memories hold training trials only)."))
            report.checks.append(f"{subject}: no test stimulus in the Ecphory memory with {keys} keys "
                                 f"({memory.size} entries)")
        normalization = normalizations.get(subject, "none")
        if normalization == LEAKY_NORMALIZATION:
            message = (f"{subject}: betas were normalised with statistics that include the test trials "
                       f"({LEAKY_NORMALIZATION}, e.g. MindEye's released files)")
            if not allow_test_normalization:
                raise LeakageError(f"evaluation refused: {message}. Prepare the store from NSD's raw betas with "
                                   f"`brainrecon nsd prepare` (training-only statistics), or pass "
                                   f"--allow-test-normalization to score it anyway, labelled as not held out.")
            report.warnings.append(message + "; scored anyway (--allow-test-normalization): NOT a held-out result")
        else:
            report.checks.append(f"{subject}: normalisation '{normalization}' uses no test statistics")
    n_seen = sum(len(v) for v in seen_by.values())
    report.checks.insert(0, f"no test stimulus among the {n_seen} training stimulus ids of "
                            f"{len(seen_by)} trained subject(s)")
    if manifest is not None:
        for entry in manifest.get("images", []):
            retrieved = entry.get("retrieved_stimuli")
            subject = entry["subject"]
            if retrieved and subject in test_ids:
                leaked = np.intersect1d(test_ids[subject], np.asarray(retrieved, dtype=np.int64))
                if leaked.size:
                    raise LeakageError(_overlap_message(
                        f"among the memories reconstruction {entry['file']} was built from", subject, leaked,
                        "Rebuild the memories (`brainrecon memory build`) and reconstruct again."))
        report.checks.append("no reconstruction was built from a test stimulus's memory")
    return report


__all__ = ["LEAKY_NORMALIZATION", "LeakageError", "LeakageReport", "check_leakage", "memory_stimulus_ids"]
