"""The ceilings of a world and a plain ridge against them, in every space a run can decode into.

For each subject of a store, and each target space (the small CLIP's image tokens and pooled
embedding, and the hand-crafted Gabor/colour embedding), this measures 300-way retrieval of:

- **ridge**: a plain ridge from the subject's z-scored single-trial betas to the space, fitted on
  training trials only (alpha by cross-validation with folds split by stimulus), predicting the
  repeat-averaged test responses;
- **ceiling** (simulated worlds): the Bayes posterior mean of the world's shared code given the
  same averaged test responses, under the true encoding model (``oracle.posterior_code``), read
  into the space through a map fitted on training images: the linear map from their true codes,
  its regularised pseudo-inverse, or a read-out trained for retrieval, whichever retrieves best
  among held-out *training* stimuli. It is what a decoder that knows the encoding model reaches
  in that space; being a decoder like any other, it cannot beat the oracle in expectation;
- **capacity** (simulated worlds): the same map applied to the *noise-free* code of the test
  images: how much of the space the world's code carries at all. It sees no noise, so it can
  exceed the oracle; a low capacity says the brain encodes features the space lacks;
- and the Bayes-optimal **oracle** (identification in the true likelihood, every feature).

Scoring: cosine between prediction and candidates after subtracting the mean target of the
subject's *training* images from both. A ridge's predictions shrink toward that mean, which
otherwise dominates an uncentred cosine and makes every prediction look alike (the artefact
Brain-Diffuser removes by rescaling predictions with test statistics; centring with a training
statistic needs none). No test statistic enters any fit, scaling or choice here.

A simulated world is a testbed with a known ceiling: none of these are NSD results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from brainrecon.data.simworld.config import SIMULATED_NOTE
from brainrecon.data.simworld.oracle import oracle_evidence, oracle_loglik, posterior_code, true_code
from brainrecon.data.store import Store
from brainrecon.embed.handcrafted import LowLevelEmbedder
from brainrecon.io import atomic_write_json
from brainrecon.evaluate.retrieval import RetrievalScore, cosine_scores, retrieval_top1
from brainrecon.models.ridge import Ridge, RidgeConfig
from brainrecon.pretrained import SIMWORLD
from brainrecon.train.targets import TargetsConfig, load_targets

SPACES = ("clip_tokens", "clip_pooled", "handcrafted")
SPACE_LABELS = {"clip_tokens": "small-CLIP tokens", "clip_pooled": "small-CLIP pooled",
                "handcrafted": "hand-crafted"}
# the space of this table that a run's retrieval target lives in (small-CLIP runs)
SPACE_OF_TARGET = {"image_tokens": "clip_tokens", "image_pooled": "clip_pooled"}
RIDGE_COMPONENTS = 256  # wider spaces are ridged into their top training principal components


def readout_label(readout) -> str:
    if readout is None or isinstance(readout, str):
        return readout or "linear"
    return f"pseudo-inverse, lambda {readout:g}"


@dataclass(frozen=True)
class SpaceResult:
    ridge: RetrievalScore
    ridge_cosine: float  # mean centred cosine(predicted, true) on test images
    ceiling: RetrievalScore | None
    capacity: RetrievalScore | None
    ceiling_readout: object = None  # None: the linear map; a float: the pseudo-inverse's lambda; "contrastive"

    def to_dict(self) -> dict:
        return {"ridge": self.ridge.to_dict(), "ridge_cosine": self.ridge_cosine,
                "ceiling": self.ceiling.to_dict() if self.ceiling else None,
                "ceiling_readout": readout_label(self.ceiling_readout),
                "capacity": self.capacity.to_dict() if self.capacity else None}


@dataclass(frozen=True)
class SubjectResult:
    subject: str
    n_voxels: int
    n_train_trials: int
    n_test_images: int
    oracle: RetrievalScore | None
    spaces: dict[str, SpaceResult]

    def to_dict(self) -> dict:
        return {"subject": self.subject, "n_voxels": self.n_voxels, "n_train_trials": self.n_train_trials,
                "n_test_images": self.n_test_images, "oracle": self.oracle.to_dict() if self.oracle else None,
                "spaces": {name: result.to_dict() for name, result in self.spaces.items()}}


def space_targets(store: Store, clip: str | None = SIMWORLD, batch_size: int = 256,
                  spaces: tuple[str, ...] = SPACES) -> dict[str, np.ndarray]:
    """Every stimulus's target in each of ``spaces``, flattened (rows in the store's stimulus order).

    Tokens are the "versatile" style the token-decoding models train on (CLS included, projected,
    CLS-normalised); pooled is the CLIP image embedding. They come from the training targets'
    cache (one CLIP pass for both, shared with every run on the store), so the values are exactly
    what runs train on. ``clip=None`` leaves the CLIP spaces out.
    """
    unknown = sorted(set(spaces) - set(SPACES))
    if unknown or not spaces:
        raise ValueError(f"spaces must be one or more of {', '.join(SPACES)}; got {', '.join(spaces) or 'none'}")
    images = store.images_for(np.asarray(store.stimuli.stimulus_id))
    out = {}
    if "handcrafted" in spaces:
        out["handcrafted"] = LowLevelEmbedder()(images).astype(np.float64)
    if clip is not None and {"clip_tokens", "clip_pooled"} & set(spaces):
        config = TargetsConfig(clip=clip, image_tokens=True, image_pooled=True, batch_size=batch_size)
        targets = load_targets(store, config, progress=False)
        out["clip_tokens"] = np.asarray(targets.arrays["image_tokens"], dtype=np.float64).reshape(len(images), -1)
        out["clip_pooled"] = np.asarray(targets.arrays["image_pooled"], dtype=np.float64)
    return {name: out[name] for name in SPACES if name in out and name in spaces}


def centred_retrieval(predicted: np.ndarray, truth: np.ndarray, mean: np.ndarray, way: int, draws: int,
                      seed: int) -> tuple[RetrievalScore, float]:
    scores = cosine_scores(predicted - mean, truth - mean)
    return retrieval_top1(scores, way, draws, seed), float(np.mean(np.diag(scores)))


def _reduced(targets: np.ndarray, components: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """(coordinates, basis): centred targets in their top principal components, when wider than that.

    The components come from a randomised range finder (Halko, Martinsson & Tropp 2011: two power
    iterations, fixed seed), an order of magnitude faster than a full SVD of thousands of columns."""
    if targets.shape[1] <= components:
        return targets, None
    probe = np.random.default_rng(seed).standard_normal((targets.shape[1], components + 16))
    range_, _ = np.linalg.qr(targets @ probe)
    for _ in range(2):
        range_, _ = np.linalg.qr(targets @ (targets.T @ range_))
    _, _, vt = np.linalg.svd(range_.T @ targets, full_matrices=False)
    basis = vt[:components]
    return targets @ basis.T, basis


def ridge_into_spaces(store: Store, subject: str, targets: dict[str, np.ndarray], config: RidgeConfig | None = None,
                      features=None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One ridge from the subject's training trials into every space at once (one decomposition per
    fold; each space gets its own cross-validated alpha). Returns predicted test targets and the
    training-image mean of each space. ``features`` (betas -> features, row by row) probes what a
    model's fixed first stage keeps, e.g. MindBridge's pooling; default: the betas themselves."""
    data = store.subject(subject)
    train, test = data.train(), data.test()
    features = features or (lambda betas: betas)
    rows = store.stimuli.rows(train.stimulus_ids)
    unique_rows = np.unique(rows)
    means, parts, bases, groups, start = {}, [], {}, [], 0
    for name, values in targets.items():
        means[name] = values[unique_rows].mean(0)
        reduced, bases[name] = _reduced(values[unique_rows] - means[name], RIDGE_COMPONENTS)
        parts.append(reduced[np.searchsorted(unique_rows, rows)])
        groups.append(slice(start, start + reduced.shape[1]))
        start += reduced.shape[1]
    ridge = Ridge(config or RidgeConfig()).fit(features(train.betas), np.concatenate(parts, 1),
                                               groups=train.stimulus_ids, target_groups=groups)
    predicted = ridge.predict(features(test.betas)).numpy()
    out = {}
    for (name, basis), group in zip(bases.items(), groups):
        part = predicted[:, group]
        out[name] = (part @ basis if basis is not None else part) + means[name]
    return out, means


