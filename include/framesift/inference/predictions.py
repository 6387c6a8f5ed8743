"""Lightly's prediction layout in S3, and the per-video embeddings file.

The Lightly "datasource root" of a video is its frames folder
(``layout.frames_prefix(cfg, vid)``), so a Lightly Worker pointed at it finds the frames
and, beside them, the predictions::

    <root>/<stem>-<idx>-<ext>.png                                  frames (ingest/extract.py)
    <root>/.lightly/predictions/tasks.json                         ["object-detection", ...]
    <root>/.lightly/predictions/<task>/schema.json                 {"task_type", "categories"}
    <root>/.lightly/predictions/<task>/<stem>-<idx>-<ext>.json     one file per frame

A prediction file reads ``{"file_name": "<stem>-<idx>-<ext>.png", "predictions": [
{"category_id": int, "bbox": [x, y, w, h], "score": float, "probabilities": [...]}, ...]}``
with ``bbox`` in integer pixels from the top-left corner of the frame and
``probabilities`` (optional) one value per schema category, in the schema's id order,
summing to 1.

Embeddings: one ``.npz`` per video and embedding model at
``<video_prefix>/embeddings/<model>.npz`` with ``embeddings`` (N x D float32, rows
L2-normalised), ``frame_names`` (N strings, the order of the manifest) and
``embedding_model_id`` (a 0-d string): which embedding space the rows live in, a short
stable hash of the weights' content hash, the layer the vectors are pooled from, the
input size and the embedder kind (:func:`embedding_model_id`). Distances are only
meaningful between rows with the same id. Files written before the id existed have none:
:func:`read_embeddings_file` gives ``model_id=None`` ("unknown") for them.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from framesift.config.schema import PipelineConfig
from framesift.io import layout
from framesift.io.s3 import get_bytes, join_key, list_objects, parse_s3_uri, put_bytes, put_json, s3_uri

PREDICTIONS_DIR = ".lightly/predictions"
TASK_TYPE = "object-detection"
_IMAGE_EXTS = (".png", ".jpg", ".jpeg")
_PREDICTION_KEYS = {"category_id", "bbox", "score", "probabilities"}
_PROBABILITY_SUM_TOL = 1e-3
_READ_WORKERS = 16


# ---------------------------------------------------------------------------- keys


def datasource_root(cfg: PipelineConfig, vid: str) -> str:
    """The Lightly datasource root of a video: its frames folder."""
    return layout.frames_prefix(cfg, vid)


def predictions_root(cfg: PipelineConfig, vid: str) -> str:
    return join_key(datasource_root(cfg, vid), PREDICTIONS_DIR)


def tasks_key(cfg: PipelineConfig, vid: str) -> str:
    return join_key(predictions_root(cfg, vid), "tasks.json")


def task_prefix(cfg: PipelineConfig, vid: str, task: str) -> str:
    _check_task_name(task)
    return join_key(predictions_root(cfg, vid), task)


def schema_key(cfg: PipelineConfig, vid: str, task: str) -> str:
    return join_key(task_prefix(cfg, vid, task), "schema.json")


def prediction_file_name(frame_name: str) -> str:
    """``bikes-007-mp4.png`` -> ``bikes-007-mp4.json`` (Lightly: the image name, .json)."""
    stem, dot, _ext = frame_name.rpartition(".")
    return (stem if dot else frame_name) + ".json"


def prediction_key(cfg: PipelineConfig, vid: str, task: str, frame_name: str) -> str:
    return join_key(task_prefix(cfg, vid, task), prediction_file_name(frame_name))


def embeddings_key(cfg: PipelineConfig, vid: str, model: str) -> str:
    if not model or "/" in model:
        raise ValueError(f"bad embedding model name {model!r}")
    return join_key(layout.video_prefix(cfg, vid), "embeddings", f"{model}.npz")


def _check_task_name(task: str) -> None:
    if not task or "/" in task or task.startswith("."):
        raise ValueError(f"bad prediction task name {task!r}: one folder name, not starting with '.'")


# ---------------------------------------------------------------------------- building


def make_schema(names: Mapping[int, str], important_classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Lightly's schema.json from the model's id->name map.

    With ``important_classes`` only those categories are listed (ids stay the model's).
    Raises ValueError naming any important class the model does not know.
    """
    ids = sorted(int(i) for i in names)
    if important_classes:
        known = {names[i]: i for i in ids}
        missing = [c for c in important_classes if c not in known]
        if missing:
            raise ValueError(
                f"important_classes {missing} are not classes of the model (it knows {[names[i] for i in ids]})"
            )
        wanted = set(important_classes)
        ids = [i for i in ids if names[i] in wanted]
    return {"task_type": TASK_TYPE, "categories": [{"id": i, "name": str(names[i])} for i in ids]}


