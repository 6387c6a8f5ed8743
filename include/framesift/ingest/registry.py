"""The Mongo ``videos`` registry: one document per version of an uploaded object.

Keyed by bucket/key/etag, so duplicate events, retries and re-runs never create a
second record, while a new version of an object (new etag) does. Each document
carries a status with a timestamped history of who moved it where:

    discovered -> extracting -> extracted -> inferring -> inferred -> selecting -> selected
                                                               -> pushing -> pushed
                            \\-> quarantined (bad input, with a reason; final)
    any working status      -> failed (with ``failed_stage`` and ``error``: the stage,
                               task, run, error, whether it is permanent and the fix)
    failed                  -> the failed stage again: a later run (transient errors, up
                               to MAX_ATTEMPTS runs; permanent ones once the config
                               changed) or after :func:`requeue` (a person, with a reason)

**Attempts** count framesift attempts, i.e. DAG runs (or CLI calls), per stage:
``attempt_runs`` lists the runs that claimed the video in its current stage and
``attempts`` is their number; Airflow's retries of one task in one run are *tries* of
the same attempt (``tries`` counts every claim). A finished stage resets both.

A stage *claims* a video atomically before working on it (``claim``: the attempt, a
fencing token and a lease, see :mod:`framesift.io.leases`), so two DAG runs that saw the
same upload cannot both process it. The stage's heartbeat renews the lease while it
works; its final write is conditional on still holding the claim, so a zombie attempt's
result is refused (and recorded under ``refused``). A video whose lease ran out in a
working status (its worker was killed) is *stranded*: the next run takes it over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.database import Database

from framesift.config.errors import classify, one_line
from framesift.io import faults, layout
from framesift.io.leases import (
    Attempt,
    ClaimLost,
    Heartbeat,
    Lease,
    as_attempt,
    aware,
    claimable,
    describe,
    run_id_of,
    wait_for_lapse,
)
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
# statuses a stage holds a video in while it works (under a claim with a lease)
WORKING = (EXTRACTING, INFERRING, SELECTING, PUSHING)
MAX_ATTEMPTS = 3  # runs in one stage; a video that failed in this many waits for a person
# the status a failed video goes back to, per failed stage, so the next run resumes it there
RESUME_STATUS = {EXTRACTING: DISCOVERED, INFERRING: EXTRACTED, SELECTING: INFERRED, PUSHING: SELECTED}
# the Airflow task of each working status (for messages that say where to look)
STAGE_TASK = {
    EXTRACTING: "extract_frames",
    INFERRING: "infer",
    SELECTING: "select_frames",
    PUSHING: "push_to_labeling",
}
REFUSED_KEPT = 20  # refused (zombie) writes kept on a video's record


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
    coll.create_index([("claim.lease_until", ASCENDING)])


def register(db: Database, obj: S3Object, run_id: str | Attempt | None) -> tuple[VideoRef, bool]:
    """Upsert the registry record of ``obj``; return (ref, created)."""
    run_id = None if run_id is None else run_id_of(run_id)
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
                "claim": None,
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


def claim(
    db: Database,
    video_id: str,
    run_id: str | Attempt,
    *,
    to: str,
    from_statuses: Iterable[str],
    wait: bool = True,
) -> dict | None:
    """Atomically move a video into stage ``to`` for an attempt (a run id is a first try).

    Succeeds when the video is in one of ``from_statuses``; failed in this stage fewer
    than MAX_ATTEMPTS times; in ``to`` with a lease that ran out (a stranded video: its
    worker was killed), taken over; or in ``to`` under this same attempt (a re-entry).
    A retry of the task whose earlier try still holds the claim waits (``wait``) until
    that lease runs out. A stranded video already claimed MAX_ATTEMPTS times is marked
    ``failed`` instead. Counts the attempt; returns the updated document (its ``claim``
    holds the token), or None when another attempt owns it or it is past this stage.
    """
    attempt = as_attempt(run_id)
    coll = db[VIDEOS]
    while True:
        ts = now()
        new = attempt.new_claim(ts)
        left = runs_left(attempt.run_id)
        query = {
            "_id": video_id,
            "$or": [
                {"status": {"$in": list(from_statuses)}},
                {"status": FAILED, "failed_stage": to, **left},
                {"status": to, "$and": [left, {"$or": claimable(attempt, ts)[:2]}]},
                {"status": to, "$or": claimable(attempt, ts)[2:]},
            ],
        }
        before = coll.find_one_and_update(
            query,
            {
                "$set": {
                    "status": to,
                    "run_id": attempt.run_id,
                    "updated_at": ts,
                    "reason": None,
                    "claim": new,
                },
                "$addToSet": {"attempt_runs": attempt.run_id},
                "$inc": {"tries": 1},
                "$push": {
                    "history": {
                        "status": to,
                        "at": ts,
                        "run_id": attempt.run_id,
                        "try": attempt.try_number,
                        "task": attempt.task,
                        "token": new["token"],
                    }
                },
            },
            return_document=ReturnDocument.BEFORE,
        )
        if before is not None:
            if before.get("status") == to and before.get("claim") and before["claim"].get("token"):
                log.warning(
                    "%s s3://%s/%s: took over a stranded claim of %s (its worker stopped renewing it)",
                    to,
                    before.get("bucket"),
                    before.get("key"),
                    describe(before["claim"]),
                )
            doc = coll.find_one({"_id": video_id})
            attempts = len(doc.get("attempt_runs") or [])
            if doc.get("attempts") != attempts:
                coll.update_one(
                    {"_id": video_id, "claim.token": new["token"]}, {"$set": {"attempts": attempts}}
                )
                doc["attempts"] = attempts
            return doc
        current = coll.find_one(
            {"_id": video_id}, {"status": 1, "claim": 1, "attempts": 1, "attempt_runs": 1, "key": 1}
        )
        if current is None or current.get("status") != to:
            return None
        held = current.get("claim")
        runs = current.get("attempt_runs") or []
        if _expired(held, ts) and len(runs) >= MAX_ATTEMPTS and attempt.run_id not in runs:
            _give_up(db, current, to, held)
            return None
        what = f"{to} {current.get('key')}"
        if not (wait and wait_for_lapse(lambda: _claim_of(db, video_id, to), attempt, what, log)):
            return None


def runs_left(run_id: str) -> dict[str, Any]:
    """Filter: the video may still be attempted by run ``run_id`` in its current stage (the
    run attempted it already, or fewer than MAX_ATTEMPTS runs did)."""
    return {"$or": [{"attempt_runs": run_id}, {f"attempt_runs.{MAX_ATTEMPTS - 1}": {"$exists": False}}]}


# what a finished (or requeued) stage resets
FRESH_STAGE = {"attempts": 0, "attempt_runs": [], "tries": 0, "error": None}


def _claim_of(db: Database, video_id: str, status: str) -> dict[str, Any] | None:
    doc = db[VIDEOS].find_one({"_id": video_id}, {"status": 1, "claim": 1}) or {}
    return doc.get("claim") if doc.get("status") == status else None


def _expired(held: dict[str, Any] | None, ts: datetime) -> bool:
    until = (held or {}).get("lease_until")
    return held is None or (until is not None and aware(until) < ts)


def _give_up(db: Database, doc: dict[str, Any], stage: str, held: dict[str, Any] | None) -> None:
    """A stranded video whose workers died MAX_ATTEMPTS times: failed, for a person."""
    reason = (
        f"{stage}: the worker was lost in {len(doc.get('attempt_runs') or [])} runs (killed or out of "
        f"memory; the claim's lease ran out each time; last: {describe(held)})"
    )
    guard = {"_id": doc["_id"], "status": stage}
    guard["claim.token" if held else "claim"] = held.get("token") if held else None
    ts = now()
    res = db[VIDEOS].update_one(
        guard,
        {
            "$set": {
                "status": FAILED,
                "reason": reason,
                "failed_stage": stage,
                "error": {
                    "stage": stage,
                    "task": STAGE_TASK.get(stage),
                    "kind": "permanent",
                    "message": reason,
                    "fix": "look at the video's size and the workers' memory, then requeue it",
                    "run_id": (held or {}).get("run_id"),
                    "at": ts,
                },
                "updated_at": ts,
                "claim": None,
            },
            "$push": {
                "history": {
                    "status": FAILED,
                    "at": ts,
                    "reason": reason,
                    "run_id": (held or {}).get("run_id"),
                }
            },
        },
    )
    if res.modified_count:
        log.error("%s: %s", doc.get("key"), reason)


def lease_of(db: Database, doc: dict[str, Any], attempt: str | Attempt) -> Lease:
    """The lease of a claimed document (as :func:`claim` returned it)."""
    return Lease(db[VIDEOS], doc["_id"], doc["claim"]["token"], as_attempt(attempt))


def release(db: Database, lease: Lease, status: str, *, reason: str | None = None, **fields: Any) -> bool:
    """Record the end of a claimed stage (status, reason, result fields), only if ``lease``
    still holds the claim; clears the claim. A refused write (a zombie's: another attempt
    took the video over) is logged and recorded under ``refused``; returns False then.

    A stage that finishes resets the attempt count, so the next stage counts its own.
    """
    ts = now()
    if status != FAILED:
        fields = {**FRESH_STAGE, **fields}
    attempt = lease.attempt
    entry = {"status": status, "at": ts, "run_id": attempt.run_id, "try": attempt.try_number}
    if reason:
        entry["reason"] = reason
    res = db[VIDEOS].update_one(
        lease.filter(),
        {
            "$set": {"status": status, "reason": reason, "updated_at": ts, "claim": None, **fields},
            "$push": {"history": entry},
        },
    )
    if res.matched_count:
        return True
    current = db[VIDEOS].find_one({"_id": lease.doc_id}, {"status": 1, "claim": 1, "key": 1}) or {}
    log.warning(
        "refused the write of %s for %s (%s -> %s): it no longer holds the claim, %s does "
        "(status now %s); its result is discarded",
        attempt,
        current.get("key", lease.doc_id),
        status,
        reason or "ok",
        describe(current.get("claim")),
        current.get("status"),
    )
    _note_refused(db, lease, status, "final write refused")
    return False


def _note_refused(db: Database, lease: Lease, status: str, what: str) -> None:
    """Record on the video that an attempt's result was refused (it had lost its claim)."""
    attempt = lease.attempt
    entry = {
        "at": now(),
        "status": status,
        "what": what,
        "attempt": attempt.owner,
        "run_id": attempt.run_id,
        "try": attempt.try_number,
        "host": attempt.host,
        "pid": attempt.pid,
        "token": lease.token,
    }
    db[VIDEOS].update_one(
        {"_id": lease.doc_id}, {"$push": {"refused": {"$each": [entry], "$slice": -REFUSED_KEPT}}}
    )


