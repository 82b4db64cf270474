"""Balanced multi-subject batches as a pure function of the step.

Every subject contributes `batch_size` trials to every draw, so a multi-subject
model sees all subjects in every step (one loader per subject, balanced).
Which trials a draw holds depends only on (seed, subject, draw): each subject
walks an endless sequence of permutations of its training trials, one per
pass. Nothing is iterator state, so a resumed run reads exactly the batches
the uninterrupted run would have, and under data parallelism rank r takes rows
r, r + world, ... of the global draw (the ranks' union is the global batch).
"""

from __future__ import annotations

import numpy as np
import torch

from brainrecon.data.store import Store
from brainrecon.errors import ConfigError, StoreError
from brainrecon.models.base import SubjectBatch
from brainrecon.rng import derive_rng
from brainrecon.train.targets import Targets


def training_rows(store: Store, subject: str, seed: int, sessions: list[int] | None = None,
                  max_trials: int | None = None) -> np.ndarray:
    """The trial rows a run trains on: the training split (some sessions only), optionally a seeded subset.

    One function for every model (ridge included) and for the run's record of its training
    stimuli, so the leakage check sees exactly what training saw.
    """
    rows = store.subject(subject).train_rows(sessions)
    if max_trials is not None:
        # a fixed, seeded subset of trials (data-efficiency runs): the same whatever the batch size
        rows = np.sort(derive_rng(seed, "subset", subject).permutation(rows)[:max_trials])
    if rows.size == 0:
        raise StoreError(f"subject {subject} has no training trials in {store.root}"
                         + (f" in sessions {sessions}" if sessions else ""))
    return rows


class SubjectStream:
    """One subject's training trials: normalised betas held in memory as float16, and their targets."""

    def __init__(self, store: Store, subject: str, targets: Targets, seed: int, rows: np.ndarray):
        """``rows``: the subject's training trial rows (``training_rows``, as the run records them)."""
        data = store.subject(subject)
        self.subject, self.seed = subject, seed
        self.betas = torch.from_numpy(data.read_trials(rows).astype(np.float16))
        self.stimulus_ids = data.trials.stimulus_id[rows].astype(np.int64)
        self.targets = targets
        self.n_voxels = data.n_voxels

    def __len__(self) -> int:
        return len(self.stimulus_ids)

    def _positions(self, start: int, stop: int) -> np.ndarray:
        """Trial indices at positions [start, stop) of the endless permutation stream."""
        n, out = len(self), []
        for cycle in range(start // n, (stop - 1) // n + 1):
            perm = derive_rng(self.seed, "order", self.subject, cycle).permutation(n)
            lo, hi = max(start - cycle * n, 0), min(stop - cycle * n, n)
            out.append(perm[lo:hi])
        return np.concatenate(out)

    def draw(self, index: int, batch_size: int, rank: int = 0, world: int = 1) -> SubjectBatch:
        positions = self._positions(index * batch_size, (index + 1) * batch_size)[rank::world]
        ids = self.stimulus_ids[positions]
        targets = {name: torch.from_numpy(array) for name, array in self.targets.get_all(ids).items()}
        return SubjectBatch(self.subject, self.betas[positions].float(), targets, torch.from_numpy(ids))


class BalancedBatches:
    """Draw `index` = one SubjectBatch per subject, `batch_size` trials each (split across ranks)."""

    def __init__(self, streams: list[SubjectStream], batch_size: int, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ConfigError(f"batch_size {batch_size} (per subject, global) must be divisible by the number of "
                              f"processes ({world}); change batch_size or the process count")
        self.streams, self.batch_size, self.rank, self.world = streams, batch_size, rank, world

    def draws_per_epoch(self) -> int:
        """Draws for the largest subject to see each of its trials once."""
        return -(-max(len(s) for s in self.streams) // self.batch_size)

    def __call__(self, index: int) -> list[SubjectBatch]:
        return [s.draw(index, self.batch_size, self.rank, self.world) for s in self.streams]
