"""Model-label disagreement review and annotator quality.

Boxes are ``(class_name, (x, y, w, h))`` pixel pairs (or :class:`framesift.labeling.Box`).

- :func:`match_frame` pairs predictions with labels by IoU (greedy, highest first, class
  agnostic) and names what disagrees: *missed* (a label no prediction matched),
  *spurious* (a prediction no label matched), *class swap* (matched, other class) and
  *poor localisation* (matched, same class, IoU under ``localisation_iou``).
- :func:`review_frames` scores every frame and puts the ones above
  ``review.disagreement_threshold`` into the Mongo ``review_queue``.
- :func:`annotator_quality`: accuracy and Cohen's kappa of each annotator against control
  frames with known labels; :func:`majority_vote` merges several annotators' boxes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from framesift.config.schema import ReviewConfig
from framesift.inference import predictions
from framesift.loop.trainset import LABELS
from framesift.tracking.clearml import RunSpec

REVIEW_QUEUE = "review_queue"
ANNOTATOR_QUALITY = "annotator_quality"
NONE = "<none>"  # the category of "no object" in the agreement statistics

BoxT = tuple[str, tuple[float, float, float, float]]


def as_pair(box: Any) -> BoxT:
    """A Box, a dict ``{class_name, bbox}`` or a ``(class, bbox)`` pair -> ``(class, bbox)``."""
    if isinstance(box, Mapping):
        return str(box["class_name"]), tuple(float(v) for v in box["bbox"])  # type: ignore[return-value]
    if hasattr(box, "class_name"):
        return str(box.class_name), tuple(float(v) for v in box.bbox)  # type: ignore[return-value]
    cls, bbox = box
    return str(cls), tuple(float(v) for v in bbox)  # type: ignore[return-value]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def greedy_pairs(a: Sequence[BoxT], b: Sequence[BoxT], min_iou: float) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, iou)`` of a and b with IoU >= min_iou, highest IoU first, each box once."""
    cands = sorted(
        ((iou(x[1], y[1]), i, j) for i, x in enumerate(a) for j, y in enumerate(b)),
        key=lambda c: (-c[0], c[1], c[2]),
    )
    used_a, used_b, out = set(), set(), []
    for v, i, j in cands:
        if v < min_iou or v <= 0:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        out.append((i, j, v))
    return out


@dataclass
class FrameReview:
    frame: str
    n_labels: int
    n_predictions: int
    missed: list[dict[str, Any]] = field(default_factory=list)
    spurious: list[dict[str, Any]] = field(default_factory=list)
    class_swaps: list[dict[str, Any]] = field(default_factory=list)
    poor_localisation: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_issues(self) -> int:
        return len(self.missed) + len(self.spurious) + len(self.class_swaps) + len(self.poor_localisation)

    @property
    def disagreement(self) -> float:
        """Issues per object (the larger of labels and predictions; 0 for an empty frame)."""
        return self.n_issues / max(1, self.n_labels, self.n_predictions)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n_issues": self.n_issues, "disagreement": self.disagreement}


def match_frame(
    predictions: Iterable[Any], labels: Iterable[Any], cfg: ReviewConfig | None = None, frame: str = ""
) -> FrameReview:
    cfg = cfg or ReviewConfig()
    preds = [as_pair(p) for p in predictions]
    labs = [as_pair(x) for x in labels]
    out = FrameReview(frame, len(labs), len(preds))
    pairs = greedy_pairs(labs, preds, cfg.match_iou)
    for i, j, v in pairs:
        (lc, lb), (pc, pb) = labs[i], preds[j]
        item = {"label": [lc, list(lb)], "prediction": [pc, list(pb)], "iou": round(v, 4)}
        if lc != pc:
            out.class_swaps.append(item)
        elif v < cfg.localisation_iou:
            out.poor_localisation.append(item)
    matched_l = {i for i, _, _ in pairs}
    matched_p = {j for _, j, _ in pairs}
    out.missed = [{"label": [c, list(b)]} for i, (c, b) in enumerate(labs) if i not in matched_l]
    out.spurious = [{"prediction": [c, list(b)]} for j, (c, b) in enumerate(preds) if j not in matched_p]
    return out


