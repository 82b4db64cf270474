"""faiss indexes over L2-normalised vectors, where inner product is cosine similarity.

One place that knows how each index kind is made, trained and tuned, shared by
subject memories (thousands to ~100k entries) and image banks (up to millions).

=======  =====================================  ==============================================
kind     faiss index                            when
=======  =====================================  ==============================================
exact    IndexFlatIP                            exact top-k; memory N x d float32
ivf      IndexIVFFlat (inner product)           ~sqrt(N)-fold fewer comparisons, same memory;
                                                nlist = 4 sqrt(N), `nprobe` lists searched
ivfpq    IndexIVFPQ (inner product, 8-bit)      millions of vectors: d/8 code bytes + 8 id bytes
                                                a vector (72 B instead of 2 KB for d = 512)
hnsw     IndexHNSWFlat (inner product)          graph search; fast, no training, but stores
                                                the full vectors plus the graph
=======  =====================================  ==============================================

k-means training (IVF kinds) uses a deterministic subsample and faiss's fixed
seed, so the same vectors always give the same index.

Searches go through `search`, which lets faiss use BLAS matrix products for
batches of 20+ queries. faiss 1.15's default threshold for that is 128,000
queries, and its per-query scan is memory-bound: on the 2-core development
machine 100 queries over 27,000 x 768 took 572 ms without BLAS and 67 ms with it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import numpy as np

INDEX_KINDS = ("exact", "ivf", "ivfpq", "hnsw")
MIN_POINTS_PER_LIST = 39  # faiss's own lower bound for k-means training


def ivf_nlist(n: int) -> int:
    """4 sqrt(N) inverted lists (the usual rule), but never fewer than 39 training points per list."""
    return max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_LIST))


def pq_subquantizers(dim: int) -> int:
    """The largest divisor of `dim` not above dim / 8: about one byte per 8 dimensions."""
    target = max(1, dim // 8)
    return next(m for m in range(target, 0, -1) if dim % m == 0)


def make_index(kind: str, dim: int, n: int, *, hnsw_m: int = 32, hnsw_ef_construction: int = 80):
    """An empty faiss index of `kind` for `n` vectors of `dim` (inner-product metric)."""
    import faiss

    if kind == "exact":
        return faiss.IndexFlatIP(dim)
    if kind == "ivf":
        return faiss.index_factory(dim, f"IVF{ivf_nlist(n)},Flat", faiss.METRIC_INNER_PRODUCT)
    if kind == "ivfpq":
        # "np": no polysemous training, which only speeds up Hamming-filtered search and costs ~7x the training time
        return faiss.index_factory(dim, f"IVF{ivf_nlist(n)},PQ{pq_subquantizers(dim)}x8np",
                                   faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = hnsw_ef_construction
        return index
    raise ValueError(f"unknown index kind {kind!r}; choose one of {INDEX_KINDS}")


def training_sample_size(index, n: int) -> int:
    """How many vectors the index needs for training (0 when it needs none)."""
    import faiss

    if index.is_trained:
        return 0
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    wanted = 64 * ivf.nlist  # within faiss's advice (39 to 256 points per list); k-means cost grows with it
    if isinstance(ivf, faiss.IndexIVFPQ):
        wanted = max(wanted, 39 * 256)  # each 8-bit PQ codebook has 256 centroids, 39 points each
    return min(n, wanted)


def sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    """A deterministic, sorted subsample of row numbers (sorted: memory-map and shard friendly).

    Picks the vectors a faiss index is trained on, and the rows a PCA projection is fitted on.
    """
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def fill_index(index, chunks: Iterable[np.ndarray], training: np.ndarray | None = None):
    """Train the index (if it needs it) on `training`, then add the chunks in order."""
    if not index.is_trained:
        if training is None or len(training) == 0:
            raise ValueError("this index kind needs training vectors")
        index.train(np.ascontiguousarray(training, dtype=np.float32))
    for chunk in chunks:
        index.add(np.ascontiguousarray(chunk, dtype=np.float32))
    return index


BLAS_MIN_QUERIES = 20


@contextlib.contextmanager
def _blas_for_batches():
    """Temporarily let faiss use BLAS for batches of >= 20 queries (restored afterwards)."""
    import faiss

    previous = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = min(previous, BLAS_MIN_QUERIES)
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous


def faiss_search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """index.search with BLAS for batches; queries (B, d) float32, L2-normalised by the caller."""
    with _blas_for_batches():
        return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def configure_search(index, k: int, *, nprobe: int, hnsw_ef_search: int) -> None:
    """Set the query-time knobs: lists probed (IVF) or beam width (HNSW, at least k)."""
    import faiss

    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = max(hnsw_ef_search, k)
        return
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        return
    ivf.nprobe = min(nprobe, ivf.nlist)
