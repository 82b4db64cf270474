"""The simulated world: scenes, determinism, noise ceilings, the oracle, shared archetypes."""

import numpy as np
import pytest
import torch

from brainrecon.config import load_config, validate_config
from brainrecon.data import open_store
from brainrecon.data.reliability import estimate_ncsnr, noise_ceiling
from brainrecon.data.simworld import WorldConfig, load_subject_truth, load_world_config, simulate_world
from brainrecon.data.simworld import scenes as sc
from brainrecon.data.simworld.encoding import image_features
from brainrecon.data.simworld.oracle import oracle_evidence, oracle_loglik
from brainrecon.errors import ConfigError


def test_scenes_have_categories_captions_and_configurable_resolution():
    rng = np.random.default_rng(0)
    found = set()
    for _ in range(200):
        scene = sc.sample_scene(rng)
        found |= {o.category for o in scene.objects}
        rendered = sc.render_scene(scene, 64)
        caps = sc.captions(scene, rendered)
        assert len(caps) >= 3 and len(set(caps)) == len(caps)
        for obj in scene.objects:  # every object is named with its colour in the full caption
            assert f"{obj.colour}" in caps[0] and obj.category in caps[0]
        assert 1 <= len(scene.objects) <= 3 and rendered.image.dtype == np.uint8
    assert len(found) >= 10
    big = sc.render_scene(scene, 256).image
    assert big.shape == (256, 256, 3)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, tiny_config):
    small = WorldConfig.model_validate({**tiny_config.model_dump(), "n_train_images": 60, "n_test_images": 40,
                                        "calibration_images": 64, "voxels": {"min": 50, "max": 60},
                                        "session": {"trials_per_session": 60}})
    for name in ("a", "b"):
        simulate_world(small, tmp_path / name, progress=False)
    simulate_world(small.model_copy(update={"seed": 5}), tmp_path / "c", progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 10
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a/subjects/subj01/betas.npy").read_bytes() != (tmp_path / "c/subjects/subj01/betas.npy"
                                                                        ).read_bytes()


def test_world_builds_at_256_pixels(tmp_path, tiny_config):
    big = WorldConfig.model_validate({**tiny_config.model_dump(), "image_size": 256, "n_subjects": 1,
                                      "n_train_images": 12, "n_test_images": 12, "calibration_images": 64,
                                      "voxels": {"min": 20, "max": 30}, "session": {"trials_per_session": 24}})
    store = open_store(simulate_world(big, tmp_path / "big", progress=False))
    assert store.images.shape == (24, 256, 256, 3) and store.subject("subj01").n_voxels >= 20


def test_protocol_matches_the_nsd_design(tiny_world):
    store = open_store(tiny_world)
    config = load_world_config(store)
    test_sets = []
    for name in store.subjects:
        data = store.subject(name)
        counts = np.bincount(data.trials.stimulus_id)
        assert set(counts[counts > 0].tolist()) == {config.n_repeats}  # every image shown n_repeats times
        test_sets.append(set(data.trials.stimulus_id[data.trials.is_test].tolist()))
        assert len(data.sessions) == len(data.trials) // config.session.trials_per_session
    assert test_sets[0] == test_sets[1] and len(test_sets[0]) == config.n_test_images  # shared test set
    train = [set(store.subject(n).trials.stimulus_id[~store.subject(n).trials.is_test].tolist())
             for n in store.subjects]
    assert not train[0] & train[1]  # own training images
    raw = np.asarray(store.subject("subj01").raw_betas)
    sessions = store.subject("subj01").trials.session
    session_means = np.array([raw[sessions == s].mean() for s in np.unique(sessions)])
    assert session_means.std() > 0.05  # session offsets are real, so per-session z-scoring matters


def test_noise_ceiling_agrees_with_empirical_reliability(tiny_world):
    """Tolerance: ncsnr estimated from 600 stimuli x 3 repeats has ~10% sampling error per voxel."""
    store = open_store(tiny_world)
    truth = load_subject_truth(store, "subj01").model
    data = store.subject("subj01")
    estimated = estimate_ncsnr(data)
    assert np.corrcoef(truth.ncsnr, estimated)[0, 1] > 0.75
    assert np.median(np.abs(estimated - truth.ncsnr) / truth.ncsnr) < 0.15
    true_nc, est_nc = noise_ceiling(truth.ncsnr, 3), noise_ceiling(estimated, 3)
    assert abs(np.median(true_nc) - np.median(est_nc)) < 3.0  # percentage points
    # split-half: repeat 0 against repeat 1 correlates as ncsnr^2 / (ncsnr^2 + 1) predicts
    trials = data.trials
    first = [np.flatnonzero((trials.repeat == r)) for r in (0, 1)]
    order = [rows[np.argsort(trials.stimulus_id[rows])] for rows in first]
    a, b = data.read_trials(order[0]), data.read_trials(order[1])
    a, b = (a - a.mean(0)) / a.std(0), (b - b.mean(0)) / b.std(0)
    split_half = (a * b).mean(0)
    predicted = truth.ncsnr ** 2 / (truth.ncsnr ** 2 + 1)
    assert abs(np.median(split_half) - np.median(predicted)) < 0.03
    assert np.corrcoef(split_half, predicted)[0, 1] > 0.6


