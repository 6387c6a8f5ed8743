"""The selection stage of an ingest run: one selection over the whole batch of videos.

Reads each inferred video's embeddings and Lightly predictions from S3, the datapool
(frames selected by earlier runs) from the ``selections`` collection, runs the selection
engine, writes the report and the selection's datapool file to S3, records the
``selections`` document and moves each video to ``selected``. Idempotent per run: a
retry finds the finished selection and returns it.

A batch over ``selection.shard_max_frames`` frames is planned into shards
(:func:`plan_selection`), each selected on its own worker (:func:`select_one_shard`), and
merged by :func:`select_batch`.

Size (~650 lines): the stage's three entry points (plan, one shard, the batch/merge)
share the claims, leases and the ``_finish`` step that records the outcome; the engine,
shards, datapool and report it calls live in their own modules.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pymongo.database import Database

from framesift.config.schema import PipelineConfig, SelectionConfig
from framesift.ingest import registry
from framesift.ingest.registry import VideoRef
from framesift.io.context import StageContext
from framesift.io.leases import Attempt, Heartbeat, Lease, as_attempt
from framesift.io.s3 import get_bytes, join_key, parse_s3_uri, put_bytes, s3_uri
from framesift.selection.batch_inputs import by_space, check_supported, query_sets, read_inputs, split_budget
from framesift.selection.datapool import SELECTIONS, Datapool, read_datapool, write_datapool
from framesift.selection.engine import select
from framesift.selection.inputs import SelectionInputs
from framesift.selection.metrics import closest_pairs, shot_coverage
from framesift.selection.result import SelectionResult, combine_results
from framesift.selection.shards import (
    ShardResult,
    merge_shards,
    select_shard,
    shard_from_bytes,
    shard_to_bytes,
)
from framesift.selection.spec import SelectionSpec, parse_selection

log = logging.getLogger("framesift.select")

# selected pairs closer than this are reported as near-duplicates (unit-sphere distance; the
# median step between consecutive 1-fps frames of a scene is 0.1 to 0.3 in the benchmarks)
NEAR_DUPLICATE_DISTANCE = 0.05


# the plan's claims must outlive the wait for the shard tasks and the merge
PLAN_LEASE_FACTOR = 10


def selection_id(run_id: str, video_ids: list[str]) -> str:
    return hashlib.sha1(f"{run_id}|{','.join(sorted(video_ids))}".encode()).hexdigest()[:16]


@dataclass
class Batch:
    """One selection over a run's videos: its id, the claimed videos' registry documents
    (in order) and the settings it runs with."""

    sid: str
    docs: list[dict[str, Any]]
    settings: SelectionConfig
    # the claims on the videos (by video id); every status written is conditional on them
    leases: dict[str, Lease] = field(default_factory=dict)

    def spec(self, cfg: PipelineConfig, labeled: int) -> SelectionSpec:
        """The spec, with the default recipe's regime for ``labeled`` datapool frames."""
        return parse_selection(self.settings, cfg.important_classes, labeled=labeled)


def _run_settings(cfg: PipelineConfig, overrides: dict[str, Any] | None) -> SelectionConfig:
    """The config's selection settings with the run's overrides (a bad one fails here)."""
    settings = cfg.selection.model_copy(update=overrides or {})
    check_supported(parse_selection(settings, cfg.important_classes))
    return settings


def _plan_settings(plan: dict[str, Any]) -> SelectionConfig:
    """The selection settings a shard plan was made with (the run's overrides included)."""
    return SelectionConfig.model_validate(plan["config"])


def _videos(db: Database, video_ids: list[str]) -> list[dict[str, Any]]:
    """The registry documents of ``video_ids``, in that order."""
    by_id = {d["_id"]: d for d in db[registry.VIDEOS].find({"_id": {"$in": video_ids}})}
    return [by_id[v] for v in video_ids if v in by_id]


def _claim(ctx: StageContext, refs: list[VideoRef], attempt: Attempt) -> tuple[list[dict[str, Any]], dict]:
    """Claim the inferred videos (and stranded ``selecting`` ones) for this attempt."""
    claimed, leases = [], {}
    for ref in refs:
        doc = registry.claim(
            ctx.db, ref.video_id, attempt, to=registry.SELECTING, from_statuses=[registry.INFERRED]
        )
        if doc is not None:
            claimed.append(doc)
            leases[doc["_id"]] = registry.lease_of(ctx.db, doc, attempt)
    return claimed, leases


