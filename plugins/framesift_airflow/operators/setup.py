"""``check_setup``, the first task of the DAGs: the config loads, the buckets, the model,
the connections and the labeling platform's credentials are there, and a manual run's
conf has only the trigger form's keys. Every problem found fails the run at once, naming
the key and the fix, before any video is claimed (no retries: a person must fix it); a
server that does not answer is retried."""

from __future__ import annotations

from collections.abc import Sequence

from framesift_airflow.operators.base import ConfigOperator, config_failure

STORAGE, MONGO, MODEL, LABELING, TRIGGER = "storage", "mongo", "model", "labeling", "trigger"


class CheckSetupOperator(ConfigOperator):
    """Fail fast, with the fix named, when the run cannot work; see the module docstring.

    ``checks``: which of storage (buckets), mongo, model (``inference.model_uri``),
    labeling (the connection and its credentials; not for a dry run) and trigger (the
    conf's keys) to run.
    """

    ui_color = "#f0f0f0"

    def __init__(self, *, checks: Sequence[str] = (TRIGGER, STORAGE, MONGO), **kwargs) -> None:
        kwargs.setdefault("retries", 2)
        super().__init__(**kwargs)
        self.checks = tuple(checks)

    def execute(self, context) -> dict[str, str]:
        from airflow.sdk.exceptions import AirflowFailException

        from framesift.config.errors import classify
        from framesift.config.schema import ConfigError
        from framesift.tracking import preflight
        from framesift_airflow.hooks import FramesiftHook

        problems: list[preflight.Problem] = []
        if TRIGGER in self.checks:
            conf = getattr(context.get("dag_run"), "conf", None) or {}
            problems += preflight.check_trigger_keys(conf, list(self.dag.params.keys()))
        try:
            hook = FramesiftHook(self.config_path)
        except ConfigError as exc:
            listed = "".join(f"\n  {p}" for p in problems)
            raise config_failure(exc, "; every run fails here until it loads" + listed) from None
        cfg = hook.config

        def guarded(key: str, check):
            try:
                return check()
            except Exception as exc:  # a missing connection, refused credentials: a problem
                kind = classify(exc)
                if not kind.permanent:
                    raise
                return [preflight.Problem(key, str(exc).splitlines()[0], kind.fix or "see the message")]

        if STORAGE in self.checks:
            problems += guarded(
                f"connection {cfg.connections.aws!r}", lambda: preflight.check_storage(hook.s3, cfg)
            )
        if MONGO in self.checks:
            problems += guarded(
                f"connection {cfg.connections.mongo!r}", lambda: preflight.check_mongo(hook.db)
            )
        if MODEL in self.checks:
            problems += guarded("inference.model_uri", lambda: preflight.check_model(hook.s3, cfg))
        if LABELING in self.checks and not dict(context["params"]).get("dry_run"):
            problems += preflight.check_labeling(hook.labeling_backend, cfg.connections.labeling)
        if problems:
            lines = "\n".join(f"  {p}" for p in problems)
            raise AirflowFailException(
                f"this run cannot work until {len(problems)} problem(s) are fixed (nothing was claimed or "
                f"changed):\n{lines}"
            )
        self.log.info("setup checked: %s", ", ".join(self.checks))
        return {"checked": ", ".join(self.checks)}