# How the ceiling reads a code estimate into a space. Cosine retrieval weights each direction of a
# space by its variance there, not by how reliably the brain carries it, so the plain linear map from
# the code (None) is not the best read-out: its regularised pseudo-inverse (a float: ridge lambda as a
# fraction of the mean eigenvalue) reweights directions toward the likelihood's, and a read-out trained
# for retrieval ("contrastive") learns the weighting, as the contrastive decoders do.
CEILING_READOUTS = (None, 0.01, 0.1, 1.0, 10.0, "contrastive")
VALIDATION_SHARE = 0.2  # of the subject's training stimuli, to choose the read-out
CONTRASTIVE_STEPS, CONTRASTIVE_TEMPERATURE, CONTRASTIVE_LR = 100, 0.05, 3e-3
# Stimuli in one step of the contrastive read-out. A full-batch InfoNCE step costs n^2: a 1,500-image world (the
# default before the switch, isotropic-code64-noise3) trains its read-out on 1,200 stimuli (80% of 1,500), and up
# to there every step takes them all, as it always has. A larger world draws a random batch of this size per step
# (seeded), so the cost grows with n, not n^2. On the 3,000-image default world (2,400 stimuli) that moved no
# subject's ceiling in any space by more than 0.9 points, and the space means over its four subjects by under 0.4
# (docs/simulated-world.md, the ceiling frontier).
CONTRASTIVE_BATCH = 1200