def _plan_leases(db: Database, plan: dict[str, Any], attempt: Attempt) -> dict[str, Lease]:
    """The claims ``plan_selection`` took, for the tasks that carry its plan on."""
    return {
        vid: registry.lease_of(db, {"_id": vid, "claim": {"token": token}}, attempt)
        for vid, token in (plan.get("claims") or {}).items()
    }


def _fail(ctx: StageContext, docs: list[dict[str, Any]], exc: Exception, leases: dict[str, Lease]) -> None:
    for doc in docs:
        if doc["_id"] in leases:
            registry.release(
                ctx.db,
                leases[doc["_id"]],
                registry.FAILED,
                reason=f"selecting: {exc}",
                failed_stage=registry.SELECTING,
            )


def plan_selection(
    s3,
    db: Database,
    cfg: PipelineConfig,
    refs: list[VideoRef],
    *,
    run_id: str | Attempt,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Split a batch over ``selection.shard_max_frames`` frames into shards (whole videos).

    Returns one item per shard for the mapped ``select_shard`` tasks, or ``[]`` when the
    batch fits one worker (``select_batch`` then selects in one pass). The plan is the
    ``selections`` document in state ``sharded``; a retry returns the same shards. The
    plan's claims (``claims``: video id -> token) carry over to the shard tasks (which
    renew them) and the merge (whose writes are conditional on them); their lease is
    ``PLAN_LEASE_FACTOR`` times the attempt's, to bridge the wait between those tasks.
    """
    attempt = as_attempt(run_id)
    attempt = replace(attempt, lease_s=attempt.lease_s * PLAN_LEASE_FACTOR)
    run_id = attempt.run_id
    ctx = StageContext(s3, db, cfg, run_id)
    sid = selection_id(run_id, [r.video_id for r in refs])
    existing = db[SELECTIONS].find_one({"_id": sid}, {"state": 1, "shards": 1})
    if existing and existing.get("state") == "sharded":
        return [_shard_item(sid, sh) for sh in existing["shards"]]
    if existing:
        return []
    settings = _run_settings(cfg, overrides)  # a bad config fails here, before any claim
    docs = list(
        db[registry.VIDEOS].find({"_id": {"$in": [r.video_id for r in refs]}}, {"inference.frames": 1})
    )
    total = sum(_frames(d) for d in docs)
    if total <= settings.shard_max_frames:
        log.info(
            "selection %s: %d frames fit one worker (shard_max_frames %d)",
            sid,
            total,
            settings.shard_max_frames,
        )
        return []
    claimed, leases = _claim(ctx, refs, attempt)
    shards: list[dict[str, Any]] = []
    for model_id, space_docs in by_space(claimed):  # a shard never mixes embedding spaces
        for doc in space_docs:
            frames = _frames(doc)
            if frames == 0:
                continue  # nothing to select from; the merge marks it not_selected
            last = shards[-1] if shards else None
            if (
                last is None
                or last["embedding_model_id"] != model_id
                or last["frames"] + frames > settings.shard_max_frames
            ):
                shards.append(
                    {
                        "shard": str(len(shards)),
                        "video_ids": [],
                        "frames": 0,
                        "uri": None,
                        "embedding_model_id": model_id,
                    }
                )
            shards[-1]["video_ids"].append(doc["_id"])
            shards[-1]["frames"] += frames
    db[SELECTIONS].replace_one(
        {"_id": sid},
        {
            "_id": sid,
            "run_id": run_id,
            "state": "sharded",
            "config": settings.model_dump(mode="json"),
            "video_ids": [d["_id"] for d in claimed],
            "claims": {vid: lease.token for vid, lease in leases.items()},
            "n_input": sum(sh["frames"] for sh in shards),
            "shards": shards,
            "created_at": registry.now(),
        },
        upsert=True,
    )
    log.info(
        "selection %s: %d frames of %d video(s) in %d shards of at most %d frames",
        sid,
        total,
        len(claimed),
        len(shards),
        settings.shard_max_frames,
    )
    return [_shard_item(sid, sh) for sh in shards]


def _frames(doc: dict[str, Any]) -> int:
    return int((doc.get("inference") or {}).get("frames") or 0)


def _shard_item(sid: str, shard: dict[str, Any]) -> dict[str, Any]:
    return {
        "selection_id": sid,
        "shard": shard["shard"],
        "videos": len(shard["video_ids"]),
        "frames": shard["frames"],
    }


def select_one_shard(
    s3,
    db: Database,
    cfg: PipelineConfig,
    *,
    selection_id: str,
    shard: str,
    attempt: str | Attempt | None = None,
) -> str:
    """Greedy selection on one shard of a plan; its winners go to S3. Returns their URI.

    While it works it renews the plan's claims on the shard's videos."""
    plan = db[SELECTIONS].find_one({"_id": selection_id, "state": "sharded"})
    if plan is None:
        raise LookupError(f"selection {selection_id} has no shard plan (was plan_selection run?)")
    entry = next(sh for sh in plan["shards"] if sh["shard"] == shard)
    settings = _plan_settings(plan)
    docs = _videos(db, entry["video_ids"])
    beat = as_attempt(attempt or plan["run_id"])
    beat = replace(beat, lease_s=beat.lease_s * PLAN_LEASE_FACTOR)
    leases = [le for vid, le in _plan_leases(db, plan, beat).items() if vid in set(entry["video_ids"])]
    started = time.perf_counter()
    with Heartbeat(leases, beat.heartbeat_s, log):
        inputs = read_inputs(s3, cfg, docs)
        ctx = StageContext(s3, db, cfg, plan["run_id"])
        pool = _space_datapool(ctx, selection_id, entry.get("embedding_model_id"), inputs)
        spec = Batch(selection_id, docs, settings).spec(cfg, len(pool.ids))
        inputs.query_sets = query_sets(ctx.db, spec, pool)
        result = select_shard(
            inputs,
            spec,
            total_frames=plan["n_input"],
            oversample=settings.shard_oversample,
            shard_id=shard,
            datapool_embeddings=pool.embeddings,
            datapool_ids=pool.ids,
        )
    key = join_key(cfg.storage.output_prefix, "selections", selection_id, "shards", f"{shard}.npz")
    put_bytes(s3, cfg.storage.out_bucket, key, shard_to_bytes(result), "application/octet-stream")
    uri = s3_uri(cfg.storage.out_bucket, key)
    seconds = round(time.perf_counter() - started, 3)
    db[SELECTIONS].update_one(
        {"_id": selection_id, "shards.shard": shard},
        {
            "$set": {
                "shards.$.uri": uri,
                "shards.$.winners": len(result.winner_index),
                "shards.$.seconds": seconds,
            }
        },
    )
    log.info(
        "selection %s shard %s: %d winners of %d frames (%d videos) in %.1f s -> %s",
        selection_id,
        shard,
        len(result.winner_index),
        inputs.n,
        len(docs),
        seconds,
        uri,
    )
    return uri


def select_batch(
    s3,
    db: Database,
    cfg: PipelineConfig,
    refs: list[VideoRef],
    *,
    run_id: str | Attempt,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Select over the run's inferred videos; return the selection record (plain data).

    ``overrides``: selection settings from the run's params (``n_samples``,
    ``proportion_samples``, ``strategies``) that replace the config's for this run.
    When ``plan_selection`` split the batch into shards, merges the shards' winners.
    ``run_id``: the attempt (a plain run id is a first try); the videos' claims are
    renewed while it selects, and their statuses are written only while they are held.
    """
    attempt = as_attempt(run_id)
    run_id = attempt.run_id
    ctx = StageContext(s3, db, cfg, run_id)
    sid = selection_id(run_id, [r.video_id for r in refs])
    existing = db[SELECTIONS].find_one({"_id": sid, "state": {"$in": ["done", "sharded"]}})
    if existing and existing["state"] == "done":
        log.info("selection %s already done (a retry): %d frames", sid, len(existing["selected"]))
        return existing
    if existing:
        return _merge(ctx, existing, attempt)

    settings = _run_settings(cfg, overrides)
    claimed, leases = _claim(ctx, refs, attempt)
    if not claimed:
        log.info("selection %s: no inferred videos to select from", sid)
        return {"_id": sid, "state": "empty", "selected": [], "videos": []}
    batch = Batch(sid, claimed, settings, leases)
    try:
        with Heartbeat(leases.values(), attempt.heartbeat_s, log):
            return _select(ctx, batch)
    except Exception as exc:
        _fail(ctx, claimed, exc, leases)
        raise


