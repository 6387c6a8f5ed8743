"""The Mongo ``labeling_queue`` collection: one document per pushed image sequence.

Fields: the book's ``Name dataset``, ``Labeler``, ``Reviewer``, ``Labeling status`` and
``Reviewing status`` (In queue / In progress / Done) and ``date`` (when it was queued),
plus ``backend``, ``project`` (the platform project's name, chosen when the record is
written: ``labeling.project_per``), ``backend_ids`` (one per chunk: Label Studio task
ids, Encord data hashes), ``project_id``, ``project_url``, ``url``, ``video_key``,
``video_id``, ``frames``, ``n_frames``, ``selection_id``, ``idempotency_key`` (also the
``_id``), ``pushed_at``, ``state`` (``pending`` -> ``pushed``), ``attempts``,
``recovered``, ``status_history``.

Exactly once (an outbox): :func:`push_exactly_once` writes the record, state ``pending``,
BEFORE calling the platform (the key is unique, so two pushes of the same selection,
video and backend share one record), claims it, pushes, then records the platform ids
(state ``pushed``). A retry after a crash between the push and the record finds the
sequence on the platform by its key (``backend.find_sequence``) and completes the record
instead of pushing again; if the crash came mid-push (some chunks created), the backend's
push resumes and creates only the missing chunks. Both look in, and push to, the record's
``project``, so a retry goes where the first try went even if the config changed since.

The claim (``claim``: the attempt, a fencing token, a lease; :mod:`framesift.io.leases`)
keeps two live attempts from pushing the same key at once: one holds it, a heartbeat
renews it while the push runs, a live lease is never taken over (a retry of the same
task waits for its earlier try's lease to run out; anyone else gets
:class:`PushInProgress`). Each chunk's platform object is created inside a create-once
guard (``labeling.creations``), and the final write is conditional on the token, so a
zombie (an attempt that lost its claim but still runs) neither creates a second task nor
overwrites the record: both are refused and logged.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from framesift.io import faults
from framesift.io.leases import (
    Attempt,
    ClaimLost,
    Heartbeat,
    Lease,
    as_attempt,
    claimable,
    describe,
    wait_for_lapse,
)
from framesift.labeling.base import (
    DONE,
    IN_QUEUE,
    LabelingBackend,
    LabelingError,
    PushedSequence,
    SequenceNotFound,
    SequenceRequest,
)
from framesift.labeling.creations import MongoCreateGuard

log = logging.getLogger("framesift.labeling_queue")

COLLECTION = "labeling_queue"
PENDING, PUSHED = "pending", "pushed"

# the book's field names
NAME_DATASET = "Name dataset"
LABELER = "Labeler"
REVIEWER = "Reviewer"
LABELING_STATUS = "Labeling status"
REVIEWING_STATUS = "Reviewing status"
DATE = "date"
# every pushed record has these: the book's fields, then the backend's and ours
RECORD_FIELDS = (
    NAME_DATASET,
    LABELER,
    REVIEWER,
    LABELING_STATUS,
    REVIEWING_STATUS,
    DATE,
    "backend",
    "project",
    "backend_ids",
    "project_id",
    "project_url",
    "url",
    "video_key",
    "video_id",
    "frames",
    "selection_id",
    "idempotency_key",
    "pushed_at",
    "state",
)


class PushInProgress(LabelingError):
    """Another worker holds a live claim on this push; try again after ``retry_after`` s."""

    retryable = True

    def __init__(self, key: str, owner: str, until: datetime):
        self.key, self.owner, self.until = key, owner, until
        self.retry_after = max(0.0, (until - _now()).total_seconds())
        super().__init__(f"push {key} is claimed by {owner}")


def _now() -> datetime:
    return datetime.now(UTC)


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def collection(db: Database):
    return db[COLLECTION]


def ensure_indexes(db: Database) -> None:
    """Indexes for what is queried: the key (unique), open records by backend, per video/selection."""
    coll = collection(db)
    coll.create_index([("idempotency_key", ASCENDING)], unique=True, name="idempotency_key_unique")
    coll.create_index([("state", ASCENDING), ("backend", ASCENDING)], name="state_backend")
    coll.create_index(
        [("backend", ASCENDING), (LABELING_STATUS, ASCENDING), (REVIEWING_STATUS, ASCENDING)],
        name="backend_statuses",
    )
    coll.create_index([("video_id", ASCENDING)], name="video_id")
    coll.create_index([("selection_id", ASCENDING)], name="selection_id")


def new_record(
    backend_name: str, request: SequenceRequest, *, labeler: str | None, reviewer: str | None, now: datetime
) -> dict[str, Any]:
    return {
        "_id": request.idempotency_key,
        "idempotency_key": request.idempotency_key,
        "state": PENDING,
        NAME_DATASET: request.title,
        LABELER: labeler,
        REVIEWER: reviewer,
        LABELING_STATUS: IN_QUEUE,
        REVIEWING_STATUS: IN_QUEUE,
        DATE: now,
        "backend": backend_name,
        "project": request.project,
        "backend_ids": [],
        "project_id": None,
        "project_url": None,
        "url": None,
        "video_key": request.video_key,
        "video_id": request.video_id,
        "selection_id": request.selection_id,
        "frames": list(request.frame_names),
        "n_frames": len(request.frame_names),
        "frames_prefix": f"s3://{request.bucket}/{request.frames_prefix}",
        "model_version": request.model_version,
        "created_at": now,
        "updated_at": now,
        "pushed_at": None,
        "attempts": 0,
        "recovered": False,
        "claim": None,
        "last_error": None,
        "status_history": [],
    }


def push_exactly_once(
    db: Database,
    backend: LabelingBackend,
    request: SequenceRequest,
    *,
    labeler: str | None = None,
    reviewer: str | None = None,
    owner: str | Attempt | None = None,
    lease: timedelta | None = None,
    after_push: Callable[[PushedSequence], None] | None = None,
) -> dict[str, Any]:
    """Push one sequence at most once per idempotency key; return its queue record.

    ``owner``: the attempt (under Airflow: run, task and try number); a plain string is a
    first try of that owner. ``lease`` overrides the attempt's lease. ``after_push`` runs
    between the platform call and the record update (tests use it to simulate a crash
    there). Raises the backend's errors (the record stays ``pending`` with
    ``last_error``, so the next try resumes), PushInProgress (another attempt holds a
    live claim) and ClaimLost (this attempt lost its claim while pushing: a zombie).
    """
    coll = collection(db)
    ensure_indexes(db)
    attempt = owner if isinstance(owner, Attempt) else as_attempt(owner or default_owner())
    if not isinstance(owner, Attempt):
        attempt = replace(attempt, task=attempt.run_id)
    if lease is not None:
        attempt = replace(attempt, lease_s=lease.total_seconds())
    key = request.idempotency_key
    existed = False
    try:
        coll.insert_one(new_record(backend.name, request, labeler=labeler, reviewer=reviewer, now=_now()))
    except DuplicateKeyError:
        existed = True
    record = coll.find_one({"_id": key})
    if record is None:  # pragma: no cover - deleted between the two calls
        raise LabelingError(f"queue record {key} vanished")
    if record.get("state") == PUSHED:
        log.info("sequence %s already pushed (%s); nothing to do", request.title, record.get("url"))
        return record
    project = record.get("project", "")  # "": a record from before per-folder projects
    if project != request.project:
        log.info("push %s goes to project %r, where its first try went", key, project)
        request = replace(request, project=project)

    held = _claim(coll, key, attempt)
    if isinstance(held, dict):
        return held  # pushed by someone else meanwhile
    guard = MongoCreateGuard(db, key, held, fault_key=request.video_key)
    pushed: PushedSequence | None = None
    try:
        with Heartbeat([held], attempt.heartbeat_s, log):
            if existed:
                # an earlier try may have pushed and died before recording: look on the platform first
                pushed = backend.find_sequence(key, request.project)
                if pushed is not None:
                    log.info(
                        "recovered sequence %s from the platform (%s); not pushing again", key, pushed.url
                    )
            recovered = pushed is not None
            if pushed is None:
                pushed = backend.push_sequence(request, guard)
            faults.point("push.after_platform", key=request.video_key, attempt=attempt)
            if after_push is not None:
                after_push(pushed)
    except ClaimLost:
        raise
    except Exception as exc:
        coll.update_one(
            held.filter(),
            {"$set": {"last_error": f"{type(exc).__name__}: {exc}", "claim": None, "updated_at": _now()}},
        )
        raise

    done_at = _now()
    final = coll.find_one_and_update(
        held.filter(),
        {
            "$set": {
                "state": PUSHED,
                "backend_ids": list(pushed.ids),
                "project_id": pushed.project_id,
                "project_url": pushed.project_url,
                "url": pushed.url,
                "n_chunks": len(pushed.ids),
                "pushed_at": done_at,
                DATE: done_at,
                "recovered": recovered,
                "claim": None,
                "last_error": None,
                "updated_at": done_at,
            }
        },
        return_document=ReturnDocument.AFTER,
    )
    if final is None:
        current = coll.find_one({"_id": key}) or {}
        log.warning(
            "refused the queue record write of %s for %s: it no longer holds the claim (%s holds it; "
            "state %s); the platform has the sequence, the holder records it",
            attempt,
            key,
            describe(current.get("claim")),
            current.get("state"),
        )
        coll.update_one(
            {"_id": key},
            {"$push": {"refused": {"at": done_at, "attempt": attempt.owner, "ids": list(pushed.ids)}}},
        )
        raise ClaimLost(f"record of {key}", current.get("claim"))
    log.info(
        "queued %s: %d frames in %d part(s) on %s (%s)",
        request.title,
        pushed.n_frames,
        len(pushed.ids),
        backend.name,
        pushed.url,
    )
    return final


def _claim(coll, key: str, attempt: Attempt) -> Lease | dict[str, Any]:
    """Claim the pending record for ``attempt``: its Lease, or the record if it was pushed
    meanwhile. A retry waits (bounded) for its earlier try's lease; PushInProgress else."""
    while True:
        at = _now()
        new = attempt.new_claim(at)
        claimed = coll.find_one_and_update(
            {"_id": key, "state": PENDING, "$or": claimable(attempt, at)},
            {"$set": {"claim": new, "updated_at": at}, "$inc": {"attempts": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if claimed is not None:
            return Lease(coll, key, new["token"], attempt)
        current = coll.find_one({"_id": key}) or {}
        if current.get("state") == PUSHED:
            return current

        def read():
            doc = coll.find_one({"_id": key}, {"state": 1, "claim": 1}) or {}
            return doc.get("claim") if doc.get("state") == PENDING else None

        if not wait_for_lapse(read, attempt, f"push {key}", log):
            holder = current.get("claim") or {}
            raise PushInProgress(key, describe(holder), _aware(holder.get("lease_until")) or at)


def sync_status(db: Database, backend: LabelingBackend, *, limit: int | None = None) -> dict[str, int]:
    """Update Labeling/Reviewing status of this backend's open records from the platform.

    A backend whose ``tracks_review`` is False (Label Studio Community has no review
    step) is polled until labeling is Done. Returns counts: checked, changed, done
    (labeling Done, and reviewing too where tracked), missing (the platform no
    longer has the sequence; the record gets ``sync_error``). Platform errors other than a
    missing sequence (unavailable, bad credentials) are raised: the whole sync retries.
    """
    coll = collection(db)
    ensure_indexes(db)
    query: dict[str, Any] = {"state": PUSHED, "backend": backend.name}
    if getattr(backend, "tracks_review", True):
        query["$or"] = [{LABELING_STATUS: {"$ne": DONE}}, {REVIEWING_STATUS: {"$ne": DONE}}]
    else:  # no review step on this platform (Label Studio Community): done when labeled
        query[LABELING_STATUS] = {"$ne": DONE}
    cursor = coll.find(query, {"backend_ids": 1, LABELING_STATUS: 1, REVIEWING_STATUS: 1})
    if limit:
        cursor = cursor.limit(limit)
    counts = {"checked": 0, "changed": 0, "done": 0, "missing": 0}
    for record in list(cursor):
        counts["checked"] += 1
        now = _now()
        try:
            status = backend.sequence_status(record["backend_ids"])
        except SequenceNotFound as exc:
            counts["missing"] += 1
            coll.update_one(
                {"_id": record["_id"]}, {"$set": {"sync_error": str(exc), "status_synced_at": now}}
            )
            continue
        update: dict[str, Any] = {"status_synced_at": now, "sync_error": None}
        change = {}
        if status.labeling != record.get(LABELING_STATUS):
            change[LABELING_STATUS] = status.labeling
        if status.reviewing != record.get(REVIEWING_STATUS):
            change[REVIEWING_STATUS] = status.reviewing
        ops: dict[str, Any] = {"$set": {**update, **change}}
        if change:
            counts["changed"] += 1
            ops["$set"]["updated_at"] = now
            ops["$push"] = {"status_history": {"at": now, **change}}
        coll.update_one({"_id": record["_id"]}, ops)
        if status.labeling == DONE and (
            status.reviewing == DONE or not getattr(backend, "tracks_review", True)
        ):
            counts["done"] += 1
    return counts


def _aware(value: datetime | None) -> datetime | None:
    """Mongo hands datetimes back naive (UTC); make them comparable with aware ones."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
