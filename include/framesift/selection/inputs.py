"""What a selection reads: one entry per frame (names, embeddings, predictions, ...)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from framesift.selection import scores as scoring

DEFAULT_TASK = "object-detection"
TIME_KEY = "time_s"  # metadata: each frame's time in its video (the report shows it; not a METADATA key)


_NAME_RE = re.compile(r"^(?P<stem>.+)-(?P<index>\d+)-(?P<ext>[A-Za-z0-9_]+)\.[A-Za-z0-9]+$")


def parse_frame_name(name: str) -> tuple[str, int] | None:
    """``bikes-042-mp4.png`` -> (``bikes.mp4``, 42); None when not a Lightly frame name."""
    m = _NAME_RE.match(name.rsplit("/", 1)[-1])
    if not m:
        return None
    return f"{m['stem']}.{m['ext']}", int(m["index"])


@dataclass
class SelectionInputs:
    """What selection reads, one entry per frame (N frames).

    ``frame_names``: Lightly names (``<stem>-<index>-<ext>.png``), also the frame ids
    used against the datapool. ``embeddings``: (N, D) float32, L2-normalised rows (or
    None when no strategy needs them). ``video_keys``: the video each frame came from
    (default: parsed from the frame name). ``predictions``: Lightly prediction lists per
    frame (with ``categories``, the schema ``[{"id", "name"}]``) or a
    ``scores.FlatPredictions``; ``task_name`` names that task. ``scores``: precomputed
    score arrays by name (default: computed from the predictions). ``metadata``: per-key
    arrays (numbers or category strings), e.g. ``{"lightly.sharpness": [...]}``;
    ``video`` and ``frame_index`` are always available. ``frame_indices``: each frame's
    position in its video (default: parsed from the name, else the input order).
    ``corrupt``: frames the extraction flagged. ``query_sets``: embeddings of SIMILARITY
    query sets by ``"dataset_id/tag_name"`` or ``"tag_name"``.
    """

    frame_names: Sequence[str]
    embeddings: np.ndarray | None
    video_keys: Sequence[str] | None = None
    predictions: Any = None
    categories: Sequence[Mapping[str, Any]] | None = None
    task_name: str = DEFAULT_TASK
    scores: Mapping[str, np.ndarray] | None = None
    metadata: Mapping[str, Any] | None = None
    frame_indices: np.ndarray | None = None
    corrupt: np.ndarray | None = None
    query_sets: Mapping[str, np.ndarray] | None = None
    _flat: scoring.FlatPredictions | None = field(default=None, init=False, repr=False)
    _scores: dict[str, np.ndarray] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.frame_names = list(self.frame_names)
        n = len(self.frame_names)
        if self.embeddings is not None:
            emb = self.embeddings
            if not isinstance(emb, np.ndarray) or emb.ndim != 2:
                raise ValueError("embeddings must be a 2-D numpy array (frames x dimensions)")
            if emb.dtype != np.float32:
                self.embeddings = emb.astype(np.float32)
            if len(self.embeddings) != n:
                raise ValueError(f"embeddings has {len(self.embeddings)} rows for {n} frame names")
        parsed: list[tuple[str, int] | None] | None = None
        if self.video_keys is None or self.frame_indices is None:
            parsed = [parse_frame_name(f) for f in self.frame_names]
        if self.video_keys is None:
            assert parsed is not None
            self.video_keys = [p[0] if p else "" for p in parsed]
        else:
            self.video_keys = list(self.video_keys)
            if len(self.video_keys) != n:
                raise ValueError(f"video_keys has {len(self.video_keys)} entries for {n} frames")
        if self.frame_indices is None:
            assert parsed is not None
            self.frame_indices = np.array([p[1] if p else i for i, p in enumerate(parsed)], dtype=np.int64)
        else:
            self.frame_indices = np.asarray(self.frame_indices, dtype=np.int64)
            if len(self.frame_indices) != n:
                raise ValueError("frame_indices needs one entry per frame")
        if self.corrupt is not None:
            self.corrupt = np.asarray(self.corrupt, dtype=bool)
            if len(self.corrupt) != n:
                raise ValueError("corrupt needs one entry per frame")
        if isinstance(self.predictions, scoring.FlatPredictions):
            if self.predictions.n_frames != n:
                raise ValueError("predictions cover a different number of frames than frame_names")
        elif self.predictions is not None and len(self.predictions) != n:
            raise ValueError(f"predictions has {len(self.predictions)} entries for {n} frames")
        for key, values in (self.metadata or {}).items():
            if len(values) != n:
                raise ValueError(f"metadata[{key!r}] has {len(values)} entries for {n} frames")
        for key, values in (self.scores or {}).items():
            if len(values) != n:
                raise ValueError(f"scores[{key!r}] has {len(values)} entries for {n} frames")

    @property
    def n(self) -> int:
        return len(self.frame_names)

    @property
    def flat_predictions(self) -> scoring.FlatPredictions | None:
        if self._flat is None and self.predictions is not None:
            self._flat = scoring.as_flat(self.predictions, self.categories)
        return self._flat

    @property
    def class_names(self) -> list[str]:
        flat = self.flat_predictions
        if flat is not None:
            return list(flat.category_names)
        return [str(c.get("name", c["id"])) for c in self.categories or []]

    def score_arrays(self) -> dict[str, np.ndarray]:
        if self._scores is None:
            computed: dict[str, np.ndarray] = {}
            if self.flat_predictions is not None:
                computed = scoring.compute_scores(self.flat_predictions)
            computed.update({k: np.asarray(v, dtype=np.float64) for k, v in (self.scores or {}).items()})
            self._scores = computed
        return self._scores

    def metadata_values(self, key: str) -> np.ndarray | None:
        meta = self.metadata or {}
        for candidate in (key, key.removeprefix("lightly."), f"lightly.{key}"):
            if candidate in meta:
                return np.asarray(meta[candidate])
        if key in ("video", "lightly.video"):
            return np.asarray(self.video_keys, dtype=object)
        if key in ("frame_index", "lightly.frame_index"):
            return np.asarray(self.frame_indices)
        return None

    def subset(self, indices: Sequence[int] | np.ndarray) -> SelectionInputs:
        """The given frames (in that order), with everything that is per frame."""
        idx = np.asarray(indices, dtype=np.int64)
        names = [self.frame_names[i] for i in idx]
        flat = self.flat_predictions
        return SelectionInputs(
            frame_names=names,
            embeddings=None if self.embeddings is None else self.embeddings[idx],
            video_keys=[self.video_keys[i] for i in idx],  # type: ignore[index]
            predictions=None if flat is None else flat.subset(idx),
            categories=self.categories,
            task_name=self.task_name,
            scores={k: np.asarray(v)[idx] for k, v in (self.scores or {}).items()} or None,
            metadata={k: np.asarray(v)[idx] for k, v in (self.metadata or {}).items()} or None,
            frame_indices=self.frame_indices[idx],  # type: ignore[index]
            corrupt=None if self.corrupt is None else self.corrupt[idx],
            query_sets=self.query_sets,
        )

    @classmethod
    def concat(cls, parts: Sequence[SelectionInputs]) -> SelectionInputs:
        """Frames of several inputs one after the other (the same task and schema)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        names = [n for p in parts for n in p.frame_names]
        emb = None if first.embeddings is None else np.concatenate([p.embeddings for p in parts])  # type: ignore[misc]
        flats = [p.flat_predictions for p in parts]
        flat = None
        if all(f is not None for f in flats) and flats:
            offsets = np.cumsum([0] + [p.n for p in parts])
            probs = [f.probabilities for f in flats]  # type: ignore[union-attr]
            has_any = any(p is not None for p in probs)
            flat = scoring.FlatPredictions(
                n_frames=len(names),
                category_names=list(flats[0].category_names),  # type: ignore[union-attr]
                frame=np.concatenate([f.frame + o for f, o in zip(flats, offsets, strict=False)]),  # type: ignore[union-attr]
                category=np.concatenate([f.category for f in flats]),  # type: ignore[union-attr]
                score=np.concatenate([f.score for f in flats]),  # type: ignore[union-attr]
                probabilities=np.concatenate(
                    [
                        p if p is not None else np.zeros((f.n_boxes, f.num_classes), np.float32)  # type: ignore[union-attr]
                        for p, f in zip(probs, flats, strict=True)
                    ]
                )
                if has_any
                else None,
                has_probs=np.concatenate(
                    [
                        f.has_probs if f.has_probs is not None else np.zeros(f.n_boxes, bool)  # type: ignore[union-attr]
                        for f in flats
                    ]
                )
                if has_any
                else None,
                bbox=np.concatenate(
                    [
                        f.bbox if f.bbox is not None else np.full((f.n_boxes, 4), np.nan, np.float32)  # type: ignore[union-attr]
                        for f in flats
                    ]
                ),
            )

        def cat_dict(attr: str) -> dict[str, np.ndarray] | None:
            keys = set.intersection(*(set(getattr(p, attr) or {}) for p in parts))
            return {k: np.concatenate([np.asarray(getattr(p, attr)[k]) for p in parts]) for k in keys} or None

        return cls(
            frame_names=names,
            embeddings=emb,
            video_keys=[v for p in parts for v in p.video_keys],  # type: ignore[union-attr]
            predictions=flat,
            categories=first.categories,
            task_name=first.task_name,
            scores=cat_dict("scores"),
            metadata=cat_dict("metadata"),
            frame_indices=np.concatenate([p.frame_indices for p in parts]),  # type: ignore[misc]
            corrupt=np.concatenate(
                [p.corrupt if p.corrupt is not None else np.zeros(p.n, bool) for p in parts]
            ),
            query_sets=first.query_sets,
        )
