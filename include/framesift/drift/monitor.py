"""The drift monitor over the registry: the reference set and the windows of recently
inferred frames (read from the registry and S3), evaluated per source into the drift
report, and the report's ClearML task.

Distances are only taken within one model's space. The *serving model* is the one that
inferred the newest video (each video's ``inference.model_uri``, with its embedding
model; ``inference.embedding_model_id`` when inference records one). Windows hold only
frames that model inferred. When the reference was inferred by another model (the
champion changed), it is re-inferred with the serving model into
``<output_prefix>/drift/reference/<model tag>/`` (once per video and model, recorded in
Mongo ``drift_references``), or, with ``drift.reference_reinfer: false`` or when that
fails, the comparison is suspended with the reason in the report: a promotion alone
never pages on-call.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from framesift.config.schema import DriftConfig, PipelineConfig
from framesift.drift.signals import FAMILIES, INSUFFICIENT, FrameSet, evaluate, signal_window
from framesift.inference import predictions
from framesift.inference.models import inferred_model_version
from framesift.inference.predictions import load_video_outputs
from framesift.ingest import registry
from framesift.io.layout import video_folder
from framesift.io.s3 import get_json, join_key, parse_s3_uri
from framesift.tracking.clearml import RunSpec

log = logging.getLogger("framesift.drift")

REFERENCES = "drift_references"  # the reference videos re-inferred with another model


def inferred_videos(db) -> list[dict[str, Any]]:
    """Videos with embeddings and predictions, in the order they were inferred."""

    docs = list(
        db[registry.VIDEOS].find(
            {"inference.embeddings_uri": {"$exists": True, "$ne": None}},
            {
                "key": 1,
                "bucket": 1,
                "etag": 1,
                "inference": 1,
                "history": 1,
                "frames_prefix": 1,
                "manifest_uri": 1,
                "created_at": 1,
            },
        )
    )

    def inferred_at(doc):
        times = [h["at"] for h in doc.get("history", []) if h.get("status") == registry.INFERRED]
        return (times[-1] if times else doc.get("created_at"), doc["_id"])

    return sorted(docs, key=inferred_at)


def load_frames(s3, cfg: PipelineConfig, doc: dict[str, Any], committee_tasks: list[str] = ()) -> FrameSet:
    """One inferred video's frames (reuses select_batch's reader), plus other tasks' predictions."""

    names, ids, emb, preds, schema = load_video_outputs(s3, cfg, doc)
    committee = {}
    available = set(predictions.read_tasks(s3, cfg, doc["_id"])) if committee_tasks else set()
    for task in committee_tasks:
        if task in available:
            other = predictions.read_predictions(s3, cfg, doc["_id"], task)
            committee[task] = [other.get(n, []) for n in names]
    return FrameSet(
        ids,
        [doc["_id"]] * len(ids),
        [doc["key"]] * len(ids),
        emb,
        preds,
        schema.get("categories") or [],
        committee,
    )


def model_identity(doc: dict[str, Any]) -> str:
    """The model space a video's embeddings and predictions are in: the checkpoint that
    inferred it and its embedding model (its recorded id when there is one)."""
    inf = doc.get("inference") or {}
    embedding = inf.get("embedding_model_id") or inf.get("embedding_model")
    return f"{inf.get('model_uri')}|{embedding}"


def _model_tag(identity: str) -> str:
    return hashlib.sha1(identity.encode()).hexdigest()[:12]


class ReferenceSuspended(Exception):
    """The reference cannot be compared with the serving model's windows (the reason)."""


def reinferred_frames(
    s3, db, cfg: PipelineConfig, docs: list[dict[str, Any]], serving: dict[str, Any]
) -> list[FrameSet]:
    """The frames of reference videos ``docs`` as the serving model (the one that inferred
    ``serving``) sees them: inferred again with it, once per video and model, into
    ``<output_prefix>/drift/reference/<model tag>/``, never over the videos' own outputs."""
    identity = model_identity(serving)
    tag = _model_tag(identity)
    ref_cfg = cfg.model_copy(deep=True)
    ref_cfg.storage.output_prefix = join_key(cfg.storage.output_prefix, "drift", "reference", tag) + "/"
    ref_cfg.inference.model_uri = serving["inference"].get("model_uri")
    detector = None
    out = []
    for doc in docs:
        rec = db[REFERENCES].find_one({"_id": f"{tag}:{doc['_id']}"})
        if rec is None:
            if not doc.get("manifest_uri"):
                raise ReferenceSuspended(f"reference video {doc['key']} has no manifest to re-infer from")
            from framesift.inference.detector import Detector  # torch: only for a re-inference
            from framesift.inference.streaming import run_inference  # torch: only for a re-inference

            if detector is None:
                detector = Detector.from_config(ref_cfg, s3, None, log)
            manifest = get_json(s3, *parse_s3_uri(doc["manifest_uri"]))
            log.info("drift: re-inferring reference video %s with the serving model %s", doc["key"], identity)
            summary = run_inference(s3, ref_cfg, manifest, detector=detector, log=log)
            rec = {
                "_id": f"{tag}:{doc['_id']}",
                "video_id": doc["_id"],
                "key": doc["key"],
                "model": identity,
                "model_uri": summary.get("model_uri"),
                "embeddings_uri": summary["embeddings_uri"],
                "task_name": summary["task_name"],
                "frames": summary.get("frames"),
                "created_at": registry.now(),
            }
            db[REFERENCES].replace_one({"_id": rec["_id"]}, rec, upsert=True)
        as_doc = {
            "_id": doc["_id"],
            "key": doc["key"],
            "inference": {"embeddings_uri": rec["embeddings_uri"], "task_name": rec["task_name"]},
        }
        out.append(load_frames(s3, ref_cfg, as_doc))
    return out


