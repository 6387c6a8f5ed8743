"""The detector cascade (``inference.cascade``): a cheap embedding of every sampled frame
decides which frames the detector sees.

The gate is online, per video, in time order (it works while the video is still
decoding): leader clustering on the cheap embedding. A frame goes to the detector iff
its cheap embedding is farther than ``min_distance`` from every frame of this video the
detector already saw (the first frame always runs), or ``max_gap`` sampled frames went by
since the detector last ran (a floor, so a long look-alike stretch is still sampled now
and then). The frames it skips are still extracted and uploaded (labeling sequences show
them) but get no prediction and no embedding row, so selection never picks them: every
skipped frame is within ``min_distance`` (cheaply measured) of a frame it can pick.

The cheap embedding (:func:`cheap_embedding`) needs no model: an 8x8 colour thumbnail
(where things are, its mean taken off) beside a 16x16 hue-saturation histogram with soft
bins (what colours there are), each half L2-normalised; the frame is first strided down to
about 96 px on its short side. About 0.3-0.4 ms a frame on one CPU core, 720p or 1080p
(the detector: about 23 ms a frame, YOLOv3-tiny 416 px on OpenVINO, bench_inference). Distances between two frames' cheap embeddings lie in
[0, 2]; see ``docs/configuration.md`` for the threshold measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CHEAP_DIM = 8 * 8 * 3 + 16 * 16
_THUMB = 8
_HIST_BINS = (16, 16)
_MAX_SIDE = 96  # frames are shrunk (nearest, by a stride) to about this before the area resize


def cheap_embedding(image: np.ndarray) -> np.ndarray:
    """BGR uint8 image -> float32 vector of CHEAP_DIM, norm 1 (each half norm 1/sqrt 2)."""
    import cv2

    h, w = image.shape[:2]
    step = max(1, min(h, w) // _MAX_SIDE)
    small = image[::step, ::step] if step > 1 else image
    small = np.ascontiguousarray(small)
    thumb = cv2.resize(small, (_THUMB, _THUMB), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    thumb -= thumb.mean()  # global brightness does not move the thumbnail half
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, list(_HIST_BINS), [0, 180, 0, 256])
    # soft bins: a colour on a bin edge must not jump bins with sensor noise (hue wraps round)
    hist = cv2.GaussianBlur(np.vstack([hist[-2:], hist, hist[:2]]), (5, 5), 1.0)[2:-2].ravel()
    hist = np.sqrt(hist / max(float(hist.sum()), 1.0))  # Hellinger: a unit vector already
    out = np.concatenate([_unit(thumb), _unit(hist)]) / np.sqrt(2.0)
    return out.astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


@dataclass
class CascadeGate:
    """Leader clustering of one video's frames, in time order (see the module)."""

    min_distance: float
    max_gap: int | None = None
    leaders: list[np.ndarray] = field(default_factory=list)  # one per frame the detector ran on
    skipped: int = 0
    _since: int = 0
    _matrix: np.ndarray | None = None

    @property
    def ran(self) -> int:
        return len(self.leaders)

    def admit(self, image: np.ndarray) -> bool:
        """Whether the detector runs on this frame (counted in ``ran`` / ``skipped``)."""
        return self.admit_embedding(cheap_embedding(image))

    def admit_embedding(self, emb: np.ndarray) -> bool:
        run = not self.leaders or (self.max_gap is not None and self._since >= self.max_gap)
        if not run:
            if self._matrix is None or len(self._matrix) != len(self.leaders):
                self._matrix = np.stack(self.leaders)
            sims = self._matrix @ emb
            nearest = float(np.sqrt(max(2.0 - 2.0 * float(sims.max()), 0.0)))
            run = nearest > self.min_distance
        if run:
            self.leaders.append(np.asarray(emb, dtype=np.float32))
            self._since = 0
        else:
            self.skipped += 1
            self._since += 1
        return run


def gate_mask(embeddings: np.ndarray, min_distance: float, max_gap: int | None = None) -> np.ndarray:
    """Which of one video's frames (cheap embeddings, in time order) the detector runs on."""
    gate = CascadeGate(min_distance, max_gap)
    return np.array([gate.admit_embedding(e) for e in embeddings], dtype=bool)
