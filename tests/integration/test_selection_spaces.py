"""One embedding space at a time: the selection stage against the real Mongo and S3 on
loopback, with videos and datapool entries embedded by different models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from framesift.inference import predictions as lp
from framesift.ingest import registry
from framesift.ingest.registry import VideoRef
from framesift.io.s3 import get_bytes, join_key, parse_s3_uri, put_bytes, put_json, s3_uri
from framesift.selection.batch import select_batch
from framesift.selection.batch_inputs import split_budget
from framesift.selection.datapool import read_datapool

pytestmark = pytest.mark.slow
TASK = "object-detection"


def _video(s3, db, cfg, vid: str, emb: np.ndarray, model_id: str | None) -> VideoRef:
    """An inferred video: frames, predictions (none) and embeddings of one model in S3."""
    names = [f"{vid}-{i:03d}-mp4.png" for i in range(len(emb))]
    frames_key = join_key(cfg.storage.output_prefix, "videos", vid, "frames")
    ok, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    for n in names:
        put_bytes(s3, cfg.storage.out_bucket, join_key(frames_key, n), png.tobytes(), "image/png")
    uri = lp.embeddings_uri(cfg, vid, "detector")
    lp.write_embeddings(s3, uri, names, emb.astype(np.float32), model_id)
    lp.write_schema(s3, cfg, vid, TASK, lp.make_schema({0: "car", 1: "person"}))
    lp.write_tasks(s3, cfg, vid, TASK)
    for n in names:
        lp.write_prediction(s3, cfg, vid, TASK, lp.prediction_record(n, []))
    ref = VideoRef(video_id=vid, bucket=cfg.storage.bucket, key=f"videos/{vid}.mp4", etag=f"e-{vid}", size=1)
    db.videos.insert_one(
        {
            "_id": vid,
            "key": ref.key,
            "status": registry.INFERRED,
            "attempts": 0,
            "history": [],
            "frames_prefix": s3_uri(cfg.storage.out_bucket, frames_key),
            "inference": {
                "frames": len(names),
                "task_name": TASK,
                "embeddings_uri": uri,
                "embedding_model_id": model_id,
            },
        }
    )
    return ref


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_split_budget_follows_the_frames():
    assert split_budget(10, [60, 40]) == [6, 4]
    assert split_budget(3, [1, 1, 1, 1]) in ([1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1])
    assert split_budget(10, [2, 30]) == [2, 8] or split_budget(10, [2, 30]) == [1, 9]
    assert sum(split_budget(7, [5, 5, 5])) == 7 and split_budget(5, [0, 0]) == [0, 0]


def test_videos_of_two_models_are_selected_apart_and_the_datapool_keeps_its_space(s3, db, isolated):
    rng = np.random.default_rng(0)
    cfg = isolated.model_copy(deep=True)
    cfg.selection.n_samples = 6
    # a promotion between two uploads: the second video is embedded by another model, in
    # another dimension too (distances across them would be meaningless, or a crash)
    refs = [
        _video(s3, db, cfg, "va", _unit(rng, 20, 8), "model-a"),
        _video(s3, db, cfg, "vb", _unit(rng, 10, 16), "model-b"),
    ]
    rec = select_batch(s3, db, cfg, refs, run_id="r1")
    spaces = {s["embedding_model_id"]: s for s in rec["embedding_spaces"]}
    assert set(spaces) == {"model-a", "model-b"}
    assert (spaces["model-a"]["budget"], spaces["model-b"]["budget"]) == (4, 2)  # 20 and 10 frames
    assert len(rec["selected"]) == 6 and len(rec["datapool_uris"]) == 2
    ids = {lp.read_embeddings_file(s3, u).model_id for u in rec["datapool_uris"]}
    assert ids == {"model-a", "model-b"}
    report = get_bytes(s3, *parse_s3_uri(rec["report_uri"])).decode()
    assert "embedded by 2 models" in report and "selected apart" in report

    # the next batch is all in model b's space: model a's datapool frames are left out of
    # its distances (counted), and no frame selected before is selected again
    cfg.selection.n_samples = 4
    refs2 = [_video(s3, db, cfg, "vc", _unit(rng, 12, 16), "model-b")]
    pool = read_datapool(s3, db, "none", "model-b", 16)
    assert len(pool.ids) == 6 and len(pool.embeddings) == 2 and pool.other_space == 4
    rec2 = select_batch(s3, db, cfg, refs2, run_id="r2")
    (space,) = rec2["embedding_spaces"]
    assert space["datapool_frames"] == 2 and space["datapool_other_space"] == 4
    assert "left out of the distances" in get_bytes(s3, *parse_s3_uri(rec2["report_uri"])).decode()
    assert not set(rec2["selected"]) & set(rec["selected"])


def test_files_written_before_ids_form_their_own_space(s3, db, isolated):
    rng = np.random.default_rng(1)
    cfg = isolated.model_copy(deep=True)
    cfg.selection.n_samples = 3
    old = select_batch(s3, db, cfg, [_video(s3, db, cfg, "old", _unit(rng, 9, 8), None)], run_id="r1")
    assert [s["embedding_model_id"] for s in old["embedding_spaces"]] == [None]
    # a later video without an id but of another dimension: the old entries do not count
    rec = select_batch(s3, db, cfg, [_video(s3, db, cfg, "new", _unit(rng, 9, 16), None)], run_id="r2")
    assert rec["embedding_spaces"][0]["datapool_other_space"] == 3


# --- what the config accepts, the pipeline feeds ---------------------------------------------


def test_unsupported_inputs_fail_before_any_claim(s3, db, isolated):
    cfg = isolated.model_copy(deep=True)
    ref = _video(s3, db, cfg, "vu", _unit(np.random.default_rng(2), 6, 8), "m")
    cases = [
        ({"input": {"type": "EMBEDDINGS", "dataset_id": "ds", "tag_name": "t"}, "strategy": {"type": "SIMILARITY"}},
         r"strategies\[1\]\.input\.dataset_id: names a Lightly cloud dataset"),
        ({"input": {"type": "METADATA", "key": "weather"}, "strategy": {"type": "WEIGHTS"}},
         r"strategies\[1\]\.input\.key: no metadata 'weather' in the pipeline"),
    ]  # fmt: skip
    for strategy, message in cases:
        over = {
            "n_samples": 2,
            "strategies": [{"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}, strategy],
        }
        with pytest.raises(ValueError, match=message):
            select_batch(s3, db, cfg, [ref], run_id="r-bad", overrides=over)
        assert db.videos.find_one({"_id": "vu"})["status"] == registry.INFERRED  # nothing claimed


def test_similarity_query_sets_come_from_labeled_frames_and_tags(s3, db, isolated):
    cfg = isolated.model_copy(deep=True)
    cfg.selection.n_samples = 2
    # first run: two frames of a video picked (they become the datapool); one is labeled person
    angles = np.radians([0, 90, 180, 270])
    emb = np.c_[np.cos(angles), np.sin(angles)]
    first = select_batch(s3, db, cfg, [_video(s3, db, cfg, "v1", emb, "m")], run_id="r1")
    person, other = first["selected"]
    db.labels.insert_one({"_id": person, "boxes": [{"class_name": "person", "bbox": [0, 0, 2, 2]}]})
    db.labels.insert_one({"_id": other, "boxes": [{"class_name": "car", "bbox": [0, 0, 2, 2]}]})
    p = lp.read_embeddings_file(s3, first["datapool_uris"][0])
    target = p.embeddings[p.frame_names.index(person)]
    # second run: frames near each labeled frame; "similar to person" takes the ones near it
    near = np.stack([target + d for d in (0.05, -0.05)] + [-target + d for d in (0.05, -0.05)])
    ref2 = _video(s3, db, cfg, "v2", near / np.linalg.norm(near, axis=1, keepdims=True), "m")
    sim = {"input": {"type": "EMBEDDINGS", "tag_name": "class:person"}, "strategy": {"type": "SIMILARITY"}}
    rec = select_batch(s3, db, cfg, [ref2], run_id="r2", overrides={"strategies": [sim]})
    assert sorted(rec["selected"]) == ["v2/v2-000-mp4.png", "v2/v2-001-mp4.png"]
    # a tag nobody used yet is an error that names it
    cfg.selection.n_samples = 1
    ref3 = _video(s3, db, cfg, "v3", near[:2] / np.linalg.norm(near[:2], axis=1, keepdims=True), "m")
    tagged = {"input": {"type": "EMBEDDINGS", "tag_name": "drift"}, "strategy": {"type": "SIMILARITY"}}
    with pytest.raises(
        ValueError, match=r"tag_name: no query frames: no frame of a selection tagged 'drift'"
    ):
        select_batch(s3, db, cfg, [ref3], run_id="r3", overrides={"strategies": [tagged]})


def test_metadata_strategies_read_what_the_pipeline_records(s3, db, isolated):
    cfg = isolated.model_copy(deep=True)
    rng = np.random.default_rng(4)
    refs = [_video(s3, db, cfg, f"m{i}", _unit(rng, 10 if i == 0 else 2, 8), "m") for i in range(3)]
    # balance over videos: one frame from each, although most frames are the first video's
    bal = {
        "input": {"type": "METADATA", "key": "video"},
        "strategy": {"type": "BALANCE", "distribution": "UNIFORM"},
    }
    rec = select_batch(s3, db, cfg, refs, run_id="r1", overrides={"n_samples": 3, "strategies": [bal]})
    assert sorted(v["frames"] for v in rec["videos"]) == [1, 1, 1]


def test_image_metadata_from_the_manifest_drives_threshold_and_balance(s3, db, isolated):
    """Lightly's per-frame metadata (sharpness) and the shots extraction records in the
    manifest are what METADATA strategies see in an ingest run."""
    cfg = isolated.model_copy(deep=True)
    rng = np.random.default_rng(5)
    ref = _video(s3, db, cfg, "mm", _unit(rng, 12, 8), "m")
    names = [f"mm-{i:03d}-mp4.png" for i in range(12)]
    # frames 0-5 blurred (sharpness 1), 6-11 sharp (50); shots: 0-9 one long shot, 10-11 another
    facts = {
        n: {"shot": 0 if i < 10 else 1, "sharpness": 1.0 if i < 6 else 50.0} for i, n in enumerate(names)
    }
    key = join_key(cfg.storage.output_prefix, "videos", "mm", "manifest.json")
    put_json(s3, cfg.storage.out_bucket, key, {"frame_metadata": facts})
    db.videos.update_one({"_id": "mm"}, {"$set": {"manifest_uri": s3_uri(cfg.storage.out_bucket, key)}})

    sharp = {
        "input": {"type": "METADATA", "key": "lightly.sharpness"},
        "strategy": {"type": "THRESHOLD", "threshold": 10, "operation": "BIGGER"},
    }
    div = {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}
    rec = select_batch(
        s3, db, cfg, [ref], run_id="r1", overrides={"n_samples": 4, "strategies": [div, sharp]}
    )
    assert len(rec["selected"]) == 4
    assert all(int(f.split("-")[1]) >= 6 for f in rec["selected"]), rec["selected"]

    # balance over shots: the short shot gets half of a budget of 2, though it has 2 of 12 frames
    db.selections.delete_many({})
    shots = {
        "input": {"type": "METADATA", "key": "shot"},
        "strategy": {"type": "BALANCE", "distribution": "UNIFORM"},
    }
    ref2 = _video(s3, db, cfg, "mn", _unit(rng, 12, 8), "m")
    facts2 = {n.replace("mm-", "mn-"): f for n, f in facts.items()}
    key2 = join_key(cfg.storage.output_prefix, "videos", "mn", "manifest.json")
    put_json(s3, cfg.storage.out_bucket, key2, {"frame_metadata": facts2})
    db.videos.update_one({"_id": "mn"}, {"$set": {"manifest_uri": s3_uri(cfg.storage.out_bucket, key2)}})
    rec2 = select_batch(
        s3, db, cfg, [ref2], run_id="r2", overrides={"n_samples": 2, "strategies": [div, shots]}
    )
    picked = sorted(int(f.split("-")[1]) for f in rec2["selected"])
    assert picked[0] < 10 <= picked[1], rec2["selected"]
    # the record and the report say how many recorded shots have a pick
    assert rec2["shots"] == {"shots": 2, "covered": 2, "videos": {ref2.key: {"shots": 2, "covered": 2}}}
    report = get_bytes(s3, *parse_s3_uri(rec2["report_uri"])).decode()
    assert f"Shots: 2 of 2 recorded shots have a pick ({ref2.key} 2 of 2)" in report
