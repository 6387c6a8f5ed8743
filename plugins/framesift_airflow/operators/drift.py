"""Operators of the drift monitor: signals, the run record, incidents, alert delivery, and
drifted frames to labeling.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from framesift_airflow.links import ClearMLRunLink, DriftReportLink
from framesift_airflow.operators.base import ConfigOperator, attempt_of, framesift_hook
from framesift_airflow.urls import airflow_run_url, page_url, s3_link


def _report_uri(cfg, run_id: str) -> str:
    from framesift.io.s3 import join_key, s3_uri

    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    return s3_uri(
        cfg.storage.out_bucket, join_key(cfg.storage.output_prefix, "drift", "reports", f"{safe}.json")
    )


def _read_report(hook, uri: str) -> dict[str, Any]:
    from framesift.io.s3 import get_json, parse_s3_uri

    return get_json(hook.s3, *parse_s3_uri(uri))


class DriftSignalsOperator(ConfigOperator):
    """Compute every drift signal of the recent window(s) against the reference; write the
    report to S3, as JSON and as a page for on-call (HTML, link: *Drift report*), and
    return their URIs with the level of each source."""

    ui_color = "#fdf8e8"
    operator_extra_links = (DriftReportLink(),)

    def execute(self, context) -> dict[str, Any]:
        from framesift.drift.monitor import compute, format_report
        from framesift.drift.report import publish
        from framesift.io.s3 import parse_s3_uri, put_json

        hook = framesift_hook(self.config_path)
        report = compute(hook.s3, hook.db, hook.config)
        report["run_id"] = run_id = context["run_id"]
        uri = _report_uri(hook.config, run_id)
        put_json(hook.s3, *parse_s3_uri(uri), report)
        self.log.info("drift report %s\n%s", uri, format_report(report))
        links = {"Airflow run": airflow_run_url(context["dag"].dag_id, run_id)}
        try:
            page = publish(hook.s3, hook.db, hook.config, report, uri, links=links)
        except Exception as exc:  # noqa: BLE001 - the page must not stop the alerting; they link the JSON
            self.log.warning("could not write the drift report's page (%s: %s)", type(exc).__name__, exc)
            page = None
        if page:
            DriftReportLink.persist(context, s3_link(hook.s3, page))
            self.log.info("drift report page %s", page)
        return {
            "report_uri": uri,
            "report_html_uri": page,
            "levels": {w["source"]: w["level"] for w in report["windows"]},
        }


class DriftReportOperator(ConfigOperator):
    """Base of the stages that take the signals task's result (``{"report_uri", "levels"}``)."""

    template_fields: Sequence[str] = ("signals",)

    def __init__(self, *, signals: Any, **kwargs) -> None:
        super().__init__(**kwargs)
        self.signals = signals


class DriftRunRecordOperator(DriftReportOperator):
    """A ClearML task with the drift plots (link: *ClearML run*) and a ``runs`` record."""

    operator_extra_links = (ClearMLRunLink(),)

    def execute(self, context) -> dict[str, Any]:
        from framesift.drift.monitor import run_spec
        from framesift.tracking import runs
        from framesift.tracking.clearml import record_run

        hook = framesift_hook(self.config_path)
        report = _read_report(hook, self.signals["report_uri"])
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        spec = run_spec(hook.config, report, dag_id=dag_id, run_id=run_id)
        spec.previous = runs.previous_tracked(hook.db, dag_id, run_id)  # one task per run
        try:
            tracked = record_run(spec)
        except Exception as exc:  # tracking must not stop the alerting
            self.log.warning(
                "could not record the ClearML run (%s); alerts go out without the plots link", exc
            )
            tracked = None
        levels = self.signals.get("levels") or {}
        summary = {
            "sources": len(levels),
            "by_level": {lv: list(levels.values()).count(lv) for lv in set(levels.values())},
        }
        links = {
            "airflow_run": airflow_run_url(dag_id, run_id),
            "clearml_page": page_url("clearml", absolute=True, dag_id=dag_id, run_id=run_id),
        }
        runs.save_run(hook.db, dag_id=dag_id, run_id=run_id, summary=summary, tracked=tracked, links=links)
        recorded = tracked or spec.previous
        ClearMLRunLink.persist(
            context, runs.clearml_link(recorded, page_url("clearml", dag_id=dag_id, run_id=run_id))
        )
        # what alerts link: the server's task, or the served page (absolute), never a file:// path
        return {
            **self.signals,
            "clearml_url": runs.clearml_link(recorded, links["clearml_page"]),
            "clearml_zip": tracked.offline_zip if tracked else (spec.previous or {}).get("offline_zip"),
            "airflow_run_url": links["airflow_run"],
        }


