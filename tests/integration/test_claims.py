"""Claims carry the attempt, leases are renewed, final writes are conditional, stranded
videos are taken over by the next run (SecantusDB and moto on loopback; the kill is a
real SIGKILL of a worker process in the middle of a real extraction)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest

from framesift.ingest import registry
from framesift.ingest.registry import DISCOVERED, EXTRACTED, EXTRACTING, FAILED
from framesift.ingest.stage import register_uploads
from framesift.io.leases import Attempt, Heartbeat
from framesift.io.s3 import S3Object, put_bytes, upload
from framesift.local.stack import project_root
from framesift.local.synth import make_video

pytestmark = pytest.mark.slow

ROOT = project_root()


def attempt(
    run="run-A", try_number=1, task="framesift_ingest.extract_frames[0]", lease_s=1.0, heartbeat_s=0.2
):
    return Attempt(run_id=run, try_number=try_number, task=task, lease_s=lease_s, heartbeat_s=heartbeat_s)


def new_video(db, key="k.mp4"):
    ref, _ = registry.register(db, S3Object("b", key, "e", 1), "r0")
    return ref


def test_a_claim_records_the_attempt_a_token_and_a_lease(db):
    ref = new_video(db)
    a = attempt(lease_s=30)
    doc = registry.claim(db, ref.video_id, a, to=EXTRACTING, from_statuses=[DISCOVERED])
    claim = doc["claim"]
    assert (claim["run_id"], claim["task"], claim["try_number"]) == ("run-A", a.task, 1)
    assert claim["owner"] == f"{a.task}#1" and claim["pid"] == os.getpid() and len(claim["token"]) == 32
    assert timedelta(seconds=29) < claim["lease_until"] - claim["claimed_at"] <= timedelta(seconds=30)
    last = doc["history"][-1]
    assert (last["status"], last["try"], last["token"]) == (EXTRACTING, 1, claim["token"])
    # the same attempt may claim again (a re-entry); another run may not while the lease lives
    assert registry.claim(db, ref.video_id, a, to=EXTRACTING, from_statuses=[DISCOVERED])
    assert (
        registry.claim(db, ref.video_id, attempt(run="run-B"), to=EXTRACTING, from_statuses=[DISCOVERED])
        is None
    )


def test_a_retry_waits_out_its_earlier_tries_lease_and_the_zombies_write_is_refused(db, caplog):
    ref = new_video(db)
    try1 = attempt(lease_s=1.0)
    first = registry.claim(db, ref.video_id, try1, to=EXTRACTING, from_statuses=[DISCOVERED])
    t0 = time.monotonic()
    try2 = attempt(try_number=2, lease_s=1.0)
    second = registry.claim(db, ref.video_id, try2, to=EXTRACTING, from_statuses=[DISCOVERED])
    waited = time.monotonic() - t0
    assert second and 0.5 < waited < 5, waited  # it waited for try 1's lease, not longer
    assert second["claim"]["token"] != first["claim"]["token"] and second["claim"]["try_number"] == 2

    # try 1 was a zombie (alive but silent): its result comes in late and is refused
    caplog.set_level(logging.WARNING, logger="framesift.ingest")
    assert not registry.release(
        db, registry.lease_of(db, first, try1), EXTRACTED, frames={"frames_written": 9}
    )
    doc = registry.get(db, ref.video_id)
    assert doc["status"] == EXTRACTING and "frames" not in doc
    assert doc["refused"][-1]["attempt"] == try1.owner and doc["refused"][-1]["status"] == EXTRACTED
    assert "refused the write" in caplog.text and try1.owner in caplog.text
    # the retry's write goes through and clears the claim
    assert registry.release(db, registry.lease_of(db, second, try2), EXTRACTED)
    doc = registry.get(db, ref.video_id)
    assert doc["status"] == EXTRACTED and doc["claim"] is None


def test_a_live_lease_is_never_taken_over(db):
    ref = new_video(db)
    try1 = attempt(lease_s=1.0, heartbeat_s=0.1)
    doc = registry.claim(db, ref.video_id, try1, to=EXTRACTING, from_statuses=[DISCOVERED])
    with Heartbeat([registry.lease_of(db, doc, try1)], try1.heartbeat_s):
        # another run: at once
        assert (
            registry.claim(db, ref.video_id, attempt(run="run-B"), to=EXTRACTING, from_statuses=[DISCOVERED])
            is None
        )
        # its own retry: waits, sees the lease renewed beyond one lease and two beats, gives up
        t0 = time.monotonic()
        retry = attempt(try_number=2, lease_s=1.0, heartbeat_s=0.1)
        assert registry.claim(db, ref.video_id, retry, to=EXTRACTING, from_statuses=[DISCOVERED]) is None
        assert time.monotonic() - t0 < 4
    assert registry.get(db, ref.video_id)["claim"]["token"] == doc["claim"]["token"]


def test_the_heartbeat_keeps_a_long_stage_claimed_and_its_result_recorded(db):
    ref = new_video(db)
    a = attempt(lease_s=0.6, heartbeat_s=0.1)
    stolen = []

    def work():
        for _ in range(3):  # 3 leases long
            time.sleep(0.6)
            stolen.append(
                registry.claim(db, ref.video_id, "other-run", to=EXTRACTING, from_statuses=[DISCOVERED])
            )
        return EXTRACTED, None, {"frames": {"frames_written": 3}}

    doc, did = registry.run_stage(db, ref, a, working=EXTRACTING, from_statuses=[DISCOVERED], work=work)
    assert did and doc["status"] == EXTRACTED and doc["frames"]["frames_written"] == 3
    assert stolen == [None, None, None]


def test_a_stranded_video_is_failed_with_the_reason_after_max_attempts(db):
    ref = new_video(db)
    for n in range(registry.MAX_ATTEMPTS):
        assert registry.claim(
            db, ref.video_id, attempt(run=f"r{n}"), to=EXTRACTING, from_statuses=[DISCOVERED]
        )
        db.videos.update_one(
            {"_id": ref.video_id}, {"$set": {"claim.lease_until": registry.now() - timedelta(seconds=1)}}
        )
    assert (
        registry.claim(db, ref.video_id, attempt(run="r9"), to=EXTRACTING, from_statuses=[DISCOVERED]) is None
    )
    doc = registry.get(db, ref.video_id)
    assert doc["status"] == FAILED and doc["failed_stage"] == EXTRACTING and doc["claim"] is None
    assert f"the worker was lost in {registry.MAX_ATTEMPTS} runs" in doc["reason"] and "r2" in doc["reason"]


def test_batch_takes_stranded_videos_after_new_uploads(s3, db, isolated):
    cfg = isolated.model_copy(
        update={"discovery": isolated.discovery.model_copy(update={"max_videos_per_run": 2})}
    )
    prefix = cfg.storage.videos_prefix
    put_bytes(s3, cfg.storage.bucket, f"{prefix}old.mp4", b"0")
    (old,) = register_uploads(s3, db, cfg, run_id="r1")
    registry.claim(db, old.video_id, attempt(run="r1"), to=EXTRACTING, from_statuses=[DISCOVERED])
    for i in (1, 2):
        put_bytes(s3, cfg.storage.bucket, f"{prefix}new{i}.mp4", b"%d" % i)
    # its worker is alive (lease running): not offered to anyone
    assert [r.key for r in register_uploads(s3, db, cfg, run_id="r2")] == [
        f"{prefix}new1.mp4",
        f"{prefix}new2.mp4",
    ]
    db.videos.update_one(
        {"_id": old.video_id}, {"$set": {"claim.lease_until": registry.now() - timedelta(seconds=1)}}
    )
    # stranded now: after the new uploads, so it never crowds them out
    assert [r.key for r in register_uploads(s3, db, cfg, run_id="r3")] == [
        f"{prefix}new1.mp4",
        f"{prefix}new2.mp4",
    ]
    cfg.discovery.max_videos_per_run = 3
    assert [r.key for r in register_uploads(s3, db, cfg, run_id="r4")][-1] == f"{prefix}old.mp4"


KILLED_EXTRACTION = r"""
import json, sys
from pymongo import MongoClient
from framesift.config.loading import parse_config
from framesift.ingest.registry import VideoRef
from framesift.ingest.stage import extract_one
from framesift.io.leases import Attempt
from framesift.io.s3 import make_client

