"""Damaged copies of videos, for testing how extraction copes with bad input."""

from __future__ import annotations

import os
import random
from pathlib import Path

PathLike = str | os.PathLike[str]


def truncated_copy(src: PathLike, dst: PathLike, keep_fraction: float) -> Path:
    """Copy the first ``keep_fraction`` of the bytes of ``src`` (a cut-off upload)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep_fraction)])
    return Path(dst)


def corrupted_copy(
    src: PathLike,
    dst: PathLike,
    *,
    start_fraction: float = 0.4,
    end_fraction: float = 0.6,
    n_chunks: int = 8,
    chunk_size: int = 256,
    seed: int = 0,
) -> Path:
    """Copy ``src`` with ``n_chunks`` random byte runs overwritten between the two fractions.

    The default region (40%..60% of the file) leaves the container header and the first
    part of the stream intact, so a reader decodes the start cleanly and then hits damage.
    """
    data = bytearray(Path(src).read_bytes())
    rng = random.Random(seed)
    lo, hi = int(len(data) * start_fraction), int(len(data) * end_fraction) - chunk_size
    for _ in range(n_chunks):
        at = rng.randrange(lo, max(lo + 1, hi))
        data[at : at + chunk_size] = rng.randbytes(chunk_size)
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def damaged_packet_copy(src: PathLike, dst: PathLike, *, at_s: float, seed: int = 0) -> Path:
    """Copy ``src`` (H.264 in MP4) with the payload of the packet presented at ``at_s``
    overwritten by noise after its 4-byte NAL length: invalid NAL units mid-stream. That
    packet fails to decode and the frames after it, until the next keyframe, decode from
    damaged references without an error (smeared macroblocks)."""
    import av

    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        hit = None
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None:
                if abs(float((packet.pts - start) * stream.time_base) - at_s) < 1e-3:
                    hit = (packet.pos, packet.size, packet.is_keyframe)
                    break
    if hit is None or hit[2]:
        raise ValueError(f"{src}: no non-key packet at {at_s} s")
    data = bytearray(Path(src).read_bytes())
    pos, size, _ = hit
    data[pos + 4 : pos + size] = random.Random(seed).randbytes(size - 4)
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def zero_byte_file(dst: PathLike) -> Path:
    Path(dst).write_bytes(b"")
    return Path(dst)


def text_file(dst: PathLike, text: str = "this is not a video, just some text\n" * 20) -> Path:
    """A text file, typically given a video name like ``notes.mp4``."""
    Path(dst).write_text(text)
    return Path(dst)


def garbled_payload_copy(src: PathLike, dst: PathLike, *, seed: int = 0) -> Path:
    """Copy an MP4 whose index (moov, at the front) is intact but whose frame data is noise.

    Needs ``movflags=faststart`` so that everything after the ``mdat`` tag is frame data.
    """
    data = bytearray(Path(src).read_bytes())
    start = data.find(b"mdat") + 4
    if start < 4 or data.find(b"moov") > start:
        raise ValueError(f"{src}: not an MP4 with its moov before mdat")
    data[start:] = random.Random(seed).randbytes(len(data) - start)
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def zero_frame_video(dst: PathLike) -> Path:
    """An MP4 whose header is written but which holds no frames."""
    import av

    with av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        out.start_encoding()
    return Path(dst)


def audio_only_file(dst: PathLike, seconds: float = 1.0) -> Path:
    """A silent AAC track in an MP4: a valid media file with no video stream."""
    import av
    import numpy as np

    rate = 8000
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("aac", rate=rate)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, int(rate * seconds)), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = rate, 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return Path(dst)
