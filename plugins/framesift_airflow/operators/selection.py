"""Operators of the selection stage: plan shards, select a shard, select (or merge) the batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from framesift_airflow.links import SelectionReportLink
from framesift_airflow.operators.base import (
    DONE,
    BatchOperator,
    ConfigOperator,
    attempt_of,
    fail_fast,
    framesift_hook,
    video_refs,
)
from framesift_airflow.urls import s3_link


def to_work_on(videos: Any) -> list[dict[str, Any]]:
    """The per-video outcomes a batch stage works on: not those an earlier stage passed on
    as nothing to do in this run (another run has them, or they finished earlier)."""
    return [v for v in videos or [] if v.get("route") != DONE]


class PlanSelectionOperator(BatchOperator):
    """Split a batch too big for one worker (``selection.shard_max_frames``) into shards.

    Returns one item per shard for the mapped ``select_shard``; none (the usual case)
    when ``select_frames`` can select the whole batch in one pass.
    """

    ui_color = "#e8fdf6"

    def execute(self, context) -> list[dict[str, Any]]:
        from framesift.selection.batch import plan_selection
        from framesift.selection.presets import selection_overrides

        if self.videos is None:  # nothing was inferred: every video failed, or the run stopped early
            self.log.info("no inferred videos in this run: nothing to plan")
            return []
        hook = framesift_hook(self.config_path)
        return plan_selection(
            hook.s3,
            hook.db,
            hook.config,
            video_refs(to_work_on(self.videos)),
            run_id=attempt_of(context, hook.config),
            overrides=selection_overrides(dict(context["params"])),
        )


class SelectShardOperator(ConfigOperator):
    """Greedy selection on one shard of the plan; its winners go to S3 for the merge."""

    template_fields: Sequence[str] = ("shard",)
    ui_color = "#e8fdf6"

    def __init__(self, *, shard: dict[str, Any], **kwargs) -> None:
        super().__init__(**kwargs)
        self.shard = shard

    def execute(self, context) -> str:
        from framesift.selection.batch import select_one_shard

        hook = framesift_hook(self.config_path)
        self.log.info(
            "shard %s: %s frames of %s video(s)",
            self.shard["shard"],
            self.shard["frames"],
            self.shard["videos"],
        )
        return select_one_shard(
            hook.s3,
            hook.db,
            hook.config,
            selection_id=self.shard["selection_id"],
            shard=self.shard["shard"],
            attempt=attempt_of(context, hook.config),
        )


class SelectFramesOperator(BatchOperator):
    """One selection over the run's inferred videos (or the merge of its shards'
    winners); returns one push item per video.

    The run's params (the trigger form) may override the budget (``n_samples`` or
    ``proportion_samples``) and pick a strategy ``preset``; ``dry_run`` stops here.
    ``batch`` (the run's registered videos): those an earlier run selected but never
    pushed (``selected``, or stranded in ``pushing``) are pushed by this run too.
    """

    template_fields: Sequence[str] = ("videos", "batch")
    operator_extra_links = (SelectionReportLink(),)
    ui_color = "#e8fdf6"

    def __init__(self, *, batch: Any = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.batch = batch

    def execute(self, context) -> list[dict[str, Any]]:
        from framesift.labeling.push import push_items, resumed_push_items
        from framesift.selection.batch import select_batch
        from framesift.selection.presets import selection_overrides

        if self.batch is None:  # register_uploads did not finish: the summary fails the run
            self.log.info("this run registered no batch: nothing to select or push")
            return []
        hook = framesift_hook(self.config_path)
        params = dict(context["params"])
        try:
            record = select_batch(
                hook.s3,
                hook.db,
                hook.config,
                video_refs(to_work_on(self.videos)),
                run_id=attempt_of(context, hook.config),
                overrides=selection_overrides(params),
            )
        except Exception as exc:
            fail_fast(
                exc,
                "select_frames failed",
                " After the fix: `framesift videos requeue --failed --reason ...`.",
            )
            raise
        if record.get("report_uri"):
            SelectionReportLink.persist(context, s3_link(hook.s3, record["report_uri"]))
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
        items = push_items(hook.db, record)
        resumed = resumed_push_items(
            hook.db, [v["video_id"] for v in self.batch or []], exclude={i["video_id"] for i in items}
        )
        for item in resumed:
            self.log.info("also pushing %s, selected by an earlier run and not pushed yet", item["key"])
        return items + resumed
