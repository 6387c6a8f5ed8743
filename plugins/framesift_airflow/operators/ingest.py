"""Operators of the ingest stages: register uploads, extract frames, infer, and the run's
summary (ClearML task and ``runs`` record).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

from framesift_airflow.links import ClearMLRunLink
from framesift_airflow.operators.base import (
    BatchOperator,
    ConfigOperator,
    PerVideoOperator,
    attempt_of,
    context_run_id,
    framesift_hook,
    work_dir,
)


def trigger_payloads(context) -> list[dict[str, Any]]:
    """Payloads of the asset events (from watchers) that triggered this run, if any."""
    payloads = []
    events = context.get("triggering_asset_events") or {}
    for asset_events in events.values():
        for event in asset_events:
            extra = getattr(event, "extra", None) or {}
            if extra.get("from_trigger") and isinstance(extra.get("payload"), dict):
                payloads.append(extra["payload"])
    return payloads


class RegisterUploadsOperator(ConfigOperator):
    """Register new uploads in the Mongo ``videos`` registry; return the videos to extract.

    Objects come from the asset events that triggered the run (SQS or prefix watcher);
    a manual run with no events lists ``prefix`` (default: ``storage.videos_prefix``).
    """

    template_fields: Sequence[str] = ("prefix",)
    ui_color = "#e8f4fd"

    def __init__(self, *, prefix: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.prefix = prefix

    def execute(self, context) -> list[dict[str, Any]]:
        from framesift.ingest.stage import register_uploads

        hook = framesift_hook(self.config_path)
        refs = register_uploads(
            hook.s3,
            hook.db,
            hook.config,
            run_id=context_run_id(context),
            event_payloads=trigger_payloads(context),
            prefix=self.prefix or None,
        )
        return [r.to_dict() for r in refs]


class ExtractFramesOperator(PerVideoOperator):
    """Extract sampled frames of one video to S3 and record the outcome.

    With ``inference.overlap`` (the default) the detector runs here too, on the frames as
    they are decoded, and the ``infer`` task finds the video inferred. A bad video is
    quarantined with its reason and this task instance is skipped (the rest of the batch
    goes on); infrastructure errors fail and retry.
    """

    ui_color = "#fdf3e8"

    def execute(self, context) -> dict[str, Any]:
        from framesift.inference.overlap import can_overlap
        from framesift.inference.stage import extract_and_infer_one
        from framesift.ingest.registry import EXTRACTED, INFERRED, INFERRING, SELECTING
        from framesift.ingest.stage import extract_one

        hook = framesift_hook(self.config_path)
        stage = extract_and_infer_one if can_overlap(hook.config) else extract_one
        outcome = stage(
            hook.s3,
            hook.db,
            hook.config,
            self._ref(),
            run_id=attempt_of(context, hook.config),
            work_dir=work_dir(),
        )
        self.log.info(
            "%s: %s, %s frames at %s (%s corrupt)",
            outcome["key"],
            outcome["status"],
            outcome["frames_written"],
            outcome["frames_prefix"],
            outcome["frames_corrupt"],
        )
        # later stages take over a video stranded in inferring or selecting
        return self._continue_or_skip(outcome, (EXTRACTED, INFERRING, INFERRED, SELECTING))


class InferOperator(PerVideoOperator):
    """Run the detector over one video's frames: Lightly predictions + embeddings in S3.

    Runs in the ``gpu`` pool (and on the ``gpu`` Celery queue, set in the DAG).
    """

    ui_color = "#f3e8fd"

    def execute(self, context) -> dict[str, Any]:
        from framesift.inference.stage import infer_one
        from framesift.ingest.registry import INFERRED, SELECTING

        hook = framesift_hook(self.config_path)
        # the attempt travels as the run id: infer_one hands it to the registry's claim
        outcome = infer_one(
            hook.s3, hook.db, hook.config, self._ref(), run_id=attempt_of(context, hook.config)
        )
        inf = outcome.get("inference") or {}
        self.log.info(
            "%s: %s frames, %s boxes %s, %s frames/s; predictions at %s",
            outcome["key"],
            inf.get("frames"),
            inf.get("boxes"),
            inf.get("counts"),
            inf.get("fps"),
            inf.get("predictions_prefix"),
        )
        return self._continue_or_skip(outcome, (INFERRED, SELECTING))


class IngestSummaryOperator(BatchOperator):
    """The run's outcome: a summary read back from the registry, a ClearML task, a ``runs``
    record for ``framesift status``. Fails the run if a video failed (not if one was
    quarantined: that is a data problem with its own record)."""

    operator_extra_links = (ClearMLRunLink(),)
    ui_color = "#eefde8"

    def execute(self, context) -> dict[str, Any]:
        from framesift.ingest.stage import run_videos, summarize
        from framesift.tracking import runs
        from framesift.tracking.clearml import record_run

        hook = framesift_hook(self.config_path)
        dag_id, run_id = context["dag"].dag_id, context_run_id(context)
        docs = run_videos(hook.db, [v["video_id"] for v in self.videos or []])
        summary = summarize(docs)
        sel_ids = {d["selection_id"] for d in docs if d.get("selection_id")}
        selection = hook.db["selections"].find_one({"_id": {"$in": sorted(sel_ids)}, "run_id": run_id})
        spec = runs.ingest_run_spec(
            hook.config,
            dag_id=dag_id,
            run_id=run_id,
            params=dict(context["params"]),
            video_docs=docs,
            selection=selection,
        )
        try:
            with tempfile.TemporaryDirectory() as tmp:
                runs.attach_outputs(spec, hook.s3, docs, selection, tmp)
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
