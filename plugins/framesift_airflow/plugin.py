"""Registers framesift's operator extra links with Airflow (the UI needs to know them)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from framesift_airflow.links import ClearMLRunLink, LabelingProjectLink, SelectionReportLink


class FramesiftPlugin(AirflowPlugin):
    name = "framesift"
    operator_extra_links = [ClearMLRunLink(), LabelingProjectLink(), SelectionReportLink()]
