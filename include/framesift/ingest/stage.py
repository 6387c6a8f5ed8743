"""The ingest stages over plain clients: register uploads, extract one video.

Airflow operators and the CLI both call these; they hold the registry bookkeeping so
that every stage is idempotent and every outcome ends in a record.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from pymongo.database import Database

from framesift.config.errors import PERMANENT
from framesift.config.schema import PipelineConfig
from framesift.ingest import registry
from framesift.ingest.damage import extraction_line
from framesift.ingest.discovery import find_new_videos, is_video_key, objects_from_trigger_payloads
from framesift.ingest.registry import (
    DISCOVERED,
    EXTRACTED,
    EXTRACTING,
    FAILED,
    QUARANTINED,
    VideoRef,
    run_stage,
    stage_outcome,
)
from framesift.io.leases import Attempt, run_id_of
from framesift.io.s3 import S3Object, head

log = logging.getLogger("framesift.ingest")

# a resumable video that no run moved for this long comes first in the next run's batch
RESUME_IDLE = timedelta(minutes=30)


def register_uploads(
    s3,
    db: Database,
    cfg: PipelineConfig,
    *,
    run_id: str | Attempt,
    event_payloads: Iterable[dict[str, Any]] | None = None,
    prefix: str | None = None,
    requeue_keys: Iterable[str] | None = None,
    requeue_failed: bool = False,
    requeue_reason: str | None = None,
) -> list[VideoRef]:
    """Register new uploads and return the videos this run should extract.

    With ``event_payloads`` (an asset-triggered run) the objects come from the events;
    otherwise the prefix is listed. Videos registered earlier whose pipeline stopped half
    way (``registry.RESUMABLE``), videos stranded in a working status (their claim's lease
    ran out: the worker was killed) and failed videos that may be retried (see
    :func:`retryable_failed`) are picked up too, so a crashed run's work is not lost; each
    stage then claims what it can. At most ``discovery.max_videos_per_run`` are returned
    (see ``_batch`` for which come first); the rest wait for the next run. Each returned
    video is stamped with this run's config fingerprint (``batch_config``).

    ``requeue_keys`` / ``requeue_failed`` (the trigger form): failed videos of those keys,
    or all failed videos, are requeued first (:func:`requeue_videos`), with the reason.
    """
    run_id = run_id_of(run_id)
    registry.ensure_indexes(db)
    if requeue_keys or requeue_failed:
        requeue_videos(
            db,
            keys=requeue_keys or (),
            all_failed=requeue_failed,
            reason=requeue_reason or "requeued from the trigger form",
            by=f"run {run_id}",
            run_id=run_id,
        )
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

    fingerprint = config_fingerprint(cfg)
    pending = _batch(db, cfg.discovery.max_videos_per_run, fingerprint)
    refs = [VideoRef(d["_id"], d["bucket"], d["key"], d["etag"], d.get("size", 0)) for d in pending]
    if refs:
        db[registry.VIDEOS].update_many(
            {"_id": {"$in": [r.video_id for r in refs]}}, {"$set": {"batch_config": fingerprint}}
        )
    log.info(
        "register: %d object(s) from %s, %d new record(s), %d video(s) to extract in this run",
        len(objects),
        source,
        created,
        len(refs),
    )
    return refs


def config_fingerprint(cfg: PipelineConfig) -> str:
    """A hash of the pipeline config: a permanent failure is retried by a later run only
    when this changed since the run it failed in (someone fixed the config)."""
    text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def retryable_failed(run_id: str | None = None, fingerprint: str | None = None) -> dict[str, Any]:
    """Filter: failed videos a later run retries by itself: attempted in fewer than
    MAX_ATTEMPTS runs, and the error transient, or permanent but the config changed since
    (``batch_config`` differs from ``fingerprint``). Others wait for a requeue."""
    cause = [{"error.kind": {"$ne": PERMANENT}}]
    if fingerprint:
        cause.append({"batch_config": {"$ne": fingerprint}})
    return {
        "status": FAILED,
        "$and": [registry.runs_left(run_id or ""), {"$or": cause}],
    }


def requeue_videos(
    db: Database,
    *,
    keys: Iterable[str] = (),
    all_failed: bool = False,
    reason: str,
    by: str,
    run_id: str | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Requeue failed videos by S3 key (every failed version of it) or all of them
    (``all_failed``); return (the moved documents, the keys that matched no failed video)."""
    keys = [k for k in keys if k]
    query: dict[str, Any] = {"status": FAILED}
    if not all_failed:
        query["key"] = {"$in": keys}
    docs = list(db[registry.VIDEOS].find(query, {"key": 1}))
    moved = registry.requeue(db, [d["_id"] for d in docs], reason=reason, by=by, run_id=run_id)
    found = {d["key"] for d in docs}
    missing = [k for k in keys if k not in found]
    for key in missing:
        log.warning("requeue %s: no failed video with this key (framesift videos --failed lists them)", key)
    return moved, missing


