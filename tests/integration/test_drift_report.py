"""The drift report as a page for on-call (issue #17), from a real drift run: generated clips
extracted and inferred (the bundled detector) into the embedded stack, a night-shifted
camera, the signals, the page written beside the JSON in S3, the incident, the drifted
frames pushed to a real Label Studio, and the alert that links the page and the sequences.
"""

from __future__ import annotations

import base64
import io
import re

import pytest
import requests

from framesift.drift import incidents, monitor, response
from framesift.drift.report import publish
from framesift.inference.models import inferred_model_version
from framesift.io.s3 import http_url, parse_s3_uri, put_json, s3_uri
from framesift.local.synth import make_video
from framesift.selection.report import HTML_CONTENT_TYPE
from tests.driftshifts import drift_config, ingest_clips, shifted_copy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def drift_run(stack, s3, mongo, tmp_path_factory):
    """A reference clip of cam1, later footage of cam1 and a night-shifted copy, inferred."""
    from framesift.inference.detector import Detector

    tmp = tmp_path_factory.mktemp("driftreport")
    drift = {
        "window_frames": 25,
        "min_window_frames": 20,
        "reference_frames": 33,  # the 13 s reference clip
        "group_by": "folder",
        "alerts": {"sample_frames": 3},
        "labeling": {"n_samples": 3, "mode": "auto"},  # sent at once: the alert links the sequences
    }
    cfg, _ = drift_config(stack, tmp, "r", drift)
    db = mongo[cfg.mongo.database]
    clip = make_video(tmp / "cam1.mp4", seconds=23, fps=5, seed=1)
    detector = Detector.from_config(cfg, s3)
    ingest_clips(
        s3,
        db,
        cfg,
        [(shifted_copy(clip, tmp / "early.mp4", end_s=13), "cam1/early.mp4")],
        "setup-0",
        detector,
    )
    later = [
        (shifted_copy(clip, tmp / "later.mp4", start_s=13), "cam1/later.mp4"),
        (shifted_copy(clip, tmp / "night.mp4", "night", start_s=13), "cam1-night/später.mp4"),
    ]
    ingest_clips(s3, db, cfg, later, "setup-1", detector)
    report = monitor.compute(s3, db, cfg)
    report["run_id"] = "manual__drift-report"
    json_uri = s3_uri(
        cfg.storage.out_bucket, f"{cfg.storage.output_prefix}drift/reports/manual__drift-report.json"
    )
    put_json(s3, *parse_s3_uri(json_uri), report)
    return {"cfg": cfg, "db": db, "report": report, "json_uri": json_uri}


def test_html_report_beside_the_json_and_the_alert_links_it_and_the_label_studio_sequences(
    drift_run, s3, label_studio
):
    from PIL import Image

    from framesift.labeling.factory import get_backend

    cfg, db, report, json_uri = (drift_run[k] for k in ("cfg", "db", "report", "json_uri"))
    prefix = cfg.storage.videos_prefix
    night = next(w for w in report["windows"] if w["source"] == f"{prefix}cam1-night/")
    assert night["level"] in ("warning", "critical"), monitor.format_report(report)

    page_uri = publish(s3, db, cfg, report, json_uri, links={"Airflow run": "http://af.example/run"})
    assert page_uri == json_uri.removesuffix(".json") + ".html"  # same prefix, next to the JSON
    obj = s3.get_object(Bucket=cfg.storage.out_bucket, Key=parse_s3_uri(page_uri)[1])
    assert obj["ContentType"] == HTML_CONTENT_TYPE == "text/html; charset=utf-8"
    page = obj["Body"].read().decode("utf-8")

    # per source its level and the table of every statistic: value, threshold, verdict
    for w in report["windows"]:
        assert f"Source <code>{w['source']}</code>: <span class='{w['level']}'>{w['level'].upper()}<" in page
    section = page.split(f"Source <code>{prefix}cam1-night/</code>")[1].split("Source <code>")[0]
    for s in night["statistics"]:
        row = re.search(rf"<td class='l'>{s['family']}</td><td class='l'>{s['name']}</td>(.*?)</tr>", section)
        assert row, s["name"]
        value = "n/a" if s["value"] is None else f"{s['value']:.4g}"
        assert row.group(1).startswith(f"<td>{value}</td><td>{s['threshold']:g}</td>") and s[
            "level"
        ] in row.group(1)
    # the most drifted frames the alert links, by video key @ time (a non-ASCII key survives)
    assert f"{prefix}cam1-night/später.mp4 @ " in section and section.count("<figcaption>#") == 3
    images = re.findall(r"<img src='([^']+)'", page)
    assert len(images) == len(report["windows"]) * 4  # a figure and 3 frames per source
    for src in images:
        head, _, payload = src.partition(",")
        assert head in ("data:image/png;base64", "data:image/jpeg;base64"), head[:40]
        with Image.open(io.BytesIO(base64.b64decode(payload, validate=True))) as im:
            assert im.format == ("PNG" if "png" in head else "JPEG")
    # a presigned URL of the page alone shows it (its images are inside)
    got = requests.get(http_url(s3, page_uri), timeout=30)
    assert got.status_code == 200 and got.headers["content-type"] == HTML_CONTENT_TYPE and got.text == page

    # the incident keeps both reports; the drifted frames go to Label Studio and it links them
    opened = incidents.update_incidents(
        db, report, cfg.drift, run_id="manual__drift-report", report_uri=json_uri, report_html_uri=page_uri
    )["opened"]
    assert opened
    pushed = response.respond(
        s3,
        db,
        cfg,
        report,
        lambda: get_backend(cfg, label_studio.credentials(), s3),
        run_id="manual__drift-report",
        owner="test",
    )
    (mine,) = [p for p in pushed if p["source"] == night["source"]]
    queued = list(db.labeling_queue.find({"_id": {"$in": mine["queue_ids"]}}))
    for q in queued:  # the model as ingest pushes show it: name@weights hash
        doc = db.videos.find_one({"_id": q["video_id"]})
        assert q["model_version"] == inferred_model_version(doc["inference"]) and "@" in q["model_version"]
    inc = db[incidents.ALERTS].find_one({"source": night["source"], "family": "embedding"})
    assert inc["report_html_uri"] == page_uri and inc["labeling_backend"] == "label_studio"
    assert sorted(inc["labeling_urls"]) == sorted(q["url"] for q in queued)
    assert all(u.startswith(f"{label_studio.url}/projects/") for u in inc["labeling_urls"])

    served = lambda u: "http://af.example/framesift/s3/" + u[5:]  # noqa: E731 - like the DAG's links
    message = incidents.render_message(inc, {"event": "opened"}, frame_url=served, report_url=served)
    assert f"Drift report: {served(page_uri)}" in message["text"] and message["report_url"] == served(
        page_uri
    )
    assert f"Drift report (JSON): {served(json_uri)}" in message["text"]
    assert all(f"  {u}" in message["text"] for u in inc["labeling_urls"])
    assert message["labeling_urls"] == inc["labeling_urls"]
    task = requests.get(
        inc["labeling_urls"][0].replace("/projects/", "/api/projects/").split("/data?task=")[0],
        headers={"Authorization": f"Token {label_studio.token}"},
        timeout=30,
    )
    assert task.status_code == 200  # the project the link opens exists