args = json.loads(sys.argv[1])
cfg = parse_config(args["cfg"])
db = MongoClient(args["mongo"])[args["db"]]
ref = VideoRef(**args["ref"])
attempt = Attempt(run_id="run-killed", task="framesift_ingest.extract_frames[0]", lease_s=3, heartbeat_s=0.5)
extract_one(make_client(endpoint_url=args["s3"]), db, cfg, ref, run_id=attempt, work_dir=args["work"])
print("not reached", flush=True)
"""


def test_a_worker_killed_mid_extraction_is_finished_by_the_next_run(stack, s3, db, isolated, tmp_path):
    """SIGKILL of the extracting process (as the OOM killer would): the video is left in
    ``extracting`` with a lease nobody renews; the next run takes it over once the lease
    ran out and finishes it."""
    cfg = isolated
    key = f"{cfg.storage.videos_prefix}long clip.mp4"
    upload(s3, make_video(tmp_path / "clip.mp4", seconds=12, fps=10, seed=3), cfg.storage.bucket, key)
    (ref,) = register_uploads(s3, db, cfg, run_id="run-killed")
    chaos = tmp_path / "chaos"
    chaos.mkdir()
    plan = {
        "dir": str(chaos),
        "rules": [{"id": "k", "point": "stage.extracting", "action": "kill", "delay_s": 0.3}],
    }
    (chaos / "plan.json").write_text(json.dumps(plan))
    args = {
        "cfg": cfg.model_dump(mode="json"),
        "mongo": stack.mongo_uri,
        "db": db.name,
        "s3": stack.s3_endpoint,
        "ref": ref.to_dict(),
        "work": str(tmp_path / "work"),
    }
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "include"), os.environ.get("PYTHONPATH", "")]),
        "FRAMESIFT_FAULTS": str(chaos / "plan.json"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_EXTRACTION, json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stdout + proc.stderr  # SIGKILL
    assert "not reached" not in proc.stdout
    (fired,) = [json.loads(line) for line in (chaos / "fired.jsonl").read_text().splitlines()]
    doc = registry.get(db, ref.video_id)
    assert doc["status"] == EXTRACTING and doc["claim"]["pid"] == fired["pid"]  # stranded

    # the next run, while the dead worker's lease still runs: leaves it alone
    assert register_uploads(s3, db, cfg, run_id="run-next") == []
    time.sleep(3.2)
    (again,) = register_uploads(s3, db, cfg, run_id="run-next")  # stranded: in the batch
    from framesift.ingest.stage import extract_one

    out = extract_one(
        s3, db, cfg, again, run_id=attempt(run="run-next", lease_s=30), work_dir=str(tmp_path / "w2")
    )
    assert out["status"] == EXTRACTED and out["frames_written"] == 12 and not out["skipped"]
    doc = registry.get(db, ref.video_id)
    assert [h["status"] for h in doc["history"]] == [DISCOVERED, EXTRACTING, EXTRACTING, EXTRACTED]
    assert [h.get("run_id") for h in doc["history"]][1:] == ["run-killed", "run-next", "run-next"]
    assert doc["claim"] is None


def test_a_heartbeat_that_loses_its_claim_says_so(db, caplog):
    ref = new_video(db)
    a = attempt(lease_s=1.0, heartbeat_s=0.1)
    doc = registry.claim(db, ref.video_id, a, to=EXTRACTING, from_statuses=[DISCOVERED])
    caplog.set_level(logging.WARNING, logger="framesift.claims")
    lease = registry.lease_of(db, doc, a)
    with Heartbeat([lease], 0.1) as hb:
        db.videos.update_one({"_id": ref.video_id}, {"$set": {"claim.token": "someone-else"}})
        deadline = time.monotonic() + 5
        while not hb.lost and time.monotonic() < deadline:
            time.sleep(0.05)
    assert hb.lost == [lease] and "was taken over" in caplog.text


def test_two_runs_racing_for_one_video_one_does_the_work(db):
    ref = new_video(db)
    results = []

    def run(name):
        def work():
            time.sleep(0.5)
            return EXTRACTED, None, {"by": name}

        results.append(
            registry.run_stage(
                db, ref, attempt(run=name), working=EXTRACTING, from_statuses=[DISCOVERED], work=work
            )
        )

    threads = [threading.Thread(target=run, args=(f"run-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(did for _, did in results) == [False, False, False, True]
    assert registry.get(db, ref.video_id)["status"] == EXTRACTED
