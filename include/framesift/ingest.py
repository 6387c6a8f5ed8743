"""The ingest stages over plain clients: register uploads, extract one video.

Airflow operators and the CLI both call these; they hold the registry bookkeeping so
that every stage is idempotent and every outcome ends in a record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pymongo.database import Database

from framesift import registry
from framesift.config import PipelineConfig
from framesift.discovery import find_new_videos, is_video_key, objects_from_trigger_payloads
from framesift.registry import DISCOVERED, EXTRACTED, EXTRACTING, FAILED, QUARANTINED, VideoRef
from framesift.storage import S3Object, head

log = logging.getLogger("framesift.ingest")

MAX_ATTEMPTS = 3  # a video that failed this often for infrastructure reasons waits for a person


def register_uploads(
    s3,
    db: Database,
    cfg: PipelineConfig,
    *,
    run_id: str,
    event_payloads: Iterable[dict[str, Any]] | None = None,
    prefix: str | None = None,
) -> list[VideoRef]:
    """Register new uploads and return the videos this run should extract.

    With ``event_payloads`` (an asset-triggered run) the objects come from the events;
    otherwise the prefix is listed. Videos registered earlier but never finished
    (``discovered``, or ``failed`` fewer than MAX_ATTEMPTS times) are picked up too, so
    a crashed run's work is not lost. At most ``discovery.max_videos_per_run`` are
    returned; the rest wait for the next run.
    """
    registry.ensure_indexes(db)
    payloads = list(event_payloads or [])
    if payloads:
        objects = [_with_etag(s3, o) for o in objects_from_trigger_payloads(payloads)]
        source = f"{len(payloads)} event(s)"
    else:
        objects = find_new_videos(s3, db, cfg, prefix)
        source = (
            f"listing s3://{cfg.storage.bucket}/{cfg.storage.videos_prefix if prefix is None else prefix}"
        )

    created = 0
    for obj in objects:
        if not is_video_key(obj.key, cfg.discovery.video_extensions):
            log.info("ignoring s3://%s/%s: extension not in discovery.video_extensions", obj.bucket, obj.key)
            continue
        _, is_new = registry.register(db, obj, run_id)
        created += is_new

    pending = list(
        db[registry.VIDEOS]
        .find(
            {
                "$or": [
                    {"status": DISCOVERED},
                    {"status": FAILED, "attempts": {"$lt": MAX_ATTEMPTS}},
                ]
            },
            {"bucket": 1, "key": 1, "etag": 1, "size": 1},
        )
        .sort("created_at", 1)
        .limit(cfg.discovery.max_videos_per_run)
    )
    refs = [VideoRef(d["_id"], d["bucket"], d["key"], d["etag"], d.get("size", 0)) for d in pending]
    log.info(
        "register: %d object(s) from %s, %d new record(s), %d video(s) to extract in this run",
        len(objects),
        source,
        created,
        len(refs),
    )
    return refs


def _with_etag(s3, obj: S3Object) -> S3Object:
    return obj if obj.etag else head(s3, obj.bucket, obj.key)


def extract_one(
    s3, db: Database, cfg: PipelineConfig, ref: VideoRef, *, run_id: str, work_dir: str
) -> dict[str, Any]:
    """Claim, extract and record one video. Returns a small outcome dict.

    Bad input ends as ``quarantined`` with a reason (no exception). Infrastructure
    errors mark the video ``failed`` and re-raise, so the caller's retry policy runs.
    """
    doc = registry.claim(db, ref.video_id, run_id, to=EXTRACTING, from_statuses=[DISCOVERED, FAILED])
    if doc is None:
        current = registry.get(db, ref.video_id) or {}
        log.info(
            "skip s3://%s/%s: already %s (run %s)",
            ref.bucket,
            ref.key,
            current.get("status"),
            current.get("run_id"),
        )
        return _outcome(ref, current, skipped=True)
    db[registry.VIDEOS].update_one({"_id": ref.video_id}, {"$inc": {"attempts": 1}})

    from framesift import video  # PyAV is only needed where frames are decoded

    try:
        manifest = video.extract_to_s3(s3, ref.bucket, ref.key, ref.etag, cfg, work_dir=work_dir, log=log)
    except Exception as exc:
        registry.mark(db, ref.video_id, FAILED, run_id, reason=f"{type(exc).__name__}: {exc}")
        raise

    fields = {
        "manifest_uri": manifest.get("manifest_uri"),
        "frames_prefix": manifest.get("frames_prefix"),
        "frames": {
            k: manifest.get(k)
            for k in ("frames_read", "frames_written", "frames_skipped", "frames_duplicate", "frames_corrupt")
        },
        "video": {k: manifest.get(k) for k in ("width", "height", "fps", "duration_s", "codec", "rotation")},
    }
    if manifest["status"] == QUARANTINED:
        registry.mark(db, ref.video_id, QUARANTINED, run_id, reason=manifest.get("reason"), **fields)
        log.warning(
            "quarantined s3://%s/%s: %s. Next step: fix or re-encode the file and upload it again "
            "(a new version gets a new record).",
            ref.bucket,
            ref.key,
            manifest.get("reason"),
        )
    else:
        registry.mark(db, ref.video_id, EXTRACTED, run_id, **fields)
    return _outcome(ref, registry.get(db, ref.video_id) or {}, skipped=False)


def _outcome(ref: VideoRef, doc: dict[str, Any], *, skipped: bool) -> dict[str, Any]:
    frames = doc.get("frames") or {}
    return {
        "video_id": ref.video_id,
        "key": ref.key,
        "status": doc.get("status"),
        "reason": doc.get("reason"),
        "manifest_uri": doc.get("manifest_uri"),
        "frames_prefix": doc.get("frames_prefix"),
        "frames_written": frames.get("frames_written", 0),
        "frames_corrupt": frames.get("frames_corrupt", 0),
        "skipped": skipped,
    }


def summarize(db: Database, video_ids: Iterable[str]) -> dict[str, Any]:
    """Counts over a run's videos, read back from the registry (the source of truth)."""
    ids = list(video_ids)
    docs = list(db[registry.VIDEOS].find({"_id": {"$in": ids}}, {"history": 0}))
    by_status: dict[str, int] = {}
    frames = 0
    for d in docs:
        by_status[d["status"]] = by_status.get(d["status"], 0) + 1
        frames += (d.get("frames") or {}).get("frames_written", 0) or 0
    return {
        "videos": len(docs),
        "by_status": by_status,
        "frames_written": frames,
        "quarantined": [
            {"key": d["key"], "reason": d.get("reason")} for d in docs if d["status"] == QUARANTINED
        ],
        "failed": [{"key": d["key"], "reason": d.get("reason")} for d in docs if d["status"] == FAILED],
        "extracted": [
            {
                "key": d["key"],
                "frames_prefix": d.get("frames_prefix"),
                "frames": (d.get("frames") or {}).get("frames_written"),
            }
            for d in docs
            if d["status"] == EXTRACTED
        ],
    }
