"""Extraction at the decode floor (GOP tails and empty GOPs not decoded, keyframes and
reference frames standing in within the tolerance, non-reference frames skipped) and
damaged frames (flagged until the next keyframe, true positions kept)."""

from __future__ import annotations

import json
import threading

import av
import numpy as np
import pytest

from framesift.config.schema import ExtractionConfig
from framesift.ingest import extract as extract_module
from framesift.ingest.damage import damage_summary
from framesift.ingest.decoding import GopDecoder
from framesift.ingest.packets import index_packets
from framesift.local.synth import make_video
from tests import videofaults
from tests.unit.test_video import Collect, extract


def config(**kwargs) -> ExtractionConfig:
    kwargs.setdefault("dedupe", {"enabled": False})
    kwargs.setdefault("upload_workers", 2)
    return ExtractionConfig(**kwargs)


def decode_all(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(container.streams.video[0])]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("floor")
    return {
        # GOPs of 25 frames, no B-frames (ultrafast)
        "gop25": make_video(d / "gop25.mp4", seconds=5, gop_size=25),
        # B-frames and long GOPs, like camera footage
        "bframes": make_video(
            d / "bframes.mp4", seconds=6, gop_size=60, codec_options={"preset": "veryfast"}
        ),
        # keyframes every 3 s: damage at 1.0 s reaches until 2.97 s
        "gop90": make_video(d / "gop90.mp4", seconds=6, gop_size=90, codec_options={"preset": "veryfast"}),
    }


def test_the_packet_index_gives_true_positions(clips):
    idx = index_packets(str(clips["bframes"]))
    assert idx.n_packets == 180 and idx.complete
    assert len(idx.keyframe_pts) == 3
    # decode order differs from presentation order (B-frames), positions follow presentation
    assert not np.array_equal(idx.pts, idx.sorted_pts)
    assert [idx.position(int(p)) for p in idx.sorted_pts[:5]] == [0, 1, 2, 3, 4]


def test_keyframes_stand_in_within_half_a_period_with_true_timestamps(clips):
    result, sink = extract(clips["gop25"], config(sampling="fps", fps=1.0))
    # targets 0, 1, 2, 3, 4 s; keyframes every 25 frames (0.83 s): the nearest one within 0.5 s
    assert result.frame_indices == [0, 25, 50, 100, 125]
    assert result.frame_timestamps_s == pytest.approx([i / 30 for i in result.frame_indices])
    assert result.frames_read == 5  # one keyframe packet each, nothing else decoded
    full = decode_all(clips["gop25"])
    for name, i in zip(result.frame_names, result.frame_indices, strict=True):
        assert np.array_equal(sink.image(name), full[i])


def test_exact_sampling_with_skipping_gives_the_frames_of_a_full_decode(clips):
    exact = dict(sampling="fps", fps=2.0, keyframe_tolerance=0.0)
    fast, fast_sink = extract(clips["bframes"], config(**exact))
    slow, slow_sink = extract(clips["bframes"], config(**exact, skip_decoding=False))
    assert fast.frame_names == slow.frame_names and fast.frame_indices == [15 * i for i in range(12)]
    assert fast.frame_timestamps_s == pytest.approx(slow.frame_timestamps_s)
    for name in fast.frame_names:
        assert fast_sink.frames[name] == slow_sink.frames[name]
    assert fast.frames_read < slow.frames_read
    assert fast.frames_undecoded > 0


def test_non_reference_frames_are_skipped_within_the_tolerance(clips):
    result, sink = extract(clips["bframes"], config(sampling="fps", fps=1.0))
    assert len(result.frame_indices) == 6
    for second, (i, t) in enumerate(zip(result.frame_indices, result.frame_timestamps_s, strict=True)):
        assert abs(t - second) <= 0.5 and t == pytest.approx(i / 30)
    full = decode_all(clips["bframes"])
    for name, i in zip(result.frame_names, result.frame_indices, strict=True):
        assert np.array_equal(sink.image(name), full[i])  # the frame at that position, exactly
    everything, _ = extract(clips["bframes"], config(sampling="fps", fps=1.0, skip_decoding=False))
    assert result.frames_read < everything.frames_read / 2


@pytest.mark.parametrize("threading", [{"decode_threads": 0, "decode_threading": "frame"},
                                       {"decode_threads": 2, "decode_threading": "slice"}])  # fmt: skip
def test_threading_modes_give_the_same_frames(clips, threading):
    plain, plain_sink = extract(clips["bframes"], config(sampling="fps", fps=1.0))
    other, other_sink = extract(clips["bframes"], config(sampling="fps", fps=1.0, **threading))
    assert other.frame_names == plain.frame_names
    assert all(other_sink.frames[n] == plain_sink.frames[n] for n in plain.frame_names)


# ---------------------------------------------------------------------------- damaged frames


@pytest.fixture(scope="module")
def damaged(clips, tmp_path_factory):
    return videofaults.damaged_packet_copy(
        clips["gop90"], tmp_path_factory.mktemp("damaged") / "damaged.mp4", at_s=1.0
    )


def test_frames_decoded_from_damaged_references_are_flagged(damaged):
    result, sink = extract(damaged, config(sampling="fps", fps=1.0, keyframe_tolerance=0.0))
    assert result.status == "extracted"
    assert result.frames_written == 6
    # the packet at 1.0 s fails: 1.03 s stands in for it; it and 2.0 s are decoded from damage
    assert result.frame_indices == [0, 31, 60, 90, 120, 150]  # true positions, no shift
    assert result.frames_damaged == 2
    assert result.damaged_frames == [result.frame_names[1], result.frame_names[2]]
    assert result.first_decode_error.startswith("Invalid data found")
    assert result.damage_ranges_s == [[1.0, pytest.approx(89 / 30, abs=1e-3)]]
    assert result.frames_corrupt == 1
    assert damage_summary(result.to_manifest()).startswith("1.0–3.0 s: Invalid data found")
    manifest = json.loads(json.dumps(result.to_manifest()))
    assert manifest["damaged_frames"] == result.damaged_frames
    assert set(sink.frames) == set(result.frame_names)


