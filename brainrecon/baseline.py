"""The plain baseline and the ceiling: a ridge decoder against the Bayes-optimal oracle.

The ridge maps each subject's z-scored single-trial betas to a fixed image
embedding (hand-crafted Gabor/colour features; learned embedders replace it
later) and is scored by 300-way retrieval on the averaged test responses,
exactly as the field scores CLIP-space decoders. On a simulated world the
oracle's score, computed from the true encoding model, bounds what any decoder
can reach.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from brainrecon.data.store import Store
from brainrecon.embed.handcrafted import LowLevelEmbedder
from brainrecon.evaluate.retrieval import RetrievalScore, cosine_scores, retrieval_top1
from brainrecon.models.ridge import Ridge, RidgeConfig


@dataclass(frozen=True)
class SubjectResult:
    subject: str
    n_voxels: int
    n_train_trials: int
    n_test_images: int
    ridge: RetrievalScore
    ridge_cosine: float  # mean cosine(predicted, true) embedding on test images
    oracle: RetrievalScore | None

    def to_dict(self) -> dict:
        return {"subject": self.subject, "n_voxels": self.n_voxels, "n_train_trials": self.n_train_trials,
                "n_test_images": self.n_test_images, "ridge": self.ridge.to_dict(),
                "ridge_embedding_cosine": self.ridge_cosine,
                "oracle": self.oracle.to_dict() if self.oracle else None}


def fit_ridge_decoder(store: Store, subject: str, embedder: Callable[[np.ndarray], np.ndarray],
                      config: RidgeConfig | None = None):
    """Ridge from voxels to ``embedder(images)``, fitted on training trials only (folds split by stimulus);
    targets are standardised with training-image statistics. Returns (ridge, mean, std)."""
    data = store.subject(subject)
    train = data.train()
    unique_ids, trial_to_unique = np.unique(train.stimulus_ids, return_inverse=True)
    targets = embedder(store.images_for(unique_ids))
    mean, std = targets.mean(0), targets.std(0) + 1e-6
    ridge = Ridge(config or RidgeConfig()).fit(train.betas, ((targets - mean) / std)[trial_to_unique],
                                               groups=train.stimulus_ids)
    return ridge, mean, std


def evaluate_ridge(store: Store, subject: str, way: int = 300, draws: int = 30, seed: int = 42,
                   config: RidgeConfig | None = None) -> tuple[RetrievalScore, float, int]:
    embedder = LowLevelEmbedder()
    ridge, mean, std = fit_ridge_decoder(store, subject, embedder, config)
    test = store.subject(subject).test()
    predicted = ridge.predict(test.betas).numpy()
    truth = (embedder(store.images_for(test.stimulus_ids)) - mean) / std
    scores = cosine_scores(predicted, truth)
    return retrieval_top1(scores, way, draws, seed), float(np.mean(np.diag(scores))), len(test)


def ceiling_table(store: Store, way: int = 300, draws: int = 30, seed: int = 42,
                  subjects: list[str] | None = None) -> list[SubjectResult]:
    """Ridge and (on simulated worlds) oracle retrieval for each subject."""
    simulated = store.source.get("kind") == "simulated"
    results = []
    for subject in subjects or store.subjects:
        ridge, cosine, n_test = evaluate_ridge(store, subject, way, draws, seed)
        oracle = None
        if simulated:
            from brainrecon.data.simworld.oracle import oracle_retrieval
            oracle = oracle_retrieval(store, subject, way, draws, seed)
        data = store.subject(subject)
        results.append(SubjectResult(subject, data.n_voxels, int((~data.trials.is_test).sum()), n_test, ridge,
                                     cosine, oracle))
    return results


def format_table(results: list[SubjectResult]) -> str:
    """A Markdown table of 300-way top-1 retrieval (mean over draws, +/- 95% CI)."""
    way = results[0].ridge.way
    pct = lambda s, ci: f"{100 * s:.1f} ± {100 * ci:.1f}"  # noqa: E731
    lines = ["| subject | voxels | ridge image | ridge brain | oracle image | oracle brain | ridge / oracle |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        o = r.oracle
        lines.append(f"| {r.subject} | {r.n_voxels} | {pct(r.ridge.image_top1, r.ridge.image_ci95)} | "
                     f"{pct(r.ridge.brain_top1, r.ridge.brain_ci95)} | "
                     + (f"{pct(o.image_top1, o.image_ci95)} | {pct(o.brain_top1, o.brain_ci95)} | "
                        f"{r.ridge.image_top1 / o.image_top1:.2f} |" if o else "n/a | n/a | n/a |"))
    mean = lambda f: float(np.mean([f(r) for r in results]))  # noqa: E731
    if all(r.oracle for r in results):
        lines.append(f"| **mean** | | {100 * mean(lambda r: r.ridge.image_top1):.1f} | "
                     f"{100 * mean(lambda r: r.ridge.brain_top1):.1f} | "
                     f"{100 * mean(lambda r: r.oracle.image_top1):.1f} | "
                     f"{100 * mean(lambda r: r.oracle.brain_top1):.1f} | "
                     f"{mean(lambda r: r.ridge.image_top1) / mean(lambda r: r.oracle.image_top1):.2f} |")
    lines.append(f"\n{way}-way top-1 retrieval in %, mean ± 95% CI over {results[0].ridge.draws} draws; "
                 f"chance {100 / way:.2f}%. Image = brain→image, brain = image→brain.")
    return "\n".join(lines)
