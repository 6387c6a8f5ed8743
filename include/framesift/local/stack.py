"""The embedded local stack: real servers on loopback, started by the project.

- S3 (and SQS) API: moto's server on a free port, with S3 -> SQS event notifications
  for the videos prefix, as AWS would deliver them.
- MongoDB wire protocol: SecantusDB, data under the project's var dir.
- ClearML: offline sessions (nothing to start; see tracking settings in env()).

The same class serves the pytest fixtures, ``framesift stack up|down`` (a detached
process that keeps the servers alive) and ``make demo``. Production points the same
connections at real endpoints instead.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("framesift.stack")

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
QUEUE_NAME = "framesift-uploads"
# moto accepts any credentials; these are local stand-ins, not secrets (distinctive, so
# tests can check they never leak into logs, XCom or ClearML)
TEST_KEY_ID = "framesift-local-key"
TEST_SECRET = "framesift-local-secret-0xf5"


def project_root() -> Path:
    return Path(__file__).resolve().parents[3]


def var_dir() -> Path:
    return Path(os.environ.get("FRAMESIFT_VAR_DIR") or project_root() / "var")


def state_path() -> Path:
    return var_dir() / "stack" / "state.json"


@dataclass
class StackInfo:
    s3_endpoint: str
    mongo_uri: str
    mongo_host: str
    mongo_port: int
    sqs_queue_url: str
    bucket: str
    pid: int

    def env(self) -> dict[str, str]:
        """Environment that points Airflow connections, the CLI and ClearML at the stack."""
        clearml_dir = var_dir() / "clearml"
        aws_conn = {
            "conn_type": "aws",
            "login": TEST_KEY_ID,
            "password": TEST_SECRET,
            "extra": {"endpoint_url": self.s3_endpoint, "region_name": REGION},
        }
        mongo_conn = {
            "conn_type": "mongo",
            "host": self.mongo_host,
            "port": self.mongo_port,
            "schema": "framesift",
        }
        return {
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws_conn),
            "AIRFLOW_CONN_MONGO_DEFAULT": json.dumps(mongo_conn),
            "FRAMESIFT_S3_ENDPOINT_URL": self.s3_endpoint,
            "FRAMESIFT_MONGO_URI": self.mongo_uri,
            "FRAMESIFT_SQS_QUEUE_URL": self.sqs_queue_url,
            "AWS_ACCESS_KEY_ID": TEST_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
            "AWS_DEFAULT_REGION": REGION,
            # ClearML: offline sessions under the project's var dir, importable into a server later
            "CLEARML_OFFLINE_MODE": "1",
            "CLEARML_CACHE_DIR": str(clearml_dir / "cache"),
            "CLEARML_CONFIG_FILE": str(write_clearml_config(clearml_dir)),
        }


# report_use_subprocess: close() returns at once instead of waiting ~10 s for a reporter;
# no code diff: a run records the pipeline config, not the working tree of the worker
CLEARML_CONF = """sdk {
  development {
    report_use_subprocess: false
    store_uncommitted_code_diff: false
    store_code_diff_from_remote: false
  }
}
"""


def write_clearml_config(clearml_dir: Path) -> Path:
    clearml_dir.mkdir(parents=True, exist_ok=True)
    path = clearml_dir / "clearml.conf"
    if not path.exists() or path.read_text() != CLEARML_CONF:
        path.write_text(CLEARML_CONF)
    return path


class EmbeddedStack:
    """Start moto (S3+SQS) and SecantusDB on loopback; ``with EmbeddedStack(...) as info``."""

    def __init__(
        self, data_dir: str | os.PathLike[str], bucket: str = "framesift", videos_prefix: str = "videos/"
    ):
        self.data_dir = Path(data_dir)
        self.bucket = bucket
        self.videos_prefix = videos_prefix
        self._moto = None
        self._mongo = None
        self.info: StackInfo | None = None

    def start(self) -> StackInfo:
        from moto.server import ThreadedMotoServer
        from secantus import SecantusDBServer

        self.data_dir.mkdir(parents=True, exist_ok=True)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        s3_endpoint = f"http://{host}:{port}"

        self._mongo = SecantusDBServer(
            host="127.0.0.1", port=0, storage_path=str(self.data_dir / "mongo"), cache_size="256M"
        )
        self._mongo.start()
        mhost, mport = self._mongo.address

        queue_url = self._provision(s3_endpoint)
        self.info = StackInfo(
            s3_endpoint=s3_endpoint,
            mongo_uri=f"mongodb://{mhost}:{mport}/",
            mongo_host=mhost,
            mongo_port=mport,
            sqs_queue_url=queue_url,
            bucket=self.bucket,
            pid=os.getpid(),
        )
        log.info("embedded stack up: s3=%s mongo=%s", s3_endpoint, self.info.mongo_uri)
        return self.info

    def _provision(self, endpoint: str) -> str:
        """Create the bucket, the upload queue and the bucket's event notifications."""
        import boto3

        kw = dict(
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=TEST_KEY_ID,
            aws_secret_access_key=TEST_SECRET,
        )
        s3 = boto3.client("s3", **kw)
        sqs = boto3.client("sqs", **kw)
        s3.create_bucket(Bucket=self.bucket)
        queue_url = sqs.create_queue(QueueName=QUEUE_NAME)["QueueUrl"]
        queue_arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{QUEUE_NAME}"
        s3.put_bucket_notification_configuration(
            Bucket=self.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": queue_arn,
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": self.videos_prefix}]}},
                    }
                ]
            },
        )
        return queue_url

    def stop(self) -> None:
        if self._mongo is not None:
            self._mongo.stop()
            self._mongo = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None

    def __enter__(self) -> StackInfo:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- the detached process behind `framesift stack up|down` ---------------------------


