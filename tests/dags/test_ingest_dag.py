"""framesift_ingest run by Airflow (dag.test()) against the embedded stack."""

import pytest

from framesift.io import layout
from framesift.io.s3 import get_bytes, list_objects, parse_s3_uri, upload
from framesift.local.stack import project_root
from framesift.local.synth import make_video
from tests.videofaults import corrupted_copy, text_file

pytestmark = pytest.mark.slow


@pytest.fixture
def ingest_dag():
    # a fresh DAG per test: dag.test() renders templates onto the task objects themselves,
    # so a manual run's prefix would otherwise stick to the next test's runs
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


def test_ingest_end_to_end_quarantines_and_never_duplicates(
    ingest_dag, s3, db, isolated, tmp_path, label_studio
):
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
        assert doc["status"] in ("pushed", "not_selected"), doc
        assert [h["status"] for h in doc["history"]][:6] == [
            "discovered",
            "extracting",
            "extracted",
            "inferring",
            "inferred",
            "selecting",
        ]
        assert all(h["run_id"] == dr.run_id for h in doc["history"])
    assert docs["good.mp4"]["frames"]["frames_written"] == 4  # 4 s at 1 fps
    # the damaged copy keeps what decoded, or is quarantined with a reason: never lost silently
    dmg = docs["damaged.mp4"]
    assert dmg["status"] != "failed" and (dmg["status"] != "quarantined" or dmg["reason"])
    # one skipped mapped task (the quarantined file), the rest succeeded
    mapped = {k: v for k, v in states.items() if k.startswith("extract_frames[")}
    n_quarantined = sum(d["status"] == "quarantined" for d in docs.values())
    assert sorted(mapped.values()).count("skipped") == n_quarantined
    assert sorted(mapped.values()).count("success") == 4 - n_quarantined
    # inference ran once per extracted video (mapped over extract_frames' outcomes)
    inferred = {k: v for k, v in states.items() if k.startswith("infer[")}
    assert list(inferred.values()) == ["success"] * (4 - n_quarantined)
    inf = docs["good.mp4"]["inference"]
    assert inf["frames"] == 4 and inf["frames_failed"] == 0
    assert inf["embeddings_uri"].endswith(".npz") and "/.lightly/predictions/" in inf["predictions_prefix"]

    keys = frame_keys(s3, isolated)
    vid = docs["good.mp4"]["_id"]
    good_frames = [k for k in keys if k.startswith(layout.frames_prefix(isolated, vid) + "/")]
    assert [k.rsplit("/", 1)[1] for k in good_frames] == [f"good-{i:03d}-mp4.png" for i in (0, 25, 50, 75)]
    assert (
        docs["good.mp4"]["manifest_uri"]
        == f"s3://{isolated.storage.out_bucket}/{layout.manifest_key(isolated, vid)}"
    )

    check_selection_and_push(s3, db, isolated, states, label_studio)
    check_run_record_and_clearml(ingest_dag, dr, db, isolated)
    check_status_command(dr, isolated)
    queue_before = sorted(d["_id"] for d in db.labeling_queue.find())
    tasks_before = label_studio_task_count(label_studio)

    # a second run over the same uploads: no new records, no new frames, nothing re-extracted
    dr2, states2 = run(ingest_dag)
    assert dr2.state == "success", states2
    assert db.videos.count_documents({}) == 4
    assert frame_keys(s3, isolated) == keys
    assert all(len(d["history"]) == len(docs[d["key"][len(prefix) :]]["history"]) for d in db.videos.find())
    assert sorted(d["_id"] for d in db.labeling_queue.find()) == queue_before
    assert label_studio_task_count(label_studio) == tasks_before

    # a new version of a key is a new record and gets extracted
    upload(s3, make_video(tmp_path / "good2.mp4", seconds=2, fps=25, seed=9), bucket, prefix + "good.mp4")
    dr3, states3 = run(ingest_dag)
    assert dr3.state == "success", states3
    versions = list(db.videos.find({"key": prefix + "good.mp4"}))
    assert len(versions) == 2 and {v["status"] for v in versions} <= {"pushed", "not_selected"}
    # the new version's selection knew the datapool: no frame id selected twice
    selected = [f for sel in db.selections.find() for f in sel["selected"]]
    assert len(selected) == len(set(selected))


