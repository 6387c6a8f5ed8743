"""Closed-loop simulation: generated videos with known boxes, a scripted annotator that
answers through the real Label Studio API, and N rounds of
ingest -> select -> label -> gate -> retrain -> evaluate, against uniform-in-time and
random sampling at the same labeling budget.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from framesift.config.loading import load_config, parse_config
from framesift.inference.stage import infer_one
from framesift.ingest import registry
from framesift.ingest.stage import extract_one, register_uploads
from framesift.io import model_registry
from framesift.io.s3 import get_bytes, make_client, parse_s3_uri, upload
from framesift.labeling import queue as lq
from framesift.labeling.base import frame_index
from framesift.labeling.factory import get_backend
from framesift.labeling.label_studio.tasks import FROM_NAME, TO_NAME, px_to_ls
from framesift.labeling.push import push_items, push_video
from framesift.local import stack
from framesift.local.label_studio import LabelStudioService
from framesift.local.synth import Painter, ground_truth, make_video
from framesift.loop import training, trainset
from framesift.loop.gate import CONTINUE, STOP, gate
from framesift.selection.batch import select_batch

TruthFn = Callable[[str, str], list[tuple[str, tuple[int, int, int, int]]]]  # (video_id, frame) -> boxes


class ScriptedAnnotator:
    """Labels Label Studio tasks with ground-truth boxes, through the platform's REST API.

    With ``error_rate`` > 0 each true box is, with that probability, dropped, given
    another class or shifted by a third of its size (one of the three at random).
    """

    def __init__(
        self,
        backend,
        truth: TruthFn,
        *,
        classes: Sequence[str],
        error_rate: float = 0.0,
        seed: int = 0,
        size: tuple[int, int] = (320, 240),
    ):
        self.backend, self.truth, self.classes = backend, truth, list(classes)
        self.error_rate, self.rng = error_rate, random.Random(seed)
        self.width, self.height = size
        self.errors = 0

    def _noisy(self, boxes):
        out = []
        for cls, (x, y, w, h) in boxes:
            if self.rng.random() < self.error_rate:
                self.errors += 1
                kind = self.rng.choice(["drop", "swap", "shift"])
                if kind == "drop":
                    continue
                if kind == "swap":
                    cls = self.rng.choice([c for c in self.classes if c != cls] or [cls])
                else:
                    x, y = x + w // 3, y + h // 3
            out.append((cls, (x, y, w, h)))
        return out

    def label_task(self, task_id: str | int) -> int:
        """Annotate one task (an image sequence); returns the number of boxes drawn."""
        client = self.backend.client
        task = client.get_json(f"/api/tasks/{int(task_id)}")
        names = task["data"]["frame_names"]
        vid = task["data"]["video_id"]
        result = []
        for i, name in enumerate(names):
            for n, (cls, bbox) in enumerate(self._noisy(self.truth(vid, name))):
                result.append(
                    {
                        "id": f"s{i}-{n}",
                        "from_name": FROM_NAME,
                        "to_name": TO_NAME,
                        "type": "rectanglelabels",
                        "item_index": i,
                        "original_width": self.width,
                        "original_height": self.height,
                        "image_rotation": 0,
                        "value": {**px_to_ls(bbox, self.width, self.height), "rectanglelabels": [cls]},
                    }
                )
        client.request(
            "POST", f"/api/tasks/{int(task_id)}/annotations", json={"result": result, "lead_time": 1.0}
        )
        return len(result)


def synth_truth(videos: dict[str, dict[str, Any]]) -> TruthFn:
    """Ground truth of frames of generated videos: ``videos`` maps a video id to the
    ``make_video`` arguments (seconds, fps, width, height, n_objects, seed, kinds)."""

    def truth(vid: str, frame: str):
        spec = videos[vid]
        t = frame_index(frame) / spec["fps"]
        keys = ("width", "height", "n_objects", "seed", "kinds")
        return ground_truth([t], **{k: spec[k] for k in keys if k in spec})[0]

    return truth


# ------------------------------------------------------------------ the closed loop

CLASSES = ["box", "disc", "triangle"]
STRATEGIES = ("framesift", "uniform", "random")


@dataclass
class SimSettings:
    rounds: int = 3
    videos_per_round: int = 2
    seconds: float = 20.0  # per video
    video_fps: float = 10.0
    sample_fps: float = 2.0  # frames extracted per second (the pool selection picks from)
    seed_labels: int = 8  # the first model's labels (uniform over the first batch; shared)
    budget_per_round: int = 8  # frames labeled per round, by each strategy
    test_frames: int = 30
    error_rate: float = 0.0  # the scripted annotator's
    epochs: int = 10
    imgsz: int = 160
    width: int = 320
    height: int = 240
    seed: int = 0
    strategies: tuple[str, ...] = STRATEGIES
    # class imbalance: boxes are common, triangles rare
    kinds: tuple[str, ...] = ("box", "box", "box", "disc", "box", "disc", "triangle")
    n_objects: int = 4
    evaluation: dict[str, Any] = field(default_factory=dict)  # evaluation: overrides (stopping criteria)


def _video_spec(s: SimSettings, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    n = max(2, s.n_objects + rng.randint(-1, 1))
    kinds = [rng.choice(s.kinds) for _ in range(n)]
    return {
        "seconds": s.seconds,
        "fps": s.video_fps,
        "width": s.width,
        "height": s.height,
        "n_objects": n,
        "seed": seed,
        "kinds": kinds,
    }


def _noisy(boxes, rng: random.Random, error_rate: float):
    out = []
    for cls, (x, y, w, h) in boxes:
        if rng.random() < error_rate:
            kind = rng.choice(["drop", "swap", "shift"])
            if kind == "drop":
                continue
            if kind == "swap":
                cls = rng.choice([c for c in CLASSES if c != cls])
            else:
                x, y = x + w // 3, y + h // 3
        out.append((cls, (x, y, w, h)))
    return out


def _strategy_cfg(base, strategy: str, s: SimSettings):

    data = base.model_dump()
    data["mongo"]["database"] = f"{base.mongo.database}_{strategy}"
    data["storage"]["output_prefix"] = f"{base.storage.output_prefix.rstrip('/')}/{strategy}/"
    return parse_config(data)


def run_simulation(
    s3, mongo, base_cfg, label_studio_credentials: dict[str, Any], s: SimSettings, out_dir, *, log=print
) -> dict[str, Any]:
    """Run the loop for every strategy; return (and save under ``out_dir``) the per-round table.

    framesift's rounds go through the real components: upload -> register -> extract ->
    infer (the champion) -> select (the configured strategies) -> push to Label Studio ->
    scripted annotator (REST) -> sync -> export -> gate -> train -> evaluate -> promote.
    The baselines pick frames of the same videos uniformly in time or at random, get the
    same annotator's answers (same error model) and train the same way, always (no gate).
    """
    from pathlib import Path

    out_dir = Path(out_dir)
    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(s.seed)
    data = base_cfg.model_dump()
    data["important_classes"] = CLASSES
    data["extraction"].update({"sampling": "fps", "fps": s.sample_fps, "dedupe": {"enabled": False}})
    data["inference"].update({"imgsz": max(64, s.imgsz), "confidence_threshold": 0.1})
    # the budget per round, whatever the base config says (it may give a proportion instead)
    data["selection"].update({"n_samples": s.budget_per_round, "proportion_samples": None})
    data["training"] = {
        **data.get("training", {}),
        "base_model": "champion",
        "epochs": s.epochs,
        "imgsz": s.imgsz,
        "batch": 8,
        "device": "cpu",
        "val_fraction": 0.0,
        "seed": s.seed,
        "promotion_margin": 0.0,
    }
    ev = {
        "min_new_labels": s.budget_per_round,
        "max_train_test_gap": None,
        "targets": {"map50_95": 0.9},
        "stability_k": 2,
        "diminishing_k": 2,
        "diminishing_epsilon": 0.0,
    }
    ev.update(s.evaluation)
    data["evaluation"] = {**data.get("evaluation", {}), **ev}
    cfg = parse_config(data)

    # the fixed test set: frames of videos no strategy ever sees
    import cv2
    import numpy as np

    items = []
    for i in range(s.test_frames):
        spec = _video_spec(s, 10_000 + s.seed * 100 + i % 5)
        painter = Painter(
            s.width, s.height, spec["n_objects"], np.random.default_rng(spec["seed"]), spec["kinds"]
        )
        t = rng.uniform(0, s.seconds)
        ok, png = cv2.imencode(".png", painter.paint(t))
        items.append(
            {
                "name": f"test-{i:03d}.png",
                "image": png.tobytes(),
                "width": s.width,
                "height": s.height,
                "boxes": [{"class_name": c, "bbox": list(b)} for c, b in painter.boxes(t)],
            }
        )
    test_uri = trainset.write_test_set(s3, cfg, items, CLASSES, name="sim")
    cfg = parse_config(
        {**cfg.model_dump(), "evaluation": {**cfg.evaluation.model_dump(), "test_set": test_uri}}
    )
    cfgs = {st: _strategy_cfg(cfg, st, s) for st in s.strategies}
    dbs = {st: mongo[c.mongo.database] for st, c in cfgs.items()}
    specs: dict[str, dict[str, Any]] = {}  # video id -> make_video args
    truth = synth_truth(specs)
    fs_cfg = cfgs.get("framesift")
    backend = get_backend(fs_cfg, label_studio_credentials, s3) if fs_cfg else None
    annotator = (
        ScriptedAnnotator(
            backend, truth, classes=CLASSES, error_rate=s.error_rate, seed=s.seed, size=(s.width, s.height)
        )
        if backend
        else None
    )
    noise_rng = random.Random(s.seed + 1)

    def upload_round(r: int) -> list[Any]:
        """This round's videos, registered and extracted (in framesift's db; the frames are shared)."""
        db = dbs["framesift" if "framesift" in dbs else s.strategies[0]]
        c = cfgs["framesift" if "framesift" in cfgs else s.strategies[0]]
        prefix = f"{c.storage.videos_prefix}round-{r:02d}/"
        for v in range(s.videos_per_round):
            spec = _video_spec(s, s.seed * 1000 + r * 10 + v)
            path = make_video(
                work / f"r{r}-v{v}.mp4",
                seconds=s.seconds,
                fps=s.video_fps,
                width=s.width,
                height=s.height,
                n_objects=spec["n_objects"],
                seed=spec["seed"],
                kinds=spec["kinds"],
            )
            upload(s3, path, c.storage.bucket, f"{prefix}v{v}.mp4")
        refs = register_uploads(s3, db, c, run_id=f"sim-r{r}", prefix=prefix)
        refs = [ref for ref in refs if ref.key.startswith(prefix)]  # not earlier rounds' videos (resumed)
        for ref in refs:
            spec = _video_spec(s, s.seed * 1000 + r * 10 + int(ref.key.rsplit("v", 1)[-1].split(".")[0]))
            specs[ref.video_id] = spec
            extract_one(s3, db, c, ref, run_id=f"sim-r{r}", work_dir=str(work))
        return refs

    def frames_of(refs, db) -> list[tuple[str, str, str]]:
        out = []
        for ref in refs:
            doc = registry.get(db, ref.video_id) or {}
            manifest = doc.get("manifest_uri")
            if not manifest:
                continue

            b, k = parse_s3_uri(manifest)
            m = json.loads(get_bytes(s3, b, k))
            for name in m["frame_names"]:
                out.append(
                    (ref.video_id, name, m["frames_prefix"] if "frames_prefix" in m else doc["frames_prefix"])
                )
        return out

    def label_directly(st: str, picks) -> None:
        """Baselines (and the seed set): the annotator's answers written as a sync would record them."""
        db, c = dbs[st], cfgs[st]

        for vid, name, frames_prefix in picks:
            b, k = parse_s3_uri(frames_prefix)
            boxes = _noisy(truth(vid, name), noise_rng, s.error_rate)
            db[trainset.LABELS].update_one(
                {"_id": f"{vid}/{name}"},
                {
                    "$set": {
                        "video_id": vid,
                        "frame_name": name,
                        "image": {"bucket": b, "key": f"{k.rstrip('/')}/{name}"},
                        "width": s.width,
                        "height": s.height,
                        "boxes": [{"class_name": cl, "bbox": list(bb)} for cl, bb in boxes],
                        "pending": True,
                        "annotator": "scripted",
                    }
                },
                upsert=True,
            )
        trainset.write_version(s3, db, c)

    def retrain(st: str, r: int) -> dict[str, Any]:
        db, c = dbs[st], cfgs[st]
        m = training.train_model(s3, db, c, run_id=f"sim-{st}-r{r}", work_dir=work)
        training.evaluate_model(s3, db, c, m["_id"], work_dir=work)
        return training.promote(s3, db, c, m["_id"], work_dir=work, run_id=f"sim-{st}-r{r}")

    rows: list[dict[str, Any]] = []
    stopped_at: int | None = None

    def row(st: str, r: int, decision: str | None) -> None:
        db = dbs[st]
        champ = model_registry.champion(db) or {}
        met = champ.get("metrics") or {}
        rows.append(
            {
                "strategy": st,
                "round": r,
                "labels": db[trainset.LABELS].count_documents({}),
                "map50_95": met.get("map50_95"),
                "map50": met.get("map50"),
                "precision": met.get("precision"),
                "recall": met.get("recall"),
                "decision": decision,
            }
        )
        log(
            f"  {st:<10} round {r}: labels {rows[-1]['labels']:>4}  mAP50-95 {met.get('map50_95', float('nan')):.3f}  mAP50 {met.get('map50', float('nan')):.3f}"
            + (f"  gate: {decision}" if decision else "")
        )

    # round 0: a shared seed set (uniform over the first batch) and the first model, copied to all
    log(f"round 0: seed set of {s.seed_labels} frames, first model (base {base_cfg.training.base_model})")
    refs = upload_round(0)
    pool = frames_of(refs, dbs["framesift" if "framesift" in dbs else s.strategies[0]])
    seed_picks = _uniform(pool, s.seed_labels)
    first = s.strategies[0]
    first_cfg = cfgs[first]
    cfgs[first] = parse_config(
        {
            **first_cfg.model_dump(),
            "training": {
                **first_cfg.training.model_dump(),
                "base_model": base_cfg.training.base_model
                if base_cfg.training.base_model != "champion"
                else None,
            },
        }
    )
    label_directly(first, seed_picks)
    retrain(first, 0)
    cfgs[first] = first_cfg
    seed_model = model_registry.champion(dbs[first])
    for st in s.strategies:
        if st != first:
            label_directly(st, seed_picks)
            dbs[st][model_registry.MODELS].insert_one({**seed_model})
            for e in model_registry.history(dbs[first]):
                dbs[st][model_registry.EVALUATIONS].insert_one(e)
        row(st, 0, None)
    if "framesift" in dbs:  # infer the first batch too, so the datapool knows it
        for ref in refs:
            infer_one(s3, dbs["framesift"], cfgs["framesift"], ref, run_id="sim-r0")

    for r in range(1, s.rounds + 1):
        log(f"round {r}:")
        refs = upload_round(r)
        pool = frames_of(refs, dbs["framesift" if "framesift" in dbs else s.strategies[0]])
        for st in s.strategies:
            if st == "framesift":
                if stopped_at is not None:
                    row(st, r, "stopped")
                    continue
                db, c = dbs[st], cfgs[st]
                for ref in refs:
                    infer_one(s3, db, c, ref, run_id=f"sim-r{r}")  # the champion (serving_config)
                sel = select_batch(
                    s3, db, c, refs, run_id=f"sim-r{r}", overrides={"n_samples": s.budget_per_round}
                )
                for item in push_items(db, sel):
                    rec = push_video(s3, db, c, item, backend, run_id=f"sim-r{r}", owner="sim")
                    for task_id in rec["labeling"]["ids"]:
                        annotator.label_task(task_id)
                lq.sync_status(db, backend)
                trainset.export(s3, db, c, backend, run_id=f"sim-r{r}")
                decision = gate(s3, db, c, run_id=f"sim-r{r}")
                if decision["outcome"] == CONTINUE:
                    retrain(st, r)
                elif decision["outcome"] == STOP:
                    stopped_at = r
                row(st, r, f"{decision['outcome']} ({decision['reason'].split(':')[0]})")
            else:
                picks = (
                    _uniform(pool, s.budget_per_round)
                    if st == "uniform"
                    else rng.sample(pool, min(len(pool), s.budget_per_round))
                )
                label_directly(st, picks)
                retrain(st, r)
                row(st, r, None)

    result = {
        "settings": {k: v for k, v in asdict(s).items()},
        "rows": rows,
        "framesift_stopped_at_round": stopped_at,
        "test_set": test_uri,
        "annotator_errors": annotator.errors if annotator else 0,
    }
    result["efficiency"] = label_efficiency(rows)
    (out_dir / "simulation.json").write_text(json.dumps(result, indent=1, default=str))
    (out_dir / "table.txt").write_text(format_table(rows))
    plot(rows, out_dir / "map_per_round.png", stopped_at)
    return result


