"""Stage outcomes as a person reads them in logs, summaries and the demo's table."""

from __future__ import annotations

from collections.abc import Mapping


def detections_line(counts: Mapping[str, int] | None, boxes: int | None = None) -> str:
    """``"person 3, car 1 (4 boxes)"``: the classes seen, most first, classes with no box
    left out (not ``"Normal 0, Fall 1 (1 boxes)"``); ``"no detections"`` when none."""
    seen = sorted(((int(n), c) for c, n in (counts or {}).items() if n), key=lambda t: (-t[0], t[1]))
    if not seen:
        return "no detections"
    total = boxes if boxes is not None else sum(n for n, _ in seen)
    return ", ".join(f"{c} {n}" for n, c in seen) + f" ({total} box{'es' if total != 1 else ''})"
