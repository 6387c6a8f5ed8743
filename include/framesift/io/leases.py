"""Claims with leases on Mongo documents: which attempt works on a record, until when,
and the token that proves it.

An **attempt** is one try at one piece of work: one Airflow task try (run id, task,
try number) or one CLI call (:class:`Attempt`). A **claim** is a sub-document written
into the record it guards by a conditional update, so at most one attempt holds it::

    claim: {token, run_id, task, try_number, owner, host, pid,
            claimed_at, renewed_at, lease_until}

- ``token`` is fresh for every acquisition: the fencing token. Every write that finishes
  the work is conditional on ``{"claim.token": token}``; the write of an attempt that
  lost its claim (a *zombie*: paused, partitioned from Mongo, or slow past its lease)
  matches nothing and is refused.
- ``lease_until`` is renewed by a :class:`Heartbeat` thread every ``heartbeat_s`` while
  the work runs. A claim whose lease ran out belongs to nobody (its worker was killed:
  OOM, node loss) and the next attempt takes it over.
- A live lease is never taken over. A retry of the same task (a higher try number)
  waits, bounded, for the earlier try's lease to run out (:func:`wait_for_lapse`):
  Airflow starts a retry when it believes the earlier try dead, which a zombie is not.
- The same attempt (same run, task and try) may claim again at once: a re-entry.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.collection import Collection

log = logging.getLogger("framesift.claims")

DEFAULT_LEASE_S = 120.0
DEFAULT_HEARTBEAT_S = 20.0
CLAIM = "claim"  # the field that holds the claim sub-document


def now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    """Mongo hands datetimes back naive (UTC); make them comparable with aware ones."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True)
class Attempt:
    """One try at one piece of work: who claims, for how long, how often it renews."""

    run_id: str
    try_number: int = 1
    task: str | None = None  # "<dag_id>.<task_id>[<map_index>]" under Airflow
    lease_s: float = DEFAULT_LEASE_S
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    @property
    def owner(self) -> str:
        return f"{self.task or self.run_id}#{self.try_number}"

    def __str__(self) -> str:
        return f"{self.owner} ({self.host}:{self.pid})"

    def new_claim(self, at: datetime | None = None) -> dict[str, Any]:
        at = at or now()
        return {
            "token": uuid.uuid4().hex,
            "run_id": self.run_id,
            "task": self.task,
            "try_number": self.try_number,
            "owner": self.owner,
            "host": self.host,
            "pid": self.pid,
            "claimed_at": at,
            "renewed_at": at,
            "lease_until": at + timedelta(seconds=self.lease_s),
        }


def as_attempt(value: str | Attempt) -> Attempt:
    """A run id (a CLI call, a test) as a first try, or the attempt itself."""
    return value if isinstance(value, Attempt) else Attempt(run_id=str(value))


def run_id_of(value: str | Attempt) -> str:
    return value.run_id if isinstance(value, Attempt) else str(value)


def is_same_attempt(claim: dict[str, Any] | None, attempt: Attempt) -> bool:
    return bool(claim) and (claim.get("run_id"), claim.get("task"), claim.get("try_number")) == (
        attempt.run_id,
        attempt.task,
        attempt.try_number,
    )


def is_earlier_try(claim: dict[str, Any] | None, attempt: Attempt) -> bool:
    """The claim is held by an earlier try of this same task (whose retry ``attempt`` is)."""
    return (
        bool(claim)
        and attempt.task is not None
        and claim.get("run_id") == attempt.run_id
        and claim.get("task") == attempt.task
        and int(claim.get("try_number") or 0) < attempt.try_number
    )


def claimable(attempt: Attempt, at: datetime, field_name: str = CLAIM) -> list[dict[str, Any]]:
    """Filter clauses (any of them) under which ``attempt`` may take the claim: free, its
    lease ran out, or already this attempt's."""
    return [
        {field_name: None},
        {f"{field_name}.lease_until": {"$lt": at}},
        {
            f"{field_name}.run_id": attempt.run_id,
            f"{field_name}.task": attempt.task,
            f"{field_name}.try_number": attempt.try_number,
        },
    ]


def describe(claim: dict[str, Any] | None) -> str:
    if not claim:
        return "nobody"
    until = aware(claim.get("lease_until"))
    where = f"{claim.get('owner')} (run {claim.get('run_id')}) on {claim.get('host')}:{claim.get('pid')}"
    return where + (f", lease until {until.isoformat(timespec='seconds')}" if until else "")