def _batch(db: Database, limit: int, fingerprint: str | None = None) -> list[dict[str, Any]]:
    """The run's videos, oldest first within each group: videos no run has moved for
    ``RESUME_IDLE`` (a run stopped half way), then new uploads, then stranded videos (in
    a working status whose claim's lease ran out: the worker was killed; the stage takes
    them over), then the rest of the resumable ones (most likely still in an overlapping
    run's hands), so that overlapping runs drain new uploads instead of taking each
    other's batches, and a backlog of stranded videos never crowds out new uploads."""
    resumable = {
        "$or": [
            {"status": {"$in": [s for s in registry.RESUMABLE if s != registry.DISCOVERED]}},
            retryable_failed(None, fingerprint),
        ]
    }
    ts = registry.now()
    idle_since = ts - RESUME_IDLE
    stranded = {
        "status": {"$in": list(registry.WORKING)},
        "$or": [{"claim": None}, {"claim.lease_until": {"$lt": ts}}],
    }
    groups = (
        {**resumable, "updated_at": {"$lt": idle_since}},
        {"status": registry.DISCOVERED},
        stranded,
        {**resumable, "updated_at": {"$gte": idle_since}},
    )
    batch: list[dict[str, Any]] = []
    for query in groups:
        if len(batch) >= limit:
            break
        batch += (
            db[registry.VIDEOS]
            .find(query, {"bucket": 1, "key": 1, "etag": 1, "size": 1})
            .sort("created_at", 1)
            .limit(limit - len(batch))
        )
    return batch


def _with_etag(s3, obj: S3Object) -> S3Object:
    return obj if obj.etag else head(s3, obj.bucket, obj.key)


def extract_one(
    s3, db: Database, cfg: PipelineConfig, ref: VideoRef, *, run_id: str | Attempt, work_dir: str
) -> dict[str, Any]:
    """Claim, extract and record one video. Returns a small outcome dict.

    ``run_id``: the attempt (a plain run id is a first try); see ``registry.claim``.

    Bad input ends as ``quarantined`` with a reason (no exception). Infrastructure
    errors mark the video ``failed`` and re-raise, so the caller's retry policy runs.
    A video extracted before (by an earlier or concurrent run) is reported as is.
    """

    def work():
        from framesift.ingest.extract import extract_to_s3  # PyAV loads only where frames are decoded

        manifest = extract_to_s3(s3, ref.bucket, ref.key, ref.etag, cfg, work_dir=work_dir, log=log)
        return extraction_outcome(ref, manifest)

    doc, did = run_stage(db, ref, run_id, working=EXTRACTING, from_statuses=[DISCOVERED], work=work)
    return stage_outcome(ref, doc, skipped=not did)


def extraction_outcome(ref: VideoRef, manifest: dict[str, Any]) -> tuple[str, str | None, dict[str, Any]]:
    """(status, reason, registry fields) of an extraction manifest, for ``run_stage``."""
    fields = {
        "manifest_uri": manifest.get("manifest_uri"),
        "frames_prefix": manifest.get("frames_prefix"),
        "frames": {
            k: manifest.get(k)
            for k in (
                "frames_read",
                "frames_written",
                "frames_skipped",
                "frames_undecoded",
                "frames_duplicate",
                "frames_corrupt",
                "frames_damaged",
                "first_decode_error",
                "damage_ranges_s",
            )
        },
        "video": {k: manifest.get(k) for k in ("width", "height", "fps", "duration_s", "codec", "rotation")},
    }
    if manifest["status"] == QUARANTINED:
        log.warning(
            "quarantined s3://%s/%s: %s. Next step: fix or re-encode the file and upload it again "
            "(a new version gets a new record).",
            ref.bucket,
            ref.key,
            manifest.get("reason"),
        )
        return QUARANTINED, manifest.get("reason"), fields
    return EXTRACTED, None, fields


