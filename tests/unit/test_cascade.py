"""The detector cascade's gate (framesift.inference.cascade) and its config."""

from __future__ import annotations

import numpy as np
import pytest

from framesift.config.loading import parse_config
from framesift.config.schema import ConfigError
from framesift.inference.cascade import CHEAP_DIM, CascadeGate, cheap_embedding
from framesift.local.synth import Painter


def _scene(seed: int, palette, seconds: float, fps: float, static: bool):
    painter = Painter(320, 240, 3, np.random.default_rng(seed), None, palette, 120.0)
    return [painter.paint(0.0 if static else i / fps) for i in range(int(seconds * fps))]


def _gate(frames, min_distance=0.15, max_skip=None) -> list[bool]:
    gate = CascadeGate(min_distance, max_skip)
    out = [gate.admit(f) for f in frames]
    assert gate.ran == sum(out) and gate.skipped == len(out) - sum(out)
    return out


def test_cheap_embedding_is_unit_and_cheap_in_size():
    frame = _scene(0, (1.0, 0.8, 0.6), 1, 1, True)[0]
    e = cheap_embedding(frame)
    assert e.shape == (CHEAP_DIM,) and e.dtype == np.float32
    assert abs(float(np.linalg.norm(e)) - 1.0) < 1e-5
    # sensor noise hardly moves it
    noise = np.random.default_rng(0).integers(-2, 3, frame.shape)
    noisy = np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    assert float(np.linalg.norm(cheap_embedding(noisy) - e)) < 0.15
    # a flat grey frame (no texture, one colour) does not break it
    assert np.isfinite(cheap_embedding(np.full((48, 64, 3), 128, np.uint8))).all()


def test_static_stretch_runs_the_detector_once():
    frames = _scene(1, (1.2, 0.9, 0.5), 40, 1, static=True)
    ran = _gate(frames)
    assert ran[0] and sum(ran) == 1


def test_floor_runs_the_detector_every_max_skip_plus_one_frames():
    frames = _scene(1, (1.2, 0.9, 0.5), 40, 1, static=True)
    ran = _gate(frames, max_skip=9)
    assert [i for i, r in enumerate(ran) if r] == [0, 10, 20, 30]


def test_every_cut_of_a_montage_runs_the_detector():
    rng = np.random.default_rng(7)
    frames, cut_at = [], []
    for shot in range(8):
        cut_at.append(len(frames))
        palette = tuple(float(g) for g in rng.uniform(0.2, 1.6, 3))
        frames += _scene(100 + shot, palette, 6, 2, static=shot % 2 == 0)
    ran = _gate(frames)
    assert all(ran[i] for i in cut_at)
    # static shots collapse to their first frame: the detector skips a good share
    assert sum(ran) < 0.75 * len(frames)


def test_gate_is_deterministic():
    rng = np.random.default_rng(3)
    frames = []
    for shot in range(4):
        palette = tuple(float(g) for g in rng.uniform(0.2, 1.6, 3))
        frames += _scene(200 + shot, palette, 8, 2, static=False)
    assert _gate(frames, 0.2, 5) == _gate(frames, 0.2, 5)
    assert np.array_equal(cheap_embedding(frames[3]), cheap_embedding(frames[3].copy()))


def test_cascade_config_defaults_and_validation():
    c = parse_config({}).inference.cascade
    assert c.enabled is False and c.min_distance == 0.15 and c.max_skip_frames == 30
    on = parse_config(
        {"inference": {"cascade": {"enabled": True, "min_distance": 0.3, "max_skip_frames": None}}}
    )
    assert on.inference.cascade.enabled and on.inference.cascade.max_skip_frames is None
    for bad in ({"min_distance": 0}, {"min_distance": 2.5}, {"max_skip_frames": 0}, {"threshold": 0.1}):
        with pytest.raises(ConfigError, match="inference.cascade"):
            parse_config({"inference": {"cascade": bad}})
