"""A local Airflow 3 on the embedded stack, in one command (``make airflow``, i.e.
``framesift airflow up``): moto S3 + SecantusDB (:mod:`framesift.local.stack`), Label Studio
(:mod:`framesift.local.label_studio`), the connections ``aws_default``, ``mongo_default``
and ``framesift_labeling`` (as ``AIRFLOW_CONN_*`` in every component's environment), then
``airflow db migrate``, the ``gpu`` pool and the four components ``airflow standalone``
runs (api-server, scheduler, dag-processor, triggerer) in one process group of their own,
with ``AIRFLOW__CORE__EXECUTION_API_SERVER_URL`` pointing at the api-server's port (without
it every task fails on a port other than 8080). The URL and the admin login are printed;
Ctrl-C, SIGTERM or ``framesift airflow down`` (``make airflow-down``) stops everything.
S3 and MongoDB start empty each time (moto keeps S3 in memory); Airflow's DB
(``$AIRFLOW_HOME/airflow.db``) and Label Studio's projects (``var/labelstudio/airflow-data``)
stay.

The same :class:`LocalAirflow` and :func:`airflow_env` start Airflow in the end-to-end,
chaos and scale tests. No Airflow import here: the components are ``airflow`` commands.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from framesift.local.label_studio import LabelStudioService
from framesift.local.stack import (
    EmbeddedStack,
    StackInfo,
    alive,
    project_root,
    read_state,
    state_path,
    var_dir,
)

STARTUP_TIMEOUT_S = 180
POOLS = [("gpu", 1, "GPU inference slots")]
PID_NAME = "framesift-airflow.json"  # in AIRFLOW_HOME while `framesift airflow up` runs
PASSWORDS_NAME = "simple_auth_manager_passwords.json.generated"


def venv_bin() -> Path:
    return Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def airflow_home() -> Path:
    """``$AIRFLOW_HOME`` (the Makefile sets ``var/airflow``), else ``var/airflow``."""
    return Path(os.environ.get("AIRFLOW_HOME") or var_dir() / "airflow")


def airflow_env(
    home: Path,
    port: int,
    config_path: Path | str | None,
    stack: Any,
    label_studio: Any,
    *,
    base_url: bool = False,
) -> dict[str, str]:
    """The environment of every Airflow component: this repo's DAGs and plugins, the
    embedded stack (``stack.env()``), Label Studio (``label_studio.connection_env()``), a
    SQLite DB in ``home``, the execution API at ``port``. A developer's own ``AIRFLOW__*``
    settings do not leak in; ``config_path`` (or ``$FRAMESIFT_CONFIG``) is the pipeline YAML.
    ``base_url``: set ``[api] base_url`` too, so alerts carry absolute links to the run."""
    root = project_root()
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("AIRFLOW__") or k.startswith("AIRFLOW_CONN_") or k == "AIRFLOW_HOME")
    }
    env.update(stack.env())  # AIRFLOW_CONN_AWS_DEFAULT / _MONGO_DEFAULT, ClearML offline settings
    env.update(label_studio.connection_env())  # AIRFLOW_CONN_FRAMESIFT_LABELING
    env.update(
        {
            "PATH": f"{venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "HOME": str(root / "var" / "home"),
            "PYTHONPATH": f"{root / 'plugins'}{os.pathsep}{root / 'include'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
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
            # so parse often: an unpause takes effect within seconds
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # standalone starts log servers on fixed ports (8793/8794): move them off
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        }
    )
    if base_url:
        env["AIRFLOW__API__BASE_URL"] = f"http://127.0.0.1:{port}"
    if config_path:
        env["FRAMESIFT_CONFIG"] = str(config_path)
    env.setdefault("TMPDIR", str(root / "var" / "tmp"))
    env.setdefault("YOLO_CONFIG_DIR", str(root / "var" / "ultralytics"))
    env.setdefault("MPLCONFIGDIR", str(root / "var" / "matplotlib"))
    env["YOLO_OFFLINE"] = "1"
    Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
    return env


def _n_env_words(words: list[str]) -> int:
    n = 0
    while n < len(words) and "=" in words[n] and not words[n].startswith("-"):
        n += 1
    return n


def _env_words(cmd: str) -> str:
    words = cmd.split()[: _n_env_words(cmd.split())]
    return "env " + " ".join(shlex.quote(w) for w in words) + " " if words else ""


def _command_words(cmd: str) -> str:
    words = cmd.split()
    return " ".join(words[_n_env_words(words) :])


# what `airflow standalone` runs, minus its log servers (they bind every interface on fixed
# ports; the logs are local files the api-server reads anyway)
COMPONENTS = {
    "api-server": "api-server",
    "scheduler": "scheduler --skip-serve-logs",
    "dag-processor": "dag-processor",
    "triggerer": "triggerer --skip-serve-logs",
}


class LocalAirflow:
    """Airflow's components in a process group of their own, and a JWT-authenticated
    client (``client``, on ``/api/v2``) once started."""

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
        self.home = Path(home)
        # marks every process of this start (not a CLI call that merely shares AIRFLOW_HOME)
        self.marker = f"FRAMESIFT_AIRFLOW_RUN={secrets.token_hex(8)}"
        self.env = {**env, "FRAMESIFT_AIRFLOW_RUN": self.marker.split("=", 1)[1]}
        self.port = port
        self.components = components
        self.pools = pools
        self.base = f"http://127.0.0.1:{port}"
        self.launcher: subprocess.Popen | None = None
        self.pgid: int | None = None
        self.client = None
        self.password: str | None = None
        self.startup_s: float | None = None
        self.migrate_s: float | None = None

    # --- process -------------------------------------------------------------------

    def _airflow(self, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(venv_bin() / "airflow"), *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, standalone: bool = False, die_with: int | None = None) -> None:
        """``die_with``: a pid; when that process is gone (even killed with SIGKILL), the
        components are stopped too, so a lost ``framesift airflow up`` leaves nothing behind."""
        self.home.mkdir(parents=True, exist_ok=True)
        t_migrate = time.monotonic()
        migrate = self._airflow("db", "migrate")
        if migrate.returncode != 0:
            raise RuntimeError(
                "airflow db migrate failed:\n" + migrate.stdout[-3000:] + migrate.stderr[-3000:]
            )
        # the pools the DAGs use, as airflow-init does in docker-compose.yaml
        for pool, slots, what in self.pools:
            made = self._airflow("pools", "set", pool, str(slots), what, timeout=120)
            if made.returncode != 0:
                raise RuntimeError(
                    f"airflow pools set {pool} failed:\n{made.stdout[-2000:]}{made.stderr[-2000:]}"
                )
        self.migrate_s = time.monotonic() - t_migrate
        t0 = time.monotonic()
        airflow = shlex.quote(str(venv_bin() / "airflow"))
        commands = self.components or ({"standalone": "standalone"} if standalone else COMPONENTS)
        # one launcher under setsid: every component and all their children share a session
        # and process group of their own, so stop() ends them all and nothing survives; the
        # launcher exits as soon as any component does
        script = "".join(
            f"{_env_words(cmd)}{airflow} {_command_words(cmd)} > {shlex.quote(name)}.log 2>&1 &\n"
            for name, cmd in commands.items()
        )
        if die_with:
            script += f"(while kill -0 {int(die_with)} 2>/dev/null; do sleep 2; done; kill -TERM 0) &\n"
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
                raise RuntimeError(f"an Airflow component exited at startup\n{self.tail()}")
            try:
                health = httpx.get(f"{self.base}/api/v2/monitor/health", timeout=5).json()
                last = health
                if all((health.get(c) or {}).get("status") == "healthy" for c in components):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        raise RuntimeError(f"Airflow not healthy after {STARTUP_TIMEOUT_S} s: {last}\n{self.tail()}")

    def _login(self) -> None:
        """JWT from POST /auth/token with the admin password the simple auth manager generated."""
        import httpx

        password_file = self.home / PASSWORDS_NAME
        deadline = time.monotonic() + 30
        while not (password_file.exists() and password_file.read_text().strip()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{password_file} was not written\n{self.tail()}")
            time.sleep(0.5)
        self.password = json.loads(password_file.read_text())["admin"]
        resp = httpx.post(
            f"{self.base}/auth/token", json={"username": "admin", "password": self.password}, timeout=30
        )
        if resp.status_code != 201:
            raise RuntimeError(f"login as admin failed: {resp.status_code} {resp.text[:500]}")
        token = resp.json()["access_token"]
        self.client = httpx.Client(
            base_url=f"{self.base}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    @property
    def running(self) -> bool:
        return self.launcher is not None and self.launcher.poll() is None

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
        # anything that left the group but still carries our marker was started by us
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
        marker = self.marker.encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if marker in (entry / "environ").read_bytes().split(b"\0"):
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

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


# --------------------------------------------------------------------- the command


def up(port: int = 8080, config_path: str | None = None, out=print) -> int:
    """Start the stack, Label Studio and Airflow; print where they are; wait for Ctrl-C,
    SIGTERM or ``down()``; stop everything. Returns the exit code."""
    home = airflow_home()
    home.mkdir(parents=True, exist_ok=True)
    pid_file = home / PID_NAME
    if (running := read_pid_file(home)) is not None:
        out(
            f"a local Airflow runs already (pid {running['pid']}, {running['url']}); stop it: make airflow-down"
        )
        return 1
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    config_path = config_path or os.environ.get("FRAMESIFT_CONFIG")
    out("starting the embedded stack (S3, MongoDB) and Label Studio ...")
    # moto keeps S3 in memory: start MongoDB empty too, so the registry never names videos
    # and frames that are gone (Label Studio's projects stay, under var/labelstudio)
    shutil.rmtree(var_dir() / "airflow-stack", ignore_errors=True)
    with (
        EmbeddedStack(var_dir() / "airflow-stack") as stack,
        LabelStudioService(data_dir=var_dir() / "labelstudio" / "airflow-data", from_template=True) as ls,
    ):
        env = airflow_env(home, port, config_path, stack, ls, base_url=True)
        # published like `framesift stack up`'s, so `make env` and the CLI (framesift status,
        # videos ...) in another shell reach this stack (unless one of those runs already)
        published = publish_stack(stack)
        af = LocalAirflow(home, env, port)
        out(f"starting Airflow in {home} (api-server, scheduler, dag-processor, triggerer) ...")
        try:
            af.start(die_with=os.getpid())
            pid_file.write_text(json.dumps({"pid": os.getpid(), "url": af.base}))
            out(
                "\n".join(
                    [
                        "",
                        f"Airflow       {af.base}   login: admin / {af.password}",
                        f"Label Studio  {ls.url}   login: {ls.username} / {ls.password}",
                        f"S3 (moto)     {stack.s3_endpoint}   bucket {stack.bucket}, uploads under videos/",
                        f"MongoDB       {stack.mongo_uri}",
                        "connections   aws_default, mongo_default, framesift_labeling (in the components' env)",
                        f"logs          {home}/*.log",
                        "stop          Ctrl-C here, or: make airflow-down",
                    ]
                )
            )
            while not stopping and af.running:
                time.sleep(0.5)
            if not stopping:
                out(f"an Airflow component exited:\n{af.tail(20)}")
        finally:
            out("stopping Airflow, Label Studio and the stack ...")
            t_stop = time.monotonic()
            survivors = af.stop()
            out(f"Airflow stopped in {time.monotonic() - t_stop:.0f} s")
            pid_file.unlink(missing_ok=True)
            if published:
                state_path().unlink(missing_ok=True)
            if survivors:
                out(f"killed leftover processes {survivors}")
    out("stopped")
    return 0 if stopping else 1


def publish_stack(info: StackInfo) -> bool:
    """Write the stack's state file unless a `framesift stack up` stack runs; True if written."""
    if read_state() is not None:
        return False
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2))
    tmp.replace(path)
    return True


def read_pid_file(home: Path | None = None) -> dict[str, Any] | None:
    """The running ``framesift airflow up`` of this AIRFLOW_HOME, or None."""
    path = (home or airflow_home()) / PID_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and alive(int(data.get("pid", 0))) else None


def down(timeout_s: float = 180.0) -> bool:
    """Stop a running ``framesift airflow up`` (as Ctrl-C would); False when none runs."""
    running = read_pid_file()
    if running is None:
        return False
    pid = int(running["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):  # a zombie (exited, not yet reaped by its parent) is gone
            return True
        time.sleep(0.5)
    raise TimeoutError(f"framesift airflow up (pid {pid}) did not stop in {timeout_s:.0f} s")