def _uniform(pool: list, n: int) -> list:
    """n frames evenly spaced in time over the pool (videos in order): the 1-fps practice."""
    if n >= len(pool):
        return list(pool)
    step = len(pool) / n
    return [pool[int(i * step + step / 2)] for i in range(n)]


def label_efficiency(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Labels framesift needed to reach uniform's final mAP, and mAP vs random at equal budget."""

    def curve(st):
        return [r for r in rows if r["strategy"] == st and r["map50_95"] is not None]

    fs, uni, rnd = curve("framesift"), curve("uniform"), curve("random")
    out: dict[str, Any] = {}
    if fs and uni:
        target = uni[-1]["map50_95"]
        reach = next((r for r in fs if r["map50_95"] >= target), None)
        out["uniform_final_map50_95"] = target
        out["uniform_final_labels"] = uni[-1]["labels"]
        out["framesift_labels_to_reach_uniform"] = reach["labels"] if reach else None
        out["label_ratio_vs_uniform"] = (reach["labels"] / uni[-1]["labels"]) if reach else None
        out["target_label_ratio_met"] = bool(reach and reach["labels"] <= 0.5 * uni[-1]["labels"])
    if fs and rnd:
        by_round = {r["round"]: r for r in rnd}
        diffs = [
            (f["map50_95"] - by_round[f["round"]]["map50_95"]) * 100
            for f in fs
            if f["round"] in by_round and f["round"] > 0 and f["labels"] == by_round[f["round"]]["labels"]
        ]
        out["map_points_vs_random_per_round"] = [round(d, 2) for d in diffs]
        out["map_points_vs_random_final"] = round(diffs[-1], 2) if diffs else None
        out["target_map_points_met"] = bool(diffs and diffs[-1] >= 5)
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'strategy':<10} {'round':>5} {'labels':>6} {'mAP50-95':>9} {'mAP50':>7} {'prec':>6} {'recall':>6}  gate"
    ]
    for r in rows:

        def f(v):
            return f"{v:.3f}" if isinstance(v, float) else "-"

        lines.append(
            f"{r['strategy']:<10} {r['round']:>5} {r['labels']:>6} {f(r['map50_95']):>9} {f(r['map50']):>7} {f(r['precision']):>6} {f(r['recall']):>6}  {r['decision'] or ''}"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path, stopped_at: int | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for st in dict.fromkeys(r["strategy"] for r in rows):
        pts = [
            (r["labels"], r["map50_95"]) for r in rows if r["strategy"] == st and r["map50_95"] is not None
        ]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=st)
    if stopped_at is not None:
        fs = [r for r in rows if r["strategy"] == "framesift" and r["round"] == stopped_at]
        if fs:
            ax.axvline(
                fs[0]["labels"], color="grey", linestyle="--", label=f"framesift stopped (round {stopped_at})"
            )
    ax.set_xlabel("labeled frames")
    ax.set_ylabel("test mAP50-95")
    ax.set_title("framesift closed loop vs baselines")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_local(s: SimSettings, out_dir, *, log=print) -> dict[str, Any]:
    """The simulation on a fresh embedded stack and Label Studio (what `framesift simulate` runs)."""
    import os
    import shutil
    from pathlib import Path

    from pymongo import MongoClient

    out_dir = Path(out_dir)
    shutil.rmtree(out_dir / "work", ignore_errors=True)
    shutil.rmtree(out_dir / "services", ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config()
    with (
        stack.EmbeddedStack(out_dir / "services" / "stack", bucket=cfg.storage.bucket) as info,
        LabelStudioService(data_dir=out_dir / "services" / "labelstudio", from_template=True) as ls,
    ):
        os.environ.update(info.env())
        s3 = make_client(endpoint_url=info.s3_endpoint)
        mongo = MongoClient(info.mongo_uri)
        log(f"embedded stack: S3 {info.s3_endpoint}, MongoDB {info.mongo_uri}, Label Studio {ls.url}")
        result = run_simulation(s3, mongo, cfg, ls.credentials(), s, out_dir, log=log)
        mongo.close()
    shutil.rmtree(out_dir / "services", ignore_errors=True)
    shutil.rmtree(out_dir / "work", ignore_errors=True)
    return result
