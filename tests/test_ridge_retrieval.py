"""Ridge against scikit-learn; retrieval against a brute-force reference."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge as SkRidge

from brainrecon.evaluate.retrieval import cosine_scores, retrieval_top1
from brainrecon.models import Ridge, RidgeConfig, ridge


@pytest.mark.parametrize("n,p", [(120, 40), (30, 80)])  # primal and dual solvers
def test_ridge_matches_sklearn(n, p):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, p))
    y = x @ rng.normal(size=(p, 7)) + rng.normal(size=(n, 7)) + 3.0
    ours = Ridge(RidgeConfig(alphas=(10.0,), folds=3)).fit(x, y)
    theirs = SkRidge(alpha=10.0).fit(x, y)
    x_new = rng.normal(size=(20, p))
    expected = theirs.predict(x_new)
    relative = np.abs(ours.predict(x_new).numpy() - expected).max() / np.abs(expected).max()
    assert relative <= 1e-4


def test_ridge_cross_validation_picks_alpha_per_target_group(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 30))
    clean = x @ rng.normal(size=(30, 2))
    y = np.concatenate([clean[:, :1], rng.normal(size=(200, 1)) * 5 + 0 * clean[:, 1:]], axis=1)
    groups = np.repeat(np.arange(100), 2)
    model = Ridge(RidgeConfig(alphas=(0.01, 1.0, 100.0, 1e4, 1e6))).fit(x, y, groups=groups,
                                                                        target_groups=[slice(0, 1), slice(1, 2)])
    assert model.alpha[0] < 100 and model.alpha[1] >= 1e4  # signal: little shrinkage; pure noise: a lot
    model.save(tmp_path / "ridge")
    loaded = Ridge.load(tmp_path / "ridge")
    np.testing.assert_array_equal(loaded.predict(x).numpy(), model.predict(x).numpy())


def refit_every_fold(model: Ridge, x, y, groups, target_groups):
    """The definition cross-validation must equal: refit each fold (centred with its own training means)
    at every alpha, predict its held-out rows; sum squared errors per group; out-of-fold moments at the
    chosen alphas."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    alphas = torch.as_tensor(model.config.alphas, dtype=x.dtype)
    errors = torch.zeros(len(alphas), len(target_groups), dtype=x.dtype)
    predictions = torch.zeros(len(alphas), *y.shape, dtype=x.dtype)
    for train, val in model._folds(len(x), groups):
        xm, ym = x[train].mean(0), y[train].mean(0)
        xt = x[train] - xm
        for a, alpha in enumerate(alphas):
            weight = torch.linalg.solve(xt.T @ xt + alpha * torch.eye(x.shape[1], dtype=x.dtype),
                                        xt.T @ (y[train] - ym))
            predictions[a, val] = (x[val] - xm) @ weight + ym
            for index, group in enumerate(target_groups):
                errors[a, index] += ((y[val][:, group] - predictions[a, val][:, group]) ** 2).sum()
    chosen = errors.argmin(0)
    picked = torch.cat([predictions[chosen[i], :, g] for i, g in enumerate(target_groups)], dim=1)
    return errors, picked.mean(0), picked.var(0, unbiased=False)