def source_of(key: str, dc: DriftConfig) -> str:
    """The source a video belongs to: ``all``, or its folder (``group_by: folder``)."""
    folder = video_folder(key)
    return folder if dc.group_by == "folder" and folder else "all"


def collect(s3, db, cfg: PipelineConfig) -> tuple[FrameSet, dict[str, FrameSet], dict[str, Any]]:
    """(reference, windows by source, what the reference is) from the registry and S3.

    Reference: the videos under ``drift.reference_prefix`` if set, else the earliest
    inferred videos, until ``reference_frames`` frames. Windows: per source, the latest
    frames (up to the largest window of any signal) of the videos not in the reference.
    """
    dc = cfg.drift
    docs = inferred_videos(db)
    serving = docs[-1] if docs else None  # the newest video tells which model serves
    identity = model_identity(serving) if serving else None
    tasks = list(dc.committee.tasks) if dc.committee.enabled else []
    if dc.reference_prefix:
        ref_docs = [d for d in docs if d["key"].startswith(dc.reference_prefix)]
        how = f"videos under {dc.reference_prefix}"
    else:
        ref_docs, n = [], 0
        for d in docs:
            if n >= dc.reference_frames:
                break
            ref_docs.append(d)
            n += (d.get("inference") or {}).get("frames") or 0
        how = "the earliest inferred videos"
    ref_ids = {d["_id"] for d in ref_docs}
    other = [d for d in ref_docs if model_identity(d) != identity]
    model_info: dict[str, Any] = {
        "serving": identity,
        # what a person reads (name@weights hash), not the checkpoint's path
        "serving_version": inferred_model_version(serving.get("inference") or {}) if serving else None,
        "reference": "same model",
    }
    suspended = None
    parts = [load_frames(s3, cfg, d, tasks) for d in ref_docs if d not in other]
    if other and not dc.reference_reinfer:
        suspended = (
            f"the reference ({len(other)} video(s)) was inferred by {sorted({model_identity(d) for d in other})}, "
            f"not by the serving model {identity}, and drift.reference_reinfer is off"
        )
    elif other:
        try:
            parts += reinferred_frames(s3, db, cfg, other, serving)
            model_info["reference"] = f"{len(other)} video(s) re-inferred with the serving model"
        except Exception as exc:  # noqa: BLE001 - suspended with the reason, never compared across models
            suspended = (
                f"the reference was inferred by another model than the serving one ({identity}) and could not "
                f"be re-inferred with it: {type(exc).__name__}: {exc}"
            )
    if suspended:
        log.warning("drift: comparison suspended: %s", suspended)
        parts = []
    order = {d["_id"]: i for i, d in enumerate(ref_docs)}
    parts.sort(key=lambda fs: order.get(fs.video_ids[0], 0) if fs.n else 0)
    ref = FrameSet.concat(parts)
    if ref.n > dc.reference_frames:
        ref = ref.take(range(dc.reference_frames))
    need = max(signal_window(dc, f) for f in FAMILIES)
    windows: dict[str, FrameSet] = {}
    by_source: dict[str, list[dict[str, Any]]] = {}
    excluded = 0
    for d in docs:
        if d["_id"] in ref_ids:
            continue
        if model_identity(d) != identity:
            excluded += 1  # inferred by an earlier model: not in the serving model's space
            continue
        by_source.setdefault(source_of(d["key"], dc), []).append(d)
    model_info["window_videos_of_other_models"] = excluded
    for source, sdocs in by_source.items():
        parts, n = [], 0
        for d in reversed(sdocs):  # newest first, until the window is full
            if n >= need:
                break
            fs = load_frames(s3, cfg, d, tasks)
            parts.insert(0, fs)
            n += fs.n
        win = FrameSet.concat(parts).tail(need)
        if win.n >= dc.min_window_frames:
            windows[source] = win
        else:
            log.info(
                "drift: source %s has %d new frame(s), fewer than %d: not evaluated",
                source,
                win.n,
                dc.min_window_frames,
            )
    if suspended:
        windows = {}
    info = {
        "how": how,
        "videos": [d["key"] for d in ref_docs],
        "video_ids": sorted(ref_ids),
        "frames": ref.n,
        "model": model_info,
        "suspended": suspended,
        "frames_prefixes": {d["_id"]: d.get("frames_prefix") for d in docs},
    }
    return ref, windows, info


