"""Pipeline runs as people see them: a ``runs`` record in Mongo and a ClearML task.

Built from what the registry (and later stages) recorded, never from task-local state,
so re-running the summary of a run gives the same record (upserted by run id).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import DESCENDING
from pymongo.database import Database

from framesift.config.schema import PipelineConfig
from framesift.ingest import registry
from framesift.io.s3 import get_bytes, get_json, parse_s3_uri
from framesift.tracking.clearml import RunSpec, TrackedRun

RUNS = "runs"


def stage_seconds(doc: dict[str, Any], start: str, end: str) -> float | None:
    """Seconds between the last ``start`` and the following ``end`` status in a video's history."""
    started = None
    for entry in doc.get("history", []):
        if entry["status"] == start:
            started = entry["at"]
        elif entry["status"] == end and started is not None:
            return (entry["at"] - started).total_seconds()
    return None


def ingest_run_spec(
    cfg: PipelineConfig,
    *,
    dag_id: str,
    run_id: str,
    params: dict[str, Any],
    video_docs: list[dict[str, Any]],
    selection: dict[str, Any] | None = None,
) -> RunSpec:
    """What the ClearML task of an ingest run holds."""
    spec = RunSpec(
        project=cfg.tracking.project_name,
        task_name=f"{dag_id}-{run_id}",
        task_type="inference",
        tags=["framesift", dag_id],
        offline=cfg.tracking.offline,
        config=cfg.model_dump(mode="json"),
        params={k: v for k, v in params.items() if v is not None},
    )
    by_status: dict[str, int] = {}
    totals = {"frames_read": 0, "frames_written": 0, "frames_duplicate": 0, "frames_corrupt": 0}
    stage_s = {"extract": 0.0, "infer": 0.0, "push": 0.0}
    inferred_frames = 0
    for doc in video_docs:
        by_status[doc["status"]] = by_status.get(doc["status"], 0) + 1
        for key in totals:
            totals[key] += (doc.get("frames") or {}).get(key) or 0
        inferred_frames += (doc.get("inference") or {}).get("frames") or 0
        for stage, (start, end) in {
            "extract": (registry.EXTRACTING, registry.EXTRACTED),
            "infer": (registry.INFERRING, registry.INFERRED),
            "push": (registry.PUSHING, registry.PUSHED),
        }.items():
            stage_s[stage] += stage_seconds(doc, start, end) or 0.0
    spec.scalar("videos", "in", len(video_docs))
    for status, n in sorted(by_status.items()):
        spec.scalar("videos", status, n)
    for key, value in totals.items():
        spec.scalar("frames", key.removeprefix("frames_"), value)
    for stage, seconds in stage_s.items():
        spec.scalar("duration_s", stage, seconds)
    if stage_s["extract"] > 0:
        spec.scalar("throughput", "extract frames read/s", totals["frames_read"] / stage_s["extract"])
    if stage_s["infer"] > 0:
        spec.scalar("throughput", "inference frames/s", inferred_frames / stage_s["infer"])
    if selection and selection.get("state") == "done":
        _add_selection(spec, selection)
    spec.artifacts.append(
        {
            "name": "videos",
            "object": {  # a dict, so ClearML stores it as JSON (a list would be pickled)
                "videos": [
                    {
                        k: doc.get(k)
                        for k in (
                            "key",
                            "etag",
                            "status",
                            "reason",
                            "manifest_uri",
                            "frames_prefix",
                            "frames",
                            "video",
                        )
                    }
                    for doc in video_docs
                ]
            },
        }
    )
    return spec


def attach_outputs(
    spec: RunSpec, s3, video_docs: list[dict[str, Any]], selection: dict[str, Any] | None, tmp_dir: str
) -> None:
    """Add the per-video manifests and the selection report (read from S3) as artifacts."""
    from pathlib import Path

    manifests = []
    for doc in video_docs:
        if doc.get("manifest_uri"):
            manifests.append(get_json(s3, *parse_s3_uri(doc["manifest_uri"])))
    if manifests:
        spec.artifacts.append({"name": "manifests", "object": {"manifests": manifests}})
    if selection and selection.get("report_uri"):
        path = Path(tmp_dir) / "selection_report.html"
        path.write_bytes(get_bytes(s3, *parse_s3_uri(selection["report_uri"])))
        spec.artifacts.append({"name": "selection_report", "path": str(path)})


