"""Registry, discovery and S3 event notifications against the real loopback servers."""

import asyncio
import json
from datetime import timedelta

import pytest
from pymongo.errors import DuplicateKeyError

from framesift.ingest import registry
from framesift.ingest.discovery import find_new_videos, objects_from_s3_event
from framesift.ingest.stage import register_uploads
from framesift.io.s3 import S3Object, head, put_bytes

pytestmark = pytest.mark.slow


def test_register_is_idempotent_per_etag(db):
    registry.ensure_indexes(db)
    obj = S3Object("b", "videos/a.mp4", "e1", 10)
    ref, created = registry.register(db, obj, "run-1")
    again, created_again = registry.register(db, obj, "run-2")
    assert created and not created_again and ref == again
    assert db.videos.count_documents({}) == 1
    doc = registry.get(db, ref.video_id)
    assert doc["status"] == registry.DISCOVERED and doc["first_run_id"] == "run-1"
    # a new version of the same key is a new record
    _, created_v2 = registry.register(db, S3Object("b", "videos/a.mp4", "e2", 11), "run-2")
    assert created_v2 and db.videos.count_documents({"key": "videos/a.mp4"}) == 2
    # the unique index backs this up even for writers that bypass register()
    with pytest.raises(DuplicateKeyError):
        db.videos.insert_one({"_id": "other", "bucket": "b", "key": "videos/a.mp4", "etag": "e1"})


def test_claim_is_exclusive_but_retry_safe(db):
    ref, _ = registry.register(db, S3Object("b", "k.mp4", "e", 1), "r0")
    first = registry.claim(db, ref.video_id, "run-A", to="extracting", from_statuses=["discovered"])
    assert first and first["status"] == "extracting" and first["run_id"] == "run-A"
    assert registry.claim(db, ref.video_id, "run-B", to="extracting", from_statuses=["discovered"]) is None
    # the same run retrying its task gets it back
    assert registry.claim(db, ref.video_id, "run-A", to="extracting", from_statuses=["discovered"])
    # the lease of a claim from a crashed worker runs out (nobody renews it)
    db.videos.update_one(
        {"_id": ref.video_id}, {"$set": {"claim.lease_until": registry.now() - timedelta(seconds=1)}}
    )
    assert registry.claim(db, ref.video_id, "run-B", to="extracting", from_statuses=["discovered"])
    registry.mark(db, ref.video_id, "extracted", "run-B")
    assert registry.claim(db, ref.video_id, "run-C", to="extracting", from_statuses=["discovered"]) is None
    history = [h["status"] for h in registry.get(db, ref.video_id)["history"]]
    assert history == ["discovered", "extracting", "extracting", "extracting", "extracted"]


def test_find_new_videos_lists_only_unregistered(s3, db, isolated):
    bucket, prefix = isolated.storage.bucket, isolated.storage.videos_prefix
    for name in ("a.mp4", "b.webm", "notes.txt", "sub/c.MOV"):
        put_bytes(s3, bucket, prefix + name, b"x" * 3)
    new = find_new_videos(s3, db, isolated)
    assert sorted(o.key[len(prefix) :] for o in new) == ["a.mp4", "b.webm", "sub/c.MOV"]
    registry.register(db, head(s3, bucket, prefix + "a.mp4"), "r")
    assert sorted(o.key[len(prefix) :] for o in find_new_videos(s3, db, isolated)) == ["b.webm", "sub/c.MOV"]
    # overwriting a registered key (new etag) makes it new again
    put_bytes(s3, bucket, prefix + "a.mp4", b"new content")
    assert "a.mp4" in [o.key[len(prefix) :] for o in find_new_videos(s3, db, isolated)]


def drain(sqs, queue_url):
    messages = []
    while True:
        resp = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        batch = resp.get("Messages", [])
        if not batch:
            return messages
        messages.extend(batch)
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
        )