def frame_uri(frames_prefixes: dict[str, str | None], frame_id: str) -> str | None:
    """``s3://`` URI of a frame id ``<video_id>/<name>``."""
    vid, name = frame_id.split("/", 1)
    prefix = frames_prefixes.get(vid)
    return f"{prefix.rstrip('/')}/{name}" if prefix else None


def compute(s3, db, cfg: PipelineConfig) -> dict[str, Any]:
    """Collect and evaluate every source: the drift report (plain data, JSON-safe)."""

    ref, windows, info = collect(s3, db, cfg)
    report: dict[str, Any] = {"computed_at": registry.now().isoformat(), "reference": info, "windows": []}
    if info.get("suspended"):
        info.pop("frames_prefixes")
        report["suspended"] = info["suspended"]
        report["note"] = f"comparison suspended: {info['suspended']}"
        return report
    if ref.n < 2:
        report["note"] = "no reference yet: fewer than 2 inferred frames"
        return report
    prefixes = info.pop("frames_prefixes")
    for source, win in sorted(windows.items()):
        # a source's window is compared with that source's own reference frames when there
        # are enough: one camera against all cameras would differ by the camera mix alone
        own = [i for i, k in enumerate(ref.video_keys) if source_of(k, cfg.drift) == source]
        src_ref = ref.take(own) if source != "all" and len(own) >= cfg.drift.min_window_frames else ref
        result = evaluate(src_ref, win, cfg.drift, source=source)
        result["reference"] = "own" if src_ref is not ref else "all"
        result["sample_frames"] = [u for u in (frame_uri(prefixes, f) for f in result["most_drifted"]) if u]
        report["windows"].append(result)
    if not windows:
        report["note"] = f"no window: fewer than {cfg.drift.min_window_frames} frames outside the reference"
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as terminal lines (``framesift drift report``)."""
    ref = report.get("reference") or {}
    lines = [
        f"reference: {ref.get('frames', 0)} frames from {ref.get('how', '?')} ({len(ref.get('videos') or [])} videos)"
    ]
    model = ref.get("model") or {}
    if model:
        lines.append(f"serving model: {model.get('serving')}; reference: {model.get('reference')}")
    if report.get("note"):
        lines.append(report["note"])
    for w in report.get("windows", []):
        lines.append(
            f"source {w['source']}: window {w['window_id']} ({w['n_frames']} frames, {len(w['videos'])} videos): {w['level'].upper()}"
        )
        for s in w["statistics"]:
            value = "n/a" if s["value"] is None else f"{s['value']:.4g}"
            p = f" p={s['p_value']:.3g}" if s.get("p_value") is not None else ""
            mark = "!" if s["alarm"] else " "
            lines.append(
                f"  {mark} {s['family']:<18} {s['name']:<29} {value:>9} vs {s['threshold']:<7g} {s['level']}{p}"
                + (f"  ({s['note']})" if s.get("note") and s["level"] == INSUFFICIENT else "")
            )
    return "\n".join(lines)


def run_spec(cfg: PipelineConfig, report: dict[str, Any], *, dag_id: str, run_id: str):
    """The ClearML task of a drift run: each statistic vs its threshold, the class
    histograms and the PCA scatter (reference, window, outliers) per source."""

    spec = RunSpec(
        project=cfg.tracking.project_name,
        task_name=f"{dag_id}-{run_id}",
        task_type="monitor",
        tags=["framesift", dag_id, "drift"],
        offline=cfg.tracking.offline,
        config={"drift": cfg.drift.model_dump(mode="json")},
        params={"run_id": run_id, "reference": (report.get("reference") or {}).get("how")},
    )
    spec.scalar("reference", "frames", (report.get("reference") or {}).get("frames", 0))
    for w in report.get("windows", []):
        src = w["source"]
        spec.scalar("window frames", src, w["n_frames"])
        for s in w["statistics"]:
            if s["value"] is not None:
                spec.scalar(f"{s['family']}: {s['name']}", f"{src} value", s["value"])
                spec.scalar(f"{s['family']}: {s['name']}", f"{src} threshold", s["threshold"])
        hist = w.get("class_histogram") or {}
        if hist.get("classes"):
            total_r, total_w = sum(hist["reference"]) or 1, sum(hist["window"]) or 1
            spec.bars.append(
                {
                    "title": f"class distribution ({src})",
                    "labels": hist["classes"],
                    "series": {
                        "reference": [v / total_r for v in hist["reference"]],
                        "window": [v / total_w for v in hist["window"]],
                    },
                }
            )
        plot = w.get("plot") or {}
        spec.scatters.append(
            {"title": f"embeddings PCA ({src})", "series": {k: v for k, v in plot.items() if v}}
        )
    slim = {
        **report,
        "windows": [
            {k: v for k, v in w.items() if k not in ("plot", "frame_scores")}
            for w in report.get("windows", [])
        ],
    }
    spec.artifacts.append({"name": "drift_report", "object": slim})
    return spec
