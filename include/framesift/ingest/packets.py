"""The packet index of a video and the decode plan built from it.

:func:`index_packets` reads every video packet's timestamp and keyframe flag (a
demux-only pass: no decoding, ~15 ms for a minute of 720p30). From it come

- **true frame positions**: a frame's index in the video is the rank of its presentation
  timestamp among all packets, whatever was decoded, skipped or damaged, so a frame name
  means the same frame under every sampling policy and after a lost packet;
- **the decode plan** (:func:`plan_decoding`): which sampling times a keyframe within the
  tolerance stands in for (decoding one packet instead of a GOP), which GOPs must be
  decoded and up to which timestamp, and which GOPs hold nothing sampling keeps and are
  not decoded at all. Frames after the last one a GOP must give are not decoded either:
  the extractor drains and resets the decoder and resumes at the next keyframe.

Timestamps are in the stream's time base.
"""

from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass, field

import av
import numpy as np


@dataclass
class PacketIndex:
    pts: np.ndarray  # decode order, int64
    keyframe: np.ndarray  # decode order, bool
    sorted_pts: np.ndarray  # presentation order
    gop_of: np.ndarray  # decode order: the GOP (count of keyframes so far - 1) of each packet
    keyframe_pts: list[int]  # one per GOP, in decode order
    gop_max_pts: list[int]  # the last presentation timestamp inside each GOP
    complete: bool  # every packet had a timestamp and the demuxer raised no error

    @property
    def n_packets(self) -> int:
        return len(self.pts)

    def position(self, pts: int) -> int:
        """The frame's index in the video: packets presented before it."""
        return int(np.searchsorted(self.sorted_pts, pts, side="left"))

    def gop_end_pts(self, pts: int) -> int | None:
        """The last presentation timestamp of the GOP that holds ``pts``."""
        g = bisect.bisect_right(self.keyframe_pts, pts) - 1
        return self.gop_max_pts[g] if 0 <= g < len(self.gop_max_pts) else None


def index_packets(path: str, max_errors: int = 8) -> PacketIndex:
    pts, key = array("q"), array("b")
    complete = True
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        errors = 0
        while True:
            try:
                for packet in container.demux(stream):
                    if not packet.size:
                        continue
                    if packet.pts is None:
                        complete = False
                        continue
                    pts.append(int(packet.pts))
                    key.append(1 if packet.is_keyframe else 0)
                break
            except av.FFmpegError:
                complete = False
                errors += 1
                if errors >= max_errors:
                    break
    p = np.frombuffer(pts, dtype=np.int64).copy() if len(pts) else np.zeros(0, np.int64)
    k = np.frombuffer(key, dtype=np.int8).astype(bool) if len(key) else np.zeros(0, bool)
    gop_of = np.cumsum(k) - 1
    keyframe_pts = [int(v) for v in p[k]]
    gop_max = [int(v) for v in _group_max(p, gop_of, len(keyframe_pts))]
    return PacketIndex(p, k, np.sort(p), gop_of, keyframe_pts, gop_max, complete)


def _group_max(values: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    ok = groups >= 0
    if n and ok.any():
        np.maximum.at(out, groups[ok], values[ok])
    return out


@dataclass
class DecodePlan:
    """What to decode: ``gop_until[g]`` is the timestamp GOP ``g`` must be decoded up to
    (its keyframe's own: the keyframe alone); a GOP not in it is not decoded. ``key_picks``
    are keyframes standing in for a sampling time; ``targets`` the other sampling times,
    each kept as the first decoded frame at or after it, from the GOP ``target_gop[t]``."""

    gop_until: dict[int, int] = field(default_factory=dict)
    key_picks: set[int] = field(default_factory=set)
    targets: list[int] = field(default_factory=list)
    target_gop: dict[int, int] = field(default_factory=dict)


def sampling_times(index: PacketIndex, *, policy: str, step_s: float, every_n: int, time_base) -> list[int]:
    """The timestamps sampling asks for: every ``step_s`` from the first frame (fps), or the
    timestamps of positions 0, n, 2n, ... (every_n)."""
    if not index.n_packets:
        return []
    sp = index.sorted_pts
    if policy == "every_n":
        return [int(v) for v in sp[::every_n]]
    start, end = int(sp[0]), int(sp[-1])
    step = step_s / float(time_base)
    return [int(round(start + k * step)) for k in range(int((end - start) / step + 1e-6) + 1)]


def plan_decoding(index: PacketIndex, times: list[int], tolerance: int) -> DecodePlan:
    """The plan for sampling ``times`` with a keyframe allowed to stand in within
    ``tolerance`` (timestamp units; 0: only an exact keyframe)."""
    plan = DecodePlan()
    kf_sorted = sorted(index.keyframe_pts)
    gop_by_kf = {pts: g for g, pts in enumerate(index.keyframe_pts)}
    for t in times:
        i = bisect.bisect_left(kf_sorted, t)
        near = [kf_sorted[j] for j in (i - 1, i) if 0 <= j < len(kf_sorted)]
        best = min(near, key=lambda v: (abs(v - t), v), default=None)
        if best is not None and abs(best - t) <= tolerance:
            plan.key_picks.add(best)
            g = gop_by_kf[best]
            plan.gop_until[g] = max(plan.gop_until.get(g, best), best)
            continue
        g = bisect.bisect_right(index.keyframe_pts, t) - 1
        if g < 0:
            g = 0 if index.keyframe_pts else -1
        if g >= 0 and t > index.gop_max_pts[g] and g + 1 < len(index.keyframe_pts):
            g += 1  # t falls after the GOP's last frame: the next keyframe is the frame at or after it
            t_need = index.keyframe_pts[g]
        else:
            t_need = t
        plan.targets.append(t)
        plan.target_gop[t] = g
        plan.gop_until[g] = max(plan.gop_until.get(g, t_need), t_need)
    plan.targets.sort()
    return plan
