"""The drift monitor over the registry: the reference set and the windows of recently
inferred frames (read from the registry and S3), evaluated per source into the drift
report, and the report's ClearML task.
"""

from __future__ import annotations

import logging
from typing import Any

from framesift.config.schema import DriftConfig, PipelineConfig
from framesift.drift.signals import FAMILIES, INSUFFICIENT, FrameSet, evaluate, signal_window
from framesift.inference import predictions
from framesift.inference.predictions import load_video_outputs
from framesift.ingest import registry
from framesift.tracking.clearml import RunSpec

log = logging.getLogger("framesift.drift")


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


def source_of(key: str, dc: DriftConfig) -> str:
    """The source a video belongs to: ``all``, or its folder (``group_by: folder``)."""
    return key.rsplit("/", 1)[0] + "/" if dc.group_by == "folder" and "/" in key else "all"


def collect(s3, db, cfg: PipelineConfig) -> tuple[FrameSet, dict[str, FrameSet], dict[str, Any]]:
    """(reference, windows by source, what the reference is) from the registry and S3.

    Reference: the videos under ``drift.reference_prefix`` if set, else the earliest
    inferred videos, until ``reference_frames`` frames. Windows: per source, the latest
    frames (up to the largest window of any signal) of the videos not in the reference.
    """
    dc = cfg.drift
    docs = inferred_videos(db)
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
    ref = FrameSet.concat([load_frames(s3, cfg, d, tasks) for d in ref_docs])
    if ref.n > dc.reference_frames:
        ref = ref.take(range(dc.reference_frames))
    need = max(signal_window(dc, f) for f in FAMILIES)
    windows: dict[str, FrameSet] = {}
    by_source: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        if d["_id"] not in ref_ids:
            by_source.setdefault(source_of(d["key"], dc), []).append(d)
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
    info = {
        "how": how,
        "videos": [d["key"] for d in ref_docs],
        "video_ids": sorted(ref_ids),
        "frames": ref.n,
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
