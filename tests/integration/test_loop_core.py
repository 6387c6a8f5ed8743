"""Labels back -> versioned training sets -> training, evaluation, promotion, the gate.

Against the embedded stack (moto S3, SecantusDB) and, for the round trip, a real Label
Studio. Training is tiny (yolov8n.yaml from random weights, imgsz 64, 1 epoch), so the
metrics are near zero: the tests check the mechanics, not the model.

``PlatformStandIn`` stands in for a labeling platform where Label Studio cannot: Label
Studio validates labels against the project and always returns whole tasks, so it cannot
produce empty or unknown class names, frames outside the sequence, or partial results.
"""

from __future__ import annotations

import json

import cv2
import pytest
import torch
import yaml

from framesift.config.loading import parse_config
from framesift.config.schema import ReviewConfig
from framesift.io import layout, model_registry
from framesift.io.machine import usable_cpus
from framesift.io.s3 import get_bytes, list_objects, parse_s3_uri, put_bytes
from framesift.labeling import queue as lq
from framesift.labeling.base import DONE, Box, FrameAnnotation
from framesift.local.synth import Painter, ground_truth
from framesift.loop import gate as evaluation
from framesift.loop import training, trainset
from framesift.loop.review import review_frames

pytestmark = pytest.mark.slow

VID = "vidsim0001"
N = 12
CLASSES = ["box", "disc", "triangle"]


def frame_name(i: int) -> str:
    return f"clip-{i:02d}-mp4.png"


def truth(i: int):
    return ground_truth([float(i)], seed=3)[0]


@pytest.fixture
def cfg(isolated, tmp_path):
    data = isolated.model_dump()
    data["training"] = {
        "base_model": "yolov8n.yaml",
        "epochs": 1,
        "imgsz": 64,
        "batch": 4,
        "device": "cpu",
        "val_fraction": 0.25,
    }
    data["evaluation"] = {"min_new_labels": 1, "targets": {"map50_95": 0.9}}
    return parse_config(data)


@pytest.fixture
def frames(cfg, s3):
    """N frames of a generated clip in S3, with Lightly names, like an extraction writes them."""
    import numpy as np

    painter = Painter(320, 240, 5, np.random.default_rng(3))
    prefix = layout.frames_prefix(cfg, VID)
    for i in range(N):
        ok, png = cv2.imencode(".png", painter.paint(float(i)))
        put_bytes(s3, cfg.storage.out_bucket, f"{prefix}/{frame_name(i)}", png.tobytes())
    return prefix


def queue_record(db, cfg, prefix, names, key="seq-1"):
    db[lq.COLLECTION].insert_one(
        {
            "_id": key,
            "idempotency_key": key,
            "state": lq.PUSHED,
            "backend": "stand-in",
            "backend_ids": [key],
            lq.LABELING_STATUS: DONE,
            lq.REVIEWING_STATUS: "In queue",
            "video_id": VID,
            "video_key": "videos/clip.mp4",
            "frames": names,
            "frames_prefix": f"s3://{cfg.storage.out_bucket}/{prefix}",
        }
    )


class PlatformStandIn:
    name = "stand-in"
    tracks_review = False

    def __init__(self, answers):
        self.answers = answers  # sequence id -> list[FrameAnnotation]

    def export_annotations(self, ids):
        return [a for i in ids for a in self.answers.get(i, [])]


def truthful(names, annotation_id="1", updated="2026-01-01T00:00:00"):
    return [
        FrameAnnotation(
            n,
            [Box(c, b) for c, b in truth(int(n.split("-")[1]))],
            "ann@example.com",
            "seq-1",
            annotation_id,
            updated,
        )
        for n in names
    ]


def keys_under(s3, cfg, prefix):
    return sorted(o.key for o in list_objects(s3, cfg.storage.out_bucket, prefix))


# ----------------------------------------------------------------- export