class ClaimLost(Exception):
    """This attempt no longer holds its claim: another attempt took the work over (ours
    was presumed dead). Its results must not be recorded."""

    retryable = False

    def __init__(self, what: str, holder: dict[str, Any] | None = None):
        self.what, self.holder = what, holder
        super().__init__(f"{what}: the claim is now held by {describe(holder)}")


@dataclass
class Lease:
    """The claim one attempt holds on one document (by its token)."""

    coll: Collection
    doc_id: Any
    token: str
    attempt: Attempt
    field_name: str = CLAIM

    def filter(self) -> dict[str, Any]:
        return {"_id": self.doc_id, f"{self.field_name}.token": self.token}

    def renew(self) -> bool:
        at = now()
        res = self.coll.update_one(
            self.filter(),
            {
                "$set": {
                    f"{self.field_name}.renewed_at": at,
                    f"{self.field_name}.lease_until": at + timedelta(seconds=self.attempt.lease_s),
                }
            },
        )
        return res.matched_count == 1

    def holder(self) -> dict[str, Any] | None:
        doc = self.coll.find_one({"_id": self.doc_id}, {self.field_name: 1}) or {}
        return doc.get(self.field_name)

    def check(self, what: str = "") -> None:
        """Renew the lease now; raise ClaimLost when it is not ours any more."""
        if not self.renew():
            raise ClaimLost(what or f"{self.coll.name} {self.doc_id}", self.holder())


class Heartbeat:
    """Renews leases every ``interval`` s in a daemon thread while the work runs.

    A lease that cannot be renewed (another attempt took it over) is reported once in
    the log and listed in ``lost``; the work's final, conditional write will then be
    refused. A Mongo error is logged and retried on the next beat (the lease may run
    out meanwhile; that is what leases are for).
    """

    def __init__(self, leases: Iterable[Lease], interval: float, logger: logging.Logger | None = None):
        self.leases = list(leases)
        self.interval = max(0.05, float(interval))
        self.log = logger or log
        self.lost: list[Lease] = []
        self.beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.leases:
            self._thread = threading.Thread(target=self._run, name="framesift-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for lease in [le for le in self.leases if le not in self.lost]:
                try:
                    if not lease.renew():
                        self.lost.append(lease)
                        self.log.warning(
                            "claim on %s %s was taken over by %s; this attempt (%s) will not record its result",
                            lease.coll.name,
                            lease.doc_id,
                            describe(lease.holder()),
                            lease.attempt,
                        )
                except Exception as exc:  # noqa: BLE001 - a failed beat is retried on the next one
                    self.log.warning(
                        "could not renew the claim on %s %s: %s", lease.coll.name, lease.doc_id, exc
                    )
            self.beats += 1


def wait_for_lapse(
    read_claim: Callable[[], dict[str, Any] | None],
    attempt: Attempt,
    what: str,
    logger: logging.Logger | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait until the claim of an earlier try of ``attempt``'s task runs out.

    Returns True when it lapsed (or went away) and the caller should try to claim
    again; False at once when the claim is not an earlier try's, or after waiting one
    lease plus two heartbeats while it kept being renewed (that try is alive: a zombie
    still working, whose result will be accepted).
    """
    logger = logger or log
    deadline = time.monotonic() + attempt.lease_s + 2 * attempt.heartbeat_s
    announced = False
    while True:
        claim = read_claim()
        if not is_earlier_try(claim, attempt):
            return claim is None or announced
        until = aware(claim.get("lease_until"))
        left = (until - now()).total_seconds() if until else 0.0
        if left <= 0:
            return True
        if time.monotonic() + left > deadline:
            logger.warning(
                "%s: try %s of this task still holds the claim and renews it (%s); not taking it over",
                what,
                claim.get("try_number"),
                describe(claim),
            )
            return False
        if not announced:
            logger.info(
                "%s: waiting up to %.0f s for the claim of try %s (%s) to run out; a killed try "
                "stops renewing it",
                what,
                left,
                claim.get("try_number"),
                describe(claim),
            )
            announced = True
        sleep(min(left + 0.05, max(0.05, attempt.heartbeat_s)))
