"""TYPICALITY: mean cosine similarity to the k nearest neighbours (dense regions first)."""

from __future__ import annotations

import numpy as np

from framesift.selection import scores as scoring

TYPICALITY_K = 10


TYPICALITY_REFERENCE = 10_000


def typicality_values(x: np.ndarray, dead: np.ndarray, seed: int) -> np.ndarray:
    """TYPICALITY's raw value per frame over the frames not ``dead`` (at most
    TYPICALITY_REFERENCE seeded reference frames)."""
    alive = np.flatnonzero(~dead)
    if len(alive) <= TYPICALITY_REFERENCE:
        sims = np.zeros(len(x), dtype=np.float32)
        sims[alive] = scoring.knn_mean_similarity(x[alive], TYPICALITY_K)
        return sims.astype(np.float64)
    rng = np.random.default_rng(seed)
    ref_rows = np.sort(rng.choice(alive, TYPICALITY_REFERENCE, replace=False))
    ref_t = np.ascontiguousarray(x[ref_rows].T)
    column = np.full(len(x), -1, dtype=np.int64)
    column[ref_rows] = np.arange(len(ref_rows))
    r, k = len(ref_rows), TYPICALITY_K
    out = np.zeros(len(x), dtype=np.float64)
    step = max(1, 16_000_000 // r)
    for a in range(0, len(x), step):
        b = min(len(x), a + step)
        sims = x[a:b] @ ref_t
        own = column[a:b]
        rows = np.flatnonzero(own >= 0)
        sims[rows, own[rows]] = -np.inf  # a reference frame is not its own neighbour
        out[a:b] = np.partition(sims, r - k, axis=1)[:, r - k :].mean(axis=1)
    return out
