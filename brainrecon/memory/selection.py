"""Pick one of the k images generated per test trial, and say how it was picked.

Psychometry and MindBridge keep, of their k samples, the one whose CLIP image
embedding is closest to *the ground-truth test image* (the released inference
code of Psychometry, Quan et al., CVPR 2024, and of MindBridge, Wang et al.,
CVPR 2024). That uses the answer to choose the answer: the reported metrics are then
not those of a decoder that only sees the brain. MindEye1's "second-order
selection" instead compares the samples with the *brain-predicted* embedding,
which is available at test time. That honest choice is the default here; the
oracle is a separate function, kept only to reproduce published figures, and
every result carries a label saying which one it is, to be printed next to any
number computed from it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from brainrecon.memory._arrays import l2_normalize, to_numpy
from brainrecon.memory.errors import MemoryStoreError


class SelectionKind(enum.Enum):
    HONEST = "brain-predicted (honest)"
    ORACLE = "ORACLE: ground-truth image (leaks the answer; for comparison only)"
    FIRST = "first sample (no selection)"


@dataclass(frozen=True)
class Selection:
    """The chosen sample per query, the cosines it was chosen by, and how."""

    indices: np.ndarray  # (B,) int64, in [0, k)
    similarities: np.ndarray  # (B, k) float32 cosine of each sample to the reference (zeros for FIRST)
    kind: SelectionKind

    @property
    def label(self) -> str:
        return self.kind.value

    @property
    def is_oracle(self) -> bool:
        return self.kind is SelectionKind.ORACLE

    def pick(self, samples):
        """samples[b, indices[b]] for each b: (B, k, ...) -> (B, ...); works for numpy arrays and tensors."""
        return samples[np.arange(len(self.indices)), self.indices]


def _cosines(samples, reference, reference_name: str) -> np.ndarray:
    samples, reference = to_numpy(samples, np.float32), to_numpy(reference, np.float32)
    if samples.ndim < 2 or reference.shape[0] != samples.shape[0] or reference.shape[1:] != samples.shape[2:]:
        raise MemoryStoreError(f"sample embeddings must be (B, k, *shape) and the {reference_name} (B, *shape); "
                               f"got {samples.shape} and {reference.shape}")
    batch, k = samples.shape[:2]
    flat = l2_normalize(samples.reshape(batch, k, -1))
    ref = l2_normalize(reference.reshape(batch, 1, -1))
    return (flat * ref).sum(axis=-1)


def select_samples(sample_embeddings, brain_embedding) -> Selection:
    """Choose, per query, the sample whose embedding has the highest cosine to the brain-predicted embedding.

    sample_embeddings: (B, k, *shape) embeddings of the k generated images
    (e.g. CLIP image embeddings); brain_embedding: (B, *shape) the model's
    prediction in the same space. Ties go to the lower sample index.
    """
    similarities = _cosines(sample_embeddings, brain_embedding, "brain embedding")
    return Selection(similarities.argmax(axis=1).astype(np.int64), similarities.astype(np.float32),
                     SelectionKind.HONEST)


def select_samples_oracle(sample_embeddings, true_embedding) -> Selection:
    """ORACLE selection against the ground-truth test image's embedding, as Psychometry and MindBridge report.

    Leaks the test label; use only to compare with published figures, and
    report `Selection.label` next to every number computed from it.
    """
    similarities = _cosines(sample_embeddings, true_embedding, "true embedding")
    return Selection(similarities.argmax(axis=1).astype(np.int64), similarities.astype(np.float32),
                     SelectionKind.ORACLE)


def select_first(n_queries: int, k: int) -> Selection:
    """No selection: always sample 0 (the baseline the other two are compared with)."""
    return Selection(np.zeros(n_queries, np.int64), np.zeros((n_queries, k), np.float32), SelectionKind.FIRST)
