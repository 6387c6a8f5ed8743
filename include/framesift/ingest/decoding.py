"""Decoding one video: the decode plan, sampling, and damage flags, GOP by GOP.

Plain Python (no Airflow). A :class:`GopDecoder` reads one container packet by packet and
decodes what the decode plan (:mod:`framesift.ingest.packets`) needs: GOPs holding no
sampled frame are not decoded, a GOP only up to its last sampled frame (then the decoder
is drained and reset), a keyframe within the tolerance stands in for a sampling time, and
non-reference frames are skipped when the tolerance covers them. Several decoders may
split a video, each taking every n-th GOP on its own container;
:mod:`framesift.ingest.extract` merges their frames back into time order.

Damage: a packet that fails to decode (or a lost one) makes the frames decoded after it,
until the next keyframe, come from damaged references (smeared macroblocks that decode
without an error); those frames are flagged and the time ranges recorded.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from framesift.config.schema import ExtractionConfig
from framesift.ingest.packets import DecodePlan, PacketIndex, plan_decoding, sampling_times
from framesift.ingest.probe import VideoInfo, ffmpeg_message, rotation_of

# demux errors in a row after which the rest of the file counts as unreadable
_MAX_DEMUX_ERRORS = 8
# non-reference frames are skipped only when the tolerance spans at least this many frames
_NONREF_MIN_FRAMES = 3


@dataclass
class DecodeCounts:
    """What a decoder did with the packets of the GOPs it owns."""

    frames_read: int = 0  # decoded cleanly
    frames_skipped: int = 0  # decoded and dropped by sampling
    frames_undecoded: int = 0  # packets never decoded: sampling keeps nothing of them
    frames_corrupt: int = 0  # packets that failed to decode (or were lost) + frames the decoder flagged
    frames_damaged_decoded: int = 0  # frames decoded from damaged references (kept or not)
    frames_damaged: int = 0  # sampled damaged frames dropped (damaged_frames: drop)
    first_decode_error: str | None = None


@dataclass
class KeptFrame:
    """A sampled frame out of a decoder: its timestamp, true position, time, BGR pixels."""

    pts: int | None
    index: int
    t: float
    image: np.ndarray
    rotation: int
    damaged: bool


class GopDecoder:
    """Decodes what the plan needs of one video, samples it and flags damage.

    With ``share=(w, n)`` it decodes only the GOPs ``g`` with ``max(g, 0) % n == w`` and
    passes over the others' packets (demuxing is ~1 % of decoding), so ``n`` decoders on
    their own containers split one video between CPU cores. ``emit`` gets each kept frame
    (:class:`KeptFrame`) and, when the decoder leaves a GOP it owns, the GOP's number: the
    order in which extraction merges the decoders' output back into time order
    (:mod:`framesift.ingest.extract`).
    """

    def __init__(
        self,
        info: VideoInfo,
        cfg: ExtractionConfig,
        stem: str,
        log: logging.Logger,
        index: PacketIndex | None,
        share: tuple[int, int] = (0, 1),
    ):
        self.info, self.cfg, self.stem, self.log, self.index = info, cfg, stem, log, index
        self.worker, self.n_workers = share
        self.counts = DecodeCounts()
        self.fallback_fps = info.fps or 30.0
        self.decoded = 0  # frames out of the decoder, including damaged ones
        self.position = 0  # frames into the video
        self.last_index = -1
        self.last_error: str | None = None
        self.first_error_s: float | None = None
        self.start_pts: int | None = None
        self.time_base = None
        self.stream = None
        self.gop = -1
        self.stand_in_for: int | None = None  # an owned GOP whose keyframe after it is being decoded
        self.emit: Callable[[Any], None] = lambda item: None
        self.reformatter = VideoReformatter()
        # sampling: key picks (pts) and the times still waiting for a frame (pts, sorted)
        self.plan: DecodePlan | None = None
        self.targets: collections.deque[int] = collections.deque()
        self.every_n_fallback = False
        self.fps_fallback = False
        self.next_t = 0.0
        # damage: a decode error poisons the frames decoded after it until the next keyframe
        self.damage_active = False
        self.damage_end_pts: int | None = None
        self.damage_ranges: list[list[float]] = []
        # intentional gaps (a GOP's tail not decoded): frames before the resume point are leftovers
        self.resume_pts: int | None = None
        self.last_pts: int | None = None

    def owns(self, gop: int) -> bool:
        return max(gop, 0) % self.n_workers == self.worker

    # -- set-up

    def _configure(self, stream) -> None:
        cfg = self.cfg
        ctx = stream.codec_context
        if cfg.decode_threads != 1:
            stream.thread_type = {"slice": "SLICE", "frame": "FRAME", "auto": "AUTO"}[cfg.decode_threading]
            stream.thread_count = cfg.decode_threads
        else:
            stream.thread_count = 1
        self.time_base = stream.time_base
        self.start_pts = stream.start_time
        idx = self.index
        if idx is not None and len(idx.sorted_pts):
            self.start_pts = int(idx.sorted_pts[0])
        policy = cfg.sampling
        if policy == "keyframes":
            ctx.skip_frame = "NONKEY"
            return
        if policy not in ("fps", "every_n") or idx is None or self.time_base is None:
            # no usable index: decode everything, sample frame by frame
            self.every_n_fallback = policy == "every_n"
            self.fps_fallback = policy == "fps"
            return
        times = sampling_times(idx, policy=policy, step_s=1.0 / cfg.fps, every_n=cfg.every_n,
                               time_base=self.time_base)  # fmt: skip
        period = 1.0 / cfg.fps if policy == "fps" else cfg.every_n / self.fallback_fps
        tol_s = cfg.keyframe_tolerance * period
        if cfg.skip_decoding and idx.complete:
            self.plan = plan = plan_decoding(idx, times, int(tol_s / float(self.time_base)))
            self.targets = collections.deque(t for t in plan.targets if self.owns(plan.target_gop[t]))
            # non-reference frames are never needed when a frame a few frames off may stand in
            if tol_s * self.fallback_fps >= _NONREF_MIN_FRAMES:
                ctx.skip_frame = "NONREF"
        else:
            self.targets = collections.deque(times)

    # -- decoding

    def run(self, container, emit: Callable[[Any], None]) -> None:
        self.emit = emit
        self.stream = stream = container.streams.video[0]
        self._configure(stream)
        ctx = stream.codec_context
        plan = self.plan
        feeding, until = plan is None, None
        for packet in self._packets(container, stream):
            if packet.is_keyframe:
                left, self.gop = self.gop, self.gop + 1
                if plan is not None:
                    owned = self.owns(self.gop)
                    until = plan.gop_until.get(self.gop) if owned else None
                    if until is None and (owned or self.owns(left)) and self._pending_before(packet.pts):
                        until = packet.pts  # a time the last GOP could not give: its next keyframe
                    if until is None and feeding:
                        self._drain(ctx)  # what the decoder still holds belongs to the GOP left
                    if until is not None and not feeding:
                        self.resume_pts = packet.pts
                    feeding = until is not None
                if self.damage_active and self.damage_end_pts is None:
                    self.damage_end_pts = packet.pts
                self._close_stand_in()
                if self.owns(left):
                    if feeding and not self.owns(self.gop):
                        self.stand_in_for = left  # its end is told once the keyframe is decoded
                    else:
                        emit(left)
            if not feeding:
                if self.owns(self.gop):
                    self.counts.frames_undecoded += 1
                continue
            try:
                frames = ctx.decode(packet)
            except av.FFmpegError as exc:
                if not (
                    self.resume_pts is not None and packet.pts is not None and packet.pts < self.resume_pts
                ):
                    self._error(exc, packet.pts)
                continue
            for frame in frames:
                self._frame(frame)
            if (
                plan is not None
                and until is not None
                and self.last_pts is not None
                and self.last_pts >= until
            ):
                self._drain(ctx)  # the GOP gave what sampling needs: skip its tail
                feeding = False
                self._close_stand_in()
        self._drain(ctx, reset=False)
        self._close_stand_in()
        if self.owns(self.gop):
            emit(self.gop)
        self._close_damage()

    def _close_stand_in(self) -> None:
        if self.stand_in_for is not None:
            self.emit(self.stand_in_for)
            self.stand_in_for = None

    def _pending_before(self, pts) -> bool:
        return bool(self.targets) and pts is not None and self.targets[0] < pts

    def _drain(self, ctx, *, reset: bool = True) -> None:
        try:
            for frame in ctx.decode(None):
                self._frame(frame)
        except av.FFmpegError as exc:
            self._error(exc, None)
        if reset:
            ctx.flush_buffers()

    def _packets(self, container, stream):
        """Non-empty packets of the stream; a demux error is counted and reading resumes."""
        errors_in_a_row = 0
        while errors_in_a_row < _MAX_DEMUX_ERRORS:
            try:
                for packet in container.demux(stream):
                    errors_in_a_row = 0
                    if packet.size:  # empty ones are flush markers or dropped-frame stubs
                        yield packet
                return
            except av.FFmpegError as exc:
                # a fresh demux() continues from where the reader stopped
                if self.owns(self.gop):
                    self._error(exc, None, what="demux")
                errors_in_a_row += 1
        if self.worker == 0:
            self.log.warning(
                "extract %s: giving up after %d demux errors in a row", self.stem, errors_in_a_row
            )

    # -- damage

    def _error(self, exc: Exception | None, pts, what: str = "packet") -> None:
        """A packet that did not decode (or was lost): counted; the frames decoded after it
        until the next keyframe come from damaged references and are flagged."""
        self.counts.frames_corrupt += 1
        message = ffmpeg_message(exc) if exc is not None else f"the decoder flagged a {what} as corrupt"
        self.last_error = message
        start = self._seconds(pts) if pts is not None else self._seconds(self.last_pts)
        if self.counts.first_decode_error is None:
            self.counts.first_decode_error, self.first_error_s = message, start
            self.log.warning(
                "extract %s: damaged %s at %s: %s%s",
                self.stem,
                what,
                f"{self._seconds(pts):.2f} s" if pts is not None else "an unknown time",
                message,
                "" if what == "frame" else "; frames until the next keyframe are flagged damaged",
            )
        if not self.damage_active:
            self.damage_active = True
            self.damage_end_pts = None
            self.damage_ranges.append([round(start, 3), round(start, 3)])
        else:
            self.damage_ranges[-1][0] = min(self.damage_ranges[-1][0], round(start, 3))

    def _close_damage(self) -> None:
        """End the last range at the GOP's last frame (what the damage reaches, decoded or not)."""
        idx = self.index
        for rng in self.damage_ranges:
            if idx is not None and self.time_base is not None:
                end = idx.gop_end_pts(int(rng[0] / float(self.time_base)) + (self.start_pts or 0))
                if end is not None:
                    rng[1] = round(max(rng[1], self._seconds(end)), 3)

    def _is_damaged(self, frame, pts) -> bool:
        if frame.is_corrupt:  # the decoder itself flagged it: this frame, not its successors
            if self.damage_active:
                self.counts.frames_corrupt += 1
            else:
                self._error(None, pts, what="frame")
                self.damage_active = False
            return True
        if not self.damage_active:
            return False
        if self.damage_end_pts is not None and pts is not None and pts >= self.damage_end_pts:
            self.damage_active = False
            return False
        if pts is not None and self.damage_ranges:
            self.damage_ranges[-1][1] = max(self.damage_ranges[-1][1], round(self._seconds(pts), 3))
        return True

    # -- frames

    def _frame(self, frame) -> None:
        counts = self.counts
        pts = frame.pts if frame.pts is not None else frame.dts
        if self.resume_pts is not None:
            if pts is not None and pts < self.resume_pts:
                return  # a leftover of the GOP before an intentional gap: neither kept nor damage
            self.resume_pts = None
        self.decoded += 1
        t = self._time(pts)
        index = self._index(pts, t)
        self.last_index, self.position = index, index + 1
        if pts is not None:
            self.last_pts = pts
        damaged = self._is_damaged(frame, pts)
        if damaged:
            counts.frames_damaged_decoded += 1
        else:
            counts.frames_read += 1
        if not self._keep(index, pts, t):
            counts.frames_skipped += 1
        elif damaged and self.cfg.damaged_frames == "drop":
            counts.frames_damaged += 1
        else:
            # one reformatter per decoder: PyAV's per-frame one re-creates the scaler each
            # time, ~10x slower than the conversion itself
            image = self.reformatter.reformat(frame, format="bgr24").to_ndarray()
            self.emit(KeptFrame(pts, index, t, image, rotation_of(frame, self.stream), damaged))

    def _keep(self, index: int, pts, t: float) -> bool:
        policy = self.cfg.sampling
        if policy in ("all", "keyframes"):
            return True
        if self.every_n_fallback:
            return index % self.cfg.every_n == 0
        if self.fps_fallback or pts is None:
            # first frame at or after each step of presentation time; works for variable
            # frame rates, and a gap in the stream skips the steps it spans
            step = 1.0 / self.cfg.fps
            if t < self.next_t - 1e-6:
                return False
            self.next_t = (int(t / step + 1e-6) + 1) * step
            return True
        key = self.plan is not None and pts in self.plan.key_picks
        hit = bool(self.targets) and self.targets[0] <= pts
        while self.targets and self.targets[0] <= pts:
            self.targets.popleft()
        return key or hit

    def _seconds(self, pts) -> float:
        if pts is None or self.time_base is None:
            return 0.0
        return float((pts - (self.start_pts or 0)) * self.time_base)

    def _time(self, pts) -> float:
        """Presentation time in seconds since the stream start."""
        if pts is None or self.time_base is None:
            return (self.decoded - 1) / self.fallback_fps
        if self.start_pts is None or (self.decoded == 1 and pts < self.start_pts):
            self.start_pts = pts  # no stream start time, or the first frame precedes it
        return float((pts - self.start_pts) * self.time_base)

    def _index(self, pts, t: float) -> int:
        """The frame's true position: the rank of its timestamp among all packets (so
        skipped, undecoded and damaged frames keep their places)."""
        if self.index is not None and pts is not None:
            return max(self.index.position(pts), self.last_index + 1)
        if self.cfg.sampling == "keyframes" or self.counts.frames_corrupt:
            return max(round(t * self.fallback_fps), self.last_index + 1)
        return self.decoded - 1
