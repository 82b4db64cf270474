"""The simulated world: scenes, determinism, noise ceilings, the oracle, ceilings, shared archetypes."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from brainrecon.config import load_config, validate_config
from brainrecon.data import open_store
from brainrecon.data.reliability import estimate_ncsnr, noise_ceiling
from brainrecon.data.simworld import WorldConfig, load_subject_truth, load_world_config, simulate_world
from brainrecon.data.simworld import scenes as sc
from brainrecon.data.simworld.encoding import image_features
from brainrecon.data.simworld.oracle import oracle_evidence, oracle_loglik, true_code
from brainrecon.errors import ConfigError, OutputError
from store_compare import folder_differences, folder_files


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


def test_same_seed_same_bytes_whatever_the_threads_other_seed_other_bytes(tmp_path, tiny_config):
    small = WorldConfig.model_validate({**tiny_config.model_dump(), "n_train_images": 60, "n_test_images": 40,
                                        "calibration_images": 64, "code_dims": 32,
                                        "voxels": {"min": 50, "max": 60}, "session": {"trials_per_session": 60}})
    callers_threads = torch.get_num_threads()
    try:  # the caller's thread count must not reach the bytes: float32 sums split by thread count
        for name, threads in (("a", 2), ("b", 1)):
            torch.set_num_threads(threads)
            simulate_world(small, tmp_path / name, progress=False)
            assert torch.get_num_threads() == threads  # the caller's count is given back
    finally:
        torch.set_num_threads(callers_threads)
    simulate_world(small.model_copy(update={"seed": 5}), tmp_path / "c", progress=False)
    assert len(folder_files(tmp_path / "a")) > 10
    assert folder_differences(tmp_path / "a", tmp_path / "b") == {}
    assert (tmp_path / "a/subjects/subj01/betas.npy").read_bytes() != (tmp_path / "c/subjects/subj01/betas.npy"
                                                                        ).read_bytes()


def test_a_refused_world_build_gives_the_callers_thread_count_back(tmp_path, tiny_config):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("someone's data")
    callers_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(OutputError):  # refused inside the fixed-thread block
            simulate_world(tiny_config, tmp_path / "data", progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(callers_threads)


def test_world_builds_at_256_pixels(tmp_path, tiny_config):
    big = WorldConfig.model_validate({**tiny_config.model_dump(), "image_size": 256, "n_subjects": 1,
                                      "n_train_images": 12, "n_test_images": 12, "calibration_images": 64,
                                      "code_dims": 32, "voxels": {"min": 20, "max": 30},
                                      "session": {"trials_per_session": 24}})
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
    # each voxel's mean moves from session to session (offsets of sd 1 in signal units), so per-session
    # z-scoring matters; averaged over voxels the offsets cancel, so this is measured per voxel
    session_means = np.array([raw[sessions == s].mean(0) for s in np.unique(sessions)])
    assert np.median(session_means.std(0)) > 0.5


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


def test_ceilings_are_computed_stored_and_ordered(tiny_world):
    """Every space's ceiling sits below the oracle (within its CI), the ridge below the ceiling's reach,
    and the table is stored with the world and refused once the store changes."""
    from brainrecon.evaluate.ceilings import SPACES, ceiling_table, format_table, load_ceilings, save_ceilings

    store = open_store(tiny_world)
    results = ceiling_table(store, way=100, draws=10)
    assert [r.subject for r in results] == store.subjects
    for r in results:
        assert 0.5 < r.oracle.image_top1 < 1.0
        assert list(r.spaces) == list(SPACES)
        for name, space in r.spaces.items():
            # the ceiling is a decoder: it cannot beat the Bayes-optimal oracle beyond chance fluctuation
            assert space.ceiling.image_top1 <= r.oracle.image_top1 + r.oracle.image_ci95 + space.ceiling.image_ci95
            assert space.ridge.image_top1 <= space.ceiling.image_top1 + 0.1, name
        # the voxels encode the vision model: its pooled space is decodable far above chance
        assert r.spaces["clip_pooled"].ceiling.image_top1 > 0.5 * r.oracle.image_top1
        assert r.spaces["clip_pooled"].ridge.image_top1 > 10 * r.spaces["clip_pooled"].ridge.chance
        assert r.spaces["clip_pooled"].capacity.image_top1 > 0.9  # the code carries nearly all of it
    assert "small-CLIP pooled ceiling" in format_table(results)
    save_ceilings(store, results)
    stored = load_ceilings(store)
    assert stored["subjects"][0]["spaces"]["clip_pooled"]["ceiling"]["image_top1"] == \
        results[0].spaces["clip_pooled"].ceiling.image_top1
    assert stored["way"] == 100 and "not NSD results" in stored["note"]
    readouts = {space["ceiling_readout"] for row in stored["subjects"] for space in row["spaces"].values()}
    assert readouts <= {"linear", "contrastive"} | {f"pseudo-inverse, lambda {x:g}" for x in (0.01, 0.1, 1.0, 10.0)}


def test_a_table_of_one_space_gives_that_space_the_figures_of_the_whole_table(tiny_world):
    """The demo measures only the space its models decode into: each space's ridge alpha, read-out and draws
    are its own, so leaving the other spaces out changes none of its figures."""
    from brainrecon.evaluate.ceilings import ceiling_table

    store = open_store(tiny_world)
    whole = ceiling_table(store, way=100, draws=10, subjects=store.subjects[:1])[0].to_dict()
    alone = ceiling_table(store, way=100, draws=10, subjects=store.subjects[:1], spaces=("clip_pooled",))[0]
    assert list(alone.spaces) == ["clip_pooled"]
    assert alone.to_dict()["spaces"]["clip_pooled"] == whole["spaces"]["clip_pooled"]
    assert alone.to_dict()["oracle"] == whole["oracle"]
    for spaces in ((), ("clip_pooled", "pixels")):
        with pytest.raises(ValueError, match="spaces must be one or more of clip_tokens, clip_pooled, handcrafted"):
            ceiling_table(store, spaces=spaces)


def test_contrastive_readout_takes_every_stimulus_up_to_its_batch_then_seeded_random_batches(monkeypatch):
    """Up to ``batch`` stimuli every step sees them all (a 1,500-image world's read-out, unchanged); beyond, each
    step draws a seeded random batch, so the cost grows with the stimuli, not their square."""
    from brainrecon.evaluate import ceilings
    from brainrecon.models.ridge import Ridge, RidgeConfig

    rng = np.random.default_rng(0)
    code = rng.standard_normal((60, 8))
    targets = code @ rng.standard_normal((8, 12)) + 0.1 * rng.standard_normal((60, 12))
    code_map = Ridge(RidgeConfig()).fit(code, targets)
    shapes, cross_entropy = [], torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy",
                        lambda logits, labels: shapes.append(tuple(logits.shape)) or cross_entropy(logits, labels))
    readout = lambda batch: ceilings._contrastive_readout(code_map, code, targets, seed=0, steps=3,  # noqa: E731
                                                          batch=batch)
    full = readout(60)
    assert set(shapes) == {(60, 60)} and len(shapes) == 6  # both directions of each step
    shapes.clear()
    batched = readout(16)
    assert set(shapes) == {(16, 16)} and len(shapes) == 6
    assert not torch.allclose(full, batched)
    torch.testing.assert_close(batched, readout(16))  # the batches are seeded


def test_oracle_evidence_of_training_stimuli_is_for_choices_on_training_data(tiny_world):
    store = open_store(tiny_world)
    train = oracle_evidence(store, "subj01", "train")
    np.testing.assert_array_equal(train.stimulus_ids, np.unique(store.subject("subj01").train().stimulus_ids))
    assert not set(train.stimulus_ids.tolist()) & set(oracle_evidence(store, "subj01").stimulus_ids.tolist())
    with pytest.raises(ValueError, match="split must be 'test' or 'train'"):
        oracle_evidence(store, "subj01", "all")


def test_stored_ceilings_refuse_another_store(tmp_path, tiny_world):
    import shutil

    from brainrecon.evaluate.ceilings import CEILINGS_FILE, load_ceilings

    copy = tmp_path / "copy"
    shutil.copytree(tiny_world, copy)
    (copy / CEILINGS_FILE).write_text(json.dumps({"store_manifest_sha256": "0" * 64, "subjects": []}))
    assert load_ceilings(open_store(copy)) is None


def _true_signals(store, subject, ids):
    truth = load_subject_truth(store, subject)
    signal = truth.model.signal(true_code(store, subject, ids))
    return truth.model, (signal - signal.mean(0)) / signal.std(0)


def _archetype_advantage(store):
    ids = np.arange(200)
    model_a, za = _true_signals(store, "subj01", ids)
    model_b, zb = _true_signals(store, "subj02", ids)
    corr = zb.T @ za / len(ids)
    same_kind = model_b.kind[:, None] == model_a.kind[None]
    same = same_kind & (model_b.archetype[:, None] == model_a.archetype[None])
    return corr[same].mean() - corr[same_kind & ~same].mean()


def test_saved_code_is_what_the_vision_model_and_archetypes_give(tiny_world):
    """The saved noise-free code (read by the oracle and the ceilings) is recomputable from the images
    through the recorded vision model, so nothing reads a code the betas were not drawn from."""
    from safetensors.numpy import load_file

    from brainrecon.data.simworld.vision_model import FeatureNormaliser, VisionModel

    store = open_store(tiny_world)
    config = load_world_config(store)
    recorded = store.source["vision_model"]
    vision = VisionModel(config.vision_model)
    assert recorded["weights_sha256"] == vision.sha256 and recorded["pooled_dim"] == vision.pooled_dim
    arrays = load_file(str(store.extra_path("simworld/vision-normaliser.safetensors")))
    vision.normaliser = FeatureNormaliser(arrays["patch_mean"], float(arrays["patch_scale"][0]),
                                          arrays["pooled_mean"], float(arrays["pooled_scale"][0]))
    ids = np.arange(20)
    semantic = np.load(store.extra_path("simworld/semantic.npy"))
    features = image_features(store.images_for(ids), semantic[store.stimuli.rows(ids)], config.feature_grid,
                              vision)
    code = load_subject_truth(store, "subj01").code
    np.testing.assert_allclose(code.encode(features, config.feature_grid), true_code(store, "subj01", ids),
                               rtol=1e-4, atol=1e-4)
    # features of another width are refused, never silently mixed
    narrow = type(features)(features.low, features.mid, features.semantic, features.patches[:, :8], features.pooled)
    with pytest.raises(ValueError, match="another vision model"):
        code.units.raw_response(narrow, config.feature_grid)


def test_cortical_layout_gives_voxels_coordinates_and_locality(tiny_world):
    store = open_store(tiny_world)
    truth = load_subject_truth(store, "subj01").model
    voxels = store.subject("subj01").voxels
    assert (voxels.ijk >= 0).all() and len(np.unique(voxels.ijk, axis=0)) == len(voxels.ijk)
    assert np.all(np.diff(truth.kind) >= 0)  # areas in order: low, mid, high
    np.testing.assert_array_equal(voxels.ijk[:, 2], truth.kind)
    retinotopic = np.flatnonzero(truth.kind < 2)
    neighbours = np.linalg.norm(np.diff(truth.centre[retinotopic], axis=0), axis=1).mean()
    shuffled = np.random.default_rng(0).permutation(retinotopic)
    random_pairs = np.linalg.norm(np.diff(truth.centre[shuffled], axis=0), axis=1).mean()
    assert neighbours < 0.6 * random_pairs


def test_shared_archetypes_are_real(tiny_world, tiny_config, tmp_path):
    """Voxels drawn from one archetype respond alike across subjects; in the control world they do not."""
    store = open_store(tiny_world)
    assert _archetype_advantage(store) > 0.3
    control = WorldConfig.model_validate({**tiny_config.model_dump(), "shared_archetypes": False,
                                          "n_train_images": 30, "n_test_images": 200,
                                          "voxels": {"min": 200, "max": 250}})
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
    with pytest.raises(ConfigError, match=r"code_dims \(64\) must be below calibration_images \(64\).*raise "
                                          r"calibration_images or lower code_dims"):
        validate_config(WorldConfig, {"code_dims": 64, "calibration_images": 64})
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(WorldConfig, bad, "worlds")


def test_a_code_axis_the_calibration_scenes_do_not_vary_along_is_refused(tiny_config):
    """64 calibration images that are 32 scenes twice vary along at most 31 directions: a 40-axis code would
    take 9 axes the SVD picks at will, so it is refused; a 16-axis code is fitted."""
    from brainrecon.data.simworld.encoding import SharedCode, image_features, make_archetypes
    from brainrecon.data.simworld.world import _render_chunk
    from brainrecon.rng import derive_rng

    config = tiny_config.model_copy(update={"vision_model": None})  # hand-crafted features: no CLIP to load
    images, semantic, _, _ = _render_chunk(config, np.arange(32), "calibration")
    features = image_features(np.concatenate([images, images]), np.concatenate([semantic, semantic]),
                              config.feature_grid, None)
    archetypes = make_archetypes(config, derive_rng(0, "archetypes"), None, None)
    with pytest.raises(ConfigError, match="vary along only 31 directions, so the code's last axes are "
                                          "undetermined; lower code_dims or raise calibration_images"):
        SharedCode.fit(archetypes, features, config.feature_grid, 40)
    assert SharedCode.fit(archetypes, features, config.feature_grid, 16).axes.shape[1] == 16


def test_presets_validate():
    default = load_config(WorldConfig, "default", "worlds")
    nsd = load_config(WorldConfig, "nsd-scale", "worlds")
    assert default.n_subjects == 4 and 1500 <= default.voxels.min and default.voxels.max <= 2500
    assert nsd.n_train_images == 9000 and nsd.n_test_images == 1000 and nsd.voxels.min >= 13000


FRONTIER = Path(__file__).resolve().parents[1] / "benchmarks" / "worlds"  # the ceiling frontier's variant worlds


def test_the_frontier_world_files_validate_and_name_their_own_command():
    """benchmarks/worlds/ holds the ceiling frontier's variant worlds (docs/simulated-world.md); each file's
    header says how to measure it, so a copied file that kept another's command would mislead."""
    worlds = sorted(FRONTIER.glob("*.yaml"))
    assert len(worlds) >= 8
    for path in worlds:
        load_config(WorldConfig, path, "worlds")
        assert f"--config benchmarks/worlds/{path.name} " in path.read_text(), path.name


def test_presets_name_their_vision_model_and_the_control_keeps_the_old_world():
    default = load_config(WorldConfig, "default", "worlds")
    previous = load_config(WorldConfig, "isotropic-code64-noise3", "worlds")
    control = load_config(WorldConfig, "handcrafted", "worlds")
    for world in (default, previous):
        assert world.vision_model == "simworld" and world.voxel_layout == "cortical"
    # the default is the frontier's orthogonal-code96-noise4-train3000, which benchmarks/worlds/ keeps by that name
    # for the pages made on it before the switch
    frontier = load_config(WorldConfig, FRONTIER / "orthogonal-code96-noise4-train3000.yaml", "worlds")
    assert default == frontier and default.n_train_images == 3000 and default.vision_tuning == "orthogonal"
    assert control.vision_model is None and control.code_scaling == "whitened" and control.voxel_layout == "random"
    # the control differs from the world before the switch only in what the voxels encode and how the code is built
    same = {k for k, v in previous.model_dump().items() if control.model_dump()[k] == v}
    assert {"n_subjects", "n_train_images", "n_test_images", "noise", "session", "voxels"} <= same


def test_a_bad_vision_model_is_refused_before_anything_is_written(tmp_path, tiny_config):
    missing = tiny_config.model_copy(update={"vision_model": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="vision_model = .*nowhere.* is not a local directory"):
        simulate_world(missing, tmp_path / "a", progress=False)
    wrong = tmp_path / "not-clip"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({"model_type": "autoencoder_kl"}))
    (wrong / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="could not be loaded as a CLIP image tower"):
        simulate_world(tiny_config.model_copy(update={"vision_model": str(wrong)}), tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_another_vision_model_makes_another_world(tmp_path, tiny_config):
    """The same weights give the same betas; changed weights give a different world and hash."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from brainrecon.assets import SIMWORLD_ASSETS

    small = WorldConfig.model_validate({**tiny_config.model_dump(), "n_subjects": 1, "n_train_images": 40,
                                        "n_test_images": 30, "calibration_images": 64, "code_dims": 16,
                                        "voxels": {"min": 40, "max": 50}, "session": {"trials_per_session": 70}})
    copy = tmp_path / "clip"
    shutil.copytree(SIMWORLD_ASSETS / "clip", copy)
    betas = "subjects/subj01/betas.npy"
    simulate_world(small, tmp_path / "shipped", progress=False)
    simulate_world(small.model_copy(update={"vision_model": str(copy)}), tmp_path / "copy", progress=False)
    assert (tmp_path / "shipped" / betas).read_bytes() == (tmp_path / "copy" / betas).read_bytes()
    weights = load_file(str(copy / "model.safetensors"))
    name = next(k for k in weights if "vision_model" in k and "mlp.fc1.weight" in k)
    weights[name] = (weights[name] * 1.5).astype(weights[name].dtype)
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    simulate_world(small.model_copy(update={"vision_model": str(copy)}), tmp_path / "changed", progress=False)
    assert (tmp_path / "shipped" / betas).read_bytes() != (tmp_path / "changed" / betas).read_bytes()
    hashes = [open_store(tmp_path / n).source["vision_model"]["weights_sha256"] for n in ("shipped", "changed")]
    assert hashes[0] != hashes[1]


def test_covariance_and_orthogonal_tunings_shape_the_directions(tiny_config):
    """`vision_tuning: feature_covariance` draws mid and high tuning directions from the features' covariance:
    they lean toward its main axes far more than isotropic draws, and each read-out has unit variance.
    `orthogonal` makes the high-level directions orthonormal bases."""
    from brainrecon.data.simworld.encoding import make_archetypes
    from brainrecon.rng import derive_rng

    rng = np.random.default_rng(0)
    token_axes, pooled_axes = (np.linalg.qr(rng.normal(size=(d, d)))[0] for d in (24, 32))
    spectra = [np.geomspace(8.0, 0.01, d) for d in (24, 32)]
    covariance = tuple(axes * values @ axes.T for axes, values in zip((token_axes, pooled_axes), spectra))
    config = tiny_config.model_copy(update={"archetypes": tiny_config.archetypes.model_copy(
        update={"mid": 200, "high": 200})})
    isotropic = make_archetypes(config, derive_rng(0, "archetypes"), (24, 32))
    shaped = make_archetypes(config, derive_rng(0, "archetypes"), (24, 32), covariance)
    for tuning, gain, cov, axes in (("mid_tuning", "mid_gain", covariance[0], token_axes),
                                    ("high_weights", "high_gain", covariance[1], pooled_axes)):
        top = lambda w: ((w @ axes[:, :3]) ** 2).sum(1).mean()  # noqa: E731  share on the 3 main axes
        assert top(shaped[tuning]) > 4 * top(isotropic[tuning])
        np.testing.assert_allclose(np.linalg.norm(shaped[tuning], axis=1), 1.0)
        scaled = shaped[tuning] * shaped[gain][:, None]
        np.testing.assert_allclose(np.einsum("kd,de,ke->k", scaled, cov, scaled), 1.0, rtol=1e-10)
    assert "mid_gain" not in isotropic  # the isotropic world's draws and arrays are unchanged
    # `orthogonal`: every run of 32 high-level directions is an orthonormal basis of the pooled space
    orthogonal = make_archetypes(config.model_copy(update={"vision_tuning": "orthogonal"}),
                                 derive_rng(0, "archetypes"), (24, 32))["high_weights"]
    for start in range(0, 192, 32):
        block = orthogonal[start:start + 32]
        np.testing.assert_allclose(block @ block.T, np.eye(32), atol=1e-10)
    assert np.abs(isotropic["high_weights"][:32] @ isotropic["high_weights"][:32].T - np.eye(32)).max() > 0.3


def test_covariance_tuning_builds_a_world_and_needs_a_vision_model(tmp_path, tiny_config):
    small = WorldConfig.model_validate({**tiny_config.model_dump(), "n_subjects": 1, "n_train_images": 40,
                                        "n_test_images": 30, "calibration_images": 64, "code_dims": 16,
                                        "voxels": {"min": 40, "max": 50}, "session": {"trials_per_session": 70}})
    betas = "subjects/subj01/betas.npy"
    simulate_world(small, tmp_path / "isotropic", progress=False)
    shaped = small.model_copy(update={"vision_tuning": "feature_covariance"})
    store = open_store(simulate_world(shaped, tmp_path / "shaped", progress=False))
    assert (tmp_path / "isotropic" / betas).read_bytes() != (tmp_path / "shaped" / betas).read_bytes()
    assert load_world_config(store).vision_tuning == "feature_covariance"
    assert np.isfinite(store.subject("subj01").raw_betas).all()
    with pytest.raises(ConfigError, match="vision_tuning: feature_covariance .* vision_model is null"):
        validate_config(WorldConfig, {"vision_model": None, "vision_tuning": "feature_covariance"})
