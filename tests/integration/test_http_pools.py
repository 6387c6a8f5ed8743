"""HTTP connection pools are sized to the workers that share them: a normal extraction,
inference and selection through the Airflow hook's S3 client log no urllib3 "Connection
pool is full, discarding connection" warning (botocore's default pool of 10 is smaller
than the stages' upload, read and write thread pools)."""

from __future__ import annotations

import logging

import pytest
import yaml

from framesift.io.s3 import upload
from framesift.local.synth import make_video

pytestmark = pytest.mark.slow


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_real_stages_log_no_pool_warnings(stack, isolated, db, tmp_path, monkeypatch):
    from framesift.inference.stage import infer_one
    from framesift.ingest.stage import extract_one, register_uploads
    from framesift.selection.batch import select_batch
    from framesift_airflow.hooks import FramesiftHook

    data = isolated.model_dump(mode="json", exclude_defaults=True)
    data.setdefault("extraction", {})["upload_workers"] = 16
    path = tmp_path / "framesift.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FRAMESIFT_CONFIG", str(path))
    hook = FramesiftHook()
    s3, cfg = hook.s3, hook.config  # the client the DAG's tasks use (aws connection from the environment)
    assert s3.meta.config.max_pool_connections >= 16 + 8

    # on urllib3's own logger (importing Airflow reconfigures the root logger's handlers)
    records = Records()
    urllib3_log = logging.getLogger("urllib3")
    urllib3_log.addHandler(records)
    monkeypatch.setattr(urllib3_log, "level", logging.WARNING)
    try:
        key = cfg.storage.videos_prefix + "busy.mp4"
        upload(s3, make_video(tmp_path / "busy.mp4", seconds=40, fps=5, seed=4), cfg.storage.bucket, key)
        (ref,) = register_uploads(s3, db, cfg, run_id="pools")
        out = extract_one(s3, db, cfg, ref, run_id="pools", work_dir=str(tmp_path / "work"))
        assert out["status"] == "extracted" and out["frames_written"] == 40
        out = infer_one(s3, db, cfg, ref, run_id="pools")
        assert out["status"] == "inferred" and out["inference"]["frames"] == 40
        record = select_batch(s3, db, cfg, [ref], run_id="pools")  # reads predictions 16 at a time
        assert len(record["selected"]) == 6
    finally:
        urllib3_log.removeHandler(records)
    full = [m for m in records.messages if "Connection pool is full" in m]
    assert not full, f"{len(full)} pool warnings, e.g. {full[0]}"