def test_manual_run_lists_the_given_prefix(ingest_dag, s3, db, isolated, tmp_path):
    bucket = isolated.storage.bucket
    clip = make_video(tmp_path / "c.mp4", seconds=2, fps=10, seed=4)
    upload(s3, clip, bucket, isolated.storage.videos_prefix + "elsewhere/c.mp4")
    upload(s3, clip, bucket, isolated.storage.videos_prefix + "here/c.mp4")
    dr, states = run(ingest_dag, prefix=isolated.storage.videos_prefix + "here/", dry_run=True, n_samples=1)
    assert dr.state == "success", states
    assert [d["key"] for d in db.videos.find()] == [isolated.storage.videos_prefix + "here/c.mp4"]
    # dry run: selected (budget from the form: 1 frame), nothing pushed
    (sel,) = db.selections.find()
    assert len(sel["selected"]) == 1 and sel["budget"] == 1
    assert states["select_frames"] == "success" and db.labeling_queue.count_documents({}) == 0
    assert db.videos.find_one()["status"] == "selected"


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
    from framesift.local.stack import TEST_SECRET

    with zipfile.ZipFile(doc["clearml"]["offline_zip"]) as z:  # no credential anywhere in the session
        assert not [n for n in z.namelist() if TEST_SECRET.encode() in z.read(n)]
    assert any(n.endswith("artifacts/videos/videos.json") for n in names)
    # the selection: its count, the embedding scatter (input vs selected), the record itself
    assert scalars[("frames", "selected")] == 6 and scalars[("duration_s", "infer")] > 0
    plots = {(e["metric"], e["variant"]) for e in events if e["type"] == "plot"}
    assert {v for m, v in plots if m.startswith("embeddings")} == {"input", "selected"}
    assert any(n.endswith("artifacts/selection/selection.json") for n in names)
    assert any(n.endswith("artifacts/manifests/manifests.json") for n in names)
    assert any(n.endswith("artifacts/selection_report/selection_report.html") for n in names)

    # the UI resolves extra links like this: the serialized operator reads what the task
    # runner stored for the link after the task ran
    from airflow.models.serialized_dag import SerializedDagModel

    serialized = SerializedDagModel.get_dag(dag.dag_id).get_task("summary")
    assert ClearMLRunLink.name in serialized.extra_links
    url = serialized.get_extra_links(dr.get_task_instance("summary"), ClearMLRunLink.name)
    # a page the api-server serves (a browser opens no file:// link from a web page); the
    # pages themselves: tests/dags/test_report_page.py (the report through /framesift/s3)
    from framesift_airflow.urls import page_url

    assert url == page_url("clearml", dag_id=dag.dag_id, run_id=dr.run_id) and url.startswith("/framesift/")
    assert doc["clearml"]["offline_zip"].endswith(".zip")

    # the selection report link: the report through the api-server's pages (never expires)
    from framesift.io.s3 import get_bytes, parse_s3_uri
    from framesift_airflow.links import LabelingProjectLink, SelectionReportLink

    select = SerializedDagModel.get_dag(dag.dag_id).get_task("select_frames")
    report_url = select.get_extra_links(dr.get_task_instance("select_frames"), SelectionReportLink.name)
    (sel,) = db.selections.find()
    assert report_url == page_url("s3", uri=sel["report_uri"])
    page = get_bytes(s3_client(), *parse_s3_uri(sel["report_uri"])).decode()
    assert "<html" in page.lower() and "data:image/png;base64," in page  # images inside the page
    # each push task links to its sequence in the labeling platform
    push = SerializedDagModel.get_dag(dag.dag_id).get_task("push_to_labeling")
    pushed = {d["key"]: d["labeling"]["url"] for d in db.videos.find({"status": "pushed"})}
    for ti in dr.get_task_instances():
        if ti.task_id == "push_to_labeling":
            assert push.get_extra_links(ti, LabelingProjectLink.name) == pushed[ti.rendered_map_index]


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
    assert "! " + cfg.storage.videos_prefix + "not-a-video.mp4: quarantined: not a video" in out
    assert "ClearML: offline session " in out and "framesift clearml import " in out
    assert "file://" not in out


def s3_client():
    import os

    from framesift.io.s3 import make_client

    return make_client(endpoint_url=os.environ["FRAMESIFT_S3_ENDPOINT_URL"])


def label_studio_task_count(info) -> int:
    import requests

    headers = {"Authorization": f"Token {info.token}"}
    projects = requests.get(f"{info.url}/api/projects", headers=headers, timeout=30).json()
    projects = projects.get("results", projects) if isinstance(projects, dict) else projects
    return sum(p.get("task_number", 0) for p in projects)


