"""SIMILARITY: ``(1 + max cosine similarity to a query set) / 2`` per frame."""

from __future__ import annotations

import numpy as np

from framesift.selection.diversity import ROW_CHUNK
from framesift.selection.inputs import SelectionInputs
from framesift.selection.spec import StrategyEntry, strategy_error


def similarity_values(inputs: SelectionInputs, x: np.ndarray, i: int, e: StrategyEntry) -> np.ndarray:
    """SIMILARITY's raw value per frame; ``x``: the (normalised) embeddings."""
    inp = e.input
    if inp.query_embeddings is not None:
        q = np.asarray(inp.query_embeddings, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
    elif inp.query_frames is not None:
        pos = {name: j for j, name in enumerate(inputs.frame_names)}
        missing = [f for f in inp.query_frames if f not in pos]
        if missing:
            raise strategy_error(i, "input", "query_frames", f"not among the input frames: {missing[:5]}")
        q = x[[pos[f] for f in inp.query_frames]]
    else:
        sets = inputs.query_sets or {}
        keys = [f"{inp.dataset_id}/{inp.tag_name}", str(inp.tag_name), str(inp.dataset_id)]
        found = next((sets[k] for k in keys if k in sets), None)
        if found is None:
            raise strategy_error(
                i, "input", "tag_name", f"query set {keys[0]!r} not given (SelectionInputs.query_sets)"
            )
        q = np.asarray(found, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != x.shape[1] or len(q) == 0:
        raise strategy_error(i, "input", "query_embeddings", f"expected (queries, {x.shape[1]}) embeddings")
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    best = np.full(inputs.n, -1.0, dtype=np.float32)
    qt = np.ascontiguousarray(q.T)
    for a in range(0, inputs.n, ROW_CHUNK):
        b = min(inputs.n, a + ROW_CHUNK)
        best[a:b] = (x[a:b] @ qt).max(axis=1)
    return (1.0 + best.astype(np.float64)) / 2.0
