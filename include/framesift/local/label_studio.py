"""Label Studio as a separate local service, in its own virtualenv.

Label Studio is a Django application with its own (large) dependency tree; installing it
into the Airflow/pipeline environment would pin half of Airflow's dependencies. So, as in
production where Label Studio is a separate server, it runs here from its own virtualenv:

- ``var/labelstudio/venv``: created on first use from ``requirements-labelstudio.txt``
  (``label-studio==1.23.2``); a stamp file holding the hash of that file makes later calls
  return at once, and a file lock keeps two processes from building it at the same time;
- ``var/labelstudio/data``: its SQLite database and uploaded media
  (``LABEL_STUDIO_BASE_DATA_DIR``); ``HOME`` points inside ``var/labelstudio`` too;
- ``label-studio start --no-browser --host 127.0.0.1 --port P --data-dir D
  --enable-legacy-api-token`` with ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true`` (so
  ``Authorization: Token T`` works) and the user, password and token in
  ``LABEL_STUDIO_USERNAME`` / ``LABEL_STUDIO_PASSWORD`` / ``LABEL_STUDIO_USER_TOKEN`` (read
  exactly like ``--username/--password/--user-token``, but not visible in ``ps``); in its
  own process group, stopped by that group id.

The user, password and token of a data dir are made once and kept in
``<data dir>/framesift-credentials.json`` (mode 0600): Label Studio only creates the user on
the first start of a data dir, so a later start must reuse the same token.

Frames reach Label Studio as uploaded files (see ``framesift.labeling.label_studio.backend``), so no
local-files serving or S3 connection setting is needed here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from framesift.local.stack import project_root, var_dir

log = logging.getLogger("framesift.labelstudio_service")

REQUIREMENTS = project_root() / "requirements-labelstudio.txt"
STAMP_NAME = ".framesift-requirements.sha256"
CREDENTIALS_NAME = "framesift-credentials.json"
DEFAULT_USERNAME = "framesift@localhost.local"


def home_dir() -> Path:
    return var_dir() / "labelstudio"


def default_venv_dir() -> Path:
    return home_dir() / "venv"


def default_data_dir() -> Path:
    return home_dir() / "data"


def _requirements_hash(requirements: Path) -> str:
    return hashlib.sha256(requirements.read_bytes()).hexdigest()


def venv_is_current(venv_dir: Path | None = None, requirements: Path = REQUIREMENTS) -> bool:
    venv_dir = Path(venv_dir or default_venv_dir())
    stamp = venv_dir / STAMP_NAME
    return (
        stamp.is_file()
        and (venv_dir / "bin" / "label-studio").exists()
        and stamp.read_text().strip() == _requirements_hash(requirements)
    )


def ensure_venv(
    venv_dir: str | os.PathLike[str] | None = None,
    requirements: str | os.PathLike[str] = REQUIREMENTS,
    python: str | None = None,
) -> Path:
    """Create (or update) Label Studio's virtualenv; a no-op when the stamp matches.

    Returns the venv dir. Idempotent and safe to call from several processes at once.
    """
    venv_dir = Path(venv_dir or default_venv_dir())
    requirements = Path(requirements)
    if venv_is_current(venv_dir, requirements):
        return venv_dir
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv_dir.parent / (venv_dir.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if venv_is_current(venv_dir, requirements):
            return venv_dir
        started = time.monotonic()
        log.info("creating Label Studio's virtualenv at %s (first use; about a minute or two)", venv_dir)
        env = _child_env()
        if not (venv_dir / "bin" / "python").exists():
            base = python or getattr(sys, "_base_executable", None) or sys.executable
            _run([base, "-m", "venv", str(venv_dir)], env)
        pip = [str(venv_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        _run([*pip, "-r", str(requirements)], env)
        (venv_dir / STAMP_NAME).write_text(_requirements_hash(requirements) + "\n")
        log.info("Label Studio's virtualenv ready in %.0f s", time.monotonic() - started)
    return venv_dir


def _run(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed with exit code {proc.returncode}:\n{tail}")


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of pip and Label Studio: everything they write stays under var/."""
    home = home_dir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE"))}
    env.update(
        {
            "HOME": str(home / "home"),
            "TMPDIR": str(var_dir() / "tmp"),
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "share"),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
    )
    for key in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class LabelStudioInfo:
    url: str
    token: str
    username: str
    password: str
    pid: int
    data_dir: str

    def credentials(self) -> dict[str, str]:
        """The credentials dict ``labeling.get_backend`` takes (what the Airflow connection holds)."""
        return {"url": self.url, "token": self.token}

    def connection_env(self, conn_id: str = "framesift_labeling") -> dict[str, str]:
        """``AIRFLOW_CONN_<ID>`` pointing an Airflow connection at this server (token as password)."""
        from urllib.parse import urlsplit

        url = urlsplit(self.url)
        conn = {
            "conn_type": "http",
            "host": url.hostname,
            "port": url.port,
            "schema": url.scheme,
            "password": self.token,
        }
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)}

    def __repr__(self) -> str:  # never print the token or password
        return f"LabelStudioInfo(url={self.url!r}, username={self.username!r}, pid={self.pid})"


def default_template_dir() -> Path:
    return home_dir() / "template-data"


