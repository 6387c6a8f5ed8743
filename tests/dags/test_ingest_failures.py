"""framesift_ingest when things go wrong (issue #17, points 1, 2, 3 and 7), run by Airflow
(``dag.test()``) against the embedded stack and a real Label Studio: permanent errors fail
at once with the fix named, a failed register fails the run, a failed video is reported
by its run only, a fixed cause plus a requeue brings it through, and "skipped" means
quarantined only. About 3 minutes on 2 cores."""

from __future__ import annotations

import shutil
import time

import pytest
import yaml

from framesift.inference.models import fall_model_path
from framesift.io.s3 import upload
from framesift.local.stack import project_root
from framesift.local.synth import make_video

pytestmark = pytest.mark.slow


@pytest.fixture
def ingest_dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(project_root() / "dags")).get_dag("framesift_ingest")


def run(dag, **conf):
    t0 = time.monotonic()
    dr = dag.test(run_conf=conf or None)
    tis = {
        ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): ti for ti in dr.get_task_instances()
    }
    return dr, tis, time.monotonic() - t0


def states(tis):
    return {k: ti.state for k, ti in tis.items()}


def logs(caplog, capsys) -> str:
    """What the tasks logged (Airflow's task logger writes to stdout under dag.test())."""
    captured = capsys.readouterr()
    return caplog.text + captured.out + captured.err


def rewrite_config(isolated, tmp_path, **sections):
    """Rewrite the isolated config file (FRAMESIFT_CONFIG) with some sections changed."""
    import os

    data = isolated.model_dump(mode="json")
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path = os.environ["FRAMESIFT_CONFIG"]
    with open(path, "w") as fh:
        yaml.safe_dump(data, fh)
    return path


def test_a_missing_bucket_fails_the_run_at_once_naming_the_key(ingest_dag, db, isolated, tmp_path):
    rewrite_config(isolated, tmp_path, storage={"bucket": "no-such-bucket-17"})
    dr, tis, took = run(ingest_dag)
    st = states(tis)
    assert dr.state == "failed", st  # it went green before (register failed, summary ran on nothing)
    check = tis["check_setup"]
    assert check.state == "failed" and check.try_number == 1  # no retries with backoff for this
    assert st["register_uploads"] == "upstream_failed" and st["summary"] == "failed"
    assert took < 120, took  # was ~12 minutes of retries
    assert db.videos.count_documents({}) == 0  # nothing was claimed or registered


def test_a_register_that_fails_fails_the_run(ingest_dag, s3, db, isolated, tmp_path, monkeypatch):
    from framesift.config.schema import ConfigError
    from framesift.ingest import stage

    def broken(*args, **kwargs):
        raise ConfigError("discovery: broken on purpose")

    monkeypatch.setattr(stage, "register_uploads", broken)
    dr, tis, _ = run(ingest_dag, dry_run=True)  # a dry run: no labeling connection needed
    st = states(tis)
    assert st["check_setup"] == "success" and st["register_uploads"] == "failed", st
    assert tis["register_uploads"].try_number == 1
    assert st["summary"] == "failed" and dr.state == "failed"


def test_unknown_trigger_keys_and_a_bad_config_fail_at_check_setup(
    ingest_dag, db, isolated, tmp_path, caplog, capsys
):
    dr, tis, _ = run(ingest_dag, n_sample=5, dry_run=True)
    assert dr.state == "failed" and tis["check_setup"].state == "failed"
    text = logs(caplog, capsys)
    assert "trigger key 'n_sample'" in text and "did you mean 'n_samples'" in text
    path = rewrite_config(isolated, tmp_path, extraction={"fsp": 2})
    dr, tis, _ = run(ingest_dag, dry_run=True)
    assert dr.state == "failed" and tis["check_setup"].state == "failed"
    text = logs(caplog, capsys)
    assert "extraction.fsp: unknown key; did you mean 'fps'?" in text and path in text


def test_a_broken_model_fails_once_then_a_fix_and_a_requeue_bring_the_video_through(
    ingest_dag, s3, db, isolated, tmp_path, label_studio, caplog, capsys
):
    bucket, prefix = isolated.storage.bucket, isolated.storage.videos_prefix
    model = tmp_path / "models" / "detector.pt"
    model.parent.mkdir()
    model.write_bytes(b"\x80\x02not a checkpoint" * 100)  # exists, so check_setup lets it through
    rewrite_config(isolated, tmp_path, inference={"model_uri": str(model), "imgsz": 256, "batch_size": 8})
    upload(s3, make_video(tmp_path / "a.mp4", seconds=3, fps=10, seed=1), bucket, prefix + "cam1/a.mp4")

    # run 1: infer fails at once (permanent), named with the fix; the run is red, once
    dr1, tis1, took = run(ingest_dag)
    st = states(tis1)
    assert dr1.state == "failed", st
    assert st["extract_frames[0]"] == "success"
    assert tis1["infer[0]"].state == "failed" and tis1["infer[0]"].try_number == 1, st
    text = logs(caplog, capsys)
    assert "inference.model_uri" in text and "Retrying will not help" in text
    assert st["summary"] == "failed"
    doc = db.videos.find_one({"key": prefix + "cam1/a.mp4"})
    assert doc["status"] == "failed" and doc["failed_stage"] == "inferring" and doc["attempts"] == 1
    assert doc["error"]["kind"] == "permanent" and doc["error"]["task"] == "infer"
    assert took < 240, took
    # skipped means quarantined; no video was (select_shard is skipped without shards, and a
    # mapped task over no video shows as skipped: Airflow's own)
    assert not [k for k, v in st.items() if "[" in k and v == "skipped"], st

    # the operator replaces the file in place (the config does not change) and uploads more video
    shutil.copyfile(fall_model_path(), model)
    upload(s3, make_video(tmp_path / "b.mp4", seconds=3, fps=10, seed=2), bucket, prefix + "cam1/b.mp4")
    dr2, tis2, _ = run(ingest_dag)
    st2 = states(tis2)
    # the failed video is not retried by itself (its cause was permanent) and does not turn this run red
    assert dr2.state == "success", st2
    assert [ti.rendered_map_index for k, ti in tis2.items() if k.startswith("extract_frames[")] == [
        prefix + "cam1/b.mp4"
    ]
    assert db.videos.find_one({"key": prefix + "cam1/b.mp4"})["status"] in ("pushed", "not_selected")
    assert db.videos.find_one({"key": prefix + "cam1/a.mp4"})["status"] == "failed"

    # run 3, from the trigger form: requeue it with a reason; it goes from infer on and is pushed
    dr3, tis3, _ = run(ingest_dag, requeue=[prefix + "cam1/a.mp4"], requeue_reason="model file replaced")
    st3 = states(tis3)
    assert dr3.state == "success", st3
    doc = db.videos.find_one({"key": prefix + "cam1/a.mp4"})
    assert doc["status"] in ("pushed", "not_selected"), doc["status"]
    assert doc["requeued"][-1]["reason"] == "model file replaced"
    assert doc["requeued"][-1]["by"] == f"run {dr3.run_id}"
    assert [h["status"] for h in doc["history"] if h.get("run_id") == dr3.run_id][:3] == [
        "extracted",
        "inferring",
        "inferred",
    ]
    run_doc = db.runs.find_one({"_id": f"framesift_ingest/{dr1.run_id}"})
    (failed,) = run_doc["summary"]["failed"]
    assert failed["task"] == "infer" and failed["kind"] == "permanent"
    assert db.runs.find_one({"_id": f"framesift_ingest/{dr2.run_id}"})["summary"]["failed"] == []
