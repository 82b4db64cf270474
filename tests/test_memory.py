"""Ecphory memories, fusion, sample selection and image banks (brainrecon.memory)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from brainrecon.memory import (
    BankError,
    EcphoryConfig,
    ImageBank,
    MemoryConfig,
    MemoryStoreError,
    SelectionKind,
    SubjectMemory,
    build_bank,
    fuse,
    select_first,
    select_samples,
    select_samples_oracle,
)
from brainrecon.evaluate.metrics import two_way_identification
from brainrecon.memory.subject_memory import FORMAT_VERSION
from brainrecon.memory.choice import choose, two_way_fractions
from brainrecon.memory.ecphory import neighbour_weights, renormalize

torch.set_num_threads(1)

T, D, TEXT_T = 9, 16, 5  # tokens and width of the small stand-in CLIP spaces


def _cls_normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x[:, :1], axis=-1, keepdims=True)


def _clustered(rng, n: int, dim: int, n_clusters: int = 50, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.standard_normal((n_clusters, dim))
    labels = rng.integers(0, n_clusters, n)
    return (centres[labels] + spread * rng.standard_normal((n, dim))).astype(np.float32), labels


def _space(rng, n: int):
    """Token and pooled keys/values for n distinct stimuli; keys are noisy 'predictions' of the values."""
    image = _cls_normalised(rng.standard_normal((n, T, D)).astype(np.float32))
    text = rng.standard_normal((n, TEXT_T, D)).astype(np.float32)
    values = {"image_tokens": image, "text_tokens": text,
              "image_pooled": rng.standard_normal((n, D)).astype(np.float32)}
    keys = {name: (v + 0.3 * rng.standard_normal(v.shape)).astype(np.float32) for name, v in values.items()}
    return keys, values


def _brute_force_topk(keys: np.ndarray, queries: np.ndarray, k: int):
    keys = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = queries @ keys.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth, strict=True)]))


# -- search ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("search", ["full", "pooled"])
def test_exact_search_equals_brute_force_cosine(search):
    rng = np.random.default_rng(0)
    keys, values = _space(rng, 300)
    memory = SubjectMemory.build("s1", keys, values, np.arange(300), MemoryConfig(search=search, index="exact"))
    assert memory.index_kind == "exact"
    queries = rng.standard_normal((20, T, D)).astype(np.float32)
    scores, indices = memory.search({"image_tokens": queries}, k=10)

    flat = (lambda x: x.reshape(len(x), -1)) if search == "full" else (lambda x: x.mean(axis=1))
    mean = keys["image_tokens"].mean(axis=0)  # keys and queries are centred by the keys' training mean
    want_scores, want_indices = _brute_force_topk(flat(keys["image_tokens"] - mean), flat(queries - mean), 10)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_search_on_image_and_text_ranks_by_the_mean_cosine():
    rng = np.random.default_rng(1)
    keys, values = _space(rng, 200)
    config = MemoryConfig(search="full", search_on=("image_tokens", "text_tokens"), index="exact")
    memory = SubjectMemory.build("s1", keys, values, np.arange(200), config)
    query = {"image_tokens": rng.standard_normal((4, T, D)).astype(np.float32),
             "text_tokens": rng.standard_normal((4, TEXT_T, D)).astype(np.float32)}
    scores, indices = memory.search(query, k=5)

    def cosines(name):
        mean = keys[name].mean(axis=0)
        q = (query[name] - mean).reshape(4, -1)
        k = (keys[name] - mean).reshape(200, -1)
        return (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (k / np.linalg.norm(k, axis=1, keepdims=True)).T

    mean_cos = (cosines("image_tokens") + cosines("text_tokens")) / 2
    np.testing.assert_array_equal(indices, np.argsort(-mean_cos, axis=1)[:, :5])
    np.testing.assert_allclose(scores, np.take_along_axis(mean_cos, indices, axis=1), atol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_recall_at_10_against_exact(kind):
    rng = np.random.default_rng(2)
    vectors, _ = _clustered(rng, 5000, 64)
    queries, _ = _clustered(np.random.default_rng(3), 200, 64)
    data = {"image_pooled": vectors}
    exact = SubjectMemory.build("s1", data, data, np.arange(5000), MemoryConfig(index="exact",
                                                                               search_on=("image_pooled",)))
    approx = SubjectMemory.build("s1", data, data, np.arange(5000), MemoryConfig(index=kind,
                                                                                search_on=("image_pooled",)))
    assert approx.index_kind == kind
    _, truth = exact.search({"image_pooled": queries}, 10)
    _, found = approx.search({"image_pooled": queries}, 10)
    assert _recall(found, truth) >= 0.9


@pytest.mark.parametrize("search", ["full", "pooled", "pca"])
def test_a_query_equal_to_a_stored_key_finds_that_entry_first(search):
    rng = np.random.default_rng(4)
    keys, values = _space(rng, 120)
    memory = SubjectMemory.build("s1", keys, values, np.arange(1000, 1120), MemoryConfig(search=search, pca_dims=32))
    scores, indices = memory.search({"image_tokens": torch.from_numpy(keys["image_tokens"][::7])}, k=3)
    np.testing.assert_array_equal(indices[:, 0], np.arange(0, 120, 7))
    if search == "pca":  # the cosine less the residuals' product: the share of the key's length in the projection
        centred = keys["image_tokens"][::7].reshape(len(scores), -1) - memory.means["key.image_tokens"].reshape(1, -1)
        inside = np.linalg.norm(centred @ memory.projections["image_tokens"].T, axis=1) / np.linalg.norm(centred, axis=1)
        np.testing.assert_allclose(scores[:, 0], inside ** 2, atol=1e-4)
    else:
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)
    np.testing.assert_array_equal(memory.stimulus_ids[indices[:, 0]], np.arange(1000, 1120, 7))


def test_pca_keys_rank_by_the_whole_keys_cosine_when_some_keys_lie_partly_outside_the_projection():
    # low-rank keys, half of them with as much full-rank noise as signal: the exact cosine ranks those lower,
    # a cosine of the projections alone would not see the noise and rank them as high as the clean ones
    rng = np.random.default_rng(6)
    basis = rng.standard_normal((8, T * D)).astype(np.float32)
    latent = rng.standard_normal((300, 8)).astype(np.float32)
    signal = latent @ basis
    noise = rng.standard_normal(signal.shape).astype(np.float32)
    noise *= (np.arange(300) % 2 * np.linalg.norm(signal, axis=1) / np.linalg.norm(noise, axis=1))[:, None]
    tokens = (signal + noise).reshape(300, T, D)
    data = {"image_tokens": tokens}
    memory = SubjectMemory.build("s1", data, data, np.arange(300),
                                 MemoryConfig(search="pca", pca_dims=8, centre=False))
    queries = (latent[:20] + 0.3 * rng.standard_normal((20, 8)).astype(np.float32)) @ basis
    exact = queries / np.linalg.norm(queries, axis=1, keepdims=True) @ (
        tokens.reshape(300, -1) / np.linalg.norm(tokens.reshape(300, -1), axis=1, keepdims=True)).T
    scores, found = memory.search({"image_tokens": queries.reshape(20, T, D)}, 5)
    truth = np.argsort(-exact, axis=1)[:, :5]
    assert _recall(found, truth) >= 0.95
    # a score is the exact cosine less the residuals' product, so it differs by at most the residuals' share
    projection = memory.projections["image_tokens"]

    def outside(x):  # the share of each row's length outside the projection
        return np.linalg.norm(x - (x @ projection.T) @ projection, axis=1) / np.linalg.norm(x, axis=1)

    bound = outside(queries)[:, None] * outside(tokens.reshape(300, -1))[found]
    assert np.all(np.abs(scores - np.take_along_axis(exact, found, axis=1)) <= bound + 1e-4)


def test_pca_keys_rank_like_full_keys_when_the_keys_are_low_rank():
    rng = np.random.default_rng(5)
    latent = rng.standard_normal((400, 12)).astype(np.float32)
    tokens = (latent @ rng.standard_normal((12, T * D)).astype(np.float32)).reshape(400, T, D)
    data = {"image_tokens": tokens}
    full = SubjectMemory.build("s1", data, data, np.arange(400), MemoryConfig(search="full"))
    pca = SubjectMemory.build("s1", data, data, np.arange(400), MemoryConfig(search="pca", pca_dims=12,
                                                                            pca_fit_rows=100))
    assert pca.search_keys.shape == (400, 12)
    query = {"image_tokens": (rng.standard_normal((10, 12)).astype(np.float32) @ tokens.reshape(400, -1)[:12]
                              ).reshape(10, T, D)}
    full_scores, full_indices = full.search(query, 10)
    pca_scores, pca_indices = pca.search(query, 10)
    np.testing.assert_array_equal(pca_indices, full_indices)
    np.testing.assert_allclose(pca_scores, full_scores, atol=1e-4)


def test_repeated_stimuli_share_one_entry_with_the_averaged_key():
    rng = np.random.default_rng(6)
    keys, values = _space(rng, 40)
    ids = np.array([7, 3, 7, 9] * 10)[:40] + np.repeat(np.arange(10) * 100, 4)  # 3 distinct per group of 4
    for name in values:  # repeats show the same image: identical values
        for stim in np.unique(ids):
            rows = np.flatnonzero(ids == stim)
            values[name][rows] = values[name][rows[0]]
    memory = SubjectMemory.build("s1", keys, values, ids, MemoryConfig(search="pooled"))
    assert len(memory) == len(np.unique(ids)) == 30 and memory.n_trials == 40
    stim = ids[0]
    rows = np.flatnonzero(ids == stim)
    entry = int(np.flatnonzero(memory.stimulus_ids == stim)[0])
    assert memory.trial_counts[entry] == len(rows) == 2
    np.testing.assert_array_equal(memory.values_at("image_tokens", [entry])[0],
                                  values["image_tokens"][rows[0]].astype(np.float16))
    averaged = keys["image_tokens"][rows].mean(axis=0, keepdims=True)
    scores, indices = memory.search({"image_tokens": averaged}, 1)
    assert indices[0, 0] == entry and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


# -- saving and loading ----------------------------------------------------------------------------


@pytest.mark.parametrize(("search", "kind"), [("pooled", "exact"), ("pca", "ivf"), ("full", "hnsw")])
def test_save_load_round_trip_gives_identical_search_results(tmp_path, search, kind):
    rng = np.random.default_rng(7)
    keys, values = _space(rng, 300)
    ids = rng.permutation(300) + 5
    config = MemoryConfig(search=search, index=kind, pca_dims=24, search_on=("image_tokens", "text_tokens"))
    memory = SubjectMemory.build("subj01", keys, values, ids, config)
    query = {"image_tokens": keys["image_tokens"][:25] + 0.5, "text_tokens": keys["text_tokens"][:25]}
    scores, indices = memory.search(query, 10)
    memory.save(tmp_path / "mem")

    for mmap in (True, False):
        loaded = SubjectMemory.load(tmp_path / "mem", mmap=mmap)
        assert (loaded.subject, loaded.config, loaded.index_kind, len(loaded)) == ("subj01", config, kind, 300)
        loaded_scores, loaded_indices = loaded.search(query, 10)
        np.testing.assert_array_equal(loaded_indices, indices)
        np.testing.assert_array_equal(loaded_scores, scores)
        np.testing.assert_array_equal(loaded.stimulus_ids, memory.stimulus_ids)
        for name in values:
            np.testing.assert_array_equal(loaded.values_at(name, indices), memory.values_at(name, indices))

    meta = json.loads((tmp_path / "mem" / "memory.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["n_entries"] == 300
    assert meta["value_shapes"]["image_tokens"] == [T, D]
    official = load_file(str(tmp_path / "mem" / "values.safetensors"))  # our streamed writer is standard
    assert official["value.image_tokens"].dtype == np.float16
    np.testing.assert_array_equal(official["value.image_tokens"], memory.values_at("image_tokens", np.arange(300)))
    np.testing.assert_array_equal(load_file(str(tmp_path / "mem" / "keys.safetensors"))["search_keys"],
                                  memory.search_keys)


def test_load_and_search_errors_name_the_problem(tmp_path):
    rng = np.random.default_rng(8)
    keys, values = _space(rng, 30)
    memory = SubjectMemory.build("s1", keys, values, np.arange(30))
    with pytest.raises(MemoryStoreError, match="does not exist"):
        SubjectMemory.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MemoryStoreError, match="not a subject memory"):
        SubjectMemory.load(tmp_path / "empty")

    memory.save(tmp_path / "mem")
    (tmp_path / "mem" / "index.faiss").rename(tmp_path / "index.bak")
    with pytest.raises(MemoryStoreError, match=r"index\.faiss is missing"):
        SubjectMemory.load(tmp_path / "mem")
    (tmp_path / "index.bak").rename(tmp_path / "mem" / "index.faiss")
    with open(tmp_path / "mem" / "values.safetensors", "ab") as handle:
        handle.write(b"\0" * 8)
    with pytest.raises(MemoryStoreError, match="different saves"):
        SubjectMemory.load(tmp_path / "mem")
    (tmp_path / "mem" / "memory.json").unlink()
    with pytest.raises(MemoryStoreError, match="interrupted"):
        SubjectMemory.load(tmp_path / "mem")

    with pytest.raises(MemoryStoreError, match=r"\(9, 16\)"):
        memory.search({"image_tokens": np.zeros((2, T + 1, D), np.float32)}, 3)
    with pytest.raises(MemoryStoreError, match="has no"):
        memory.search({"text_tokens": keys["text_tokens"][:2]}, 3)
    with pytest.raises(MemoryStoreError, match="k = 31"):
        memory.search({"image_tokens": keys["image_tokens"][:2]}, 31)
    with pytest.raises(MemoryStoreError, match="search_on"):
        SubjectMemory.build("s1", {"image_pooled": keys["image_pooled"]}, values, np.arange(30))
    with pytest.raises(MemoryStoreError, match="n_trials = 29"):
        SubjectMemory.build("s1", keys, values, np.arange(29))
    with pytest.raises(MemoryStoreError, match="lowlevel"):
        SubjectMemory.build("s1", {**keys, "lowlevel": np.zeros((30, 4))}, values, np.arange(30))


# -- fusion ------------------------------------------------------------------------------------------


def _memory_and_prediction(rng, n=60, batch=4):
    keys, values = _space(rng, n)
    memory = SubjectMemory.build("s1", keys, values, np.arange(n))
    prediction = {name: torch.from_numpy(keys[name][:batch] + 0.2 * rng.standard_normal(keys[name][:batch].shape)
                                         .astype(np.float32)) for name in keys}
    return memory, prediction


def test_alpha_one_returns_the_prediction_exactly():
    memory, prediction = _memory_and_prediction(np.random.default_rng(9))
    prediction["lowlevel"] = torch.randn(4, 2, 3, 3)  # not in the memory: passed through
    for config in (EcphoryConfig(k=5, alpha=1.0), EcphoryConfig(k=5, alpha=1.0, fusion="raw", neighbours="each")):
        result = fuse(prediction, memory, config)
        assert set(result.fused_names) == {"image_tokens", "text_tokens", "image_pooled"}
        assert result.stimulus_ids.shape == result.scores.shape == (4, 5)
        for name, x in prediction.items():
            out = result.embeddings[name]  # one embedding per query: k copies of the same would add nothing
            assert isinstance(out, torch.Tensor) and out.dtype == x.dtype and out.shape == (4, 1, *x.shape[1:])
            assert torch.equal(out[:, 0], x)

    as_numpy = {name: x.double().numpy() for name, x in prediction.items()}  # any dtype, numpy in -> numpy out
    result = fuse(as_numpy, memory, EcphoryConfig(k=3, alpha=1.0))
    for name, x in as_numpy.items():
        assert result.embeddings[name].dtype == np.float64
        np.testing.assert_array_equal(result.embeddings[name], x[:, None])


def test_alpha_zero_gives_the_retrieved_values_renormalised():
    memory, prediction = _memory_and_prediction(np.random.default_rng(10))
    result = fuse(prediction, memory, EcphoryConfig(k=4, alpha=0.0, fusion="raw", neighbours="each"))
    image_values = memory.values_at("image_tokens", result.indices).astype(np.float32)
    np.testing.assert_allclose(result.embeddings["image_tokens"].numpy(),
                               image_values / np.linalg.norm(image_values[:, :, :1], axis=-1, keepdims=True),
                               rtol=1e-6)
    np.testing.assert_allclose(result.embeddings["image_tokens"].numpy(), image_values, atol=2e-3)  # already unit CLS
    pooled = memory.values_at("image_pooled", result.indices).astype(np.float32)
    np.testing.assert_allclose(result.embeddings["image_pooled"].numpy(),
                               renormalize("image_pooled", pooled, prediction["image_pooled"].numpy()), rtol=1e-6)
    unscaled = fuse(prediction, memory, EcphoryConfig(k=4, alpha=0.0, renormalize=False, fusion="raw",
                                                               neighbours="each"))
    np.testing.assert_array_equal(unscaled.embeddings["text_tokens"].numpy(),
                                  memory.values_at("text_tokens", result.indices).astype(np.float32))


def test_fused_embeddings_blend_and_follow_the_generator_conventions():
    memory, prediction = _memory_and_prediction(np.random.default_rng(11))
    alpha = 0.6
    raw = fuse(prediction, memory, EcphoryConfig(k=10, alpha=alpha, renormalize=False, fusion="raw",
                                                         neighbours="each"))
    values = memory.values_at("image_tokens", raw.indices).astype(np.float32)
    np.testing.assert_allclose(raw.embeddings["image_tokens"].numpy(),
                               (1 - alpha) * values + alpha * prediction["image_tokens"].numpy()[:, None], rtol=1e-6)

    fused = fuse(prediction, memory, EcphoryConfig(k=10, alpha=alpha, fusion="raw", neighbours="each")).embeddings
    cls_norm = fused["image_tokens"][:, :, 0].norm(dim=-1)
    torch.testing.assert_close(cls_norm, torch.ones_like(cls_norm))
    for name in ("text_tokens", "image_pooled"):  # the prediction's scale
        norms = fused[name].flatten(2).norm(dim=-1)
        want = prediction[name].flatten(1).norm(dim=-1)[:, None].expand_as(norms)
        torch.testing.assert_close(norms, want)
    np.testing.assert_array_equal(raw.stimulus_ids, memory.stimulus_ids[raw.indices])
    assert (np.diff(raw.scores, axis=1) <= 1e-6).all()  # best first


def test_common_scale_fusion_blends_centred_unit_directions_at_the_predictions_length():
    memory, prediction = _memory_and_prediction(np.random.default_rng(21))
    alpha, k = 0.3, 6
    result = fuse(prediction, memory, EcphoryConfig(k=k, alpha=alpha))
    p = prediction["image_pooled"].numpy()
    p_mean, v_mean = memory.prediction_mean("image_pooled"), memory.value_mean("image_pooled")
    values = memory.values_at("image_pooled", result.indices).astype(np.float32) - v_mean
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    weights = np.maximum(result.scores, 0) / np.maximum(result.scores, 0).sum(axis=1, keepdims=True)
    memory_direction = unit((weights[:, :, None] * unit(values)).sum(axis=1))
    direction = unit(alpha * unit(p - p_mean) + (1 - alpha) * memory_direction)
    want = p_mean + np.linalg.norm(p - p_mean, axis=1, keepdims=True) * direction
    out = result.embeddings["image_pooled"].numpy()
    assert out.shape == (4, 1, p.shape[1])
    np.testing.assert_allclose(out[:, 0], want, rtol=1e-4, atol=1e-5)
    # the fused embedding keeps the prediction's distance from its mean: only the direction moved
    np.testing.assert_allclose(np.linalg.norm(out[:, 0] - p_mean, axis=1), np.linalg.norm(p - p_mean, axis=1),
                               rtol=1e-5)

    each = fuse(prediction, memory, EcphoryConfig(k=k, alpha=0.0, neighbours="each")).embeddings["image_pooled"]
    assert each.shape == (4, k, p.shape[1])  # alpha 0: each neighbour's own centred direction
    np.testing.assert_allclose(unit(each.numpy() - p_mean), unit(values), rtol=1e-4, atol=1e-5)


def test_neighbour_weights_follow_similarity_and_fall_back_to_uniform():
    weights = neighbour_weights(np.array([[0.8, 0.2, -0.5], [-0.1, -0.2, -0.3]], np.float32))
    np.testing.assert_allclose(weights, [[0.8, 0.2, 0.0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)


def test_raw_fusion_must_be_one_sample_per_neighbour():
    with pytest.raises(ValueError, match="neighbours: each"):
        EcphoryConfig(fusion="raw")


def test_centre_false_searches_the_raw_cosine_as_psychometry():
    rng = np.random.default_rng(22)
    keys, values = _space(rng, 150)
    keys["image_pooled"] = keys["image_pooled"] + 5.0  # an offset every key shares
    memory = SubjectMemory.build("s", keys, values, np.arange(150), MemoryConfig(search="full", search_on=(
        "image_pooled",), centre=False))
    queries = rng.standard_normal((10, keys["image_pooled"].shape[1])).astype(np.float32) + 5.0
    scores, indices = memory.search({"image_pooled": queries}, k=5)
    want_scores, want_indices = _brute_force_topk(keys["image_pooled"], queries, 5)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert "key.image_pooled" not in memory.means


def test_brain_space_keys_search_with_the_fmri_and_keep_prediction_means():
    rng = np.random.default_rng(23)
    n, voxels = 80, 40
    betas = rng.standard_normal((n, voxels)).astype(np.float32)
    values = {"image_pooled": rng.standard_normal((n, 8)).astype(np.float32)}
    predictions = {"image_pooled": values["image_pooled"] + 1.5}
    memory = SubjectMemory.build("s", {"betas": betas}, values, np.arange(n),
                                 MemoryConfig(search="full", search_on=("betas",)),
                                 prediction_means={"image_pooled": predictions["image_pooled"].mean(axis=0)})
    np.testing.assert_allclose(memory.prediction_mean("image_pooled"), predictions["image_pooled"].mean(axis=0),
                               rtol=1e-5)
    with pytest.raises(MemoryStoreError, match="prediction_means"):
        SubjectMemory.build("s", {"betas": betas}, values, np.arange(n), MemoryConfig(search="full", search_on=(
            "betas",)), prediction_means={"image_pooled": np.zeros(3)})
    noisy = betas[:10] + 0.1 * rng.standard_normal((10, voxels)).astype(np.float32)
    result = fuse({"image_pooled": predictions["image_pooled"][:10]}, memory, EcphoryConfig(k=3, alpha=0.5),
                  query={"betas": noisy})
    np.testing.assert_array_equal(result.stimulus_ids[:, 0], np.arange(10))
    with pytest.raises(MemoryStoreError, match="searches on"):
        fuse({"image_pooled": predictions["image_pooled"][:10]}, memory, EcphoryConfig(k=3))


def test_two_way_fractions_match_the_evaluation_protocol():
    rng = np.random.default_rng(24)
    truth = rng.standard_normal((12, 20))
    predicted = truth + 1.5 * rng.standard_normal((12, 20))
    np.testing.assert_allclose(two_way_fractions(truth, predicted),
                               two_way_identification(truth, predicted, per_item=True), rtol=1e-9)


def test_choice_takes_the_best_setting_whose_gain_excludes_zero_else_off():
    rng = np.random.default_rng(25)
    baseline = rng.uniform(0.4, 0.6, 200)
    scored = {("prediction", 5, 0.5): baseline + 0.10 + 0.02 * rng.standard_normal(200),
              ("brain", 20, 0.25): baseline + 0.20 + 0.02 * rng.standard_normal(200),
              ("brain", 5, 0.75): baseline + 0.5 * rng.standard_normal(200)}  # noisy: not trusted however large
    setting, rows, reason = choose(baseline, scored)
    assert (setting.enabled, setting.keys, setting.k, setting.alpha) == (True, "brain", 20, 0.25)
    assert len(rows) == 3 and "raised" in reason
    setting, _, reason = choose(baseline, {("prediction", 5, 0.5): baseline + 0.3 * rng.standard_normal(200)})
    assert not setting.enabled and "no setting" in reason


# -- selection ---------------------------------------------------------------------------------------


def test_honest_selection_picks_the_sample_closest_to_the_brain_prediction():
    rng = np.random.default_rng(12)
    samples = rng.standard_normal((5, 8, 32)).astype(np.float32)
    brain = rng.standard_normal((5, 32)).astype(np.float32)
    truth = rng.standard_normal((5, 32)).astype(np.float32)
    target = np.array([3, 0, 7, 5, 1])
    samples[np.arange(5), target] = 4 * brain + 0.1 * rng.standard_normal((5, 32))  # scale must not matter

    honest = select_samples(torch.from_numpy(samples), torch.from_numpy(brain))
    np.testing.assert_array_equal(honest.indices, target)
    assert honest.kind is SelectionKind.HONEST and honest.label == "brain-predicted (honest)"
    assert not honest.is_oracle and "ORACLE" not in honest.label
    np.testing.assert_array_equal(honest.pick(samples), samples[np.arange(5), target])

    oracle = select_samples_oracle(samples, truth)
    assert oracle.is_oracle and oracle.label.startswith("ORACLE")
    cos = (samples / np.linalg.norm(samples, axis=-1, keepdims=True)) @ (truth / np.linalg.norm(truth, axis=1,
                                                                                               keepdims=True))[..., None]
    np.testing.assert_array_equal(oracle.indices, cos[..., 0].argmax(axis=1))
    assert select_first(5, 8).indices.tolist() == [0] * 5
    with pytest.raises(MemoryStoreError, match="B, k"):
        select_samples(samples, brain[:4])


# -- image bank --------------------------------------------------------------------------------------


class BlockMeans:
    """A stand-in embedder: mean colour of each 4 x 4 block, centred (48 features for 16 x 16 images)."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls, self.images_seen, self.fail_on_call = 0, 0, fail_on_call

    def pooled(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise RuntimeError("simulated interruption")
        self.images_seen += len(images)
        n = len(images)
        return images.reshape(n, 4, 4, 4, 4, 3).mean(axis=(2, 4)).reshape(n, -1) - 127.5


def _image_folder(path, n=20):
    rng = np.random.default_rng(13)
    path.mkdir()
    (path / "sub").mkdir()
    for i in range(n):
        folder = path / "sub" if i % 5 == 0 else path
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"im{i:02d}.png")
    (path / "notes.txt").write_text("not an image")
    return path