def test_s3_notifications_reach_sqs_and_register_once(s3, sqs, stack, db, isolated):
    drain(sqs, stack.sqs_queue_url)
    # the stack notifies for its default videos/ prefix; use it with a unique sub-folder
    key = f"videos/{isolated.mongo.database}/clip +1 (été).mp4"
    put_bytes(s3, stack.bucket, key, b"not really a video")
    # a multipart upload, which moto reports with its own event
    mp_key = f"videos/{isolated.mongo.database}/big.mp4"
    upload = s3.create_multipart_upload(Bucket=stack.bucket, Key=mp_key)
    part = s3.upload_part(
        Bucket=stack.bucket, Key=mp_key, UploadId=upload["UploadId"], PartNumber=1, Body=b"y" * 100
    )
    s3.complete_multipart_upload(
        Bucket=stack.bucket,
        Key=mp_key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    messages = drain(sqs, stack.sqs_queue_url)
    keys = [o.key for m in messages for o in objects_from_s3_event(m["Body"])]
    assert key in keys and mp_key in keys  # keys arrive URL-encoded and are decoded

    payload = {"message_batch": [{"Body": m["Body"]} for m in messages]}
    refs = register_uploads(s3, db, isolated, run_id="run-1", event_payloads=[payload, payload])
    assert sorted(r.key for r in refs) == sorted([key, mp_key])
    # the same events again (a duplicate delivery, a retry) create nothing new
    again = register_uploads(s3, db, isolated, run_id="run-2", event_payloads=[payload])
    assert db.videos.count_documents({}) == 2 and sorted(r.video_id for r in again) == sorted(
        r.video_id for r in refs
    )
    assert {d["etag"] for d in db.videos.find()} == {
        head(s3, stack.bucket, key).etag,
        head(s3, stack.bucket, mp_key).etag,
    }


def test_register_uploads_caps_the_batch_and_drains_the_backlog(s3, db, isolated):
    cfg = isolated.model_copy(
        update={"discovery": isolated.discovery.model_copy(update={"max_videos_per_run": 2})}
    )
    for i in range(5):
        put_bytes(s3, cfg.storage.bucket, f"{cfg.storage.videos_prefix}v{i}.mp4", b"%d" % i)
    first = register_uploads(s3, db, cfg, run_id="r1")
    assert len(first) == 2 and db.videos.count_documents({}) == 5
    for ref in first:  # finished for good (a resumable status would be picked up again)
        registry.mark(db, ref.video_id, "quarantined", "r1", reason="test")
    second = register_uploads(s3, db, cfg, run_id="r2")
    assert len(second) == 2 and not {r.video_id for r in second} & {r.video_id for r in first}


def test_overlapping_runs_take_new_uploads_before_each_others_videos(s3, db, isolated):
    """A run starting while another works on its batch takes new uploads first; a video
    left half way by a run that stopped (idle for RESUME_IDLE) comes before both."""
    from framesift.ingest.stage import RESUME_IDLE

    cfg = isolated.model_copy(
        update={"discovery": isolated.discovery.model_copy(update={"max_videos_per_run": 2})}
    )
    for i in range(6):
        put_bytes(s3, cfg.storage.bucket, f"{cfg.storage.videos_prefix}v{i}.mp4", b"%d" % i)
    first = register_uploads(s3, db, cfg, run_id="r1")
    for ref in first:  # r1 is busy with them: extracted, waiting for inference
        registry.mark(db, ref.video_id, registry.EXTRACTED, "r1")
    second = register_uploads(s3, db, cfg, run_id="r2")
    assert [r.key for r in second] == [f"{cfg.storage.videos_prefix}v{i}.mp4" for i in (2, 3)]
    # r1 stopped: its videos sat untouched for longer than RESUME_IDLE, so they go first
    db.videos.update_many(
        {"_id": {"$in": [r.video_id for r in first]}},
        {"$set": {"updated_at": registry.now() - RESUME_IDLE * 2}},
    )
    third = register_uploads(s3, db, cfg, run_id="r3")
    assert {r.video_id for r in third} == {r.video_id for r in first}
    # with room to spare, a run takes everything pending: new first, then the busy ones
    cfg.discovery.max_videos_per_run = 10
    assert len(register_uploads(s3, db, cfg, run_id="r4")) == 6


def test_new_videos_trigger_yields_unregistered_keys(s3, db, isolated):
    from framesift_airflow.triggers import NewVideosTrigger

    put_bytes(s3, isolated.storage.bucket, isolated.storage.videos_prefix + "t.mp4", b"t")
    trigger = NewVideosTrigger(poll_interval_s=0.1)
    classpath, kwargs = trigger.serialize()
    assert classpath == "framesift_airflow.triggers.NewVideosTrigger"
    assert NewVideosTrigger(**kwargs).serialize() == (classpath, kwargs)

    async def first_event():
        gen = trigger.run()
        event = await asyncio.wait_for(gen.__anext__(), timeout=30)
        await gen.aclose()
        return event

    event = asyncio.run(first_event())
    assert [o["key"] for o in event.payload["objects"]] == [isolated.storage.videos_prefix + "t.mp4"]
    json.dumps(event.payload)  # payloads are stored as JSON in the metadata DB


def test_failed_stage_can_be_retried_a_bounded_number_of_times(db):
    ref, _ = registry.register(db, S3Object("b", "f.mp4", "e", 1), "r0")
    for attempt in range(registry.MAX_ATTEMPTS):
        assert registry.claim(
            db, ref.video_id, f"run-{attempt}", to="extracting", from_statuses=["discovered"]
        )
        registry.mark(
            db, ref.video_id, "failed", f"run-{attempt}", reason="S3 down", failed_stage="extracting"
        )
    assert registry.claim(db, ref.video_id, "run-x", to="extracting", from_statuses=["discovered"]) is None
    # a failure in another stage does not let this one claim it
    ref2, _ = registry.register(db, S3Object("b", "g.mp4", "e", 1), "r0")
    registry.mark(db, ref2.video_id, "failed", "r0", reason="GPU lost", failed_stage="inferring")
    assert registry.claim(db, ref2.video_id, "r1", to="extracting", from_statuses=["discovered"]) is None
    assert registry.claim(db, ref2.video_id, "r1", to="inferring", from_statuses=["extracted"])