# primal and dual; few targets (residuals formed) and many (errors as traces); each target's out-of-fold
# variance (the predictions formed) or each group's (from the traces, where they run); the traces screened in
# float32 (the default) or every alpha's computed in float64; targets read whole, or in blocks of 8 columns, fewer
# than the primal form's 12 features, so that X Q is formed again wherever it is needed rather than kept
@pytest.mark.parametrize("target_batch", [8192, 8])
@pytest.mark.parametrize("screen", ["float32", None])
@pytest.mark.parametrize("statistics", ["target", "group"])
@pytest.mark.parametrize("n,p,t", [(150, 40, 9), (60, 90, 9), (150, 12, 60), (40, 90, 200)])
def test_cross_validation_equals_refitting_every_fold(n, p, t, statistics, screen, target_batch):
    """The leave-fold-out identity gives the per-fold refits' errors and predictions, without refitting."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(n, p)) @ rng.normal(size=(p, p)) * 0.3 + 1.0
    y = x[:, :6] @ rng.normal(size=(6, t)) + rng.normal(size=(n, t)) * 3 + 5.0
    groups = np.repeat(np.arange(n // 2), 2)
    target_groups = [slice(0, 4), slice(4, t)]
    config = RidgeConfig(alphas=(0.1, 1.0, 10.0, 100.0, 1e3), folds=4, oof_statistics=statistics, screen_dtype=screen,
                         target_batch=target_batch)
    model = Ridge(config).fit(x, y, groups=groups, target_groups=target_groups)
    errors, mean, var = refit_every_fold(model, x, y, groups, target_groups)
    for index, group in enumerate(target_groups):
        scores = np.array(model.cv_scores[f"{group.start}:{group.stop}"])
        # a screened alpha's error is good to the screen's checked drift (a tenth of the tolerance); the chosen
        # alpha's, and every alpha's without a screen, are exact
        computed = ~np.isnan(scores)
        np.testing.assert_allclose(scores[computed], errors[computed, index],
                                   rtol=1e-8 if screen is None else config.screen_tolerance / 10)
        assert scores[int(errors[:, index].argmin())] == pytest.approx(float(errors[:, index].min()), rel=1e-8)
        # the screen leaves unfinished only alphas whose refits' error is beyond its tolerance of every group's least
        pruned = np.isin(config.alphas, (model.cv_screen or {}).get("pruned", []))
        np.testing.assert_array_equal(~computed, pruned)
        least = float(errors[:, index].min())
        assert all(float(error) > least * (1 + config.screen_tolerance) for error in errors[pruned, index])
    if screen is not None and (n, p, t) == (150, 12, 60):
        assert len(model.cv_screen["pruned"]) == 2  # the case shows the bound at work (two of five alphas)
    np.testing.assert_allclose(model.oof_mean, mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(model.oof_group_var, [var[group].sum() for group in target_groups], rtol=1e-8)
    if statistics == "target":
        np.testing.assert_allclose(model.oof_var, var, rtol=1e-8)
    else:
        assert model.oof_var is None
        with pytest.raises(ValueError, match="oof_statistics='target'"):
            model.rescaling("per_target")


@pytest.mark.parametrize("rows,inner", [(7, 5), (41, 9), (64, 3)])
def test_a_gram_formed_by_blocks_equals_the_plain_product(monkeypatch, rows, inner):
    """_rows_gram skips blocks, not terms: split down to 4 rows it equals a @ a.T."""
    monkeypatch.setattr(ridge, "_BLOCK", 4)
    a = torch.randn(rows, inner, dtype=torch.float64)
    torch.testing.assert_close(ridge._rows_gram(a), a @ a.T, rtol=1e-12, atol=1e-12)


# every Gram of the fit split into blocks, as they are at full size: the errors are still those of refitting
@pytest.mark.parametrize("n,p,t", [(150, 12, 60), (40, 90, 200)])
def test_cross_validation_with_grams_by_block(monkeypatch, n, p, t):
    monkeypatch.setattr(ridge, "_BLOCK", 5)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(n, p)) @ rng.normal(size=(p, p)) * 0.3 + 1.0
    y = x[:, :6] @ rng.normal(size=(6, t)) + rng.normal(size=(n, t)) * 3 + 5.0
    groups = np.repeat(np.arange(n // 2), 2)
    model = Ridge(RidgeConfig(alphas=(0.1, 10.0, 1e3), folds=4, screen_dtype=None)).fit(x, y, groups=groups)
    errors, mean, _ = refit_every_fold(model, x, y, groups, [slice(0, t)])
    np.testing.assert_allclose(model.cv_scores[f"0:{t}"], errors[:, 0], rtol=1e-8)
    np.testing.assert_allclose(model.oof_mean, mean, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("n,p", [(120, 40), (30, 80)])  # primal and dual
def test_the_screens_lower_bound_is_the_all_rows_fits_residual(n, p):
    """The bound that lets the screen leave alphas unfinished: each alpha's all-rows residual sum of squares, read
    off the spectrum, equals that of a ridge fitted to all rows; and no fold-refit error lies below it."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(n, p))
    y = x[:, :3] @ rng.normal(size=(3, 7)) + rng.normal(size=(n, 7))
    alphas = (0.1, 10.0, 1e3)
    xc, yc = torch.as_tensor(x - x.mean(0)), torch.as_tensor(y - y.mean(0))
    folds = list(Ridge(RidgeConfig(folds=3))._folds(n, None))
    spectrum = ridge._Spectrum.of(xc, keep_rotated=True)
    statistics = ridge._TraceStatistics(folds, 1)
    statistics.add(0, yc, spectrum.project(yc))
    residual, _ = statistics.all_rows_residual(spectrum, torch.tensor(alphas, dtype=torch.float64), n)
    for a, alpha in enumerate(alphas):
        fit = Ridge(RidgeConfig(alphas=(alpha,), folds=3)).fit(x, y)
        assert float(residual[a, 0]) == pytest.approx(float(((fit.predict(x).numpy() - y) ** 2).sum()), rel=1e-9)
    errors = statistics.errors(spectrum, torch.tensor(alphas, dtype=torch.float64), n)
    assert (errors >= residual).all()
    # the folds' own residuals, a by-product of their traces, add up to it (in float32 too, to its rounding, which
    # is absolute: a few 1e-7 of ||Y||^2, far under the screen's margin unless the targets are almost noiseless)
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        traces = ridge._FoldTraces(statistics, spectrum, torch.tensor(alphas, dtype=dtype), n, exact=False)
        for f in range(len(folds)):
            traces.add(f, range(len(alphas)))
        np.testing.assert_allclose(traces.residual.double(), residual, rtol=rtol,
                                   atol=rtol * float(yc.pow(2).sum()) / 100)


