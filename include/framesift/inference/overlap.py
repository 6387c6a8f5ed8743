"""Extraction and inference of one video at once: frames go to the detector while the
video is still decoding, instead of being written, read back from S3 and decoded again.

:func:`extract_and_infer` runs the extraction (:func:`framesift.ingest.extract.extract_to_s3`:
the same frames, names, manifest and S3 layout) in a thread whose ``on_frame`` hook hands
each written frame's pixels to a bounded queue; the calling thread runs
:func:`framesift.inference.streaming.run_inference` over that queue. The queue bound
(``inference.prefetch``) is the back-pressure: decoding waits when the detector is behind,
so memory stays flat. Damaged frames stay out as they would from S3
(``extraction.damaged_frames: exclude``).

Used when ``inference.overlap`` is on (the default: on a CPU-only deployment both stages
share the machine anyway). With GPU workers set it off, so that inference runs in the
``infer`` task on the ``gpu`` queue.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from framesift.config.schema import PipelineConfig
from framesift.inference.detector import Detector
from framesift.inference.streaming import run_inference
from framesift.ingest.extract import extract_to_s3
from framesift.io import layout
from framesift.io.s3 import s3_uri

_LOG = logging.getLogger("framesift.inference")

_END = object()
_PUT_WAIT_S = 0.5


class _Stopped(Exception):
    """The consumer stopped (inference failed): the extraction is abandoned."""


def can_overlap(cfg: PipelineConfig) -> bool:
    """Whether this config runs extraction and inference together (SSL fine-tuning needs
    every frame before it starts, so it keeps the two stages apart)."""
    return bool(cfg.inference.overlap) and not cfg.inference.embedding.ssl.enabled


def extract_and_infer(
    s3,
    bucket: str,
    key: str,
    etag: str,
    cfg: PipelineConfig,
    *,
    work_dir,
    detector: Detector | None = None,
    log: logging.Logger | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the extraction manifest, the inference summary; None when the video was quarantined)."""
    log = log or _LOG
    vid = layout.video_id(bucket, key, etag)
    frames_q: queue.Queue = queue.Queue(maxsize=max(2, cfg.inference.prefetch))
    stop = threading.Event()
    outcome: dict[str, Any] = {}
    exclude = cfg.extraction.damaged_frames == "exclude"
    left_out: list[str] = []

    def on_frame(name, image, damaged) -> None:
        if damaged and exclude:
            left_out.append(name)
            return
        while True:
            if stop.is_set():
                raise _Stopped()
            try:
                frames_q.put((name, image, None), timeout=_PUT_WAIT_S)
                return
            except queue.Full:
                continue

    def extract() -> None:
        try:
            outcome["manifest"] = extract_to_s3(
                s3, bucket, key, etag, cfg, work_dir=work_dir, log=log, on_frame=on_frame
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            outcome["error"] = exc
        finally:
            while True:
                try:
                    frames_q.put(_END, timeout=_PUT_WAIT_S)
                    break
                except queue.Full:
                    if stop.is_set():
                        break

    def stream():
        while True:
            item = frames_q.get()
            if item is _END:
                return
            yield item

    if detector is None:
        detector = Detector.from_config(cfg, s3, log=log)  # before decoding starts: a bad model fails fast
    thread = threading.Thread(target=extract, name=f"framesift-extract-{vid}", daemon=True)
    thread.start()
    stub = {
        "video_id": vid,
        "source": {"bucket": bucket, "key": key, "etag": etag},
        "frames_prefix": s3_uri(cfg.storage.out_bucket, layout.frames_prefix(cfg, vid) + "/"),
    }
    try:
        summary = run_inference(
            s3,
            cfg,
            stub,
            detector=detector,
            log=log,
            frames=stream(),
        )
    except BaseException:
        stop.set()
        thread.join()
        raise
    thread.join()
    if "error" in outcome and not isinstance(outcome["error"], _Stopped):
        raise outcome["error"]
    manifest = outcome["manifest"]
    if manifest.get("status") != "extracted":
        return manifest, None
    summary["frames_damaged_excluded"] = len(left_out)
    summary["overlapped"] = True
    return manifest, summary
