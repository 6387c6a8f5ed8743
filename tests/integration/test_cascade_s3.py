"""The detector cascade (inference.cascade) through ingest against the embedded S3 and
Mongo: both inference paths (overlapped with extraction, and read back from S3) keep every
frame in S3 but predict and embed only the frames the gate let through; selection (its
inputs and report) and the drift monitor work on videos whose outputs cover some frames."""

from __future__ import annotations

import pytest

from framesift.drift.monitor import compute
from framesift.inference import predictions as lp
from framesift.inference.detector import Detector
from framesift.inference.models import fall_model_path
from framesift.inference.stage import extract_and_infer_one, infer_one
from framesift.ingest.stage import extract_one, register_uploads
from framesift.io.s3 import get_json, list_objects, parse_s3_uri, upload
from framesift.selection.batch import select_batch
from tests.integration.test_inference_s3 import bikes_path

pytestmark = pytest.mark.slow


def test_cascade_in_both_paths_then_selection_and_drift(s3, db, isolated, tmp_path, caplog):
    cfg = isolated.model_copy(deep=True)
    cfg.extraction.sampling = "every_n"
    cfg.extraction.every_n = 5
    cfg.inference.imgsz = 320
    cfg.inference.batch_size = 8
    cfg.inference.runtime = "torch"
    cfg.inference.cascade.enabled = True
    cfg.inference.cascade.min_distance = 0.3  # bikes.mp4 every 5th frame: some frames look alike
    cfg.selection.n_samples = 6
    detector = Detector(fall_model_path(), imgsz=320, confidence_threshold=0.3, half=False)

    for name in ("overlap.mp4", "apart.mp4"):
        upload(s3, bikes_path(), cfg.storage.bucket, cfg.storage.videos_prefix + name)
    refs = {r.key.rsplit("/", 1)[-1]: r for r in register_uploads(s3, db, cfg, run_id="r1")}
    work = str(tmp_path / "work")
    caplog.set_level("INFO", logger="framesift")
    extract_and_infer_one(s3, db, cfg, refs["overlap.mp4"], run_id="r1", work_dir=work, detector=detector)
    extract_one(s3, db, cfg, refs["apart.mp4"], run_id="r1", work_dir=work)
    infer_one(s3, db, cfg, refs["apart.mp4"], run_id="r1", detector=detector)
    assert "skipped by the cascade" in caplog.text

    ran = {}
    for name, ref in refs.items():
        doc = db.videos.find_one({"_id": ref.video_id})
        inf = doc["inference"]
        manifest = get_json(s3, *parse_s3_uri(doc["manifest_uri"]))
        all_names = manifest["frame_names"]
        # every frame is still in S3 (labeling sequences show them) ...
        bucket, prefix = parse_s3_uri(manifest["frames_prefix"])
        stored = {
            o.key.rsplit("/", 1)[-1] for o in list_objects(s3, bucket, prefix) if "/.lightly/" not in o.key
        }
        assert set(all_names) <= stored
        # ... but only the gated ones have a prediction and an embedding row
        assert inf["frames_cascade_skipped"] > 0 and inf["frames"] >= 1
        assert inf["frames"] + inf["frames_cascade_skipped"] == len(all_names)
        names, emb = lp.read_embeddings(s3, inf["embeddings_uri"])
        assert len(names) == inf["frames"] == emb.shape[0]
        assert names[0] == all_names[0] and set(names) < set(all_names)
        assert sorted(lp.read_predictions(s3, cfg, ref.video_id, inf["task_name"])) == sorted(names)
        ran[name] = names
    assert ran["overlap.mp4"] == [n.replace("apart", "overlap") for n in ran["apart.mp4"]]  # same gate

    record = select_batch(s3, db, cfg, list(refs.values()), run_id="r1")
    assert len(record["selected"]) == 6 and record.get("report_uri")
    gated = {f"{refs[name].video_id}/{n}" for name, names in ran.items() for n in names}
    assert set(record["selected"]) <= gated

    report = compute(s3, db, cfg)  # the drift monitor reads the same partial outputs
    assert "reference" in report