def ensure_template(template_dir: str | os.PathLike[str] | None = None) -> Path:
    """A data dir that Label Studio has initialised once (database migrated, user made).

    A fresh data dir spends most of Label Studio's start-up in database migrations (40 to
    90 s on 2 busy cores); a copy of this template starts in a few seconds. Rebuilt when
    ``requirements-labelstudio.txt`` changes (a new Label Studio may migrate differently).
    """
    template = Path(template_dir or default_template_dir())
    stamp = template / STAMP_NAME
    want = _requirements_hash(REQUIREMENTS)
    if stamp.is_file() and stamp.read_text().strip() == want:
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    with open(template.parent / (template.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text().strip() == want:
            return template
        if template.exists():
            shutil.rmtree(template)
        started = time.monotonic()
        service = LabelStudioService(data_dir=template)
        try:
            service.start()
        finally:
            service.stop()
        stamp.write_text(want + "\n")
        log.info("Label Studio template data dir ready in %.0f s", time.monotonic() - started)
    return template


class LabelStudioService:
    """Start/stop a local Label Studio; ``with LabelStudioService() as info: info.url, info.token``.

    ``from_template=True``: a data dir that does not exist yet starts as a copy of
    :func:`ensure_template` (fast; tests use it), with the template's user and token.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        venv_dir: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 180.0,
        extra_env: dict[str, str] | None = None,
        from_template: bool = False,
    ):
        self.port = port
        self.from_template = from_template
        self.data_dir = Path(data_dir or default_data_dir())
        self.venv_dir = Path(venv_dir or default_venv_dir())
        self.startup_timeout_s = startup_timeout_s
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self.info: LabelStudioInfo | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"
        self.timings: dict[str, float] = {}

    # credentials of this data dir, made once
    def _credentials(self) -> dict[str, str]:
        path = self.data_dir / CREDENTIALS_NAME
        if path.exists():
            return json.loads(path.read_text())
        creds = {
            "username": DEFAULT_USERNAME,
            "password": secrets.token_urlsafe(16),
            "token": secrets.token_hex(20),  # 40 chars: the size of Label Studio's legacy token
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(creds, fh)
        return creds

    def start(self) -> LabelStudioInfo:
        if self.info is not None:
            return self.info
        t0 = time.monotonic()
        ensure_venv(self.venv_dir)
        self.timings["venv_s"] = time.monotonic() - t0
        if self.from_template and not (self.data_dir / CREDENTIALS_NAME).exists():
            t_template = time.monotonic()
            template = ensure_template()
            self.timings["template_s"] = time.monotonic() - t_template
            if self.data_dir.exists():
                shutil.rmtree(self.data_dir)
            shutil.copytree(template, self.data_dir, ignore=shutil.ignore_patterns(STAMP_NAME))
        creds = self._credentials()
        port = self.port or free_port()
        url = f"http://127.0.0.1:{port}"
        env = _child_env(
            {
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                "LABEL_STUDIO_HOST": url,
                # no telemetry and no PyPI update check at start
                "COLLECT_ANALYTICS": "false",
                "LATEST_VERSION_CHECK": "false",
                **self.extra_env,
            }
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The user, password and token go in through the environment: Label Studio reads
        # LABEL_STUDIO_USERNAME/PASSWORD/USER_TOKEN exactly like --username/--password/
        # --user-token, and the environment, unlike the command line, is not shown by `ps`.
        env.update(
            {
                "LABEL_STUDIO_USERNAME": creds["username"],
                "LABEL_STUDIO_PASSWORD": creds["password"],
                "LABEL_STUDIO_USER_TOKEN": creds["token"],
            }
        )
        cmd = [
            str(self.venv_dir / "bin" / "label-studio"),
            "start",
            "--no-browser",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(self.data_dir),
            "--enable-legacy-api-token",
        ]
        t1 = time.monotonic()
        logfile = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() ends it and its children
                cwd=str(self.data_dir),
            )
        finally:
            logfile.close()
        try:
            self._wait_healthy(url, creds["token"])
        except BaseException:
            self.stop()
            raise
        self.timings["start_s"] = time.monotonic() - t1
        log.info("Label Studio up at %s in %.0f s (log: %s)", url, self.timings["start_s"], self.log_path)
        self.info = LabelStudioInfo(
            url=url,
            token=creds["token"],
            username=creds["username"],
            password=creds["password"],
            pid=self.proc.pid,
            data_dir=str(self.data_dir),
        )
        return self.info

    def _wait_healthy(self, url: str, token: str) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"Label Studio exited with code {self.proc.returncode} while starting; "
                    f"see {self.log_path}:\n{_tail(self.log_path)}"
                )
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    # healthy; the user and token are created just before serving, check them
                    who = requests.get(
                        f"{url}/api/current-user/whoami",
                        headers={"Authorization": f"Token {token}"},
                        timeout=5,
                    )
                    if who.status_code == 200:
                        return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(
            f"Label Studio did not answer /health with a working token in {self.startup_timeout_s:.0f} s; "
            f"see {self.log_path}:\n{_tail(self.log_path)}"
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        proc, self.proc, self.info = self.proc, None, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # children left in the group (it has its own session, so the id is the leader's pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> LabelStudioInfo:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def main(argv: list[str] | None = None) -> None:
    """``python -m framesift.local.label_studio [--port P] [--prepare]``: run Label Studio
    until Ctrl-C, or (``--prepare``) only build its virtualenv and template data dir."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--prepare", action="store_true", help="build the venv and the template, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.prepare:
        t0 = time.monotonic()
        ensure_venv()
        ensure_template()
        print(f"Label Studio venv and template ready in {time.monotonic() - t0:.0f} s")
        return
    with LabelStudioService(port=args.port, data_dir=args.data_dir) as info:
        print(
            f"Label Studio at {info.url}  user {info.username}  (token in {info.data_dir}/{CREDENTIALS_NAME})"
        )
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1)


if __name__ == "__main__":
    main()
