"""Multi-target ridge regression in closed form (the Brain-Diffuser / Takagi baseline).

Alpha is chosen per target group by K-fold cross-validation whose folds are split by
*stimulus* (repeats of one image never straddle a fold), on training data only, and
the cross-validation costs about one eigendecomposition, not one per fold:

- One eigendecomposition of the centred data's smaller Gram matrix (X^T X when samples >=
  features, else X X^T) gives every alpha's fit on *all* rows with matrix products.
- A fold's out-of-fold residuals follow from the all-rows fit without refitting: for a
  penalised least-squares fit with hat matrix H (intercept unpenalised, so each fold is
  centred with its own training means, exactly as a refit would be),
  ``y_v - yhat_{-v} = (I - H_vv)^{-1} (y_v - yhat_v)``, an n_v x n_v solve per fold and alpha.
- With one alpha shared by a group of targets, the group's squared error is a trace of
  n_v x n_v and n_v x k matrices (the targets enter once, through P P^T and Y_v P^T), so
  no alpha's predictions are formed. The rescaling statistics come from the same traces at the
  chosen alpha (each group's out-of-fold variance) and one cheap pass over the targets (each
  target's out-of-fold mean); each target's own variance, which only ``rescale: per_target``
  needs, forms the out-of-fold predictions (``oof_statistics: target``).
- The alpha generalised cross-validation favours is computed first, in the fit's dtype; every other alpha's
  traces are screened in float32, fold by fold, and left unfinished once a lower bound (a fold's out-of-fold
  error is at least its rows' all-rows residual) puts it more than a relative tolerance above that least. The
  alphas within the tolerance are computed again in the fit's dtype; the screen's own error is measured on
  those and at the smallest alpha, and if it is not well under the tolerance every alpha is computed exactly.
  So the choice, the weights and the rescaling are the exact search's, at about a third of the traces'
  float64 cost where the CV curve is not flat.
- With a single alpha there is nothing to choose: the fit is one Cholesky solve.
- Targets are read in blocks of columns (``target_batch``), so memory beyond the inputs and the
  weights is bounded by a few n x target_batch, and targets held on disk (a memory map) stay there.
  The data in the eigenbasis, X Q, is kept only where it fits that bound.

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
    # "group": one alpha per group of targets (all targets by default), whose CV errors are traces that
    # cost the same for 4,000 targets or 197,376; "target": every target its own alpha (himalaya's
    # local_alpha), whose errors need every fold's out-of-fold residuals at every alpha: k n_v t work
    # per fold and alpha, and the targets are read once more per fold
    alpha_per: Literal["group", "target"] = "group"
    seed: int = 0
    dtype: str = "float64"
    device: str = "cpu"
    # targets are read, centred, projected and solved this many columns at a time: beyond the weights
    # (features x targets) and a few k x k blocks, the fit's memory is a few n x target_batch, whatever the
    # number of targets (257 x 768 = 197,376 for CLIP ViT-L/14 tokens). The caller's targets are only
    # sliced, never copied whole, so a memory-mapped array stays on disk. A fit with several alphas also keeps
    # the data in the eigenbasis, X Q (n x k, k = min(n, features)), where k <= target_batch, so raising it past
    # the number of voxels trades n x k memory for the CV's re-forming X Q up to four times
    target_batch: int = Field(8192, ge=1)
    # the out-of-fold statistics kept for Ridge.rescaling: "group", each target's mean and each target
    # group's summed variance (what rescale "global" needs), read off the CV's traces where they run;
    # "target", each target's variance as well (rescale "per_target"), which forms every fold's out-of-fold
    # predictions: about one more X W product (n p t), as much as the fit's X^T Y
    oof_statistics: Literal["group", "target"] = "group"
    # a group's CV errors are first computed in ``dtype`` for the alpha generalised CV favours, then for every other
    # alpha in this lower precision (float32 matrix products run faster on a CPU), fold by fold, until a lower
    # bound shows it more than ``screen_tolerance`` above that least (it is then left unfinished: NaN in cv_scores);
    # then again in ``dtype`` for every alpha whose screened error lies within
    # ``screen_tolerance`` (relative) of the least, or whose screen failed; the choice is made on those
    # exact errors, so the chosen alpha, weights and rescaling are those of an exact search. If the screened and
    # exact errors differ by more than a tenth of the tolerance, on the re-computed alphas or on one fold at the
    # smallest alpha (the worst-conditioned), every alpha is computed exactly. With a ``dtype`` no wider than the
    # screen (float32 fits) every alpha is computed in ``dtype``, but those the bound leaves unfinished; None
    # computes every alpha exactly
    screen_dtype: Literal["float32"] | None = "float32"
    screen_tolerance: float = Field(1e-3, gt=0, lt=1)


# below this many rows _rows_gram is a plain matrix product: splitting further saves little arithmetic and costs
# the blocks' efficiency
_BLOCK = 256


def _rows_gram(a: torch.Tensor) -> torch.Tensor:
    """a @ a.T, forming only the blocks on and below the diagonal and mirroring them.

    torch has no symmetric rank-k update (BLAS syrk), so halving the rows recursively stands in for it: about 0.6
    of a general product's arithmetic at two or three levels, on any device.
    """
    n = len(a)
    if n <= _BLOCK:
        return a @ a.T
    half = n // 2
    out = torch.empty(n, n, dtype=a.dtype, device=a.device)
    out[:half, :half] = _rows_gram(a[:half])
    out[half:, half:] = _rows_gram(a[half:])
    out[half:, :half] = a[half:] @ a[:half].T
    out[:half, half:] = out[half:, :half].T
    return out


@dataclass
class _Spectrum:
    """Eigen-decomposition of the centred training data's Gram matrix, in primal or dual form."""

    values: torch.Tensor
    vectors: torch.Tensor
    x: torch.Tensor
    dual: bool
    rotated: torch.Tensor | None = None  # X Q (n x k) in the primal form, where it is kept

    @classmethod
    def of(cls, x: torch.Tensor, keep_rotated: bool = False) -> _Spectrum:
        """``keep_rotated``: in the primal form, keep X Q, from which P and every fold's hat factors are read
        instead of formed again (the CV forms a fold's X_v Q three to four times, n p^2 work each pass)."""
        dual = x.shape[0] < x.shape[1]
        values, vectors = torch.linalg.eigh(_rows_gram(x if dual else x.T))
        rotated = x @ vectors if keep_rotated and not dual else None
        return cls(values.clamp_min(0), vectors, x, dual, rotated)

    def project(self, y: torch.Tensor) -> torch.Tensor:
        """Right-hand factor shared by every alpha: Q^T X^T Y (primal) or Q^T Y (dual)."""
        if self.dual:
            return self.vectors.T @ y
        return self.rotated.T @ y if self.rotated is not None else self.vectors.T @ (self.x.T @ y)

    def hat_factors(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, M) for training rows: their fit is L diag(d) P and their hat block L diag(d) M^T, d = 1/(λ+α)."""
        if self.dual:  # X_v X^T Q = Q_v Λ
            return self.vectors[rows] * self.values, self.vectors[rows]
        left = self.rotated[rows] if self.rotated is not None else self.x[rows] @ self.vectors
        return left, left

    def hat(self, right: torch.Tensor, shrink: torch.Tensor) -> torch.Tensor:
        """The hat block of a fold's rows (without the intercept's 1/n) from their right factor and the shrinkage
        D = 1/(λ+α): right diag(d) right^T (primal) or right diag(d λ) right^T (dual), one symmetric product."""
        scale = shrink * self.values.to(shrink.dtype) if self.dual else shrink
        return _rows_gram(right * scale.sqrt())

    def weights(self, projected: torch.Tensor, alpha: torch.Tensor, blocks: list[slice]) -> torch.Tensor:
        """Coefficients (features x targets) for per-target alphas, a block of targets at a time.

        In the primal form the weights overwrite ``projected`` (k x t: 12 GB in float32 at NSD scale),
        which the caller needs no more; in the dual form (k = n < p) they need a p x t array of their own.
        """
        out = projected if not self.dual else torch.empty(self.x.shape[1], projected.shape[1],
                                                          dtype=projected.dtype, device=projected.device)
        for cols in blocks:
            coef = self.vectors @ (projected[:, cols] / (self.values[:, None] + alpha[None, cols]))
            out[:, cols] = self.x.T @ coef if self.dual else coef
        return out


def _leave_out_factor(hat: torch.Tensor, n: int) -> torch.Tensor:
    """The Cholesky factor of I - H_vv for a fold's hat block H_vv (without the intercept's 1/n, added here).

    I - H_vv is symmetric positive definite whenever the fold's training rows give a fit (alpha > 0
    and at least one training row), so it has one. ``hat`` is overwritten: every caller forms it for this call,
    and at NSD scale a second n_v x n_v copy is memory the CV does not need.
    """
    system = hat.neg_()
    system.diagonal().add_(1.0)
    system.sub_(1.0 / n)  # in the order of I - H - 1/n, so the factor is the same to the last bit
    try:
        return torch.linalg.cholesky(system)
    except torch.linalg.LinAlgError as error:  # the type is kept: a narrow screen catches it and computes again
        raise torch.linalg.LinAlgError(
            f"ridge cross-validation: a fold's leave-out block I - H_vv did not factor in {hat.dtype} (an alpha too "
            f"small for this precision, where the fit nearly interpolates its rows); fit in float64 "
            f"(RidgeConfig.dtype / the ridge model's dtype) or drop the smallest alphas") from error


def _leave_out(hat: torch.Tensor, n: int) -> torch.Tensor:
    """(I - H_vv)^{-1} for a fold's hat block H_vv (overwritten; see _leave_out_factor)."""
    return torch.cholesky_inverse(_leave_out_factor(hat, n))


