"""Operators: thin wrappers that get clients from FramesiftHook and call the core."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from framesift_airflow.links import ClearMLRunLink


def _run_id(context) -> str:
    return context["run_id"]


def _work_dir() -> str:
    from framesift.stack import var_dir

    path = var_dir() / "work"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _trigger_payloads(context) -> list[dict[str, Any]]:
    """Payloads of the asset events (from watchers) that triggered this run, if any."""
    payloads = []
    events = context.get("triggering_asset_events") or {}
    for asset_events in events.values():
        for event in asset_events:
            extra = getattr(event, "extra", None) or {}
            if extra.get("from_trigger") and isinstance(extra.get("payload"), dict):
                payloads.append(extra["payload"])
    return payloads


class RegisterUploadsOperator(BaseOperator):
    """Register new uploads in the Mongo ``videos`` registry; return the videos to extract.

    Objects come from the asset events that triggered the run (SQS or prefix watcher);
    a manual run with no events lists ``prefix`` (default: ``storage.videos_prefix``).
    """

    template_fields: Sequence[str] = ("prefix",)
    ui_color = "#e8f4fd"

    def __init__(self, *, prefix: str | None = None, config_path: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.prefix = prefix
        self.config_path = config_path

    def execute(self, context) -> list[dict[str, Any]]:
        from framesift.ingest import register_uploads
        from framesift_airflow.hooks import FramesiftHook

        hook = FramesiftHook(self.config_path)
        refs = register_uploads(
            hook.s3,
            hook.db,
            hook.config,
            run_id=_run_id(context),
            event_payloads=_trigger_payloads(context),
            prefix=self.prefix or None,
        )
        return [r.to_dict() for r in refs]


class ExtractFramesOperator(BaseOperator):
    """Extract sampled frames of one video to S3 and record the outcome.

    Mapped per video. A bad video is quarantined with its reason and this task instance
    is skipped (the rest of the batch goes on); infrastructure errors fail and retry.
    """

    template_fields: Sequence[str] = ("video",)
    ui_color = "#fdf3e8"

    def __init__(self, *, video: dict[str, Any], config_path: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.video = video
        self.config_path = config_path

    def execute(self, context) -> dict[str, Any]:
        from framesift.ingest import extract_one
        from framesift.registry import QUARANTINED, VideoRef
        from framesift_airflow.hooks import FramesiftHook

        hook = FramesiftHook(self.config_path)
        ref = VideoRef(**self.video)
        outcome = extract_one(
            hook.s3, hook.db, hook.config, ref, run_id=_run_id(context), work_dir=_work_dir()
        )
        if outcome["status"] == QUARANTINED:
            raise AirflowSkipException(f"quarantined s3://{ref.bucket}/{ref.key}: {outcome['reason']}")
        self.log.info(
            "extracted s3://%s/%s: %s frames -> %s (%s corrupt)",
            ref.bucket,
            ref.key,
            outcome["frames_written"],
            outcome["frames_prefix"],
            outcome["frames_corrupt"],
        )
        return outcome


class IngestSummaryOperator(BaseOperator):
    """The run's outcome: a summary read back from the registry, a ClearML task, a ``runs``
    record for ``framesift status``. Fails the run if a video failed (not if one was
    quarantined: that is a data problem with its own record)."""

    template_fields: Sequence[str] = ("videos", "run_params")
    operator_extra_links = (ClearMLRunLink(),)
    ui_color = "#eefde8"

    def __init__(
        self,
        *,
        videos: Any,
        run_params: dict[str, Any] | None = None,
        config_path: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.videos = videos
        self.run_params = run_params or {}
        self.config_path = config_path

    def execute(self, context) -> dict[str, Any]:
        from framesift import runs
        from framesift.ingest import summarize
        from framesift.tracking import record_run
        from framesift_airflow.hooks import FramesiftHook

        hook = FramesiftHook(self.config_path)
        dag_id, run_id = context["dag"].dag_id, _run_id(context)
        ids = [v["video_id"] for v in self.videos or []]
        summary = summarize(hook.db, ids)
        docs = list(hook.db["videos"].find({"_id": {"$in": ids}}))
        spec = runs.ingest_run_spec(
            hook.config, dag_id=dag_id, run_id=run_id, params=self.run_params, video_docs=docs
        )
        try:
            tracked = record_run(spec)
        except Exception as exc:  # tracking must not lose the run's outcome
            self.log.warning(
                "could not record the ClearML run (%s); the outcome is still saved in Mongo `runs`", exc
            )
            tracked = None
        runs.save_run(hook.db, dag_id=dag_id, run_id=run_id, summary=summary, tracked=tracked)
        ClearMLRunLink.persist(context, tracked.url if tracked else None)

        self.log.info(
            "ingest summary: %d video(s) %s, %d frames written; ClearML: %s",
            summary["videos"],
            summary["by_status"],
            summary["frames_written"],
            tracked.url if tracked else "not recorded",
        )
        for item in summary["extracted"]:
            self.log.info(
                "  extracted %s: %s frames at %s", item["key"], item["frames"], item["frames_prefix"]
            )
        for item in summary["quarantined"]:
            self.log.warning("  quarantined %s: %s", item["key"], item["reason"])
        if summary["failed"]:
            keys = ", ".join(f"{f['key']} ({f['reason']})" for f in summary["failed"])
            raise RuntimeError(
                f"{len(summary['failed'])} video(s) failed: {keys}. They are retried by the next run "
                f"(up to 3 attempts); check the extract_frames logs for the error."
            )
        return {**summary, "clearml": tracked.__dict__ if tracked else None}