def run_videos(db: Database, video_ids: Iterable[str]) -> list[dict[str, Any]]:
    """A run's video records, read back from the registry (the source of truth)."""
    return list(db[registry.VIDEOS].find({"_id": {"$in": list(video_ids)}}))


def summarize(docs: list[dict[str, Any]], run_id: str | None = None) -> dict[str, Any]:
    """Counts over a run's video records.

    ``failed``: the videos that failed *in this run* (``run_id``; all failed ones without
    it), each once, with the stage, its task, the error, whether it is permanent, the fix
    and what happens next; ``failed_earlier``: videos of the batch still failed from an
    earlier run that this run did not retry (reported by that run; listed, not failed on).
    """
    by_status: dict[str, int] = {}
    frames = 0
    for d in docs:
        by_status[d["status"]] = by_status.get(d["status"], 0) + 1
        frames += (d.get("frames") or {}).get("frames_written", 0) or 0
    failed = [d for d in docs if d["status"] == FAILED]
    now_failed = [d for d in failed if run_id is None or registry.failed_in_run(d, run_id)]
    return {
        "videos": len(docs),
        "by_status": by_status,
        "frames_written": frames,
        "quarantined": [
            {"key": d["key"], "reason": d.get("reason")} for d in docs if d["status"] == QUARANTINED
        ],
        "failed": [failure_item(d) for d in now_failed],
        "failed_earlier": [failure_item(d) for d in failed if d not in now_failed],
        "extracted": [
            {
                "key": d["key"],
                "frames_prefix": d.get("frames_prefix"),
                "frames": (d.get("frames") or {}).get("frames_written"),
            }
            for d in docs
            if d["status"] == EXTRACTED
        ],
        # videos with frames decoded from damaged references: "extracted 5 frames, 2 damaged (...)"
        "damaged": [
            {
                "key": d["key"],
                "frames_damaged": d["frames"]["frames_damaged"],
                "line": extraction_line(d["frames"]),
            }
            for d in docs
            if (d.get("frames") or {}).get("frames_damaged")
        ],
    }


def requeue_hint(key: str) -> str:
    """How a person brings a video back after fixing a permanent cause."""
    return (
        f"`framesift videos requeue '{key}' --reason ...` (or the trigger form's requeue); "
        "a changed config retries it by itself"
    )


def failure_item(doc: dict[str, Any]) -> dict[str, Any]:
    """One failed video as people read it: where, what, and what happens next."""
    err = doc.get("error") or {}
    stage = doc.get("failed_stage") or err.get("stage")
    runs = len(doc.get("attempt_runs") or []) or doc.get("attempts") or 0
    if err.get("kind") == PERMANENT:
        then = f"not retried by itself: fix the cause ({err.get('fix') or 'see the error'}), then {requeue_hint(doc['key'])}"
    elif runs >= registry.MAX_ATTEMPTS:
        then = f"failed in {runs} runs: `framesift videos requeue '{doc['key']}'` once the cause is fixed"
    else:
        then = f"the next run retries it (attempt {runs + 1} of {registry.MAX_ATTEMPTS})"
    return {
        "key": doc["key"],
        "stage": stage,
        "task": err.get("task") or registry.STAGE_TASK.get(stage or ""),
        "kind": err.get("kind") or "transient",
        "error": err.get("message") or doc.get("reason"),
        "reason": doc.get("reason"),
        "fix": err.get("fix"),
        "attempts": runs,
        "next": then,
    }


def failure_line(item: dict[str, Any]) -> str:
    return f"{item['key']}: {item['kind']} error at {item['task'] or item['stage']}: {item['error']}; {item['next']}"