def save_run(
    db: Database,
    *,
    dag_id: str,
    run_id: str,
    summary: dict[str, Any],
    tracked: TrackedRun | None,
    links: dict[str, str | None] | None = None,
) -> None:
    """Upsert the ``runs`` record; ``links``: where people open it (``clearml_page``,
    ``airflow_run``), kept beside the task so ``framesift status`` can print them."""
    db[RUNS].create_index([("finished_at", DESCENDING)])
    fields = {
        "dag_id": dag_id,
        "run_id": run_id,
        "finished_at": registry.now(),
        "summary": summary,
        **{k: v for k, v in (links or {}).items()},
    }
    if tracked is not None:  # a failed recording keeps the task an earlier try recorded
        fields["clearml"] = tracked.__dict__
    update: dict[str, Any] = {"$set": fields}
    if tracked is None:
        update["$setOnInsert"] = {"clearml": None}
    db[RUNS].update_one({"_id": f"{dag_id}/{run_id}"}, update, upsert=True)


def previous_tracked(db: Database, dag_id: str, run_id: str) -> dict[str, Any] | None:
    """The ClearML task an earlier try of this run recorded (``RunSpec.previous``), if any."""
    doc = db[RUNS].find_one({"_id": f"{dag_id}/{run_id}"}, {"clearml": 1}) or {}
    return doc.get("clearml") or None


def clearml_link(tracked: dict[str, Any] | TrackedRun | None, page: str | None) -> str | None:
    """Where a person opens a run's ClearML task: the server's web UI when the run went to
    a server; else ``page`` (framesift's served page of the offline session). Never a
    ``file://`` path: browsers do not open those from a web page."""
    if tracked is None:
        return None
    info = tracked if isinstance(tracked, dict) else tracked.__dict__
    url = info.get("url") or ""
    if not info.get("offline_zip") and url.startswith(("http://", "https://")):
        return url
    return page


def clearml_import_hint(zip_path: str) -> str:
    return f"framesift clearml import {zip_path}"


def recent_runs(db: Database, limit: int = 10) -> list[dict[str, Any]]:
    return list(db[RUNS].find().sort("finished_at", DESCENDING).limit(limit))


def format_run(doc: dict[str, Any]) -> str:
    s = doc.get("summary") or {}
    when = (
        doc["finished_at"].strftime("%Y-%m-%d %H:%M") if isinstance(doc.get("finished_at"), datetime) else "?"
    )
    status = ", ".join(f"{k} {v}" for k, v in sorted((s.get("by_status") or {}).items())) or "no videos"
    line = f"{when}  {doc['dag_id']}  {doc['run_id']}\n    videos {s.get('videos', 0)} ({status}), frames {s.get('frames_written', 0)}"
    tracked = doc.get("clearml") or {}
    if tracked.get("offline_zip"):
        page = doc.get("clearml_page")
        line += f"\n    ClearML: offline session {tracked['offline_zip']}" + (
            f"\n      open: {page}" if page else ""
        )
        line += f"\n      import into a server: {clearml_import_hint(tracked['offline_zip'])}"
    elif tracked.get("url"):
        line += f"\n    ClearML: {tracked['url']}"
    for item in s.get("quarantined", []):
        line += f"\n    ! {item['key']}: quarantined: {item['reason']}"
    for item in s.get("failed", []):
        where = item.get("task") or item.get("stage") or "?"
        line += f"\n    ! {item['key']}: failed at {where}: {item.get('error') or item.get('reason')}"
        if item.get("next"):
            line += f"\n      {item['next']}"
    for item in s.get("damaged", []):
        line += f"\n    ~ {item['key']}: {item['line']}"
    return line


def _add_selection(spec: RunSpec, selection: dict[str, Any]) -> None:
    """Selection scalars, plots (class balance, embedding scatter) and the record itself."""
    spec.scalar("frames", "selected", len(selection["selected"]))
    spec.scalar("frames", "selection input", selection["n_input"])
    spec.scalar("duration_s", "select", (selection.get("timings") or {}).get("total_s", 0.0))
    for i, balance in enumerate(selection.get("balance") or []):
        classes = balance.get("classes") or []
        series = {k: balance[k] for k in ("input", "selected", "target") if balance.get(k) is not None}
        if classes and series:
            spec.bars.append({"title": f"class distribution ({i})", "labels": classes, "series": series})
    points = selection.get("embedding_2d") or {}
    if points.get("input") or points.get("selected"):
        spec.scatters.append(
            {
                "title": f"embeddings ({points.get('method')})",
                "series": {"input": points.get("input") or [], "selected": points.get("selected") or []},
            }
        )
    record = {k: v for k, v in selection.items() if k not in ("embedding_2d", "created_at")}
    spec.artifacts.append({"name": "selection", "object": record})
    spec.params["selection_report"] = selection.get("report_uri")
