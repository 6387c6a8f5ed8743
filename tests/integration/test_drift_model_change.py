"""A promotion does not page on-call; a changed scene still does.

One camera, generated footage, real inference into the embedded stack: the reference
(the first 13 s) is inferred by an ultralytics detector (the bundled YOLOv8 person model,
which ultralytics can load and save); then a new model is promoted (the same detector
with its convolution weights perturbed: another model space, as a retrained model is) and the next footage is inferred by it: the same scene unchanged,
and the same scene at night. Without the reference being re-inferred with the promoted
model, the unchanged footage alarms on the model change alone.
"""

from __future__ import annotations

import pytest

from framesift.drift import incidents as alerts
from framesift.drift import monitor
from framesift.inference.models import FALL_MODEL_URI
from framesift.io.s3 import list_objects
from framesift.local.synth import make_video
from tests.driftshifts import drift_config, ingest_clips, shifted_copy

pytestmark = pytest.mark.slow


def promoted_checkpoint(dst, seed: int = 0, scale: float = 0.35):
    """The YOLOv8 person detector with every convolution's weights scaled by (1 + scale * noise)."""
    import torch
    from ultralytics import YOLO

    from framesift.inference.models import fall_model_path

    model = YOLO(str(fall_model_path()))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.model.parameters():
            if param.ndim == 4:
                param.mul_(1 + scale * torch.randn(param.shape, generator=gen).to(param.dtype))
    model.save(str(dst))
    return dst


@pytest.fixture(scope="module")
def world(stack, s3, mongo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drift-model")
    drift = {"window_frames": 25, "min_window_frames": 20, "reference_frames": 33, "group_by": "folder"}
    cfg, _ = drift_config(stack, tmp, "m", drift, model_uri=FALL_MODEL_URI)
    db = mongo[cfg.mongo.database]
    prefix = cfg.storage.videos_prefix
    clip = make_video(tmp / "cam.mp4", seconds=23, fps=5, seed=1)

    ingest_clips(
        s3, db, cfg, [(shifted_copy(clip, tmp / "early.mp4", end_s=13), "cam/early.mp4")], "before-promotion"
    )
    # promote a new model: the champion of the model registry, served by inference from now on
    new_model = promoted_checkpoint(tmp / "promoted.pt")
    db.models.insert_one({"_id": "model-2", "uri": str(new_model), "champion": True, "status": "promoted"})
    ingest_clips(
        s3,
        db,
        cfg,
        [
            (shifted_copy(clip, tmp / "later.mp4", start_s=13), "cam/later.mp4"),
            (shifted_copy(clip, tmp / "night.mp4", "night", start_s=13), "cam-night/later.mp4"),
        ],
        "after-promotion",
    )
    return {"cfg": cfg, "db": db, "prefix": prefix, "model": str(new_model)}


def windows_of(report, prefix):
    return {w["source"][len(prefix) :]: w for w in report["windows"]}


def test_a_promotion_alone_raises_no_alert_and_a_changed_scene_still_does(world, s3):
    cfg, db, prefix = world["cfg"], world["db"], world["prefix"]
    docs = {d["key"][len(prefix) :]: d for d in db.videos.find()}
    assert docs["cam/early.mp4"]["inference"]["model_uri"] != docs["cam/later.mp4"]["inference"]["model_uri"]
    assert docs["cam/later.mp4"]["inference"]["model_uri"] == world["model"]

    report = monitor.compute(s3, db, cfg)
    print(monitor.format_report(report))
    model = report["reference"]["model"]
    assert model["serving"].startswith(world["model"]) and "re-inferred" in model["reference"]
    windows = windows_of(report, prefix)
    assert windows["cam/"]["level"] == "normal", windows["cam/"]["families"]
    assert windows["cam-night/"]["level"] in ("warning", "critical"), windows["cam-night/"]["families"]

    # the reference was inferred again by the serving model, beside (not over) its own outputs
    (ref,) = db[monitor.REFERENCES].find()
    assert ref["video_id"] == docs["cam/early.mp4"]["_id"] and ref["model_uri"] == world["model"]
    assert "/drift/reference/" in ref["embeddings_uri"]
    assert docs["cam/early.mp4"]["inference"]["embeddings_uri"] != ref["embeddings_uri"]
    own = [
        o.key
        for o in list_objects(
            s3,
            cfg.storage.out_bucket,
            docs["cam/early.mp4"]["inference"]["embeddings_uri"][5:].split("/", 1)[1],
        )
    ]
    assert own  # the video's own embeddings are still there

    # on-call: one incident family set, only for the changed scene
    changes = alerts.update_incidents(db, report, cfg.drift, run_id="drift-1")
    opened = [db.alerts.find_one({"_id": i})["dedup_key"] for i in changes["opened"]]
    assert opened and all(k.endswith(f":{prefix}cam-night/") for k in opened), opened

    # computed again: the re-inferred reference is reused, not inferred again
    again = monitor.compute(s3, db, cfg)
    assert db[monitor.REFERENCES].count_documents({}) == 1
    assert windows_of(again, prefix)["cam/"]["level"] == "normal"


def test_without_reinference_the_comparison_is_suspended_with_the_reason(world, s3):
    cfg = world["cfg"].model_copy(deep=True)
    cfg.drift.reference_reinfer = False
    report = monitor.compute(s3, world["db"], cfg)
    assert report["windows"] == [] and "drift.reference_reinfer is off" in report["suspended"]
    assert world["model"] in report["suspended"] and report["note"].startswith("comparison suspended")
    changes = alerts.update_incidents(world["db"], report, cfg.drift, run_id="drift-2")
    assert not any(changes.values()), changes
