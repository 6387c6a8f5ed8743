"""What a selection did: picks in order, objective values, Lightly's sizes table."""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def combine_results(parts: Sequence[tuple[SelectionResult, int]], budget: int) -> SelectionResult:
    """One result from selections run apart on consecutive slices of one input list (one
    per embedding space): ``parts`` holds each result and the offset of its slice.

    Picks, anchors and objective values are concatenated (indices shifted by the offsets),
    counts and the sizes table summed (Video columns too: the slices share no video), the
    stop reason is ``budget`` only when every part stopped on its budget."""
    if len(parts) == 1 and parts[0][1] == 0:
        return parts[0][0]
    results = [r for r, _ in parts]
    first = results[0]
    reasons = sorted({r.stop_reason for r in results})
    counts: dict[str, int] = {}
    for r in results:
        for key, value in r.counts.items():
            counts[key] = counts.get(key, 0) + int(value)
    sizes = {
        row: {col: sum(int(r.sizes[row][col]) for r in results) for col in first.sizes[row]}
        for row in first.sizes
    }
    timings: dict[str, float] = {}
    for r in results:
        for key, value in r.timings.items():
            timings[key] = timings.get(key, 0.0) + float(value)
    return SelectionResult(
        selected=np.concatenate([np.asarray(r.selected, dtype=np.int64) + off for r, off in parts]),
        selected_names=[n for r in results for n in r.selected_names],
        anchor=np.concatenate([np.asarray(r.anchor, dtype=bool) for r in results]),
        objective_names=list(first.objective_names),
        objective_values=np.concatenate([r.objective_values for r in results]),
        raw_values=np.concatenate([r.raw_values for r in results]),
        stop_reason=reasons[0] if len(reasons) == 1 else "+".join(reasons),
        budget=budget,
        timings=timings,
        counts=counts,
        sizes=sizes,
        balance=list(max(results, key=lambda r: r.counts.get("input", 0)).balance),
        spec=first.spec,
    )