@pytest.mark.parametrize("n,p", [(120, 40), (30, 80)])
def test_one_alpha_is_a_cholesky_fit_with_the_same_out_of_fold_statistics(n, p):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, p))
    y = x @ rng.normal(size=(p, 5)) + rng.normal(size=(n, 5))
    one = Ridge(RidgeConfig(alphas=(10.0,), folds=3, oof_statistics="target")).fit(x, y)
    # the same alpha reached through the eigendecomposition path (an alpha the CV never picks beside it)
    spectral = Ridge(RidgeConfig(alphas=(10.0, 1e12), folds=3, oof_statistics="target")).fit(x, y)
    assert float(spectral.alpha[0]) == 10.0
    np.testing.assert_allclose(one.weight, spectral.weight, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(one.oof_mean, spectral.oof_mean, rtol=1e-8)
    np.testing.assert_allclose(one.oof_var, spectral.oof_var, rtol=1e-8)


def brute_force(scores, subsets):
    image, brain = [], []
    for subset in subsets:
        hits_i = hits_b = 0
        for i in subset:
            best = max(subset, key=lambda j: scores[i, j])
            hits_i += best == i
            best_brain = max(subset, key=lambda j: scores[j, i])
            hits_b += best_brain == i
        image.append(hits_i / len(subset))
        brain.append(hits_b / len(subset))
    return np.mean(image), np.mean(brain)


def test_retrieval_matches_brute_force():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(60, 16))
    predicted = truth + rng.normal(size=truth.shape) * 1.5
    scores = cosine_scores(predicted, truth)
    result = retrieval_top1(scores, way=20, draws=5, seed=7)
    rng7 = np.random.default_rng(7)
    subsets = [rng7.choice(60, 20, replace=False) for _ in range(5)]
    image, brain = brute_force(scores, subsets)
    assert result.image_top1 == pytest.approx(image) and result.brain_top1 == pytest.approx(brain)
    assert 0.05 < result.image_top1 < 1.0
    with pytest.raises(ValueError, match="300-way retrieval needs at least 300"):
        retrieval_top1(scores, way=300)


