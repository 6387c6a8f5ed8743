"""Labels back from the platform, into versioned YOLO training sets in S3.

:func:`collect_labels` exports the finished sequences of ``labeling_queue`` (labeling
status Done) through the backend and records one Mongo ``labels`` document per frame
(``_id`` = ``<video_id>/<frame_name>``) with the cleaned boxes, the boxes it rejected and
why, the annotator and the platform's annotation id. :func:`write_version` then writes a
new training-set version when labels changed since the last one:

    <output_prefix>/trainsets/<version>/images/{train,val}/<frame>.png   (server-side copies)
    <output_prefix>/trainsets/<version>/labels/{train,val}/<frame>.txt   (YOLO: cls cx cy w h, normalised)
    <output_prefix>/trainsets/<version>/data.yaml                       (names, splits)
    <output_prefix>/trainsets/<version>/manifest.json                   (frames, classes, issues)

Versions (``v0001``, ``v0002``, ...) are documents in Mongo ``trainsets`` with a unique id:
a version is written once and never overwritten (a half-written one stays ``writing`` and
is never used; the next sync writes a new number). Each version holds every usable
labeled frame so far; class ids only ever grow (new classes are appended).

Bad input is recorded, never fatal: boxes partly outside the image are clipped
(``clipped``), boxes with no area inside it are rejected (``outside_image``), empty class
names (``empty_class``) and, when ``important_classes`` is set, other classes
(``unknown_class``) are rejected; an annotation exported again unchanged is a
``duplicate_export`` (no new version); a frame the platform returns that the sequence does
not hold is ``unknown_frame``; a Done sequence whose export lacks frames is ``partial``
(the frames that came back are kept; the record stays open and the rest is retried next sync).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml
from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from framesift.config.schema import PipelineConfig
from framesift.io.labels import LABELS
from framesift.io.s3 import get_bytes, join_key, parse_s3_uri, put_bytes, s3_uri
from framesift.labeling import queue as lq
from framesift.labeling.base import DONE, LabelingBackend, image_size

log = logging.getLogger("framesift.trainset")

TRAINSETS = "trainsets"
WRITING, COMPLETE = "writing", "complete"


def _now() -> datetime:
    return datetime.now(UTC)


def ensure_indexes(db: Database) -> None:
    db[LABELS].create_index([("pending", ASCENDING)], name="pending")
    db[LABELS].create_index([("video_id", ASCENDING)], name="video_id")
    db[TRAINSETS].create_index([("state", ASCENDING), ("number", DESCENDING)], name="state_number")


def trainsets_prefix(cfg: PipelineConfig) -> str:
    return join_key(cfg.storage.output_prefix, "trainsets")


# ---------------------------------------------------------------- boxes


def clean_boxes(
    boxes: Iterable[Any], width: int, height: int, allowed: Sequence[str] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Boxes ``{class_name, bbox: [x, y, w, h]}`` (or Box) fit for training, and the issues.

    Returns (kept boxes, issues); an issue is ``{kind, class_name, bbox[, clipped_to]}``.
    """
    kept, issues = [], []
    for box in boxes:
        if hasattr(box, "class_name"):
            name, bbox = box.class_name, list(box.bbox)
        else:
            name, bbox = box.get("class_name"), list(box.get("bbox") or [])
        name = "" if name is None else str(name).strip()
        item = {"class_name": name, "bbox": bbox}
        if not name:
            issues.append({"kind": "empty_class", **item})
            continue
        if allowed is not None and name not in allowed:
            issues.append({"kind": "unknown_class", **item})
            continue
        if len(bbox) != 4:
            issues.append({"kind": "bad_box", **item})
            continue
        x, y, w, h = (float(v) for v in bbox)
        if w < 0:  # a box drawn right to left
            x, w = x + w, -w
        if h < 0:
            y, h = y + h, -h
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(width), x + w), min(float(height), y + h)
        if x1 - x0 < 1 or y1 - y0 < 1:
            issues.append({"kind": "outside_image", **item})
            continue
        clipped = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            issues.append({"kind": "clipped", **item, "clipped_to": clipped})
        kept.append({"class_name": name, "bbox": clipped})
    return kept, issues


def yolo_lines(boxes: Iterable[Mapping[str, Any]], classes: Sequence[str], width: int, height: int) -> str:
    """YOLO label text: ``class cx cy w h``, normalised to the image size."""
    ids = {c: i for i, c in enumerate(classes)}
    lines = []
    for b in boxes:
        x, y, w, h = b["bbox"]
        lines.append(
            f"{ids[b['class_name']]} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} "
            f"{w / width:.6f} {h / height:.6f}"
        )
    return "\n".join(lines) + ("\n" if lines else "")


