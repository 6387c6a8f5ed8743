"""The active response to drift: the most drifted frames of an alarming window go to labeling.

Per alarming window (one per source), the selection engine picks ``drift.labeling.n_samples``
frames by diversity (embeddings) x drift score (distance beyond the reference's outlier
threshold plus uncertainty; see ``evaluate``), datapool-aware, so frames selected
before are never sent again. The pick is recorded in ``selections`` (``kind: drift``, with
a datapool file, so later selections know these frames too) and each video's frames are
pushed through the same exactly-once path as ingest (``labeling.queue.push_exactly_once``)
as a sequence titled ``drift-...`` whose queue record carries ``tags: ["drift"]``, which
is how the labels/retraining loop tells drift data apart. The window's incidents record the
sequences' URLs on the platform (``labeling_urls``), so their alerts link them.

With ``drift.labeling.mode: ack`` (the default) the picked frames wait for on-call: the
selection record's ``labeling.state`` is ``held`` until ``framesift drift ack ID`` approves
it (``approved``; the next run pushes it, ``pushed``) or drops it with ``--no-labeling``
(``dismissed``: a broken camera needs a fix, not labels). ``auto`` pushes at once.

Idempotent: the selection id is a hash of the window and source, so a duplicate run or a
retry finds the finished selection and the queue's keys prevent a second push.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
from pymongo import ReturnDocument
from pymongo.database import Database

from framesift.config.schema import PipelineConfig
from framesift.drift import incidents
from framesift.drift.monitor import load_frames
from framesift.drift.signals import CRITICAL, WARNING, FrameSet
from framesift.inference import predictions
from framesift.inference.models import inferred_model_version
from framesift.ingest import registry
from framesift.io.layout import safe_stem
from framesift.io.leases import Attempt
from framesift.io.s3 import join_key
from framesift.labeling.base import LabelingBackend, build_request
from framesift.labeling.queue import collection as queue_collection
from framesift.labeling.queue import push_exactly_once
from framesift.selection.batch_inputs import space_of
from framesift.selection.datapool import SELECTIONS, read_datapool, write_datapool
from framesift.selection.engine import select
from framesift.selection.inputs import SelectionInputs
from framesift.selection.spec import SelectionSpec, parse_strategy

log = logging.getLogger("framesift.drift_response")

TAG = "drift"
SCORE = "drift_score"
# labeling.state of a drift selection
HELD, APPROVED, DISMISSED, PUSHED = "held", "approved", "dismissed", "pushed"


def drift_selection_id(window: dict[str, Any]) -> str:
    digest = hashlib.sha1(f"{window['source']}|{window['window_id']}".encode()).hexdigest()[:16]
    return f"drift-{digest}"


def select_drifted(
    s3, db: Database, cfg: PipelineConfig, window: dict[str, Any], *, run_id: str
) -> dict[str, Any]:
    """Pick the window's most drifted, mutually diverse frames; return the ``selections`` record."""
    sid = drift_selection_id(window)
    done = db[SELECTIONS].find_one({"_id": sid, "state": "done"})
    if done:
        log.info("drift selection %s already done: %d frames", sid, len(done["selected"]))
        return done
    scores = window["frame_scores"]
    docs = list(db[registry.VIDEOS].find({"_id": {"$in": window["video_ids"]}}))
    fs = FrameSet.concat([load_frames(s3, cfg, d) for d in docs])
    keep = [i for i, f in enumerate(fs.frame_ids) if f in scores]
    fs = fs.take(keep)
    if fs.n == 0:
        return {"_id": sid, "state": "empty", "selected": [], "videos": []}
    spec = SelectionSpec(
        n_samples=min(cfg.drift.labeling.n_samples, fs.n),
        strategies=[
            parse_strategy(0, {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}),
            parse_strategy(1, {"input": {"type": "SCORES", "score": SCORE}, "strategy": {"type": "WEIGHTS"}}),
        ],
        random_seed=cfg.selection.random_seed,
    )
    inputs = SelectionInputs(
        frame_names=fs.frame_ids,
        embeddings=fs.embeddings,
        video_keys=fs.video_keys,
        predictions=fs.predictions,
        categories=fs.categories or None,
        scores={SCORE: np.array([scores[f] for f in fs.frame_ids])},
    )
    # the window's space: its videos' (a window spans one serving model unless it was promoted)
    model_id = space_of(docs[0]) if docs else None
    pool = read_datapool(s3, db, sid, model_id, int(fs.embeddings.shape[1]))
    result = select(
        inputs, spec, datapool_embeddings=pool.embeddings, datapool_ids=pool.ids, budget=spec.n_samples
    )
    chosen = [int(i) for i in result.selected]
    key = join_key(cfg.storage.output_prefix, "selections", sid, "datapool.npz")
    datapool_uri = write_datapool(
        s3, cfg.storage.out_bucket, key, [fs.frame_ids[i] for i in chosen], fs.embeddings[chosen], model_id
    )
    by_video: dict[str, list[str]] = {}
    for i in chosen:
        vid, name = fs.frame_ids[i].split("/", 1)
        by_video.setdefault(vid, []).append(name)
    record = {
        "_id": sid,
        "kind": TAG,
        "tags": [TAG],
        "run_id": run_id,
        "state": "done",
        "source": window["source"],
        "window_id": window["window_id"],
        "n_input": fs.n,
        "budget": spec.n_samples,
        "selected": [fs.frame_ids[i] for i in chosen],
        "drift_scores": [round(float(scores[fs.frame_ids[i]]), 6) for i in chosen],
        "videos": [
            {
                "video_id": d["_id"],
                "key": d["key"],
                "frames": len(by_video.get(d["_id"], [])),
                "selected_frames": by_video.get(d["_id"], []),
            }
            for d in docs
        ],
        "stop_reason": result.stop_reason,
        "datapool_uri": datapool_uri,
        "created_at": registry.now(),
    }
    db[SELECTIONS].replace_one({"_id": sid}, record, upsert=True)
    log.info("drift selection %s: %d of %d frames of source %s", sid, len(chosen), fs.n, window["source"])
    return record