def test_rescaling_undoes_shrinkage_with_training_statistics_only():
    """Out-of-fold predictions on training data set the gain: held-out predictions regain the targets'
    spread (a shrunk ridge's do not), and 'per_target' matches each target's spread."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 50))
    y = x[:, :5] @ rng.normal(size=(5, 6)) * 0.3 + rng.normal(size=(400, 6)) + 2.0
    train, held = slice(0, 300), slice(300, 400)
    model = Ridge(RidgeConfig(alphas=(1e2, 1e3, 1e4), oof_statistics="target")).fit(x[train], y[train])
    raw = model.predict(x[held]).numpy()
    spread = lambda p: ((p - p.mean(0)) ** 2).sum()  # noqa: E731
    assert spread(raw) < 0.5 * spread(y[held])  # the ridge shrinks toward the mean
    gain, bias = model.rescaling("global")
    assert torch.allclose(gain, gain[0].expand_as(gain)) and gain[0] > 1
    rescaled = raw * gain.numpy() + bias.numpy()
    assert 0.5 < spread(rescaled) / spread(y[held]) < 2.0
    per_target, _ = model.rescaling("per_target")
    assert not torch.allclose(per_target, per_target[0].expand_as(per_target))
    ones, zeros = model.rescaling("none")
    assert torch.equal(ones, torch.ones_like(ones)) and torch.equal(zeros, torch.zeros_like(zeros))
    with pytest.raises(ValueError, match="rescale must be"):
        model.rescaling("test-statistics")


def test_ridge_decoder_rescales_and_loads_runs_saved_before_rescaling():
    from brainrecon.models.base import TargetSpace
    from brainrecon.models.ridge import RidgeDecoder, RidgeDecoderConfig

    rng = np.random.default_rng(4)
    betas = rng.normal(size=(300, 40)).astype(np.float32)
    targets = (betas[:, :4] @ rng.normal(size=(4, 8)) * 0.2 + rng.normal(size=(300, 8))).astype(np.float32)
    space = TargetSpace({"image_pooled": (8,)})
    model = RidgeDecoder(RidgeDecoderConfig(target="image_pooled"), {"subj01": 40}, space)
    fit = model.fit_subject("subj01", betas, {"image_pooled": targets}, np.arange(300))
    assert fit["rescale"] == "global" and fit["gain"] > 1
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(("__gain", "__bias"))}
    old = RidgeDecoder(RidgeDecoderConfig(target="image_pooled"), {"subj01": 40}, space)
    old.load_state_dict(state, strict=True)  # an older run: no gain/bias saved -> identity
    x = torch.as_tensor(betas[:5])
    raw = old.predict(x, "subj01")["image_pooled"]
    assert torch.equal(old.subj01__gain, torch.ones(8))
    rescaled = model.predict(x, "subj01")["image_pooled"]
    np.testing.assert_allclose(rescaled.numpy(), (raw * model.subj01__gain + model.subj01__bias).numpy(),
                               rtol=1e-5, atol=1e-5)


class ColumnReader:
    """Targets that are only ever read a block of columns at a time; records the widest block read."""

    def __init__(self, values: np.ndarray):
        self.values, self.widest, self.ndim = values, 0, 2

    @property
    def shape(self):
        return self.values.shape

    def __len__(self):
        return len(self.values)

    def reshape(self, *shape):
        return self

    def __getitem__(self, key):
        rows, cols = key
        assert rows == slice(None), "targets must be read by columns"
        self.widest = max(self.widest, cols.stop - cols.start)
        return self.values[:, cols]


# errors as traces, residuals formed, and one alpha (Cholesky); primal and dual
@pytest.mark.parametrize("n,p,t,alphas", [(150, 40, 60, (0.1, 10.0, 1e3)), (40, 90, 200, (0.1, 10.0, 1e3)),
                                          (150, 40, 9, (0.1, 10.0, 1e3)), (120, 40, 30, (10.0,)),
                                          (30, 80, 30, (10.0,))])
def test_targets_read_in_blocks_give_the_fit_of_all_targets_at_once(n, p, t, alphas):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(n, p)) @ rng.normal(size=(p, p)) * 0.3
    y = x[:, :6] @ rng.normal(size=(6, t)) + rng.normal(size=(n, t)) * 3 + 5.0
    groups, target_groups = np.repeat(np.arange(n // 2), 2), [slice(0, 4), slice(4, t)]
    # every alpha's error exact (no float32 screen), so that the blocks' rounding is all that differs
    whole = Ridge(RidgeConfig(alphas=alphas, folds=4, screen_dtype=None)).fit(x, y, groups=groups,
                                                                              target_groups=target_groups)
    reader = ColumnReader(y)
    blocked = Ridge(RidgeConfig(alphas=alphas, folds=4, target_batch=7, screen_dtype=None)).fit(
        x, reader, groups=groups, target_groups=target_groups)
    assert 0 < reader.widest <= 7  # never the whole target array
    assert torch.equal(blocked.alpha, whole.alpha)
    for key, scores in whole.cv_scores.items():
        # as exact as the traces are: they subtract terms much larger than the error, so summing the targets in
        # blocks moves the last digits (1.3e-8 relative on one CPU); the alphas' errors differ by percents
        np.testing.assert_allclose(blocked.cv_scores[key], scores, rtol=1e-7)
    assert whole.oof_var is None and blocked.oof_var is None  # oof_statistics: group, the default
    for name in ("weight", "y_mean", "y_var", "oof_mean", "oof_group_var"):
        np.testing.assert_allclose(getattr(blocked, name), getattr(whole, name), rtol=1e-9, atol=1e-12)


def exact_alphas_of_a_fit(monkeypatch, config: RidgeConfig, x, y) -> tuple[Ridge, list[float]]:
    """Fit, and list the alphas whose errors were computed in the fit's own dtype over every fold."""
    exact: list[float] = []
    errors = ridge._TraceStatistics.bounded_errors

    def spy(self, spectrum, alphas, n, dtype=None, folds=None, ceiling=None):
        if dtype is None and folds is None:
            exact.extend(alphas.tolist())
        return errors(self, spectrum, alphas, n, dtype, folds, ceiling)

    monkeypatch.setattr(ridge._TraceStatistics, "bounded_errors", spy)
    return Ridge(config).fit(x, y), sorted(exact)