class UpdateIncidentsOperator(DriftReportOperator):
    """Open, update, escalate or resolve incidents (Mongo ``alerts``); queue their alerts."""

    def execute(self, context) -> dict[str, Any]:
        from framesift.drift.incidents import update_incidents

        hook = framesift_hook(self.config_path)
        report = _read_report(hook, self.signals["report_uri"])
        changes = update_incidents(
            hook.db,
            report,
            hook.config.drift,
            run_id=context["run_id"],
            report_uri=self.signals["report_uri"],
            clearml_url=self.signals.get("clearml_url"),
            airflow_run_url=self.signals.get("airflow_run_url"),
            report_html_uri=self.signals.get("report_html_uri"),
        )
        for what, ids in changes.items():
            if ids:
                self.log.info("incidents %s: %s", what, ", ".join(ids))
        return changes


class DeliverAlertsOperator(ConfigOperator):
    """Send every pending alert of the outbox (this run's and earlier undelivered ones)
    through the configured notifiers. Fails when one could not be sent; it stays in the
    outbox and the next run sends it."""

    ui_color = "#fde8e8"

    def execute(self, context) -> dict[str, Any]:
        from framesift.drift.incidents import deliver, render_message
        from framesift_airflow.notifiers import notifier_for

        hook = framesift_hook(self.config_path)

        def openable(uri: str) -> str:  # read outside Airflow: absolute, or presigned
            return s3_link(hook.s3, uri, absolute=True)

        def render(incident, item):
            return render_message(incident, item, frame_url=openable, report_url=openable)

        def send(channel, message):
            notifier_for(channel, message).notify(context)

        ti = context["ti"]
        result = deliver(hook.db, send, render, owner=f"{ti.dag_id}/{ti.run_id}/{ti.task_id}")
        self.log.info("alerts delivered: %d, failed: %d", len(result["sent"]), len(result["failed"]))
        if result["failed"]:
            failed = "; ".join(f"{i}: {e}" for i, e in result["failed"])
            raise RuntimeError(
                f"{len(result['failed'])} alert(s) not delivered ({failed}). They stay in the outbox "
                "(Mongo alert_outbox) and the next run delivers them; check the notifier connection."
            )
        return {"sent": result["sent"]}


class DriftLabelingOperator(DriftReportOperator):
    """The most drifted frames of each alarming window to the labeling platform, as
    sequences tagged ``drift`` (exactly once per window)."""

    def execute(self, context) -> list[dict[str, Any]]:
        from framesift.drift.response import respond

        hook = framesift_hook(self.config_path)
        if not hook.config.drift.labeling.enabled:
            self.log.info("drift.labeling.enabled is false: nothing queued")
            return []
        report = _read_report(hook, self.signals["report_uri"])
        out = respond(
            hook.s3,
            hook.db,
            hook.config,
            report,
            hook.labeling_backend,
            run_id=context["run_id"],
            owner=attempt_of(context, hook.config),  # a retry never pushes beside a zombie try
        )
        for item in out:
            if item["queue_ids"]:
                self.log.info(
                    "queued %d drifted frames of %s: %s", item["frames"], item["source"], item["queue_ids"]
                )
            elif item["labeling"] == "held":
                self.log.info(
                    "%d drifted frames of %s wait for an on-call ack: framesift drift ack %s sends "
                    "them to labeling (--no-labeling drops them)",
                    item["frames"],
                    item["source"],
                    " | ".join(item["incidents"]) or "<incident>",
                )
            else:
                self.log.info(
                    "%d drifted frames of %s: %s by on-call", item["frames"], item["source"], item["labeling"]
                )
        return out
