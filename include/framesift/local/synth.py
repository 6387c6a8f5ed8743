"""Synthetic videos for tests, the demo and benchmarks.

Each frame shows a few coloured shapes of three "classes" (red boxes, blue discs, green
triangles; a fourth, yellow rings, only where ``kinds`` asks for it) moving over a textured
background that drifts and changes hue over time, so
that frames sampled a second apart differ, while frames in an optional static segment are
identical (to exercise near-duplicate removal).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

# BGR colours of the shape classes; clips use the first three unless ``kinds`` names others
CLASS_COLOURS = {
    "box": (40, 40, 230),
    "disc": (230, 90, 30),
    "triangle": (40, 200, 60),
    "ring": (30, 210, 230),
}
DEFAULT_KINDS = ("box", "disc", "triangle")

# codec -> pixel format it is usually stored in
_DEFAULT_PIX_FMT = {"mjpeg": "yuvj420p", "libvpx-vp9": "yuv420p", "libx264": "yuv420p"}

# fast settings so that tests and benchmarks do not wait on the encoder
_DEFAULT_CODEC_OPTIONS = {
    "libx264": {"preset": "ultrafast"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "row-mt": "1"},
    "mjpeg": {"q:v": "5"},
}


def make_video(
    path: str | os.PathLike[str],
    *,
    seconds: float = 5.0,
    fps: float = 30,
    width: int = 320,
    height: int = 240,
    codec: str = "libx264",
    pix_fmt: str | None = None,
    gop_size: int | None = None,
    codec_options: dict[str, str] | None = None,
    container_format: str | None = None,
    container_options: dict[str, str] | None = None,
    rotation: int | None = None,
    vfr: bool = False,
    static_segment_s: float = 0.0,
    static_start_s: float = 1.0,
    n_objects: int = 5,
    seed: int = 0,
    kinds: list[str] | None = None,
) -> Path:
    """Write a synthetic clip to ``path`` and return the path.

    ``gop_size``: frames between keyframes (default: one keyframe a second); for libx264
    scene-cut detection is turned off, so a clip has exactly ceil(n_frames / gop_size)
    keyframes. ``rotation``: display-matrix rotation in degrees counterclockwise (PyAV's
    convention, what :attr:`av.VideoFrame.rotation` reads back); the pixels are stored
    unrotated. ``vfr``: the first half of the clip runs at ``2 * fps`` and the second at
    ``fps / 2``, with timestamps in a 1/90000 time base. ``static_segment_s``: this many
    seconds from ``static_start_s`` on repeat one identical frame. ``kinds``: the class of
    each object (default: the classes in turn), e.g. to make a clip with class imbalance;
    :func:`ground_truth` gives the boxes of any frame of the clip.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    pix_fmt = pix_fmt or _DEFAULT_PIX_FMT.get(codec, "yuv420p")
    gop_size = gop_size or max(1, round(fps))
    options = {**_DEFAULT_CODEC_OPTIONS.get(codec, {}), **(codec_options or {})}
    if codec == "libx264":
        x264 = f"keyint={gop_size}:min-keyint={gop_size}:scenecut=0"
        options["x264-params"] = f"{x264}:{options['x264-params']}" if "x264-params" in options else x264

    times = _frame_times(seconds, fps, vfr)
    painter = Painter(width, height, n_objects, rng, kinds)

    with av.open(str(path), "w", format=container_format, options=container_options or {}) as out:
        if vfr:
            stream = out.add_stream(codec, rate=round(fps * 2), options=options)
            time_base = Fraction(1, 90_000)
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
        else:
            rate = Fraction(fps).limit_denominator(1001)
            stream = out.add_stream(codec, rate=rate, options=options)
            time_base = 1 / rate
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.gop_size = gop_size
        if rotation:
            stream.set_display_rotation(rotation)

        static_image = None
        for t in times:
            in_static = static_segment_s > 0 and static_start_s <= t < static_start_s + static_segment_s
            if in_static:
                if static_image is None:
                    static_image = painter.paint(t)
                image = static_image
            else:
                image = painter.paint(t)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = round(t / time_base)
            frame.time_base = time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _frame_times(seconds: float, fps: float, vfr: bool) -> list[float]:
    if not vfr:
        return [i / fps for i in range(max(1, round(seconds * fps)))]
    # computed from integers, not accumulated, so that times land exactly on the grid
    first_half = [i / (2 * fps) for i in range(round(seconds * fps))]
    second_half = [seconds / 2 + j * 2 / fps for j in range(round(seconds * fps / 4))]
    return first_half + second_half