def mark(
    db: Database, video_id: str, status: str, run_id: str | None, *, reason: str | None = None, **fields: Any
) -> None:
    """Record a status change without a claim (registration, operators' fixes, tests).

    Stages that hold a claim record their outcome with :func:`release` instead, which
    is refused when the claim was lost.
    """
    ts = now()
    run_id = None if run_id is None else run_id_of(run_id)
    if status != FAILED:
        fields = {**FRESH_STAGE, **fields}
    entry = {"status": status, "at": ts, "run_id": run_id}
    if reason:
        entry["reason"] = reason
    db[VIDEOS].update_one(
        {"_id": video_id},
        {
            "$set": {"status": status, "reason": reason, "updated_at": ts, "claim": None, **fields},
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
    run_id: str | Attempt,
    *,
    working: str,
    from_statuses: list[str],
    work: Callable[[], tuple[str, str | None, dict[str, Any]]],
) -> tuple[dict[str, Any], bool]:
    """Claim ``ref`` into ``working``, run ``work`` and record its (status, reason, fields).

    ``run_id`` is the attempt (a plain run id is a first try). While ``work`` runs a
    heartbeat renews the claim's lease. Returns (the video's document, whether this call
    did the work and recorded it). An exception marks the video ``failed`` in this stage
    (so a retry may claim it again) and propagates; a lost claim (:class:`ClaimLost`, or
    a final write refused because another attempt took the video over) returns
    ``(document, False)`` after logging it.
    """
    attempt = as_attempt(run_id)
    doc = claim(db, ref.video_id, attempt, to=working, from_statuses=from_statuses)
    if doc is None:
        current = get(db, ref.video_id) or {}
        log.info(
            "%s s3://%s/%s: not claimable (now %s, run %s, claim %s)",
            working,
            ref.bucket,
            ref.key,
            current.get("status"),
            current.get("run_id"),
            describe(current.get("claim")),
        )
        return current, False
    lease = lease_of(db, doc, attempt)
    armed = faults.arm(f"stage.{working}", key=ref.key, attempt=attempt)
    try:
        with Heartbeat([lease], attempt.heartbeat_s, log):
            status, reason, fields = work()
            if armed is not None:
                armed.fire_now()  # the chaos test's kill lands before the result is recorded
    except ClaimLost as exc:
        log.warning(
            "%s s3://%s/%s: %s; this attempt (%s) stops here", working, ref.bucket, ref.key, exc, attempt
        )
        _note_refused(db, lease, working, str(exc))
        return get(db, ref.video_id) or {}, False
    except Exception as exc:
        release(db, lease, FAILED, **failure_fields(working, exc, attempt))
        raise
    done = release(db, lease, status, reason=reason, **fields)
    return get(db, ref.video_id) or {}, done


def failure_fields(stage: str, exc: BaseException, attempt: str | Attempt) -> dict[str, Any]:
    """What a failed stage records: ``reason`` (one line), ``failed_stage`` and ``error``
    (stage, task, the attempt, the error, permanent or transient, and the fix)."""
    attempt = as_attempt(attempt)
    what = classify(exc)
    message = one_line(exc)
    return {
        "reason": f"{stage}: {message}",
        "failed_stage": stage,
        "error": {
            "stage": stage,
            "task": STAGE_TASK.get(stage),
            "kind": what.kind,
            "type": type(exc).__name__,
            "message": message,
            "fix": what.fix,
            "run_id": attempt.run_id,
            "try": attempt.try_number,
            "at": now(),
        },
    }


def requeue(
    db: Database, video_ids: Iterable[str], *, reason: str, by: str, run_id: str | None = None
) -> list[dict[str, Any]]:
    """Put failed videos back where they failed, for the next run (or ``run_id``'s batch):
    the status before the failed stage, attempts reset, the reason and who asked recorded
    (``requeued`` and the history). Only ``failed`` videos move; returns the moved documents.
    """
    moved = []
    for vid in video_ids:
        doc = db[VIDEOS].find_one({"_id": vid, "status": FAILED})
        stage = (doc or {}).get("failed_stage")
        if doc is None or stage not in RESUME_STATUS:
            continue
        ts = now()
        entry = {
            "at": ts,
            "by": by,
            "reason": reason,
            "stage": stage,
            "error": (doc.get("error") or {}).get("message") or doc.get("reason"),
        }
        to = RESUME_STATUS[stage]
        res = db[VIDEOS].update_one(
            {"_id": vid, "status": FAILED, "failed_stage": stage},
            {
                "$set": {"status": to, "reason": None, "updated_at": ts, "claim": None, **FRESH_STAGE},
                "$push": {
                    "requeued": entry,
                    "history": {
                        "status": to,
                        "at": ts,
                        "run_id": run_id,
                        "reason": f"requeued by {by}: {reason}",
                        "requeued": True,
                    },
                },
            },
        )
        if res.modified_count:
            log.info(
                "requeued s3://%s/%s (failed at %s) by %s: %s", doc["bucket"], doc["key"], stage, by, reason
            )
            moved.append(db[VIDEOS].find_one({"_id": vid}))
    return moved


def failed_in_run(doc: dict[str, Any], run_id: str) -> bool:
    """The video is failed, and it failed in run ``run_id`` (not in an earlier one)."""
    if doc.get("status") != FAILED:
        return False
    for entry in reversed(doc.get("history") or []):
        if entry.get("status") == FAILED:
            return entry.get("run_id") == run_id
    return False


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
        "failed_stage": doc.get("failed_stage") if doc.get("status") == FAILED else None,
        "held_by": (doc.get("claim") or {}).get("run_id"),
    }
