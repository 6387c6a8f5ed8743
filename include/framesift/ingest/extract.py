"""Probe videos and extract sampled frames from them with PyAV.

Plain Python (no Airflow). Decoding streams packet by packet: memory stays flat in the
length of the video. Only sampled frames are converted to pixels; PNG/JPEG encoding and
the sink (an upload, a file write) run in a small thread pool so decoding overlaps them.

Frame names follow Lightly's convention ``<stem>-<index>-<ext>.png`` where ``index`` is
the frame's position in the video, so a name means the same frame whatever the sampling.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from framesift.config.schema import ExtractionConfig, PipelineConfig
from framesift.io import layout
from framesift.io.s3 import join_key, put_bytes, put_json, s3_uri

_LOG = logging.getLogger("framesift.video")

PathLike = str | os.PathLike[str]
Sink = Callable[[str, bytes], None]

PROGRESS_EVERY_S = 5.0
# packets probe() reads at most while looking for a first frame (for the rotation)
_PROBE_PACKETS = 64
# demux errors in a row after which the rest of the file counts as unreadable
_MAX_DEMUX_ERRORS = 8
# cap on the pixels waiting to be encoded, whatever the worker count (8K frames are 100 MB)
_MAX_INFLIGHT_BYTES = 512 * 1024 * 1024
_THUMB = 32
_CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg"}


class BadVideo(Exception):
    """The input cannot be used (not a video, empty, over a limit, ...): quarantine it.

    ``reason`` is short and human-readable; ``info`` is the probe, when it got that far.
    """

    def __init__(self, reason: str, info: VideoInfo | None = None):
        super().__init__(reason)
        self.reason = reason
        self.info = info


@dataclass
class VideoInfo:
    container: str  # demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str
    width: int  # display size: after rotation
    height: int
    rotation: int  # degrees counterclockwise to turn the stored image upright: 0, 90, 180, 270
    fps: float | None  # average frame rate
    duration_s: float | None  # None when the container does not say
    n_frames: int  # from the header, else counted packets
    size_bytes: int

    @property
    def stored_size(self) -> tuple[int, int]:
        """(width, height) of the frames as stored, before rotation."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)


def probe(path: PathLike) -> VideoInfo:
    """Read the headers of a video (and its first frame, for the rotation). Raises BadVideo."""
    size = os.path.getsize(path)  # a missing file is the caller's problem, not bad input
    if size == 0:
        raise BadVideo("not a video: empty file (0 bytes)")
    container = _open(path)
    with container:
        if not container.streams.video:
            raise BadVideo("no video stream")
        stream = container.streams.video[0]
        width, height, rotation = _first_frame_geometry(container, stream)
        n_frames = stream.frames if stream.frames and stream.frames > 0 else _count_packets(path)
        if stream.duration and stream.time_base:
            duration_s = float(stream.duration * stream.time_base)
        elif container.duration:
            duration_s = container.duration / av.time_base
        else:
            duration_s = None
        rate = stream.average_rate
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(
            container=container.format.name,
            codec=stream.codec_context.name if stream.codec_context else "unknown",
            width=width,
            height=height,
            rotation=rotation,
            fps=float(rate) if rate else None,
            duration_s=duration_s,
            n_frames=n_frames,
            size_bytes=size,
        )


def _open(path: PathLike) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except (av.FFmpegError, ValueError) as exc:
        raise BadVideo(f"not a video: {_ffmpeg_message(exc)}") from None


