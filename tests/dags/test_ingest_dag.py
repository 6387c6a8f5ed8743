"""framesift_ingest run by Airflow (dag.test()) against the embedded stack."""

import pytest

from framesift import layout
from framesift.stack import project_root
from framesift.storage import list_objects, upload
from framesift.synth import make_video
from tests.videofaults import corrupted_copy, text_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ingest_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(project_root() / "dags"))
    return bag.get_dag("framesift_ingest")


def run(dag, **conf):
    dr = dag.test(run_conf=conf or None)
    return dr, {
        ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): ti.state
        for ti in dr.get_task_instances()
    }


def frame_keys(s3, cfg):
    return sorted(
        o.key
        for o in list_objects(s3, cfg.storage.out_bucket, cfg.storage.output_prefix)
        if o.key.endswith(".png")
    )


def test_ingest_registers_extracts_and_quarantines(ingest_dag, s3, db, isolated, tmp_path):
    bucket, prefix = isolated.storage.bucket, isolated.storage.videos_prefix
    good = make_video(tmp_path / "good.mp4", seconds=4, fps=25, seed=1)
    odd = make_video(tmp_path / "odd.webm", seconds=3, fps=20, codec="libvpx-vp9", seed=2)
    damaged = corrupted_copy(good, tmp_path / "damaged.mp4", seed=3)
    upload(s3, good, bucket, prefix + "good.mp4")
    upload(s3, odd, bucket, prefix + "odd name (copy) +été.webm")  # characters that need care
    upload(s3, damaged, bucket, prefix + "damaged.mp4")
    upload(s3, text_file(tmp_path / "notes.mp4"), bucket, prefix + "not-a-video.mp4")

    dr, states = run(ingest_dag)
    assert dr.state == "success", states
    assert states["register_uploads"] == "success" and states["summary"] == "success"
    docs = {d["key"][len(prefix) :]: d for d in db.videos.find()}
    assert set(docs) == {"good.mp4", "odd name (copy) +été.webm", "damaged.mp4", "not-a-video.mp4"}
    assert docs["not-a-video.mp4"]["status"] == "quarantined"
    assert "not a video" in docs["not-a-video.mp4"]["reason"]
    for name in ("good.mp4", "odd name (copy) +été.webm"):
        doc = docs[name]
        assert doc["status"] == "extracted", doc
        assert [h["status"] for h in doc["history"]] == ["discovered", "extracting", "extracted"]
        assert all(h["run_id"] == dr.run_id for h in doc["history"])
    assert docs["good.mp4"]["frames"]["frames_written"] == 4  # 4 s at 1 fps
    # the damaged copy keeps what decoded, or is quarantined with a reason: never lost silently
    dmg = docs["damaged.mp4"]
    assert dmg["status"] in ("extracted", "quarantined") and (dmg["status"] == "extracted" or dmg["reason"])
    # one skipped mapped task (the quarantined file), the rest succeeded
    mapped = {k: v for k, v in states.items() if k.startswith("extract_frames[")}
    n_quarantined = sum(d["status"] == "quarantined" for d in docs.values())
    assert sorted(mapped.values()).count("skipped") == n_quarantined
    assert sorted(mapped.values()).count("success") == 4 - n_quarantined

    keys = frame_keys(s3, isolated)
    vid = docs["good.mp4"]["_id"]
    good_frames = [k for k in keys if k.startswith(layout.frames_prefix(isolated, vid) + "/")]
    assert [k.rsplit("/", 1)[1] for k in good_frames] == [f"good-{i:03d}-mp4.png" for i in (0, 25, 50, 75)]
    assert (
        docs["good.mp4"]["manifest_uri"]
        == f"s3://{isolated.storage.out_bucket}/{layout.manifest_key(isolated, vid)}"
    )

    check_run_record_and_clearml(ingest_dag, dr, db, isolated)
    check_status_command(dr, isolated)

    # a second run over the same uploads: no new records, no new frames, nothing re-extracted
    dr2, states2 = run(ingest_dag)
    assert dr2.state == "success", states2
    assert db.videos.count_documents({}) == 4
    assert frame_keys(s3, isolated) == keys
    assert all(len(d["history"]) == len(docs[d["key"][len(prefix) :]]["history"]) for d in db.videos.find())

    # a new version of a key is a new record and gets extracted
    upload(s3, make_video(tmp_path / "good2.mp4", seconds=2, fps=25, seed=9), bucket, prefix + "good.mp4")
    dr3, _ = run(ingest_dag)
    assert dr3.state == "success"
    versions = list(db.videos.find({"key": prefix + "good.mp4"}))
    assert len(versions) == 2 and {v["status"] for v in versions} == {"extracted"}


