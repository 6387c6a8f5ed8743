"""Benchmark: frame extraction at 1 fps to PNG, framesift vs the ffmpeg command line at
equal output settings.

A synthetic 720p30 H.264 clip of 60 s (libx264 veryfast: B-frames, GOP 60; cached under
var/bench/) is turned into one PNG a second by (a) ``framesift.ingest.extract.extract_frames``
with the default settings (decode floor on, keyframe tolerance 0.5, PNG zlib level 1 with
the 'up' filter) writing into a directory and (b) ``ffmpeg -i in.mp4 -vf fps=1
-compression_level 1 -pred up out_%05d.png``: the same format, compression level and
filter. Each runs REPEATS times, alternating; ratio = ffmpeg median / framesift median
(>= 1.5 is the target). Both sides use every core: ffmpeg its default decoder threads,
framesift one decoder per core, each taking every n-th GOP (``decode_workers: 0``). Also
measured, each as often: framesift with one decoder, with exact frames (keyframe_tolerance
0) and with the decode floor off, FFmpeg's own decode threading modes under one decoder
(to choose the default), ffmpeg at its default PNG settings (the book's command), and
JPEG output on both sides (quality 95 vs ffmpeg -q:v 2, close but not identical encoders).

Run: .venv/bin/python bench/bench_extract.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
from common import write_result

from framesift.config.schema import ExtractionConfig
from framesift.ingest.extract import extract_frames
from framesift.local.synth import make_video

ROOT = Path(__file__).resolve().parents[1]

BENCH_DIR = ROOT / "var" / "bench"
RESULTS = ROOT / "bench" / "results" / "extract.json"
CLIP = BENCH_DIR / "synth_720p30_60s_x264veryfast.mp4"
REPEATS = 3


def ensure_ffmpeg() -> str:
    """Path to ffmpeg, installing Debian's package when running as root."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit("ffmpeg is not on PATH; install it (e.g. `sudo apt-get install -y ffmpeg`) and re-run")
    print("ffmpeg not found: installing Debian's ffmpeg package (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "ffmpeg"], check=True, env=env, stdout=subprocess.DEVNULL)
    found = shutil.which("ffmpeg")
    if not found:
        sys.exit("apt-get installed ffmpeg but it is still not on PATH")
    return found


def ffmpeg_version(ffmpeg: str) -> str:
    first = subprocess.run(
        [ffmpeg, "-version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    return first.split()[2]  # "ffmpeg version 5.1.9-0+deb12u1 Copyright ..."


def ensure_clip() -> Path:
    if not CLIP.exists():
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        print(f"generating {CLIP.relative_to(ROOT)} (720p30, 60 s, H.264) ...", flush=True)
        started = time.monotonic()
        partial = CLIP.with_suffix(".partial.mp4")
        make_video(
            partial,
            seconds=60,
            fps=30,
            width=1280,
            height=720,
            gop_size=60,
            codec_options={"preset": "veryfast"},  # B-frames and CABAC, like camera footage
            seed=42,
        )
        partial.rename(CLIP)
        print(f"  done in {time.monotonic() - started:.1f} s", flush=True)
    return CLIP


def fresh_dir(name: str) -> Path:
    path = BENCH_DIR / "out" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def dir_stats(path: Path) -> tuple[int, int]:
    files = list(path.iterdir())
    return len(files), sum(f.stat().st_size for f in files)


def run_framesift(clip: Path, **settings) -> tuple[float, int, int]:
    out = fresh_dir("framesift")
    fmt = settings.get("image_format", "png")
    cfg = ExtractionConfig(sampling="fps", fps=1.0, dedupe={"enabled": False}, **settings)

    def sink(name: str, data: bytes) -> None:
        (out / name).write_bytes(data)

    started = time.perf_counter()
    result = extract_frames(clip, cfg, sink, stem="clip", video_ext="mp4")
    elapsed = time.perf_counter() - started
    n, size = dir_stats(out)
    assert n == result.frames_written and all(f.suffix == "." + fmt for f in out.iterdir()), (n, result)
    return elapsed, n, size


PNG_EQUAL = ["-compression_level", "1", "-pred", "up"]  # what framesift's PNG settings are
JPEG_EQUAL = ["-q:v", "2"]  # ~ quality 95


def run_ffmpeg(
    ffmpeg: str, clip: Path, extra: list[str] | None = None, ext: str = "png"
) -> tuple[float, int, int]:
    out = fresh_dir("ffmpeg")
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-i", str(clip), "-vf", "fps=1", *(extra or [])]
    started = time.perf_counter()
    subprocess.run([*cmd, str(out / f"out_%05d.{ext}")], check=True)
    elapsed = time.perf_counter() - started
    n, size = dir_stats(out)
    return elapsed, n, size


def pyav_decode_only(clip: Path) -> float:
    started = time.perf_counter()
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        for _ in container.decode(stream):
            pass
    return time.perf_counter() - started


def ffmpeg_decode_only(ffmpeg: str, clip: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-i", str(clip), "-f", "null", "-"], check=True
    )
    return time.perf_counter() - started


def main() -> None:
    ffmpeg = ensure_ffmpeg()
    version = ffmpeg_version(ffmpeg)
    clip = ensure_clip()
    variants = {
        "framesift": lambda: run_framesift(clip),
        "ffmpeg_equal_png": lambda: run_ffmpeg(ffmpeg, clip, PNG_EQUAL),
        "framesift_one_decoder": lambda: run_framesift(clip, decode_workers=1),
        "framesift_exact_frames": lambda: run_framesift(clip, keyframe_tolerance=0.0),
        "framesift_decode_everything": lambda: run_framesift(clip, skip_decoding=False),
        "framesift_threads_slice_2": lambda: run_framesift(
            clip, decode_workers=1, decode_threads=2, decode_threading="slice"
        ),
        "framesift_threads_frame_2": lambda: run_framesift(
            clip, decode_workers=1, decode_threads=2, decode_threading="frame"
        ),
        "ffmpeg_default_png": lambda: run_ffmpeg(ffmpeg, clip),
        "framesift_jpeg_q95": lambda: run_framesift(clip, image_format="jpg", jpeg_quality=95),
        "ffmpeg_jpeg_q2": lambda: run_ffmpeg(ffmpeg, clip, JPEG_EQUAL, ext="jpg"),
    }
    for fn in variants.values():  # warm the page cache and every code path once, untimed
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    frames: dict[str, int] = {}
    sizes: dict[str, int] = {}
    order = list(variants)
    for i in range(REPEATS):
        for name in order if i % 2 == 0 else order[::-1]:
            elapsed, n, size = variants[name]()
            times[name].append(round(elapsed, 3))
            frames[name], sizes[name] = n, size
            print(f"run {i + 1} {name:28s} {elapsed:6.2f} s  {n} frames  {size / 1e6:.1f} MB", flush=True)
    medians = {name: round(statistics.median(t), 3) for name, t in times.items()}
    ratio = round(medians["ffmpeg_equal_png"] / medians["framesift"], 3)
    decode_only = {
        "pyav_1_thread": round(pyav_decode_only(clip), 3),
        "ffmpeg": round(ffmpeg_decode_only(ffmpeg, clip), 3),
    }
    shutil.rmtree(BENCH_DIR / "out", ignore_errors=True)

    with av.open(str(clip)) as container:
        n_video_frames = container.streams.video[0].frames
    threading = {
        k: medians[k]
        for k in ("framesift_one_decoder", "framesift_threads_slice_2", "framesift_threads_frame_2")
    }
    report = {
        "name": "extract_1fps_png_720p30_60s",
        "clip": {
            "path": str(clip.relative_to(ROOT)),
            "codec": "h264 (libx264 veryfast, gop 60)",
            "resolution": "1280x720",
            "fps": 30,
            "seconds": 60,
            "frames": n_video_frames,
            "bytes": clip.stat().st_size,
        },
        "machine": {"pyav": av.__version__, "pyav_ffmpeg": av.ffmpeg_version_info, "opencv": cv2.__version__},
        "repeats": REPEATS,
        "timings_s": times,
        "median_s": medians,
        "ratios": {
            "ffmpeg_equal_png_over_framesift": ratio,
            "ffmpeg_default_png_over_framesift": round(
                medians["ffmpeg_default_png"] / medians["framesift"], 3
            ),
            "ffmpeg_equal_png_over_framesift_one_decoder": round(
                medians["ffmpeg_equal_png"] / medians["framesift_one_decoder"], 3
            ),
            "ffmpeg_equal_png_over_framesift_exact_frames": round(
                medians["ffmpeg_equal_png"] / medians["framesift_exact_frames"], 3
            ),
            "ffmpeg_equal_png_over_framesift_decode_everything": round(
                medians["ffmpeg_equal_png"] / medians["framesift_decode_everything"], 3
            ),
            "ffmpeg_jpeg_over_framesift_jpeg": round(
                medians["ffmpeg_jpeg_q2"] / medians["framesift_jpeg_q95"], 3
            ),
        },
        "threading_median_s": threading,
        "frames_written": frames,
        "bytes_written": sizes,
        "decode_only_s": decode_only,
        "settings": {
            "framesift": ExtractionConfig().model_dump(
                include={
                    "skip_decoding",
                    "keyframe_tolerance",
                    "decode_threading",
                    "decode_threads",
                    "decode_workers",
                    "png_compression",
                }
            ),
            "ffmpeg_equal_png": " ".join(PNG_EQUAL),
        },
        "notes": [
            "framesift (default) decodes only what sampling keeps: keyframes within half a second of a "
            "sampling time stand in for it (here every even second), the other GOPs are decoded up to "
            "the sampled frame only (reference frames), and the tails are not decoded; ffmpeg's fps "
            "filter decodes all frames. framesift_exact_frames gives a full decode's frames (tolerance 0).",
            "framesift (default) splits the video's GOPs between one decoder per core (each on its own "
            "container, output merged back into time order); framesift_one_decoder is one decoder.",
            "Synthetic footage; real footage with more detail decodes and compresses slower for both.",
        ],
    }
    write_result(
        "extract",
        report,
        what="1 fps PNG frames from a 60 s 720p30 H.264 clip (wall time), equal PNG settings",
        peer=f"ffmpeg {version} -vf fps=1 {' '.join(PNG_EQUAL)} (framesift's PNG settings)",
        ratio=ratio,
        ratio_means="ffmpeg_time / framesift_time at equal PNG settings; > 1 means framesift is faster",
        target="ratio >= 1.5",
        met=ratio >= 1.5,
        raw_timings_s=times,
    )
    print(
        f"median framesift {medians['framesift']:.2f} s, ffmpeg (equal PNG) {medians['ffmpeg_equal_png']:.2f} s, ratio {ratio}"
    )


if __name__ == "__main__":
    main()
