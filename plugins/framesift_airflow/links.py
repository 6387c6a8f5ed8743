"""Operator extra links: from a task in the Airflow UI to the ClearML run, the labeling
project, the selection report and the drift report. The URL is stored in XCom by the task
that knows it."""

from __future__ import annotations

from typing import ClassVar

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom


class XComUrlLink(BaseOperatorLink):
    """A link whose URL a task pushed to XCom under ``key``; empty until then."""

    name: ClassVar[str]
    key: ClassVar[str]

    def get_link(self, operator, *, ti_key) -> str:
        value = XCom.get_value(key=self.key, ti_key=ti_key)
        return value if isinstance(value, str) else ""

    @classmethod
    def persist(cls, context, url: str | None) -> None:
        if url:
            context["ti"].xcom_push(key=cls.key, value=url)


class ClearMLRunLink(XComUrlLink):
    name = "ClearML run"
    key = "clearml_url"


class LabelingProjectLink(XComUrlLink):
    name = "Labeling project"
    key = "labeling_url"


class SelectionReportLink(XComUrlLink):
    name = "Selection report"
    key = "selection_report_url"


class DriftReportLink(XComUrlLink):
    name = "Drift report"
    key = "drift_report_url"
