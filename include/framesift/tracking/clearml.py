"""One ClearML task per pipeline run: config, scalars, plots, artifacts.

The ClearML SDK keeps process-global state (one ``Task.init`` per process, stream and
framework hooks, atexit handlers), which does not mix with Airflow workers that run many
task instances in one process. So a run is recorded from a short-lived child process:
``record_run(spec)`` pipes a JSON spec to ``python -m framesift.tracking.clearml`` and gets the
task id and its location back.

Offline by default (sessions land as ``offline-<id>.zip`` under ClearML's cache dir, set
inside the project by the Makefile and the embedded stack, importable into a server
later); a real server is used when ``tracking.offline`` is false and ``CLEARML_API_HOST``
and keys are set in the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunSpec:
    """Everything to record for one run; plain data, JSON-serialisable."""

    project: str
    task_name: str
    task_type: str = "inference"
    tags: list[str] = field(default_factory=list)
    offline: bool = True
    config: dict[str, Any] = field(default_factory=dict)  # connected as the "pipeline" configuration
    params: dict[str, Any] = field(default_factory=dict)  # connected as hyperparameters
    scalars: list[dict[str, Any]] = field(default_factory=list)  # {title, series, value, iteration}
    bars: list[dict[str, Any]] = field(default_factory=list)  # {title, labels, series: {name: [values]}}
    scatters: list[dict[str, Any]] = field(default_factory=list)  # {title, series: {name: [[x, y], ...]}}
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # {name, path} or {name, object}
    images: list[dict[str, Any]] = field(default_factory=list)  # {title, series, path}
    # the task an earlier try of the same run recorded: a server task is continued, an
    # offline session zip is replaced, so each run has exactly one task
    previous: dict[str, Any] | None = None

    def scalar(self, title: str, series: str, value: float, iteration: int = 0) -> None:
        self.scalars.append({"title": title, "series": series, "value": float(value), "iteration": iteration})


@dataclass
class TrackedRun:
    task_id: str
    url: str  # the task in the ClearML web UI, or the offline session's file:// location
    offline_zip: str | None


def use_server(offline: bool) -> bool:
    return not offline and bool(os.environ.get("CLEARML_API_HOST"))


def record_run(spec: RunSpec, timeout_s: float = 300) -> TrackedRun:
    """Record ``spec`` as one ClearML task (in a child process); return where it is."""
    proc = subprocess.run(
        [sys.executable, "-m", "framesift.tracking.clearml"],
        input=json.dumps(spec.__dict__, default=str),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    result_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("FRAMESIFT_TRACKED=")]
    if proc.returncode != 0 or not result_lines:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
        raise RuntimeError(f"recording the ClearML run failed (exit {proc.returncode}):\n{tail}")
    return TrackedRun(**json.loads(result_lines[-1].split("=", 1)[1]))


def _record_in_this_process(spec: RunSpec) -> TrackedRun:
    from clearml import Task
    from clearml.config.cache import SessionCache

    cache_dir = os.environ.get("CLEARML_CACHE_DIR")
    if cache_dir:  # ClearML otherwise keeps a session file in ~/.clearml
        SessionCache.SESSION_CACHE_FOLDER = str(Path(cache_dir) / "session")
    offline = not use_server(spec.offline)
    Task.set_offline(offline)
    previous = spec.previous or {}
    continue_task = previous.get("task_id") if not offline and not previous.get("offline_zip") else None
    task = Task.init(
        project_name=spec.project,
        task_name=spec.task_name,
        task_type=spec.task_type,
        tags=spec.tags,
        reuse_last_task_id=False,
        continue_last_task=continue_task or False,
        auto_connect_arg_parser=False,
        auto_connect_frameworks=False,
        auto_resource_monitoring=False,
        auto_connect_streams=False,
    )
    if spec.config:
        task.connect_configuration(spec.config, name="pipeline")
    if spec.params:
        task.connect(spec.params, name="run")
    logger = task.get_logger()
    for s in spec.scalars:
        logger.report_scalar(s["title"], s["series"], float(s["value"]), int(s.get("iteration", 0)))
    for b in spec.bars:
        import numpy as np

        for name, values in b["series"].items():
            logger.report_histogram(
                b["title"],
                name,
                values=np.asarray(values, dtype=float),
                iteration=0,
                xlabels=list(b["labels"]),
            )
    for sc in spec.scatters:
        import numpy as np

        for name, points in sc["series"].items():
            logger.report_scatter2d(
                sc["title"],
                name,
                scatter=np.asarray(points, dtype=float).reshape(-1, 2),
                iteration=0,
                mode="markers",
            )
    for img in spec.images:
        logger.report_image(img["title"], img["series"], iteration=0, local_path=img["path"])
    for art in spec.artifacts:
        obj = art.get("path") or art.get("object")
        task.upload_artifact(
            art["name"], artifact_object=Path(obj) if "path" in art else obj, wait_on_upload=True
        )
    task_id = task.id
    folder = task.get_offline_mode_folder() if offline else None
    task.close()
    if offline:
        zip_path = Path(folder).with_suffix(".zip")  # close() packs the session folder into this zip
        _drop_previous_session(previous.get("offline_zip"), zip_path)
        return TrackedRun(task_id, f"file://{zip_path}", str(zip_path))
    web = os.environ.get("CLEARML_WEB_HOST", "").rstrip("/")
    return TrackedRun(task_id, f"{web}/projects/*/experiments/{task_id}" if web else task_id, None)


def _drop_previous_session(old_zip: str | None, new_zip: Path) -> None:
    """Remove an earlier try's offline session of the same run (its zip and folder)."""
    import shutil

    if not old_zip or Path(old_zip) == new_zip:
        return
    old = Path(old_zip)
    if old.suffix == ".zip" and old.name.startswith("offline-"):
        old.unlink(missing_ok=True)
        shutil.rmtree(old.with_suffix(""), ignore_errors=True)


def import_offline_session(zip_path: str) -> str:
    """Import an offline session zip into the ClearML server the environment names
    (``CLEARML_API_HOST`` and keys); return the new task's id. For ``framesift clearml
    import``; runs in the calling process (a short-lived CLI)."""
    from clearml import Task

    if not os.environ.get("CLEARML_API_HOST"):
        raise RuntimeError(
            "no ClearML server: set CLEARML_API_HOST, CLEARML_WEB_HOST, CLEARML_API_ACCESS_KEY and "
            "CLEARML_API_SECRET_KEY (see docs/operations.md) to import an offline session"
        )
    Task.set_offline(False)
    return str(Task.import_offline_session(str(zip_path)))


def main() -> int:
    spec = RunSpec(**json.loads(sys.stdin.read()))
    tracked = _record_in_this_process(spec)
    print("FRAMESIFT_TRACKED=" + json.dumps(tracked.__dict__), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
