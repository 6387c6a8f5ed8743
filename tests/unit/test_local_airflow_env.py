"""`make env` gives a shell everything the Makefile sets, and the local Airflow's
components get the settings only the e2e test used to know (issue #17, point 6)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from framesift.local.airflow import airflow_env
from framesift.local.stack import project_root

ROOT = project_root()


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_env_prints_every_export_of_the_makefile():
    exported = re.findall(r"^export ([A-Z_0-9]+) :=", (ROOT / "Makefile").read_text(), re.M)
    assert {
        "AIRFLOW_HOME",
        "AIRFLOW__CORE__DAGS_FOLDER",
        "AIRFLOW__CORE__PLUGINS_FOLDER",
        "PYTHONPATH",
    } <= set(exported)
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(ROOT), "print-env"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    printed = dict(re.findall(r"^(?:# )?export ([A-Z_0-9]+)='([^']*)'", out, re.M))
    assert set(exported) <= set(printed), set(exported) - set(printed)
    assert printed["AIRFLOW_HOME"] == str(ROOT / "var" / "airflow")
    assert printed["PYTHONPATH"] == f"{ROOT / 'plugins'}:{ROOT / 'include'}"
    assert printed["AIRFLOW__CORE__DAGS_FOLDER"] == str(ROOT / "dags")
    assert "# export HOME=" in out  # a shell keeps its own ~
    assert re.search(r"^export PATH='[^']*/\.venv/bin':\"\$PATH\"$", out, re.M)


class _Stack:
    def env(self):
        return {
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws"}),
            "FRAMESIFT_MONGO_URI": "mongodb://x",
        }


class _LabelStudio:
    def connection_env(self):
        return {"AIRFLOW_CONN_FRAMESIFT_LABELING": json.dumps({"conn_type": "http"})}


def test_components_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")  # a developer's own: must not leak
    monkeypatch.setenv("AIRFLOW_CONN_SOMETHING", "x")
    env = airflow_env(tmp_path, 8123, "/cfg.yaml", _Stack(), _LabelStudio())
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8123/execution/"
    assert env["AIRFLOW__API__PORT"] == "8123" and env["AIRFLOW_HOME"] == str(tmp_path)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path}/airflow.db"
    assert (
        env["PYTHONPATH"] == f"{ROOT / 'plugins'}:{ROOT / 'include'}"
        and env["FRAMESIFT_CONFIG"] == "/cfg.yaml"
    )
    assert {"AIRFLOW_CONN_AWS_DEFAULT", "AIRFLOW_CONN_FRAMESIFT_LABELING"} <= set(env)
    assert "AIRFLOW__CORE__EXECUTOR" not in env and "AIRFLOW_CONN_SOMETHING" not in env
    assert "AIRFLOW__API__BASE_URL" not in env
    assert airflow_env(tmp_path, 8123, None, _Stack(), _LabelStudio(), base_url=True)[
        "AIRFLOW__API__BASE_URL"
    ] == ("http://127.0.0.1:8123")