class Painter:
    """Draws frame ``t`` of the clip; deterministic given the random generator."""

    def __init__(
        self,
        width: int,
        height: int,
        n_objects: int,
        rng: np.random.Generator,
        kinds: list[str] | None = None,
        palette: tuple[float, float, float] | None = None,
        hue_period_s: float = 10.0,
    ):
        """``palette``: per-channel (B, G, R) gains of the background only (a scene's own
        colours; objects keep their class colours). ``hue_period_s``: the background's tint
        cycles once in this many seconds."""
        self.width, self.height = width, height
        self.palette = palette
        self.hue_period_s = hue_period_s
        # smooth noise texture twice the frame size; each frame shows a drifting window
        noise = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1), dtype=np.uint8)
        texture = cv2.resize(noise, (2 * width, 2 * height), interpolation=cv2.INTER_CUBIC)
        self.texture = cv2.GaussianBlur(texture, (0, 0), 2)
        self._ramp = np.arange(256, dtype=np.float32)
        kinds = list(kinds or DEFAULT_KINDS)
        self.objects = [
            {
                "kind": kinds[i % len(kinds)],
                "x": rng.uniform(0.1, 0.9),
                "y": rng.uniform(0.1, 0.9),
                "vx": rng.uniform(-0.25, 0.25),
                "vy": rng.uniform(-0.25, 0.25),
                "size": rng.uniform(0.06, 0.16),
            }
            for i in range(n_objects)
        ]

    def _placed(self, t: float):
        """(object, centre x, centre y, radius) of each object at time ``t``, in pixels."""
        w, h = self.width, self.height
        for obj in self.objects:
            r = obj["size"] * min(w, h)
            yield obj, _bounce(obj["x"] + obj["vx"] * t) * w, _bounce(obj["y"] + obj["vy"] * t) * h, r

    def boxes(self, t: float) -> list[tuple[str, tuple[int, int, int, int]]]:
        """(class, (x, y, w, h) pixels clipped to the frame) of each object drawn at ``t``."""
        out = []
        for obj, cx, cy, r in self._placed(t):
            half_h = r * 0.7 if obj["kind"] == "box" else r
            x0, y0 = max(0, int(cx - r)), max(0, int(cy - half_h))
            x1, y1 = min(self.width, int(cx + r)), min(self.height, int(cy + half_h))
            if x1 > x0 and y1 > y0:
                out.append((obj["kind"], (x0, y0, x1 - x0, y1 - y0)))
        return out

    def paint(self, t: float) -> np.ndarray:
        w, h = self.width, self.height
        dx = int(w * 0.5 * (1 + math.sin(t * 0.7))) % w
        dy = int(h * 0.5 * (1 + math.cos(t * 0.5))) % h
        grey = self.texture[dy : dy + h, dx : dx + w]
        # tint the texture with a hue that cycles every ~10 s
        phase = 2 * math.pi * t / self.hue_period_s
        channels = []
        for k in range(3):
            gain = 0.6 + 0.4 * math.sin(phase + k * 2.1)
            if self.palette is not None:
                gain = min(1.0, gain * self.palette[k])
            channels.append(cv2.LUT(grey, (self._ramp * gain).astype(np.uint8)))
        image = cv2.merge(channels)
        for obj in self.objects:
            cx = _bounce(obj["x"] + obj["vx"] * t) * w
            cy = _bounce(obj["y"] + obj["vy"] * t) * h
            r = obj["size"] * min(w, h)
            colour = CLASS_COLOURS[obj["kind"]]
            if obj["kind"] == "box":
                cv2.rectangle(
                    image, (int(cx - r), int(cy - r * 0.7)), (int(cx + r), int(cy + r * 0.7)), colour, -1
                )
            elif obj["kind"] == "disc":
                cv2.circle(image, (int(cx), int(cy)), int(r), colour, -1)
            elif obj["kind"] == "ring":
                cv2.circle(image, (int(cx), int(cy)), int(r), colour, max(2, int(r / 3)))
            else:
                pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], dtype=np.int32)
                cv2.fillConvexPoly(image, pts, colour)
        return image


def ground_truth(
    times: list[float],
    *,
    width: int = 320,
    height: int = 240,
    n_objects: int = 5,
    seed: int = 0,
    kinds: list[str] | None = None,
) -> list[list[tuple[str, tuple[int, int, int, int]]]]:
    """The true boxes at each of ``times`` (seconds) of the clip ``make_video`` writes with
    the same size, objects, seed and kinds (the painter is rebuilt from the same seed)."""
    painter = Painter(width, height, n_objects, np.random.default_rng(seed), kinds)
    return [painter.boxes(t) for t in times]


def _bounce(x: float) -> float:
    """Fold a coordinate into [0, 1] so objects bounce off the frame edges."""
    x = x % 2.0
    return 2.0 - x if x > 1.0 else x


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Packet-level facts about a clip (for tests): frames, keyframes, pts in seconds."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts, keys = [], 0
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            keys += bool(packet.is_keyframe)
            if packet.pts is not None:
                pts.append(float(packet.pts * packet.time_base))
    return {"frames": len(pts), "keyframes": keys, "pts_s": sorted(pts)}
