"""DIVERSITY: distances on the unit sphere to the nearest selected (or datapool) frame.

The engine keeps, per frame, an upper bound of that distance and refreshes it lazily
(see :mod:`framesift.selection.engine`); these are the vector kernels it uses, chunked so
that memory stays O(chunk x centres), never N x N.
"""

from __future__ import annotations

import numpy as np

ROW_CHUNK = 65_536  # rows per chunk in matrix products over the embeddings


DUPLICATE_DISTANCE = 1e-3  # float32 round-off on the unit sphere is ~3e-4


EMPTY_DISTANCE = 2.0  # distance of any frame to an empty selected set


def row_norms(x: np.ndarray) -> np.ndarray:
    out = np.empty(len(x), dtype=np.float32)
    for a in range(0, len(x), ROW_CHUNK):
        b = min(len(x), a + ROW_CHUNK)
        chunk = x[a:b]
        out[a:b] = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
    return out


def min_distance_to(
    x: np.ndarray, centres: np.ndarray, out: np.ndarray, rows: np.ndarray | None = None
) -> None:
    """out = min(out, distance from each row of x (or x[rows]) to its nearest centre).

    Unit vectors: d = sqrt(2 - 2 max cos). Chunked: O(chunk x centres) memory.
    """
    if len(centres) == 0:
        return
    c_t = np.ascontiguousarray(centres.T)
    n = len(x) if rows is None else len(rows)
    step = max(1, min(ROW_CHUNK, (16_000_000 // max(1, len(centres)))))
    for a in range(0, n, step):
        b = min(n, a + step)
        if rows is None:
            sims = x[a:b] @ c_t
            target = slice(a, b)
        else:
            sel = rows[a:b]
            sims = x[sel] @ c_t
            target = sel
        best = sims.max(axis=1) if sims.shape[1] > 1 else sims[:, 0]
        np.clip(best, -1.0, 1.0, out=best)
        d = np.sqrt(np.maximum(2.0 - 2.0 * best, 0.0, dtype=np.float32))
        if rows is None:
            np.minimum(out[target], d, out=out[target])
        else:
            out[target] = np.minimum(out[target], d)


def exact_duplicates(x: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Indices of alive rows that repeat an earlier alive row exactly."""
    idx = np.flatnonzero(alive)
    if len(idx) < 2:
        return np.empty(0, dtype=np.int64)
    rng = np.random.default_rng(12345)
    proj = rng.standard_normal((x.shape[1], 2)).astype(np.float32)
    keys = np.empty((len(idx), 2), dtype=np.float32)
    step = ROW_CHUNK
    for a in range(0, len(idx), step):
        keys[a : a + step] = x[idx[a : a + step]] @ proj
    # equal rows have equal keys; sorted by key then index, a copy follows its original
    order = np.lexsort((idx, keys[:, 1], keys[:, 0]))
    k_sorted = keys[order]
    same = np.all(k_sorted[1:] == k_sorted[:-1], axis=1)
    dups = [
        int(idx[order[pos + 1]])
        for pos in np.flatnonzero(same)
        if np.array_equal(x[idx[order[pos + 1]]], x[idx[order[pos]]])
    ]
    return np.asarray(sorted(set(dups)), dtype=np.int64)
