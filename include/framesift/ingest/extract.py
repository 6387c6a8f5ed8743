"""Probe videos and extract sampled frames from them with PyAV.

Plain Python (no Airflow). Decoding streams packet by packet (memory stays flat); only
sampled frames become pixels; encoding and the sink run in a thread pool beside decoding.

Decoding (:mod:`framesift.ingest.decoding`): at the floor (``extraction.skip_decoding``)
only what sampling keeps is decoded; recorded timestamps are always the kept frame's own.
With the decode plan, one decoder per core (``extraction.decode_workers``) each takes
every n-th GOP on its own container (PyAV decodes without the GIL), and their frames come
back through small queues, merged GOP by GOP into time order before dedupe, shot
detection and encoding: the output is what one decoder gives.

Frame names follow Lightly's convention ``<stem>-<index>-<ext>.png`` where ``index`` is
the frame's true position in the video (the rank of its timestamp among all packets), so
a name means the same frame whatever the sampling, and after lost or damaged packets.

Damage: frames decoded from damaged references are flagged: listed in
``damaged_frames``, counted in ``frames_damaged``, with the first error's text and the
time ranges affected; by default (``extraction.damaged_frames: exclude``) they are
written but kept out of inference and selection, ``include`` treats them as clean,
``drop`` does not write them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from framesift.config.schema import ExtractionConfig, PipelineConfig
from framesift.ingest.damage import damage_summary
from framesift.ingest.decoding import DecodeCounts, GopDecoder, KeptFrame
from framesift.ingest.metadata import ShotDetector, frame_facts
from framesift.ingest.packets import PacketIndex, index_packets
from framesift.ingest.probe import (
    BadVideo,
    VideoInfo,
    check_limits,
    mb_text,
    open_video,
    probe,
)
from framesift.io import layout
from framesift.io.machine import usable_cpus
from framesift.io.s3 import join_key, put_bytes, put_json, s3_uri

_LOG = logging.getLogger("framesift.video")

PathLike = str | os.PathLike[str]
Sink = Callable[[str, bytes], None]
FrameHook = Callable[[str, np.ndarray, bool], None]

PROGRESS_EVERY_S = 5.0
# cap on the pixels waiting to be encoded, whatever the worker count (8K frames are 100 MB)
_MAX_INFLIGHT_BYTES = 512 * 1024 * 1024
_THUMB = 32
# decode_workers: 0 takes one decoder per CPU, up to this many
_MAX_AUTO_DECODERS = 4
# sampled frames a decoder may hold ready before the merge takes them (bounds memory)
_QUEUED_FRAMES = 4
_CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg"}


def frame_name(stem: str, index: int, n_frames: int, video_ext: str, image_ext: str = "png") -> str:
    """Lightly's frame name, e.g. ``frame_name("bikes", 7, 250, "mp4") == "bikes-007-mp4.png"``."""
    width = len(str(max(n_frames, 1)))
    return f"{stem}-{index:0{width}d}-{video_ext}.{image_ext}"


