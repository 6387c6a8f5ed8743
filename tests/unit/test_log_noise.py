"""Log noise an operator reads past (issue #17, point 10): class counts without zeros, no
botocore/urllib3 INFO on CLI calls, no reStructuredText in `framesift --help`, S3 pools
at least as big as the threads that share them."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest

from framesift.io.s3 import POOL_FLOOR, client_config, make_client
from framesift.io.summaries import detections_line


def test_detections_line_leaves_out_classes_without_boxes():
    assert detections_line({"Normal": 0, "Fall": 1}, 1) == "Fall 1 (1 box)"
    assert detections_line({"car": 1, "person": 3, "dog": 0}, 4) == "person 3, car 1 (4 boxes)"
    assert detections_line({"Normal": 0, "Fall": 0}, 0) == "no detections"
    assert detections_line(None, None) == "no detections"
    assert detections_line({"a": 2, "b": 2}) == "a 2, b 2 (4 boxes)"  # ties by name, total summed


def test_cli_silences_library_info(monkeypatch, capsys):
    from framesift import cli

    for name in cli.QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    for name in ("botocore", "botocore.credentials", "urllib3.connectionpool", "boto3", "s3transfer"):
        assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING, name


RST = re.compile(r"``|:(mod|func|class|meth|data|attr):`|^\s*\.\. \w+::", re.M)


def _help(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "framesift.cli", *args, "--help"], capture_output=True, text=True, check=True
    )
    return out.stdout


def test_help_has_no_rst_markup():
    top = _help()
    commands = re.search(r"\{([a-z,-]+)\}", top).group(1).split(",")
    assert "videos" in commands and "config" in commands
    for text in [top] + [_help(c) for c in commands]:
        assert not RST.search(text), RST.search(text).group(0) + " in:\n" + text


def test_s3_pools_are_as_big_as_the_threads_sharing_them():
    assert client_config().max_pool_connections > POOL_FLOOR  # inference's 16 readers + 16 writers
    assert client_config(upload_workers=100).max_pool_connections > 100
    assert make_client(endpoint_url="http://127.0.0.1:9").meta.config.max_pool_connections > POOL_FLOOR
