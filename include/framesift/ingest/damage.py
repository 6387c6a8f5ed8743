"""How frame damage is described: the one-line summaries ``framesift videos``,
``framesift status`` and the logs print, from a manifest or a ``videos`` record (light: no
PyAV), e.g. ``extracted 5 frames, 2 damaged (3.0–4.9 s: Invalid data found ...)``.

The fields (written by :mod:`framesift.ingest.extract`): ``frames_damaged`` (sampled
frames decoded from damaged references), ``damaged_frames`` (their names, in the
manifest), ``first_decode_error`` (the first decode error's text) and ``damage_ranges_s``
(``[start, end]`` seconds from the failed packet to the last frame before the next keyframe).
"""

from __future__ import annotations

from typing import Any

_MAX_RANGES = 3
_MAX_ERROR_CHARS = 60


def damage_summary(record: dict[str, Any]) -> str:
    """``"3.0–4.9 s: Invalid data found ..."``: where and why frames were flagged damaged."""
    ranges = record.get("damage_ranges_s") or []
    spans = ", ".join(f"{a:.1f}–{b:.1f} s" for a, b in ranges[:_MAX_RANGES])
    if len(ranges) > _MAX_RANGES:
        spans += ", …"
    error = record.get("first_decode_error") or "damaged"
    if len(error) > _MAX_ERROR_CHARS:
        error = error[: _MAX_ERROR_CHARS - 1].rstrip() + " …"
    return f"{spans}: {error}" if spans else error


def extraction_line(frames: dict[str, Any] | None, status: str = "extracted") -> str:
    """``"extracted 5 frames, 2 damaged (3.0–4.9 s: Invalid data …)"`` from a record's
    ``frames`` (the registry) or a manifest."""
    frames = frames or {}
    line = f"{status} {frames.get('frames_written', 0) or 0} frames"
    damaged = frames.get("frames_damaged") or 0
    if damaged:
        line += f", {damaged} damaged ({damage_summary(frames)})"
    return line