def test_export_writes_a_yolo_version_records_labels_and_ignores_duplicate_exports(cfg, s3, db, frames):
    names = [frame_name(i) for i in range(N)]
    queue_record(db, cfg, frames, names)
    platform = PlatformStandIn({"seq-1": truthful(names)})
    out = trainset.export(s3, db, cfg, platform, run_id="r1")
    assert out["version"] == "v0001" and out["n_new"] == N
    assert out["labels"]["new"] == N and out["labels"]["sequences"] == 1
    doc = db.labels.find_one({"_id": f"{VID}/{frame_name(2)}"})
    assert doc["annotator"] == "ann@example.com" and (doc["width"], doc["height"]) == (320, 240)
    assert [(b["class_name"], b["bbox"]) for b in doc["boxes"]] == [
        (c, [float(v) for v in b]) for c, b in truth(2)
    ]

    version = db.trainsets.find_one({"_id": "v0001"})
    assert version["state"] == "complete" and version["n_frames"] == N and version["classes"]
    bucket, key = parse_s3_uri(version["uri"])
    data = yaml.safe_load(get_bytes(s3, bucket, key))
    names_map = data["names"]
    prefix = key.rsplit("/", 1)[0]
    keys = keys_under(s3, cfg, prefix)
    assert sum(k.endswith(".png") for k in keys) == N and sum(k.endswith(".txt") for k in keys) == N
    # the YOLO line of one box, by hand: class id, centre and size over the image size
    cls, (x, y, w, h) = truth(2)[0]
    label_key = next(k for k in keys if k.endswith(f"{VID}-clip-02-mp4.txt"))
    first = get_bytes(s3, bucket, label_key).decode().splitlines()[0].split()
    cid = [k for k, v in names_map.items() if v == cls][0]
    assert int(first[0]) == cid
    assert [float(v) for v in first[1:]] == pytest.approx(
        [(x + w / 2) / 320, (y + h / 2) / 240, w / 320, h / 240], abs=1e-5
    )

    # the sequence is exported: a second sync asks nothing; the same export again is a duplicate
    assert trainset.export(s3, db, cfg, platform)["labels"].get("sequences", 0) == 0
    db[lq.COLLECTION].update_one({"_id": "seq-1"}, {"$unset": {"export": 1}})
    again = trainset.export(s3, db, cfg, platform)
    assert again["version"] is None and again["labels"]["duplicate"] == N
    assert db.trainsets.count_documents({}) == 1


def test_bad_annotations_are_clipped_or_rejected_with_records_and_partial_results_retry(cfg, s3, db, frames):
    cfg = parse_config({**cfg.model_dump(), "important_classes": CLASSES})
    names = [frame_name(i) for i in range(4)]
    queue_record(db, cfg, frames, names)
    bad = FrameAnnotation(
        names[0],
        [
            Box("box", (300, 200, 40, 60)),  # partly outside 320x240: clipped to 20x40
            Box("disc", (400, 10, 20, 20)),  # wholly outside: rejected
            Box("", (10, 10, 20, 20)),  # empty class
            Box("cat", (10, 10, 20, 20)),  # not an important class
        ],
        "ann",
        "seq-1",
        "1",
        "t1",
    )
    stray = FrameAnnotation("elsewhere-00-mp4.png", [], "ann", "seq-1", "1", "t1")  # not in the sequence
    # the platform returns 2 of the 4 frames (and one it should not)
    platform = PlatformStandIn({"seq-1": [bad, truthful(names[1:2])[0], stray]})
    out = trainset.export(s3, db, cfg, platform)
    issues = out["labels"]["issues"]
    assert issues == {
        "clipped": 1,
        "outside_image": 1,
        "empty_class": 1,
        "unknown_class": 1,
        "unknown_frame": 1,
        "partial": 1,
    }
    assert out["labels"]["rejected_boxes"] == 3 and out["labels"]["clipped_boxes"] == 1
    doc = db.labels.find_one({"_id": f"{VID}/{names[0]}"})
    assert doc["boxes"] == [{"class_name": "box", "bbox": [300.0, 200.0, 20.0, 40.0]}]
    assert {i["kind"] for i in doc["issues"]} == {"clipped", "outside_image", "empty_class", "unknown_class"}
    rec = db[lq.COLLECTION].find_one({"_id": "seq-1"})
    assert rec["export"]["complete"] is False and rec["export"]["missing"] == names[2:]
    v1 = db.trainsets.find_one({"_id": "v0001"})
    assert v1["n_frames"] == 2 and v1["classes"] == CLASSES
    v1_keys = keys_under(s3, cfg, parse_s3_uri(v1["prefix"])[1])
    v1_label = get_bytes(s3, *parse_s3_uri(v1["prefix"][: v1["prefix"].rfind("/")] + "/v0001/manifest.json"))

    # next sync: the platform has the rest; a new version, the old one untouched
    platform.answers["seq-1"] = [bad, *truthful(names[1:])]
    out2 = trainset.export(s3, db, cfg, platform)
    assert out2["version"] == "v0002" and out2["labels"]["new"] == 2 and out2["labels"]["duplicate"] == 2
    assert db[lq.COLLECTION].find_one({"_id": "seq-1"})["export"]["complete"] is True
    assert keys_under(s3, cfg, parse_s3_uri(v1["prefix"])[1]) == v1_keys
    assert get_bytes(s3, *parse_s3_uri(v1["prefix"] + "/manifest.json")) == v1_label
    assert json.loads(v1_label)["n_frames"] == 2
    assert db.trainsets.find_one({"_id": "v0002"})["n_frames"] == 4