def read_state() -> StackInfo | None:
    path = state_path()
    if not path.exists():
        return None
    info = StackInfo(**json.loads(path.read_text()))
    if not _alive(info.pid):
        path.unlink(missing_ok=True)  # left over from a crashed stack
        return None
    return info


def serve(bucket: str = "framesift") -> None:
    """Run the stack in this process until SIGTERM/SIGINT, publishing its state file."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stack = EmbeddedStack(var_dir() / "stack", bucket=bucket)
    info = stack.start()
    path = state_path()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2))
    tmp.replace(path)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    try:
        while not stopping:
            time.sleep(0.2)
    finally:
        stack.stop()
        path.unlink(missing_ok=True)


def up(timeout_s: float = 60.0) -> StackInfo:
    """Start the detached stack process (or return the one already running)."""
    running = read_state()
    if running:
        return running
    (var_dir() / "stack").mkdir(parents=True, exist_ok=True)
    logfile = open(var_dir() / "stack" / "stack.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "framesift.local.stack"],
        stdout=logfile,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # survives this shell; `down` stops its whole group
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = read_state()
        if info:
            return info
        if proc.poll() is not None:
            raise RuntimeError(f"the stack process exited with {proc.returncode}; see {logfile.name}")
        time.sleep(0.2)
    proc.terminate()
    raise TimeoutError(f"the stack did not come up in {timeout_s:.0f} s; see {logfile.name}")


def down(timeout_s: float = 20.0) -> bool:
    info = read_state()
    if not info:
        return False
    os.killpg(os.getpgid(info.pid), signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(info.pid):
        time.sleep(0.2)
    if _alive(info.pid):
        os.killpg(os.getpgid(info.pid), signal.SIGKILL)
        state_path().unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:3]
    except OSError:
        return True


def alive(pid: int) -> bool:
    """True while process ``pid`` runs (not a zombie); False for pids <= 0."""
    return pid > 0 and _alive(pid)


def env_from_state() -> dict[str, str]:
    info = read_state()
    return info.env() if info else {}


if __name__ == "__main__":
    serve()