@dataclass
class SpacePart:
    """One embedding space's share of a batch's selection."""

    model_id: str | None
    docs: list[dict[str, Any]]
    inputs: SelectionInputs
    result: SelectionResult
    datapool: Datapool


def _space_datapool(ctx: StageContext, sid: str, model_id: str | None, inputs: SelectionInputs) -> Datapool:
    dim = None if inputs.embeddings is None else int(inputs.embeddings.shape[1])
    pool = read_datapool(ctx.s3, ctx.db, sid, model_id, dim)
    if pool.other_space:
        log.info(
            "selection %s: %d datapool frame(s) embedded by another model left out of the distances "
            "(space %s; their ids are still never selected again)",
            sid,
            pool.other_space,
            model_id,
        )
    return pool


def _select(ctx: StageContext, batch: Batch) -> dict[str, Any]:
    groups = [(mid, docs, read_inputs(ctx.s3, ctx.cfg, docs)) for mid, docs in by_space(batch.docs)]
    n_input = sum(inputs.n for _, _, inputs in groups)
    if not n_input:
        for doc in batch.docs:
            registry.release(
                ctx.db,
                batch.leases[doc["_id"]],
                registry.NOT_SELECTED,
                selection_id=batch.sid,
                selected_frames=[],
            )
        return {"_id": batch.sid, "state": "empty", "selected": [], "videos": []}
    if len(groups) > 1:
        log.warning(
            "selection %s: the videos are embedded by %d models (%s): each space is selected apart, "
            "the budget split by frames; distances never cross spaces",
            batch.sid,
            len(groups),
            ", ".join(str(mid) for mid, _, _ in groups),
        )
    pools = [_space_datapool(ctx, batch.sid, mid, inputs) for mid, _, inputs in groups]
    spec = batch.spec(ctx.cfg, len(pools[0].ids))
    for (_, _, inputs), pool in zip(groups, pools, strict=True):
        inputs.query_sets = query_sets(ctx.db, spec, pool)
    n_samples = batch.settings.n_samples
    if n_samples and n_samples > n_input:
        # a small batch is not a config error: take everything it has
        log.warning(
            "selection %s: n_samples %d > %d input frames; selecting all", batch.sid, n_samples, n_input
        )
        budget = n_input
    else:
        budget = spec.budget(n_input)
    budgets = split_budget(budget, [inputs.n for _, _, inputs in groups])
    parts = [
        SpacePart(
            mid,
            docs,
            inputs,
            select(inputs, spec, datapool_embeddings=pool.embeddings, datapool_ids=pool.ids, budget=b),
            pool,
        )
        for (mid, docs, inputs), pool, b in zip(groups, pools, budgets, strict=True)
    ]
    return _finish(ctx, batch, parts, budget)