def _ffmpeg_message(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _first_frame_geometry(container, stream) -> tuple[int, int, int]:
    """Stored width, height and rotation, read from the first frame that decodes.

    PyAV exposes the display matrix on frames only; the codec header gives the size
    when no frame decodes within the first packets.
    """
    width, height, rotation = stream.codec_context.width, stream.codec_context.height, 0
    try:
        for i, packet in enumerate(container.demux(stream)):
            if i >= _PROBE_PACKETS:
                break
            try:
                frames = packet.decode()
            except av.FFmpegError:
                continue
            if frames:
                frame = frames[0]
                width, height, rotation = frame.width, frame.height, _rotation_of(frame, stream)
                break
    except av.FFmpegError:
        pass  # damaged early on; extraction will count the damage
    return width, height, rotation


def _rotation_of(frame, stream) -> int:
    """Counterclockwise degrees (0/90/180/270) from the display matrix or a 'rotate' tag."""
    degrees = frame.rotation
    if not degrees and "rotate" in stream.metadata:
        try:
            degrees = -int(float(stream.metadata["rotate"]))  # the tag counts clockwise
        except ValueError:
            degrees = 0
    return round(degrees / 90) % 4 * 90


def _count_packets(path: PathLike) -> int:
    """Video packets in the file: a demux-only pass, no decoding."""
    count = 0
    with av.open(str(path)) as container:
        try:
            for packet in container.demux(container.streams.video[0]):
                count += packet.size > 0
        except av.FFmpegError:
            pass  # count what is readable
    return count


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
    frames_skipped: int = 0  # dropped by sampling
    frames_duplicate: int = 0  # dropped as near-duplicates of the last frame kept
    frames_corrupt: int = 0  # packets that failed to decode + frames the decoder flagged
    # the frames written, in time order
    frame_names: list[str] = field(default_factory=list)
    frame_indices: list[int] = field(default_factory=list)
    frame_timestamps_s: list[float] = field(default_factory=list)
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
) -> ExtractionResult:
    """Decode ``path``, sample and dedupe frames, and hand each one to ``sink(name, bytes)``.

    ``sink`` is called from worker threads (up to ``cfg.upload_workers`` at once) and its
    exceptions propagate. Damaged packets are counted and skipped. Raises BadVideo for
    unusable input: not a video, over a limit, or no frame decodes at all.
    """
    log = log or _LOG
    started = time.monotonic()
    size = os.path.getsize(path)
    limit_bytes = cfg.max_file_size_mb * 1024 * 1024
    if size > limit_bytes:
        raise BadVideo(f"file size {_mb(size)} over limit {_mb(limit_bytes)}")
    info = probe(path)
    _check_limits(info, cfg)

    result = ExtractionResult.from_info(info, "extracted")
    run = _Extraction(info, cfg, sink, stem, video_ext, log, result)
    with _open(path) as container:
        run.decode(container)
    result.elapsed_s = time.monotonic() - started

    if result.frames_read == 0:
        if result.frames_corrupt:
            detail = f": {result.frames_corrupt} damaged packets/frames"
        else:
            detail = ": no video packets could be read"
        if run.last_error:
            detail += f" (last error: {run.last_error})"
        raise BadVideo("no decodable frames" + detail, info)
    speed = run.position / result.elapsed_s if result.elapsed_s > 0 else 0.0
    log.info(
        "extract %s: done, %d frames decoded, %d written (%d skipped by sampling, %d duplicates, %d corrupt) "
        "in %.1f s (%.0f fps)",
        stem,
        result.frames_read,
        result.frames_written,
        result.frames_skipped,
        result.frames_duplicate,
        result.frames_corrupt,
        result.elapsed_s,
        speed,
    )
    return result


def _check_limits(info: VideoInfo, cfg: ExtractionConfig) -> None:
    # the stored size is what the decoder allocates, so a portrait phone clip (stored
    # landscape, rotated for display) passes the same limits as its landscape twin
    width, height = info.stored_size
    if width > cfg.max_width or height > cfg.max_height:
        raise BadVideo(f"resolution {width}x{height} over limit {cfg.max_width}x{cfg.max_height}", info)
    duration = info.duration_s
    if duration is None and info.fps:
        duration = info.n_frames / info.fps
    if duration is not None and duration > cfg.max_duration_s:
        raise BadVideo(
            f"duration {_duration(duration, cfg.max_duration_s)} over limit "
            f"{_duration(cfg.max_duration_s, cfg.max_duration_s)}",
            info,
        )