def check_selection_and_push(s3, db, cfg, states, info):
    """One selection over the batch, its report in S3, one sequence per video in Label Studio."""
    import requests

    from framesift.io.s3 import exists, http_url, parse_s3_uri

    (sel,) = db.selections.find()
    assert sel["state"] == "done" and sel["budget"] == len(sel["selected"]) == 6
    assert len(set(sel["selected"])) == 6 and sel["objective_names"]
    bucket, key = parse_s3_uri(sel["report_uri"])
    assert exists(s3, bucket, key) and exists(s3, bucket, key.replace("index.html", "embeddings.png"))
    pushed = [d for d in db.videos.find({"status": "pushed"})]
    assert pushed and all(d["labeling"]["backend"] == "label_studio" for d in pushed)
    assert sum(len(d["selected_frames"]) for d in pushed) == 6
    push_states = [v for k, v in states.items() if k.startswith("push_to_labeling[")]
    assert push_states == ["success"] * len(pushed)
    queue = list(db.labeling_queue.find())
    assert len(queue) == len(pushed)
    for rec in queue:
        assert rec["state"] == "pushed" and rec["Labeling status"] == "In queue" and rec["backend_ids"]
        assert rec["selection_id"] == sel["_id"] and rec["frames"] == sorted(rec["frames"])
    # the tasks are on the real server, with one image per selected frame and predictions
    headers = {"Authorization": f"Token {info.token}"}
    task_id = queue[0]["backend_ids"][0]
    task = requests.get(f"{info.url}/api/tasks/{task_id}", headers=headers, timeout=30).json()
    assert len(task["data"]["images"]) == queue[0]["n_frames"]
    # the labeler's view: titled by the S3 key, frame times and reasons, model name@hash
    (video,) = [d for d in pushed if d["_id"] == queue[0]["video_id"]]
    assert task["data"]["title"] == video["key"]
    times = task["data"]["frame_times_s"]
    assert len(times) == len(task["data"]["images"]) and all(isinstance(t, float) for t in times)
    assert all(r.startswith("pick ") for r in task["data"]["frame_reasons"])
    import re

    version = video["inference"]["model_version"]  # what predictions carry (none on this clip)
    assert re.fullmatch(r"[\w.-]+@[0-9a-f]{8}", version), version
    assert all(p["model_version"] == version for p in task.get("predictions", []))
    # the report names frames by video key and time, not by the video id; every pushed video,
    # the non-ASCII key included (decoded by the charset the server sends, as a client would)
    resp = requests.get(http_url(s3, sel["report_uri"]), timeout=30)
    assert "charset=utf-8" in resp.headers["Content-Type"]
    table = resp.text.split("<h2>Objective values at pick time", 1)[-1]
    for doc in pushed:
        assert f"{doc['key']} @ " in resp.text and doc["_id"] not in table, doc["key"]


def test_big_batch_is_selected_in_shards_as_mapped_tasks(ingest_dag, s3, db, isolated, tmp_path):
    """Over `shard_max_frames`, selection runs per shard (mapped tasks) and a merge task."""
    import os

    import yaml

    path = os.environ["FRAMESIFT_CONFIG"]
    data = yaml.safe_load(open(path))
    data["selection"].update(shard_max_frames=10, shard_oversample=2.0)
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    for i in range(3):  # 8 frames each at 1 fps: one video per shard
        clip = make_video(tmp_path / f"v{i}.mp4", seconds=8, fps=10, seed=20 + i)
        upload(s3, clip, isolated.storage.bucket, isolated.storage.videos_prefix + f"v{i}.mp4")

    dr, states = run(ingest_dag, n_samples=3, dry_run=True)
    assert dr.state == "success", states
    assert [states.get(f"select_shard[{i}]") for i in range(3)] == ["success"] * 3, states
    assert {ti.rendered_map_index for ti in dr.get_task_instances() if ti.task_id == "select_shard"} == {
        "shard 0",
        "shard 1",
        "shard 2",
    }
    (sel,) = db.selections.find()
    assert sel["state"] == "done" and sel["n_input"] == 24 and sel["sizes"]["Input"]["Image"] == 24
    # each shard kept 2 x budget of its 8 frames; the merge picked the budget from their 18
    assert [(s["frames"], s["winners"]) for s in sel["shards"]] == [(8, 6)] * 3
    assert len(sel["selected"]) == len(set(sel["selected"])) == 3
    video_ids = {d["_id"] for d in db.videos.find()}
    assert {f.split("/", 1)[0] for f in sel["selected"]} <= video_ids
    assert {d["status"] for d in db.videos.find()} <= {"selected", "not_selected"}
    assert "merged from 3 shards" in get_bytes(s3, *parse_s3_uri(sel["report_uri"])).decode()

    # a second run finds nothing new: no plan, the shard tasks are skipped
    dr2, states2 = run(ingest_dag, n_samples=3, dry_run=True)
    assert dr2.state == "success", states2
    assert states2["select_shard"] == "skipped" and db.selections.count_documents({}) == 1
