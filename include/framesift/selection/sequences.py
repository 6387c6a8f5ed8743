"""Sequences: with ``selected_sequence_length = L > 1`` each greedy pick brings the frames
around it in the same video (consecutive in frame order among the frames still
available), about L/2 on each side, so a run of L frames is selected."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class FrameOrder:
    """Frames sorted by (video, frame index): ``order[rank[i]] == i``; frame ``i``'s video
    spans positions ``first[i]`` to ``last[i]`` (exclusive) of ``order``."""

    order: np.ndarray
    first: np.ndarray
    last: np.ndarray
    rank: np.ndarray

    @classmethod
    def of(cls, video_keys: Sequence[str], frame_indices: np.ndarray) -> FrameOrder:
        n = len(video_keys)
        _, vcode = np.unique(np.asarray(video_keys, dtype=object), return_inverse=True)
        order = np.lexsort((np.arange(n), frame_indices, vcode))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        vs = vcode[order]
        starts = np.r_[0, np.flatnonzero(np.diff(vs)) + 1]
        ends = np.r_[starts[1:], n]
        first = np.empty(n, dtype=np.int64)
        last = np.empty(n, dtype=np.int64)
        for a, b in zip(starts, ends, strict=True):
            first[order[a:b]] = a
            last[order[a:b]] = b
        return cls(order, first, last, rank)

    def sequence(self, pick: int, want: int, dead: np.ndarray) -> list[int]:
        """The pick plus up to ``want - 1`` frames of its video around it that are not
        ``dead``, the pick first, then the others in time order."""
        order, rank = self.order, self.rank
        lo_lim, hi_lim = int(self.first[pick]), int(self.last[pick])
        r = int(rank[pick])
        left: list[int] = []
        right: list[int] = []
        li, ri = r - 1, r + 1
        need_left = (want - 1) // 2
        while 1 + len(left) + len(right) < want and (li >= lo_lim or ri < hi_lim):
            take_left = len(left) < need_left or ri >= hi_lim
            if take_left and li >= lo_lim:
                f = int(order[li])
                li -= 1
                if not dead[f]:
                    left.append(f)
            elif ri < hi_lim:
                f = int(order[ri])
                ri += 1
                if not dead[f]:
                    right.append(f)
            else:
                need_left = want  # only the left side is left
        # temporal order: left (reversed) + pick + right, the greedy pick first in pick order
        return [pick] + sorted(left + right, key=lambda f: int(rank[f]))
