"""A small synthetic problem on which every brain model must learn something, in seconds.

Each subject's betas are a fixed random linear read-out of a latent per stimulus
plus noise; targets are fixed random (nonlinear-free) functions of the same latent.
So retrieval from held-out stimuli is possible, and chance is 1/n_test.
"""

from __future__ import annotations

import numpy as np
import torch

from brainrecon.models.base import StepInfo, SubjectBatch, TargetSpace


def small_space(tokens: int = 5, dim: int = 16, text_tokens: int = 4, lowlevel=(4, 8, 8)) -> TargetSpace:
    return TargetSpace({"image_tokens": (tokens, dim), "image_pooled": (dim,), "text_tokens": (text_tokens, dim),
                        "text_pooled": (dim,), "lowlevel": tuple(lowlevel)})


class LinearTestbed:
    def __init__(self, subjects: dict[str, int], space: TargetSpace, n_train: int = 256, n_test: int = 64,
                 latent: int = 12, noise: float = 0.3, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.subjects, self.space = subjects, space
        n_stim = n_train + n_test
        z = rng.standard_normal((n_stim, latent))
        self.targets = {}
        for name, shape in space.shapes.items():
            w = rng.standard_normal((latent, int(np.prod(shape)))) / np.sqrt(latent)
            self.targets[name] = torch.tensor((z @ w).reshape(n_stim, *shape), dtype=torch.float32)
        self.betas = {}
        for s, n_vox in subjects.items():
            w = rng.standard_normal((latent, n_vox))
            self.betas[s] = torch.tensor(z @ w + noise * rng.standard_normal((n_stim, n_vox)), dtype=torch.float32)
        self.train_ids, self.test_ids = np.arange(n_train), np.arange(n_train, n_stim)
        self.seed = seed

    def batch(self, subject: str, ids: np.ndarray) -> SubjectBatch:
        ids_t = torch.as_tensor(ids)
        return SubjectBatch(subject, self.betas[subject][ids_t], {k: v[ids_t] for k, v in self.targets.items()},
                            ids_t)

    def train_batches(self, step: int, batch_size: int = 32) -> list[SubjectBatch]:
        out = []
        for i, s in enumerate(self.subjects):
            rng = np.random.default_rng([self.seed, step, i])
            out.append(self.batch(s, rng.choice(self.train_ids, batch_size, replace=False)))
        return out

    def fit(self, model, steps: int = 150, lr: float = 1e-3, batch_size: int = 32) -> list[float]:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        losses = []
        model.train()
        for step in range(steps):
            generator = torch.Generator().manual_seed(step)
            loss, _ = model.training_loss(self.train_batches(step, batch_size),
                                          StepInfo(step, steps), generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        return losses

    @torch.no_grad()
    def retrieval_top1(self, model, subject: str) -> float:
        """Top-1 image retrieval among the test stimuli (chance 1/n_test), on model.retrieval_target."""
        model.eval()
        key = model.retrieval_target
        pred = model.predict(self.betas[subject][self.test_ids], subject)[key].flatten(1)
        true = self.targets[key][self.test_ids].flatten(1)
        scores = torch.nn.functional.normalize(pred, dim=1) @ torch.nn.functional.normalize(true, dim=1).T
        return float((scores.argmax(1) == torch.arange(len(self.test_ids))).float().mean())