def _mb(n_bytes: float) -> str:
    mb = n_bytes / 1024 / 1024
    return f"{mb:.1f} MB" if mb >= 1 else f"{mb:.3f} MB"


def _duration(seconds: float, scale: float) -> str:
    """Seconds in the unit that suits ``scale`` (the limit), so both sides read alike."""
    if scale >= 3600:
        return f"{seconds / 3600:.1f} h"
    if scale >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


class _Sampler:
    """Decides, frame by frame, which decoded frames to keep."""

    def __init__(self, cfg: ExtractionConfig):
        self.policy = cfg.sampling
        self.every_n = cfg.every_n
        self.step = 1.0 / cfg.fps
        self.next_t = 0.0

    def keep(self, index: int, t: float) -> bool:
        if self.policy == "every_n":
            return index % self.every_n == 0
        if self.policy == "fps":
            # first frame at or after each step of presentation time; works for
            # variable frame rates, and a gap in the stream skips the steps it spans
            if t < self.next_t - 1e-6:
                return False
            self.next_t = (int(t / self.step + 1e-6) + 1) * self.step
            return True
        return True  # "all", and "keyframes" (the decoder already dropped the rest)


class _Extraction:
    """One pass over one video: decode, sample, dedupe, and feed the encoder pool."""

    def __init__(self, info, cfg, sink, stem, video_ext, log, result):
        self.info, self.cfg, self.sink, self.log, self.result = info, cfg, sink, log, result
        self.stem, self.video_ext = stem, video_ext
        self.image_ext = cfg.image_format
        self.sampler = _Sampler(cfg)
        self.fallback_fps = info.fps or 30.0
        self.decoded = 0  # frames out of the decoder, including ones flagged corrupt
        self.position = 0  # frames into the video (differs from decoded for keyframes)
        self.last_index = -1
        self.last_thumb: np.ndarray | None = None
        self.last_error: str | None = None
        self.start_pts: int | None = None
        self.time_base = None
        self.stream = None
        self.reformatter = VideoReformatter()
        self.packets_seen = 0
        self.packet_positions: dict[int, int] = {}  # pts -> packets before it (keyframes mode)
        self.pool: ThreadPoolExecutor | None = None
        self.inflight: set[Future] = set()
        frame_bytes = max(1, info.width * info.height * 3)
        self.max_inflight = max(2, min(2 * cfg.upload_workers, _MAX_INFLIGHT_BYTES // frame_bytes))
        self.next_log = time.monotonic() + PROGRESS_EVERY_S
        self.started = time.monotonic()

    def decode(self, container) -> None:
        self.stream = stream = container.streams.video[0]
        if self.cfg.sampling == "keyframes":
            stream.codec_context.skip_frame = "NONKEY"
        # threading stays PyAV's default (slice threads, all CPUs): decoding the 60 s 720p
        # bench clip on 2 CPUs took 2.8 s so, 3.2 s with "FRAME" and 3.9 s with "AUTO"
        self.time_base = stream.time_base
        self.start_pts = stream.start_time
        self.pool = ThreadPoolExecutor(self.cfg.upload_workers, thread_name_prefix="framesift-frames")
        try:
            for packet in self._packets(container, stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:
                    self._corrupt(exc)
                    continue
                for frame in frames:
                    self._frame(frame)
            try:
                for frame in stream.decode(None):  # drain the decoder
                    self._frame(frame)
            except av.FFmpegError as exc:
                self._corrupt(exc)
            self._drain(all_done=True)
        except BaseException:
            self.pool.shutdown(wait=True, cancel_futures=True)
            raise
        self.pool.shutdown(wait=True)

    def _packets(self, container, stream):
        """Non-empty packets of the stream; a demux error is counted and reading resumes."""
        errors_in_a_row = 0
        while errors_in_a_row < _MAX_DEMUX_ERRORS:
            try:
                for packet in container.demux(stream):
                    errors_in_a_row = 0
                    if packet.size:  # empty ones are flush markers or dropped-frame stubs
                        self._remember_position(packet)
                        yield packet
                return
            except av.FFmpegError as exc:
                # a fresh demux() continues from where the reader stopped
                self._corrupt(exc)
                errors_in_a_row += 1
        self.log.warning("extract %s: giving up after %d demux errors in a row", self.stem, errors_in_a_row)

    def _remember_position(self, packet) -> None:
        if self.cfg.sampling == "keyframes" and packet.pts is not None:
            self.packet_positions[packet.pts] = self.packets_seen
            if len(self.packet_positions) > 512:  # the decoder is never this far behind
                del self.packet_positions[next(iter(self.packet_positions))]
        self.packets_seen += 1

    def _corrupt(self, exc: Exception | None = None, what: str = "packet") -> None:
        self.result.frames_corrupt += 1
        if exc is not None:
            self.last_error = _ffmpeg_message(exc)
        if self.result.frames_corrupt == 1:
            self.log.warning("extract %s: damaged %s skipped (%s)", self.stem, what, self.last_error)

    def _frame(self, frame) -> None:
        result = self.result
        self.decoded += 1
        t = self._time(frame)
        index = self._index(frame, t)
        self.last_index, self.position = index, index + 1
        if frame.is_corrupt:
            self._corrupt(what="frame")
            return
        result.frames_read += 1
        if not self.sampler.keep(index, t):
            result.frames_skipped += 1
        else:
            # one reformatter for the whole video: PyAV's per-frame one re-creates the
            # scaler each time, ~10x slower than the conversion itself
            image = self.reformatter.reformat(frame, format="bgr24").to_ndarray()
            if self._is_duplicate(image):
                result.frames_duplicate += 1
            else:
                self._submit(image, index, t, _rotation_of(frame, self.stream))
        if time.monotonic() >= self.next_log:
            self._log_progress()

    def _time(self, frame) -> float:
        """Presentation time in seconds since the stream start."""
        pts = frame.pts if frame.pts is not None else frame.dts
        if pts is None or self.time_base is None:
            return (self.decoded - 1) / self.fallback_fps
        if self.start_pts is None or (self.decoded == 1 and pts < self.start_pts):
            self.start_pts = pts  # no stream start time, or the first frame precedes it
        return float((pts - self.start_pts) * self.time_base)

    def _index(self, frame, t: float) -> int:
        if self.cfg.sampling != "keyframes":
            return self.decoded - 1
        # keyframes only: the position in the video is the number of packets before the
        # keyframe's own (exact for closed GOPs), so names match the other policies'
        position = self.packet_positions.get(frame.pts)
        if position is None:
            position = round(t * self.fallback_fps)
        return max(position, self.last_index + 1)

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

    def _submit(self, image: np.ndarray, index: int, t: float, rotation: int) -> None:
        name = frame_name(self.stem, index, self.info.n_frames, self.video_ext, self.image_ext)
        self._drain(all_done=False)
        self.inflight.add(self.pool.submit(self._encode_and_sink, name, image, rotation))
        self.result.frame_names.append(name)
        self.result.frame_indices.append(index)
        self.result.frame_timestamps_s.append(t)

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

    def _drain(self, *, all_done: bool) -> None:
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
            "extract %s: %d/%d frames decoded (%d%%), %d written, %.0f fps, ETA %.0f s",
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
    s3, bucket: str, key: str, etag: str, cfg: PipelineConfig, *, work_dir: PathLike, log=None
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
            result = extract_frames(tmp_path, ext_cfg, sink, stem=stem, video_ext=ext, log=log)
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
        "sampling": ext_cfg.model_dump(include={"sampling", "fps", "every_n", "dedupe"}),
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
