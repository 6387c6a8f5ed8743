"""What the stage operators share: the run id, a scratch folder, the hook, and the bases
for config-only, per-video (mapped) and per-batch operators.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

# the context variable the mapped tasks' name template shows after the video key
# ("videos/a.mp4 · quarantined: not a video"); see MAP_NAME in dags/framesift_ingest.py
NOTE = "framesift_note"
# what a per-video outcome tells the next per-video stage: work on it, or nothing to do
WORK, DONE = "work", "done"


def context_run_id(context) -> str:
    return context["run_id"]


def note(context, text: str | None) -> None:
    """Show ``text`` beside this mapped task's video key in the UI."""
    if text:
        context[NOTE] = text


def fail_fast(exc: BaseException, what: str, fix_after: str = "") -> None:
    """For a permanent error (bad config, missing model, bucket or connection, refused
    credentials) raise ``AirflowFailException`` (no retries) naming the fix; return for a
    transient one, which the caller re-raises (Airflow retries it with backoff)::

        except Exception as exc:
            fail_fast(exc, "register_uploads")
            raise
    """
    from airflow.sdk.exceptions import AirflowFailException

    from framesift.config.errors import classify, one_line

    kind = classify(exc)
    if kind.permanent:
        fix = f" Fix: {kind.fix}." if kind.fix else ""
        raise AirflowFailException(
            f"{what}: {one_line(exc, 1000)}.{fix} Retrying will not help.{fix_after}"
        ) from exc


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
    """The hook (config and clients). A config that does not load fails the task at once
    with the validation message: no retry can fix a YAML file."""
    from framesift.config.schema import ConfigError
    from framesift_airflow.hooks import FramesiftHook

    try:
        return FramesiftHook(config_path)
    except ConfigError as exc:
        raise config_failure(exc) from None


def config_failure(exc: BaseException, more: str = ""):
    """The task failure (no retries) for a pipeline config that does not load."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(
        f"the pipeline config does not load: {exc}. Fix the YAML (`framesift config` checks it){more}."
    )


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

    def _passed_on(self, context) -> dict[str, Any] | None:
        """An upstream stage said there is nothing to do for this video in this run: the
        same outcome, and the same note in the UI."""
        if self.video.get("route") == DONE:
            note(context, self.video.get("note"))
            self.log.info(
                "%s: %s; nothing to do here in this run", self.video.get("key"), self.video.get("note")
            )
            return dict(self.video)
        return None

    def _failed(self, exc: BaseException, task: str) -> None:
        """A stage's exception: permanent ones fail at once, naming the fix and the requeue
        (raises); for transient ones it returns and the caller re-raises."""
        from framesift.ingest.stage import requeue_hint

        key = self.video.get("key")
        fail_fast(exc, f"{key}: {task} failed", f" After the fix: {requeue_hint(key)}.")

    def _route(
        self, context, outcome: dict[str, Any], ready: tuple[str, ...], later: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """Where the video goes next. *Skipped* means one thing: quarantined (bad input).
        In a ``ready`` status, or failed in a ``later`` stage that this run retries: the
        next stage works on it. Anything else (another run holds it, it finished or failed
        earlier, a later stage of this run takes it from the registry) succeeds with a
        note beside the key, and the next per-video stages pass it on."""
        from framesift.ingest.registry import FAILED, QUARANTINED, STAGE_TASK, WORKING

        status = outcome["status"]
        ref = self._ref()
        if status == QUARANTINED:
            note(context, "quarantined")
            raise AirflowSkipException(f"s3://{ref.bucket}/{ref.key}: quarantined: {outcome['reason']}")
        failed_at = outcome.get("failed_stage")
        if status in ready or (status == FAILED and failed_at in later):
            if status == FAILED:
                note(context, f"retrying {STAGE_TASK.get(failed_at, failed_at)}")
            return {**outcome, "route": WORK}
        if status == FAILED:
            why = f"failed earlier at {STAGE_TASK.get(failed_at, failed_at)}; waits for a requeue"
        elif status in WORKING and outcome.get("held_by"):
            why = f"{status} in run {outcome['held_by']}"
        else:
            why = {
                "pushed": "pushed earlier",
                "not_selected": "not selected earlier",
                "selected": "selected earlier; this run pushes it",
                "pushing": "push resumed by this run",
            }.get(status, f"{status}; handled by another run")
        note(context, why)
        self.log.info("s3://%s/%s: %s; nothing to do here in this run", ref.bucket, ref.key, why)
        return {**outcome, "route": DONE, "note": why}


class BatchOperator(ConfigOperator):
    """Base of the once-per-run stages: the list of the run's ``videos`` (dicts) in."""

    template_fields: Sequence[str] = ("videos",)

    def __init__(self, *, videos: Any, **kwargs) -> None:
        super().__init__(**kwargs)
        self.videos = videos