def push_drifted(
    s3,
    db: Database,
    cfg: PipelineConfig,
    selection: dict[str, Any],
    backend: LabelingBackend,
    *,
    owner: str | Attempt,
    incident_ids: list[str] = (),
) -> list[dict[str, Any]]:
    """One labeling sequence per video of a drift selection, tagged ``drift``; the queue records."""
    records = []
    for video in selection.get("videos", []):
        frames = video.get("selected_frames") or []
        if not frames:
            continue
        doc = registry.get(db, video["video_id"]) or {}
        task = doc["inference"]["task_name"]
        request = build_request(
            cfg,
            selection_id=selection["_id"],
            video_id=doc["_id"],
            video_key=doc["key"],
            frame_names=frames,
            predictions=[
                {"file_name": name, "predictions": boxes}
                for name, boxes in predictions.read_predictions(s3, cfg, doc["_id"], task).items()
            ],
            schema=predictions.read_schema(s3, cfg, doc["_id"], task),
            model_version=inferred_model_version(doc["inference"]),  # as ingest pushes show it
            title=f"{TAG}-{safe_stem(doc['key'])}-{doc['_id']}",
            metadata={"tag": TAG, "source": selection.get("source"), "window_id": selection.get("window_id")},
        )
        record = push_exactly_once(
            db, backend, request, labeler=cfg.labeling.labeler, reviewer=cfg.labeling.reviewer, owner=owner
        )
        queue_collection(db).update_one(
            {"_id": record["_id"]},
            {
                "$set": {
                    "tags": [TAG],
                    "drift": {"source": selection.get("source"), "window_id": selection.get("window_id")},
                },
                "$addToSet": {"incident_ids": {"$each": list(incident_ids)}},
            },
        )
        records.append(queue_collection(db).find_one({"_id": record["_id"]}))
    incidents.link_labeling(
        db, list(incident_ids), backend.name, [r.get("url") or r.get("project_url") for r in records]
    )
    return records


