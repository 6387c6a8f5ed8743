"""Operators: thin wrappers that get clients from FramesiftHook and call the core."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from framesift_airflow.links import ClearMLRunLink, LabelingProjectLink, SelectionReportLink


def _run_id(context) -> str:
    return context["run_id"]


def _work_dir() -> str:
    from framesift.local.stack import var_dir

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
        from framesift.ingest.stage import register_uploads
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


class _PerVideoOperator(BaseOperator):
    """Base of the mapped per-video stages: one ``video`` ref (a dict) in, an outcome out."""

    template_fields: Sequence[str] = ("video",)

    def __init__(self, *, video: dict[str, Any], config_path: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.video = video
        self.config_path = config_path

    def _ref(self):
        """The video ref, from a registration entry or an upstream stage's outcome."""
        from dataclasses import fields

        from framesift.ingest.registry import VideoRef

        return VideoRef(**{f.name: self.video[f.name] for f in fields(VideoRef)})

    def _continue_or_skip(self, outcome: dict[str, Any], ready: tuple[str, ...]) -> dict[str, Any]:
        """Downstream stages run only for videos in one of the ``ready`` statuses."""
        if outcome["status"] not in ready:
            ref = self._ref()
            why = outcome["reason"] or f"it is {outcome['status']} (handled by another run)"
            raise AirflowSkipException(f"s3://{ref.bucket}/{ref.key}: {why}")
        return outcome


class ExtractFramesOperator(_PerVideoOperator):
    """Extract sampled frames of one video to S3 and record the outcome.

    A bad video is quarantined with its reason and this task instance is skipped (the
    rest of the batch goes on); infrastructure errors fail and retry.
    """

    ui_color = "#fdf3e8"

    def execute(self, context) -> dict[str, Any]:
        from framesift.ingest.registry import EXTRACTED, INFERRED, INFERRING
        from framesift.ingest.stage import extract_one
        from framesift_airflow.hooks import FramesiftHook

        hook = FramesiftHook(self.config_path)
        outcome = extract_one(
            hook.s3, hook.db, hook.config, self._ref(), run_id=_run_id(context), work_dir=_work_dir()
        )
        self.log.info(
            "%s: %s, %s frames at %s (%s corrupt)",
            outcome["key"],
            outcome["status"],
            outcome["frames_written"],
            outcome["frames_prefix"],
            outcome["frames_corrupt"],
        )
        return self._continue_or_skip(outcome, (EXTRACTED, INFERRING, INFERRED))


class InferOperator(_PerVideoOperator):
    """Run the detector over one video's frames: Lightly predictions + embeddings in S3.

    Runs in the ``gpu`` pool (and on the ``gpu`` Celery queue, set in the DAG).
    """

    ui_color = "#f3e8fd"

    def execute(self, context) -> dict[str, Any]:
        from framesift.inference.stage import infer_one
        from framesift.ingest.registry import INFERRED
        from framesift_airflow.hooks import FramesiftHook

        hook = FramesiftHook(self.config_path)
        outcome = infer_one(hook.s3, hook.db, hook.config, self._ref(), run_id=_run_id(context))
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
        return self._continue_or_skip(outcome, (INFERRED,))


def _video_refs(videos: Any) -> list:
    from framesift.ingest.registry import VideoRef

    return [
        VideoRef(**{k: v[k] for k in ("video_id", "bucket", "key", "etag", "size")}) for v in videos or []
    ]


