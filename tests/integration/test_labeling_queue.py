"""The labeling_queue outbox against Mongo (SecantusDB on loopback): the record comes
before the platform call, a push happens once, crashes and other workers' claims."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from framesift.labeling import queue as lq
from framesift.labeling.base import DONE, IN_PROGRESS, IN_QUEUE, BackendUnavailable, SequenceStatus
from tests.fakes import Crash, FakeBackend, make_request

pytestmark = pytest.mark.slow


@pytest.fixture
def qdb(db):
    return db


def test_push_writes_the_record_before_the_platform_call(qdb):
    backend = FakeBackend()
    seen = {}

    def spy(request, guard=None):
        seen["record"] = qdb[lq.COLLECTION].find_one({"_id": request.idempotency_key})
        return FakeBackend.push_sequence(backend, request, guard)

    backend.push_sequence = spy  # type: ignore[method-assign]
    rec = lq.push_exactly_once(qdb, backend, make_request(), labeler="ann@x", reviewer="rev@x")
    assert seen["record"]["state"] == lq.PENDING  # the outbox record existed first
    assert rec["state"] == lq.PUSHED and rec["backend_ids"] == ["t1"]
    for field in lq.RECORD_FIELDS:
        assert rec.get(field) is not None, field
    assert rec["Labeler"] == "ann@x" and rec["Labeling status"] == IN_QUEUE and rec["recovered"] is False
    names = {ix["name"] for ix in qdb[lq.COLLECTION].list_indexes()}
    assert {
        "idempotency_key_unique",
        "state_backend",
        "backend_statuses",
        "video_id",
        "selection_id",
    } <= names


def test_pushing_twice_calls_the_platform_once(qdb):
    backend = FakeBackend()
    first = lq.push_exactly_once(qdb, backend, make_request())
    again = lq.push_exactly_once(qdb, backend, make_request())
    assert backend.pushes == 1 and backend.finds == 0
    assert again["_id"] == first["_id"] and qdb[lq.COLLECTION].count_documents({}) == 1
    # another video, or the same video in another selection, is another push
    lq.push_exactly_once(qdb, backend, make_request(video_id="vid2"))
    lq.push_exactly_once(qdb, backend, make_request(selection_id="sel2"))
    assert backend.pushes == 3 and qdb[lq.COLLECTION].count_documents({}) == 3


def test_crash_between_push_and_record_is_recovered_without_a_second_push(qdb):
    backend = FakeBackend()

    def die(_pushed):
        raise Crash()

    with pytest.raises(Crash):
        lq.push_exactly_once(qdb, backend, make_request(), owner="task-a", after_push=die)
    rec = qdb[lq.COLLECTION].find_one({})
    assert rec["state"] == lq.PENDING and backend.pushes == 1
    # the retry (same task, so it may take its own claim over at once)
    done = lq.push_exactly_once(qdb, backend, make_request(), owner="task-a")
    assert backend.pushes == 1 and backend.finds == 1  # found on the platform, not pushed again
    assert done["state"] == lq.PUSHED and done["recovered"] is True and done["backend_ids"] == ["t1"]
    assert done["attempts"] == 2


def test_a_retry_looks_and_pushes_in_the_project_of_the_record(qdb):
    """The record keeps the project its first try chose (``labeling.project_per``); a retry
    goes there even when the config now names another one."""
    from dataclasses import replace

    backend = FakeBackend()

    def die(_pushed):
        raise Crash()

    first = replace(make_request(), project="fs / cam1")
    with pytest.raises(Crash):
        lq.push_exactly_once(qdb, backend, first, owner="task-a", after_push=die)
    assert qdb[lq.COLLECTION].find_one({})["project"] == "fs / cam1"
    done = lq.push_exactly_once(qdb, backend, replace(first, project="fs"), owner="task-a")
    assert done["recovered"] is True and done["project"] == "fs / cam1" and len(backend.tasks) == 1

    # crashed before the platform call: the retry pushes, into the record's project
    backend.fail_push = BackendUnavailable("down")
    second = replace(make_request(video_id="vid2"), project="fs / cam2")
    with pytest.raises(BackendUnavailable):
        lq.push_exactly_once(qdb, backend, second)
    backend.fail_push = None
    lq.push_exactly_once(qdb, backend, replace(second, project="fs"))
    assert [t["project"] for t in backend.tasks] == ["fs / cam1", "fs / cam2"]


def test_crash_before_the_push_pushes_on_retry(qdb):
    backend = FakeBackend()
    backend.fail_push = BackendUnavailable("down")
    with pytest.raises(BackendUnavailable):
        lq.push_exactly_once(qdb, backend, make_request(), owner="task-a")
    rec = qdb[lq.COLLECTION].find_one({})
    assert rec["state"] == lq.PENDING and "down" in rec["last_error"] and rec["claim"] is None
    backend.fail_push = None
    done = lq.push_exactly_once(qdb, backend, make_request(), owner="task-b")  # claim was released
    assert done["state"] == lq.PUSHED and backend.pushes == 1 and done["recovered"] is False


def test_a_live_claim_of_another_worker_blocks_until_its_lease_ends(qdb):
    backend = FakeBackend()
    with pytest.raises(Crash):
        lq.push_exactly_once(
            qdb,
            backend,
            make_request(),
            owner="worker-1",
            after_push=lambda p: (_ for _ in ()).throw(Crash()),
        )
    with pytest.raises(lq.PushInProgress) as err:
        lq.push_exactly_once(qdb, backend, make_request(), owner="worker-2")
    assert err.value.retryable and "worker-1" in str(err.value) and err.value.retry_after > 0
    # the lease runs out (pretend: move it into the past)
    qdb[lq.COLLECTION].update_one({}, {"$set": {"claim.lease_until": lq._now() - timedelta(seconds=1)}})
    done = lq.push_exactly_once(qdb, backend, make_request(), owner="worker-2")
    assert done["state"] == lq.PUSHED and done["recovered"] is True and backend.pushes == 1


def test_sync_status_updates_statuses_and_history(qdb):
    backend = FakeBackend()
    rec = lq.push_exactly_once(qdb, backend, make_request())
    lq.push_exactly_once(qdb, backend, make_request(video_id="gone"))
    backend.status["t1"] = SequenceStatus(IN_PROGRESS, IN_QUEUE)
    counts = lq.sync_status(qdb, backend)
    assert counts == {"checked": 2, "changed": 1, "done": 0, "missing": 1}
    backend.status["t1"] = SequenceStatus(DONE, DONE)
    assert lq.sync_status(qdb, backend)["done"] == 1
    after = qdb[lq.COLLECTION].find_one({"_id": rec["_id"]})
    assert after["Labeling status"] == DONE and after["Reviewing status"] == DONE
    assert [h.get("Labeling status") for h in after["status_history"]] == [IN_PROGRESS, DONE]
    gone = qdb[lq.COLLECTION].find_one({"video_id": "gone"})
    assert "no t2" in gone["sync_error"]
    # a done record is not polled again
    assert lq.sync_status(qdb, backend)["checked"] == 1


# ---------------------------------------------------------- racing attempts, zombies


def _attempt(try_number, *, task="framesift_ingest.push_to_labeling[0]", lease_s=1.0, heartbeat_s=0.1):
    from framesift.io.leases import Attempt

    return Attempt(run_id="run-1", try_number=try_number, task=task, lease_s=lease_s, heartbeat_s=heartbeat_s)


def _in_thread(fn):
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_a_zombie_and_its_retry_create_the_platform_task_once(qdb):
    """Try 1 stalls between listing the platform and creating the task, and stops
    renewing its lease (as a frozen or partitioned worker does): Airflow's retry, try 2,
    waits for that lease to run out, takes the push over and creates the task. When try
    1 wakes up, its check before the create call fails: no second task, and its record
    write never happens."""
    from framesift.io.leases import ClaimLost

    backend = FakeBackend()
    stalled, wake = threading.Event(), threading.Event()

    def stall(request):
        if not stalled.is_set():
            stalled.set()
            wake.wait(30)

    backend.before_create = stall
    zombie = _attempt(1, heartbeat_s=60)  # its heartbeat never comes: the lease lapses
    t1, out1 = _in_thread(lambda: lq.push_exactly_once(qdb, backend, make_request(), owner=zombie))
    assert stalled.wait(10)
    t0 = time.monotonic()
    rec = lq.push_exactly_once(qdb, backend, make_request(), owner=_attempt(2))
    assert 0.3 < time.monotonic() - t0 < 5  # waited for try 1's lease
    assert rec["state"] == lq.PUSHED and rec["backend_ids"] == ["t1"]
    wake.set()
    t1.join(10)
    assert isinstance(out1.get("error"), ClaimLost), out1
    assert [t["id"] for t in backend.tasks] == ["t1"] and backend.deleted == []
    after = qdb[lq.COLLECTION].find_one({})
    assert after["backend_ids"] == ["t1"] and after["attempts"] == 2
    creation = qdb["labeling_creations"].find_one({})
    assert (
        creation["state"] == "created" and creation["platform_id"] == "t1" and len(creation["previous"]) == 1
    )


def test_a_zombie_that_passed_its_check_deletes_the_duplicate_it_made(qdb):
    """The one gap a check cannot close: a zombie paused after its last check, while its
    create call is on the way. Its task lands next to the retry's; recording it is refused
    (the create-once record names the retry), so it deletes what it made."""
    from framesift.io.leases import ClaimLost

    backend = FakeBackend()
    stalled, wake = threading.Event(), threading.Event()

    class StallAfterCheck:
        def __init__(self, guard):
            self.guard = guard

        def __getattr__(self, name):
            return getattr(self.guard, name)

        def check(self, chunk):
            self.guard.check(chunk)
            if not stalled.is_set():
                stalled.set()
                wake.wait(30)

    real_push = backend.push_sequence
    backend.push_sequence = lambda request, guard=None: real_push(  # type: ignore[method-assign]
        request, StallAfterCheck(guard) if not stalled.is_set() else guard
    )
    t1, out1 = _in_thread(
        lambda: lq.push_exactly_once(qdb, backend, make_request(), owner=_attempt(1, heartbeat_s=60))
    )
    assert stalled.wait(10)
    rec = lq.push_exactly_once(qdb, backend, make_request(), owner=_attempt(2))
    wake.set()
    t1.join(10)
    assert isinstance(out1.get("error"), ClaimLost), out1
    assert rec["backend_ids"] == ["t1"]
    assert [t["id"] for t in backend.tasks] == ["t1"] and backend.deleted == ["t2"]  # made, then deleted


def test_two_live_attempts_never_push_at_once(qdb):
    """Two tasks (say ingest and a drift response, or two runs) on one key: the one that
    holds the claim renews it while it works; the other is told to come back later."""
    backend = FakeBackend()
    stalled, wake = threading.Event(), threading.Event()
    backend.before_create = lambda request: (stalled.set(), wake.wait(30))
    t1, out1 = _in_thread(
        lambda: lq.push_exactly_once(qdb, backend, make_request(), owner=_attempt(1, task="a"))
    )
    assert stalled.wait(10)
    time.sleep(1.5)  # longer than the lease: the heartbeat keeps it
    with pytest.raises(lq.PushInProgress) as err:
        lq.push_exactly_once(qdb, backend, make_request(), owner=_attempt(1, task="b"))
    assert err.value.retryable and "a#1" in str(err.value)
    wake.set()
    t1.join(10)
    assert out1["value"]["state"] == lq.PUSHED and len(backend.tasks) == 1
    assert lq.push_exactly_once(qdb, backend, make_request(), owner=_attempt(1, task="b"))["backend_ids"] == [
        "t1"
    ]
