"""Operators of the labeling platform: push an image sequence, sync the queue's statuses."""

from __future__ import annotations

from typing import Any

from framesift_airflow.links import LabelingProjectLink
from framesift_airflow.operators.base import ConfigOperator, PerVideoOperator, attempt_of, framesift_hook


class PushSequenceOperator(PerVideoOperator):
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

        hook = framesift_hook(self.config_path)
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


class SyncLabelsOperator(ConfigOperator):
    """Labeling/Reviewing status of the open `labeling_queue` records, from the platform."""

    ui_color = "#fdf3e8"

    def execute(self, context) -> dict[str, int]:
        from framesift.labeling.queue import sync_status

        hook = framesift_hook(self.config_path)
        counts = sync_status(hook.db, hook.labeling_backend())
        self.log.info("labeling queue: %s", counts)
        return counts
