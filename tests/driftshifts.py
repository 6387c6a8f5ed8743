"""Shifted copies of generated clips, for the drift tests: night, heavy blur, a moved
camera, a new object class. A clip is decoded, each frame transformed, and re-encoded.
And the drift tests' setup: a config of their own, clips extracted and inferred."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import yaml


def night(image: np.ndarray, t: float) -> np.ndarray:
    """Dusk footage: a quarter of the light, a blue cast, sensor noise."""
    rng = np.random.default_rng(int(t * 1000))
    dark = image.astype(np.float32) * np.array([0.35, 0.22, 0.18], np.float32)
    dark += rng.normal(0, 6, image.shape)
    return np.clip(dark, 0, 255).astype(np.uint8)


def blur(image: np.ndarray, t: float) -> np.ndarray:
    """A dirty or defocused lens."""
    return cv2.GaussianBlur(image, (0, 0), 7)


def camera_angle(image: np.ndarray, t: float) -> np.ndarray:
    """The camera was knocked: tilted, closer, looking from the side."""
    h, w = image.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[-0.15 * w, 0.25 * h], [0.9 * w, -0.2 * h], [1.35 * w, 1.1 * h], [0.1 * w, 1.3 * h]])
    return cv2.warpPerspective(
        image, cv2.getPerspectiveTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT
    )


def new_class(image: np.ndarray, t: float) -> np.ndarray:
    """Objects of a kind never seen before: big yellow stars with a dark outline, drifting."""
    out = image.copy()
    h, w = image.shape[:2]
    for k in range(4):
        cx = (0.2 + 0.2 * k + 0.05 * math.sin(t + k)) * w
        cy = (0.3 + 0.4 * ((k % 2) + 0.1 * math.cos(t * 0.8 + k)) / 1.2) * h
        r = (0.13 + 0.02 * (k % 2)) * min(w, h)
        pts = []
        for j in range(10):
            a = math.pi / 2 + j * math.pi / 5 + 0.3 * t
            rr = r if j % 2 == 0 else r * 0.45
            pts.append([cx + rr * math.cos(a), cy - rr * math.sin(a)])
        poly = np.array(pts, dtype=np.int32)
        cv2.fillPoly(out, [poly], (0, 220, 255))
        cv2.polylines(out, [poly], True, (20, 20, 20), 2)
    return out


SHIFTS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "night": night,
    "blur": blur,
    "camera_angle": camera_angle,
    "new_class": new_class,
}


def shifted_copy(
    src: str | Path,
    dst: str | Path,
    shift: str | None = None,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
) -> Path:
    """Re-encode the part of ``src`` from ``start_s`` to ``end_s`` with every frame passed
    through ``SHIFTS[shift]`` (``None``: unchanged, e.g. later footage of the same camera)."""
    fn = SHIFTS[shift] if shift else None
    dst = Path(dst)
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        rate = vin.average_rate or Fraction(25)
        stream = out.add_stream("libx264", rate=rate, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = vin.width, vin.height, "yuv420p"
        for i, frame in enumerate(inp.decode(vin)):
            t = i / float(rate)
            if t < start_s - 1e-9 or (end_s is not None and t >= end_s - 1e-9):
                continue
            image = frame.to_ndarray(format="bgr24")
            if fn is not None:
                image = fn(image, t)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return dst


def frames_of(path: str | Path, every: int = 1) -> list[np.ndarray]:
    """Decoded BGR frames of a clip (every ``every``-th)."""
    with av.open(str(path)) as inp:
        return [f.to_ndarray(format="bgr24") for i, f in enumerate(inp.decode(video=0)) if i % every == 0]


def drift_config(stack, folder: Path, letter: str, drift: dict, **inference):
    """(config, its YAML path) of a drift test: fresh prefixes (``<letter>-<tag>/``) and Mongo
    database, every 2nd frame without dedupe, inference at 256 px, the ``drift`` section."""
    from framesift.config.loading import load_config

    tag = uuid.uuid4().hex[:8]
    data = {
        "storage": {
            "bucket": stack.bucket,
            "videos_prefix": f"{letter}-{tag}/videos/",
            "output_prefix": f"{letter}-{tag}/out/",
        },
        "mongo": {"database": f"{letter}_{tag}"},
        "extraction": {"sampling": "every_n", "every_n": 2, "dedupe": {"enabled": False}},
        "inference": {"imgsz": 256, "batch_size": 16, **inference},
        "drift": drift,
    }
    path = Path(folder) / "framesift.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path), path


def ingest_clips(s3, db, cfg, clips: list[tuple[Path, str]], run_id: str, detector=None) -> None:
    """Upload clips (local path, key under ``videos_prefix``), register, extract and infer them."""
    from framesift.inference.stage import infer_one
    from framesift.ingest.stage import extract_one, register_uploads
    from framesift.io.s3 import upload
    from framesift.local.stack import var_dir

    work = var_dir() / "work"
    work.mkdir(parents=True, exist_ok=True)
    for local, key in clips:
        upload(s3, local, cfg.storage.bucket, cfg.storage.videos_prefix + key)
    for ref in register_uploads(s3, db, cfg, run_id=run_id):
        extract_one(s3, db, cfg, ref, run_id=run_id, work_dir=str(work))
        infer_one(s3, db, cfg, ref, run_id=run_id, detector=detector)
