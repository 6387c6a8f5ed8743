"""End to end through Airflow's REST API, the way a user runs it.

Airflow 3 starts on loopback in its own AIRFLOW_HOME under the pytest tmp dir (DB migrated
first; LocalExecutor, SQLite): api-server, scheduler, dag-processor and triggerer as four
processes in one process group (what `airflow standalone` runs; FRAMESIFT_E2E_STANDALONE=1
runs `airflow standalone` itself), pointed at this repo's dags/ and plugins/ and at the
embedded stack (moto S3 + SecantusDB). The test logs in (JWT from POST /auth/token) with
the admin password that the simple auth manager writes to AIRFLOW_HOME, unpauses
`framesift_ingest` through the API, uploads a video, and waits for the prefix-listing
AssetWatcher (NewVideosTrigger) to trigger a run. Then it checks Mongo, S3, the mapped
task instances' names (the video key) and the summary task's "ClearML run" link.

Timings (startup, upload to success) are printed; run with `-s` to see them.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import yaml

from framesift.config.loading import load_config
from framesift.io import layout
from framesift.io.s3 import list_objects, upload
from framesift.local.stack import project_root
from framesift.local.synth import make_video

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = project_root()
VENV_BIN = Path(sys.executable).parent
DAG_ID = "framesift_ingest"
STARTUP_TIMEOUT_S = 180
RUN_TIMEOUT_S = 240
POOLS = [("gpu", 1, "GPU inference slots")]
# FRAMESIFT_E2E_STANDALONE=1: one `airflow standalone` instead of the four components
STANDALONE = os.environ.get("FRAMESIFT_E2E_STANDALONE", "") not in ("", "0", "false", "False")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env_words(cmd: str) -> str:
    words = cmd.split()[: _n_env_words(cmd.split())]
    return "env " + " ".join(shlex.quote(w) for w in words) + " " if words else ""


def _command_words(cmd: str) -> str:
    words = cmd.split()
    return " ".join(words[_n_env_words(words) :])


def _n_env_words(words: list[str]) -> int:
    n = 0
    while n < len(words) and "=" in words[n] and not words[n].startswith("-"):
        n += 1
    return n


class Airflow:
    """Airflow's components in a process group of their own, and a JWT-authenticated client."""

    def __init__(
        self,
        home: Path,
        env: dict[str, str],
        port: int,
        components: dict[str, str] | None = None,
        pools: list[tuple[str, int, str]] = POOLS,
    ):
        """``components``: log name -> command line after ``airflow`` (default: the four of
        `airflow standalone`); a command may start with VAR=value words of its own."""
        self.home = home
        self.env = env
        self.port = port
        self.components = components
        self.pools = pools
        self.base = f"http://127.0.0.1:{port}"
        self.launcher: subprocess.Popen | None = None
        self.pgid: int | None = None
        self.client = None
        self.startup_s: float | None = None
        self.migrate_s: float | None = None

    # --- process -------------------------------------------------------------------
    def start(self) -> None:
        t_migrate = time.monotonic()
        migrate = subprocess.run(
            [str(VENV_BIN / "airflow"), "db", "migrate"],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert migrate.returncode == 0, (
            "airflow db migrate failed:\n" + migrate.stdout[-3000:] + migrate.stderr[-3000:]
        )
        # the pools the DAGs use, as airflow-init does in docker-compose.yaml
        for pool, slots, what in self.pools:
            made = subprocess.run(
                [str(VENV_BIN / "airflow"), "pools", "set", pool, str(slots), what],
                env=self.env,
                cwd=self.home,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
        self.migrate_s = time.monotonic() - t_migrate
        t0 = time.monotonic()
        airflow = shlex.quote(str(VENV_BIN / "airflow"))
        if self.components:
            commands = self.components
        elif STANDALONE:
            commands = {"standalone": "standalone"}
        else:
            # what `airflow standalone` runs, minus its log servers (they bind every interface
            # on fixed ports; the logs are local files the api-server reads anyway)
            commands = {
                "api-server": "api-server",
                "scheduler": "scheduler --skip-serve-logs",
                "dag-processor": "dag-processor",
                "triggerer": "triggerer --skip-serve-logs",
            }
        # one launcher under setsid: every component and all their children share a session
        # and process group of their own, so stop() ends them all and nothing survives; the
        # launcher exits as soon as any component does
        script = "".join(
            f"{_env_words(cmd)}{airflow} {_command_words(cmd)} > {shlex.quote(name)}.log 2>&1 &\n"
            for name, cmd in commands.items()
        )
        self.launcher = subprocess.Popen(
            ["setsid", "bash", "-c", script + "wait -n\n"],
            env=self.env,
            cwd=self.home,
            stdin=subprocess.DEVNULL,
        )
        self.pgid = self.launcher.pid  # not a group leader when exec'd, so setsid does not fork
        self._wait_healthy(t0)
        self.startup_s = time.monotonic() - t0
        self._login()

    def _wait_healthy(self, t0: float) -> None:
        import httpx

        components = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        last = None
        while time.monotonic() - t0 < STARTUP_TIMEOUT_S:
            if self.launcher.poll() is not None:
                raise AssertionError(f"an Airflow component exited at startup\n{self.tail()}")
            try:
                health = httpx.get(f"{self.base}/api/v2/monitor/health", timeout=5).json()
                last = health
                if all((health.get(c) or {}).get("status") == "healthy" for c in components):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        raise AssertionError(f"Airflow not healthy after {STARTUP_TIMEOUT_S} s: {last}\n{self.tail()}")

    def _login(self) -> None:
        """JWT from POST /auth/token with the admin password the simple auth manager generated."""
        import httpx

        password_file = self.home / "simple_auth_manager_passwords.json.generated"
        deadline = time.monotonic() + 30
        while not (password_file.exists() and password_file.read_text().strip()):
            assert time.monotonic() < deadline, f"{password_file} was not written\n{self.tail()}"
            time.sleep(0.5)
        password = json.loads(password_file.read_text())["admin"]
        resp = httpx.post(
            f"{self.base}/auth/token", json={"username": "admin", "password": password}, timeout=30
        )
        assert resp.status_code == 201, (resp.status_code, resp.text)
        token = resp.json()["access_token"]
        self.client = httpx.Client(
            base_url=f"{self.base}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def stop(self) -> list[int]:
        """SIGTERM the process group, then SIGKILL; return pids of ours that survived."""
        if self.client is not None:
            self.client.close()
        if self.pgid is None:
            return []
        for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self._in_group(self.pgid):
                time.sleep(0.5)
            if not self._in_group(self.pgid):
                break
        if self.launcher.poll() is None:
            self.launcher.wait(timeout=5)
        # anything that left the group but still runs with our AIRFLOW_HOME was started by us
        leftovers = self._ours()
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return leftovers

    @staticmethod
    def _in_group(pgid: int) -> bool:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(stat[2]) == pgid and stat[0] != "Z":
                    return True
        return False

    def _ours(self) -> list[int]:
        marker = f"AIRFLOW_HOME={self.home}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if marker in (entry / "environ").read_bytes().split(b"\0"):
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

    # --- diagnostics -----------------------------------------------------------------
    def tail(self, n: int = 60, components: tuple[str, ...] = ()) -> str:
        """Last lines of the components' output (standalone prefixes its lines with the name)."""
        out = []
        for path in sorted(self.home.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()
            name = path.stem
            if name == "standalone":
                if components:
                    lines = [ln for ln in lines if ln.split("|", 1)[0].strip() in components]
            elif components and name not in components:
                continue
            out += [f"--- {path.name} (last lines) ---", *lines[-n:]]
        return "\n".join(out) or "(no logs)"

    def debug_report(self, run_id: str | None = None) -> str:
        parts = [self.tail(40, ("scheduler", "triggerer", "dag-processor"))]
        triggerer_logs = sorted((self.home / "logs").rglob("*trigger*"))
        for path in triggerer_logs[-2:]:
            if path.is_file():
                parts += [f"--- {path} ---", "\n".join(path.read_text(errors="replace").splitlines()[-30:])]
        if self.client is not None:
            try:
                errors = self.client.get("/importErrors").json()
                parts += ["--- import errors ---", json.dumps(errors, indent=1)[-3000:]]
                if run_id:
                    tis = self.task_instances(run_id)
                    parts += ["--- task instances ---"]
                    for ti in tis:
                        parts.append(
                            f"{ti['task_id']}[{ti['map_index']}] {ti['state']} {ti['rendered_map_index']}"
                        )
                        if ti["state"] in ("failed", "up_for_retry", "upstream_failed"):
                            parts.append(self.task_log(run_id, ti)[-3000:])
            except Exception as exc:  # diagnostics must not hide the real failure
                parts.append(f"(could not query the API: {exc})")
        return "\n".join(parts)

    # --- API helpers -------------------------------------------------------------------
    def task_instances(self, run_id: str) -> list[dict]:
        resp = self.client.get(f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances")
        resp.raise_for_status()
        return resp.json()["task_instances"]

    def task_log(self, run_id: str, ti: dict) -> str:
        resp = self.client.get(
            f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{ti['task_id']}/logs/{max(ti['try_number'], 1)}",
            params={"map_index": ti["map_index"], "full_content": True},
            headers={"Accept": "text/plain"},
        )
        return resp.text


@pytest.fixture(scope="module")
def e2e_config(stack, tmp_path_factory):
    """A pipeline config of its own (prefixes, database) with a fast-polling watcher."""
    tag = uuid.uuid4().hex[:8]
    path = tmp_path_factory.mktemp("e2e-config") / "framesift.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "storage": {
                    "bucket": stack.bucket,
                    "videos_prefix": f"e2e-{tag}/videos/",
                    "output_prefix": f"e2e-{tag}/out/",
                },
                "mongo": {"database": f"e2e_{tag}"},
                # uploads only: no cron run racing the asset-triggered one
                "discovery": {"poll_interval_s": 2, "drain_cron": None},
                "inference": {"imgsz": 320, "batch_size": 8},  # CPU here: small and quick
            }
        )
    )
    return path, load_config(path)


def airflow_env(home: Path, port: int, config_path: Path, stack, label_studio) -> dict[str, str]:
    """The environment of every Airflow component: this repo's DAGs, the embedded stack,
    Label Studio, a SQLite DB in ``home`` (override AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)."""
    env = {
        k: v
        for k, v in os.environ.items()
        # a developer's own Airflow settings must not leak in (its DB, executor, auth, ...)
        if not (k.startswith("AIRFLOW__") or k.startswith("AIRFLOW_CONN_") or k == "AIRFLOW_HOME")
    }
    env.update(stack.env())  # AIRFLOW_CONN_AWS_DEFAULT / _MONGO_DEFAULT, ClearML offline settings
    env.update(label_studio.connection_env())  # AIRFLOW_CONN_FRAMESIFT_LABELING
    env.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "HOME": str(ROOT / "var" / "home"),
            "PYTHONPATH": f"{ROOT / 'plugins'}{os.pathsep}{ROOT / 'include'}",
            "FRAMESIFT_CONFIG": str(config_path),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__EXPOSE_CONFIG": "False",
            # every component signs and checks task tokens with the same key
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            # watchers of a DAG are registered when its file is parsed while it is unpaused,
            # so parse often: the unpause below takes effect within seconds
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # standalone starts log servers on fixed ports (8793/8794): move them off
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
        }
    )
    env.setdefault("TMPDIR", str(ROOT / "var" / "tmp"))
    env.setdefault("YOLO_CONFIG_DIR", str(ROOT / "var" / "ultralytics"))
    env.setdefault("MPLCONFIGDIR", str(ROOT / "var" / "matplotlib"))
    env["YOLO_OFFLINE"] = "1"
    Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
    return env


