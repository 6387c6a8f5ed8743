"""The selection stage of an ingest run: one selection over the whole batch of videos.

Reads each inferred video's embeddings and Lightly predictions from S3, the datapool
(frames selected by earlier runs) from the ``selections`` collection, runs the selection
engine, writes the report and the selection's datapool file to S3, records the
``selections`` document and moves each video to ``selected``. Idempotent per run: a
retry finds the finished selection and returns it.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pymongo.database import Database

from framesift import predictions, registry
from framesift.config import PipelineConfig
from framesift.registry import VideoRef
from framesift.selection import SelectionInputs, parse_selection, select
from framesift.storage import get_bytes, join_key, parse_s3_uri, put_bytes, s3_uri

log = logging.getLogger("framesift.select")

SELECTIONS = "selections"


def selection_id(run_id: str, video_ids: list[str]) -> str:
    return hashlib.sha1(f"{run_id}|{','.join(sorted(video_ids))}".encode()).hexdigest()[:16]


def _datapool(s3, db: Database, exclude: str) -> tuple[list[str], np.ndarray | None]:
    """Frames selected by earlier selections: their ids and embeddings."""
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for doc in db[SELECTIONS].find(
        {"_id": {"$ne": exclude}, "datapool_uri": {"$ne": None}}, {"datapool_uri": 1}
    ):
        pool_names, emb = predictions.read_embeddings(s3, doc["datapool_uri"])
        names += pool_names
        arrays.append(emb)
    return names, (np.concatenate(arrays) if arrays else None)


def _load_video(s3, cfg: PipelineConfig, doc: dict[str, Any]):
    """(frame ids, embeddings, Lightly predictions, schema) of one inferred video."""
    inf = doc["inference"]
    names, emb = predictions.read_embeddings(s3, inf["embeddings_uri"])
    preds = predictions.read_predictions(s3, cfg, doc["_id"], inf["task_name"])
    schema = predictions.read_schema(s3, cfg, doc["_id"], inf["task_name"])
    ids = [f"{doc['_id']}/{n}" for n in names]  # frame names repeat across videos; ids do not
    return names, ids, emb, [preds.get(n, []) for n in names], schema


def select_batch(
    s3,
    db: Database,
    cfg: PipelineConfig,
    refs: list[VideoRef],
    *,
    run_id: str,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Select over the run's inferred videos; return the selection record (plain data).

    ``overrides``: selection settings from the run's params (``n_samples``,
    ``proportion_samples``, ``strategies``) that replace the config's for this run.
    """
    sid = selection_id(run_id, [r.video_id for r in refs])
    done = db[SELECTIONS].find_one({"_id": sid, "state": "done"})
    if done:
        log.info("selection %s already done (a retry): %d frames", sid, len(done["selected"]))
        return done

    sel_cfg = cfg.selection.model_copy(update=overrides or {})
    spec = parse_selection(sel_cfg, cfg.important_classes)
    claimed = []
    for ref in refs:
        doc = registry.claim(
            db, ref.video_id, run_id, to=registry.SELECTING, from_statuses=[registry.INFERRED]
        )
        if doc is not None:
            claimed.append(doc)
    if not claimed:
        log.info("selection %s: no inferred videos to select from", sid)
        return {"_id": sid, "state": "empty", "selected": [], "videos": []}

    try:
        record = _select(s3, db, cfg, sid, run_id, claimed, sel_cfg, spec)
    except Exception as exc:
        for doc in claimed:
            registry.mark(
                db,
                doc["_id"],
                registry.FAILED,
                run_id,
                reason=f"selecting: {exc}",
                failed_stage=registry.SELECTING,
            )
        raise
    return record


