"""Registers framesift's operator extra links and its pages on the api-server (``/framesift``:
reports and ClearML sessions that open from the UI; see ``pages``) with Airflow."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from framesift_airflow.links import ClearMLRunLink, DriftReportLink, LabelingProjectLink, SelectionReportLink
from framesift_airflow.pages import app
from framesift_airflow.urls import PREFIX


class FramesiftPlugin(AirflowPlugin):
    name = "framesift"
    operator_extra_links = [ClearMLRunLink(), LabelingProjectLink(), SelectionReportLink(), DriftReportLink()]
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "framesift pages"}]
