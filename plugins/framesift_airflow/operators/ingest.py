"""Operators of the ingest stages: register uploads, extract frames, infer, and the run's
summary (ClearML task and ``runs`` record).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

from framesift.io.summaries import detections_line
from framesift_airflow.links import ClearMLRunLink
from framesift_airflow.operators.base import (
    BatchOperator,
    ConfigOperator,
    PerVideoOperator,
    attempt_of,
    context_run_id,
    fail_fast,
    framesift_hook,
    work_dir,
)
from framesift_airflow.urls import airflow_run_url, page_url


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


def requeue_params(params: dict[str, Any]) -> dict[str, Any]:
    """The trigger form's requeue fields as ``register_uploads`` arguments."""
    keys = params.get("requeue") or []
    if isinstance(keys, str):
        keys = [k.strip() for k in keys.split(",")]
    keys = [k for k in keys if k]
    every = any(k.lower() in ("failed", "--failed", "*") for k in keys)
    return {
        "requeue_keys": [] if every else keys,
        "requeue_failed": every,
        "requeue_reason": params.get("requeue_reason") or None,
    }


class RegisterUploadsOperator(ConfigOperator):
    """Register new uploads in the Mongo ``videos`` registry; return the videos to extract.

    Objects come from the asset events that triggered the run (SQS or prefix watcher);
    a manual run with no events lists ``prefix`` (default: ``storage.videos_prefix``).
    The trigger form's ``requeue`` (S3 keys, or ``failed``) and ``requeue_reason`` put
    failed videos back first, so this run retries them. Permanent errors (a missing bucket
    or connection) fail at once.
    """

    template_fields: Sequence[str] = ("prefix",)
    ui_color = "#e8f4fd"

    def __init__(self, *, prefix: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.prefix = prefix

    def execute(self, context) -> list[dict[str, Any]]:
        from framesift.ingest.stage import register_uploads

        hook = framesift_hook(self.config_path)
        try:
            refs = register_uploads(
                hook.s3,
                hook.db,
                hook.config,
                run_id=context_run_id(context),
                event_payloads=trigger_payloads(context),
                prefix=self.prefix or None,
                **requeue_params(dict(context["params"])),
            )
        except Exception as exc:
            fail_fast(exc, "register_uploads")
            raise
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
        try:
            outcome = stage(
                hook.s3,
                hook.db,
                hook.config,
                self._ref(),
                run_id=attempt_of(context, hook.config),
                work_dir=work_dir(),
            )
        except Exception as exc:
            self._failed(exc, "extract_frames")
            raise
        if not outcome["skipped"]:
            self.log.info(
                "%s: %s, %s frames at %s (%s corrupt)",
                outcome["key"],
                outcome["status"],
                outcome["frames_written"],
                outcome["frames_prefix"],
                outcome["frames_corrupt"],
            )
        # later stages take over a video stranded in inferring or selecting, and retry one
        # that failed there
        return self._route(
            context, outcome, (EXTRACTED, INFERRING, INFERRED, SELECTING), later=(INFERRING, SELECTING)
        )


class InferOperator(PerVideoOperator):
    """Run the detector over one video's frames: Lightly predictions + embeddings in S3.

    Runs in the ``gpu`` pool (and on the ``gpu`` Celery queue, set in the DAG).
    """

    ui_color = "#f3e8fd"

    def execute(self, context) -> dict[str, Any]:
        from framesift.inference.stage import infer_one
        from framesift.ingest.registry import INFERRED, SELECTING

        passed = self._passed_on(context)
        if passed is not None:
            return passed
        hook = framesift_hook(self.config_path)
        # the attempt travels as the run id: infer_one hands it to the registry's claim
        try:
            outcome = infer_one(
                hook.s3, hook.db, hook.config, self._ref(), run_id=attempt_of(context, hook.config)
            )
        except Exception as exc:
            self._failed(exc, "infer")
            raise
        inf = outcome.get("inference") or {}
        if not outcome["skipped"]:
            self.log.info(
                "%s: %s frames%s, %s, %s frames/s; predictions at %s",
                outcome["key"],
                inf.get("frames"),
                ""
                if inf.get("frames_cascade_skipped") is None
                else f" ({inf['frames_cascade_skipped']} more skipped by the cascade)",
                detections_line(inf.get("counts"), inf.get("boxes")),
                inf.get("fps"),
                inf.get("predictions_prefix"),
            )
        return self._route(context, outcome, (INFERRED, SELECTING), later=(SELECTING,))


def run_links(dag_id: str, run_id: str) -> dict[str, str | None]:
    """Where people open a run (absolute URLs, when ``[api] base_url`` is set): its page
    in the Airflow UI and its ClearML page; kept on the ``runs`` record for the CLI."""
    return {
        "airflow_run": airflow_run_url(dag_id, run_id),
        "clearml_page": page_url("clearml", absolute=True, dag_id=dag_id, run_id=run_id),
    }


class IngestSummaryOperator(BatchOperator):
    """The run's outcome: a summary read back from the registry, a ClearML task, a ``runs``
    record for ``framesift status``. Fails the run if a video failed (not if one was
    quarantined: that is a data problem with its own record)."""

    operator_extra_links = (ClearMLRunLink(),)
    ui_color = "#eefde8"

    def execute(self, context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from framesift.ingest.stage import failure_line, run_videos, summarize
        from framesift.tracking import runs
        from framesift.tracking.clearml import record_run

        if self.videos is None:  # register_uploads pushes a list, [] included, when it succeeds
            raise AirflowFailException(
                "register_uploads did not finish (it failed, or check_setup before it did): this run "
                "registered and processed nothing. Its log names the error."
            )
        hook = framesift_hook(self.config_path)
        dag_id, run_id = context["dag"].dag_id, context_run_id(context)
        docs = run_videos(hook.db, [v["video_id"] for v in self.videos or []])
        summary = summarize(docs, run_id)
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
        # a retry (or a cleared summary) continues the task an earlier try recorded: one per run
        spec.previous = runs.previous_tracked(hook.db, dag_id, run_id)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                runs.attach_outputs(spec, hook.s3, docs, selection, tmp)
                tracked = record_run(spec)
        except Exception as exc:  # tracking must not lose the run's outcome
            self.log.warning(
                "could not record the ClearML run (%s); the outcome is still saved in Mongo `runs`", exc
            )
            tracked = None
        links = run_links(dag_id, run_id)
        runs.save_run(hook.db, dag_id=dag_id, run_id=run_id, summary=summary, tracked=tracked, links=links)
        link = runs.clearml_link(tracked or spec.previous, page_url("clearml", dag_id=dag_id, run_id=run_id))
        ClearMLRunLink.persist(context, link)

        self.log.info(
            "ingest summary: %d video(s) %s, %d frames written; ClearML: %s",
            summary["videos"],
            summary["by_status"],
            summary["frames_written"],
            (tracked.offline_zip or tracked.url) if tracked else "not recorded",
        )
        for item in summary["extracted"]:
            self.log.info(
                "  extracted %s: %s frames at %s", item["key"], item["frames"], item["frames_prefix"]
            )
        for item in summary["quarantined"]:
            self.log.warning("  quarantined %s: %s", item["key"], item["reason"])
        for item in summary["failed_earlier"]:
            self.log.info("  still failed from an earlier run (not retried here): %s", failure_line(item))
        if summary["failed"]:
            lines = "\n".join(f"  {failure_line(f)}" for f in summary["failed"])
            # a result, not an outage: retrying the summary cannot change it
            raise AirflowFailException(
                f"{len(summary['failed'])} video(s) failed in this run (the other videos went on):\n{lines}"
            )
        return {**summary, "clearml": tracked.__dict__ if tracked else None}
