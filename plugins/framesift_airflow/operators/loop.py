"""Operators of the loop: labels to training sets, review, the retrain gate, training,
evaluation, promotion and the training run's ClearML task.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.sdk.exceptions import AirflowSkipException

from framesift_airflow.operators.base import ConfigOperator, framesift_hook, work_dir


class ExportTrainingSetOperator(ConfigOperator):
    """Finished annotations -> Mongo `labels` -> a new training-set version in S3 (if any changed)."""

    ui_color = "#fdf3e8"

    def execute(self, context) -> dict[str, Any]:
        from framesift.loop.trainset import export

        hook = framesift_hook(self.config_path)
        out = export(hook.s3, hook.db, hook.config, hook.labeling_backend(), run_id=context["run_id"])
        self.log.info("export: %s", out)
        return out


class ExportResultOperator(ConfigOperator):
    """Base of the stages that take ``export_trainset``'s result (``{"version", "uri"}``)."""

    template_fields = ("export",)

    def __init__(self, *, export: Any = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.export = export


class ReviewLabelsOperator(ExportResultOperator):
    """Model-label disagreements of the new labels (-> `review_queue`), annotator quality,
    and a ClearML task with the counts."""

    ui_color = "#fdf3e8"

    def execute(self, context) -> dict[str, Any]:
        from framesift.loop.review import review_labels, run_spec
        from framesift.tracking.clearml import record_run

        hook = framesift_hook(self.config_path)
        version = (self.export or {}).get("version")
        if not version:
            raise AirflowSkipException("no new training-set version: nothing to review")
        summary = review_labels(hook.s3, hook.db, hook.config, version=version, run_id=context["run_id"])
        self.log.info("review of %s: %s", version, {k: v for k, v in summary.items() if k != "annotators"})
        spec = run_spec(hook.config, summary, version=version, run_id=context["run_id"])
        summary["clearml"] = record_run(spec).url
        return summary


class PublishLabelsOperator(ExportResultOperator):
    """Emits the `framesift/labels` asset (its outlet) when a new training-set version was
    written; skipped otherwise, so no retrain run is scheduled for nothing."""

    def execute(self, context) -> dict[str, Any]:
        export = self.export or {}
        if not export.get("version"):
            raise AirflowSkipException("no new labels")
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = {"version": export["version"], "uri": export["uri"]}
        return {"version": export["version"], "uri": export["uri"]}


class RetrainGateOperator(ShortCircuitOperator):
    """The stopping criteria: writes the `decisions` document; continue lets the rest of the
    DAG run, hold and stop skip it (the gate itself succeeds, its log shows the decision)."""

    ui_color = "#f0e8fd"

    def __init__(self, *, config_path: str | None = None, **kwargs) -> None:
        super().__init__(python_callable=self._decide, ignore_downstream_trigger_rules=True, **kwargs)
        self.config_path = config_path

    def _decide(self, **context) -> bool:
        from framesift.loop.gate import CONTINUE, format_decision, gate

        hook = framesift_hook(self.config_path)
        decision = gate(hook.s3, hook.db, hook.config, run_id=context["run_id"])
        self.log.info("%s", format_decision(decision))
        context["ti"].xcom_push(key="decision", value={"id": decision["_id"], "outcome": decision["outcome"]})
        return decision["outcome"] == CONTINUE


class TrainOperator(ConfigOperator):
    """Train on the latest training-set version; a failure is recorded and the champion stays."""

    ui_color = "#e8fde9"

    def execute(self, context) -> dict[str, Any]:
        from framesift.loop.training import train_model

        hook = framesift_hook(self.config_path)
        doc = train_model(
            hook.s3, hook.db, hook.config, run_id=context["run_id"], work_dir=work_dir("training")
        )
        return {"model_id": doc["_id"], "uri": doc["uri"], "trainset_version": doc["trainset_version"]}


class ModelOperator(ConfigOperator):
    """Base of the stages that take the trained model (``{"model_id", ...}``) from XCom."""

    template_fields = ("model",)

    def __init__(self, *, model: Any = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model


class EvaluateOperator(ModelOperator):
    """The new model on the fixed test set (and its training frames)."""

    ui_color = "#e8fde9"

    def execute(self, context) -> dict[str, Any]:
        from framesift.loop.training import evaluate_model

        hook = framesift_hook(self.config_path)
        out = evaluate_model(
            hook.s3, hook.db, hook.config, self.model["model_id"], work_dir=work_dir("training")
        )
        self.log.info("test metrics (%s): %s", out["test_set_version"], out["metrics"])
        return {"model_id": self.model["model_id"], **out}


class PromoteOperator(ModelOperator):
    """Champion only if better by the margin; then the criteria again on the new numbers."""

    ui_color = "#e8fde9"

    def execute(self, context) -> dict[str, Any]:
        from framesift.loop.gate import format_decision, gate
        from framesift.loop.training import promote

        hook = framesift_hook(self.config_path)
        result = promote(
            hook.s3,
            hook.db,
            hook.config,
            self.model["model_id"],
            work_dir=work_dir("training"),
            run_id=context["run_id"],
        )
        self.log.info("promotion: %s", result["reason"])
        after = gate(hook.s3, hook.db, hook.config, run_id=context["run_id"], kind="after_evaluation")
        self.log.info("%s", format_decision(after))
        return {**result, "decision_after": after["outcome"], "decision_id": after["_id"]}


class RecordTrainingRunOperator(ConfigOperator):
    """One ClearML training task per retrain run, whatever happened to the training."""

    def execute(self, context) -> dict[str, Any]:
        from framesift.loop.training import run_spec
        from framesift.tracking.clearml import record_run

        hook = framesift_hook(self.config_path)
        tracked = record_run(run_spec(hook.db, hook.config, context["run_id"]))
        return {"task_id": tracked.task_id, "url": tracked.url}
