"""Benchmark: framesift selection at 10k, 100k and 1M frames (256-d, 1,000 picks).

The strategy mix is the demanding one, DIVERSITY on embeddings x WEIGHTS on
``uncertainty_entropy`` x BALANCE on predicted class distributions (UNIFORM over 10
classes), over synthetic video-like data (``make_synthetic``: frames of many videos
wandering around scene clusters in a low-dimensional latent space, plus noise; a long
tail of object classes; detector-like probability vectors).

Each size runs twice, each time in its own subprocess (so its peak memory is its own):
once plain, for the wall time of the ``select`` call; once instrumented, for memory
around the call: the peak of numpy/Python allocations made during it (tracemalloc) and
the process RSS before and at its peak during it (sampled every 10 ms by a thread);
instrumentation slows the call, so its time is not the one reported. The embedding
matrix's own size is reported next to them; the targets at 1M: 60 s, peak <= 2x the
matrix.

Run: .venv/bin/python bench/bench_selection.py [--sizes 10000,100000,1000000]
Results: bench/results/selection.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
from common import write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from framesift.selection import scores as scoring  # noqa: E402
from framesift.selection.engine import select  # noqa: E402
from framesift.selection.inputs import SelectionInputs  # noqa: E402
from framesift.selection.spec import parse_selection  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "selection.json"
DIM = 256
PICKS = 1000
N_CLASSES = 10
CLASS_NAMES = [f"class_{c}" for c in range(N_CLASSES)]


def make_synthetic(
    n_frames: int,
    dim: int = DIM,
    *,
    frames_per_video: int = 500,
    n_scenes: int = 40,
    latent: int = 16,
    noise: float = 0.35,
    seed: int = 0,
) -> dict:
    """Video-like frames with known ground truth.

    Each video belongs to one scene; its frames follow a slow AR(1) walk around the
    scene's latent centre (consecutive frames are similar), mapped to ``dim``
    dimensions, plus isotropic noise, then L2-normalised. Objects: Poisson(2) per frame,
    classes drawn from the scene's class mix (a long tail overall: class c is about
    1/(c+1)^1.3 as common as class 0). Predictions: per box a probability vector
    peaked on the true class with a random sharpness (some boxes are confident, some not).

    Returns embeddings (float32, built in place, chunk by chunk), frame names, video
    keys, frame indices, ``FlatPredictions``, ``true_counts`` (frames x classes) and the
    scene of each frame.
    """
    rng = np.random.default_rng(seed)
    n_videos = max(1, -(-n_frames // frames_per_video))
    basis, _ = np.linalg.qr(rng.standard_normal((dim, latent)))
    basis = basis.astype(np.float32)
    centres = rng.standard_normal((n_scenes, latent)) * 2.0
    tail = 1.0 / (np.arange(N_CLASSES) + 1.0) ** 1.3
    scene_mix = np.stack([rng.dirichlet(tail / tail.sum() * 8.0) for _ in range(n_scenes)])
    video_scene = rng.integers(0, n_scenes, n_videos)
    frame_video = np.minimum(np.arange(n_frames) // frames_per_video, n_videos - 1)
    frame_index = np.arange(n_frames) - frame_video * frames_per_video
    x = np.empty((n_frames, dim), dtype=np.float32)
    walk = np.zeros(latent)
    for v in range(n_videos):
        a, b = v * frames_per_video, min(n_frames, (v + 1) * frames_per_video)
        if a >= b:
            break
        steps = rng.standard_normal((b - a, latent)) * 0.15
        z = np.empty((b - a, latent))
        walk = rng.standard_normal(latent) * 0.5
        for t in range(b - a):
            walk = 0.97 * walk + steps[t]
            z[t] = walk
        z += centres[video_scene[v]]
        block = (z.astype(np.float32) @ basis.T) + rng.standard_normal(
            (b - a, dim), dtype=np.float32
        ) * np.float32(noise)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[a:b] = block
    n_obj = rng.poisson(2.0, n_frames)
    box_frame = np.repeat(np.arange(n_frames), n_obj)
    mix = scene_mix[video_scene[frame_video[box_frame]]]
    cum = np.cumsum(mix, axis=1)
    true_cls = (rng.random(len(box_frame))[:, None] > cum).sum(axis=1).clip(0, N_CLASSES - 1)
    sharp = rng.uniform(0.3, 5.0, len(box_frame)).astype(np.float32)
    logits = rng.standard_normal((len(box_frame), N_CLASSES)).astype(np.float32)
    logits[np.arange(len(box_frame)), true_cls] += sharp
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    pred_cls = probs.argmax(axis=1)
    flat = scoring.FlatPredictions(
        n_frames=n_frames,
        category_names=list(CLASS_NAMES),
        frame=box_frame,
        category=pred_cls,
        score=probs.max(axis=1),
        probabilities=probs,
    )
    true_counts = np.zeros((n_frames, N_CLASSES), dtype=np.int32)
    np.add.at(true_counts, (box_frame, true_cls), 1)
    names = [
        f"v{v:05d}-{i:03d}-mp4.png" for v, i in zip(frame_video.tolist(), frame_index.tolist(), strict=True)
    ]
    return {
        "embeddings": x,
        "frame_names": names,
        "video_keys": [f"v{v:05d}.mp4" for v in frame_video.tolist()],
        "frame_indices": frame_index,
        "predictions": flat,
        "true_counts": true_counts,
        "frame_video": frame_video,
    }


def bench_spec(n_samples: int = PICKS):
    return parse_selection(
        {
            "n_samples": n_samples,
            "strategies": [
                {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}},
                {
                    "input": {"type": "SCORES", "score": "uncertainty_entropy"},
                    "strategy": {"type": "WEIGHTS"},
                },
                {
                    "input": {"type": "PREDICTIONS", "name": "CLASS_DISTRIBUTION"},
                    "strategy": {"type": "BALANCE", "distribution": "UNIFORM"},
                },
            ],
        }
    )


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(n: int, mode: str) -> dict:
    t0 = time.perf_counter()
    data = make_synthetic(n)
    gen_s = time.perf_counter() - t0
    inputs = SelectionInputs(
        frame_names=data["frame_names"],
        embeddings=data["embeddings"],
        video_keys=data["video_keys"],
        frame_indices=data["frame_indices"],
        predictions=data["predictions"],
    )
    del data
    spec = bench_spec()
    if mode == "time":
        load = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        result = select(inputs, spec)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {
            "select_s": round(wall, 3),
            "select_cpu_s": round(cpu, 3),
            "load_average_1min_before": round(load, 2),
            "load_average_1min_after": round(os.getloadavg()[0], 2),
            "selected": int(len(result.selected)),
            "stop_reason": result.stop_reason,
            "phases_s": {k: round(v, 3) for k, v in result.timings.items()},
            "generate_data_s": round(gen_s, 2),
        }
    rss_before = _rss()
    peak = [rss_before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    tracemalloc.start()
    sampler.start()
    t0 = time.perf_counter()
    result = select(inputs, spec)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    matrix = inputs.embeddings.nbytes
    assert len(result.selected) == PICKS
    return {
        "instrumented_select_s": round(wall, 3),
        "embedding_matrix_bytes": matrix,
        "tracemalloc_peak_during_select_bytes": traced_peak,
        "rss_before_select_bytes": rss_before,
        "rss_peak_during_select_bytes": peak[0],
        "rss_peak_over_matrix": round(peak[0] / matrix, 3),
        "select_extra_peak_over_matrix": round(traced_peak / matrix, 3),
        "ru_maxrss_bytes": _maxrss(),
    }


def _maxrss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine() -> dict:
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = int(fh.readline().split()[1]) * 1024
    except OSError:
        pass
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="time", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.mode)))
        return
    runs = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        print(f"== {n:,} frames x {DIM}-d, {PICKS} picks (diversity x weights x balance)", flush=True)
        row: dict = {"frames": n, "dim": DIM, "picks": PICKS}
        for mode in ("time", "memory"):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(n), "--mode", mode],
                capture_output=True,
                text=True,
                env=os.environ.copy(),
            )
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                row["error"] = proc.stderr[-1000:]
                break
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        runs.append(row)
        if "error" in row:
            continue
        print(
            f"   select {row['select_s']:.2f} s; peak RSS {row['rss_peak_during_select_bytes'] / 2**20:.0f} MiB "
            f"({row['rss_peak_over_matrix']}x the {row['embedding_matrix_bytes'] / 2**20:.0f} MiB matrix); "
            f"allocated during select: {row['tracemalloc_peak_during_select_bytes'] / 2**20:.0f} MiB",
            flush=True,
        )
    one_m = next((r for r in runs if r.get("frames") == 1_000_000 and "select_s" in r), None)
    out = {
        "name": "selection",
        "what": "framesift.selection.engine.select: DIVERSITY x WEIGHTS(uncertainty_entropy) x BALANCE(UNIFORM, 10 classes), "
        f"{PICKS} picks, {DIM}-d float32 embeddings",
        "peer": None,
        "peer_note": "the side-by-side with apricot-select is bench_selection_peer.py (selection_peer.json)",
        "machine": machine(),
        "runs": runs,
        "targets": {"select_s_at_1M": 60.0, "peak_rss_over_matrix_at_1M": 2.0},
        "ratio": None
        if one_m is None
        else {
            "select_s_at_1M_over_target": round(one_m["select_s"] / 60.0, 3),
            "peak_rss_over_matrix_at_1M": one_m["rss_peak_over_matrix"],
        },
        "notes": [
            "time and memory are for the select() call only; generating the synthetic data is excluded",
            "select_cpu_s is the process CPU time (all threads) of the call; with other work on the machine "
            "(see load_average_1min_*; 2 cores) wall time grows while CPU time stays about the same",
            "rss_peak_during_select includes everything the process holds: the embedding matrix, 1M frame-name "
            "strings, the flat predictions (boxes x 10 probabilities) and the interpreter",
            "tracemalloc_peak_during_select is what select() itself allocated at its peak (numpy arrays included)",
        ],
    }
    ratio = None if one_m is None else one_m["select_s"] / 60.0
    write_result(
        "selection",
        out,
        what=out["what"] + " at 10k / 100k / 1M frames",
        peer="none (absolute targets; apricot-select side by side: bench_selection_peer.py)",
        ratio=ratio,
        ratio_means="select() seconds at 1M frames / the 60 s target; <= 1 meets it",
        target="1M frames in <= 60 s and peak RSS <= 2x the embedding matrix",
        met=None
        if one_m is None
        else bool(one_m["select_s"] <= 60.0 and one_m["rss_peak_over_matrix"] <= 2.0),
        raw_timings_s={f"select_s_at_{r['frames']}": r["select_s"] for r in runs if "select_s" in r},
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
