"""Operators of the labeling platform: push an image sequence, sync the queue's statuses."""

from __future__ import annotations

from typing import Any

from framesift_airflow.links import LabelingProjectLink
from framesift_airflow.operators.base import (
    ConfigOperator,
    PerVideoOperator,
    attempt_of,
    fail_fast,
    framesift_hook,
    note,
)


class PushSequenceOperator(PerVideoOperator):
    """Push one video's selected frames to the labeling platform as an image sequence.

    Exactly once per selection, video and backend (see labeling_queue). Bad credentials
    and missing frames fail without retries; platform outages retry with backoff.
    """

    operator_extra_links = (LabelingProjectLink(),)
    ui_color = "#fde8ef"

    def execute(self, context) -> dict[str, Any]:
        from framesift.labeling.base import BadCredentials
        from framesift.labeling.push import push_video

        hook = framesift_hook(self.config_path)
        key = self.video["key"]
        try:
            out = push_video(
                hook.s3,
                hook.db,
                hook.config,
                self.video,
                hook.labeling_backend(),
                run_id=attempt_of(context, hook.config),
            )
        except BadCredentials as exc:
            fail_fast(
                exc,
                f"the labeling platform refused the credentials of connection "
                f"'{hook.config.connections.labeling}'",
                f" After fixing the connection: `framesift videos requeue '{key}'`.",
            )
            raise
        except Exception as exc:
            fail_fast(
                exc,
                f"{key}: push_to_labeling failed",
                f" After the fix: `framesift videos requeue '{key}' --reason ...`.",
            )
            raise
        labeling = out.get("labeling") or {}
        if out.get("skipped"):
            why = {"pushed": "pushed earlier"}.get(
                out.get("status"), f"{out.get('status')}; another run has it"
            )
            note(context, why)
            self.log.info("%s: %s; nothing to push in this run", key, why)
        else:
            self.log.info("%s: %s frames -> %s", key, labeling.get("frames"), labeling.get("url"))
        LabelingProjectLink.persist(context, labeling.get("url"))
        return out


class SyncLabelsOperator(ConfigOperator):
    """Labeling/Reviewing status of the open `labeling_queue` records, from the platform."""

    ui_color = "#fdf3e8"

    def execute(self, context) -> dict[str, int]:
        from framesift.labeling.queue import sync_status

        hook = framesift_hook(self.config_path)
        counts = sync_status(hook.db, hook.labeling_backend())
        self.log.info("labeling queue: %s", counts)
        return counts
