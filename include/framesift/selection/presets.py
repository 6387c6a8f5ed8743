"""Named selection recipes for the trigger form, in Lightly's strategy shape."""

from __future__ import annotations

from typing import Any

from framesift.selection.regime import DIVERSITY, UNCERTAINTY
from framesift.selection.spec import SelectionConfigError

BALANCE = {
    "input": {"type": "PREDICTIONS", "name": "CLASS_DISTRIBUTION"},
    "strategy": {"type": "BALANCE", "distribution": "UNIFORM"},
}

PRESETS: dict[str, list[dict[str, Any]] | None] = {
    "config": None,  # whatever the pipeline YAML says
    "diverse": [DIVERSITY],
    "uncertain": [DIVERSITY, UNCERTAINTY],
    "balanced": [DIVERSITY, UNCERTAINTY, BALANCE],
}


def selection_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """SelectionConfig fields to replace for one run, from the trigger form's params."""
    out: dict[str, Any] = {}
    n, proportion = params.get("n_samples"), params.get("proportion_samples")
    if n not in (None, "", "None"):
        out.update(n_samples=int(n), proportion_samples=None)
    elif proportion not in (None, "", "None"):
        out.update(proportion_samples=float(proportion), n_samples=None)
    preset = params.get("preset") or "config"
    if preset not in PRESETS:
        raise SelectionConfigError(f"unknown selection preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if PRESETS[preset] is not None:
        out["strategies"] = PRESETS[preset]
    return out