# ---------------------------------------------------------------- export from the platform


def collect_labels(
    s3, db: Database, cfg: PipelineConfig, backend: LabelingBackend, *, run_id: str | None = None
) -> dict[str, Any]:
    """Export every finished, not yet exported sequence into Mongo ``labels``.

    Returns counts: sequences, frames, new, updated, duplicate, rejected_boxes, clipped_boxes,
    partial (sequences), unknown_frames, and ``issues`` (a Counter as a dict).
    """
    ensure_indexes(db)
    lq.ensure_indexes(db)
    allowed = list(cfg.important_classes) or None
    counts: Counter = Counter()
    issues: Counter = Counter()
    query = {
        "state": lq.PUSHED,
        "backend": backend.name,
        lq.LABELING_STATUS: DONE,
        "export.complete": {"$ne": True},
    }
    for record in list(db[lq.COLLECTION].find(query)):
        counts["sequences"] += 1
        expected = list(record.get("frames") or [])
        anns = backend.export_annotations(record["backend_ids"])
        latest: dict[str, Any] = {}
        for ann in anns:
            if ann.frame_name not in expected:
                issues["unknown_frame"] += 1
                log.warning(
                    "%s: the platform returned frame %s, which the sequence does not hold",
                    record["_id"],
                    ann.frame_name,
                )
                continue
            prev = latest.get(ann.frame_name)
            if prev is None or (ann.updated_at or "") >= (prev.updated_at or ""):
                latest[ann.frame_name] = ann
        missing = [n for n in expected if n not in latest]
        bucket, frames_key = parse_s3_uri(record["frames_prefix"])
        for name, ann in latest.items():
            outcome = _record_frame(s3, db, record, bucket, frames_key, name, ann, allowed, run_id)
            counts[outcome["result"]] += 1
            counts["frames"] += 1
            for issue in outcome["issues"]:
                issues[issue["kind"]] += 1
        export = {"exported_at": _now(), "run_id": run_id, "frames": len(latest), "missing": missing}
        export["complete"] = not missing
        if missing:
            counts["partial"] += 1
            issues["partial"] += 1
            log.warning(
                "%s: the platform returned %d of %d frames; will retry the rest",
                record["_id"],
                len(latest),
                len(expected),
            )
        db[lq.COLLECTION].update_one({"_id": record["_id"]}, {"$set": {"export": export}})
    counts["rejected_boxes"] = sum(
        v for k, v in issues.items() if k in ("empty_class", "unknown_class", "outside_image", "bad_box")
    )
    counts["clipped_boxes"] = issues["clipped"]
    return {**{k: int(v) for k, v in counts.items()}, "issues": dict(issues)}


def _record_frame(s3, db, record, bucket, frames_key, name, ann, allowed, run_id) -> dict[str, Any]:
    _id = f"{record['video_id']}/{name}"
    prev = db[LABELS].find_one({"_id": _id}, {"annotation_id": 1, "labeled_at": 1, "width": 1, "height": 1})
    if prev and prev.get("annotation_id") == ann.annotation_id and prev.get("labeled_at") == ann.updated_at:
        db[LABELS].update_one({"_id": _id}, {"$inc": {"duplicate_exports": 1}})
        return {"result": "duplicate", "issues": [{"kind": "duplicate_export"}]}
    key = join_key(frames_key, name)
    if prev and prev.get("width"):
        width, height = int(prev["width"]), int(prev["height"])
    else:
        width, height = image_size(get_bytes(s3, bucket, key))
    boxes, issues = clean_boxes(ann.boxes, width, height, allowed)
    now = _now()
    doc = {
        "video_id": record["video_id"],
        "video_key": record.get("video_key"),
        "frame_name": name,
        "image": {"bucket": bucket, "key": key},
        "width": width,
        "height": height,
        "boxes": boxes,
        "issues": issues,
        "annotator": ann.annotator,
        "annotation_id": ann.annotation_id,
        "sequence_id": ann.sequence_id,
        "queue_id": record["_id"],
        "selection_id": record.get("selection_id"),
        "labeled_at": ann.updated_at,
        "recorded_at": now,
        "run_id": run_id,
        "pending": True,  # not in a training-set version yet
    }
    db[LABELS].update_one(
        {"_id": _id},
        {
            "$set": doc,
            "$setOnInsert": {"first_recorded_at": now},
            "$push": {"history": {"annotation_id": ann.annotation_id, "at": now}},
        },
        upsert=True,
    )
    return {"result": "updated" if prev else "new", "issues": issues}


# ---------------------------------------------------------------- versions


