"""What the stage operators share: the run id, a scratch folder, the hook, and the bases
for config-only, per-video (mapped) and per-batch operators.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException


def context_run_id(context) -> str:
    return context["run_id"]


def attempt_of(context, cfg):
    """This task try as a framesift attempt: the run, the task (with its map index) and
    the try number, with the config's lease; every claim it takes carries them."""
    from framesift.io.leases import Attempt

    ti = context["ti"]
    map_index = getattr(ti, "map_index", -1)
    task = f"{ti.dag_id}.{ti.task_id}" + (
        f"[{map_index}]" if map_index is not None and map_index >= 0 else ""
    )
    return Attempt(
        run_id=context["run_id"],
        try_number=int(getattr(ti, "try_number", 1) or 1),
        task=task,
        lease_s=cfg.claims.lease_s,
        heartbeat_s=cfg.claims.heartbeat_s,
    )


def framesift_hook(config_path):
    from framesift_airflow.hooks import FramesiftHook

    return FramesiftHook(config_path)


def work_dir(*parts: str) -> str:
    """A scratch folder under the project's ``var/work`` (created)."""
    from framesift.local.stack import var_dir

    path = var_dir().joinpath("work", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def video_refs(videos: Any) -> list:
    from framesift.ingest.registry import VideoRef

    return [
        VideoRef(**{k: v[k] for k in ("video_id", "bucket", "key", "etag", "size")}) for v in videos or []
    ]


class ConfigOperator(BaseOperator):
    """Base of the operators: the pipeline config's path (default: ``FRAMESIFT_CONFIG``)."""

    def __init__(self, *, config_path: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path


class PerVideoOperator(ConfigOperator):
    """Base of the mapped per-video stages: one ``video`` ref (a dict) in, an outcome out."""

    template_fields: Sequence[str] = ("video",)

    def __init__(self, *, video: dict[str, Any], **kwargs) -> None:
        super().__init__(**kwargs)
        self.video = video

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


class BatchOperator(ConfigOperator):
    """Base of the once-per-run stages: the list of the run's ``videos`` (dicts) in."""

    template_fields: Sequence[str] = ("videos",)

    def __init__(self, *, videos: Any, **kwargs) -> None:
        super().__init__(**kwargs)
        self.videos = videos