def test_damaged_frames_can_be_dropped_or_included(damaged):
    dropped, sink = extract(
        damaged, config(sampling="fps", fps=1.0, keyframe_tolerance=0.0, damaged_frames="drop")
    )
    assert dropped.frame_indices == [0, 90, 120, 150] and dropped.frames_damaged == 2
    assert dropped.damaged_frames == [] and len(sink.frames) == 4
    included, _ = extract(
        damaged, config(sampling="fps", fps=1.0, keyframe_tolerance=0.0, damaged_frames="include")
    )
    assert included.frames_written == 6 and included.frames_damaged == 2  # counted, still listed
    assert len(included.damaged_frames) == 2


def test_damage_is_flagged_with_the_decode_floor_on(damaged):
    result, _ = extract(damaged, config(sampling="fps", fps=1.0))
    assert result.frames_damaged >= 1 and result.first_decode_error
    assert all(
        1.0 <= result.frame_timestamps_s[result.frame_names.index(n)] < 3.0 for n in result.damaged_frames
    )
    assert result.frame_indices[0] == 0 and 90 in result.frame_indices


# ------------------------------------------------------------- decoders splitting the GOPs

_SAME = ("frame_names", "frame_indices", "frame_timestamps_s", "frame_metadata", "frames_read",
         "frames_skipped", "frames_undecoded", "frames_corrupt", "frames_damaged_decoded",
         "frames_damaged", "damaged_frames", "first_decode_error", "damage_ranges_s")  # fmt: skip
_CASES = {
    "B-frames, 1 fps, stand-ins": ("bframes", {"sampling": "fps", "fps": 1.0}),
    "B-frames, exact 2 fps": ("bframes", {"sampling": "fps", "fps": 2.0, "keyframe_tolerance": 0.0}),
    "short GOPs, every 7th": ("gop25", {"sampling": "every_n", "every_n": 7}),
    "damaged, exact": ("damaged", {"sampling": "fps", "fps": 1.0, "keyframe_tolerance": 0.0}),
    "damaged, dropped": ("damaged", {"sampling": "fps", "fps": 3.0, "damaged_frames": "drop"}),
}


@pytest.mark.parametrize("case", list(_CASES))
def test_decoders_splitting_the_gops_give_what_one_decoder_gives(clips, damaged, case):
    clip, settings = _CASES[case]
    path = damaged if clip == "damaged" else clips[clip]
    n_gops = len(index_packets(str(path)).keyframe_pts)
    one, one_sink = extract(path, config(decode_workers=1, **settings))
    assert one.decoders == 1 and one.frames_written > 2
    for workers in (2, 3):
        many, many_sink = extract(path, config(decode_workers=workers, **settings))
        assert many.decoders == min(workers, n_gops) > 1
        for name in _SAME:
            assert getattr(many, name) == getattr(one, name), (workers, name)
        assert many_sink.frames == one_sink.frames


def test_a_failing_decoder_thread_fails_the_extraction_and_stops_the_others(clips, monkeypatch):
    real_run = GopDecoder.run

    def second_decoder_breaks(self, container, emit):
        if self.worker == 1:
            raise RuntimeError("decoder 1 broke")
        real_run(self, container, emit)

    monkeypatch.setattr(GopDecoder, "run", second_decoder_breaks)
    with pytest.raises(RuntimeError, match="decoder 1 broke"):
        extract(clips["gop25"], config(sampling="fps", fps=5.0, decode_workers=3))
    assert not [t for t in threading.enumerate() if t.name.startswith("framesift-decode")]


def test_a_failing_sink_stops_the_decoder_threads(clips):
    def broken_sink(name, data):
        raise ConnectionError("S3 is down")

    with pytest.raises(ConnectionError, match="S3 is down"):
        extract_module.extract_frames(
            clips["gop25"], config(sampling="all", decode_workers=3), broken_sink, stem="x", video_ext="mp4"
        )
    with pytest.raises(ConnectionError, match="S3 is down"):
        extract_module.extract_frames(
            clips["gop25"],
            config(sampling="fps", fps=5.0, decode_workers=3),
            broken_sink,
            stem="x",
            video_ext="mp4",
        )
    assert not [t for t in threading.enumerate() if t.name.startswith("framesift-decode")]


def test_a_clean_clip_has_no_damage(clips):
    result, _ = extract(clips["gop90"], config(sampling="fps", fps=1.0))
    assert (result.frames_damaged, result.frames_corrupt, result.damaged_frames) == (0, 0, [])
    assert result.first_decode_error is None and result.damage_ranges_s == []


def test_a_truncated_avi_names_the_damage(tmp_path):
    clip = make_video(tmp_path / "clip.avi", codec="mjpeg", seconds=3)
    cut = videofaults.truncated_copy(clip, tmp_path / "cut.avi", 0.6)
    result, _ = extract(cut, config(sampling="all"), ext="avi")
    assert result.frames_written > 0
    if result.frames_corrupt:
        assert result.first_decode_error and "None" not in result.first_decode_error


def test_collect_is_thread_safe():
    c = Collect()
    c("a", b"x")
    assert c.frames == {"a": b"x"}
