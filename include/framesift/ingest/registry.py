"""The Mongo ``videos`` registry: one document per version of an uploaded object.

Keyed by bucket/key/etag, so duplicate events, retries and re-runs never create a
second record, while a new version of an object (new etag) does. Each document
carries a status with a timestamped history of who moved it where:

    discovered -> extracting -> extracted -> inferring -> inferred -> selecting -> selected
                                                               -> pushing -> pushed
                            \\-> quarantined (bad input, with a reason; final)
    any working status      -> failed (infrastructure error, with ``failed_stage``;
                               that stage may claim it again, up to MAX_ATTEMPTS)

A stage *claims* a video atomically before working on it, so two DAG runs that
saw the same upload cannot both process it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.database import Database

from framesift.io import layout
from framesift.io.s3 import S3Object

log = logging.getLogger("framesift.ingest")

VIDEOS = "videos"

DISCOVERED = "discovered"
EXTRACTING = "extracting"
EXTRACTED = "extracted"
INFERRING = "inferring"
INFERRED = "inferred"
SELECTING = "selecting"
SELECTED = "selected"
PUSHING = "pushing"
PUSHED = "pushed"
NOT_SELECTED = "not_selected"  # final: the batch's selection took no frame of this video
QUARANTINED = "quarantined"
FAILED = "failed"  # with ``failed_stage``: the working status it failed in

# statuses from which a later run resumes a video's pipeline
RESUMABLE = (DISCOVERED, EXTRACTED, INFERRED, SELECTED)
MAX_ATTEMPTS = 3  # a video that failed this often for infrastructure reasons waits for a person

# a claim older than this is presumed to belong to a crashed worker
STALE_CLAIM = timedelta(hours=2)


@dataclass(frozen=True)
class VideoRef:
    """What tasks pass to each other about a video (small, XCom-safe)."""

    video_id: str
    bucket: str
    key: str
    etag: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def now() -> datetime:
    return datetime.now(UTC)


def ensure_indexes(db: Database) -> None:
    coll = db[VIDEOS]
    coll.create_index([("bucket", ASCENDING), ("key", ASCENDING), ("etag", ASCENDING)], unique=True)
    coll.create_index([("status", ASCENDING)])
    coll.create_index([("updated_at", ASCENDING)])


def register(db: Database, obj: S3Object, run_id: str | None) -> tuple[VideoRef, bool]:
    """Upsert the registry record of ``obj``; return (ref, created)."""
    vid = layout.video_id(obj.bucket, obj.key, obj.etag)
    ts = now()
    result = db[VIDEOS].update_one(
        {"_id": vid},
        {
            "$setOnInsert": {
                "bucket": obj.bucket,
                "key": obj.key,
                "etag": obj.etag,
                "size": obj.size,
                "status": DISCOVERED,
                "reason": None,
                "attempts": 0,
                "created_at": ts,
                "updated_at": ts,
                "first_run_id": run_id,
                "run_id": run_id,
                "history": [{"status": DISCOVERED, "at": ts, "run_id": run_id}],
            }
        },
        upsert=True,
    )
    return VideoRef(vid, obj.bucket, obj.key, obj.etag, obj.size), result.upserted_id is not None


def known_ids(db: Database, objects: Iterable[S3Object]) -> set[str]:
    ids = [layout.video_id(o.bucket, o.key, o.etag) for o in objects]
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        found.update(d["_id"] for d in db[VIDEOS].find({"_id": {"$in": chunk}}, {"_id": 1}))
    return found


def get(db: Database, video_id: str) -> dict[str, Any] | None:
    return db[VIDEOS].find_one({"_id": video_id})


def claim(db: Database, video_id: str, run_id: str, *, to: str, from_statuses: Iterable[str]) -> dict | None:
    """Atomically move a video into stage ``to`` for ``run_id``.

    Succeeds when the video is in one of ``from_statuses``, failed in this stage fewer
    than MAX_ATTEMPTS times, is already claimed by this same run (a task retry), or is
    claimed by a run whose claim went stale. Counts the attempt. Returns the updated
    document, or None when someone else owns it or it is past this stage.
    """
    ts = now()
    query = {
        "_id": video_id,
        "$or": [
            {"status": {"$in": list(from_statuses)}},
            {"status": FAILED, "failed_stage": to, "attempts": {"$lt": MAX_ATTEMPTS}},
            {"status": to, "run_id": run_id},
            {"status": to, "updated_at": {"$lt": ts - STALE_CLAIM}},
        ],
    }
    return db[VIDEOS].find_one_and_update(
        query,
        {
            "$set": {"status": to, "run_id": run_id, "updated_at": ts, "reason": None},
            "$inc": {"attempts": 1},
            "$push": {"history": {"status": to, "at": ts, "run_id": run_id}},
        },
        return_document=ReturnDocument.AFTER,
    )


def mark(
    db: Database, video_id: str, status: str, run_id: str | None, *, reason: str | None = None, **fields: Any
) -> None:
    """Record a status change (with its reason and any result fields).

    A stage that finishes resets the attempt count, so the next stage counts its own.
    """
    ts = now()
    if status != FAILED:
        fields = {"attempts": 0, **fields}
    entry = {"status": status, "at": ts, "run_id": run_id}
    if reason:
        entry["reason"] = reason
    db[VIDEOS].update_one(
        {"_id": video_id},
        {
            "$set": {"status": status, "reason": reason, "updated_at": ts, **fields},
            "$push": {"history": entry},
        },
    )


def recent(db: Database, limit: int = 20) -> list[dict[str, Any]]:
    return list(db[VIDEOS].find({}, {"history": 0}).sort("updated_at", -1).limit(limit))


def count_by_status(db: Database) -> dict[str, int]:
    return {
        d["_id"]: d["n"] for d in db[VIDEOS].aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}])
    }


def run_stage(
    db: Database,
    ref: VideoRef,
    run_id: str,
    *,
    working: str,
    from_statuses: list[str],
    work: Callable[[], tuple[str, str | None, dict[str, Any]]],
) -> tuple[dict[str, Any], bool]:
    """Claim ``ref`` into ``working``, run ``work`` and record its (status, reason, fields).

    Returns (the video's document, whether this call did the work). An exception marks
    the video ``failed`` in this stage (so a retry may claim it again) and propagates.
    """
    doc = claim(db, ref.video_id, run_id, to=working, from_statuses=from_statuses)
    if doc is None:
        current = get(db, ref.video_id) or {}
        log.info(
            "%s s3://%s/%s: not claimable (now %s, run %s)",
            working,
            ref.bucket,
            ref.key,
            current.get("status"),
            current.get("run_id"),
        )
        return current, False
    try:
        status, reason, fields = work()
    except Exception as exc:
        mark(
            db,
            ref.video_id,
            FAILED,
            run_id,
            reason=f"{working}: {type(exc).__name__}: {exc}",
            failed_stage=working,
        )
        raise
    mark(db, ref.video_id, status, run_id, reason=reason, **fields)
    return get(db, ref.video_id) or {}, True


def stage_outcome(ref: VideoRef, doc: dict[str, Any], *, skipped: bool) -> dict[str, Any]:
    frames = doc.get("frames") or {}
    return {
        **ref.to_dict(),  # so the next mapped stage can expand over this outcome
        "status": doc.get("status"),
        "reason": doc.get("reason"),
        "manifest_uri": doc.get("manifest_uri"),
        "frames_prefix": doc.get("frames_prefix"),
        "frames_written": frames.get("frames_written", 0),
        "frames_corrupt": frames.get("frames_corrupt", 0),
        "inference": doc.get("inference"),
        "skipped": skipped,
    }
