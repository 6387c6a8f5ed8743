"""Probe a video: container, codec, display size and rotation, frame rate, duration,
frame count (from the header, else counted packets). Raises :class:`BadVideo` for input
that cannot be used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import av

from framesift.config.schema import ExtractionConfig

PathLike = str | os.PathLike[str]

# packets probe() reads at most while looking for a first frame (for the rotation)
_PROBE_PACKETS = 64


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
    container = open_video(path)
    with container:
        if not container.streams.video:
            raise BadVideo("no video stream")
        stream = container.streams.video[0]
        width, height, rotation = first_frame_geometry(container, stream)
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


def open_video(path: PathLike) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except (av.FFmpegError, ValueError) as exc:
        raise BadVideo(f"not a video: {ffmpeg_message(exc)}") from None


def ffmpeg_message(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def first_frame_geometry(container, stream) -> tuple[int, int, int]:
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
                width, height, rotation = frame.width, frame.height, rotation_of(frame, stream)
                break
    except av.FFmpegError:
        pass  # damaged early on; extraction will count the damage
    return width, height, rotation


def rotation_of(frame, stream) -> int:
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


def check_limits(info: VideoInfo, cfg: ExtractionConfig) -> None:
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
            f"duration {duration_text(duration, cfg.max_duration_s)} over limit "
            f"{duration_text(cfg.max_duration_s, cfg.max_duration_s)}",
            info,
        )


def mb_text(n_bytes: float) -> str:
    mb = n_bytes / 1024 / 1024
    return f"{mb:.1f} MB" if mb >= 1 else f"{mb:.3f} MB"


def duration_text(seconds: float, scale: float) -> str:
    """Seconds in the unit that suits ``scale`` (the limit), so both sides read alike."""
    if scale >= 3600:
        return f"{seconds / 3600:.1f} h"
    if scale >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"
