"""`framesift stack up|env|down`, the CLI over it, and ClearML's offline setting."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from framesift.local.stack import _alive, var_dir

pytestmark = pytest.mark.slow


def cli(*args, env, check=True):
    return subprocess.run(
        [sys.executable, "-m", "framesift.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def test_stack_up_env_cli_down(tmp_path):
    from framesift.local.synth import make_video

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "FRAMESIFT_"))}
    env["FRAMESIFT_VAR_DIR"] = str(tmp_path / "var")
    try:
        up = cli("stack", "up", env=env)
        assert "stack up" in up.stdout
        state = json.loads((tmp_path / "var/stack/state.json").read_text())
        assert cli("stack", "up", env=env).stdout == up.stdout  # a second `up` finds the running stack

        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in cli("stack", "env", env=env).stdout.splitlines()
        )
        conn = json.loads(exports["AIRFLOW_CONN_AWS_DEFAULT"].strip("'"))
        assert conn["extra"]["endpoint_url"] == state["s3_endpoint"].strip("'")
        assert json.loads(exports["AIRFLOW_CONN_MONGO_DEFAULT"].strip("'"))["port"] == state["mongo_port"]

        # the CLI finds the running stack by itself: upload, discover, extract, list
        from framesift.io.s3 import make_client, upload

        s3 = make_client(
            endpoint_url=state["s3_endpoint"], aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        upload(s3, make_video(tmp_path / "a.mp4", seconds=2, fps=10), "framesift", "videos/a.mp4")
        assert "s3://framesift/videos/a.mp4" in cli("discover", env=env).stdout
        out = cli("extract", "s3://framesift/videos/a.mp4", env=env).stdout
        assert "extracted 2 frames" in out
        listing = cli("videos", env=env).stdout
        assert "extracted: 1" in listing and "s3://framesift/videos/a.mp4" in listing
        assert cli("discover", env=env).stdout == ""  # registered now

        # exit codes: 3 when an input is quarantined; damaged frames are named, not failures
        from tests import videofaults

        clip = make_video(
            tmp_path / "g.mp4", seconds=6, fps=30, gop_size=90, codec_options={"preset": "veryfast"}
        )
        videofaults.damaged_packet_copy(clip, tmp_path / "damaged.mp4", at_s=1.0)
        upload(s3, tmp_path / "damaged.mp4", "framesift", "videos/damaged.mp4")
        upload(s3, videofaults.text_file(tmp_path / "notes.mp4"), "framesift", "videos/notes.mp4")
        res = cli("extract", "s3://framesift/videos/damaged.mp4", env=env, check=False)
        assert res.returncode == 0, res.stderr
        assert "extracted 6 frames, 2 damaged (1.0–3.0 s: Invalid data found" in res.stdout
        res = cli("extract", "s3://framesift/videos/notes.mp4", env=env, check=False)
        assert res.returncode == 3 and "quarantined (not a video" in res.stdout
        res = cli("extract", "s3://framesift/videos/missing.mp4", env=env, check=False)
        assert res.returncode == 1 and "failed" in res.stderr
        listing = cli("videos", env=env).stdout
        assert "6 frames, 2 damaged (1.0–3.0 s: Invalid data found" in listing
    finally:
        down = cli("stack", "down", env=env, check=False)
    assert down.stdout.strip() == "stack stopped"
    assert not (tmp_path / "var/stack/state.json").exists()
    assert not _alive(state["pid"])
    assert cli("stack", "status", env=env).stdout.strip() == "not running"


def test_cli_without_a_stack_says_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "FRAMESIFT_"))}
    env["FRAMESIFT_VAR_DIR"] = str(tmp_path)
    res = cli("videos", env=env, check=False)
    assert res.returncode != 0 and "framesift stack up" in res.stderr


def test_config_check_command(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extraction:\n  fsp: 2\n")
    res = cli("config", str(bad), env=dict(os.environ), check=False)
    assert res.returncode == 2 and "extraction.fsp: unknown key; did you mean 'fps'?" in res.stderr
    ok = cli("config", env=dict(os.environ))
    assert "sampling: fps" in ok.stdout


def test_config_checks_the_model_and_important_classes(tmp_path):
    """`framesift config` fails on a model file that does not exist and on class names the
    model does not know (issue #17, point 7), with the preflight's messages."""
    from framesift.inference.models import fall_model_path

    missing = tmp_path / "missing.yaml"
    missing.write_text(f"inference:\n  model_uri: {tmp_path / 'nope.pt'}\n")
    res = cli("config", str(missing), env=dict(os.environ), check=False)
    assert res.returncode == 2 and "config error: inference.model_uri: " in res.stderr
    assert "nope.pt" in res.stderr

    typo = tmp_path / "typo.yaml"
    typo.write_text(f"inference:\n  model_uri: {fall_model_path()}\nimportant_classes: [Fall, Normla]\n")
    res = cli("config", str(typo), env=dict(os.environ), check=False)
    assert res.returncode == 2
    assert "important_classes: 'Normla' is not a class of the model (did you mean 'Normal'?)" in res.stderr
    assert "'Fall'" not in res.stderr

    good = tmp_path / "good.yaml"
    good.write_text(f"inference:\n  model_uri: {fall_model_path()}\nimportant_classes: [Fall]\n")
    res = cli("config", str(good), env=dict(os.environ), check=False)
    assert res.returncode == 0 and "important_classes ['Fall'] are its classes" in res.stderr
    assert cli("config", str(missing), "--no-model", env=dict(os.environ)).returncode == 0


def test_clearml_offline_sessions_land_in_the_project(stack, tmp_path):
    """The stack's environment makes ClearML write offline sessions under var/, no server."""
    code = (
        "from clearml import Task; "
        "t = Task.init(project_name='framesift-selftest', task_name='stack-check', "
        "auto_connect_frameworks=False, auto_resource_monitoring=False); "
        "t.get_logger().report_scalar('check', 'value', 42.0, 0); t.close()"
    )
    env = {**os.environ, **stack.env(), "HOME": str(tmp_path / "home")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=120)
    offline_dir = Path(env["CLEARML_CACHE_DIR"]) / "offline"
    assert offline_dir.is_relative_to(var_dir())
    sessions = sorted(offline_dir.glob("offline-*.zip"), key=os.path.getmtime)
    assert sessions, "no offline session written"
    with zipfile.ZipFile(sessions[-1]) as z:
        metrics = b"".join(z.read(n) for n in z.namelist() if "metrics" in n)
    assert b"42.0" in metrics or b"42" in metrics
