"""Failed videos recover (issue #17, point 1): attempts count framesift attempts (runs), not
Airflow tries; a fixed cause lets a later run retry the video at the stage it failed in;
`framesift videos requeue` puts it back with the reason recorded; a failure is reported by
the run it happened in, once, with the stage and the error, and not by later runs.
SecantusDB and moto on loopback."""

from __future__ import annotations

import pytest

from framesift.config.errors import classify
from framesift.inference.models import ModelError
from framesift.ingest import registry
from framesift.ingest.registry import DISCOVERED, EXTRACTING, FAILED, PUSHING, SELECTED
from framesift.ingest.stage import register_uploads, requeue_videos, summarize
from framesift.io.leases import Attempt
from framesift.io.s3 import put_bytes
from framesift.labeling.base import BackendUnavailable
from framesift.labeling.push import resumed_push_items

pytestmark = pytest.mark.slow


def attempt(run: str, try_number: int = 1) -> Attempt:
    return Attempt(run_id=run, try_number=try_number, task="framesift_ingest.extract_frames[0]", lease_s=30)


def fail_in(db, ref, run: str, exc: Exception, tries: int = 1, stage: str = EXTRACTING) -> dict:
    """Airflow's ``tries`` of one task in run ``run``, each failing with ``exc``."""

    def work():
        raise exc

    for n in range(1, tries + 1):
        with pytest.raises(type(exc)):
            registry.run_stage(db, ref, attempt(run, n), working=stage, from_statuses=[DISCOVERED], work=work)
    return registry.get(db, ref.video_id)


def upload_one(s3, db, cfg, name="a.mp4"):
    put_bytes(s3, cfg.storage.bucket, cfg.storage.videos_prefix + name, b"not decoded here")
    (ref,) = register_uploads(s3, db, cfg, run_id="run-0")
    return ref


def test_airflow_retries_in_one_run_are_one_attempt(s3, db, isolated):
    ref = upload_one(s3, db, isolated)
    # 4 tries (retries: 3) of one run, a transient error each time
    doc = fail_in(db, ref, "run-1", BackendUnavailable("S3 timed out"), tries=4)
    assert doc["status"] == FAILED and doc["attempts"] == 1 and doc["tries"] == 4
    assert doc["attempt_runs"] == ["run-1"]
    assert doc["error"]["kind"] == "transient" and doc["error"]["task"] == "extract_frames"
    # the next run retries it (it used to be out of attempts after three Airflow tries)
    assert [r.video_id for r in register_uploads(s3, db, isolated, run_id="run-2")] == [ref.video_id]
    claimed = registry.claim(db, ref.video_id, attempt("run-2"), to=EXTRACTING, from_statuses=[DISCOVERED])
    assert claimed and claimed["attempts"] == 2
    registry.release(db, registry.lease_of(db, claimed, attempt("run-2")), "extracted")
    done = registry.get(db, ref.video_id)
    assert (done["attempts"], done["attempt_runs"], done["tries"], done["error"]) == (0, [], 0, None)


def test_transient_failures_are_retried_in_up_to_max_attempts_runs(s3, db, isolated):
    ref = upload_one(s3, db, isolated)
    for n in range(1, registry.MAX_ATTEMPTS + 1):
        assert ref.video_id in [r.video_id for r in register_uploads(s3, db, isolated, run_id=f"run-{n}")]
        fail_in(db, ref, f"run-{n}", BackendUnavailable("down"), tries=2)
    assert register_uploads(s3, db, isolated, run_id="run-9") == []  # waits for a person now
    item = summarize([registry.get(db, ref.video_id)], f"run-{registry.MAX_ATTEMPTS}")["failed"][0]
    assert "requeue" in item["next"] and item["attempts"] == registry.MAX_ATTEMPTS


def test_a_permanent_failure_waits_for_a_changed_config_or_a_requeue(s3, db, isolated):
    ref = upload_one(s3, db, isolated)
    model = ModelError("model /models/x.pt: file not found; check inference.model_uri")
    assert classify(model).permanent
    doc = fail_in(db, ref, "run-1", model)
    assert doc["error"]["kind"] == "permanent" and "inference.model_uri" in doc["error"]["fix"]
    # the same config: not retried (each run would fail the same way and go red)
    assert register_uploads(s3, db, isolated, run_id="run-2") == []
    # a changed config (someone fixed it): the next run retries it
    fixed = isolated.model_copy(deep=True)
    fixed.inference.imgsz = 256
    assert [r.video_id for r in register_uploads(s3, db, fixed, run_id="run-3")] == [ref.video_id]
    fail_in(db, ref, "run-3", model)
    assert register_uploads(s3, db, fixed, run_id="run-4") == []
    # the file was replaced in place (no config change): requeue it, with the reason
    moved, missing = requeue_videos(
        db, keys=[ref.key], reason="model file replaced", by="ops@host", run_id=None
    )
    assert [d["_id"] for d in moved] == [ref.video_id] and missing == []
    doc = registry.get(db, ref.video_id)
    assert doc["status"] == DISCOVERED and doc["attempts"] == 0 and doc["error"] is None
    assert doc["requeued"][-1]["reason"] == "model file replaced" and doc["requeued"][-1]["by"] == "ops@host"
    assert doc["requeued"][-1]["stage"] == EXTRACTING and "file not found" in doc["requeued"][-1]["error"]
    assert doc["history"][-1]["reason"] == "requeued by ops@host: model file replaced"
    assert [r.video_id for r in register_uploads(s3, db, fixed, run_id="run-5")] == [ref.video_id]
    # a key that is not failed is named, not silently ignored
    assert requeue_videos(db, keys=["nope.mp4"], reason="x", by="y") == ([], ["nope.mp4"])


