"""Multi-target ridge regression in closed form (the Brain-Diffuser / Takagi baseline).

Fitted from one eigendecomposition of the smaller Gram matrix (X^T X when
samples >= features, else X X^T), so every target and every candidate alpha
is solved with matrix products: no loop over targets. Alpha is chosen per
target group by K-fold cross-validation whose folds are split by *stimulus*
(repeats of one image never straddle a fold), on training data only.
Written in torch so the same code runs on a GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from safetensors.torch import load_file, save

from brainrecon.config import StrictConfig
from brainrecon.errors import EvaluationError
from brainrecon.io import atomic_write_bytes, atomic_write_json
from brainrecon.models.base import BrainModel


class RidgeConfig(StrictConfig):
    alphas: tuple[float, ...] = tuple(float(a) for a in np.logspace(0, 6, 13))
    folds: int = Field(5, ge=2)  # cross-validation needs at least two folds
    seed: int = 0
    dtype: str = "float64"
    device: str = "cpu"


@dataclass
class _Spectrum:
    """Eigen-decomposition of one training set's Gram matrix, in primal or dual form."""

    values: torch.Tensor
    vectors: torch.Tensor
    x: torch.Tensor
    dual: bool

    @classmethod
    def of(cls, x: torch.Tensor) -> _Spectrum:
        dual = x.shape[0] < x.shape[1]
        gram = x @ x.T if dual else x.T @ x
        values, vectors = torch.linalg.eigh(gram)
        return cls(values.clamp_min(0), vectors, x, dual)

    def project(self, y: torch.Tensor) -> torch.Tensor:
        """Right-hand factor shared by every alpha: Q^T X^T Y (primal) or Q^T Y (dual)."""
        return self.vectors.T @ (self.x.T @ y if not self.dual else y)

    def left(self, x_new: torch.Tensor) -> torch.Tensor:
        """Left-hand factor for predictions on x_new: X_new Q (primal) or X_new X^T Q (dual)."""
        return x_new @ self.vectors if not self.dual else (x_new @ self.x.T) @ self.vectors

    def weights(self, projected: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Coefficients (features x targets) for per-target alphas."""
        scaled = projected / (self.values[:, None] + alpha[None, :])
        coef = self.vectors @ scaled
        return self.x.T @ coef if self.dual else coef


@dataclass
class Ridge:
    config: RidgeConfig = field(default_factory=RidgeConfig)
    weight: torch.Tensor | None = None  # (features, targets)
    x_mean: torch.Tensor | None = None
    y_mean: torch.Tensor | None = None
    alpha: torch.Tensor | None = None  # (targets,) chosen alpha of each target
    cv_scores: dict = field(default_factory=dict)
    oof_mean: torch.Tensor | None = None  # (targets,) mean of the out-of-fold predictions at the chosen alpha
    oof_var: torch.Tensor | None = None  # (targets,) their variance
    y_var: torch.Tensor | None = None  # (targets,) variance of the training targets

    def rescaling(self, mode: str, group_slices: list[slice] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain, bias) so that ``prediction * gain + bias`` undoes the ridge's shrinkage toward the mean.

        Brain-Diffuser (Ozcelik & VanRullen 2023) standardises each predicted feature with the *test*
        predictions' mean and sd and rescales it to the training targets'. Here the predictions'
        statistics come from out-of-fold predictions on training data, so no test statistic is used.
        "per_target" rescales every target as Brain-Diffuser does; "global" uses one gain per group
        of targets (default: all), which restores the predictions' spread without amplifying the
        noise of targets the voxels barely predict; "none" is the identity.
        """
        if self.oof_mean is None:
            raise RuntimeError("call fit() before rescaling()")
        if mode == "none":
            return torch.ones_like(self.oof_mean), torch.zeros_like(self.oof_mean)
        if mode == "per_target":
            gain = torch.sqrt(self.y_var / self.oof_var.clamp_min(1e-12 * self.y_var.max()))
        elif mode == "global":
            gain = torch.empty_like(self.oof_mean)
            for group in group_slices or [slice(0, len(gain))]:
                gain[group] = torch.sqrt(self.y_var[group].sum() / self.oof_var[group].sum().clamp_min(1e-30))
        else:
            raise ValueError(f"rescale must be 'none', 'global' or 'per_target', got {mode!r}")
        return gain, self.y_mean - self.oof_mean * gain

    def _tensor(self, a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a,
                               dtype=getattr(torch, self.config.dtype), device=self.config.device)

    def fit(self, x, y, groups=None, target_groups: list[slice] | None = None) -> Ridge:
        """Fit ``y`` (n, t) from ``x`` (n, p). ``groups``: stimulus id per row, keeping repeats in one fold.

        ``target_groups`` lists slices of target columns that share one alpha (default: all targets).
        """
        x, y = self._tensor(x), self._tensor(y).reshape(len(x), -1)
        if x.ndim != 2 or len(x) != len(y):
            raise EvaluationError(f"x must be (n, features) and y (n, targets) with the same n; got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        target_groups = target_groups or [slice(0, y.shape[1])]
        alphas = self._tensor(self.config.alphas)
        errors = torch.zeros(len(alphas), y.shape[1], dtype=x.dtype, device=x.device)
        # out-of-fold predictions' first two moments per alpha: how much the fitted ridge shrinks
        # its predictions on data it has not seen, measured on training data alone
        moments = torch.zeros(2, len(alphas), y.shape[1], dtype=x.dtype, device=x.device)
        for train, val in self._folds(len(x), groups):
            xm, ym = x[train].mean(0), y[train].mean(0)
            spectrum = _Spectrum.of(x[train] - xm)
            projected, left = spectrum.project(y[train] - ym), spectrum.left(x[val] - xm)
            for a, alpha in enumerate(alphas):
                prediction = (left / (spectrum.values + alpha)) @ projected + ym
                errors[a] += ((y[val] - prediction) ** 2).sum(0)
                moments[0, a] += prediction.sum(0)
                moments[1, a] += (prediction ** 2).sum(0)
        best = torch.empty(y.shape[1], dtype=x.dtype, device=x.device)
        chosen = torch.empty(y.shape[1], dtype=torch.long, device=x.device)
        for group in target_groups:
            group_error = errors[:, group].sum(1)
            chosen[group] = int(torch.argmin(group_error))
            best[group] = alphas[chosen[group]]
            self.cv_scores[f"{group.start}:{group.stop}"] = group_error.tolist()
        picked = moments.gather(1, chosen[None, None].expand(2, 1, -1))[:, 0] / len(x)
        self.oof_mean, self.oof_var = picked[0], (picked[1] - picked[0] ** 2).clamp_min(0)
        self.y_var = y.var(0, unbiased=False)
        self.x_mean, self.y_mean = x.mean(0), y.mean(0)
        spectrum = _Spectrum.of(x - self.x_mean)
        self.weight = spectrum.weights(spectrum.project(y - self.y_mean), best)
        self.alpha = best
        return self

    def _folds(self, n: int, groups):
        groups = np.arange(n) if groups is None else np.asarray(groups)
        unique = np.unique(groups)
        if len(unique) < self.config.folds:
            raise EvaluationError(f"ridge cross-validation needs at least {self.config.folds} distinct stimuli, "
                             f"got {len(unique)}")
        fold_of = np.empty(len(unique), dtype=np.int64)
        fold_of[np.random.default_rng(self.config.seed).permutation(len(unique))] = \
            np.arange(len(unique)) % self.config.folds
        row_fold = fold_of[np.searchsorted(unique, groups)]
        for k in range(self.config.folds):
            yield (torch.as_tensor(np.flatnonzero(row_fold != k)), torch.as_tensor(np.flatnonzero(row_fold == k)))

    def predict(self, x) -> torch.Tensor:
        if self.weight is None:
            raise RuntimeError("call fit() before predict()")
        return (self._tensor(x) - self.x_mean) @ self.weight + self.y_mean

    # -- checkpoints: safetensors for tensors, JSON for the rest ---------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        tensors = {k: getattr(self, k).contiguous().cpu() for k in ("weight", "x_mean", "y_mean", "alpha")}
        atomic_write_bytes(path.with_suffix(".safetensors"), save(tensors))
        atomic_write_json(path.with_suffix(".json"), {"model": "ridge", "config": self.config.model_dump(mode="json"),
                                                      "cv_scores": self.cv_scores})

    @classmethod
    def load(cls, path: str | Path) -> Ridge:
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        tensors = load_file(str(path.with_suffix(".safetensors")))
        return cls(config=RidgeConfig.model_validate(meta["config"]), cv_scores=meta.get("cv_scores", {}), **tensors)


# -- the ridge as a brain model, so runs, evaluation and reconstruction treat it like the rest ----------


class RidgeDecoderConfig(StrictConfig):
    """Closed-form ridge from one subject's voxels to one flattened target (Brain-Diffuser / Takagi baseline)."""

    target: str = "image_tokens"
    # undo the ridge's shrinkage toward the mean with training statistics (see Ridge.rescaling):
    # shrunk predictions all look alike under an uncentred cosine and starve a generator of contrast
    rescale: Literal["none", "global", "per_target"] = "global"
    alphas: tuple[float, ...] = RidgeConfig().alphas
    folds: int = Field(5, ge=2)  # cross-validation needs at least two folds
    dtype: str = "float64"
    device: str = "cpu"


class RidgeDecoder(BrainModel):
    """Per-subject ridge weights held as buffers (saved in safetensors like any model's state)."""

    kind = "ridge"
    config_class = RidgeDecoderConfig
    required_targets = ()

    def __init__(self, config: RidgeDecoderConfig, subjects: dict[str, int], space):
        super().__init__(config, subjects, space)
        space.require((config.target,), "model 'ridge'")
        self.retrieval_target = config.target
        self.target_shape = tuple(space[config.target])
        n_targets = int(np.prod(self.target_shape))
        for subject, n_voxels in self.subjects.items():
            self.register_buffer(f"{subject}__weight", torch.zeros(n_voxels, n_targets))
            self.register_buffer(f"{subject}__x_mean", torch.zeros(n_voxels))
            self.register_buffer(f"{subject}__y_mean", torch.zeros(n_targets))
            self.register_buffer(f"{subject}__alpha", torch.zeros(n_targets))
            self.register_buffer(f"{subject}__gain", torch.ones(n_targets))
            self.register_buffer(f"{subject}__bias", torch.zeros(n_targets))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # runs saved before predictions were rescaled hold no gain/bias: they load as the identity
        for subject in self.subjects:
            weight = state_dict.get(f"{prefix}{subject}__weight")
            if weight is not None and f"{prefix}{subject}__gain" not in state_dict:
                state_dict[f"{prefix}{subject}__gain"] = torch.ones(weight.shape[1], dtype=weight.dtype)
                state_dict[f"{prefix}{subject}__bias"] = torch.zeros(weight.shape[1], dtype=weight.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fit_subject(self, subject: str, betas: np.ndarray, targets: np.ndarray, groups: np.ndarray) -> dict:
        ridge = Ridge(RidgeConfig(alphas=self.config.alphas, folds=self.config.folds, dtype=self.config.dtype,
                                  device=self.config.device))
        ridge.fit(betas, targets.reshape(len(targets), -1), groups=groups)
        for name in ("weight", "x_mean", "y_mean", "alpha"):
            getattr(self, f"{subject}__{name}").copy_(getattr(ridge, name).float())
        gain, bias = ridge.rescaling(self.config.rescale)
        getattr(self, f"{subject}__gain").copy_(gain.float())
        getattr(self, f"{subject}__bias").copy_(bias.float())
        return {"alpha": float(ridge.alpha[0]), "cv_errors": next(iter(ridge.cv_scores.values())),
                "rescale": self.config.rescale, "gain": float(gain.mean())}

    def predict(self, betas: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        self.check_subject(subject, betas)
        weight = getattr(self, f"{subject}__weight")
        out = (betas - getattr(self, f"{subject}__x_mean")) @ weight + getattr(self, f"{subject}__y_mean")
        out = out * getattr(self, f"{subject}__gain") + getattr(self, f"{subject}__bias")
        return {self.config.target: out.reshape(len(betas), *self.target_shape)}

    def training_loss(self, batches, info, generator):
        raise RuntimeError("the ridge is fitted in closed form (fit_subject), not by gradient steps")

