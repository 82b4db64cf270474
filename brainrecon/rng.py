"""Deterministic, order-independent random streams.

Each consumer derives its own generator from the world seed and a tuple of
keys (e.g. ``("subject", 2, "session", 5)``), so results do not depend on the
order in which parts are generated or on chunk sizes.
"""

from __future__ import annotations

import zlib

import numpy as np


def _key_to_int(key: object) -> int:
    return zlib.crc32(repr(key).encode()) if not isinstance(key, int) else key


def derive_rng(seed: int, *keys: object) -> np.random.Generator:
    entropy = [int(seed)] + [_key_to_int(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(entropy))
