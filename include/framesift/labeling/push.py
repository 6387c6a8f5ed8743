"""The push stage of an ingest run: one video's selected frames to the labeling platform.

Builds the image-sequence request (frames in time order, the model's boxes as
pre-annotations) and hands it to ``queue.push_exactly_once``, which keeps the
Mongo ``labeling_queue`` record and never creates a platform task twice.
"""

from __future__ import annotations

import logging
from typing import Any

from pymongo.database import Database

from framesift.config.schema import PipelineConfig
from framesift.inference import predictions
from framesift.ingest import registry
from framesift.ingest.registry import VideoRef
from framesift.labeling.base import LabelingBackend, build_request
from framesift.labeling.queue import push_exactly_once

log = logging.getLogger("framesift.push")


def push_items(db: Database, selection: dict[str, Any]) -> list[dict[str, Any]]:
    """One push item per video of a selection that has selected frames (for mapping)."""
    items = []
    for video in selection.get("videos", []):
        doc = registry.get(db, video["video_id"]) or {}
        frames = doc.get("selected_frames") or []
        if frames:
            ref = VideoRef(doc["_id"], doc["bucket"], doc["key"], doc["etag"], doc.get("size", 0))
            items.append({**ref.to_dict(), "selection_id": selection["_id"], "n_frames": len(frames)})
    return items


def push_video(
    s3,
    db: Database,
    cfg: PipelineConfig,
    item: dict[str, Any],
    backend: LabelingBackend,
    *,
    run_id: str,
    owner: str,
) -> dict[str, Any]:
    """Push one video's selected frames; return its ``labeling_queue`` record."""
    doc = registry.claim(db, item["video_id"], run_id, to=registry.PUSHING, from_statuses=[registry.SELECTED])
    if doc is None:
        current = registry.get(db, item["video_id"]) or {}
        log.info("push %s: not claimable (now %s)", item["key"], current.get("status"))
        return {"skipped": True, "status": current.get("status"), "labeling": current.get("labeling")}
    task = doc["inference"]["task_name"]
    preds = predictions.read_predictions(s3, cfg, doc["_id"], task)
    request = build_request(
        cfg,
        selection_id=item["selection_id"],
        video_id=doc["_id"],
        video_key=doc["key"],
        frame_names=doc["selected_frames"],
        predictions=[{"file_name": name, "predictions": boxes} for name, boxes in preds.items()],
        schema=predictions.read_schema(s3, cfg, doc["_id"], task),
        model_version=doc["inference"].get("model_uri"),
    )
    try:
        record = push_exactly_once(
            db, backend, request, labeler=cfg.labeling.labeler, reviewer=cfg.labeling.reviewer, owner=owner
        )
    except Exception as exc:
        registry.mark(
            db, doc["_id"], registry.FAILED, run_id, reason=f"pushing: {exc}", failed_stage=registry.PUSHING
        )
        raise
    labeling = {
        "backend": record.get("backend"),
        "ids": record.get("backend_ids"),
        "url": record.get("url") or record.get("project_url"),
        "project_url": record.get("project_url"),
        "idempotency_key": request.idempotency_key,
        "frames": len(request.frame_names),
    }
    registry.mark(db, doc["_id"], registry.PUSHED, run_id, labeling=labeling)
    log.info(
        "push %s: %d frames -> %s %s",
        doc["key"],
        len(request.frame_names),
        labeling["backend"],
        labeling["url"],
    )
    return {
        "skipped": False,
        "status": registry.PUSHED,
        "labeling": labeling,
        "record_id": str(record.get("_id")),
    }