def _read_out(code_map: Ridge, code: np.ndarray, readout, learned: torch.Tensor | None = None) -> np.ndarray:
    """Predicted targets (n, D) of code estimates under one read-out (centred where the map's mean is)."""
    if readout is None:
        return code_map.predict(code).numpy()
    centred = code - code_map.x_mean.numpy()
    if readout == "contrastive":
        return centred @ learned.numpy() + code_map.y_mean.numpy()
    weight = code_map.weight.numpy()  # (code_dims, D)
    gram = weight @ weight.T
    lam = readout * np.trace(gram) / len(gram)
    return centred @ np.linalg.solve(gram + lam * np.eye(len(gram)), weight) + code_map.y_mean.numpy()


def _contrastive_readout(code_map: Ridge, code: np.ndarray, targets: np.ndarray, seed: int,
                         steps: int = CONTRASTIVE_STEPS, batch: int = CONTRASTIVE_BATCH) -> torch.Tensor:
    """A (code_dims, D) read-out trained with InfoNCE (CLIP's symmetric loss) to pick each training
    stimulus's own centred target among the others' (all of them, or a random ``batch`` of them per step
    where there are more), from its Bayes code estimate. It starts at the linear map and lives in the span
    of the targets' top principal components, where the cosine to a (normalised) target is exact and cheap."""
    centred = targets - code_map.y_mean.numpy()
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    _, basis = _reduced(centred, RIDGE_COMPONENTS, seed)
    basis = np.eye(centred.shape[1]) if basis is None else basis  # (r, D), orthonormal rows
    x = torch.as_tensor(code - code_map.x_mean.numpy(), dtype=torch.float32)
    y = torch.as_tensor(unit @ basis.T, dtype=torch.float32)
    weight = torch.nn.Parameter(torch.as_tensor(code_map.weight.numpy() @ basis.T, dtype=torch.float32))
    optimiser = torch.optim.Adam([weight], lr=CONTRASTIVE_LR)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(min(batch, len(x)))
    for _ in range(steps):
        rows = torch.randperm(len(x), generator=generator)[:batch] if len(x) > batch else slice(None)
        logits = torch.nn.functional.normalize(x[rows] @ weight, dim=1) @ y[rows].T / CONTRASTIVE_TEMPERATURE
        loss = (torch.nn.functional.cross_entropy(logits, labels)
                + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return weight.detach() @ torch.as_tensor(basis, dtype=torch.float32)


@dataclass(frozen=True)
class _CodeEstimates:
    """The Bayes code estimates and true codes a subject's ceilings are computed from."""

    train_ids: np.ndarray
    train_true: np.ndarray
    train_posterior: np.ndarray  # from the training trials: for choosing and training the read-out only
    test_posterior: np.ndarray
    test_true: np.ndarray

    @classmethod
    def of(cls, store: Store, subject: str, test_evidence) -> "_CodeEstimates":
        train = oracle_evidence(store, subject, "train")
        train_true = true_code(store, subject, train.stimulus_ids)
        prior = (train_true.mean(0), np.cov(train_true, rowvar=False))
        return cls(train.stimulus_ids, train_true, posterior_code(train, *prior), posterior_code(test_evidence, *prior),
                   true_code(store, subject, test_evidence.stimulus_ids))


@dataclass(frozen=True)
class _Readout:
    choice: object  # an entry of CEILING_READOUTS
    code_map: Ridge  # true code -> targets, fitted on the training images
    learned: torch.Tensor | None  # the contrastive read-out's weights


def _choose_readout(store: Store, values: np.ndarray, codes: _CodeEstimates, seed: int) -> _Readout:
    """The read-out with the best retrieval among held-out *training* stimuli. The maps are fitted on the
    other training images (the linear map from their true codes, the contrastive read-out from their
    Bayes code estimates); the held-out ones are decoded from their code estimates."""
    order = np.random.default_rng(seed).permutation(len(codes.train_ids))
    cut = int(VALIDATION_SHARE * len(order))
    held, fit = np.sort(order[:cut]), np.sort(order[cut:])
    rows = store.stimuli.rows(codes.train_ids)
    code_map = Ridge(RidgeConfig()).fit(codes.train_true[fit], values[rows[fit]])
    learned = _contrastive_readout(code_map, codes.train_posterior[fit], values[rows[fit]], seed)
    mean, truth = values[rows[fit]].mean(0), values[rows[held]]
    scores = {}
    for readout in CEILING_READOUTS:
        predicted = _read_out(code_map, codes.train_posterior[held], readout, learned)
        scores[readout] = centred_retrieval(predicted, truth, mean, min(300, len(held)), 10, seed)[0].image_top1
    best = max(CEILING_READOUTS, key=lambda r: (scores[r], r is None))
    # refit the closed-form map on every training image; the contrastive read-out keeps the map it was
    # trained around (fitted on the 80% of training images outside the held-out share), which then also
    # gives that space's capacity
    if best != "contrastive":
        code_map = Ridge(RidgeConfig()).fit(codes.train_true, values[rows])
    return _Readout(best, code_map, learned)


def space_ceiling(store: Store, values: np.ndarray, codes: _CodeEstimates, truth: np.ndarray, mean: np.ndarray,
                  way: int, draws: int, seed: int) -> tuple[RetrievalScore, RetrievalScore, object]:
    """(ceiling, capacity, read-out) of one space: the Bayes code estimate of the test responses, and the
    noise-free test code, read into the space by a map fitted on the training images' true codes."""
    readout = _choose_readout(store, values, codes, seed)
    predicted = _read_out(readout.code_map, codes.test_posterior, readout.choice, readout.learned)
    ceiling = centred_retrieval(predicted, truth, mean, way, draws, seed)[0]
    capacity = centred_retrieval(readout.code_map.predict(codes.test_true).numpy(), truth, mean, way, draws,
                                  seed)[0]
    return ceiling, capacity, readout.choice


def subject_ceilings(store: Store, subject: str, targets: dict[str, np.ndarray], way: int = 300,
                     draws: int = 30, seed: int = 42) -> SubjectResult:
    data = store.subject(subject)
    test_ids = data.test().stimulus_ids
    test_rows = store.stimuli.rows(test_ids)
    predicted, means = ridge_into_spaces(store, subject, targets)
    codes, oracle = None, None
    if store.source.get("kind") == "simulated":
        evidence = oracle_evidence(store, subject)
        if not np.array_equal(evidence.stimulus_ids, test_ids):
            raise ValueError("the oracle's test stimuli differ from the store's test split")
        oracle = retrieval_top1(oracle_loglik(evidence), way, draws, seed, loglik=True)
        codes = _CodeEstimates.of(store, subject, evidence)
    spaces = {}
    for name, values in targets.items():
        truth = values[test_rows]
        ridge, cosine = centred_retrieval(predicted[name], truth, means[name], way, draws, seed)
        ceiling = capacity = readout = None
        if codes is not None:
            ceiling, capacity, readout = space_ceiling(store, values, codes, truth, means[name], way, draws, seed)
        spaces[name] = SpaceResult(ridge, cosine, ceiling, capacity, readout)
    return SubjectResult(subject, data.n_voxels, int((~data.trials.is_test).sum()), len(test_ids), oracle, spaces)


def ceiling_table(store: Store, way: int = 300, draws: int = 30, seed: int = 42,
                  subjects: list[str] | None = None, clip: str | None = SIMWORLD,
                  spaces: tuple[str, ...] = SPACES) -> list[SubjectResult]:
    """Oracle, space ceilings and ridge for each subject (ceilings on simulated worlds only), in ``spaces``.
    Each space's figures are its own (its ridge alpha, read-out and draws), so a table of fewer spaces gives
    the same figures for those it has, in less time."""
    targets = space_targets(store, clip, spaces=spaces)
    return [subject_ceilings(store, subject, targets, way, draws, seed) for subject in subjects or store.subjects]


def _pct(score: RetrievalScore | None) -> str:
    return f"{100 * score.image_top1:.1f}" if score else "n/a"


def format_table(results: list[SubjectResult]) -> str:
    """A Markdown table: per subject, the oracle, and per space the ceiling and the ridge (image retrieval)."""
    spaces = list(results[0].spaces)
    first = next(iter(results[0].spaces.values())).ridge
    head = "| subject | voxels | oracle |" + "".join(f" {SPACE_LABELS[s]} ceiling | {SPACE_LABELS[s]} ridge |"
                                                      for s in spaces)
    lines = [head, "|---|---:|---:|" + "---:|---:|" * len(spaces)]
    for r in results:
        oracle = f"{_pct(r.oracle)} ± {100 * r.oracle.image_ci95:.1f}" if r.oracle else "n/a"
        cells = "".join(f" {_pct(r.spaces[s].ceiling)} | {_pct(r.spaces[s].ridge)} ± "
                        f"{100 * r.spaces[s].ridge.image_ci95:.1f} |" for s in spaces)
        lines.append(f"| {r.subject} | {r.n_voxels} | {oracle} |{cells}")
    if all(r.oracle for r in results):
        mean = lambda f: float(np.mean([f(r) for r in results]))  # noqa: E731
        oracle = mean(lambda r: r.oracle.image_top1)
        cells = ""
        for s in spaces:
            ceiling = mean(lambda r: r.spaces[s].ceiling.image_top1)
            ridge = mean(lambda r: r.spaces[s].ridge.image_top1)
            cells += f" {100 * ceiling:.1f} ({ceiling / oracle:.2f}) | {100 * ridge:.1f} ({ridge / oracle:.2f}) |"
        lines.append(f"| **mean (÷ oracle)** | | {100 * oracle:.1f} |{cells}")
    lines.append(f"\n{first.way}-way top-1 image retrieval (brain → image) in %, mean over {first.draws} draws "
                 f"(± 95% CI); chance {100 / first.way:.2f}%. Oracle: Bayes-optimal identification under the true "
                 f"model. Ceiling: the Bayes estimate of the world's code, read into the space (read-out chosen on "
                 f"held-out training stimuli). Ridge: voxels → "
                 f"space. Cosine after subtracting the training images' mean target.")
    return "\n".join(lines)


CEILINGS_FILE = "ceilings.json"


def save_ceilings(store: Store, results: list[SubjectResult]) -> Path:
    """Store the table beside the world (``STORE/ceilings.json``), tied to the store's manifest hash."""
    first = next(iter(results[0].spaces.values())).ridge
    path = store.root / CEILINGS_FILE
    atomic_write_json(path, {"store_manifest_sha256": store.manifest_sha256, "way": first.way,
                             "draws": first.draws, "scoring": "cosine after subtracting the training images' "
                                                             "mean target", "spaces": list(results[0].spaces),
                             "note": SIMULATED_NOTE, "subjects": [r.to_dict() for r in results]})
    return path


def load_ceilings(store: Store) -> dict | None:
    """The stored table, or None when there is none or it was computed for another version of the store."""
    path = store.root / CEILINGS_FILE
    if not path.is_file():
        return None
    table = json.loads(path.read_text())
    return table if table.get("store_manifest_sha256") == store.manifest_sha256 else None