def test_manual_run_lists_the_given_prefix(ingest_dag, s3, db, isolated, tmp_path):
    bucket = isolated.storage.bucket
    clip = make_video(tmp_path / "c.mp4", seconds=2, fps=10, seed=4)
    upload(s3, clip, bucket, isolated.storage.videos_prefix + "elsewhere/c.mp4")
    upload(s3, clip, bucket, isolated.storage.videos_prefix + "here/c.mp4")
    dr, states = run(ingest_dag, prefix=isolated.storage.videos_prefix + "here/")
    assert dr.state == "success", states
    assert [d["key"] for d in db.videos.find()] == [isolated.storage.videos_prefix + "here/c.mp4"]


def check_run_record_and_clearml(dag, dr, db, cfg):
    """The run's `runs` record, its offline ClearML session, and the UI link to it."""
    import json
    import zipfile

    from framesift_airflow.links import ClearMLRunLink

    doc = db.runs.find_one({"_id": f"framesift_ingest/{dr.run_id}"})
    assert doc and doc["summary"]["videos"] == 4
    with zipfile.ZipFile(doc["clearml"]["offline_zip"]) as z:
        task = json.loads(z.read("task.json"))
        metrics = [json.loads(line) for line in z.read("metrics.jsonl").splitlines() if line.strip()]
        names = z.namelist()
    events = [e for batch in metrics for e in (batch if isinstance(batch, list) else [batch])]
    scalars = {
        (e["metric"], e["variant"]): e["value"] for e in events if e["type"] == "training_stats_scalar"
    }
    assert (
        task["name"] == f"framesift_ingest-{dr.run_id}" and task["project_name"] == cfg.tracking.project_name
    )
    assert task["type"] == "inference"
    assert scalars[("videos", "in")] == 4
    assert scalars[("frames", "written")] == doc["summary"]["frames_written"] > 0
    assert scalars[("duration_s", "extract")] > 0
    assert "pipeline" in task["configuration"]
    from framesift.stack import TEST_SECRET

    with zipfile.ZipFile(doc["clearml"]["offline_zip"]) as z:  # no credential anywhere in the session
        assert not [n for n in z.namelist() if TEST_SECRET.encode() in z.read(n)]
    assert any(n.endswith("artifacts/videos/videos.json") for n in names)

    # the UI resolves extra links like this: the serialized operator reads what the task
    # runner stored for the link after the task ran
    from airflow.models.serialized_dag import SerializedDagModel

    serialized = SerializedDagModel.get_dag(dag.dag_id).get_task("summary")
    assert ClearMLRunLink.name in serialized.extra_links
    url = serialized.get_extra_links(dr.get_task_instance("summary"), ClearMLRunLink.name)
    assert url == doc["clearml"]["url"] == "file://" + doc["clearml"]["offline_zip"]


def check_status_command(dr, cfg):
    """`framesift status` shows the run, its counts, the quarantined file and the ClearML link."""
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "framesift.cli", "status"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert dr.run_id in out and "videos 4 (" in out and "quarantined 1" in out.replace(":", "")
    assert "! " + cfg.storage.videos_prefix + "not-a-video.mp4: not a video" in out
    assert "ClearML: file://" in out