def respond(
    s3,
    db: Database,
    cfg: PipelineConfig,
    report: dict[str, Any],
    backend_factory,
    *,
    run_id: str,
    owner: str | Attempt,
) -> list[dict[str, Any]]:
    """For every alarming window with an active incident: select its drifted frames, and
    push them (mode ``auto``) or hold them for an on-call ack (mode ``ack``); then push
    the held selections on-call approved since.

    ``backend_factory()`` makes the labeling backend (only called when there is work).
    Returns one summary per window: selection id, frames, labeling state, queue record ids.
    """
    out: dict[str, dict[str, Any]] = {}  # by selection id: an approved one pushed below replaces its entry
    backend = None

    def summary(
        selection: dict[str, Any], state: str, incident_ids: list[str], queue_ids=()
    ) -> dict[str, Any]:
        return {
            "source": selection["source"],
            "selection_id": selection["_id"],
            "frames": len(selection["selected"]),
            "labeling": state,
            "queue_ids": list(queue_ids),
            "incidents": incident_ids,
        }

    def push(selection: dict[str, Any], incident_ids: list[str]) -> dict[str, Any]:
        nonlocal backend
        backend = backend or backend_factory()
        records = push_drifted(s3, db, cfg, selection, backend, owner=owner, incident_ids=incident_ids)
        _set_labeling(db, selection["_id"], PUSHED)
        return summary(selection, PUSHED, incident_ids, [r["_id"] for r in records])

    for window in report.get("windows", []):
        if window["level"] not in (WARNING, CRITICAL):
            continue
        incident_ids = [
            d["_id"]
            for d in db[incidents.ALERTS].find(
                {"source": window["source"], "state": {"$in": list(incidents.ACTIVE)}}, {"_id": 1}
            )
        ]
        selection = select_drifted(s3, db, cfg, window, run_id=run_id)
        if not selection.get("selected"):
            continue
        if cfg.drift.labeling.mode == "auto":
            out[selection["_id"]] = push(selection, incident_ids)
            continue
        state = _hold(db, selection["_id"], incident_ids)
        if state == HELD:
            log.info(
                "drift selection %s: %d frames of %s held until on-call acks one of %s "
                "(framesift drift ack ID; --no-labeling drops them)",
                selection["_id"],
                len(selection["selected"]),
                window["source"],
                ", ".join(incident_ids) or "its incidents",
            )
        out[selection["_id"]] = summary(selection, state, incident_ids)
    for selection in db[SELECTIONS].find({"kind": TAG, "labeling.state": APPROVED}):
        out[selection["_id"]] = push(selection, list(selection["labeling"].get("incident_ids") or []))
    return list(out.values())


def _hold(db: Database, sid: str, incident_ids: list[str]) -> str:
    """Record that the selection waits for an ack (unless on-call decided already); its state."""
    db[SELECTIONS].update_one(
        {"_id": sid, "labeling.state": {"$exists": False}},
        {"$set": {"labeling.state": HELD, "labeling.held_at": registry.now()}},
    )
    doc = db[SELECTIONS].find_one_and_update(
        {"_id": sid},
        {"$addToSet": {"labeling.incident_ids": {"$each": list(incident_ids)}}},
        return_document=ReturnDocument.AFTER,
    )
    return doc["labeling"]["state"]


def _set_labeling(db: Database, sid: str, state: str, **fields: Any) -> None:
    db[SELECTIONS].update_one(
        {"_id": sid},
        {
            "$set": {
                "labeling.state": state,
                f"labeling.{state}_at": registry.now(),
                **{f"labeling.{k}": v for k, v in fields.items()},
            }
        },
    )


def decide_held(db: Database, incident_id: str, *, label: bool, by: str) -> list[dict[str, Any]]:
    """On-call's decision on the frames held for an incident: ``label`` approves them (the
    next drift run pushes them), otherwise they are dropped. Returns the selections changed
    (pushed ones are not: they are on the platform already)."""
    state = APPROVED if label else DISMISSED
    changed = []
    for doc in db[SELECTIONS].find(
        {
            "kind": TAG,
            "labeling.incident_ids": incident_id,
            "labeling.state": {"$in": [HELD, APPROVED, DISMISSED]},
        }
    ):
        _set_labeling(db, doc["_id"], state, decided_by=by)
        changed.append(db[SELECTIONS].find_one({"_id": doc["_id"]}))
    return changed


def held(db: Database) -> list[dict[str, Any]]:
    """Drift selections waiting for an on-call decision, oldest first."""
    return list(db[SELECTIONS].find({"kind": TAG, "labeling.state": HELD}).sort("created_at", 1))
