"""framesift_labels and framesift_retrain run by Airflow (dag.test()) on the embedded stack.

The labels DAG talks to a real Label Studio: frames are pushed as an image sequence and a
scripted annotator labels it through Label Studio's REST API with the true boxes. The
retrain DAG is run three times, once per gate outcome (hold, stop, continue); training is
tiny (yolov8n.yaml, imgsz 64, 1 epoch).
"""

from __future__ import annotations

import uuid

import cv2
import numpy as np
import pytest
import yaml

from framesift.config.loading import load_config
from framesift.io import layout
from framesift.io.s3 import put_bytes
from framesift.labeling import queue as lq
from framesift.labeling.base import build_request
from framesift.labeling.factory import get_backend
from framesift.local.stack import project_root
from framesift.local.synth import Painter, ground_truth
from framesift.loop.simulate import ScriptedAnnotator

pytestmark = pytest.mark.slow

VID = "vidloopdag01"
CLASSES = ["box", "disc", "triangle"]


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(project_root() / "dags"))


def run(dag):
    dr = dag.test()
    return dr, {ti.task_id: ti.state for ti in dr.get_task_instances()}


def configure(isolated, **sections):
    """Rewrite the isolated config file (FRAMESIFT_CONFIG) with more sections."""
    import os

    data = isolated.model_dump(exclude_defaults=True)
    data.update(sections)
    path = os.environ["FRAMESIFT_CONFIG"]
    with open(path, "w") as fh:
        yaml.safe_dump(data, fh)
    return load_config(path)


def put_frames(s3, cfg, n, seed=3):
    painter = Painter(320, 240, 5, np.random.default_rng(seed))
    names = []
    for i in range(n):
        ok, png = cv2.imencode(".png", painter.paint(float(i)))
        name = f"clip-{i:02d}-mp4.png"
        put_bytes(s3, cfg.storage.out_bucket, f"{layout.frames_prefix(cfg, VID)}/{name}", png.tobytes())
        names.append(name)
    return names


def truth(vid, name):
    return ground_truth([float(int(name.split("-")[1]))], seed=3)[0]


def push_and_label(s3, db, cfg, label_studio, names):
    backend = get_backend(cfg, label_studio.credentials(), s3)
    request = build_request(
        cfg, selection_id="sel-dag", video_id=VID, video_key="videos/clip.mp4", frame_names=names
    )
    rec = lq.push_exactly_once(db, backend, request)
    ScriptedAnnotator(backend, truth, classes=CLASSES).label_task(rec["backend_ids"][0])
    return rec


def test_labels_dag_exports_a_version_and_emits_the_asset_once(bag, isolated, s3, db, label_studio):
    cfg = configure(
        isolated,
        important_classes=CLASSES,
        labeling={"backend": "label_studio", "project_name": f"dag-{uuid.uuid4().hex[:8]}"},
    )
    names = put_frames(s3, cfg, 5)
    push_and_label(s3, db, cfg, label_studio, names)
    dag = bag.get_dag("framesift_labels")

    dr, states = run(dag)
    assert dr.state == "success", states
    assert states == {k: "success" for k in ("sync_labels", "export_trainset", "review_labels", "publish")}
    rec = db[lq.COLLECTION].find_one({})
    assert rec["Labeling status"] == "Done" and rec["export"]["complete"]
    version = db.trainsets.find_one({})
    assert version["_id"] == "v0001" and version["n_frames"] == 5 and version["classes"] == CLASSES
    docs = {d["frame_name"]: d for d in db.labels.find({})}
    for name in names:  # the annotator's boxes came back through Label Studio, to the pixel
        got = [(b["class_name"], [round(v) for v in b["bbox"]]) for b in docs[name]["boxes"]]
        assert got == [(c, list(b)) for c, b in truth(VID, name)]
        assert docs[name]["annotator"] == label_studio.username
    ti = next(t for t in dr.get_task_instances() if t.task_id == "publish")
    assert ti.xcom_pull(task_ids="publish")["version"] == "v0001"

    # nothing new since: no version, review and publish skipped (so no asset event, no retrain)
    dr2, states2 = run(dag)
    assert states2["export_trainset"] == "success" and states2["publish"] == "skipped", states2
    assert db.trainsets.count_documents({}) == 1