def _own_embeddings(bank: ImageBank, embedder) -> np.ndarray:
    return np.concatenate([embedder.pooled(np.asarray(Image.open(p).convert("RGB"))[None])
                           for p in [bank.image_dir / rel for rel in bank.paths]])


def test_bank_search_returns_each_image_for_its_own_embedding(tmp_path):
    folder = _image_folder(tmp_path / "images")
    bank = build_bank(folder, BlockMeans(), tmp_path / "bank", batch_size=4, shard_size=8, image_size=None,
                      progress=False)
    assert len(bank) == 20 and bank.dim == 48 and bank.index_kind == "exact"
    assert bank.paths[0] == "im01.png" and "sub/im00.png" in bank.paths
    queries = _own_embeddings(bank, BlockMeans())
    scores, paths = ImageBank.load(tmp_path / "bank").search(queries, k=3)
    assert [row[0] for row in paths] == [str(folder / rel) for rel in bank.paths]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    with pytest.raises(BankError, match="dim-48"):
        bank.search(np.zeros((1, 47), np.float32), 1)


def test_interrupted_bank_build_resumes_without_recomputing_finished_shards(tmp_path):
    folder = _image_folder(tmp_path / "images")
    out = tmp_path / "bank"
    with pytest.raises(RuntimeError, match="simulated"):  # 2 batches of 4 fill shard 0; the 3rd call fails
        build_bank(folder, BlockMeans(fail_on_call=3), out, batch_size=4, shard_size=8, image_size=16,
                   progress=False)
    first_shard = out / "shards" / "shard-00000.npy"
    assert first_shard.is_file() and not (out / "shards" / "shard-00001.npy").exists()
    saved = np.load(first_shard)
    with pytest.raises(BankError, match="did not finish"):
        ImageBank.load(out)

    embedder = BlockMeans()
    resumed = build_bank(folder, embedder, out, batch_size=4, shard_size=8, image_size=16, progress=False)
    assert embedder.images_seen == 12  # shards 1 and 2 only
    np.testing.assert_array_equal(np.load(first_shard), saved)
    fresh = build_bank(folder, BlockMeans(), tmp_path / "fresh", batch_size=4, shard_size=8, image_size=16,
                       progress=False)
    queries = _own_embeddings(fresh, BlockMeans())[:, :48]
    assert resumed.search(queries, 5)[1] == fresh.search(queries, 5)[1]

    (folder / "extra.png").write_bytes((folder / "im01.png").read_bytes())
    with pytest.raises(BankError, match="resume=False"):
        build_bank(folder, BlockMeans(), out, batch_size=4, shard_size=8, image_size=16, progress=False)
    restarted = BlockMeans()
    build_bank(folder, restarted, out, batch_size=4, shard_size=8, image_size=16, resume=False, progress=False)
    assert restarted.images_seen == 21


def test_bank_errors_for_empty_folders_and_unreadable_images(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(BankError, match="no images"):
        build_bank(tmp_path / "empty", BlockMeans(), tmp_path / "bank", progress=False)
    folder = _image_folder(tmp_path / "images", n=3)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(BankError, match=r"broken\.jpg"):
        build_bank(folder, BlockMeans(), tmp_path / "bank", image_size=16, progress=False)
    with pytest.raises(BankError, match="ivfpq"):
        build_bank(folder, BlockMeans(), tmp_path / "bank2", index="ivfpq", progress=False)
