"""Active-learning scores per frame, and the classic uncertainty measures behind them.

Plain numpy (no Airflow, no torch). Three groups:

**Lightly's scores** (``compute_scores``), with Lightly's names and meanings, from
Lightly-format object-detection predictions ``[{"category_id", "bbox", "score",
"probabilities"?}]`` per frame. Per box a probability vector ``p`` over the task's ``C``
classes is used; a box without one gets the two-class vector ``[score, 1 - score]``
(``C = 2``). Vectors that do not sum to 1 are divided by their sum. Then, per box:

* ``uncertainty_least_confidence = (1 - max p) * C / (C - 1)``: ``1 - max p`` is at most
  ``1 - 1/C`` (all classes equally likely), so the factor maps it onto [0, 1];
* ``uncertainty_margin = 1 - (p1 - p2)`` with ``p1 >= p2`` the two largest
  probabilities: already in [0, 1] (0: certain, 1: a tie between the top two);
* ``uncertainty_entropy = -sum(p ln p) / ln C``: entropy divided by its maximum ``ln C``.

A frame's score is the maximum over its boxes, 0 for a frame without boxes; with one
class (``C = 1``) there is no uncertainty and all three are 0. Frame-level scores:

* ``objectness_least_confidence = 1 - mean(box score)`` (0 for a frame without boxes);
* ``object_frequency``: per frame, the first object of each class counts 1 and every
  further object of that class ``frequency_penalty`` (0.25), summed over classes; then
  rescaled linearly across the frames so the smallest value becomes ``min_score`` (0.9)
  and the largest 1.0: ``0.9 + 0.1 * (x - min x) / (max x - min x)``; when all frames
  have the same value, all get 1.0. (The score prefers crowded, varied frames, but only
  mildly: it is meant as a WEIGHTS multiplier, never as a filter.)

**Classic raw measures** for one probability vector (or a stack of them, along the last
axis), as in the literature and the book's worked example, unscaled:
``least_confidence`` (1 - p1), ``margin`` (p1 - p2: *small* is uncertain),
``margin_uncertainty`` (1 - (p1 - p2), Lightly's form: *large* is uncertain),
``ratio_of_top_two`` (p1 / p2: close to 1 is uncertain), ``entropy_bits`` (-sum p log2 p).
For p = [0.05, 0.85, 0.10] vs [0.35, 0.15, 0.50]: least confidence 0.15 vs 0.50; margin
0.75 vs 0.15 (margin uncertainty 0.25 vs 0.85); ratio 8.5 vs 1.43; entropy 0.748 vs 1.441
bits. The second vector is the more uncertain one by every measure.

**Committees and density**: ``vote_entropy`` and ``kl_to_consensus`` over several models'
probability vectors (query by committee), and density weighting
(``knn_mean_similarity``, ``density_weighted``): informativeness times the mean cosine
similarity to the k nearest neighbours, computed in row chunks, never an N x N matrix.

Lightly-style image metadata (sharpness, luminance, contrast) is computed at extraction
(:mod:`framesift.ingest.metadata`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SCORE_NAMES = (
    "uncertainty_least_confidence",
    "uncertainty_margin",
    "uncertainty_entropy",
    "objectness_least_confidence",
    "object_frequency",
)

FREQUENCY_PENALTY = 0.25
FREQUENCY_MIN_SCORE = 0.9

# ---------------------------------------------------------------------------------------
# classic measures on probability vectors (last axis)
# ---------------------------------------------------------------------------------------


def _probs(p: Any) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] == 0:
        raise ValueError("expected a probability vector (or a stack of them along the last axis)")
    return arr


def _top_two(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if p.shape[-1] == 1:
        return p[..., 0], np.zeros(p.shape[:-1])
    part = np.partition(p, p.shape[-1] - 2, axis=-1)
    return part[..., -1], part[..., -2]


def least_confidence(p: Any) -> np.ndarray | float:
    """1 - the largest probability (unscaled)."""
    arr = _probs(p)
    out = 1.0 - arr.max(axis=-1)
    return float(out) if out.ndim == 0 else out


def margin(p: Any) -> np.ndarray | float:
    """p1 - p2, the gap between the two largest probabilities: *small* means uncertain."""
    p1, p2 = _top_two(_probs(p))
    out = p1 - p2
    return float(out) if np.ndim(out) == 0 else out


def margin_uncertainty(p: Any) -> np.ndarray | float:
    """1 - (p1 - p2), Lightly's ``uncertainty_margin`` form: *large* means uncertain."""
    out = 1.0 - np.asarray(margin(p))
    return float(out) if out.ndim == 0 else out


