"""RANDOM: a seeded uniform number per frame, from its name (order-independent).

Also the engine's tie-break priority, so a run is deterministic for a seed.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np


def name_hash_uniform(names: Sequence[str], seed: int) -> np.ndarray:
    """A uniform [0, 1) number per frame from its name and a seed (order-independent)."""
    h = np.fromiter((zlib.crc32(n.encode()) for n in names), dtype=np.uint64, count=len(names))
    with np.errstate(over="ignore"):
        x = h + np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