def labeled_trainset(s3, db, cfg, n=8):
    """A training-set version from labels of generated frames (the export path, a stand-in platform)."""
    from framesift.labeling.base import DONE, Box, FrameAnnotation
    from framesift.loop import trainset

    names = put_frames(s3, cfg, n)
    db[lq.COLLECTION].insert_one(
        {
            "_id": "seq",
            "idempotency_key": "seq",
            "state": lq.PUSHED,
            "backend": "stand-in",
            "backend_ids": ["seq"],
            lq.LABELING_STATUS: DONE,
            "video_id": VID,
            "frames": names,
            "frames_prefix": f"s3://{cfg.storage.out_bucket}/{layout.frames_prefix(cfg, VID)}",
        }
    )

    class StandIn:  # Label Studio's part is covered above; here only the retrain DAG matters
        name = "stand-in"

        def export_annotations(self, ids):
            return [
                FrameAnnotation(n, [Box(c, b) for c, b in truth(VID, n)], "a", "seq", "1", "t") for n in names
            ]

    return trainset.export(s3, db, cfg, StandIn())


def test_retrain_gate_hold_stop_and_continue(bag, isolated, s3, db, tmp_path):
    from framesift.loop import trainset

    dag = bag.get_dag("framesift_retrain")
    tiny = {"base_model": "yolov8n.yaml", "epochs": 1, "imgsz": 64, "batch": 4, "device": "cpu"}
    after_gate = ("train", "evaluate", "promote", "record")

    # hold: labels are there but no frozen test set
    cfg = configure(isolated, important_classes=CLASSES, training=tiny, evaluation={"min_new_labels": 1})
    labeled_trainset(s3, db, cfg)
    dr, states = run(dag)
    assert dr.state == "success" and states["decide"] == "success", states
    assert all(states[t] == "skipped" for t in after_gate), states
    hold = db.decisions.find_one({})
    assert hold["outcome"] == "hold" and hold["reason"].startswith("test_set")

    # stop: the labeling budget is spent
    painter = Painter(320, 240, 5, np.random.default_rng(9))
    items = []
    for i in range(4):
        ok, png = cv2.imencode(".png", painter.paint(i + 0.5))
        boxes = [{"class_name": c, "bbox": list(b)} for c, b in painter.boxes(i + 0.5)]
        items.append(
            {"name": f"t{i}.png", "image": png.tobytes(), "width": 320, "height": 240, "boxes": boxes}
        )
    test_uri = trainset.write_test_set(s3, cfg, items, CLASSES)
    evaluation = {"min_new_labels": 1, "test_set": test_uri, "budget": {"max_labels": 8}}
    cfg = configure(isolated, important_classes=CLASSES, training=tiny, evaluation=evaluation)
    dr, states = run(dag)
    assert all(states[t] == "skipped" for t in after_gate), states
    stop = db.decisions.find_one({"outcome": "stop"})
    assert stop["reason"].startswith("budget_labels") and stop["labels_total"] == 8

    # continue: budget raised -> train, evaluate, promote (first champion), ClearML task
    evaluation["budget"] = {"max_labels": 1000}
    cfg = configure(isolated, important_classes=CLASSES, training=tiny, evaluation=evaluation)
    dr, states = run(dag)
    assert dr.state == "success" and all(states[t] == "success" for t in ("decide", *after_gate)), states
    model = db.models.find_one({})
    assert model["champion"] and model["status"] == "trained" and model["trainset_version"] == "v0001"
    assert model["metrics"] and model["promotion"]["promoted"]
    kinds = [d["kind"] for d in db.decisions.find({}).sort("at", 1)]
    assert kinds == ["gate", "gate", "gate", "after_evaluation"]
    record = next(t for t in dr.get_task_instances() if t.task_id == "record")
    assert record.xcom_pull(task_ids="record")["url"].startswith("file://")
    # and the next ingest's inference would load the champion
    from framesift.io.model_registry import serving_config

    assert serving_config(db, cfg).inference.model_uri == model["uri"]