def _split(frame_id: str, val_fraction: float) -> str:
    h = int(hashlib.sha1(frame_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def latest_version(db: Database) -> dict[str, Any] | None:
    return db[TRAINSETS].find_one({"state": COMPLETE}, sort=[("number", DESCENDING)])


def _next_number(db: Database) -> int:
    last = db[TRAINSETS].find_one({}, sort=[("number", DESCENDING)], projection={"number": 1})
    return int(last["number"]) + 1 if last else 1


def write_version(
    s3, db: Database, cfg: PipelineConfig, *, run_id: str | None = None
) -> dict[str, Any] | None:
    """A new training-set version when some label changed since the last; else None."""
    ensure_indexes(db)
    if db[LABELS].count_documents({"pending": True}, limit=1) == 0:
        return None
    previous = latest_version(db)
    docs = list(db[LABELS].find({}).sort("_id", ASCENDING))
    pending_ids = [d["_id"] for d in docs if d.get("pending")]
    classes = list(cfg.important_classes) or list((previous or {}).get("classes") or [])
    for d in docs:
        for b in d.get("boxes") or []:
            if b["class_name"] not in classes:
                classes.append(b["class_name"])  # appended: earlier ids keep their meaning
    while True:  # claim the next number; two syncs at once get two numbers
        number = _next_number(db)
        version = f"v{number:04d}"
        try:
            db[TRAINSETS].insert_one(
                {"_id": version, "number": number, "state": WRITING, "created_at": _now(), "run_id": run_id}
            )
            break
        except DuplicateKeyError:
            continue
    out_bucket = cfg.storage.out_bucket
    prefix = join_key(trainsets_prefix(cfg), version)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    frames = []
    for d in docs:
        stem = f"{d['video_id']}-{d['frame_name'].rsplit('.', 1)[0]}"
        ext = d["frame_name"].rsplit(".", 1)[-1] if "." in d["frame_name"] else "png"
        split = _split(d["_id"], cfg.training.val_fraction)
        img_key = join_key(prefix, "images", split, f"{stem}.{ext}")
        s3.copy_object(
            Bucket=out_bucket,
            Key=img_key,
            CopySource={"Bucket": d["image"]["bucket"], "Key": d["image"]["key"]},
        )
        text = yolo_lines(d.get("boxes") or [], classes, d["width"], d["height"])
        put_bytes(
            s3, out_bucket, join_key(prefix, "labels", split, f"{stem}.txt"), text.encode(), "text/plain"
        )
        splits[split].append(f"images/{split}/{stem}.{ext}")
        frames.append({"id": d["_id"], "split": split, "boxes": len(d.get("boxes") or [])})
    if not splits["val"]:
        splits["val"] = list(splits["train"])  # too few frames to hold some back
    data = {
        "path": ".",
        "train": "images/train",
        "val": "images/val" if any(f["split"] == "val" for f in frames) else "images/train",
        "names": dict(enumerate(classes)),
        "nc": len(classes),
    }
    put_bytes(
        s3,
        out_bucket,
        join_key(prefix, "data.yaml"),
        yaml.safe_dump(data, sort_keys=False).encode(),
        "text/yaml",
    )
    issues = Counter(i["kind"] for d in docs for i in d.get("issues") or [])
    manifest = {
        "version": version,
        "parent": (previous or {}).get("_id"),
        "classes": classes,
        "frames": frames,
        "n_frames": len(frames),
        "n_train": sum(f["split"] == "train" for f in frames),
        "n_val": sum(f["split"] == "val" for f in frames),
        "n_new": len(pending_ids),
        "n_boxes": sum(f["boxes"] for f in frames),
        "issues": dict(issues),
    }
    put_bytes(
        s3,
        out_bucket,
        join_key(prefix, "manifest.json"),
        json.dumps(manifest, indent=1).encode(),
        "application/json",
    )
    meta = {k: v for k, v in manifest.items() if k != "frames"}
    done = {
        **meta,
        "state": COMPLETE,
        "uri": s3_uri(out_bucket, join_key(prefix, "data.yaml")),
        "prefix": s3_uri(out_bucket, prefix),
        "completed_at": _now(),
    }
    db[TRAINSETS].update_one({"_id": version}, {"$set": done})
    db[LABELS].update_many({"_id": {"$in": pending_ids}}, {"$set": {"pending": False, "version": version}})
    log.info(
        "training set %s: %d frames (%d new), classes %s", version, len(frames), len(pending_ids), classes
    )
    return db[TRAINSETS].find_one({"_id": version})


def export(
    s3, db: Database, cfg: PipelineConfig, backend: LabelingBackend, *, run_id: str | None = None
) -> dict[str, Any]:
    """collect_labels then write_version: the labels DAG's export step."""
    counts = collect_labels(s3, db, cfg, backend, run_id=run_id)
    version = write_version(s3, db, cfg, run_id=run_id)
    return {
        "labels": counts,
        "version": version["_id"] if version else None,
        "uri": version["uri"] if version else None,
        "n_new": version["n_new"] if version else 0,
    }


# ---------------------------------------------------------------- download, test sets


def download(s3, uri: str, dest) -> Any:
    """Copy a training/test set (the folder of ``uri``'s data.yaml) to ``dest``; return the
    local data.yaml, rewritten with an absolute ``path``."""
    from pathlib import Path

    bucket, key = parse_s3_uri(uri)
    prefix = key.rsplit("/", 1)[0]
    dest = Path(dest)
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            rel = item["Key"][len(prefix) + 1 :]
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target))
    data_path = dest / "data.yaml"
    data = yaml.safe_load(data_path.read_text())
    data["path"] = str(dest.resolve())
    data_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return data_path