def ratio_of_top_two(p: Any) -> np.ndarray | float:
    """p1 / p2: close to 1 means uncertain; ``inf`` when p2 is 0."""
    p1, p2 = _top_two(_probs(p))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(p2 > 0, p1 / np.where(p2 > 0, p2, 1.0), np.inf)
    return float(out) if np.ndim(out) == 0 else out


def entropy_bits(p: Any) -> np.ndarray | float:
    """-sum(p log2 p) in bits, with 0 log 0 = 0 (unscaled: at most log2 C)."""
    arr = _probs(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(arr > 0, arr * np.log2(np.where(arr > 0, arr, 1.0)), 0.0)
    out = -terms.sum(axis=-1)
    out = np.maximum(out, 0.0)
    return float(out) if out.ndim == 0 else out


# ---------------------------------------------------------------------------------------
# committees (query by committee)
# ---------------------------------------------------------------------------------------


def vote_entropy(committee: Any, normalize: bool = False) -> np.ndarray | float:
    """Entropy (natural log) of the committee's hard votes.

    ``committee``: (M models, C) for one sample or (M, N, C) for N samples. Each model
    votes for its most probable class; the score is the entropy of the vote fractions:
    0 when all agree, ``ln(min(M, C))`` at most. ``normalize`` divides by that maximum.
    """
    arr = _probs(committee)
    if arr.ndim < 2:
        raise ValueError("vote_entropy needs (models, classes) or (models, samples, classes)")
    n_models, n_classes = arr.shape[0], arr.shape[-1]
    votes = arr.argmax(axis=-1)  # (M,) or (M, N)
    counts = np.stack([(votes == c).sum(axis=0) for c in range(n_classes)], axis=-1).astype(np.float64)
    frac = counts / n_models
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -np.where(frac > 0, frac * np.log(np.where(frac > 0, frac, 1.0)), 0.0).sum(axis=-1)
    if normalize:
        top = np.log(min(n_models, n_classes))
        out = out / top if top > 0 else np.zeros_like(out)
    out = np.maximum(out, 0.0)
    return float(out) if np.ndim(out) == 0 else out


def kl_to_consensus(committee: Any, eps: float = 1e-12) -> np.ndarray | float:
    """Mean over models of KL(p_m || consensus), natural log; consensus = mean of p_m.

    ``committee``: (M, C) or (M, N, C). 0 when all models agree; larger means the
    members disagree about the class distribution (not only about the top class).
    """
    arr = _probs(committee)
    if arr.ndim < 2:
        raise ValueError("kl_to_consensus needs (models, classes) or (models, samples, classes)")
    consensus = arr.mean(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(
            arr > 0, arr * (np.log(np.maximum(arr, eps)) - np.log(np.maximum(consensus, eps))), 0.0
        )
    out = np.maximum(terms.sum(axis=-1).mean(axis=0), 0.0)
    return float(out) if np.ndim(out) == 0 else out


# ---------------------------------------------------------------------------------------
# predictions in a flat (one row per box) layout
# ---------------------------------------------------------------------------------------


@dataclass
class FlatPredictions:
    """Object-detection predictions of one task, one row per box (fast for millions).

    ``frame``: (M,) frame index of each box; ``category``: (M,) class *index* into the
    task's schema (0..C-1, the schema's order); ``score``: (M,) box confidence;
    ``probabilities``: (M, C) float32 or None; ``has_probs``: (M,) which rows of
    ``probabilities`` are real (the others use ``[score, 1 - score]``).
    ``category_names``: the schema's names in index order. ``bbox``: (M, 4) ``[x, y, w, h]``
    in pixels, or None (only the report draws boxes).
    """

    n_frames: int
    category_names: list[str]
    frame: np.ndarray
    category: np.ndarray
    score: np.ndarray
    probabilities: np.ndarray | None = None
    has_probs: np.ndarray | None = None
    bbox: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.frame = np.asarray(self.frame, dtype=np.int64)
        self.category = np.asarray(self.category, dtype=np.int64)
        self.score = np.asarray(self.score, dtype=np.float32)
        m = len(self.frame)
        if len(self.category) != m or len(self.score) != m:
            raise ValueError("frame, category and score must have one entry per box")
        if m and (self.frame.min() < 0 or self.frame.max() >= self.n_frames):
            raise ValueError("a box refers to a frame index outside 0..n_frames-1")
        if m and (self.category.min() < 0 or self.category.max() >= self.num_classes):
            raise ValueError("a box has a category index outside the schema")
        if self.probabilities is not None:
            self.probabilities = np.asarray(self.probabilities, dtype=np.float32)
            if self.probabilities.shape != (m, self.num_classes):
                raise ValueError(
                    f"probabilities must be (boxes, classes) = ({m}, {self.num_classes}), "
                    f"got {self.probabilities.shape}"
                )
            if self.has_probs is None:
                self.has_probs = np.ones(m, dtype=bool)
        if self.has_probs is not None:
            self.has_probs = np.asarray(self.has_probs, dtype=bool)
        if self.bbox is not None:
            self.bbox = np.asarray(self.bbox, dtype=np.float32).reshape(m, 4)

    @property
    def num_classes(self) -> int:
        return len(self.category_names)

    @property
    def n_boxes(self) -> int:
        return len(self.frame)

    @classmethod
    def from_lightly(
        cls, frames: Sequence[Sequence[Mapping[str, Any]] | None], categories: Sequence[Mapping[str, Any]]
    ) -> FlatPredictions:
        """From Lightly's per-frame lists and the task schema ``[{"id", "name"}]``."""
        ids = [int(c["id"]) for c in categories]
        if len(set(ids)) != len(ids):
            raise ValueError("the category schema repeats an id")
        index_of = {cid: i for i, cid in enumerate(ids)}
        names = [str(c.get("name", c["id"])) for c in categories]
        n_classes = len(ids)
        fr: list[int] = []
        cat: list[int] = []
        sc: list[float] = []
        probs: list[Any] = []
        has: list[bool] = []
        boxes: list[Any] = []
        for f, preds in enumerate(frames):
            for box in preds or ():
                cid = int(box["category_id"])
                if cid not in index_of:
                    raise ValueError(f"frame {f}: category_id {cid} is not in the schema {ids}")
                fr.append(f)
                cat.append(index_of[cid])
                bb = box.get("bbox")
                boxes.append(bb if bb is not None and len(bb) == 4 else (np.nan,) * 4)
                sc.append(float(box.get("score", 1.0)))
                p = box.get("probabilities")
                if p is not None:
                    if len(p) != n_classes:
                        raise ValueError(
                            f"frame {f}: probabilities has {len(p)} entries, the schema has {n_classes} classes"
                        )
                    probs.append(p)
                    has.append(True)
                else:
                    probs.append(None)
                    has.append(False)
        prob_arr = None
        if any(has):
            prob_arr = np.zeros((len(fr), n_classes), dtype=np.float32)
            for row, p in enumerate(probs):
                if p is not None:
                    prob_arr[row] = p
        return cls(
            n_frames=len(frames),
            category_names=names,
            frame=np.asarray(fr, dtype=np.int64),
            category=np.asarray(cat, dtype=np.int64),
            score=np.asarray(sc, dtype=np.float32),
            probabilities=prob_arr,
            has_probs=np.asarray(has, dtype=bool) if prob_arr is not None else None,
            bbox=np.asarray(boxes, dtype=np.float32).reshape(len(fr), 4),
        )

    def subset(self, frames: Sequence[int] | np.ndarray) -> FlatPredictions:
        """The boxes of the given frames, renumbered 0..len(frames)-1 in that order."""
        frames = np.asarray(frames, dtype=np.int64)
        new_index = np.full(self.n_frames, -1, dtype=np.int64)
        new_index[frames] = np.arange(len(frames))
        keep = new_index[self.frame] >= 0
        return FlatPredictions(
            n_frames=len(frames),
            category_names=list(self.category_names),
            frame=new_index[self.frame[keep]],
            category=self.category[keep],
            score=self.score[keep],
            probabilities=None if self.probabilities is None else self.probabilities[keep],
            has_probs=None if self.has_probs is None else self.has_probs[keep],
            bbox=None if self.bbox is None else self.bbox[keep],
        )

    def boxes_per_frame(self) -> np.ndarray:
        return np.bincount(self.frame, minlength=self.n_frames)

    def class_vectors(
        self,
        name: str = "CLASS_DISTRIBUTION",
        bucket_of_class: np.ndarray | None = None,
        n_buckets: int | None = None,
    ) -> np.ndarray:
        """Per-frame class vectors, (n_frames, n_buckets) float32.

        ``CLASS_DISTRIBUTION``: the sum of the boxes' probability vectors (a box without
        one counts as one-hot on its ``category_id``), as Lightly does for detections.
        ``CATEGORY_COUNT``: the number of boxes of each class. ``bucket_of_class`` maps
        class index -> bucket (e.g. the target's classes plus one "other" bucket; -1 drops
        the class) so that the matrix stays narrow for many classes.
        """
        if bucket_of_class is None:
            bucket_of_class = np.arange(self.num_classes)
            n_buckets = self.num_classes
        bucket_of_class = np.asarray(bucket_of_class, dtype=np.int64)
        assert n_buckets is not None
        out = np.zeros((self.n_frames, n_buckets), dtype=np.float32)
        if self.n_boxes == 0:
            return out
        if name == "CATEGORY_COUNT" or self.probabilities is None:
            b = bucket_of_class[self.category]
            ok = b >= 0
            flat = np.bincount(self.frame[ok] * n_buckets + b[ok], minlength=self.n_frames * n_buckets)
            return flat.reshape(self.n_frames, n_buckets).astype(np.float32)
        if name != "CLASS_DISTRIBUTION":
            raise ValueError(f"unknown class vector name {name!r}")
        step = max(1, 8_000_000 // max(1, self.num_classes))  # boxes per chunk
        for a in range(0, self.n_boxes, step):
            rows = slice(a, min(self.n_boxes, a + step))
            probs = self._normalised_probs(rows)
            frames = self.frame[rows]
            for bucket in range(n_buckets):
                cols = np.flatnonzero(bucket_of_class == bucket)
                if len(cols) == 0:
                    continue
                mass = probs[:, cols].sum(axis=1) if len(cols) > 1 else probs[:, cols[0]]
                out[:, bucket] += np.bincount(frames, weights=mass, minlength=self.n_frames).astype(
                    np.float32
                )
        return out

    def _normalised_probs(self, rows: slice = slice(None)) -> np.ndarray:
        """(boxes, C) probability rows summing to 1; one-hot for boxes without a vector."""
        category = self.category[rows]
        m, c = len(category), self.num_classes
        if self.probabilities is None:
            probs = np.zeros((m, c), dtype=np.float32)
            probs[np.arange(m), category] = 1.0
            return probs
        probs = np.clip(self.probabilities[rows], 0.0, None)
        sums = probs.sum(axis=1, keepdims=True)
        probs = np.divide(probs, sums, out=np.zeros_like(probs), where=sums > 0)
        missing = ~self.has_probs[rows] | (sums[:, 0] <= 0)
        if missing.any():
            idx = np.flatnonzero(missing)
            probs[idx] = 0.0
            probs[idx, category[idx]] = 1.0
        return probs


def as_flat(
    predictions: FlatPredictions | Sequence[Sequence[Mapping[str, Any]] | None],
    categories: Sequence[Mapping[str, Any]] | None = None,
) -> FlatPredictions:
    if isinstance(predictions, FlatPredictions):
        return predictions
    if categories is None:
        raise ValueError("Lightly-format predictions need the category schema [{'id', 'name'}]")
    return FlatPredictions.from_lightly(predictions, categories)


# ---------------------------------------------------------------------------------------
# Lightly's scores
# ---------------------------------------------------------------------------------------


def _box_uncertainties(preds: FlatPredictions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scaled least confidence, margin and entropy per box (see the module docstring)."""
    m = preds.n_boxes
    lc = np.zeros(m)
    mg = np.zeros(m)
    en = np.zeros(m)
    has = preds.has_probs if preds.has_probs is not None else np.zeros(m, dtype=bool)
    c = preds.num_classes
    if preds.probabilities is not None and has.any() and c >= 2:
        # c == 1: a single class, no uncertainty: zeros. Chunks of boxes keep the float64
        # temporaries small whatever the number of boxes.
        all_rows = np.flatnonzero(has)
        step = max(1, 4_000_000 // c)
        for a in range(0, len(all_rows), step):
            rows = all_rows[a : a + step]
            p = np.clip(preds.probabilities[rows].astype(np.float64), 0.0, None)
            sums = p.sum(axis=1, keepdims=True)
            ok = sums[:, 0] > 0
            p = np.divide(p, sums, out=np.zeros_like(p), where=sums > 0)
            p1, p2 = _top_two(p)
            lc[rows] = np.where(ok, (1.0 - p1) * c / (c - 1), 0.0)
            mg[rows] = np.where(ok, 1.0 - (p1 - p2), 0.0)
            h = -_xlogx(p).sum(axis=1)
            en[rows] = np.where(ok, h / np.log(c), 0.0)
    two = np.flatnonzero(~has)
    if len(two):
        s = np.clip(preds.score[two].astype(np.float64), 0.0, 1.0)
        p1 = np.maximum(s, 1.0 - s)
        p2 = 1.0 - p1
        lc[two] = (1.0 - p1) * 2.0
        mg[two] = 1.0 - (p1 - p2)
        en[two] = -(_xlogx(s) + _xlogx(1.0 - s)) / np.log(2.0)
    return np.clip(lc, 0.0, 1.0), np.clip(mg, 0.0, 1.0), np.clip(en, 0.0, 1.0)


def _xlogx(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def _frame_max(frame: np.ndarray, values: np.ndarray, n_frames: int) -> np.ndarray:
    out = np.zeros(n_frames)
    if len(frame):
        np.maximum.at(out, frame, values)
    return out


def object_frequency(
    preds: FlatPredictions,
    frequency_penalty: float = FREQUENCY_PENALTY,
    min_score: float = FREQUENCY_MIN_SCORE,
) -> np.ndarray:
    """Lightly's ``object_frequency`` per frame (see the module docstring for the rescaling)."""
    n = preds.n_frames
    raw = np.zeros(n)
    if preds.n_boxes:
        c = preds.num_classes
        pairs, counts = np.unique(preds.frame * c + preds.category, return_counts=True)
        contribution = 1.0 + frequency_penalty * (counts - 1)
        raw = np.bincount(pairs // c, weights=contribution, minlength=n)
    if n == 0:
        return raw
    lo, hi = raw.min(), raw.max()
    if hi <= lo:
        return np.ones(n)
    return min_score + (1.0 - min_score) * (raw - lo) / (hi - lo)


def compute_scores(
    predictions: FlatPredictions | Sequence[Sequence[Mapping[str, Any]] | None],
    categories: Sequence[Mapping[str, Any]] | None = None,
    *,
    frequency_penalty: float = FREQUENCY_PENALTY,
    min_score: float = FREQUENCY_MIN_SCORE,
) -> dict[str, np.ndarray]:
    """Lightly's five active-learning scores per frame, each an (n_frames,) float64 array.

    ``predictions``: per frame a list of Lightly prediction dicts (with ``categories``, the
    task schema) or a ``FlatPredictions``.
    """
    preds = as_flat(predictions, categories)
    n = preds.n_frames
    lc, mg, en = _box_uncertainties(preds)
    box_count = preds.boxes_per_frame()
    score_sum = np.bincount(preds.frame, weights=preds.score.astype(np.float64), minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_score = np.where(box_count > 0, score_sum / np.maximum(box_count, 1), 1.0)
    return {
        "uncertainty_least_confidence": _frame_max(preds.frame, lc, n),
        "uncertainty_margin": _frame_max(preds.frame, mg, n),
        "uncertainty_entropy": _frame_max(preds.frame, en, n),
        "objectness_least_confidence": np.clip(1.0 - mean_score, 0.0, 1.0),
        "object_frequency": object_frequency(preds, frequency_penalty, min_score),
    }


# ---------------------------------------------------------------------------------------
# density weighting
# ---------------------------------------------------------------------------------------


def knn_mean_similarity(
    embeddings: np.ndarray,
    k: int = 10,
    *,
    reference: np.ndarray | None = None,
    chunk_elements: int = 16_000_000,
) -> np.ndarray:
    """Mean cosine similarity of each row to its k nearest neighbours, (N,) float32.

    ``embeddings`` (N, D) are L2-normalised rows, so cosine similarity is a dot product.
    Neighbours are searched among ``reference`` (R, D) when given, else among the other
    rows of ``embeddings`` (a row is not its own neighbour). Work goes in row chunks of at
    most ``chunk_elements`` similarities (64 MB of float32): memory is O(chunk), never N x N;
    time is O(N * R * D).
    """
    x = np.asarray(embeddings, dtype=np.float32)
    same = reference is None
    ref = x if same else np.asarray(reference, dtype=np.float32)
    n, r = len(x), len(ref)
    avail = r - 1 if same else r
    out = np.zeros(n, dtype=np.float32)
    if n == 0 or avail <= 0:
        return out
    k = max(1, min(k, avail))
    rows = max(1, min(n, chunk_elements // max(r, 1)))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        sims = x[start:stop] @ ref.T
        if same:
            sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        top = np.partition(sims, r - k, axis=1)[:, r - k :]
        out[start:stop] = top.mean(axis=1)
    return out


def density_weighted(
    informativeness: np.ndarray,
    embeddings: np.ndarray,
    *,
    k: int = 10,
    beta: float = 1.0,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Information density: ``informativeness * max(density, 0) ** beta``.

    ``density`` is ``knn_mean_similarity`` (mean cosine similarity to the k nearest
    neighbours): an uncertain frame in a dense, typical region beats an equally uncertain
    outlier. ``beta`` weighs density against informativeness (0: ignore it).
    """
    info = np.asarray(informativeness, dtype=np.float64)
    if len(info) != len(embeddings):
        raise ValueError("informativeness and embeddings need one row per frame")
    density = np.maximum(knn_mean_similarity(embeddings, k, reference=reference).astype(np.float64), 0.0)
    return info * density**beta


# ---------------------------------------------------------------------------------------
# image metadata
# ---------------------------------------------------------------------------------------