def assert_same_fit(screened: Ridge, exact: Ridge) -> None:
    assert torch.equal(screened.alpha, exact.alpha)
    for name in ("weight", "oof_mean", "oof_group_var"):
        np.testing.assert_allclose(getattr(screened, name), getattr(exact, name), rtol=1e-12, atol=1e-14)


# primal (samples > features), where the float32 screen is good to about 1e-6 and dual with a near-singular
# smallest alpha, where it is not
@pytest.mark.parametrize("n,p,screen_holds", [(200, 60, True), (60, 400, False)])
def test_a_float32_screen_chooses_the_alpha_of_the_exact_search(monkeypatch, n, p, screen_holds):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(n, p))
    y = x[:, :5] @ rng.normal(size=(5, 600)) + rng.normal(size=(n, 600))
    config = RidgeConfig(alphas=(1e-4, 1e-2, 1.0, 100.0, 1e4), folds=4)
    screened, recomputed = exact_alphas_of_a_fit(monkeypatch, config, x, y)
    exact, everything = exact_alphas_of_a_fit(monkeypatch, config.model_copy(update={"screen_dtype": None}), x, y)
    assert everything == list(config.alphas)
    assert_same_fit(screened, exact)
    assert exact.cv_screen is None and screened.cv_screen["every_alpha_exact"] is not screen_holds
    if screen_holds:  # only the alpha generalised CV favours and those near the screened minimum are exact
        assert float(screened.alpha[0]) in recomputed and len(recomputed) < len(config.alphas)
        assert recomputed == sorted(screened.cv_screen["exact"])
        # every exact alpha over the 4 folds, and the probe's fold in both dtypes
        assert screened.cv_screen["traces"]["float64"] == 4 * len(recomputed) + 1
        assert screened.cv_screen["drift"] <= config.screen_tolerance / 10
    else:  # the probe at the smallest alpha shows the screen's error: every alpha is computed exactly
        assert recomputed == everything
        np.testing.assert_allclose(screened.cv_scores["0:600"], exact.cv_scores["0:600"], rtol=1e-12)


def test_a_dual_fit_leaves_alphas_unfinished_and_chooses_as_the_exact_search(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 100))
    y = x[:, :5] @ rng.normal(size=(5, 300)) + 2 * rng.normal(size=(60, 300))
    config = RidgeConfig(alphas=(30.0, 100.0, 1e3, 1e4, 1e5, 1e6), folds=4)
    screened, _ = exact_alphas_of_a_fit(monkeypatch, config, x, y)
    exact, _ = exact_alphas_of_a_fit(monkeypatch, config.model_copy(update={"screen_dtype": None}), x, y)
    assert_same_fit(screened, exact)
    unfinished = np.isin(config.alphas, screened.cv_screen["pruned"])
    everything = np.array(exact.cv_scores["0:300"])
    assert unfinished.any() and (everything[unfinished] > everything.min() * (1 + config.screen_tolerance)).all()


def test_alphas_whose_screen_fails_are_computed_exactly_never_left_unfinished(monkeypatch):
    """Every float32 leave-out block made to fail: no alpha is left unfinished, each failed one is tried once
    (the later folds skip it), and the fit is the exact search's."""
    leave_out = ridge._leave_out

    def failing(hat, n):
        if hat.dtype == torch.float32:
            raise torch.linalg.LinAlgError("made to fail")
        return leave_out(hat, n)

    rng = np.random.default_rng(8)
    x = rng.normal(size=(200, 60))
    y = x[:, :5] @ rng.normal(size=(5, 600)) + rng.normal(size=(200, 600))
    config = RidgeConfig(alphas=(1e-2, 1.0, 100.0, 1e4), folds=4)
    exact, _ = exact_alphas_of_a_fit(monkeypatch, config.model_copy(update={"screen_dtype": None}), x, y)
    monkeypatch.setattr(ridge, "_leave_out", failing)
    screened, computed = exact_alphas_of_a_fit(monkeypatch, config, x, y)
    assert_same_fit(screened, exact)
    assert computed == list(config.alphas) and screened.cv_screen["pruned"] == []
    # at most the three screened alphas once each (not once a fold), and the probe, whose failure sends every alpha
    # to float64
    assert screened.cv_screen["traces"]["float32"] <= len(config.alphas) and screened.cv_screen["every_alpha_exact"]