def _merge(ctx: StageContext, plan: dict[str, Any], attempt: Attempt) -> dict[str, Any]:
    """The second greedy pass over the shards' winners (distributed greedy), per space."""
    docs = _videos(ctx.db, plan["video_ids"])
    leases = _plan_leases(ctx.db, plan, replace(attempt, lease_s=attempt.lease_s * PLAN_LEASE_FACTOR))
    try:
        batch = Batch(plan["_id"], docs, _plan_settings(plan), leases)
        missing = [sh["shard"] for sh in plan["shards"] if not sh.get("uri")]
        if missing:
            raise RuntimeError(
                f"shard(s) {', '.join(missing)} of {len(plan['shards'])} have no result: their "
                "select_shard task failed (see its log); the next run selects these videos again"
            )
        by_space: dict[str | None, list[tuple[dict[str, Any], ShardResult]]] = {}
        for sh in plan["shards"]:
            shard = shard_from_bytes(get_bytes(ctx.s3, *parse_s3_uri(sh["uri"])))
            by_space.setdefault(sh.get("embedding_model_id"), []).append((sh, shard))
        doc_of = {d["_id"]: d for d in docs}
        unions = {
            mid: SelectionInputs.concat([shard.winners for _, shard in items])
            for mid, items in by_space.items()
        }
        pools = {mid: _space_datapool(ctx, batch.sid, mid, unions[mid]) for mid in by_space}
        spec = batch.spec(ctx.cfg, len(next(iter(pools.values())).ids))
        for mid, union in unions.items():
            union.query_sets = query_sets(ctx.db, spec, pools[mid])
        total = sum(s.result.counts["input"] for items in by_space.values() for _, s in items)
        sizes = [sum(s.result.counts["input"] for _, s in items) for items in by_space.values()]
        parts = []
        for (mid, items), k in zip(by_space.items(), split_budget(spec.budget(total), sizes), strict=True):
            result = merge_shards(
                [s for _, s in items],
                spec,
                datapool_embeddings=pools[mid].embeddings,
                datapool_ids=pools[mid].ids,
                budget=k,
            )
            space_docs = [doc_of[v] for sh, _ in items for v in sh["video_ids"] if v in doc_of]
            parts.append(SpacePart(mid, space_docs, unions[mid], result, pools[mid]))
        shard_rows = [
            {
                k: sh.get(k)
                for k in ("shard", "video_ids", "frames", "winners", "seconds", "uri", "embedding_model_id")
            }
            for sh in plan["shards"]
        ]
        return _finish(ctx, batch, parts, spec.budget(total), shards=shard_rows)
    except Exception as exc:
        _fail(ctx, docs, exc, leases)
        raise


