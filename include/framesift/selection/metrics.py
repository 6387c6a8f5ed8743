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


def closest_pairs(embeddings: np.ndarray, selected: Sequence[int] | np.ndarray, below: float) -> dict:
    """Redundancy of a selection: the closest pair of selected frames (positions into
    ``selected`` and their distance) and how many pairs are closer than ``below``."""
    sel = np.asarray(selected, dtype=np.int64)
    if len(sel) < 2:
        return {"closest": None, "pairs_below": 0, "below": below}
    x = np.asarray(embeddings, dtype=np.float32)[sel].astype(np.float64)
    d = np.sqrt(np.maximum(2.0 - 2.0 * (x @ x.T), 0.0))
    upper = np.triu_indices(len(sel), 1)
    pair = int(np.argmin(d[upper]))
    i, j = int(upper[0][pair]), int(upper[1][pair])
    return {
        "closest": [i, j, round(float(d[i, j]), 5)],
        "pairs_below": int((d[upper] < below).sum()),
        "below": below,
    }


def shot_coverage(shots: Sequence[str], videos: Sequence[str], selected: Sequence[int] | np.ndarray) -> dict:
    """How many of the shots extraction recorded have at least one pick, per video
    (``{video: {"shots": n, "covered": m}}``) and in all."""
    picked = {shots[int(i)] for i in selected}
    per_video: dict[str, dict[str, int]] = {}
    for shot, video in dict(zip(shots, videos, strict=True)).items():
        row = per_video.setdefault(video, {"shots": 0, "covered": 0})
        row["shots"] += 1
        row["covered"] += shot in picked
    return {
        "shots": sum(r["shots"] for r in per_video.values()),
        "covered": sum(r["covered"] for r in per_video.values()),
        "videos": per_video,
    }
