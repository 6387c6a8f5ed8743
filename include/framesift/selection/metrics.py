"""How good a selection is, measured (not a strategy)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from framesift.selection.diversity import min_distance_to


def coverage(embeddings: np.ndarray, selected: Sequence[int] | np.ndarray) -> float:
    """Mean distance from every frame to its nearest selected frame (lower is better)."""
    sel = np.asarray(selected, dtype=np.int64)
    if len(sel) == 0:
        return float("nan")
    d = np.full(len(embeddings), np.inf, dtype=np.float32)
    x = np.asarray(embeddings, dtype=np.float32)
    for a in range(0, len(sel), 256):
        min_distance_to(x, x[sel[a : a + 256]], d)
    return float(d.mean(dtype=np.float64))