def test_the_trigger_forms_requeue_goes_into_that_runs_batch(s3, db, isolated):
    ref = upload_one(s3, db, isolated)
    fail_in(db, ref, "run-1", ModelError("model x: not loadable"))
    refs = register_uploads(
        s3, db, isolated, run_id="run-2", requeue_failed=True, requeue_reason="new checkpoint"
    )
    assert [r.video_id for r in refs] == [ref.video_id]
    doc = registry.get(db, ref.video_id)
    assert doc["requeued"][-1]["by"] == "run run-2" and doc["requeued"][-1]["reason"] == "new checkpoint"


def test_a_video_failed_at_the_push_is_pushed_again_by_a_later_run(s3, db, isolated):
    ref = upload_one(s3, db, isolated)
    db.videos.update_one(
        {"_id": ref.video_id},
        {"$set": {"status": SELECTED, "selection_id": "sel-1", "selected_frames": ["a-0-mp4.png"]}},
    )

    def down():
        raise BackendUnavailable("Label Studio answered 502")

    with pytest.raises(BackendUnavailable):
        registry.run_stage(db, ref, attempt("run-1"), working=PUSHING, from_statuses=[SELECTED], work=down)
    assert registry.get(db, ref.video_id)["failed_stage"] == PUSHING
    # the next run's batch has it, and its push (not its extraction) takes it
    (batched,) = register_uploads(s3, db, isolated, run_id="run-2")
    (item,) = resumed_push_items(db, [batched.video_id])
    assert item["video_id"] == ref.video_id and item["selection_id"] == "sel-1"
    doc, did = registry.run_stage(
        db,
        ref,
        attempt("run-2"),
        working=PUSHING,
        from_statuses=[SELECTED],
        work=lambda: ("pushed", None, {"labeling": {"url": "u"}}),
    )
    assert did and doc["status"] == "pushed"


def test_a_failure_is_reported_once_by_its_run_with_the_stage_and_the_error(s3, db, isolated):
    ref = upload_one(s3, db, isolated)
    fail_in(db, ref, "run-1", ModelError("model s3://m/best.pt: no such object"), stage=EXTRACTING)
    docs = [registry.get(db, ref.video_id)]
    (item,) = summarize(docs, "run-1")["failed"]
    assert item["key"] == ref.key and item["stage"] == EXTRACTING and item["task"] == "extract_frames"
    assert item["kind"] == "permanent" and "no such object" in item["error"]
    assert "framesift videos requeue" in item["next"]
    # a later run that has it in its batch (or reads the registry) does not report it as its own
    later = summarize(docs, "run-2")
    assert later["failed"] == [] and [f["key"] for f in later["failed_earlier"]] == [ref.key]


def test_the_cli_requeues_with_the_reason(s3, db, isolated, stack, monkeypatch, capsys):
    from framesift.cli import main

    ref = upload_one(s3, db, isolated)
    fail_in(db, ref, "run-1", ModelError("model x: empty file"))
    monkeypatch.setenv("FRAMESIFT_MONGO_URI", stack.mongo_uri)
    monkeypatch.setenv("FRAMESIFT_S3_ENDPOINT_URL", stack.s3_endpoint)
    assert main(["videos", "--failed"]) == 0
    listed = capsys.readouterr().out
    assert ref.key in listed and "permanent error at extract_frames" in listed and "empty file" in listed
    assert main(["videos", "requeue", ref.key, "--reason", "checkpoint uploaded again"]) == 0
    out = capsys.readouterr().out
    assert f"requeued {ref.key}: back to discovered" in out
    assert registry.get(db, ref.video_id)["requeued"][-1]["reason"] == "checkpoint uploaded again"
    assert main(["videos", "requeue", "--failed"]) == 0 and "no failed videos" in capsys.readouterr().out