def test_a_float32_fit_leaves_only_alphas_provably_far_from_the_least_unfinished():
    """No narrower dtype to screen in: every alpha is computed in float32, but those the bound leaves unfinished,
    and the fit is that of computing them all."""
    rng = np.random.default_rng(10)
    x = rng.normal(size=(200, 60))
    y = x[:, :5] @ rng.normal(size=(5, 600)) + rng.normal(size=(200, 600))
    config = RidgeConfig(alphas=(1e-2, 1.0, 100.0, 1e4), folds=4, dtype="float32")
    pruned = Ridge(config).fit(x, y)
    full = Ridge(config.model_copy(update={"screen_dtype": None})).fit(x, y)
    assert torch.equal(pruned.alpha, full.alpha) and torch.equal(pruned.weight, full.weight)
    scores, everything = np.array(pruned.cv_scores["0:600"]), np.array(full.cv_scores["0:600"])
    unfinished = np.isnan(scores)
    assert unfinished.any() and list(np.array(config.alphas)[unfinished]) == pruned.cv_screen["pruned"]
    np.testing.assert_array_equal(scores[~unfinished], everything[~unfinished])
    assert (everything[unfinished] > everything.min() * (1 + config.screen_tolerance)).all()


def test_a_leave_out_block_that_does_not_factor_names_the_fix():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 90)) @ rng.normal(size=(90, 90)) * 0.3 + 1.0
    y = x[:, :6] @ rng.normal(size=(6, 200)) + rng.normal(size=(40, 200)) * 3 + 5.0
    with pytest.raises(torch.linalg.LinAlgError, match="fit in float64"):
        Ridge(RidgeConfig(alphas=(0.1, 1.0, 10.0), folds=4, dtype="float32")).fit(x, y)


def test_a_target_batch_below_one_is_refused():
    with pytest.raises(ValueError, match="target_batch"):
        RidgeConfig(target_batch=0)


def test_alpha_per_target_equals_refitting_every_fold_for_each_target():
    """alpha_per='target': every target's own CV error at every alpha, as refits give it, and its own alpha."""
    rng = np.random.default_rng(7)
    n, p, t = 120, 30, 20
    x = rng.normal(size=(n, p))
    scale = np.logspace(-1.5, 1, t)  # from targets the voxels barely predict to ones they predict well
    y = (x[:, :5] @ rng.normal(size=(5, t))) * scale + rng.normal(size=(n, t)) + 1.0
    groups = np.repeat(np.arange(n // 2), 2)
    alphas = (0.1, 10.0, 1e3, 1e5)
    config = RidgeConfig(alphas=alphas, folds=4, alpha_per="target", target_batch=6)
    model = Ridge(config).fit(x, y, groups=groups)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    per_target = torch.zeros(len(alphas), t, dtype=xt.dtype)
    for train, val in model._folds(n, groups):
        xm, ym = xt[train].mean(0), yt[train].mean(0)
        xtr = xt[train] - xm
        for a, alpha in enumerate(alphas):
            weight = torch.linalg.solve(xtr.T @ xtr + alpha * torch.eye(p, dtype=xt.dtype), xtr.T @ (yt[train] - ym))
            per_target[a] += ((yt[val] - (xt[val] - xm) @ weight - ym) ** 2).sum(0)
    chosen = torch.as_tensor(alphas, dtype=xt.dtype)[per_target.argmin(0)]
    assert torch.equal(model.alpha, chosen) and len(set(chosen.tolist())) > 1  # the targets chose differently
    np.testing.assert_allclose(model.cv_scores[f"0:{t}"], per_target.sum(1), rtol=1e-8)
    xc, yc = xt - xt.mean(0), yt - yt.mean(0)  # the all-rows fit of each target at its own alpha
    expected = torch.stack([torch.linalg.solve(xc.T @ xc + chosen[j] * torch.eye(p, dtype=xt.dtype), xc.T @ yc[:, j])
                            for j in range(t)], 1)
    np.testing.assert_allclose(model.weight, expected, rtol=1e-8, atol=1e-12)
    shared = Ridge(config.model_copy(update={"alpha_per": "group"})).fit(x, y, groups=groups)
    assert per_target.min(0).values.sum() <= float(min(shared.cv_scores[f"0:{t}"])) + 1e-9  # never worse in CV
