"""Create-once: a Mongo record per platform object a push creates, written before it is.

Mongo collection ``labeling_creations``, one document per chunk of a sequence::

    _id       "<idempotency key>#<chunk>"   (unique: Mongo enforces it)
    key, chunk, state   reserved -> created
    token     the queue-record claim token of the attempt that may create it
    owner     that attempt; previous: the tokens it was taken over from
    job       facts noted on the way (an Encord upload job id, the storage folder)
    platform_id   the created object (a Label Studio task id, an Encord item)

Only the attempt whose token is on the record calls the platform for that chunk. A
second live attempt cannot get there: it does not hold the queue record's claim. An
attempt that takes a dead one's claim over also takes over its reservations, after
the backend looked on the platform for what the dead one may have made (and, for an
upload job noted here, waits for that job instead of uploading again). A zombie (an
attempt that lost its claim but still runs) is stopped by :meth:`check` right before
the platform call; the one gap left, a zombie paused between that check and the
call's arrival, is closed afterwards: its :meth:`created` is refused and the backend
deletes the duplicate it made.
"""

from __future__ import annotations

import logging
from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from framesift.io import faults
from framesift.io.leases import ClaimLost, Lease, now

log = logging.getLogger("framesift.labeling_queue")

CREATIONS = "labeling_creations"
RESERVED, CREATED = "reserved", "created"


class MongoCreateGuard:
    """The :class:`~framesift.labeling.base.CreateGuard` of one push (one queue-record lease)."""

    def __init__(self, db: Database, key: str, lease: Lease, *, fault_key: str | None = None):
        self.coll = db[CREATIONS]
        self.key = key
        self.lease = lease
        self.fault_key = fault_key

    def _id(self, chunk: int) -> str:
        return f"{self.key}#{chunk}"

    def _mine(self, chunk: int) -> dict[str, Any]:
        return {"_id": self._id(chunk), "token": self.lease.token}

    def begin(self, chunk: int) -> dict[str, Any]:
        doc = {
            "_id": self._id(chunk),
            "key": self.key,
            "chunk": chunk,
            "state": RESERVED,
            "token": self.lease.token,
            "owner": self.lease.attempt.owner,
            "created_at": now(),
            "previous": [],
        }
        try:
            self.coll.insert_one(doc)
            return {}
        except DuplicateKeyError:
            pass
        existing = self.coll.find_one({"_id": self._id(chunk)}) or {}
        if existing.get("token") == self.lease.token:
            return existing
        # reserved by an earlier attempt whose claim we hold now: take the reservation over
        self.lease.check(f"create {self._id(chunk)}")
        taken = self.coll.find_one_and_update(
            {"_id": self._id(chunk), "token": existing.get("token")},
            {
                "$set": {
                    "token": self.lease.token,
                    "owner": self.lease.attempt.owner,
                    "taken_over_at": now(),
                },
                "$push": {"previous": existing.get("token")},
            },
            return_document=ReturnDocument.AFTER,
        )
        if taken is None:
            raise ClaimLost(f"create {self._id(chunk)}", self.lease.holder())
        log.info(
            "%s: took over the reservation of %s (%s)",
            self._id(chunk),
            existing.get("owner"),
            existing.get("state"),
        )
        return taken

    def note(self, chunk: int, **info: Any) -> None:
        res = self.coll.update_one(self._mine(chunk), {"$set": info})
        if not res.matched_count:
            raise ClaimLost(f"note on {self._id(chunk)}", self.lease.holder())

    def check(self, chunk: int) -> None:
        faults.point("push.before_create", key=self.fault_key, attempt=self.lease.attempt)
        self.lease.check(f"create {self._id(chunk)}")
        if self.coll.count_documents(self._mine(chunk)) != 1:
            raise ClaimLost(f"create {self._id(chunk)}", self.lease.holder())

    def created(self, chunk: int, platform_id: str) -> None:
        res = self.coll.update_one(
            self._mine(chunk), {"$set": {"state": CREATED, "platform_id": platform_id, "created": now()}}
        )
        if not res.matched_count:
            raise ClaimLost(f"record {self._id(chunk)} = {platform_id}", self.lease.holder())
