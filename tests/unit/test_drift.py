"""Drift signals on generated arrays: each signal's statistic, thresholds and levels, the
false-alarm rate on unshifted windows, and the alert message.

Arrays stand in for inference output here because the statistics are the unit under test
(tests/dags/test_drift_dag.py runs generated videos through real inference)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from framesift.config.loading import parse_config
from framesift.drift.incidents import render_message
from framesift.drift.signals import (
    CRITICAL,
    INSUFFICIENT,
    NORMAL,
    FrameSet,
    class_signal,
    evaluate,
    js_distance,
    mmd2_permutation,
    psi,
)

CATS = [{"id": 0, "name": "car"}, {"id": 1, "name": "person"}, {"id": 2, "name": "bike"}]
DIM = 32
# what every frame of the domain shares (embeddings of one kind of scene are not isotropic)
BASE = np.random.default_rng(99).normal(0, 1.0, DIM)
CAMERAS = np.random.default_rng(98).normal(0, 0.25, (12, DIM))  # each camera's own look


def _boxes(rng, n_boxes, class_p, score_ab, committee_noise=0.0):
    out = []
    for _ in range(n_boxes):
        c = int(rng.choice(3, p=class_p))
        score = float(np.clip(rng.beta(*score_ab), 0.3, 0.999))
        probs = np.full(3, (1 - score) / 2)
        probs[c] = score
        out.append(
            {
                "category_id": c,
                "bbox": [1, 1, 5, 5],
                "score": round(score, 4),
                "probabilities": probs.tolist(),
            }
        )
    return out


def make_set(
    rng,
    cameras=range(5),
    frames=12,
    *,
    tag="v",
    emb_shift=0.0,
    outlier_frac=0.0,
    class_p=(0.5, 0.3, 0.2),
    score_ab=(8, 2),
    mean_boxes=2.0,
    committee_agree=True,
    direction=None,
):
    """One video per camera: its frames' embeddings scatter around the camera's own centre
    (frames of one scene are alike), boxes are drawn per frame, and a second model ("m2")
    agrees with the first or not. New footage of the same cameras is unshifted data."""
    ids, vids, emb, preds, other = [], [], [], [], []
    direction = direction if direction is not None else np.eye(DIM)[0]
    for v, cam in enumerate(cameras):
        centre = BASE + CAMERAS[cam]
        for f in range(frames):
            x = centre + rng.normal(0, 0.4, DIM) + emb_shift * direction
            if rng.random() < outlier_frac:
                x = x + rng.normal(0, 3.0, DIM)
            emb.append(x / np.linalg.norm(x))
            boxes = _boxes(rng, rng.poisson(mean_boxes), class_p, score_ab)
            preds.append(boxes)
            if committee_agree:
                other.append([dict(b) for b in boxes])
            else:
                other.append([{**b, "category_id": int(rng.integers(3))} for b in boxes])
            ids.append(f"{tag}{v}/f-{f:03d}-mp4.png")
            vids.append(f"{tag}{v}")
    return FrameSet(ids, vids, [f"videos/{v}.mp4" for v in vids], np.array(emb), preds, CATS, {"m2": other})


def cfg(**drift):
    base = {"window_frames": 60, "min_window_frames": 10, "committee": {"tasks": ["m2"]}}
    return parse_config({"drift": {**base, **drift}}).drift


def levels(result):
    return {s["name"]: s["level"] for s in result["statistics"]}


@pytest.fixture(scope="module")
def reference():
    return make_set(np.random.default_rng(1), cameras=range(5), frames=40, tag="ref")


def test_mmd_permutation_p_value_is_calibrated_and_detects_a_shift():
    rng = np.random.default_rng(0)
    ps = []
    for _ in range(30):
        x, y = rng.normal(size=(60, 4)), rng.normal(size=(40, 4))
        ps.append(mmd2_permutation(x, y, bandwidth=8.0, permutations=99, seed=int(rng.integers(1e6)))[1])
    # under the null the p-value is roughly uniform: few below 0.05, median near 0.5
    assert sum(p < 0.05 for p in ps) <= 4 and 0.25 < float(np.median(ps)) < 0.75
    mmd2, p = mmd2_permutation(rng.normal(size=(60, 4)), rng.normal(0.8, 1, size=(40, 4)), 8.0, 99)
    assert p <= 0.02 and mmd2 > 0.05


def test_psi_and_js_distance():
    a = np.array([50.0, 30, 20, 0])
    assert psi(a, a) == pytest.approx(0.0) and js_distance(a, a) == pytest.approx(0.0)
    assert js_distance(np.array([1.0, 0]), np.array([0.0, 1])) == pytest.approx(1.0)
    # PSI's textbook case: 10 % -> 20 % and 90 % -> 80 % is 0.1 * ln 2 + ... = 0.0811
    assert psi(np.array([100.0, 900]), np.array([200.0, 800]), eps=0) == pytest.approx(
        0.1 * np.log(2) + (-0.1) * np.log(80 / 90), rel=1e-6
    )


def test_unshifted_window_is_normal(reference):
    win = make_set(np.random.default_rng(2), tag="new")
    out = evaluate(reference, win, cfg())
    assert out["level"] == NORMAL, out["statistics"]
    assert set(out["families"]) == {"uncertainty", "embedding", "class_distribution", "outliers", "committee"}


@pytest.mark.parametrize(
    ("shift", "family", "stat"),
    [
        ({"score_ab": (2, 2)}, "uncertainty", "low_confidence_fraction_rise"),
        ({"score_ab": (2, 2)}, "uncertainty", "mean_uncertainty_rise"),
        ({"emb_shift": 2.0}, "embedding", "mmd2"),
        ({"class_p": (0.1, 0.2, 0.7)}, "class_distribution", "psi"),
        ({"class_p": (0.1, 0.2, 0.7)}, "class_distribution", "js_distance"),
        ({"mean_boxes": 0.3}, "class_distribution", "psi"),  # the model stops seeing things
        ({"outlier_frac": 0.4}, "outliers", "outlier_rate"),
        ({"committee_agree": False}, "committee", "disagreement_rise"),
    ],
)
def test_each_signal_detects_its_shift_in_one_window(reference, shift, family, stat):
    win = make_set(np.random.default_rng(3), tag="new", **shift)
    out = evaluate(reference, win, cfg())
    assert levels(out)[stat] in ("warning", "critical"), out["statistics"]
    assert out["families"][family] in ("warning", "critical")
    s = next(s for s in out["statistics"] if s["name"] == stat)
    assert s["value"] >= s["threshold"] and s["window_frames"] == 60 and s["reference_frames"] == 200


def test_false_alarm_rate_over_40_unshifted_windows(reference):
    """Every signal together, on 40 fresh unshifted windows (new videos from the same
    distribution as the reference): at most 5 % of the windows raise any alarm."""
    rng = np.random.default_rng(10)
    alarms = []
    for i in range(40):
        out = evaluate(reference, make_set(rng, tag=f"w{i}-"), cfg(seed=i))
        alarms.append([s["name"] for s in out["statistics"] if s["alarm"]])
    assert sum(bool(a) for a in alarms) <= 2, alarms  # <= 5 % of 40


def test_levels_critical_insufficient_and_per_signal_windows(reference):
    win = make_set(np.random.default_rng(4), frames=18, tag="new", emb_shift=3.0, mean_boxes=0.0)
    out = evaluate(reference, win, cfg(embedding={"window_frames": 30}))
    emb = next(s for s in out["statistics"] if s["name"] == "mmd2")
    assert emb["level"] == CRITICAL and emb["value"] >= 2 * emb["threshold"]
    assert emb["window_frames"] == 30  # the signal's own window: the last 30 frames
    # no boxes at all in the window: the box-based statistics cannot say anything
    assert levels(out)["low_confidence_fraction_rise"] == INSUFFICIENT
    # the drift score ranks the shifted frames; the most drifted are listed for on-call
    assert len(out["most_drifted"]) == 6 and set(out["frame_scores"]) == set(win.frame_ids)
    # no committee predictions: insufficient, not normal
    solo = FrameSet(win.frame_ids, win.video_ids, win.video_keys, win.embeddings, win.predictions, CATS)
    ref_solo = FrameSet(
        reference.frame_ids,
        reference.video_ids,
        reference.video_keys,
        reference.embeddings,
        reference.predictions,
        CATS,
    )
    assert evaluate(ref_solo, solo, cfg())["families"]["committee"] == INSUFFICIENT


def test_disabled_signal_is_not_computed(reference):
    win = make_set(np.random.default_rng(5), tag="new")
    out = evaluate(reference, win, cfg(committee={"enabled": False}, outliers={"enabled": False}))
    assert set(out["families"]) == {"uncertainty", "embedding", "class_distribution"}


def test_alert_message_names_signal_threshold_window_videos_frames_plots_runbook():
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    incident = {
        "_id": "embedding:all#1",
        "family": "embedding",
        "source": "all",
        "level": "critical",
        "first_seen": now,
        "last_seen": now,
        "values": [
            {
                "name": "mmd2",
                "value": 0.31,
                "threshold": 0.05,
                "level": "critical",
                "p_value": 0.005,
                "window_frames": 500,
                "reference_frames": 1000,
                "window_value": None,
            }
        ],
        "videos": ["videos/cam1/a.mp4", "videos/cam1/b.mp4"],
        "sample_frames": ["s3://b/out/videos/x/frames/a-001-mp4.png"],
        "clearml_url": "file:///var/clearml/offline-1.zip",
        "report_uri": "s3://b/out/drift/reports/r.json",
        "report_html_uri": "s3://b/out/drift/reports/r.html",
        "airflow_run_url": "http://af:8080/dags/framesift_drift/runs/scheduled__1",
        "labeling_backend": "label_studio",
        "labeling_urls": ["http://ls:8081/projects/3/data?task=17"],
    }
    signed = lambda u: "https://signed/" + u[5:]  # noqa: E731
    msg = render_message(
        incident, {"event": "opened", "level": "critical"}, frame_url=signed, report_url=signed
    )
    text = msg["text"]
    assert "embedding" in msg["subject"] and "CRITICAL" in msg["subject"]
    assert "mmd2: 0.31 vs threshold 0.05" in text and "window 500 frames vs reference 1000 frames" in text
    assert "videos/cam1/a.mp4" in text and "https://signed/b/out/videos/x/frames/a-001-mp4.png" in text
    assert "ClearML drift plots: file:///var/clearml/offline-1.zip" in text and "Runbook" in text
    assert "Airflow run: http://af:8080/dags/framesift_drift/runs/scheduled__1" in text
    assert msg["airflow_run_url"] == "http://af:8080/dags/framesift_drift/runs/scheduled__1"
    # the report as a page first, the JSON beside it; the drifted frames' labeling sequences
    assert "Drift report: https://signed/b/out/drift/reports/r.html" in text
    assert "Drift report (JSON): https://signed/b/out/drift/reports/r.json" in text
    assert msg["report_url"] == "https://signed/b/out/drift/reports/r.html"
    assert "(label_studio):\n  http://ls:8081/projects/3/data?task=17" in text
    assert msg["labeling_urls"] == ["http://ls:8081/projects/3/data?task=17"]


def test_report_page_has_the_signal_table_plots_frames_and_suspensions(reference):
    """The page on-call opens (issue #17): per source its level, each statistic's value vs
    threshold and verdict, a figure of plots, the most drifted frames; inline images."""
    import base64
    import io
    import re

    import cv2
    from PIL import Image

    from framesift.drift.report import render_html

    shifted = evaluate(reference, make_set(np.random.default_rng(3), tag="new", emb_shift=2.0), cfg())
    normal = evaluate(reference, make_set(np.random.default_rng(4), tag="cam2"), cfg())
    shifted["source"], normal["source"] = "videos/cam1/", "videos/cam2/"
    report = {"run_id": "r1", "reference": {"frames": reference.n, "how": "x", "videos": []}}
    report["windows"] = [shifted, normal]
    jpeg = cv2.imencode(".jpg", np.zeros((40, 60, 3), np.uint8))[1].tobytes()
    page = render_html(
        report,
        {"videos/cam1/": [("videos/cam1/ünïcode.mp4 @ 4.50 s", jpeg)]},
        critical_factor=2.0,
        links={"Airflow run": "http://af/run", "unknown": None},
    )
    assert (
        f"Source <code>videos/cam1/</code>: <span class='{shifted['level']}'>{shifted['level'].upper()}<"
        in page
    )
    assert shifted["level"] in ("warning", "critical") and "<span class='normal'>NORMAL<" in page
    mmd = next(s for s in shifted["statistics"] if s["name"] == "mmd2")
    row = re.search(r"<tr><td class='l'>embedding</td><td class='l'>mmd2</td>(.*?)</tr>", page).group(1)
    assert f"<td>{mmd['value']:.4g}</td><td>{mmd['threshold']:g}</td>" in row and mmd["level"] in row
    assert page.count("<table class='signals'>") == 2 and "videos/cam1/ünïcode.mp4 @ 4.50 s" in page
    assert "<a href='http://af/run'>Airflow run</a>" in page and "unknown" not in page
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert len(srcs) == 3  # a figure per source and one frame
    for src in srcs:
        head, _, payload = src.partition(",")
        assert head in ("data:image/png;base64", "data:image/jpeg;base64")
        Image.open(io.BytesIO(base64.b64decode(payload, validate=True))).verify()

    suspended = render_html(
        {"suspended": "the reference was inferred by m1", "windows": []}, {}, critical_factor=2
    )
    assert "Comparison suspended</b>: the reference was inferred by m1" in suspended


def test_drift_sources_are_folders_by_default():
    """Footage of another camera is not drift (issue #17, point 8): by default each video
    folder is a source with its own window and reference, in the schema and the shipped YAML."""
    from framesift.config.loading import DEFAULT_CONFIG_PATH, load_config
    from framesift.config.schema import DriftConfig
    from framesift.drift.monitor import source_of

    assert DriftConfig().group_by == "folder" and load_config(DEFAULT_CONFIG_PATH).drift.group_by == "folder"
    assert source_of("videos/cam1/a.mp4", DriftConfig()) == "videos/cam1/"
    assert source_of("videos/cam2/b.mp4", DriftConfig()) == "videos/cam2/"
    assert source_of("videos/cam2/b.mp4", DriftConfig(group_by="all")) == "all"


def test_class_shift_note_names_the_bins_that_moved_most_and_no_empty_ones():
    """The PSI note is read by on-call (alert, page, CLI): the 80 COCO bins of a detector
    would bury the two that moved, so empty bins are left out, the largest changes first."""
    rng = np.random.default_rng(5)
    ref = make_set(rng, frames=20, class_p=(1.0, 0.0, 0.0), tag="r")
    win = make_set(rng, frames=20, class_p=(0.0, 0.0, 1.0), tag="w")
    (psi_stat, _) = class_signal(ref, win, cfg())
    note = psi_stat.note
    assert note.startswith("bins ") and "person" not in note  # 0 -> 0 on both sides
    moved = [part.split(":")[0] for part in note.removeprefix("bins ").split(", ")]
    assert set(moved[:2]) == {"car", "bike"}