def _finish(
    ctx: StageContext,
    batch: Batch,
    parts: list[SpacePart],
    budget: int,
    shards: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Report and datapool files to S3, the ``selections`` record, each video's status."""
    prefix = join_key(ctx.cfg.storage.output_prefix, "selections", batch.sid)
    bucket = ctx.cfg.storage.out_bucket
    offsets = np.cumsum([0] + [p.inputs.n for p in parts[:-1]]).tolist()
    result = combine_results([(p.result, off) for p, off in zip(parts, offsets, strict=True)], budget)
    # one space: the report's plots show it; several: no plot mixes them
    inputs = (
        parts[0].inputs
        if len(parts) == 1
        else SelectionInputs.concat([replace(p.inputs, embeddings=None) for p in parts])
    )
    spaces = []
    datapool_uris = []
    for i, p in enumerate(parts):
        names = list(p.result.selected_names)
        if names:
            key = join_key(prefix, "datapool.npz" if len(parts) == 1 else f"datapool-{i}.npz")
            emb = p.inputs.embeddings[p.result.selected]
            datapool_uris.append(write_datapool(ctx.s3, bucket, key, names, emb, p.model_id))
        spaces.append(
            {
                "embedding_model_id": p.model_id,
                "videos": len(p.docs),
                "frames": p.inputs.n,
                "budget": int(p.result.budget),
                "selected": len(names),
                "datapool_frames": 0 if p.datapool.embeddings is None else int(len(p.datapool.embeddings)),
                "datapool_other_space": p.datapool.other_space,
                "redundancy": closest_pairs(p.inputs.embeddings, p.result.selected, NEAR_DUPLICATE_DISTANCE),
            }
        )
    shots = None
    if inputs.metadata and "shot" in inputs.metadata:
        shots = shot_coverage(list(inputs.metadata["shot"]), list(inputs.video_keys), result.selected)
    report_uri = _write_report(ctx, batch, inputs, result, prefix, shards, _report_notes(spaces, shots))
    by_video: dict[str, list[str]] = {}
    for name in result.selected_names:
        vid, frame = name.split("/", 1)
        by_video.setdefault(vid, []).append(frame)
    values = result.to_dict()
    biggest = max(parts, key=lambda p: p.inputs.n)
    record = {
        "_id": batch.sid,
        "run_id": ctx.run_id,
        "state": "done",
        "config": batch.settings.model_dump(mode="json"),
        "spec": values.get("spec"),
        "regime": (values.get("spec") or {}).get("regime"),
        "videos": [
            {"video_id": d["_id"], "key": d["key"], "frames": len(by_video.get(d["_id"], []))}
            for d in batch.docs
        ],
        "n_input": result.counts["input"],
        "budget": result.budget,
        "selected": list(result.selected_names),
        "objective_names": values["objective_names"],
        "objective_values": values["objective_values"],
        "stop_reason": result.stop_reason,
        "sizes": values["sizes"],
        "balance": values["balance"],
        "timings": values["timings"],
        "shards": shards,
        "embedding_spaces": spaces,
        "shots": shots,  # shots extraction recorded, and how many have a pick (per video)
        "embedding_2d": _scatter_points(biggest.inputs.embeddings, biggest.result.selected),
        "report_uri": report_uri,
        "datapool_uris": datapool_uris,  # one file per embedding space
        "datapool_uri": datapool_uris[0] if datapool_uris else None,
        "created_at": registry.now(),
    }
    ctx.db[SELECTIONS].replace_one({"_id": batch.sid}, record, upsert=True)
    for doc in batch.docs:
        frames = by_video.get(doc["_id"], [])
        status = registry.SELECTED if frames else registry.NOT_SELECTED
        lease = batch.leases.get(doc["_id"])
        if lease is not None:  # refused (and logged) when another attempt took the video over
            registry.release(ctx.db, lease, status, selection_id=batch.sid, selected_frames=frames)
    log.info(
        "selection %s: %d of %d frames from %d video(s) (%s%s)%s; report %s",
        batch.sid,
        len(result.selected),
        record["n_input"],
        len(batch.docs),
        result.stop_reason,
        f", {len(shards)} shards" if shards else "",
        f"; {record['regime']['text']}" if record["regime"] else "",
        report_uri,
    )
    return record


def _report_notes(spaces: list[dict[str, Any]], shots: dict[str, Any] | None = None) -> list[str]:
    notes = []
    if shots and shots["shots"]:
        per_video = ", ".join(
            f"{v} {r['covered']} of {r['shots']}" for v, r in list(shots["videos"].items())[:20]
        )
        notes.append(
            f"Shots: {shots['covered']} of {shots['shots']} recorded shots have a pick ({per_video})."
        )
    if len(spaces) > 1:
        notes.append(
            f"The videos are embedded by {len(spaces)} models: each embedding space was selected apart, the "
            "budget split by frames ("
            + ", ".join(f"{s['embedding_model_id']}: {s['selected']} of {s['frames']}" for s in spaces)
            + ")."
        )
    for s in spaces:
        if s["datapool_other_space"]:
            notes.append(
                f"Datapool: {s['datapool_other_space']} frame(s) embedded by another model were left out of the "
                f"distances (their ids are still never selected again); {s['datapool_frames']} in this space count."
            )
        r = s["redundancy"]
        if r["closest"] is not None:
            notes.append(
                f"Redundancy: the closest pair of selected frames is {r['closest'][2]:.3f} apart; "
                f"{r['pairs_below']} pair(s) closer than {r['below']}."
            )
    return notes


def _write_report(ctx, batch: Batch, inputs, result, prefix: str, shards, notes: list[str]) -> str:
    """The HTML report (with its plots and example frames) under ``<prefix>/report/``."""
    from framesift.selection.report import (
        MAX_TABLE_ROWS,
        build_report,
        frame_labels,
        upload_report,
    )  # matplotlib

    title = f"framesift selection {batch.sid}"
    if shards:
        title += f" (merged from {len(shards)} shards; the plots show their {inputs.n:,} winners)"
    bucket = ctx.cfg.storage.out_bucket
    with tempfile.TemporaryDirectory() as tmp:
        images = _example_images(ctx.s3, batch.docs, result.selected_names[:8])
        labels = frame_labels(inputs, result.selected[:MAX_TABLE_ROWS])
        index = build_report(
            result, inputs, Path(tmp) / "report", images=images, title=title, notes=notes, frame_labels=labels
        )
        return upload_report(ctx.s3, index.parent, bucket, join_key(prefix, "report"))


def _scatter_points(embeddings: np.ndarray | None, selected, max_points: int = 2000) -> dict[str, Any]:
    """A 2-D projection of (a sample of) the frames, selected ones apart, for tracking plots."""
    from framesift.selection.report import project_2d  # matplotlib loads only here

    if embeddings is None or not len(embeddings):
        return {"method": None, "input": [], "selected": []}
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