# ----------------------------------------------------------------- training, registry, gate


def make_test_set(s3, cfg, seed=7, n=6):
    import numpy as np

    painter = Painter(320, 240, 5, np.random.default_rng(seed))
    items = []
    for i in range(n):
        t = 0.5 + i
        ok, png = cv2.imencode(".png", painter.paint(t))
        boxes = [{"class_name": c, "bbox": list(b)} for c, b in painter.boxes(t)]
        items.append(
            {"name": f"test-{i:02d}.png", "image": png.tobytes(), "width": 320, "height": 240, "boxes": boxes}
        )
    return trainset.write_test_set(s3, cfg, items, CLASSES)


def test_train_evaluate_promote_serve_and_failures_keep_the_champion(cfg, s3, db, frames, tmp_path):
    cfg = parse_config({**cfg.model_dump(), "important_classes": CLASSES})
    names = [frame_name(i) for i in range(N)]
    queue_record(db, cfg, frames, names)
    trainset.export(s3, db, cfg, PlatformStandIn({"seq-1": truthful(names)}))
    test_uri = make_test_set(s3, cfg)
    assert make_test_set(s3, cfg) == test_uri  # the same content freezes to the same place
    cfg = parse_config(
        {**cfg.model_dump(), "evaluation": {**cfg.evaluation.model_dump(), "test_set": test_uri}}
    )
    assert model_registry.serving_config(db, cfg) is cfg  # no champion yet: the configured model

    # the gate before any model: enough new labels, nothing measured yet -> continue
    first = evaluation.gate(s3, db, cfg, run_id="g1")
    assert first["outcome"] == "continue" and db.decisions.count_documents({}) == 1
    assert first["test_set_version"].startswith("t") and first["trainset_version"] == "v0001"

    m1 = training.train_model(s3, db, cfg, run_id="r1", work_dir=tmp_path)
    assert m1["status"] == "trained" and m1["trainset_version"] == "v0001" and m1["parent_model"] is None
    assert m1["uri"].endswith(f"/models/{m1['_id']}/best.pt") and m1["config"]["epochs"] == 1
    ev = training.evaluate_model(s3, db, cfg, m1["_id"], work_dir=tmp_path)
    assert set(ev["metrics"]) == {"map50_95", "map50", "precision", "recall", "accuracy"}
    assert ev["train_metrics"] is not None and ev["test_set_version"] == first["test_set_version"]
    p1 = training.promote(s3, db, cfg, m1["_id"], work_dir=tmp_path)
    assert p1["promoted"] and p1["reason"].startswith("first model")
    assert model_registry.champion(db)["_id"] == m1["_id"]
    assert model_registry.serving_config(db, cfg).inference.model_uri == m1["uri"]  # the next ingest uses it

    # a challenger that must beat the champion by a whole mAP point more than possible: not promoted
    strict = parse_config(
        {
            **cfg.model_dump(),
            "training": {**cfg.training.model_dump(), "promotion_margin": 1.0, "base_model": "champion"},
        }
    )
    threads = []  # ultralytics sets torch to cpu_count - 1 threads on the CPU: framesift gives them back
    m2 = training.train_model(
        s3,
        db,
        strict,
        run_id="r2",
        work_dir=tmp_path,
        callbacks={"on_train_epoch_start": lambda trainer: threads.append(torch.get_num_threads())},
    )
    assert threads == [usable_cpus()]
    assert m2["parent_model"] == m1["_id"]  # fine-tuned from the champion
    training.evaluate_model(s3, db, strict, m2["_id"], work_dir=tmp_path)
    p2 = training.promote(s3, db, strict, m2["_id"], work_dir=tmp_path)
    assert not p2["promoted"] and p2["champion"] == m1["_id"] and "margin 1.0" in p2["reason"]
    assert model_registry.champion(db)["_id"] == m1["_id"]
    assert [e["champion"] for e in model_registry.history(db)] == [m1["_id"], m1["_id"]]

    # training that fails mid-way (after its first epoch): recorded, champion unchanged
    def boom(trainer):
        raise RuntimeError("worker lost")

    with pytest.raises(training.TrainingFailed, match="worker lost"):
        training.train_model(
            s3, db, cfg, run_id="r3", work_dir=tmp_path, callbacks={"on_train_epoch_end": boom}
        )
    failed = db.models.find_one({"status": "failed"})
    assert "worker lost" in failed["error"] and not failed.get("uri")
    assert model_registry.champion(db)["_id"] == m1["_id"]

    # the gate now: no new labels since the champion's training set -> hold
    held = evaluation.gate(s3, db, cfg, run_id="g2")
    assert held["outcome"] == "hold" and held["reason"].startswith("min_new_labels")
    assert held["champion"] == m1["_id"] and len(held["evaluations_used"]) == 2

    # someone edits the frozen test set: evaluation refuses, the gate holds
    bucket, key = parse_s3_uri(test_uri)
    label_key = key.rsplit("/", 1)[0] + "/labels/test/test-00.txt"
    put_bytes(s3, bucket, label_key, b"0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(trainset.BadTestSet, match="changed since it was frozen"):
        training.evaluate_model(s3, db, cfg, m1["_id"], work_dir=tmp_path)
    changed = evaluation.gate(s3, db, cfg)
    assert changed["outcome"] == "hold" and changed["reason"].startswith("test_set")
    missing = parse_config(
        {**cfg.model_dump(), "evaluation": {**cfg.evaluation.model_dump(), "test_set": None}}
    )
    assert evaluation.gate(s3, db, missing)["outcome"] == "hold"


def test_review_queue_gets_frames_over_the_threshold(mongo, stack):
    db = mongo["t_review_unit"]
    db.review_queue.drop()
    frames = [
        {
            "_id": "v/a.png",
            "frame_name": "a.png",
            "labels": [("x", (0, 0, 10, 10))],
            "predictions": [("x", (0, 0, 10, 10))],
        },
        {"_id": "v/b.png", "frame_name": "b.png", "labels": [("x", (0, 0, 10, 10))], "predictions": []},
        {"_id": "v/c.png", "frame_name": "c.png", "labels": [], "predictions": [], "annotation_id": "7"},
    ]
    cfg = ReviewConfig(disagreement_threshold=0.5)
    out = review_frames(db, cfg, frames, run_id="r1")
    assert out["reviewed"] == 3 and out["flagged"] == 1 and out["missed"] == 1
    doc = db.review_queue.find_one({})
    assert doc["frame"] == "b.png" and doc["status"] == "open" and doc["disagreement"] == 1.0
    review_frames(db, cfg, frames, run_id="r2")  # the same frames again: no second record
    assert db.review_queue.count_documents({}) == 1