def _spectral_hat(spectrum: _Spectrum, rows: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return spectrum.hat(spectrum.hat_factors(rows)[1], 1 / (spectrum.values + alpha))


class _CholeskyFit:
    """One alpha: a Cholesky factor of the smaller system, solved for a block of targets at a time."""

    def __init__(self, xc: torch.Tensor, alpha: torch.Tensor):
        self.xc, self.primal = xc, len(xc) >= xc.shape[1]
        gram = _rows_gram(xc.T if self.primal else xc)  # (X^T X + aI) W = X^T Y, or (X X^T + aI) D = Y, W = X^T D
        self.gram = None if self.primal else gram
        self.factor = torch.linalg.cholesky(gram + alpha * torch.eye(len(gram), dtype=xc.dtype, device=xc.device))

    def solve(self, yc: torch.Tensor) -> torch.Tensor:
        if self.primal:
            return torch.cholesky_solve(self.xc.T @ yc, self.factor)
        return self.xc.T @ torch.cholesky_solve(yc, self.factor)

    def hat(self, rows: torch.Tensor, _alpha=None) -> torch.Tensor:
        """The hat block H_vv of training rows (without the intercept's 1/n)."""
        if self.primal:
            return self.xc[rows] @ torch.cholesky_solve(self.xc[rows].T, self.factor)
        eye = torch.eye(len(self.xc), dtype=self.xc.dtype, device=self.xc.device)
        return self.gram[rows] @ torch.cholesky_solve(eye[:, rows], self.factor)


class _FoldTraces:
    """The per-fold, per-alpha work of _TraceStatistics.bounded_errors: each (fold, alpha)'s out-of-fold error added to
    ``errors`` (alphas, groups), and its rows' residual in the all-rows fit to ``residual`` (a free by-product,
    which bounds the error from below)."""

    def __init__(self, statistics: _TraceStatistics, spectrum: _Spectrum, alphas: torch.Tensor, n: int, exact: bool):
        self.statistics, self.spectrum, self.alphas, self.n, self.exact = statistics, spectrum, alphas, n, exact
        dtype = alphas.dtype
        self.values = spectrum.values.to(dtype)
        self.outer = [_cast(o, dtype) for o in statistics.outer]
        shape = (len(alphas), statistics.n_groups)
        self.errors = torch.zeros(shape, dtype=dtype, device=alphas.device)
        self.residual = torch.zeros_like(self.errors)
        self.failed: set[int] = set()  # alphas whose leave-out block did not factor (narrow dtype only): NaN errors

    def add(self, f: int, alphas) -> None:
        if not len(alphas):
            return
        dtype, statistics = self.alphas.dtype, self.statistics
        name = str(dtype).removeprefix("torch.")
        statistics.traces[name] = statistics.traces.get(name, 0) + len(alphas)
        left, right = (factor.to(dtype) for factor in self.spectrum.hat_factors(statistics.folds[f][1]))
        own = [_cast(o, dtype) for o in statistics.own[f]]
        cross = [_cast(c, dtype) for c in statistics.cross[f]]
        for a in alphas:  # one alpha at a time: memory stays a few n_v x k blocks
            shrink = 1 / (self.values + self.alphas[a])  # D
            try:
                weight = _leave_out(self.spectrum.hat(right, shrink), self.n)
            except torch.linalg.LinAlgError:
                if self.exact:
                    raise
                self.errors[a] = float("nan")
                self.failed.add(a)
                continue
            scaled = left * shrink  # L D
            weight = _rows_gram(weight)  # S = (I - H)^{-2}; (I - H)^{-1} is symmetric
            weighted = weight @ scaled  # S L D
            for g in range(statistics.n_groups):
                fitted = scaled @ self.outer[g]  # L D P P^T
                self.errors[a, g] += ((weight * own[g]).sum() - 2 * (weighted * cross[g]).sum()
                                      + (weighted * fitted).sum())
                # ||Y_v - L D P||^2, from the same products
                self.residual[a, g] += own[g].trace() - 2 * (scaled * cross[g]).sum() + (scaled * fitted).sum()


class _TraceStatistics:
    """What a group's cross-validation error needs from the targets, gathered a block of targets at a time.

    For fold v and alpha, with D = diag(1/(λ+α)), the all-rows fit of the fold's rows is L D P,
    their hat block H = 1/n + L D M^T, and their out-of-fold residual E = (I - H)^{-1} (Y_v - L D P).
    A group's error ||E||^2 = tr(S Y_v Y_v^T) - 2 tr(S L D P Y_v^T) + tr(S L D P P^T D L^T) with
    S = (I - H)^{-2}: the targets enter only through P P^T (k x k), Y_v P^T (n_v x k) and Y_v Y_v^T,
    sums over target blocks, so no alpha's predictions are formed and the number of targets never
    multiplies a per-alpha cost (at NSD scale t = 197,376 targets, k <= 15,724).
    """

    def __init__(self, folds, n_groups: int):
        self.folds, self.n_groups = folds, n_groups
        self.outer: list = [0.0] * n_groups  # P_g P_g^T
        self.own = [[0.0] * n_groups for _ in folds]  # Y_v,g Y_v,g^T
        self.cross = [[0.0] * n_groups for _ in folds]  # Y_v,g P_g^T
        self.traces: dict[str, int] = {}  # (fold, alpha) traces computed, by dtype

    def add(self, group: int, yc: torch.Tensor, projected: torch.Tensor) -> None:
        self.outer[group] = self.outer[group] + _rows_gram(projected)
        for f, (_, val) in enumerate(self.folds):
            observed = yc[val]
            self.own[f][group] = self.own[f][group] + _rows_gram(observed)
            self.cross[f][group] = self.cross[f][group] + observed @ projected.T

    def errors(self, spectrum: _Spectrum, alphas: torch.Tensor, n: int, dtype: torch.dtype | None = None,
               folds: list[int] | None = None) -> torch.Tensor:
        """Cross-validated squared error, (alphas, target groups), computed in ``dtype`` (default: the fit's),
        summed over ``folds`` (default: all).

        In a dtype narrower than the fit's, an alpha whose leave-out block fails to factor gets NaN errors
        (the caller computes it again exactly); in the fit's own dtype that failure is raised.
        """
        return self.bounded_errors(spectrum, alphas, n, dtype, folds)[0]

    def bounded_errors(self, spectrum: _Spectrum, alphas: torch.Tensor, n: int, dtype: torch.dtype | None = None,
                       folds: list[int] | None = None,
                       ceiling: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``errors``, and which alphas were left unfinished (a bool per alpha; their errors are partial sums).

        With ``ceiling`` (groups,), an alpha is left unfinished once its error provably exceeds the ceiling of every
        group. The bound: (I - H_vv)^{-1} has no eigenvalue below 1, so a fold's out-of-fold error is at least its
        rows' residual in the all-rows fit, and an alpha's error is at least the errors of the folds computed so far
        plus the all-rows residual sum of squares less those folds' share of it.
        """
        exact = dtype is None or dtype == spectrum.values.dtype
        dtype = spectrum.values.dtype if dtype is None else dtype
        fold = _FoldTraces(self, spectrum, alphas.to(dtype), n, exact)
        residual = None if ceiling is None else self.all_rows_residual(spectrum, alphas, n)[0].to(dtype)
        live = list(range(len(alphas)))
        for f in range(len(self.folds)) if folds is None else folds:
            if residual is not None:
                bound = fold.errors + (residual - fold.residual).clamp_min(0)  # (alphas, groups)
                live = [a for a in live if not (bound[a] > ceiling).all()]  # a failed alpha's NaN bound stays
            fold.add(f, [a for a in live if a not in fold.failed])
        unfinished = torch.ones(len(alphas), dtype=torch.bool, device=alphas.device)
        unfinished[live] = False
        return fold.errors, unfinished

    def all_rows_residual(self, spectrum: _Spectrum, alphas: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The all-rows fit's residual sum of squares, (alphas, groups), and its generalised cross-validation score,
        in float64 whatever the fit's dtype (they are O(k) per alpha).

        In the eigenbasis, with o = diag(P P^T) and d = 1/(λ+α): in the dual form (P = Q^T Y, Q square) the
        residual along each eigenvector is α d P_m, so it is sum((α d)^2 o), free of cancellation, which matters
        there because the fit nearly interpolates at small α. In the primal form (L = X Q, L^T L = Λ) it is
        ||Y||^2 - sum((2 d - d^2 λ) o), since n > p leaves the residual outside X's span.
        """
        values = spectrum.values.to(torch.float64)
        alphas = alphas.to(torch.float64)[:, None]
        shrink = 1 / (values[None, :] + alphas)  # (alphas, k)
        diagonals = [_cast(self.outer[g], torch.float64).diagonal() for g in range(self.n_groups)]
        if spectrum.dual:
            residual = torch.stack([((alphas * shrink) ** 2 * o).sum(1) for o in diagonals], 1)
            # n - 1 - tr(hat) = sum(α d) over the non-null eigenvalues: the null one (the centring) cancels the 1
            null = values <= values.max() * len(values) * torch.finfo(torch.float64).eps
            remaining = (alphas * shrink)[:, ~null].sum(1, keepdim=True) + null.sum() - 1
        else:
            total = [sum(_cast(own[g], torch.float64).trace() for own in self.own) for g in range(self.n_groups)]
            residual = torch.stack([total[g] - ((2 * shrink - shrink ** 2 * values) * o).sum(1)
                                    for g, o in enumerate(diagonals)], 1)
            remaining = n - 1 - (values * shrink).sum(1, keepdim=True)
        generalised = residual / (remaining / n) ** 2
        generalised = torch.where(generalised.isfinite() & (generalised > 0), generalised, torch.inf)
        return residual.clamp_min(0), generalised

    def screened_errors(self, spectrum: _Spectrum, alphas: torch.Tensor, n: int, screen: torch.dtype | None,
                        tolerance: float) -> tuple[torch.Tensor, dict | None]:
        """``errors`` exact wherever the choice of alpha could depend on them, screened in ``screen`` elsewhere,
        and what the screen did (None without one): the alphas computed exactly, those left unfinished, its
        largest relative error seen, whether every alpha was computed exactly, and the (fold, alpha) traces
        computed in each dtype (more than folds x alphas where the screen falls back).

        The alpha that generalised cross-validation (cheap, from the spectrum) favours, one per group, is computed
        exactly first. Every other alpha is screened, and left unfinished once its error provably exceeds that
        least by more than ``tolerance`` (``bounded_errors``' bound, with a tenth of the tolerance left for the
        screen's rounding): NaN in the result, never chosen. Those within ``tolerance`` (relative) of a group's
        least, or whose screen failed, are computed again exactly, and the choice is made among the exact errors.
        The screen's relative error is measured on those alphas and on the first fold at the smallest alpha, the
        worst-conditioned screen (the leave-out blocks I - H_vv, whose conditioning sets the screen's rounding
        error, grow more singular as alpha falls). If it exceeds a tenth of the tolerance anywhere, every alpha is
        computed exactly: a screen too coarse for the data costs one more pass, never another alpha.

        Where ``screen`` is no narrower than the fit's dtype (a float32 fit), every alpha is computed in that dtype
        but those the bound leaves unfinished; "provably" then holds to that dtype's rounding, with no probe.
        """
        exact_dtype = spectrum.values.dtype
        if screen is None:
            return self.errors(spectrum, alphas, n), None
        first = torch.zeros(len(alphas), dtype=torch.bool, device=alphas.device)
        first[self.all_rows_residual(spectrum, alphas, n)[1].argmin(0)] = True
        errors = torch.empty(len(alphas), self.n_groups, dtype=exact_dtype, device=alphas.device)
        errors[first] = self.errors(spectrum, alphas[first], n)
        ceiling = errors[first].min(0).values * (1 + tolerance) / (1 - tolerance / 10)
        unfinished = torch.zeros_like(first)
        if screen.itemsize >= exact_dtype.itemsize:  # no narrower dtype to screen in: every alpha exact, or unfinished
            errors[~first], unfinished[~first] = self.bounded_errors(spectrum, alphas[~first], n, ceiling=ceiling)
            errors[unfinished] = float("nan")
            return errors, {"dtype": str(exact_dtype).removeprefix("torch."), "exact": alphas[~unfinished].tolist(),
                            "pruned": alphas[unfinished].tolist(), "drift": 0.0, "every_alpha_exact": False,
                            "traces": dict(self.traces), "of": len(alphas) * len(self.folds)}
        screened, unfinished[~first] = self.bounded_errors(spectrum, alphas[~first], n, dtype=screen,
                                                           ceiling=ceiling.to(screen))
        errors[~first] = screened.to(exact_dtype)
        failed = ~errors.isfinite().all(1) & ~unfinished  # a leave-out block that did not factor, or an overflow
        best = torch.where((~failed & ~unfinished)[:, None], errors, torch.inf).min(0).values
        near = ~first & ~unfinished & (failed | (errors <= best * (1 + tolerance)).any(1))
        exact = self.errors(spectrum, alphas[near], n)
        smallest = alphas[alphas.argmin()].reshape(1)
        screened = torch.cat([errors[near & ~failed],
                              self.errors(spectrum, smallest, n, dtype=screen, folds=[0]).to(exact_dtype)])
        truth = torch.cat([exact[~failed[near]], self.errors(spectrum, smallest, n, folds=[0])])
        drift = ((screened - truth).abs() / truth.abs().clamp_min(torch.finfo(exact_dtype).tiny)).nan_to_num(torch.inf)
        errors[near] = exact
        fallback = bool(drift.max() > tolerance / 10)
        if fallback:
            rest = ~near & ~first
            errors[rest] = self.errors(spectrum, alphas[rest], n)
            unfinished[:] = False
        errors[unfinished] = float("nan")  # not computed: reported as unknown, never chosen
        return errors, {"dtype": str(screen).removeprefix("torch."),
                        "exact": (alphas if fallback else alphas[first | near]).tolist(),
                        "pruned": alphas[unfinished].tolist(), "drift": float(drift.max()),
                        "every_alpha_exact": fallback, "traces": dict(self.traces),
                        "of": len(alphas) * len(self.folds)}

    def out_of_fold(self, spectrum: _Spectrum, alphas: torch.Tensor, errors: torch.Tensor,
                    n: int) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        """At each group's chosen alpha: its out-of-fold predictions' summed squares (centred), (groups,),
        and each fold's row weights w = (I - H)^{-1} 1 (one per group), from which _GroupMoments sums them.

        The out-of-fold predictions are Y_v - E, E = W (Y_v - L D P), W = (I - H)^{-1}, so their squares
        sum to tr(Y_v Y_v^T) - 2 tr(Y_v^T E) + ||E||^2: ||E||^2 summed over the folds is the group's CV
        error (``errors``), and tr(Y_v^T E) = tr(W Y_v Y_v^T) - tr(W L D P Y_v^T) is made of the statistics.
        """
        squares = errors.clone()
        row_weights: list[list[torch.Tensor]] = []
        for f, (_, val) in enumerate(self.folds):
            left, right = spectrum.hat_factors(val)
            row_weights.append([])
            for g, alpha in enumerate(alphas):
                scaled = left / (spectrum.values + alpha)
                weight = _leave_out(spectrum.hat(right, 1 / (spectrum.values + alpha)), n)
                own = self.own[f][g]
                squares[g] += own.trace() - 2 * ((weight * own).sum() - ((weight @ scaled) * self.cross[f][g]).sum())
                row_weights[f].append(weight.sum(1))
        return squares, row_weights


def _cast(statistic, dtype: torch.dtype):
    """A statistic in ``dtype``: a tensor, or the 0.0 a group without targets keeps."""
    return statistic.to(dtype) if isinstance(statistic, torch.Tensor) else statistic


def _target_errors(spectrum: _Spectrum, projected: torch.Tensor, centred, folds, alphas: torch.Tensor,
                   blocks: list[slice], n: int) -> torch.Tensor:
    """Cross-validated squared error of every target at every alpha, (alphas, t), without refits.

    Each fold's out-of-fold residuals (I - H)^{-1} (Y_v - L D P) are formed at every alpha, a block of
    targets at a time (``centred(cols)`` reads one), by solving with the fold's alphas' Cholesky factors, made
    once: no inverse is formed, which would cost as much again as the factor and the solve together.
    """
    errors = torch.zeros(len(alphas), projected.shape[1], dtype=projected.dtype, device=projected.device)
    for _, val in folds:
        left, right = spectrum.hat_factors(val)
        factors = [_leave_out_factor(spectrum.hat(right, 1 / (spectrum.values + alpha)), n) for alpha in alphas]
        for cols in blocks:
            observed = centred(cols)[val]
            for a, alpha in enumerate(alphas):
                fitted = (left / (spectrum.values + alpha)) @ projected[:, cols]  # the all-rows fit, L D P
                errors[a, cols] += torch.cholesky_solve(observed - fitted, factors[a]).pow(2).sum(0)
    return errors


class _OutOfFold:
    """Mean and variance of the out-of-fold predictions at each target's chosen alpha, a block at a time.

    A fold's out-of-fold residual is (I - H_vv)^{-1} times the all-rows residual, so the predictions
    of models that never saw the fold come without refitting them. Each (fold, alpha) inverse is made
    once and serves every block.
    """

    def __init__(self, xc: torch.Tensor, folds, hat, alpha: torch.Tensor):
        self.xc, self.folds, self.hat, self.alpha = xc, folds, hat, alpha
        self.leave_outs: dict[tuple[int, float], torch.Tensor] = {}
        self.first = torch.zeros_like(alpha)
        self.second = torch.zeros_like(alpha)

    def add(self, group: int, cols: slice, yc: torch.Tensor, weight: torch.Tensor) -> None:
        alpha = self.alpha[cols]
        for f, (_, val) in enumerate(self.folds):
            residual = yc[val] - self.xc[val] @ weight
            for value in torch.unique(alpha):
                columns = alpha == value
                key = (f, float(value))
                if key not in self.leave_outs:
                    self.leave_outs[key] = _leave_out(self.hat(val, value), len(self.xc))
                predicted = yc[val][:, columns] - self.leave_outs[key] @ residual[:, columns]
                self.first[cols][columns] += predicted.sum(0)
                self.second[cols][columns] += predicted.pow(2).sum(0)

    def result(self, y_mean: torch.Tensor, target_groups: list[slice]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each target's out-of-fold mean and variance, and each group's summed variance."""
        mean = self.first / len(self.xc)
        variance = (self.second / len(self.xc) - mean ** 2).clamp_min(0)
        return mean + y_mean, variance, torch.stack([variance[group].sum() for group in target_groups])


class _GroupMoments:
    """Each target's out-of-fold mean and each group's summed out-of-fold variance, without the predictions.

    A fold's out-of-fold predictions Y_v - W (Y_v - X_v B) sum over its rows to 1^T Y_v - w^T Y_v +
    (w^T X_v) B, with w = W 1 (W is symmetric) and B the all-rows weights: one weighted row sum per fold
    and target, where forming the predictions costs n_v p per target. The groups' squares come from the
    CV's traces (_TraceStatistics.out_of_fold).
    """

    def __init__(self, xc: torch.Tensor, folds, row_weights: list[list[torch.Tensor]], squares: torch.Tensor,
                 t: int):
        self.n, self.folds, self.row_weights, self.squares = len(xc), folds, row_weights, squares
        self.row_features = [[w @ xc[val] for w in weights] for (_, val), weights in zip(folds, row_weights)]
        self.first = torch.zeros(t, dtype=xc.dtype, device=xc.device)

    def add(self, group: int, cols: slice, yc: torch.Tensor, weight: torch.Tensor) -> None:
        for f, (_, val) in enumerate(self.folds):
            observed = yc[val]
            self.first[cols] += (observed.sum(0) - self.row_weights[f][group] @ observed
                                 + self.row_features[f][group] @ weight)

    def result(self, y_mean: torch.Tensor, target_groups: list[slice]) -> tuple[torch.Tensor, None, torch.Tensor]:
        mean = self.first / self.n
        variance = torch.stack([self.squares[g] / self.n - mean[group].pow(2).sum()
                                for g, group in enumerate(target_groups)])
        return mean + y_mean, None, variance.clamp_min(0)


@dataclass
class Ridge:
    config: RidgeConfig = field(default_factory=RidgeConfig)
    weight: torch.Tensor | None = None  # (features, targets)
    x_mean: torch.Tensor | None = None
    y_mean: torch.Tensor | None = None
    alpha: torch.Tensor | None = None  # (targets,) chosen alpha of each target
    cv_scores: dict = field(default_factory=dict)
    cv_screen: dict | None = None  # what the float32 screen of the CV errors did (RidgeConfig.screen_dtype)
    oof_mean: torch.Tensor | None = None  # (targets,) mean of the out-of-fold predictions at the chosen alpha
    oof_var: torch.Tensor | None = None  # (targets,) their variance (with oof_statistics: target)
    oof_group_var: torch.Tensor | None = None  # (target groups,) their variance summed over each group's targets
    target_groups: list[slice] | None = None  # groups of targets that share one alpha (and one "global" gain)
    y_var: torch.Tensor | None = None  # (targets,) variance of the training targets

    def rescaling(self, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain, bias) so that ``prediction * gain + bias`` undoes the ridge's shrinkage toward the mean.

        Brain-Diffuser (Ozcelik & VanRullen 2023) standardises each predicted feature with the *test*
        predictions' mean and sd and rescales it to the training targets'. Here the predictions'
        statistics come from out-of-fold predictions on training data, so no test statistic is used.
        "per_target" rescales every target as Brain-Diffuser does (it needs a fit with
        ``oof_statistics: target``); "global" uses one gain per group of targets that shared an alpha
        in the fit (default: all), which restores the predictions' spread without amplifying the
        noise of targets the voxels barely predict; "none" is the identity.
        """
        if self.oof_mean is None:
            raise RuntimeError("call fit() before rescaling()")
        if mode == "none":
            return torch.ones_like(self.oof_mean), torch.zeros_like(self.oof_mean)
        if mode == "per_target":
            if self.oof_var is None:
                raise ValueError("rescale 'per_target' needs each target's out-of-fold variance, which this fit "
                                 "did not keep: fit with RidgeConfig(oof_statistics='target')")
            gain = torch.sqrt(self.y_var / self.oof_var.clamp_min(1e-12 * self.y_var.max()))
        elif mode == "global":
            gain = torch.empty_like(self.oof_mean)
            for group, variance in zip(self.target_groups, self.oof_group_var):
                gain[group] = torch.sqrt(self.y_var[group].sum() / variance.clamp_min(1e-30))
        else:
            raise ValueError(f"rescale must be 'none', 'global' or 'per_target', got {mode!r}")
        return gain, self.y_mean - self.oof_mean * gain

    def _tensor(self, a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a,
                               dtype=getattr(torch, self.config.dtype), device=self.config.device)

    def fit(self, x, y, groups=None, target_groups: list[slice] | None = None) -> Ridge:
        """Fit ``y`` (n, t) from ``x`` (n, p). ``groups``: stimulus id per row, keeping repeats in one fold.

        ``y`` may be any array that slices by columns (numpy, a memory-mapped array, a tensor, or
        (n, ...) reshaped to (n, t)): it is read ``config.target_batch`` columns at a time, twice.
        ``target_groups`` lists slices of target columns that share one alpha (default: all targets).
        """
        x = self._tensor(x)
        if x.ndim != 2 or getattr(y, "ndim", 0) < 1 or len(y) != len(x):
            raise EvaluationError(f"x must be (n, features) and y (n, targets) with the same n; got {tuple(x.shape)} "
                                  f"and {tuple(getattr(y, 'shape', ()))}")
        y = y.reshape(len(y), -1)
        n, t = y.shape
        self.target_groups = target_groups = [slice(*g.indices(t)[:2]) for g in target_groups or [slice(0, t)]]
        self.cv_screen = None  # set below where the CV's traces run
        blocks = [(index, slice(start, min(group.stop, start + self.config.target_batch)))
                  for index, group in enumerate(target_groups)
                  for start in range(group.start, group.stop, self.config.target_batch)]
        alphas = self._tensor(self.config.alphas)
        folds = list(self._folds(n, groups))
        self.x_mean = x.mean(0)
        xc = x - self.x_mean
        self.y_mean = torch.empty(t, dtype=x.dtype, device=x.device)
        self.y_var = torch.empty_like(self.y_mean)
        if len(alphas) == 1:  # nothing to choose: one Cholesky factor, solved block by block
            cholesky = _CholeskyFit(xc, alphas[0])
            self.alpha = alphas.expand(t).clone()
            self.weight = torch.empty(x.shape[1], t, dtype=x.dtype, device=x.device)
            moments = _OutOfFold(xc, folds, cholesky.hat, self.alpha)
            for index, cols in blocks:
                yc = self._centred(y, cols, first=True)
                self.weight[:, cols] = cholesky.solve(yc)
                moments.add(index, cols, yc, self.weight[:, cols])
            self.cv_scores = {f"{g.start}:{g.stop}": [float("nan")] for g in target_groups}
        else:
            # X Q (n x k) is kept where it is no larger than a block of targets read (n x target_batch), so the
            # fit's memory stays within its bound; at NSD scale (k = 15,724 voxels) it is not kept: that costs the
            # p x p x t rotation and the folds' X_v Q again, but keeps 1.6 GB (float32) off a 24 GB machine's peak
            k = min(x.shape)
            spectrum = _Spectrum.of(xc, keep_rotated=k <= min(self.config.target_batch, t))
            projected = torch.empty(k, t, dtype=x.dtype, device=x.device)
            # per fold and alpha a group's traces cost about k n_v k, forming the out-of-fold residuals
            # k n_v t: with few targets (e.g. PCA-reduced spaces, t < k) those are the cheaper of the two
            # exact ways, and an alpha per target needs them
            traces = self.config.alpha_per == "group" and len(target_groups) * k < t
            statistics = _TraceStatistics(folds, len(target_groups)) if traces else None
            for index, cols in blocks:
                yc = self._centred(y, cols, first=True)
                projected[:, cols] = spectrum.project(yc)
                if statistics is not None:
                    statistics.add(index, yc, projected[:, cols])
            if statistics is not None:
                screen = getattr(torch, self.config.screen_dtype) if self.config.screen_dtype else None
                errors, self.cv_screen = statistics.screened_errors(spectrum, alphas, n, screen,
                                                                    self.config.screen_tolerance)  # (alphas, groups)
            else:
                per_target = _target_errors(spectrum, projected, lambda cols: self._centred(y, cols), folds,
                                            alphas, [cols for _, cols in blocks], n)  # (alphas, t)
                errors = torch.stack([per_target[:, group].sum(1) for group in target_groups], 1)
            self.alpha = torch.empty(t, dtype=x.dtype, device=x.device)
            chosen = errors.nan_to_num(torch.inf).argmin(0)  # (groups,); NaN: an alpha the screen left unfinished
            for index, group in enumerate(target_groups):
                self.cv_scores[f"{group.start}:{group.stop}"] = errors[:, index].tolist()
                self.alpha[group] = (alphas[per_target[:, group].argmin(0)] if self.config.alpha_per == "target"
                                     else alphas[chosen[index]])
            if statistics is not None and self.config.oof_statistics == "group":
                squares, row_weights = statistics.out_of_fold(spectrum, alphas[chosen],
                                                              errors[chosen, torch.arange(len(chosen))], n)
                moments = _GroupMoments(xc, folds, row_weights, squares, t)
            else:
                moments = _OutOfFold(xc, folds, lambda rows, alpha: _spectral_hat(spectrum, rows, alpha), self.alpha)
            del statistics
            self.weight = spectrum.weights(projected, self.alpha, [cols for _, cols in blocks])
            del projected
            for index, cols in blocks:  # the targets' second read
                moments.add(index, cols, self._centred(y, cols), self.weight[:, cols])
        self.oof_mean, self.oof_var, self.oof_group_var = moments.result(self.y_mean, target_groups)
        if self.config.oof_statistics == "group":  # kept or not by the config, whichever path ran
            self.oof_var = None
        return self

    def _centred(self, y, cols: slice, first: bool = False) -> torch.Tensor:
        """Columns ``cols`` of the targets, centred; on the first read their mean and variance are kept."""
        block = self._tensor(y[:, cols])
        if first:
            self.y_mean[cols] = block.mean(0)
        block = block - self.y_mean[cols]
        if first:
            self.y_var[cols] = block.pow(2).mean(0)
        return block

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
                                                      "cv_scores": self.cv_scores, "cv_screen": self.cv_screen})

    @classmethod
    def load(cls, path: str | Path) -> Ridge:
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        tensors = load_file(str(path.with_suffix(".safetensors")))
        return cls(config=RidgeConfig.model_validate(meta["config"]), cv_scores=meta.get("cv_scores", {}),
                   cv_screen=meta.get("cv_screen"), **tensors)


# -- the ridge as a brain model, so runs, evaluation and reconstruction treat it like the rest ----------


class RidgeDecoderConfig(StrictConfig):
    """Closed-form ridge from one subject's voxels to one flattened target (Brain-Diffuser / Takagi baseline)."""

    target: str = "image_tokens"
    # undo the ridge's shrinkage toward the mean with training statistics (see Ridge.rescaling):
    # shrunk predictions all look alike under an uncentred cosine and starve a generator of contrast
    rescale: Literal["none", "global", "per_target"] = "global"
    alphas: tuple[float, ...] = RidgeConfig().alphas
    folds: int = Field(5, ge=2)  # cross-validation needs at least two folds
    alpha_per: Literal["group", "target"] = "group"  # see RidgeConfig: one alpha for the target, or one per number
    dtype: str = "float64"
    device: str = "cpu"
    target_batch: int = Field(RidgeConfig().target_batch, ge=1)  # target columns solved at a time


class RidgeDecoder(BrainModel):
    """Per-subject ridge weights held as buffers (saved in safetensors like any model's state)."""

    kind = "ridge"
    config_class = RidgeDecoderConfig
    required_targets = ()
    closed_form = True

    def __init__(self, config: RidgeDecoderConfig, subjects: dict[str, int], space):
        super().__init__(config, subjects, space)
        space.require((config.target,), "model 'ridge'")
        self.retrieval_target = config.target
        self.target_shape = tuple(space[config.target])
        n_targets = int(np.prod(self.target_shape))
        for subject, n_voxels in self.subjects.items():
            # filled by fit_subject or a checkpoint; empty, not zeros, so that no page of it is touched before
            # (NSD: 15,724 x 197,376 floats, 12 GB a subject, replaced by the fit's own tensor)
            self.register_buffer(f"{subject}__weight", torch.empty(n_voxels, n_targets))
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

    @property
    def fit_targets(self) -> tuple[str, ...]:
        return (self.config.target,)

    def fit_subject(self, subject: str, betas: np.ndarray, targets: dict[str, np.ndarray],
                    groups: np.ndarray) -> dict:
        targets = targets[self.config.target]
        ridge = Ridge(RidgeConfig(alphas=self.config.alphas, folds=self.config.folds, alpha_per=self.config.alpha_per,
                                  dtype=self.config.dtype, device=self.config.device,
                                  target_batch=self.config.target_batch,
                                  oof_statistics="target" if self.config.rescale == "per_target" else "group"))
        ridge.fit(betas, targets.reshape(len(targets), -1), groups=groups)
        weight = getattr(self, f"{subject}__weight")  # the fitted tensor itself, not a second copy of it
        self._buffers[f"{subject}__weight"] = ridge.weight.to(device=weight.device, dtype=weight.dtype)
        ridge.weight = weight = None
        for name in ("x_mean", "y_mean", "alpha"):
            getattr(self, f"{subject}__{name}").copy_(getattr(ridge, name).float())
        gain, bias = ridge.rescaling(self.config.rescale)
        getattr(self, f"{subject}__gain").copy_(gain.float())
        getattr(self, f"{subject}__bias").copy_(bias.float())
        return {"alpha": float(ridge.alpha.median()), "alpha_per": self.config.alpha_per,
                "cv_errors": next(iter(ridge.cv_scores.values())), "cv_screen": ridge.cv_screen,
                "rescale": self.config.rescale, "gain": float(gain.mean())}

    def predict(self, betas: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        self.check_subject(subject, betas)
        weight = getattr(self, f"{subject}__weight")
        out = (betas - getattr(self, f"{subject}__x_mean")) @ weight + getattr(self, f"{subject}__y_mean")
        out = out * getattr(self, f"{subject}__gain") + getattr(self, f"{subject}__bias")
        return {self.config.target: out.reshape(len(betas), *self.target_shape)}

    def training_loss(self, batches, info, generator):
        raise RuntimeError("the ridge is fitted in closed form (fit_subject), not by gradient steps")