class _BatchOperator(BaseOperator):
    """Base of the once-per-run stages: the list of the run's ``videos`` (dicts) in."""

    template_fields: Sequence[str] = ("videos",)

    def __init__(self, *, videos: Any, config_path: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.videos = videos
        self.config_path = config_path


class PlanSelectionOperator(_BatchOperator):
    """Split a batch too big for one worker (``selection.shard_max_frames``) into shards.

    Returns one item per shard for the mapped ``select_shard``; none (the usual case)
    when ``select_frames`` can select the whole batch in one pass.
    """

    ui_color = "#e8fdf6"

    def execute(self, context) -> list[dict[str, Any]]:
        from framesift.selection.batch import plan_selection
        from framesift.selection.presets import selection_overrides
        from framesift_airflow.hooks import FramesiftHook

        hook = FramesiftHook(self.config_path)
        return plan_selection(
            hook.s3,
            hook.db,
            hook.config,
            _video_refs(self.videos),
            run_id=_run_id(context),
            overrides=selection_overrides(dict(context["params"])),
        )


class SelectShardOperator(BaseOperator):
    """Greedy selection on one shard of the plan; its winners go to S3 for the merge."""

    template_fields: Sequence[str] = ("shard",)
    ui_color = "#e8fdf6"

    def __init__(self, *, shard: dict[str, Any], config_path: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shard = shard
        self.config_path = config_path

    def execute(self, context) -> str:
        from framesift.selection.batch import select_one_shard
        from framesift_airflow.hooks import FramesiftHook

        hook = FramesiftHook(self.config_path)
        self.log.info(
            "shard %s: %s frames of %s video(s)",
            self.shard["shard"],
            self.shard["frames"],
            self.shard["videos"],
        )
        return select_one_shard(
            hook.s3, hook.db, hook.config, selection_id=self.shard["selection_id"], shard=self.shard["shard"]
        )


class SelectFramesOperator(_BatchOperator):
    """One selection over the run's inferred videos (or the merge of its shards'
    winners); returns one push item per video.

    The run's params (the trigger form) may override the budget (``n_samples`` or
    ``proportion_samples``) and pick a strategy ``preset``; ``dry_run`` stops here.
    """

    operator_extra_links = (SelectionReportLink(),)
    ui_color = "#e8fdf6"

    def execute(self, context) -> list[dict[str, Any]]:
        from framesift.io.s3 import http_url
        from framesift.labeling.push import push_items
        from framesift.selection.batch import select_batch
        from framesift.selection.presets import selection_overrides
        from framesift_airflow.hooks import FramesiftHook

        hook = FramesiftHook(self.config_path)
        params = dict(context["params"])
        record = select_batch(
            hook.s3,
            hook.db,
            hook.config,
            _video_refs(self.videos),
            run_id=_run_id(context),
            overrides=selection_overrides(params),
        )
        if record.get("report_uri"):
            SelectionReportLink.persist(context, http_url(hook.s3, record["report_uri"]))
        self.log.info(
            "selected %d of %s frames from %d video(s)%s; report: %s",
            len(record.get("selected", [])),
            record.get("n_input", 0),
            len(record.get("videos", [])),
            f" (merged from {len(record['shards'])} shards)" if record.get("shards") else "",
            record.get("report_uri"),
        )
        if params.get("dry_run"):
            self.log.info("dry run: stopping before the push to the labeling platform")
            return []
        return push_items(hook.db, record)


class PushSequenceOperator(_PerVideoOperator):
    """Push one video's selected frames to the labeling platform as an image sequence.

    Exactly once per selection, video and backend (see labeling_queue). Bad credentials
    and missing frames fail without retries; platform outages retry with backoff.
    """

    operator_extra_links = (LabelingProjectLink(),)
    ui_color = "#fde8ef"

    def execute(self, context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from framesift.labeling.base import BackendError, BadCredentials, FrameMissing
        from framesift.labeling.push import push_video
        from framesift_airflow.hooks import FramesiftHook

        hook = FramesiftHook(self.config_path)
        ti = context["ti"]
        owner = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{ti.map_index}"
        try:
            out = push_video(
                hook.s3,
                hook.db,
                hook.config,
                self.video,
                hook.labeling_backend(),
                run_id=_run_id(context),
                owner=owner,
            )
        except BadCredentials as exc:
            raise AirflowFailException(
                f"the labeling platform refused the credentials of connection "
                f"'{hook.config.connections.labeling}': {exc}. Fix the connection; retrying will not help."
            ) from None
        except (FrameMissing, BackendError) as exc:
            raise AirflowFailException(f"{self.video['key']}: {exc}") from None
        labeling = out.get("labeling") or {}
        LabelingProjectLink.persist(context, labeling.get("url"))
        self.log.info("%s: %s frames -> %s", self.video["key"], labeling.get("frames"), labeling.get("url"))
        return out


class IngestSummaryOperator(_BatchOperator):
    """The run's outcome: a summary read back from the registry, a ClearML task, a ``runs``
    record for ``framesift status``. Fails the run if a video failed (not if one was
    quarantined: that is a data problem with its own record)."""

    operator_extra_links = (ClearMLRunLink(),)
    ui_color = "#eefde8"

    def execute(self, context) -> dict[str, Any]:
        from framesift.ingest.stage import run_videos, summarize
        from framesift.tracking import runs
        from framesift.tracking.clearml import record_run
        from framesift_airflow.hooks import FramesiftHook

        hook = FramesiftHook(self.config_path)
        dag_id, run_id = context["dag"].dag_id, _run_id(context)
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
