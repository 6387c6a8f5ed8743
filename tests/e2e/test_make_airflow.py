"""`make airflow` (``framesift airflow up``) starts a local Airflow that works, and stops
cleanly (issue #17, point 6): the command prints the URL and the admin login; with them
the REST API answers, every component is healthy, the DAGs are listed without import
errors, the execution API URL points at the api-server's port and the connections are in
the components' environment; ``framesift airflow down`` stops everything, leaving no
process with that AIRFLOW_HOME. About 1.5 minutes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from framesift.local.airflow import free_port, read_pid_file
from framesift.local.stack import project_root

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def _with_airflow_home(home: Path) -> list[int]:
    marker = f"AIRFLOW_HOME={home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if stat[0] != "Z":
                        pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_make_airflow_starts_a_working_airflow_and_stops_cleanly(tmp_path):
    home = tmp_path / "airflow-home"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env["AIRFLOW_HOME"] = str(home)
    cli = [sys.executable, "-m", "framesift.cli"]
    proc = subprocess.Popen(
        [*cli, "airflow", "up", "--port", str(port)],
        env=env,
        cwd=project_root(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 400
        login = None
        while time.monotonic() < deadline and login is None:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            login = re.search(r"^Airflow\s+(http://\S+)\s+login: admin / (\S+)", line)
        assert login, "no login printed:\n" + "".join(lines)
        url, password = login.groups()
        assert url == f"http://127.0.0.1:{port}"
        rest = "".join(lines)
        for _ in range(6):  # the rest of the banner
            rest += proc.stdout.readline()
        assert "Label Studio  http://127.0.0.1:" in rest and "make airflow-down" in rest

        token = httpx.post(f"{url}/auth/token", json={"username": "admin", "password": password}, timeout=30)
        assert token.status_code == 201, token.text
        api = httpx.Client(
            base_url=f"{url}/api/v2",
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
            timeout=30,
        )
        health = api.get("/monitor/health").json()
        for component in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
            assert health[component]["status"] == "healthy", health
        deadline = time.monotonic() + 120
        while api.get("/dags/framesift_ingest").status_code == 404:
            assert time.monotonic() < deadline, api.get("/importErrors").json()
            time.sleep(2)
        assert api.get("/importErrors").json()["total_entries"] == 0
        assert api.get("/pools/gpu").status_code == 200

        # what every component runs with: the execution API on this port, the connections
        (scheduler,) = [
            p for p in _with_airflow_home(home) if b"scheduler" in Path(f"/proc/{p}/cmdline").read_bytes()
        ][:1]
        cenv = dict(
            kv.split("=", 1) for kv in Path(f"/proc/{scheduler}/environ").read_text().split("\0") if "=" in kv
        )
        assert cenv["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"http://127.0.0.1:{port}/execution/"
        for conn in (
            "AIRFLOW_CONN_AWS_DEFAULT",
            "AIRFLOW_CONN_MONGO_DEFAULT",
            "AIRFLOW_CONN_FRAMESIFT_LABELING",
        ):
            json.loads(cenv[conn])
        assert cenv["PYTHONPATH"].split(os.pathsep) == [
            str(project_root() / "plugins"),
            str(project_root() / "include"),
        ]
        assert read_pid_file(home)["url"] == url
        # another shell reaches the stack: `make env` (framesift stack env) prints its connections
        shell = subprocess.run([*cli, "stack", "env"], env=env, capture_output=True, text=True, timeout=60)
        assert shell.returncode == 0 and "export FRAMESIFT_S3_ENDPOINT_URL='http://127.0.0.1:" in shell.stdout

        # make airflow-down
        t_down = time.monotonic()
        down = subprocess.run([*cli, "airflow", "down"], env=env, capture_output=True, text=True, timeout=200)
        up_out = proc.stdout.read() if proc.wait(timeout=60) is not None else ""
        assert down.returncode == 0 and "local Airflow stopped" in down.stdout, (
            f"{time.monotonic() - t_down:.0f} s\n{down.stdout}\n{down.stderr}\n--- up:\n{up_out}"
        )
        assert proc.wait(timeout=60) == 0
        assert not _with_airflow_home(home)
        assert read_pid_file(home) is None and not (home / "framesift-airflow.json").exists()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=90)