def prediction_record(frame_name: str, predictions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {"file_name": frame_name, "predictions": [dict(p) for p in predictions]}


# ---------------------------------------------------------------------------- validation


def validate_schema(schema: Any) -> None:
    """Raise ValueError unless ``schema`` is a Lightly object-detection schema."""
    if not isinstance(schema, dict):
        raise ValueError(f"schema: expected an object, got {type(schema).__name__}")
    task_type = schema.get("task_type")
    if task_type != TASK_TYPE:
        raise ValueError(f"schema: task_type must be {TASK_TYPE!r}, got {task_type!r}")
    categories = schema.get("categories")
    if not isinstance(categories, list) or not categories:
        raise ValueError("schema: categories must be a non-empty list")
    ids, names = set(), set()
    for cat in categories:
        if not isinstance(cat, dict) or set(cat) != {"id", "name"}:
            raise ValueError(f"schema: each category is {{'id', 'name'}}, got {cat!r}")
        if not _is_int(cat["id"]) or cat["id"] < 0:
            raise ValueError(f"schema: category id must be a non-negative int, got {cat['id']!r}")
        if not isinstance(cat["name"], str) or not cat["name"]:
            raise ValueError(f"schema: category name must be a non-empty string, got {cat['name']!r}")
        if cat["id"] in ids or cat["name"] in names:
            raise ValueError(f"schema: duplicate category {cat!r}")
        ids.add(cat["id"])
        names.add(cat["name"])


def validate_prediction(obj: Any, schema: Mapping[str, Any]) -> None:
    """Raise ValueError (with the reason) unless ``obj`` is a valid Lightly prediction file.

    Checks: exactly ``file_name`` (an image name) and ``predictions`` (a list); each
    prediction has an int ``category_id`` listed in the schema, ``bbox`` of 4 ints with
    x, y >= 0 and w, h > 0, ``score`` in [0, 1], and optional ``probabilities``: one
    number in [0, 1] per schema category, summing to 1.
    """
    validate_schema(schema)
    n_categories = len(schema["categories"])
    category_ids = {c["id"] for c in schema["categories"]}
    if not isinstance(obj, dict):
        raise ValueError(f"prediction file: expected an object, got {type(obj).__name__}")
    if set(obj) != {"file_name", "predictions"}:
        raise ValueError(f"prediction file: keys must be file_name and predictions, got {sorted(obj)}")
    file_name = obj["file_name"]
    if not isinstance(file_name, str) or not file_name.lower().endswith(_IMAGE_EXTS):
        raise ValueError(f"file_name must name an image ({', '.join(_IMAGE_EXTS)}), got {file_name!r}")
    preds = obj["predictions"]
    if not isinstance(preds, list):
        raise ValueError(f"{file_name}: predictions must be a list, got {type(preds).__name__}")
    for i, pred in enumerate(preds):
        where = f"{file_name}: predictions[{i}]"
        if not isinstance(pred, dict):
            raise ValueError(f"{where}: expected an object, got {type(pred).__name__}")
        missing = {"category_id", "bbox", "score"} - set(pred)
        if missing:
            raise ValueError(f"{where}: missing {sorted(missing)}")
        extra = set(pred) - _PREDICTION_KEYS
        if extra:
            raise ValueError(f"{where}: unknown keys {sorted(extra)}")
        if not _is_int(pred["category_id"]) or pred["category_id"] not in category_ids:
            raise ValueError(
                f"{where}: category_id {pred['category_id']!r} is not in the schema {sorted(category_ids)}"
            )
        bbox = pred["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_int(v) for v in bbox):
            raise ValueError(f"{where}: bbox must be [x, y, w, h] integer pixels, got {bbox!r}")
        x, y, w, h = bbox
        if x < 0 or y < 0 or w <= 0 or h <= 0:
            raise ValueError(f"{where}: bbox needs x, y >= 0 and w, h > 0, got {bbox!r}")
        if not _is_prob(pred["score"]):
            raise ValueError(f"{where}: score must be a number in [0, 1], got {pred['score']!r}")
        if "probabilities" in pred:
            probs = pred["probabilities"]
            if not isinstance(probs, list) or len(probs) != n_categories:
                raise ValueError(f"{where}: probabilities must list one value per category ({n_categories})")
            if not all(_is_prob(p) for p in probs):
                raise ValueError(f"{where}: probabilities must be numbers in [0, 1], got {probs!r}")
            if abs(sum(probs) - 1.0) > _PROBABILITY_SUM_TOL:
                raise ValueError(f"{where}: probabilities must sum to 1, got {sum(probs):.6f}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_prob(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and 0.0 <= v <= 1.0


# ---------------------------------------------------------------------------- writing


def write_tasks(s3, cfg: PipelineConfig, vid: str, task: str) -> list[str]:
    """Add ``task`` to tasks.json (created when missing); returns the list written."""
    bucket, key = cfg.storage.out_bucket, tasks_key(cfg, vid)
    tasks: list[str] = []
    try:
        existing = json.loads(get_bytes(s3, bucket, key))
        if isinstance(existing, list):
            tasks = [t for t in existing if isinstance(t, str)]
    except s3.exceptions.NoSuchKey:
        pass
    except json.JSONDecodeError:
        tasks = []  # a damaged tasks.json is replaced
    if task not in tasks:
        tasks.append(task)
    put_json(s3, bucket, key, tasks)
    return tasks


def write_schema(s3, cfg: PipelineConfig, vid: str, task: str, schema: dict[str, Any]) -> str:
    validate_schema(schema)
    key = schema_key(cfg, vid, task)
    put_json(s3, cfg.storage.out_bucket, key, schema)
    return key


def dump_prediction(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def write_prediction(s3, cfg: PipelineConfig, vid: str, task: str, record: Mapping[str, Any]) -> str:
    key = prediction_key(cfg, vid, task, record["file_name"])
    put_bytes(s3, cfg.storage.out_bucket, key, dump_prediction(record), "application/json")
    return key


def remove_stale_predictions(s3, cfg: PipelineConfig, vid: str, task: str, frame_names: Iterable[str]) -> int:
    """Delete prediction files of ``task`` for frames not in ``frame_names``; returns how many."""
    bucket, prefix = cfg.storage.out_bucket, task_prefix(cfg, vid, task) + "/"
    keep = {prediction_file_name(n) for n in frame_names} | {"schema.json"}
    stale = [o.key for o in list_objects(s3, bucket, prefix) if o.key[len(prefix) :] not in keep]
    for start in range(0, len(stale), 1000):
        batch = [{"Key": k} for k in stale[start : start + 1000]]
        s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
    return len(stale)


EMBEDDING_MODEL_ID_LENGTH = 16


def embedding_model_id(weights_sha256: str, layer: str, input_size: int | Sequence[int], kind: str) -> str:
    """A short stable id of an embedding space: the same weights, layer, input size and
    embedder kind give the same id on every machine and runtime (torch, ONNX Runtime and
    OpenVINO embeddings agree to cosine >= 0.999, so the runtime is not part of it)."""
    size = (
        "x".join(str(int(v)) for v in input_size)
        if isinstance(input_size, Sequence)
        else str(int(input_size))
    )
    text = json.dumps(
        {"weights": weights_sha256, "layer": layer, "input": size, "kind": kind}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:EMBEDDING_MODEL_ID_LENGTH]


def save_embeddings_npz(
    path: str | os.PathLike[str],
    frame_names: Sequence[str],
    embeddings: np.ndarray,
    model_id: str | None = None,
) -> None:
    """Write the npz to a local file (``embeddings`` may be a memmap: written in chunks)."""
    embeddings = (
        np.asarray(embeddings, dtype=np.float32) if not isinstance(embeddings, np.memmap) else embeddings
    )
    if embeddings.ndim != 2 or embeddings.shape[0] != len(frame_names):
        raise ValueError(f"embeddings shape {embeddings.shape} does not match {len(frame_names)} frame names")
    extra = {"embedding_model_id": np.asarray(model_id, dtype=np.str_)} if model_id else {}
    np.savez(path, embeddings=embeddings, frame_names=np.asarray(list(frame_names), dtype=np.str_), **extra)


def write_embeddings(
    s3, uri: str, frame_names: Sequence[str], embeddings: np.ndarray, model_id: str | None = None
) -> str:
    """Write an in-memory embeddings array to ``uri`` (s3://...npz); returns the URI."""
    buf = io.BytesIO()
    save_embeddings_npz(buf, frame_names, embeddings, model_id)
    bucket, key = parse_s3_uri(uri)
    put_bytes(s3, bucket, key, buf.getvalue(), "application/octet-stream")
    return uri


# ---------------------------------------------------------------------------- reading


def read_schema(s3, cfg: PipelineConfig, vid: str, task: str) -> dict[str, Any]:
    return json.loads(get_bytes(s3, cfg.storage.out_bucket, schema_key(cfg, vid, task)))


def read_tasks(s3, cfg: PipelineConfig, vid: str) -> list[str]:
    try:
        return json.loads(get_bytes(s3, cfg.storage.out_bucket, tasks_key(cfg, vid)))
    except s3.exceptions.NoSuchKey:
        return []


def read_predictions(s3, cfg: PipelineConfig, vid: str, task: str) -> dict[str, list[dict[str, Any]]]:
    """``{frame file_name: [prediction, ...]}`` for every prediction file of ``task``, sorted by name
    (frame names are zero-padded, so that is time order)."""
    bucket, prefix = cfg.storage.out_bucket, task_prefix(cfg, vid, task) + "/"
    keys = [o.key for o in list_objects(s3, bucket, prefix) if o.key != prefix + "schema.json"]
    keys = [k for k in keys if k.endswith(".json") and "/" not in k[len(prefix) :]]

    def load(key: str) -> dict[str, Any]:
        return json.loads(get_bytes(s3, bucket, key))

    out: dict[str, list[dict[str, Any]]] = {}
    if not keys:
        return out
    with ThreadPoolExecutor(min(_READ_WORKERS, len(keys)), thread_name_prefix="framesift-preds") as pool:
        for record in pool.map(load, keys):
            out[record["file_name"]] = record["predictions"]
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class EmbeddingsFile:
    """An embeddings file read back: ``model_id`` is None for files written before ids."""

    frame_names: list[str]
    embeddings: np.ndarray
    model_id: str | None


def load_embeddings_npz(source) -> EmbeddingsFile:
    """An embeddings .npz from a local path or file object."""
    with np.load(source, allow_pickle=False) as data:
        names = [str(n) for n in data["frame_names"]]
        array = np.asarray(data["embeddings"], dtype=np.float32)
        model_id = str(data["embedding_model_id"]) if "embedding_model_id" in data.files else None
    return EmbeddingsFile(names, array, model_id or None)


def read_embeddings_file(s3, uri: str) -> EmbeddingsFile:
    """Frame names, the N x D float32 array and the embedding model id (None: unknown, a file
    written before ids) of an embeddings .npz at ``uri``."""
    bucket, key = parse_s3_uri(uri)
    return load_embeddings_npz(io.BytesIO(get_bytes(s3, bucket, key)))


def read_embeddings(s3, uri: str) -> tuple[list[str], np.ndarray]:
    """(frame names, N x D float32 array) from an embeddings .npz at ``uri``; the model id
    too: :func:`read_embeddings_file`."""
    f = read_embeddings_file(s3, uri)
    return f.frame_names, f.embeddings


def embeddings_uri(cfg: PipelineConfig, vid: str, model: str) -> str:
    return s3_uri(cfg.storage.out_bucket, embeddings_key(cfg, vid, model))


def load_video_outputs(s3, cfg: PipelineConfig, doc: dict[str, Any]):
    """(frame names, frame ids, embeddings, Lightly predictions per frame, schema) of one
    inferred video, from its registry document. Frame ids are ``<video_id>/<name>``."""
    inf = doc["inference"]
    names, emb = read_embeddings(s3, inf["embeddings_uri"])
    preds = read_predictions(s3, cfg, doc["_id"], inf["task_name"])
    schema = read_schema(s3, cfg, doc["_id"], inf["task_name"])
    ids = [f"{doc['_id']}/{n}" for n in names]  # frame names repeat across videos; ids do not
    return names, ids, emb, [preds.get(n, []) for n in names], schema