def test_oracle_loglik_matches_dense_gaussian(tiny_world):
    evidence = oracle_evidence(open_store(tiny_world), "subj01")
    loglik = oracle_loglik(evidence)
    i = 3
    cov = np.diag(evidence.variance[i]) + evidence.code_variance[i] * evidence.readout @ evidence.readout.T
    dist = torch.distributions.MultivariateNormal(torch.zeros(len(cov), dtype=torch.float64),
                                                  covariance_matrix=torch.as_tensor(cov))
    dense = np.array([dist.log_prob(torch.as_tensor(evidence.mean_response[i] - evidence.signal[j])).item()
                      for j in range(6)])
    np.testing.assert_allclose(loglik[i, :6] - loglik[i, 0], dense - dense[0], rtol=1e-6, atol=1e-6)


def test_oracle_beats_ridge_far_above_chance(tiny_world):
    from brainrecon.baseline import ceiling_table

    results = ceiling_table(open_store(tiny_world), way=100, draws=10)
    for r in results:
        assert r.oracle.image_top1 > 0.5 and r.oracle.image_top1 < 1.0
        assert r.ridge.image_top1 > 5 * r.ridge.chance
        assert r.oracle.image_top1 > r.ridge.image_top1 + 0.2


def _true_signals(store, subject, ids):
    config = load_world_config(store)
    truth = load_subject_truth(store, subject)
    semantic = np.load(store.extra_path("simworld/semantic.npy"))
    features = image_features(store.images_for(ids), semantic[store.stimuli.rows(ids)], config.feature_grid)
    signal = truth.model.signal(truth.code.encode(features, config.feature_grid))
    return truth.model, (signal - signal.mean(0)) / signal.std(0)


def _archetype_advantage(store):
    ids = np.arange(200)
    model_a, za = _true_signals(store, "subj01", ids)
    model_b, zb = _true_signals(store, "subj02", ids)
    corr = zb.T @ za / len(ids)
    same_kind = model_b.kind[:, None] == model_a.kind[None]
    same = same_kind & (model_b.archetype[:, None] == model_a.archetype[None])
    return corr[same].mean() - corr[same_kind & ~same].mean()


def test_shared_archetypes_are_real(tiny_world, tiny_config, tmp_path):
    """Voxels drawn from one archetype respond alike across subjects; in the control world they do not."""
    store = open_store(tiny_world)
    assert _archetype_advantage(store) > 0.3
    control = tiny_config.model_copy(update={"shared_archetypes": False, "n_train_images": 30,
                                             "n_test_images": 200})
    simulate_world(control, tmp_path / "control", progress=False)
    assert abs(_archetype_advantage(open_store(tmp_path / "control"))) < 0.15


def test_decoder_transfers_across_subjects_after_linear_alignment(tiny_world):
    """A decoder fitted on subject A decodes subject B after a linear map fitted on training data only:
    B's voxels -> A's voxel space, whose targets are A's encoding-model predictions for B's images."""
    from brainrecon.embed import LowLevelEmbedder
    from brainrecon.evaluate import cosine_scores, retrieval_top1
    from brainrecon.models import Ridge

    store = open_store(tiny_world)
    embed = LowLevelEmbedder()
    a, b = store.subject("subj01").train(), store.subject("subj02").train()
    fa = embed(store.images_for(a.stimulus_ids))
    mean, std = fa.mean(0), fa.std(0) + 1e-6
    standard = lambda ids: (embed(store.images_for(ids)) - mean) / std  # noqa: E731
    decoder = Ridge().fit(a.betas, (fa - mean) / std, groups=a.stimulus_ids)
    encoder = Ridge().fit((fa - mean) / std, a.betas, groups=a.stimulus_ids)
    alignment = Ridge().fit(b.betas, encoder.predict(standard(b.stimulus_ids)).numpy(), groups=b.stimulus_ids)
    test = store.subject("subj02").test()
    predicted = decoder.predict(alignment.predict(test.betas)).numpy()
    score = retrieval_top1(cosine_scores(predicted, standard(test.stimulus_ids)), way=100, draws=10)
    assert score.image_top1 > 5 * score.chance


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="n_subjectz.*Extra inputs are not permitted"):
        validate_config(WorldConfig, {"n_subjectz": 3})
    with pytest.raises(ConfigError, match="voxels.min .* must not exceed voxels.max"):
        validate_config(WorldConfig, {"voxels": {"min": 900, "max": 100}})
    with pytest.raises(ConfigError, match="n_subjects.*less than or equal to 8"):
        validate_config(WorldConfig, {"n_subjects": 9})
    with pytest.raises(ConfigError, match="no worlds preset named 'huge'.*default"):
        load_config(WorldConfig, "huge", "worlds")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(WorldConfig, bad, "worlds")


def test_presets_validate():
    default = load_config(WorldConfig, "default", "worlds")
    nsd = load_config(WorldConfig, "nsd-scale", "worlds")
    assert default.n_subjects == 4 and 1500 <= default.voxels.min and default.voxels.max <= 2500
    assert nsd.n_train_images == 9000 and nsd.n_test_images == 1000 and nsd.voxels.min >= 13000
