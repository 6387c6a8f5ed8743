"""The budget-aware default recipe: what the default strategies favour depends on how many
frames are labeled already (none of Lightly, FiftyOne or Label Studio adapts this).

With few labels a detector's uncertainty is noise and pure k-center picks outliers; the
cold-start literature (TypiClust, Hacohen et al. 2022; ProbCover, Yehuda et al. 2022) says
cover typical, dense regions first. So while the datapool (frames selected before) holds
fewer than ``selection.cold_start_labels`` frames the default recipe is DIVERSITY x
TYPICALITY; from there to twice that, WEIGHTS on ``uncertainty_entropy`` gains strength
linearly while TYPICALITY loses it; beyond, DIVERSITY x uncertainty (Lightly's recipe). In
every regime a BALANCE over shots (where extraction recorded them) spreads the picks over
the cuts of a video. Only the default recipe adapts: strategies named in the config run as
written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DIVERSITY = {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}
UNCERTAINTY = {"input": {"type": "SCORES", "score": "uncertainty_entropy"}, "strategy": {"type": "WEIGHTS"}}
TYPICALITY = {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY"}}
# every shot (the frames between two cuts, found at extraction) gets its share before any
# gets a second: what covers a montage when the embedding does not separate its scenes
SHOTS = {
    "input": {"type": "METADATA", "key": "shot"},
    "strategy": {"type": "BALANCE", "distribution": "UNIFORM"},
}

COLD_START, WARMING, WARM, UNKNOWN = "cold_start", "warming", "warm", "unknown"
# TYPICALITY's strength in the cold-start recipe. Measured: at 1 it gave up radius and scene
# recall on real footage (bench/bench_coverage.py); at 0.5 it cost labels against plain
# diversity in bench/bench_loop.py (typical frames are static ones, rare events are
# atypical); at 0.25 it still halves the mean distance of plain k-center on generated
# video-like data
COLD_START_TYPICALITY = 0.25


def _with_strength(entry: dict[str, Any], strength: float) -> dict[str, Any]:
    if strength == 1:
        return entry
    return {"input": dict(entry["input"]), "strategy": {**entry["strategy"], "strength": round(strength, 4)}}


@dataclass(frozen=True)
class Regime:
    """Which default recipe a selection runs with, and why."""

    name: str
    labeled: int | None
    cold_start_labels: int
    typicality: float  # strength of TYPICALITY in the recipe (0: not in it)
    uncertainty: float  # strength of WEIGHTS on uncertainty_entropy (0: not in it)

    @classmethod
    def for_labels(cls, labeled: int | None, cold_start_labels: int) -> Regime:
        """``labeled``: frames in the datapool (None: not known, Lightly's recipe)."""
        c = cold_start_labels
        if labeled is None:
            return cls(UNKNOWN, None, c, 0.0, 1.0)
        if c <= 0 or labeled >= 2 * c:
            return cls(WARM, labeled, c, 0.0, 1.0)
        if labeled < c:
            return cls(COLD_START, labeled, c, COLD_START_TYPICALITY, 0.0)
        u = (labeled - c) / c
        return cls(WARMING, labeled, c, COLD_START_TYPICALITY * (1.0 - u), u)

    def recipe(self) -> list[dict[str, Any]]:
        """The default strategies in Lightly's shape."""
        out = [DIVERSITY]
        if self.typicality > 0:
            out.append(_with_strength(TYPICALITY, self.typicality))
        if self.uncertainty > 0:
            out.append(_with_strength(UNCERTAINTY, self.uncertainty))
        return out + [SHOTS]

    def describe(self) -> str:
        c, n = self.cold_start_labels, self.labeled
        if self.name == COLD_START:
            return (
                f"regime: cold start, {n} labeled frames < {c} (diversity x typicality {self.typicality:g})"
            )
        if self.name == WARMING:
            return (
                f"regime: warming up, {n} labeled frames (diversity x typicality {self.typicality:.2f}"
                f" x uncertainty {self.uncertainty:.2f}; uncertainty in full from {2 * c})"
            )
        if self.name == WARM:
            return f"regime: warm, {n} labeled frames >= {2 * c} (diversity x uncertainty)"
        return "regime: labeled frames not known (diversity x uncertainty)"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.describe()}