def _select(s3, db, cfg, sid, run_id, docs, sel_cfg, spec) -> dict[str, Any]:
    from framesift.report import build_report  # matplotlib loads only here

    names, ids, videos, frame_idx, embs, preds = [], [], [], [], [], []
    schema: dict[str, Any] = {}
    for doc in docs:
        v_names, v_ids, emb, v_preds, schema = _load_video(s3, cfg, doc)
        names += v_names
        ids += v_ids
        videos += [doc["key"]] * len(v_names)
        frame_idx += list(range(len(v_names)))
        embs.append(emb)
        preds += v_preds
    if not ids:
        for doc in docs:
            registry.mark(db, doc["_id"], registry.NOT_SELECTED, run_id, selection_id=sid, selected_frames=[])
        return {"_id": sid, "state": "empty", "selected": [], "videos": []}

    embeddings = np.concatenate(embs).astype(np.float32, copy=False)
    pool_ids, pool_emb = _datapool(s3, db, sid)
    inputs = SelectionInputs(
        frame_names=ids,
        embeddings=embeddings,
        video_keys=videos,
        predictions=preds,
        categories=schema.get("categories"),
        task_name=docs[0]["inference"]["task_name"],
    )
    if sel_cfg.n_samples and sel_cfg.n_samples > len(ids):
        # a small batch is not a config error: take everything it has
        log.warning(
            "selection %s: n_samples %d > %d input frames; selecting all", sid, sel_cfg.n_samples, len(ids)
        )
        budget = len(ids)
    else:
        budget = spec.budget(len(ids))
    result = select(inputs, spec, datapool_embeddings=pool_emb, datapool_ids=pool_ids, budget=budget)

    prefix = join_key(cfg.storage.output_prefix, "selections", sid)
    bucket = cfg.storage.out_bucket
    with tempfile.TemporaryDirectory() as tmp:
        images = _example_images(s3, docs, result.selected_names[:8])
        index = build_report(
            result, inputs, Path(tmp) / "report", images=images, title=f"framesift selection {sid}"
        )
        for path in sorted(index.parent.rglob("*")):
            if path.is_file():
                rel = path.relative_to(index.parent).as_posix()
                ctype = {"html": "text/html", "png": "image/png", "json": "application/json"}.get(
                    path.suffix[1:]
                )
                put_bytes(s3, bucket, join_key(prefix, "report", rel), path.read_bytes(), ctype)
        pool_path = Path(tmp) / "datapool.npz"
        np.savez(
            pool_path, embeddings=embeddings[result.selected], frame_names=np.array(result.selected_names)
        )
        put_bytes(
            s3, bucket, join_key(prefix, "datapool.npz"), pool_path.read_bytes(), "application/octet-stream"
        )

    embedding_2d = _scatter_points(embeddings, result.selected)
    by_video: dict[str, list[str]] = {}
    for i in result.selected:
        vid, name = ids[i].split("/", 1)
        by_video.setdefault(vid, []).append(name)
    values = result.to_dict()
    record = {
        "_id": sid,
        "run_id": run_id,
        "state": "done",
        "config": sel_cfg.model_dump(mode="json"),
        "spec": values.get("spec"),
        "videos": [
            {"video_id": d["_id"], "key": d["key"], "frames": len(by_video.get(d["_id"], []))} for d in docs
        ],
        "n_input": len(ids),
        "budget": budget,
        "selected": [ids[i] for i in result.selected],
        "objective_names": values["objective_names"],
        "objective_values": values["objective_values"],
        "stop_reason": result.stop_reason,
        "sizes": values["sizes"],
        "balance": values["balance"],
        "timings": values["timings"],
        "embedding_2d": embedding_2d,
        "report_uri": s3_uri(bucket, join_key(prefix, "report", "index.html")),
        "datapool_uri": s3_uri(bucket, join_key(prefix, "datapool.npz")),
        "created_at": registry.now(),
    }
    db[SELECTIONS].replace_one({"_id": sid}, record, upsert=True)
    for doc in docs:
        frames = by_video.get(doc["_id"], [])
        status = registry.SELECTED if frames else registry.NOT_SELECTED
        registry.mark(db, doc["_id"], status, run_id, selection_id=sid, selected_frames=frames)
    log.info(
        "selection %s: %d of %d frames from %d video(s) (%s); report %s",
        sid,
        len(result.selected),
        len(ids),
        len(docs),
        result.stop_reason,
        record["report_uri"],
    )
    return record


def _scatter_points(embeddings: np.ndarray, selected, max_points: int = 2000) -> dict[str, Any]:
    """A 2-D projection of (a sample of) the frames, selected ones apart, for tracking plots."""
    from framesift.report import project_2d

    rng = np.random.default_rng(0)
    chosen = set(int(i) for i in selected)
    others = np.array([i for i in range(len(embeddings)) if i not in chosen], dtype=int)
    if len(others) > max_points:
        others = np.sort(rng.choice(others, max_points, replace=False))
    idx = np.concatenate([others, np.array(sorted(chosen), dtype=int)])
    coords, method = project_2d(embeddings[idx])
    coords = np.round(coords, 4).tolist()
    return {"method": method, "input": coords[: len(others)], "selected": coords[len(others) :]}


def _example_images(s3, docs: list[dict[str, Any]], frame_ids: list[str]) -> dict[str, np.ndarray]:
    """A few selected frames as RGB arrays, for the report's examples."""
    import cv2

    by_id = {d["_id"]: d for d in docs}
    images = {}
    for fid in frame_ids:
        vid, name = fid.split("/", 1)
        bucket, prefix = parse_s3_uri(by_id[vid]["frames_prefix"])
        data = np.frombuffer(get_bytes(s3, bucket, join_key(prefix, name)), np.uint8)
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if bgr is not None:
            images[fid] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return images
