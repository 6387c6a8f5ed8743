"""Throwaway Postgres and Redis servers on loopback, for the CeleryExecutor test.

Binaries come from Debian's packages (scripts/ensure_services.sh, run by `make test`).
Each server runs in a process group of its own and writes only under ``root`` (inside
var/); stop() ends the group. Postgres refuses to run as root, so under root it runs as
the packages' ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ENSURE = "scripts/ensure_services.sh"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def missing_binaries() -> list[str]:
    missing = [] if _postgres_bin() else ["postgres (initdb)"]
    return missing + ([] if shutil.which("redis-server") else ["redis-server"])


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{log.name}: server exited ({proc.returncode})\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{log.name}: nothing listens on {port} after {timeout} s\n{log.read_text()[-3000:]}")


def _stop_group(proc: subprocess.Popen | None, sig=signal.SIGTERM, grace: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


class Postgres:
    """initdb into ``root/pgdata`` (trust auth, loopback only), one database ``airflow``."""

    def __init__(self, root: Path, user: str = "airflow", database: str = "airflow"):
        self.root, self.user, self.database = Path(root).resolve(), user, database
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def start(self) -> Postgres:
        bindir = _postgres_bin()
        assert bindir, f"no postgres binaries: run {ENSURE}"
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        data, log = self.root / "pgdata", self.root / "postgres.log"
        subprocess.run(
            self._as_owner(
                [str(bindir / "initdb"), "-D", str(data), "-U", self.user, "--auth=trust", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
            cwd=self.root,
        )
        # a test database: durability off, loopback TCP only, its socket inside its own folder
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": self.port,
            "unix_socket_directories": str(self.root),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": 200,
            "shared_buffers": "128MB",
        }
        argv = [str(bindir / "postgres"), "-D", str(data)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                self._as_owner(argv), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait_port(self.port, self.proc, log)
        deadline = time.monotonic() + 30
        while True:  # accepting TCP is not yet accepting queries
            made = subprocess.run(
                [
                    str(bindir / "createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    self.user,
                    self.database,
                ],
                capture_output=True,
                text=True,
            )
            if made.returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"createdb failed: {made.stderr}")
            time.sleep(0.5)

    def stop(self) -> None:
        _stop_group(self.proc, signal.SIGINT)  # "fast" shutdown


class Redis:
    """redis-server on loopback, no persistence, its working dir inside ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        binary = shutil.which("redis-server")
        assert binary, f"no redis-server: run {ENSURE}"
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / "redis.log"
        argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.root)]
        argv += ["--save", "", "--appendonly", "no", "--protected-mode", "yes"]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port, self.proc, log)
        return self

    def stop(self) -> None:
        _stop_group(self.proc)
