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