def review_frames(
    db,
    cfg: ReviewConfig,
    frames: Iterable[Mapping[str, Any]],
    *,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Review frames ``{_id, frame_name, labels, predictions, annotation_id?}``; the ones over
    the threshold go to ``review_queue`` (one record per frame and annotation, upserted).
    Returns counts and the per-issue totals."""
    now = datetime.now(UTC)
    totals = Counter()
    flagged = []
    n = 0
    for f in frames:
        n += 1
        r = match_frame(f.get("predictions") or [], f.get("labels") or [], cfg, frame=f["frame_name"])
        totals.update(
            missed=len(r.missed),
            spurious=len(r.spurious),
            class_swaps=len(r.class_swaps),
            poor_localisation=len(r.poor_localisation),
        )
        if r.disagreement > cfg.disagreement_threshold:
            key = f"{f['_id']}@{f.get('annotation_id')}"
            flagged.append(key)
            if db is not None:
                db[REVIEW_QUEUE].update_one(
                    {"_id": key},
                    {
                        "$set": {**r.to_dict(), "label_id": f["_id"], "run_id": run_id, "updated_at": now},
                        "$setOnInsert": {"created_at": now, "status": "open"},
                    },
                    upsert=True,
                )
    return {"reviewed": n, "flagged": len(flagged), "flagged_ids": flagged, **dict(totals)}


# ------------------------------------------------------------------ annotator quality


def cohens_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two raters' categorical labels of the same items.

    (p_o - p_e) / (1 - p_e); 1.0 when both always agree on a single category.
    """
    if len(a) != len(b):
        raise ValueError("both raters must label the same items")
    n = len(a)
    if n == 0:
        return float("nan")
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    if p_e == 1.0:
        return 1.0
    return (p_o - p_e) / (1 - p_e)


def paired_categories(
    truth: Sequence[Any], given: Sequence[Any], min_iou: float = 0.5
) -> tuple[list[str], list[str]]:
    """Boxes as categorical items for agreement statistics: each true box with the class the
    annotator gave the box matching it (``<none>`` when missed), and each extra box the
    annotator drew as (``<none>``, its class)."""
    t = [as_pair(x) for x in truth]
    g = [as_pair(x) for x in given]
    pairs = greedy_pairs(t, g, min_iou)
    by_truth = {i: j for i, j, _ in pairs}
    used = set(by_truth.values())
    ta = [c for c, _ in t] + [NONE for j in range(len(g)) if j not in used]
    ga = [g[by_truth[i]][0] if i in by_truth else NONE for i in range(len(t))] + [
        g[j][0] for j in range(len(g)) if j not in used
    ]
    return ta, ga


def annotator_quality(
    annotations: Iterable[Mapping[str, Any]],
    control: Mapping[str, Sequence[Any]],
    cfg: ReviewConfig | None = None,
) -> dict[str, dict[str, Any]]:
    """Accuracy and Cohen's kappa per annotator on the control frames.

    ``annotations``: ``{frame_name, annotator, boxes}``; ``control``: frame name -> the known
    boxes. Items are boxes (see :func:`paired_categories`); accuracy is the share of items
    where the annotator agrees with the known labels. ``passed``: both meet the targets.
    """
    cfg = cfg or ReviewConfig()
    items: dict[str, tuple[list[str], list[str]]] = {}
    frames: Counter = Counter()
    for ann in annotations:
        name = ann["frame_name"]
        if name not in control:
            continue
        who = str(ann.get("annotator") or "unknown")
        t, g = paired_categories(control[name], ann.get("boxes") or [], cfg.match_iou)
        got = items.setdefault(who, ([], []))
        got[0].extend(t)
        got[1].extend(g)
        frames[who] += 1
    out = {}
    for who, (t, g) in items.items():
        acc = sum(x == y for x, y in zip(t, g, strict=True)) / len(t) if t else float("nan")
        kappa = cohens_kappa(t, g) if t else float("nan")
        out[who] = {
            "annotator": who,
            "control_frames": frames[who],
            "items": len(t),
            "accuracy": acc,
            "kappa": kappa,
            "passed": bool(acc >= cfg.min_accuracy and kappa >= cfg.min_kappa),
            "targets": {"accuracy": cfg.min_accuracy, "kappa": cfg.min_kappa},
        }
    return out


def record_quality(db, quality: Mapping[str, Mapping[str, Any]], *, run_id: str | None = None) -> None:
    """One ``annotator_quality`` document per annotator and run."""
    now = datetime.now(UTC)
    for who, q in quality.items():
        db[ANNOTATOR_QUALITY].update_one(
            {"_id": f"{run_id}:{who}"}, {"$set": {**q, "run_id": run_id, "at": now}}, upsert=True
        )


def majority_vote(per_annotator: Sequence[Sequence[Any]], min_iou: float = 0.5) -> list[BoxT]:
    """Merge several annotators' boxes of one frame: boxes that overlap (IoU >= min_iou with
    the group's first box) form a group; a group that more than half the annotators drew
    is kept, with the most common class (ties: alphabetical) and the mean box."""
    n = len(per_annotator)
    groups: list[list[tuple[int, BoxT]]] = []
    for who, boxes in enumerate(per_annotator):
        for box in (as_pair(b) for b in boxes):
            best, best_iou = None, min_iou
            for g in groups:
                if any(w == who for w, _ in g):
                    continue
                v = iou(g[0][1][1], box[1])
                if v >= best_iou:
                    best, best_iou = g, v
            if best is None:
                groups.append([(who, box)])
            else:
                best.append((who, box))
    out = []
    for g in groups:
        if len(g) * 2 <= n:
            continue
        counts = Counter(c for _, (c, _) in g)
        top = max(counts.values())
        cls = sorted(c for c, k in counts.items() if k == top)[0]
        mean = tuple(round(sum(b[k] for _, (_, b) in g) / len(g), 2) for k in range(4))
        out.append((cls, mean))
    return out


# ------------------------------------------------------------------ the labels DAG's review step

CONTROL_LABELS = "control_labels"  # known labels of control frames: {_id: <video_id>/<frame>, boxes}


def review_labels(s3, db, cfg, *, version: str | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Review the labels that went into training-set ``version`` (default: every label not
    reviewed yet) against the model's predictions made at ingest (Lightly files in S3), and
    measure annotators on the control frames among them (Mongo ``control_labels``)."""

    query: dict[str, Any] = {"reviewed": {"$ne": True}}
    if version:
        query["version"] = version
    docs = list(db[LABELS].find(query))
    task = cfg.inference.task_name
    cache: dict[str, tuple[dict[str, Any], dict[int, str]]] = {}
    frames = []
    for d in docs:
        vid = d["video_id"]
        if vid not in cache:
            try:
                schema = predictions.read_schema(s3, cfg, vid, task)
                cache[vid] = (
                    predictions.read_predictions(s3, cfg, vid, task),
                    {int(c["id"]): c["name"] for c in schema["categories"]},
                )
            except Exception:  # no predictions for this video (e.g. labeled outside the ingest)
                cache[vid] = ({}, {})
        preds, cats = cache[vid]
        if d["frame_name"] not in preds:
            continue
        frames.append(
            {
                "_id": d["_id"],
                "frame_name": d["frame_name"],
                "annotation_id": d.get("annotation_id"),
                "labels": [(b["class_name"], b["bbox"]) for b in d.get("boxes") or []],
                "predictions": [
                    (cats.get(int(p["category_id"]), str(p["category_id"])), p["bbox"])
                    for p in preds[d["frame_name"]]
                ],
            }
        )
    summary = review_frames(db, cfg.review, frames, run_id=run_id)
    control = {
        c["_id"]: c["boxes"] for c in db[CONTROL_LABELS].find({"_id": {"$in": [d["_id"] for d in docs]}})
    }
    quality = annotator_quality(
        [
            {"frame_name": d["_id"], "annotator": d.get("annotator"), "boxes": d.get("boxes") or []}
            for d in docs
        ],
        control,
        cfg.review,
    )
    if quality:
        record_quality(db, quality, run_id=run_id)
    if docs:
        db[LABELS].update_many({"_id": {"$in": [d["_id"] for d in docs]}}, {"$set": {"reviewed": True}})
    summary.pop("flagged_ids", None)
    return {
        **summary,
        "labels": len(docs),
        "without_predictions": len(docs) - len(frames),
        "annotators": quality,
    }


def run_spec(cfg, summary: Mapping[str, Any], *, version: str, run_id: str):
    """The ClearML task of one review: its counts and each annotator's accuracy and kappa."""

    spec = RunSpec(
        project=cfg.tracking.project_name,
        task_name=f"framesift_labels {run_id}",
        task_type="qc",
        tags=["framesift", "labels", version],
        offline=cfg.tracking.offline,
        params={"trainset_version": version, "review": cfg.review.model_dump()},
    )
    for key in ("reviewed", "flagged", "missed", "spurious", "class_swaps", "poor_localisation"):
        spec.scalar("review", key, summary.get(key, 0))
    for who, q in summary["annotators"].items():
        spec.scalar("annotator accuracy", who, q["accuracy"])
        spec.scalar("annotator kappa", who, q["kappa"])
    return spec
