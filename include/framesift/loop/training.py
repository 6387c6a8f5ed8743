"""Retraining, evaluation on the fixed test set, and promotion in the model registry
(its records: :mod:`framesift.io.model_registry`).

- :func:`train_model`: ultralytics training on a training-set version (downloaded from S3),
  starting from ``training.base_model`` (the champion by default). The checkpoint goes to
  ``<output_prefix>/models/<model_id>/best.pt`` (a new key per model, never overwritten)
  and a Mongo ``models`` document records the lineage (training-set version, parent model,
  training config), timings and status. A training that fails records ``failed`` with the
  error and raises :class:`TrainingFailed`; the champion is untouched.
- :func:`evaluate_model`: mAP50-95, mAP50, precision, recall and frame accuracy on the test
  set (``evaluation.test_set``, checked unchanged), plus mAP on the model's own training
  frames (for the overfitting criterion).
- :func:`promote`: the challenger becomes champion only when it beats the champion by
  ``training.promotion_margin`` on ``evaluation.metric``, both measured on the same
  test-set version (the champion is re-evaluated when its numbers are on another version).

ultralytics is imported inside the functions (with its hub sync, ClearML and MLflow
callbacks off: see :func:`framesift.inference.models.ultralytics_model`).
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database

from framesift.config.schema import PipelineConfig
from framesift.inference.models import FALL_MODEL_URI, resolve_model, ultralytics_model
from framesift.io.model_registry import MODELS, champion, record_evaluation
from framesift.io.s3 import exists, join_key, s3_uri
from framesift.loop import trainset
from framesift.loop.review import match_frame
from framesift.tracking.clearml import RunSpec

log = logging.getLogger("framesift.training")

TRAINING, TRAINED, FAILED = "training", "trained", "failed"


class TrainingFailed(RuntimeError):
    """Training stopped with an error; the ``models`` document says why."""


def _now() -> datetime:
    return datetime.now(UTC)


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def _base_weights(s3, db: Database, cfg: PipelineConfig, work: Path) -> tuple[str, str | None]:
    """(what ultralytics loads, the parent model id) for ``training.base_model``."""

    base = cfg.training.base_model
    if base == "champion":
        champ = champion(db)
        if champ:
            return str(resolve_model(champ["uri"], s3, work / "cache")), champ["_id"]
        base = cfg.inference.model_uri  # no champion yet: what inference uses
    if base and base.endswith((".yaml", ".yml")):
        return base, None  # an architecture: random weights (nothing is downloaded)
    path = resolve_model(base, s3, work / "cache")
    if path.suffix != ".pt":
        # ultralytics trains .pt checkpoints only (the default detector is Darknet weights):
        # start from the bundled YOLOv8 checkpoint, whose pretrained backbone transfers
        log.info("training: %s is not an ultralytics checkpoint; starting from %s", path.name, FALL_MODEL_URI)
        path = resolve_model(FALL_MODEL_URI, s3, work / "cache")
    return str(path), None


def train_model(
    s3,
    db: Database,
    cfg: PipelineConfig,
    version: str | None = None,
    *,
    run_id: str | None = None,
    work_dir: str | Path,
    callbacks: Mapping[str, Callable[..., Any]] | None = None,
) -> dict[str, Any]:
    """Train on training-set ``version`` (default: the latest); return the ``models`` document.

    ``callbacks``: ultralytics callbacks by event name (tests use one to fail mid-way).
    """

    ts = db[trainset.TRAINSETS].find_one({"_id": version}) if version else trainset.latest_version(db)
    if not ts or ts.get("state") != trainset.COMPLETE:
        raise TrainingFailed(f"no complete training-set version {version or '(latest)'} to train on")
    tc = cfg.training
    model_id = f"model-{ts['_id']}-{uuid.uuid4().hex[:8]}"
    work = Path(work_dir) / model_id
    work.mkdir(parents=True, exist_ok=True)
    doc = {
        "_id": model_id,
        "status": TRAINING,
        "champion": False,
        "trainset_version": ts["_id"],
        "trainset_uri": ts["uri"],
        "classes": ts.get("classes"),
        "config": tc.model_dump(),
        "run_id": run_id,
        "created_at": _now(),
    }
    db[MODELS].insert_one(doc)
    started = time.monotonic()
    try:
        data_yaml = trainset.download(s3, ts["uri"], work / "data")
        weights, parent = _base_weights(s3, db, cfg, work)
        db[MODELS].update_one({"_id": model_id}, {"$set": {"parent_model": parent, "base": weights}})
        yolo = ultralytics_model(weights)
        for event, fn in (callbacks or {}).items():
            yolo.add_callback(event, fn)
        yolo.train(
            data=str(data_yaml),
            epochs=tc.epochs,
            imgsz=tc.imgsz,
            batch=tc.batch,
            device=_device(tc.device),
            workers=tc.workers,
            seed=tc.seed,
            deterministic=True,
            project=str(work / "runs"),
            name="train",
            exist_ok=True,
            plots=False,
            verbose=False,
            amp=False,
        )
        best = work / "runs" / "train" / "weights" / "best.pt"
        if not best.is_file():
            best = work / "runs" / "train" / "weights" / "last.pt"
        if not best.is_file():
            raise RuntimeError("training finished without writing a checkpoint")
        key = join_key(cfg.storage.output_prefix, "models", model_id, "best.pt")
        bucket = cfg.storage.out_bucket
        if exists(s3, bucket, key):  # model ids are unique; never overwrite a checkpoint
            raise RuntimeError(f"s3://{bucket}/{key} exists already")
        s3.upload_file(str(best), bucket, key)
    except Exception as exc:
        elapsed = time.monotonic() - started
        db[MODELS].update_one(
            {"_id": model_id},
            {
                "$set": {
                    "status": FAILED,
                    "error": f"{type(exc).__name__}: {exc}",
                    "train_seconds": elapsed,
                    "failed_at": _now(),
                }
            },
        )
        log.error("training %s failed after %.0f s: %s; the champion stays", model_id, elapsed, exc)
        raise TrainingFailed(f"training {model_id} failed: {type(exc).__name__}: {exc}") from exc
    elapsed = time.monotonic() - started
    return db[MODELS].find_one_and_update(
        {"_id": model_id},
        {
            "$set": {
                "status": TRAINED,
                "uri": s3_uri(bucket, key),
                "train_seconds": elapsed,
                "trained_at": _now(),
            }
        },
        return_document=ReturnDocument.AFTER,
    )


def _val(yolo, data_yaml: Path, split: str, cfg: PipelineConfig, work: Path) -> dict[str, float]:
    res = yolo.val(
        data=str(data_yaml),
        split=split,
        imgsz=cfg.training.imgsz,
        batch=cfg.training.batch,
        device=_device(cfg.training.device),
        workers=cfg.training.workers,
        plots=False,
        verbose=False,
        project=str(work / "val"),
        name=split,
        exist_ok=True,
    )
    box = res.box
    return {
        "map50_95": float(box.map),
        "map50": float(box.map50),
        "precision": float(box.mp),
        "recall": float(box.mr),
    }


def _frame_accuracy(yolo, data_dir: Path, names: Mapping[int, str], cfg: PipelineConfig) -> float:
    """Share of test frames whose predictions match the labels (no missed, spurious or swapped box)."""
    from PIL import Image

    images = sorted((data_dir / "images" / "test").iterdir())
    if not images:
        return float("nan")
    good = 0
    for img in images:
        w, h = Image.open(img).size
        labels = []
        txt = data_dir / "labels" / "test" / f"{img.stem}.txt"
        for line in txt.read_text().splitlines() if txt.exists() else []:
            c, cx, cy, bw, bh = line.split()
            cx, cy, bw, bh = float(cx) * w, float(cy) * h, float(bw) * w, float(bh) * h
            labels.append((names[int(c)], (cx - bw / 2, cy - bh / 2, bw, bh)))
        res = yolo.predict(
            str(img),
            imgsz=cfg.training.imgsz,
            conf=cfg.inference.confidence_threshold,
            device=_device(cfg.training.device),
            verbose=False,
        )[0]
        preds = []
        for (x0, y0, x1, y1), c in zip(res.boxes.xyxy.tolist(), res.boxes.cls.tolist(), strict=True):
            preds.append((res.names[int(c)], (x0, y0, x1 - x0, y1 - y0)))
        r = match_frame(preds, labels, cfg.review)
        good += not (r.missed or r.spurious or r.class_swaps)
    return good / len(images)


def measure(
    s3, cfg: PipelineConfig, checkpoint_uri: str, trainset_uri: str | None, work: Path
) -> dict[str, Any]:
    """Metrics of a checkpoint on the test set (and on its training frames, when given)."""
    import yaml

    manifest = trainset.check_test_set(s3, cfg.evaluation.test_set)
    test_dir = work / f"test-{manifest['version']}"
    if not (test_dir / "data.yaml").is_file():
        trainset.download(s3, cfg.evaluation.test_set, test_dir)
    yolo = ultralytics_model(resolve_model(checkpoint_uri, s3, work / "cache"))
    metrics = _val(yolo, test_dir / "data.yaml", "test", cfg, work)
    names = {int(k): v for k, v in yaml.safe_load((test_dir / "data.yaml").read_text())["names"].items()}
    metrics["accuracy"] = _frame_accuracy(yolo, test_dir, names, cfg)
    train_metrics = None
    if trainset_uri:
        train_dir = work / "trainset"
        if not (train_dir / "data.yaml").is_file():
            trainset.download(s3, trainset_uri, train_dir)
        train_metrics = _val(yolo, train_dir / "data.yaml", "train", cfg, work)
    return {"metrics": metrics, "train_metrics": train_metrics, "test_set_version": manifest["version"]}


def evaluate_model(
    s3, db: Database, cfg: PipelineConfig, model_id: str, *, work_dir: str | Path
) -> dict[str, Any]:
    """Evaluate a registered model on the test set; store and return its metrics."""
    doc = db[MODELS].find_one({"_id": model_id})
    if not doc or not doc.get("uri"):
        raise ValueError(f"model {model_id} is not a trained model in the registry")
    work = Path(work_dir) / f"eval-{model_id}-{uuid.uuid4().hex[:6]}"
    try:
        out = measure(s3, cfg, doc["uri"], doc.get("trainset_uri"), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    db[MODELS].update_one({"_id": model_id}, {"$set": {**out, "evaluated_at": _now()}})
    return out


def promote(
    s3, db: Database, cfg: PipelineConfig, model_id: str, *, work_dir: str | Path, run_id: str | None = None
) -> dict[str, Any]:
    """Make ``model_id`` the champion if it beats the current one by the margin.

    Returns ``{promoted, reason, challenger, champion, metric, challenger_value,
    champion_value, margin}`` and records it on the challenger; appends the round to the
    evaluation history (with the champion's numbers after the decision)."""

    chal = db[MODELS].find_one({"_id": model_id})
    if not chal or chal.get("status") != TRAINED or not chal.get("metrics"):
        raise ValueError(f"model {model_id} is not a trained, evaluated model")
    metric, margin = cfg.evaluation.metric, cfg.training.promotion_margin
    champ = champion(db)
    if champ and champ.get("test_set_version") != chal["test_set_version"]:
        log.info("champion %s was measured on another test set; measuring it again", champ["_id"])
        evaluate_model(s3, db, cfg, champ["_id"], work_dir=work_dir)
        champ = db[MODELS].find_one({"_id": champ["_id"]})
        if champ.get("test_set_version") != chal["test_set_version"]:
            raise trainset.BadTestSet(
                "the test set changed between the challenger's evaluation and the champion's"
            )
    cv = chal["metrics"].get(metric)
    hv = champ["metrics"].get(metric) if champ else None
    if champ is None:
        promoted, reason = True, "first model: no champion yet"
    elif cv is not None and hv is not None and cv >= hv + margin:
        promoted, reason = True, f"{metric} {cv:.4f} >= champion {hv:.4f} + margin {margin}"
    else:
        promoted, reason = False, f"{metric} {cv:.4f} < champion {hv:.4f} + margin {margin}"
    if promoted:
        if champ:
            db[MODELS].update_one(
                {"_id": champ["_id"]},
                {"$set": {"champion": False, "dethroned_at": _now(), "dethroned_by": model_id}},
            )
        db[MODELS].update_one({"_id": model_id}, {"$set": {"champion": True, "promoted_at": _now()}})
    result = {
        "promoted": promoted,
        "reason": reason,
        "challenger": model_id,
        "champion": model_id if promoted else champ["_id"],
        "previous_champion": champ["_id"] if champ else None,
        "metric": metric,
        "challenger_value": cv,
        "champion_value": hv,
        "margin": margin,
    }
    db[MODELS].update_one({"_id": model_id}, {"$set": {"promotion": result}})
    after = db[MODELS].find_one({"_id": result["champion"]})
    record_evaluation(
        db,
        {
            "model_id": model_id,
            "run_id": run_id,
            "test_set_version": chal["test_set_version"],
            "metrics": chal["metrics"],
            "train_metrics": chal.get("train_metrics"),
            "champion": after["_id"],
            "champion_metrics": after["metrics"],
            "champion_train_metrics": after.get("train_metrics"),
            "promoted": promoted,
            "trainset_version": chal["trainset_version"],
        },
    )
    log.info("promotion of %s: %s (%s)", model_id, "yes" if promoted else "no", reason)
    return result


def run_spec(db: Database, cfg: PipelineConfig, run_id: str, decision: Mapping[str, Any] | None = None):
    """The ClearML training task of one retrain run: config, lineage, metrics, promotion."""

    doc = db[MODELS].find_one({"run_id": run_id}, sort=[("created_at", -1)]) or {}
    spec = RunSpec(
        project=cfg.tracking.project_name,
        task_name=f"framesift_retrain {run_id}",
        task_type="training",
        tags=["framesift", "retrain", str(doc.get("status", "not trained"))],
        offline=cfg.tracking.offline,
        config={"training": cfg.training.model_dump(), "evaluation": cfg.evaluation.model_dump()},
        params={
            "run_id": run_id,
            "model_id": doc.get("_id"),
            "status": doc.get("status"),
            "trainset_version": doc.get("trainset_version"),
            "parent_model": doc.get("parent_model"),
            "checkpoint": doc.get("uri"),
            "test_set_version": doc.get("test_set_version"),
            "promoted": (doc.get("promotion") or {}).get("promoted"),
            "promotion_reason": (doc.get("promotion") or {}).get("reason"),
            "error": doc.get("error"),
            "decision_after": (decision or {}).get("outcome"),
        },
    )
    for name, value in (doc.get("metrics") or {}).items():
        spec.scalar("test", name, value)
    for name, value in (doc.get("train_metrics") or {}).items():
        spec.scalar("train", name, value)
    if doc.get("train_seconds") is not None:
        spec.scalar("cost", "train_seconds", doc["train_seconds"])
    return spec
