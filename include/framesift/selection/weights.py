"""WEIGHTS: a number per frame (a score, numeric metadata, a box count or RANDOM),
min-max scaled once over the candidates (these objectives do not change while picking).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framesift.selection.inputs import SelectionInputs
from framesift.selection.random_values import name_hash_uniform
from framesift.selection.spec import InputType, StrategyEntry, check_task, strategy_error


def minmax_scale(values: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Min-max scale over the alive frames to [0, 1] (float32); NaN -> 0; constant -> 1."""
    vals = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(vals) & alive
    out = np.zeros(len(vals), dtype=np.float32)
    if not finite.any():
        out[alive] = 1.0
        return out
    lo, hi = vals[finite].min(), vals[finite].max()
    if hi <= lo:
        out[np.isfinite(vals)] = 1.0
        return out
    scaled = (vals - lo) / (hi - lo)
    scaled[~np.isfinite(scaled)] = 0.0
    out[:] = np.clip(scaled, 0.0, 1.0)
    return out


def soft_factor(norm: np.ndarray, strength: float, floor: float) -> np.ndarray:
    """A soft objective's factor in the product: ``(floor + (1 - floor) * o) ** |strength|``
    with ``o`` its value scaled to [0, 1] (``1 - o`` for a negative strength). The worst
    frame keeps ``floor ** |strength|``: a soft objective lowers a frame's value but never
    vetoes it (only THRESHOLD removes frames). float32, a new array."""
    o = norm if strength > 0 else 1.0 - norm
    f = np.asarray(o, dtype=np.float32) * np.float32(1.0 - floor)
    f += np.float32(floor)
    return f if abs(strength) == 1 else np.power(f, abs(strength), dtype=np.float32)


@dataclass
class StaticObjective:
    """An objective fixed before the loop (WEIGHTS, SIMILARITY, TYPICALITY): its raw values
    and their scaled form, per frame."""

    index: int
    label: str
    raw: np.ndarray  # float64 (N,)
    norm: np.ndarray  # float32 (N,) in [0, 1]
    strength: float
    max_sum: float | None = None


def numeric_values(inputs: SelectionInputs, i: int, e: StrategyEntry, seed: int) -> np.ndarray:
    """The number per frame that WEIGHTS / THRESHOLD read (float64)."""
    it = e.input.type
    if it is InputType.SCORES:
        check_task(i, e, inputs.task_name)
        scores = inputs.score_arrays()
        if e.input.score not in scores:
            have = ", ".join(sorted(scores)) or "none (no predictions)"
            raise strategy_error(i, "input", "score", f"{e.input.score!r} is not available; scores: {have}")
        return np.asarray(scores[e.input.score], dtype=np.float64)
    if it is InputType.METADATA:
        values = inputs.metadata_values(e.input.key)  # type: ignore[arg-type]
        if values is None:
            have = ", ".join(sorted(inputs.metadata or {})) or "none"
            raise strategy_error(i, "input", "key", f"no metadata {e.input.key!r}; metadata keys: {have}")
        try:
            return np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise strategy_error(
                i,
                "input",
                "key",
                f"metadata {e.input.key!r} is not numeric; {e.strategy.type.value} needs numbers",
            ) from None
    if it is InputType.PREDICTIONS:
        check_task(i, e, inputs.task_name)
        flat = inputs.flat_predictions
        if flat is None:
            raise strategy_error(i, "input", "name", "the inputs have no predictions")
        if e.input.key is None:
            return flat.boxes_per_frame().astype(np.float64)
        if e.input.key not in flat.category_names:
            raise strategy_error(
                i,
                "input",
                "key",
                f"class {e.input.key!r} is not in the schema ({', '.join(flat.category_names)})",
            )
        cls = flat.category_names.index(e.input.key)
        return np.bincount(flat.frame[flat.category == cls], minlength=flat.n_frames).astype(np.float64)
    if it is InputType.RANDOM:
        seed = e.input.random_seed if e.input.random_seed is not None else seed
        return name_hash_uniform(inputs.frame_names, seed)
    raise strategy_error(i, "input", "type", f"{it.value} gives no number per frame")
