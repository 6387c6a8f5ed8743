"""The push stage of an ingest run: one video's selected frames to the labeling platform.

Builds the image-sequence request (frames in time order, the model's boxes as
pre-annotations) and hands it to ``queue.push_exactly_once``, which keeps the
Mongo ``labeling_queue`` record and never creates a platform task twice.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from pymongo.database import Database

from framesift.config.schema import PipelineConfig
from framesift.inference import predictions
from framesift.inference.models import inferred_model_version
from framesift.ingest import registry
from framesift.ingest.registry import VideoRef
from framesift.io import layout
from framesift.io.leases import Attempt, as_attempt
from framesift.labeling.base import LabelingBackend, build_request
from framesift.labeling.queue import push_exactly_once
from framesift.selection.datapool import SELECTIONS

log = logging.getLogger("framesift.push")


def push_items(db: Database, selection: dict[str, Any]) -> list[dict[str, Any]]:
    """One push item per video of a selection that has selected frames (for mapping).

    A video re-selected since by another selection (its record names that one) is left
    to that selection's push."""
    items = []
    for video in selection.get("videos", []):
        doc = registry.get(db, video["video_id"]) or {}
        frames = doc.get("selected_frames") or []
        if frames and doc.get("selection_id") in (None, selection["_id"]):
            items.append(_item(doc))
    return items


def resumed_push_items(
    db: Database, video_ids: list[str], exclude: set[str] = frozenset()
) -> list[dict[str, Any]]:
    """Push items for videos of a run's batch that an earlier run selected but never
    pushed: ``selected``, stranded in ``pushing`` (their claim's lease ran out), or failed
    at the push (the batch only holds failed videos a run may retry)."""
    ts = registry.now()
    docs = db[registry.VIDEOS].find(
        {
            "_id": {"$in": [v for v in video_ids if v not in exclude]},
            "selection_id": {"$ne": None},
            "$or": [
                {"status": registry.SELECTED},
                {"status": registry.PUSHING, "$or": [{"claim": None}, {"claim.lease_until": {"$lt": ts}}]},
                {"status": registry.FAILED, "failed_stage": registry.PUSHING},
            ],
        }
    )
    return [_item(d) for d in docs if d.get("selected_frames")]


def _item(doc: dict[str, Any]) -> dict[str, Any]:
    ref = VideoRef(doc["_id"], doc["bucket"], doc["key"], doc["etag"], doc.get("size", 0))
    return {**ref.to_dict(), "selection_id": doc["selection_id"], "n_frames": len(doc["selected_frames"])}


def selection_reasons(db: Database, selection_id: str, video_id: str) -> dict[str, str]:
    """Frame name -> why the selection took it, from the ``selections`` record: its pick
    rank and each objective's value at pick time (``"pick 3 of 20: DIVERSITY 0.81,
    UNCERTAINTY 0.42"``), or that it came in as part of a sequence around a pick."""
    record = db[SELECTIONS].find_one(
        {"_id": selection_id}, {"selected": 1, "objective_names": 1, "objective_values": 1}
    )
    if not record:
        return {}
    names = record.get("objective_names") or []
    values = record.get("objective_values") or []
    selected = record.get("selected") or []
    out = {}
    prefix = f"{video_id}/"
    for rank, fid in enumerate(selected):
        if not fid.startswith(prefix):
            continue
        row = values[rank] if rank < len(values) else []
        scores = [(n, v) for n, v in zip(names, row, strict=False) if v is not None]
        if scores:
            text = ", ".join(f"{n} {float(v):.2f}" for n, v in scores)
            out[fid[len(prefix) :]] = f"pick {rank + 1} of {len(selected)}: {text}"
        else:
            out[fid[len(prefix) :]] = f"pick {rank + 1} of {len(selected)}: part of a sequence around a pick"
    return out


def push_video(
    s3,
    db: Database,
    cfg: PipelineConfig,
    item: dict[str, Any],
    backend: LabelingBackend,
    *,
    run_id: str | Attempt,
    owner: str | None = None,
) -> dict[str, Any]:
    """Push one video's selected frames; return its ``labeling_queue`` record's summary.

    ``run_id``: the attempt (a plain run id is a first try; ``owner`` then names the task).
    The video is claimed into ``pushing`` (a stranded push is taken over), the claim is
    renewed while the platform is called, and ``pushed`` is recorded only while it is
    still held. The sequence comes from the video's record (its ``selection_id`` and
    ``selected_frames``), the source of truth.
    """
    attempt = as_attempt(run_id)
    if owner and attempt.task is None:
        attempt = replace(attempt, task=owner)
    ref = VideoRef(item["video_id"], item["bucket"], item["key"], item["etag"], item.get("size", 0))
    out: dict[str, Any] = {}

    def work():
        doc = registry.get(db, ref.video_id) or {}
        task = doc["inference"]["task_name"]
        preds = predictions.read_predictions(s3, cfg, doc["_id"], task)
        request = build_request(
            cfg,
            selection_id=doc["selection_id"],
            video_id=doc["_id"],
            video_key=doc["key"],
            frame_names=doc["selected_frames"],
            predictions=[{"file_name": name, "predictions": boxes} for name, boxes in preds.items()],
            schema=predictions.read_schema(s3, cfg, doc["_id"], task),
            model_version=inferred_model_version(doc["inference"]),
            frame_times_s=layout.frame_times(s3, doc.get("manifest_uri")),
            frame_reasons=selection_reasons(db, doc["selection_id"], doc["_id"]),
        )
        record = push_exactly_once(
            db, backend, request, labeler=cfg.labeling.labeler, reviewer=cfg.labeling.reviewer, owner=attempt
        )
        labeling = {
            "backend": record.get("backend"),
            "project": record.get("project"),
            "ids": record.get("backend_ids"),
            "url": record.get("url") or record.get("project_url"),
            "project_url": record.get("project_url"),
            "idempotency_key": request.idempotency_key,
            "frames": len(request.frame_names),
        }
        out.update(labeling=labeling, record_id=str(record.get("_id")))
        return registry.PUSHED, None, {"labeling": labeling}

    doc, did = registry.run_stage(
        db, ref, attempt, working=registry.PUSHING, from_statuses=[registry.SELECTED], work=work
    )
    if not did:
        log.info("push %s: not pushed by this attempt (now %s)", ref.key, doc.get("status"))
        return {"skipped": True, "status": doc.get("status"), "labeling": doc.get("labeling")}
    labeling = out["labeling"]
    log.info("push %s: %d frames -> %s %s", ref.key, labeling["frames"], labeling["backend"], labeling["url"])
    return {"skipped": False, "status": registry.PUSHED, "labeling": labeling, "record_id": out["record_id"]}