def content_version(label_texts: Mapping[str, str], classes: Sequence[str]) -> str:
    """A version id from the content: image names, their label text and the classes."""
    h = hashlib.sha256(json.dumps([sorted(label_texts.items()), list(classes)]).encode())
    return "t" + h.hexdigest()[:12]


def write_test_set(
    s3, cfg: PipelineConfig, items: Sequence[Mapping[str, Any]], classes: Sequence[str], name: str = "test"
) -> str:
    """Freeze a test set: ``items`` are ``{name, image (bytes) | source {bucket, key}, width,
    height, boxes}``. Written under ``<output_prefix>/testsets/<name>-<content version>/``
    (the same content always gives the same place, never another's); returns the data.yaml URI."""
    texts = {it["name"]: yolo_lines(it["boxes"], classes, it["width"], it["height"]) for it in items}
    version = content_version(texts, classes)
    bucket = cfg.storage.out_bucket
    prefix = join_key(cfg.storage.output_prefix, "testsets", f"{name}-{version}")
    for it in items:
        stem = it["name"].rsplit(".", 1)[0]
        img_key = join_key(prefix, "images", "test", it["name"])
        if "image" in it:
            put_bytes(s3, bucket, img_key, it["image"])
        else:
            s3.copy_object(
                Bucket=bucket,
                Key=img_key,
                CopySource={"Bucket": it["source"]["bucket"], "Key": it["source"]["key"]},
            )
        put_bytes(s3, bucket, join_key(prefix, "labels", "test", f"{stem}.txt"), texts[it["name"]].encode())
    data = {
        "path": ".",
        "train": "images/test",
        "val": "images/test",
        "test": "images/test",
        "names": dict(enumerate(classes)),
        "nc": len(classes),
    }
    put_bytes(s3, bucket, join_key(prefix, "data.yaml"), yaml.safe_dump(data, sort_keys=False).encode())
    manifest = {
        "version": version,
        "classes": list(classes),
        "n_frames": len(items),
        "labels_sha": {k: hashlib.sha1(v.encode()).hexdigest() for k, v in texts.items()},
    }
    put_bytes(s3, bucket, join_key(prefix, "manifest.json"), json.dumps(manifest).encode())
    return s3_uri(bucket, join_key(prefix, "data.yaml"))


class BadTestSet(RuntimeError):
    """The test set is missing, or its content no longer matches its version."""


def check_test_set(s3, uri: str | None) -> dict[str, Any]:
    """The test set's manifest after checking the labels in S3 still match it.

    Raises BadTestSet when it is not configured, missing, or changed since it was frozen
    (metrics on it would not compare with earlier ones)."""
    if not uri:
        raise BadTestSet("no test set: set evaluation.test_set to a frozen test set's data.yaml")
    bucket, key = parse_s3_uri(uri)
    prefix = key.rsplit("/", 1)[0]
    try:
        manifest = json.loads(get_bytes(s3, bucket, join_key(prefix, "manifest.json")))
    except Exception as exc:
        raise BadTestSet(f"test set {uri}: missing or unreadable ({type(exc).__name__})") from None
    texts = {}
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=join_key(prefix, "labels", "test") + "/"):
        for item in page.get("Contents", []):
            stem = item["Key"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
            texts[stem] = hashlib.sha1(get_bytes(s3, bucket, item["Key"])).hexdigest()
    want = {k.rsplit(".", 1)[0]: v for k, v in manifest["labels_sha"].items()}
    if texts != want:
        changed = sorted(set(texts) ^ set(want) | {k for k in texts if k in want and texts[k] != want[k]})
        raise BadTestSet(
            f"test set {uri} changed since it was frozen as {manifest['version']} ({len(changed)} label file(s) differ, "
            f"e.g. {changed[:3]}); freeze a new test set instead of editing one: metrics across versions do not compare"
        )
    return manifest
