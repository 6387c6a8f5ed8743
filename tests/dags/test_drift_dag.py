"""Drift end to end on generated videos: extraction and real inference (the bundled
detector) into the embedded stack, the signals per camera folder, then framesift_drift
under dag.test(): incidents, the alert delivered to a local webhook after an outage, the
ClearML plots, the drifted frames held for on-call's ack, then in Label Studio once acked
(and kept out when on-call drops them), and no duplicates on a second run.

Two cameras (generated clips with their own scene each): the first 13 s of each is the
reference (inferred first: "the earliest inferred videos"), the next 10 s is new footage;
cam1's new footage also comes shifted: night, heavy blur, a moved camera, a new kind of
object. Each camera/shift lives in its own folder, so with ``group_by: folder`` each is
one window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import quote

import pytest

from framesift.drift import incidents as alerts
from framesift.drift import monitor
from framesift.local.stack import project_root
from framesift.local.synth import make_video
from tests.driftshifts import SHIFTS, drift_config, ingest_clips, shifted_copy
from tests.listener import Listener

pytestmark = pytest.mark.slow

CAMERAS = (1, 2)
SHIFTED = tuple(f"cam1-{s}/" for s in SHIFTS)


@pytest.fixture(scope="module")
def world(stack, s3, mongo, tmp_path_factory):
    """Config, uploads, and every clip extracted and inferred (reference clips first)."""
    from framesift.inference.detector import Detector

    tmp = tmp_path_factory.mktemp("drift")
    listener = Listener()
    drift = {
        "window_frames": 25,
        "min_window_frames": 20,
        "reference_frames": 66,  # the two 13 s reference clips, 33 frames each
        "group_by": "folder",
        "alerts": {
            "channels": [{"type": "webhook", "conn_id": "framesift_alerts_webhook"}],
            "sample_frames": 3,
        },
        "labeling": {"n_samples": 4},
    }
    cfg, path = drift_config(stack, tmp, "d", drift)
    saved = {k: os.environ.get(k) for k in ("FRAMESIFT_CONFIG", "AIRFLOW_CONN_FRAMESIFT_ALERTS_WEBHOOK")}
    os.environ["FRAMESIFT_CONFIG"] = str(path)
    conn = {
        "conn_type": "http",
        "host": f"http://127.0.0.1:{listener.port}",
        "password": "T000/B000/not-a-real-token",
    }
    os.environ["AIRFLOW_CONN_FRAMESIFT_ALERTS_WEBHOOK"] = json.dumps(conn)
    db = mongo[cfg.mongo.database]
    prefix = cfg.storage.videos_prefix

    early, later = [], []
    for cam in CAMERAS:
        clip = make_video(tmp / f"cam{cam}.mp4", seconds=23, fps=5, seed=cam)
        early.append((shifted_copy(clip, tmp / f"cam{cam}-early.mp4", end_s=13), f"cam{cam}/early.mp4"))
        later.append((shifted_copy(clip, tmp / f"cam{cam}-later.mp4", start_s=13), f"cam{cam}/later.mp4"))
    for shift in SHIFTS:
        src = tmp / "cam1.mp4"
        later.append(
            (shifted_copy(src, tmp / f"cam1-{shift}.mp4", shift, start_s=13), f"cam1-{shift}/later.mp4")
        )

    detector = Detector.from_config(cfg, s3)
    for batch, run_id in ((early, "setup-reference"), (later, "setup-new")):
        ingest_clips(s3, db, cfg, batch, run_id, detector)
    yield {"cfg": cfg, "db": db, "listener": listener, "prefix": prefix}
    listener.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_each_shift_is_detected_in_one_window_and_new_footage_is_not(world, s3):
    cfg, db, prefix = world["cfg"], world["db"], world["prefix"]
    assert db.videos.count_documents({"status": "inferred"}) == len(CAMERAS) * 2 + len(SHIFTS)
    report = monitor.compute(s3, db, cfg)
    print(monitor.format_report(report))  # shown with -s: the values behind the thresholds
    ref = report["reference"]
    assert ref["frames"] == 66 and sorted(ref["videos"]) == [f"{prefix}cam{c}/early.mp4" for c in CAMERAS]
    windows = {w["source"][len(prefix) :]: w for w in report["windows"]}
    assert set(windows) == {f"cam{c}/" for c in CAMERAS} | set(SHIFTED)
    for cam in CAMERAS:  # new footage of a known camera, against that camera's reference
        w = windows[f"cam{cam}/"]
        assert w["reference"] == "own" and w["level"] == "normal", monitor.format_report({"windows": [w]})
    for source in SHIFTED:  # one window (25 frames, 10 s at 2.5 fps) is enough
        w = windows[source]
        assert w["n_frames"] == 25 and w["level"] in ("warning", "critical"), monitor.format_report(
            {"windows": [w]}
        )
        assert w["families"]["embedding"] in ("warning", "critical")
        assert len(w["sample_frames"]) == 3 and all(u.startswith("s3://") for u in w["sample_frames"])


@pytest.fixture(scope="module")
def drift_dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(project_root() / "dags" / "framesift_drift.py")).get_dag("framesift_drift")


def _run(dag):
    dr = dag.test()
    return dr, {ti.task_id: ti.state for ti in dr.get_task_instances()}


def test_dag_alerts_once_survives_a_webhook_outage_and_queues_drifted_frames(
    world, drift_dag, label_studio, monkeypatch, tmp_path
):
    db, listener, prefix = world["db"], world["listener"], world["prefix"]
    listener.status = 503  # on-call's webhook is down during the first run
    # the api-server's public URL: alerts link pages a browser opens (never file://)
    base = "http://airflow.example:8080"
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", base)

    dr, states = _run(drift_dag)
    assert states["deliver_alerts"] == "failed", states
    assert all(states[t] == "success" for t in states if t != "deliver_alerts"), states
    incidents = {d["_id"]: d for d in db[alerts.ALERTS].find()}
    sources = {d["source"][len(prefix) :] for d in incidents.values()}
    assert sources == set(SHIFTED), sources  # the unshifted cameras opened nothing
    run_page = f"/framesift_drift/{quote(dr.run_id, safe='')}"
    for d in incidents.values():
        assert d["state"] == "open", d
        assert d["clearml_url"] == f"{base}/framesift/clearml{run_page}", d["clearml_url"]
        assert (
            d["airflow_run_url"]
            == f"{base}/dags{run_page.replace('/framesift_drift/', '/framesift_drift/runs/')}"
        )
    pending = list(db[alerts.OUTBOX].find())
    assert len(pending) == len(incidents) and {p["state"] for p in pending} == {"pending"}
    assert listener.bodies == []

    # ClearML: one task with a statistic vs threshold per source and the PCA plots
    import zipfile

    run_doc = db.runs.find_one({"_id": f"framesift_drift/{dr.run_id}"})
    with zipfile.ZipFile(run_doc["clearml"]["offline_zip"]) as z:
        events = [json.loads(x) for x in z.read("metrics.jsonl").splitlines() if x.strip()]
    events = [e for batch in events for e in (batch if isinstance(batch, list) else [batch])]
    plots = {e["metric"] for e in events if e["type"] == "plot"}
    assert f"embeddings PCA ({prefix}cam1-night/)" in plots
    assert any(e["metric"] == "embedding: mmd2" for e in events if e["type"] == "training_stats_scalar")

    # the drifted frames are selected (one selection per alarming window) and held for on-call:
    # nothing reaches the labeling platform before someone triaged (drift.labeling.mode: ack)
    drift_sel = {s["source"][len(prefix) :]: s for s in db.selections.find({"kind": "drift"})}
    assert set(drift_sel) == set(SHIFTED) and all(s["datapool_uri"] for s in drift_sel.values())
    assert all(s["labeling"]["state"] == "held" and s["labeling"]["incident_ids"] for s in drift_sel.values())
    assert db.labeling_queue.count_documents({"tags": "drift"}) == 0
    tasks_before = _label_studio_tasks(label_studio)
    out = _cli("drift", "report")
    assert (
        f"drifted frames waiting for an ack (framesift drift ack ID; --no-labeling drops them): {len(SHIFTED)}"
        in out
    )

    # on-call triage: the night footage is real change (label it), the blurred camera needs a
    # fix, not labels; the other shifts stay held
    night, blur = f"{prefix}cam1-night/", f"{prefix}cam1-blur/"
    night_inc = next(d["_id"] for d in incidents.values() if d["source"] == night)
    blur_inc = next(d["_id"] for d in incidents.values() if d["source"] == blur)
    assert "approved: the next framesift_drift run sends them to labeling" in _cli("drift", "ack", night_inc)
    assert "dropped (not sent to labeling)" in _cli("drift", "ack", blur_inc, "--no-labeling")

    # the webhook is back: the next run delivers each alert once, sends the approved frames
    # (one sequence, tagged drift), keeps the dropped ones out and duplicates nothing
    listener.status = 200
    dr2, states2 = _run(drift_dag)
    assert dr2.state == "success", states2
    assert len(listener.bodies) == len(incidents)
    assert sorted(b["framesift"]["incident_id"] for b in listener.bodies) == sorted(incidents)
    body = listener.bodies[0]
    assert "Runbook" in body["text"] and "threshold" in body["text"] and body["framesift"]["sample_frames"]
    assert "framesift drift ack" in body["text"] and "--no-labeling" in body["text"]
    # the alert links the report's page (HTML, served by the api-server), beside the JSON
    for body in listener.bodies:
        fields = body["framesift"]
        inc = db[alerts.ALERTS].find_one({"_id": fields["incident_id"]})
        page = inc["report_html_uri"]
        assert page == inc["report_uri"].removesuffix(".json") + ".html"
        assert (
            fields["report_url"] == f"{base}/framesift/s3/{page[5:]}"
            and f"Drift report: {fields['report_url']}" in body["text"]
        )
        assert all(u in body["text"] for u in fields["labeling_urls"])
    from airflow.models.serialized_dag import SerializedDagModel

    from framesift_airflow.links import DriftReportLink

    signals = SerializedDagModel.get_dag(drift_dag.dag_id).get_task("compute_signals")
    link = signals.get_extra_links(dr.get_task_instance("compute_signals"), DriftReportLink.name)
    assert link.startswith(f"{base}/framesift/s3/") and link.endswith(".html")
    assert {d["_id"] for d in db[alerts.ALERTS].find()} == set(incidents)
    assert db[alerts.OUTBOX].count_documents({"state": "sent"}) == len(incidents)
    (queued,) = db.labeling_queue.find({"tags": "drift"})
    assert (
        queued["state"] == "pushed"
        and queued["n_frames"] == 4
        and queued["Name dataset"].startswith("drift-")
    )
    assert night_inc in queued["incident_ids"] and queued["drift"]["source"] == night
    states = {s["source"]: s["labeling"]["state"] for s in db.selections.find({"kind": "drift"})}
    assert states.pop(night) == "pushed" and states.pop(blur) == "dismissed"
    assert set(states.values()) == {"held"}
    assert _label_studio_tasks(label_studio) == tasks_before + 1

    # the CLI shows the signals and the open incidents
    # the sequences of the approved frames are linked from the night incidents (later alerts
    # carry them); held and dropped frames have none
    for inc in db[alerts.ALERTS].find():
        urls = inc.get("labeling_urls") or []
        if inc["source"] == night:
            assert urls and all(u.startswith(f"{label_studio.url}/projects/") for u in urls), inc
        else:
            assert not urls, inc

    # the CLI shows the signals, the held frames and the open incidents, and writes the page
    out = _cli("drift", "report", "--html", str(tmp_path / "drift.html"))
    assert f"open incidents: {len(incidents)}" in out and f"source {prefix}cam1-blur/" in out
    assert "embedding" in out and "mmd2" in out
    assert (
        f"drifted frames waiting for an ack (framesift drift ack ID; --no-labeling drops them): {len(SHIFTED) - 2}"
        in out
    )
    # where the page is: the fresh report's file, and each open incident's run report
    assert f"HTML report: {tmp_path / 'drift.html'}" in out and "<table class='signals'>" in (
        tmp_path / "drift.html"
    ).read_text(encoding="utf-8")
    assert out.count("      report: s3://") == len(incidents) and "      labeling: http" in out


def _cli(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "framesift.cli", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _label_studio_tasks(info) -> int:
    import requests

    headers = {"Authorization": f"Token {info.token}"}
    projects = requests.get(f"{info.url}/api/projects", headers=headers, timeout=30).json()
    projects = projects.get("results", projects) if isinstance(projects, dict) else projects
    return sum(p.get("task_number", 0) for p in projects)
