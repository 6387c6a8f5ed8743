"""Shared fixtures: the embedded stack (the same code as `framesift stack up`), clients,
and per-test isolated config (own bucket prefix and Mongo database)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var"

# The Makefile exports these; set them too when pytest is run directly.
for _key, _value in {
    "FRAMESIFT_VAR_DIR": str(VAR),
    "AIRFLOW_HOME": str(VAR / "airflow"),
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "MPLCONFIGDIR": str(VAR / "matplotlib"),
    "YOLO_CONFIG_DIR": str(VAR / "ultralytics"),
    "TMPDIR": str(VAR / "tmp"),
}.items():
    os.environ.setdefault(_key, _value)
Path(os.environ["TMPDIR"]).mkdir(parents=True, exist_ok=True)


# fixtures that start a server; tests/unit uses none of them (those tests live in integration/)
SERVER_FIXTURES = {"stack", "s3", "sqs", "mongo", "db", "isolated", "label_studio"}


def pytest_collection_modifyitems(config, items):
    unit = ROOT / "tests" / "unit"
    wrong = [
        f"{item.nodeid} uses {sorted(SERVER_FIXTURES & set(item.fixturenames))}"
        for item in items
        if unit in Path(item.fspath).parents and SERVER_FIXTURES & set(item.fixturenames)
    ]
    if wrong:
        raise pytest.UsageError(
            "tests/unit starts no servers; move these to tests/integration:\n  " + "\n  ".join(wrong)
        )


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """Moto (S3+SQS) and SecantusDB on loopback, with Airflow connections in the env."""
    from framesift.local.stack import EmbeddedStack

    with EmbeddedStack(tmp_path_factory.mktemp("stack")) as info:
        saved = {k: os.environ.get(k) for k in info.env()}
        os.environ.update(info.env())
        yield info
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def s3(stack):
    from framesift.io.s3 import make_client

    return make_client(endpoint_url=stack.s3_endpoint)


@pytest.fixture(scope="session")
def sqs(stack):
    import boto3

    return boto3.client("sqs", endpoint_url=stack.s3_endpoint, region_name="us-east-1")


@pytest.fixture(scope="session")
def mongo(stack):
    from pymongo import MongoClient

    client = MongoClient(stack.mongo_uri)
    yield client
    client.close()


@pytest.fixture
def isolated(stack, tmp_path, monkeypatch):
    """A config file of its own: fresh videos prefix, output prefix and Mongo database.

    Sets FRAMESIFT_CONFIG so Airflow tasks (and the CLI) read it.
    """
    tag = uuid.uuid4().hex[:8]
    data = {
        "storage": {
            "bucket": stack.bucket,
            "videos_prefix": f"t-{tag}/videos/",
            "output_prefix": f"t-{tag}/out/",
        },
        "mongo": {"database": f"t_{tag}"},
        "extraction": {"dedupe": {"enabled": False}},
        "inference": {"imgsz": 320, "batch_size": 8},
        "selection": {"n_samples": 6},
    }
    path = tmp_path / "framesift.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FRAMESIFT_CONFIG", str(path))
    from framesift.config.loading import load_config

    return load_config(path)


@pytest.fixture
def db(mongo, isolated):
    return mongo[isolated.mongo.database]


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio server (its own venv, built once under var/labelstudio), with the
    Airflow connection `framesift_labeling` pointing at it."""
    from framesift.local.label_studio import LabelStudioService

    svc = LabelStudioService(data_dir=tmp_path_factory.mktemp("labelstudio") / "data", from_template=True)
    info = svc.start()
    saved = {k: os.environ.get(k) for k in info.connection_env()}
    os.environ.update(info.connection_env())
    try:
        yield info
    finally:
        svc.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