@pytest.fixture(scope="module")
def airflow(stack, label_studio, e2e_config, tmp_path_factory):
    config_path, _ = e2e_config
    home = tmp_path_factory.mktemp("airflow-home")
    port = _free_port()
    env = airflow_env(home, port, config_path, stack, label_studio)
    af = Airflow(home, env, port)
    try:
        af.start()
        what = "airflow standalone" if STANDALONE else "airflow api-server/scheduler/dag-processor/triggerer"
        print(
            f"\n[e2e] airflow db migrate {af.migrate_s:.1f} s; {what} healthy {af.startup_s:.1f} s later"
            f" (port {port}, home {home})"
        )
        yield af
    except BaseException:
        print(af.debug_report())
        raise
    finally:
        survivors = af.stop()
        assert not survivors, f"processes survived stopping Airflow: {survivors}"


def test_upload_triggers_asset_run_visible_through_rest_api(
    airflow, label_studio, e2e_config, s3, mongo, tmp_path
):
    _, cfg = e2e_config
    api = airflow.client
    run_id = None
    try:
        # the DAG is parsed and known to the API
        deadline = time.monotonic() + 120
        while (resp := api.get(f"/dags/{DAG_ID}")).status_code == 404:
            assert time.monotonic() < deadline, f"{DAG_ID} never showed up: {api.get('/importErrors').json()}"
            time.sleep(1)
        resp.raise_for_status()
        assert resp.json()["is_paused"] is True  # paused at creation, as in production

        resp = api.patch(f"/dags/{DAG_ID}", json={"is_paused": False})
        resp.raise_for_status()
        assert resp.json()["is_paused"] is False

        key = cfg.storage.videos_prefix + "street cam (1).mp4"
        video = make_video(tmp_path / "clip.mp4", seconds=3, fps=10, seed=7)
        t_upload = time.monotonic()
        upload(s3, video, cfg.storage.bucket, key)

        run = None
        deadline = t_upload + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            resp = api.get(f"/dags/{DAG_ID}/dagRuns", params={"order_by": "-start_date"})
            resp.raise_for_status()
            runs = resp.json()["dag_runs"]
            failed = [r for r in runs if r["state"] == "failed"]
            if failed:
                run_id = failed[0]["dag_run_id"]
            assert not failed, f"a run failed: {failed}"
            done = [r for r in runs if r["state"] == "success"]
            if done:
                run = done[0]
                break
            if runs:
                run_id = runs[0]["dag_run_id"]
            time.sleep(2)
        assert run, f"no successful run {RUN_TIMEOUT_S} s after the upload; runs: {runs}"
        run_id = run["dag_run_id"]
        took = time.monotonic() - t_upload
        print(f"[e2e] upload -> run {run_id} succeeded in {took:.1f} s")
        assert run["run_type"] == "asset_triggered", run

        # Mongo: the upload registered, went through extraction (and any later stage) without
        # failing, and the run was recorded
        db = mongo[cfg.mongo.database]
        doc = db.videos.find_one({"key": key})
        assert doc and doc["status"] not in ("discovered", "extracting", "quarantined", "failed"), doc
        assert "extracted" in [h["status"] for h in doc["history"]], doc["history"]
        assert {h["run_id"] for h in doc["history"]} == {run_id}
        assert doc["frames"]["frames_written"] == 3  # 3 s at 1 fps
        # the labeling platform: the video's selected frames are a task in Label Studio
        assert doc["status"] == "pushed", doc
        (rec,) = db.labeling_queue.find({"video_id": doc["_id"]})
        assert rec["state"] == "pushed" and rec["Labeling status"] == "In queue"
        task = requests.get(
            f"{label_studio.url}/api/tasks/{rec['backend_ids'][0]}",
            headers={"Authorization": f"Token {label_studio.token}"},
            timeout=30,
        ).json()
        assert len(task["data"]["images"]) == len(doc["selected_frames"]) == rec["n_frames"] >= 1
        run_doc = db.runs.find_one({"_id": f"{DAG_ID}/{run_id}"})
        assert run_doc and run_doc["summary"]["videos"] == 1, run_doc

        # S3: the frames, named like Lightly (later stages add their own files beside them)
        frames_prefix = layout.frames_prefix(cfg, doc["_id"]) + "/"
        frames = sorted(
            o.key[len(frames_prefix) :]
            for o in list_objects(s3, cfg.storage.out_bucket, frames_prefix)
            if o.key.endswith(".png") and "/" not in o.key[len(frames_prefix) :]
        )
        assert frames == ["street_cam_1-00-mp4.png", "street_cam_1-10-mp4.png", "street_cam_1-20-mp4.png"]

        # every per-video (mapped) task instance is named by the video key in the UI
        tis = airflow.task_instances(run_id)
        mapped = {ti["task_id"]: ti for ti in tis if ti["map_index"] >= 0}
        assert "extract_frames" in mapped, tis
        for ti in mapped.values():
            assert (ti["map_index"], ti["rendered_map_index"], ti["state"]) == (0, key, "success"), ti
        assert len([ti for ti in tis if ti["map_index"] >= 0]) == len(mapped)  # one video, one each
        print(f"[e2e] task instances: {sorted((ti['task_id'], ti['state']) for ti in tis)}")

        # the summary task's extra link resolves to the run's ClearML task
        resp = api.get(f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/summary/links")
        resp.raise_for_status()
        links = resp.json()["extra_links"]
        assert links.get("ClearML run") == run_doc["clearml"]["url"], links
        assert links["ClearML run"].startswith("file://") and links["ClearML run"].endswith(".zip")
    except BaseException:
        # what the scheduler, triggerer and dag-processor said last, import errors, the
        # task instances and the logs of failed ones
        print(airflow.debug_report(run_id))
        raise