@dataclass
class ExtractionResult:
    status: str  # "extracted" | "quarantined"
    reason: str | None = None
    # the VideoInfo fields (None when the probe did not get that far)
    container: str | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    rotation: int | None = None
    fps: float | None = None
    duration_s: float | None = None
    n_frames: int | None = None
    size_bytes: int | None = None
    # counts
    frames_read: int = 0  # decoded cleanly
    frames_written: int = 0
    frames_skipped: int = 0  # decoded and dropped by sampling
    frames_undecoded: int = 0  # packets never decoded: sampling keeps nothing of them
    frames_duplicate: int = 0  # dropped as near-duplicates of the last frame kept
    frames_corrupt: int = 0  # packets that failed to decode (or were lost) + frames the decoder flagged
    frames_damaged_decoded: int = 0  # frames decoded from damaged references (kept or not)
    frames_damaged: int = 0  # sampled frames flagged damaged (written, or dropped with damaged_frames: drop)
    damaged_frames: list[str] = field(default_factory=list)  # names of the written damaged frames
    first_decode_error: str | None = None
    damage_ranges_s: list[list[float]] = field(default_factory=list)  # [start, end] seconds
    # the frames written, in time order
    frame_names: list[str] = field(default_factory=list)
    frame_indices: list[int] = field(default_factory=list)
    frame_timestamps_s: list[float] = field(default_factory=list)
    # per written frame: its shot and Lightly's image metadata (framesift.ingest.metadata)
    frame_metadata: dict[str, dict[str, float]] = field(default_factory=dict)
    decoders: int = 1  # decoders that split the video's GOPs between them
    elapsed_s: float = 0.0

    @classmethod
    def from_info(cls, info: VideoInfo | None, status: str, reason: str | None = None) -> ExtractionResult:
        fields = dataclasses.asdict(info) if info else {}
        return cls(status=status, reason=reason, **fields)

    def to_manifest(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["frame_timestamps_s"] = [round(t, 6) for t in self.frame_timestamps_s]
        data["elapsed_s"] = round(self.elapsed_s, 3)
        return data


def extract_frames(
    path: PathLike,
    cfg: ExtractionConfig,
    sink: Sink,
    *,
    stem: str,
    video_ext: str,
    log: logging.Logger | None = None,
    on_frame: FrameHook | None = None,
) -> ExtractionResult:
    """Decode ``path``, sample and dedupe frames, and hand each one to ``sink(name, bytes)``.

    ``sink`` is called from worker threads (up to ``cfg.upload_workers`` at once) and its
    exceptions propagate. ``on_frame(name, bgr_image, damaged)``, when given, sees every
    written frame upright, in time order, from the decoding thread (the overlap with
    inference: :mod:`framesift.inference.overlap`); it may block to apply back-pressure. Damaged packets are counted and skipped. Raises BadVideo for
    unusable input: not a video, over a limit, or no frame decodes at all.
    """
    log = log or _LOG
    started = time.monotonic()
    size = os.path.getsize(path)
    limit_bytes = cfg.max_file_size_mb * 1024 * 1024
    if size > limit_bytes:
        raise BadVideo(f"file size {mb_text(size)} over limit {mb_text(limit_bytes)}")
    info = probe(path)
    check_limits(info, cfg)
    index = index_packets(str(path)) if cfg.sampling != "all" or cfg.skip_decoding else None

    result = ExtractionResult.from_info(info, "extracted")
    run = _Extraction(info, cfg, sink, stem, video_ext, log, result, index)
    run.on_frame = on_frame
    run.run(path)
    result.elapsed_s = time.monotonic() - started

    if result.frames_read == 0 and not result.frames_damaged_decoded:
        if result.frames_corrupt:
            detail = f": {result.frames_corrupt} damaged packets/frames"
        else:
            detail = ": no video packets could be read"
        if run.last_error:
            detail += f" (last error: {run.last_error})"
        raise BadVideo("no decodable frames" + detail, info)
    speed = run.position / result.elapsed_s if result.elapsed_s > 0 else 0.0
    log.info(
        "extract %s: done, %d frames decoded, %d written (%d skipped by sampling, %d not decoded, %d duplicates, "
        "%d corrupt, %d damaged%s) in %.1f s (%.0f fps, %d decoder%s)",
        stem,
        result.frames_read + result.frames_damaged_decoded,
        result.frames_written,
        result.frames_skipped,
        result.frames_undecoded,
        result.frames_duplicate,
        result.frames_corrupt,
        result.frames_damaged,
        f": {damage_summary(result.to_manifest())}" if result.frames_damaged else "",
        result.elapsed_s,
        speed,
        result.decoders,
        "" if result.decoders == 1 else "s",
    )
    return result


class _Stopped(Exception):
    """The extraction stopped (an error elsewhere): a decoder thread gives up."""


_DONE = object()  # a decoder reached the end of the stream


class _Extraction:
    """One pass over one video: one decoder, or several each taking every n-th GOP (their
    output merged back into time order); then dedupe, shots and metadata, and the encoder
    pool."""

    def __init__(self, info, cfg, sink, stem, video_ext, log, result, index: PacketIndex | None):
        self.info, self.cfg, self.sink, self.log, self.result = info, cfg, sink, log, result
        self.stem, self.video_ext = stem, video_ext
        self.image_ext = cfg.image_format
        self.index = index if index is not None and index.n_packets else None
        self.decoders: list[GopDecoder] = []
        self.last_index = -1
        self.last_pts: int | None = None
        self.last_thumb: np.ndarray | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.inflight: set[Future] = set()
        frame_bytes = max(1, info.width * info.height * 3)
        self.max_inflight = max(2, min(2 * cfg.upload_workers, _MAX_INFLIGHT_BYTES // frame_bytes))
        self.next_log = time.monotonic() + PROGRESS_EVERY_S
        self.started = time.monotonic()
        self.on_frame: FrameHook | None = None
        self.shots = ShotDetector()

    @property
    def position(self) -> int:
        return max((d.position for d in self.decoders), default=0)

    @property
    def last_error(self) -> str | None:
        return next((d.last_error for d in self.decoders if d.last_error), None)

    def n_decoders(self) -> int:
        """Parallel GOP decoding needs the decode plan (a complete packet index) and GOPs."""
        cfg, idx = self.cfg, self.index
        if not (
            cfg.skip_decoding and cfg.sampling in ("fps", "every_n") and idx is not None and idx.complete
        ):
            return 1
        workers = cfg.decode_workers or min(_MAX_AUTO_DECODERS, usable_cpus())
        return max(1, min(workers, len(idx.keyframe_pts)))

    def run(self, path: PathLike) -> None:
        self.result.decoders = n = self.n_decoders()
        self.decoders = [
            GopDecoder(self.info, self.cfg, self.stem, self.log, self.index, (w, n)) for w in range(n)
        ]
        self.pool = ThreadPoolExecutor(self.cfg.upload_workers, thread_name_prefix="framesift-frames")
        try:
            if n == 1:
                with open_video(path) as container:
                    self.decoders[0].run(container, self._take)
            else:
                self._run_parallel(path)
            self._wait(all_done=True)
        except BaseException:
            self.pool.shutdown(wait=True, cancel_futures=True)
            raise
        self.pool.shutdown(wait=True)
        self._merge_counts()

    def _run_parallel(self, path: PathLike) -> None:
        """Each decoder in its own thread (PyAV decodes without the GIL) on its own
        container; frames come back GOP by GOP in time order through small queues."""
        stop = threading.Event()
        queues = [queue.Queue(maxsize=_QUEUED_FRAMES) for _ in self.decoders]

        def work(decoder: GopDecoder, out: queue.Queue) -> None:
            def put(item) -> None:
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        return
                    except queue.Full:
                        continue
                raise _Stopped

            try:
                with open_video(path) as container:
                    decoder.run(container, put)
                put(_DONE)
            except _Stopped:
                pass
            except BaseException as exc:  # handed to the merging thread, which raises it
                with contextlib.suppress(_Stopped):
                    put(exc)

        threads = [
            threading.Thread(target=work, args=(d, q), name=f"framesift-decode-{d.worker}", daemon=True)
            for d, q in zip(self.decoders, queues, strict=True)
        ]
        for thread in threads:
            thread.start()
        n = len(queues)
        try:
            gop = -1
            while (item := self._next(queues[max(gop, 0) % n])) is not _DONE:
                if isinstance(item, int):
                    gop = item + 1  # the GOP's decoder told its end: the next GOP's decoder is due
                else:
                    self._take(item)
            for w, q in enumerate(queues):  # the others end too (or failed)
                while w != max(gop, 0) % n and (item := self._next(q)) is not _DONE:
                    self._take(item)
        finally:
            stop.set()
            for thread in threads:
                thread.join()

    @staticmethod
    def _next(q: queue.Queue):
        item = q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def _merge_counts(self) -> None:
        result = self.result
        for name in (f.name for f in dataclasses.fields(DecodeCounts) if f.name.startswith("frames_")):
            setattr(result, name, getattr(result, name) + sum(getattr(d.counts, name) for d in self.decoders))
        errors = sorted(
            (d.first_error_s, d.counts.first_decode_error)
            for d in self.decoders
            if d.counts.first_decode_error
        )
        result.first_decode_error = errors[0][1] if errors else None
        result.damage_ranges_s = sorted(r for d in self.decoders for r in d.damage_ranges)

    # -- kept frames, in time order

    def _take(self, item) -> None:
        if not isinstance(item, KeptFrame):
            return  # a GOP boundary: only the parallel merge needs it
        if item.pts is not None and item.pts == self.last_pts:
            self.result.frames_skipped += 1  # a keyframe two decoders both stood in with
            return
        index = max(item.index, self.last_index + 1)
        self.last_index, self.last_pts = index, item.pts
        if not item.damaged and self._is_duplicate(item.image):
            self.result.frames_duplicate += 1
        else:
            self._submit(item.image, index, item.t, item.rotation, item.damaged)
        if time.monotonic() >= self.next_log:
            self._log_progress()

    def _is_duplicate(self, image: np.ndarray) -> bool:
        if not self.cfg.dedupe.enabled:
            return False
        small = cv2.resize(image, (_THUMB, _THUMB), interpolation=cv2.INTER_AREA)
        thumb = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
        if (
            self.last_thumb is not None
            and float(np.abs(thumb - self.last_thumb).mean()) < self.cfg.dedupe.threshold
        ):
            return True
        self.last_thumb = thumb
        return False

    def _submit(self, image: np.ndarray, index: int, t: float, rotation: int, damaged: bool) -> None:
        name = frame_name(self.stem, index, self.info.n_frames, self.video_ext, self.image_ext)
        self._wait(all_done=False)
        self.inflight.add(self.pool.submit(self._encode_and_sink, name, image, rotation))
        if self.on_frame is not None:
            self.on_frame(name, cv2.rotate(image, _CV2_ROTATE[rotation]) if rotation else image, damaged)
        self.result.frame_names.append(name)
        self.result.frame_indices.append(index)
        self.result.frame_timestamps_s.append(t)
        self.result.frame_metadata[name] = frame_facts(image, rotation, self.shots)
        if damaged:
            self.result.frames_damaged += 1
            self.result.damaged_frames.append(name)

    def _encode_and_sink(self, name: str, image: np.ndarray, rotation: int) -> None:
        if rotation:
            image = cv2.rotate(image, _CV2_ROTATE[rotation])
        if self.image_ext == "png":
            # the "up" filter alone encodes ~1.5x faster than OpenCV's default, and smaller
            params = [
                cv2.IMWRITE_PNG_COMPRESSION,
                self.cfg.png_compression,
                cv2.IMWRITE_PNG_FILTER,
                cv2.IMWRITE_PNG_FILTER_UP,
            ]
        else:
            params = [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality]
        ok, encoded = cv2.imencode("." + self.image_ext, image, params)
        if not ok:
            raise RuntimeError(f"could not encode {name}")
        self.sink(name, encoded.tobytes())

    def _wait(self, *, all_done: bool) -> None:
        """Wait until there is room for one more frame (or until all are done)."""
        limit = 0 if all_done else self.max_inflight - 1
        while len(self.inflight) > limit:
            done, self.inflight = wait(self.inflight, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()  # re-raises a failed encode or sink call
                self.result.frames_written += 1

    def _log_progress(self) -> None:
        now = time.monotonic()
        self.next_log = now + PROGRESS_EVERY_S
        elapsed = now - self.started
        speed = self.position / elapsed if elapsed > 0 else 0.0
        total = max(self.info.n_frames, self.position)
        left = (total - self.position) / speed if speed > 0 else float("nan")
        self.log.info(
            "extract %s: %d/%d frames (%d%%), %d written, %.0f frames/s, ETA %.0f s",
            self.stem,
            self.position,
            total,
            100 * self.position // max(total, 1),
            self.result.frames_written,
            speed,
            left,
        )


_CV2_ROTATE = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}


def extract_to_s3(
    s3, bucket: str, key: str, etag: str, cfg: PipelineConfig, *, work_dir: PathLike, log=None, on_frame=None
) -> dict:
    """Extract frames of ``s3://bucket/key`` into the output bucket; return the manifest.

    Frames go under ``layout.frames_prefix`` and the manifest to ``layout.manifest_key``,
    written last, so a manifest means the frames it lists are all there. Bad input gives
    a manifest with status "quarantined" and the reason (no exception); storage errors
    raise. Re-running writes the same keys and removes frames a previous run left behind.
    """
    log = log or _LOG
    ext_cfg = cfg.extraction
    vid = layout.video_id(bucket, key, etag)
    stem, ext = layout.safe_stem(key), layout.video_ext(key)
    out_bucket = cfg.storage.out_bucket
    prefix = layout.frames_prefix(cfg, vid)
    manifest_key = layout.manifest_key(cfg, vid)
    content_type = _CONTENT_TYPES[ext_cfg.image_format]

    def sink(name: str, data: bytes) -> None:
        put_bytes(s3, out_bucket, join_key(prefix, name), data, content_type)

    Path(work_dir).mkdir(parents=True, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f"{vid}-", suffix=f".{ext}", dir=work_dir)
    os.close(fd)
    try:
        log.info("extract %s: downloading s3://%s/%s", stem, bucket, key)
        s3.download_file(bucket, key, tmp_path)
        try:
            result = extract_frames(
                tmp_path, ext_cfg, sink, stem=stem, video_ext=ext, log=log, on_frame=on_frame
            )
        except BadVideo as bad:
            log.warning("extract %s: quarantined: %s", stem, bad.reason)
            result = ExtractionResult.from_info(bad.info, "quarantined", bad.reason)
    finally:
        os.unlink(tmp_path)

    _remove_stale_frames(s3, out_bucket, prefix, set(result.frame_names), log)
    manifest = {
        "video_id": vid,
        "source": {"bucket": bucket, "key": key, "etag": etag},
        "frames_prefix": s3_uri(out_bucket, prefix + "/"),
        "manifest_uri": s3_uri(out_bucket, manifest_key),
        "image_format": ext_cfg.image_format,
        "sampling": ext_cfg.model_dump(
            include={
                "sampling",
                "fps",
                "every_n",
                "dedupe",
                "skip_decoding",
                "keyframe_tolerance",
                "damaged_frames",
            }
        ),
        **result.to_manifest(),
    }
    put_json(s3, out_bucket, manifest_key, manifest)
    return manifest


def _remove_stale_frames(s3, bucket: str, prefix: str, keep: set[str], log) -> None:
    """Delete frames under ``prefix`` that this run did not write (e.g. an older sampling).

    Only direct children: sub-folders (the Lightly ``.lightly/`` predictions) are left alone.
    """
    stale = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/", Delimiter="/"):
        stale += [
            item["Key"] for item in page.get("Contents", []) if item["Key"].rsplit("/", 1)[-1] not in keep
        ]
    for start in range(0, len(stale), 1000):
        batch = [{"Key": k} for k in stale[start : start + 1000]]
        s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
    if stale:
        log.info("extract: removed %d stale frames under s3://%s/%s/", len(stale), bucket, prefix)
