"""What a selection did: picks in order, objective values, Lightly's sizes table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SIZE_ROWS = ("Input", "Corrupt", "Duplicate", "Removed", "Selected", "Datapool Input", "Datapool Selected")


@dataclass
class SelectionResult:
    """What a selection did.

    ``selected``: indices into the inputs in pick order; ``anchor``: True for greedy
    picks, False for frames added as part of a sequence. ``objective_values``
    (picks x objectives): each objective's normalised value in [0, 1] for the frame at
    the moment it was picked (NaN for sequence frames); ``raw_values`` the unnormalised
    ones. ``counts`` / ``sizes``: Lightly's sizes table (rows ``SIZE_ROWS``, columns
    Image = frames, Video = distinct videos). ``balance``: per BALANCE strategy the
    classes, target, input and selected distributions.
    """

    selected: np.ndarray
    selected_names: list[str]
    anchor: np.ndarray
    objective_names: list[str]
    objective_values: np.ndarray
    raw_values: np.ndarray
    stop_reason: str
    budget: int
    timings: dict[str, float]
    counts: dict[str, int]
    sizes: dict[str, dict[str, int]]
    balance: list[dict[str, Any]] = field(default_factory=list)
    merged_from: list[tuple[str, int]] | None = None
    spec: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (for the ``selections`` record and the report)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return v

        return {
            "selected": [int(i) for i in self.selected],
            "selected_names": list(self.selected_names),
            "anchor": [bool(a) for a in self.anchor],
            "objective_names": list(self.objective_names),
            "objective_values": [[clean(float(x)) for x in row] for row in self.objective_values],
            "stop_reason": self.stop_reason,
            "budget": self.budget,
            "timings": dict(self.timings),
            "counts": dict(self.counts),
            "sizes": {k: dict(v) for k, v in self.sizes.items()},
            "balance": [
                {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in b.items()}
                for b in self.balance
            ],
            "merged_from": None if self.merged_from is None else [list(m) for m in self.merged_from],
            "spec": self.spec,
        }
