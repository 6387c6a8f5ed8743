"""THRESHOLD: the only strategy that removes frames (a NaN value fails)."""

from __future__ import annotations

import numpy as np

from framesift.selection.spec import ThresholdOperation


def threshold_mask(values: np.ndarray, op: ThresholdOperation, threshold: float) -> np.ndarray:
    """True where a frame passes (a NaN or infinite value never does)."""
    with np.errstate(invalid="ignore"):
        if op is ThresholdOperation.SMALLER:
            ok = values < threshold
        elif op is ThresholdOperation.SMALLER_EQUAL:
            ok = values <= threshold
        elif op is ThresholdOperation.BIGGER:
            ok = values > threshold
        else:
            ok = values >= threshold
    return ok & np.isfinite(values)
