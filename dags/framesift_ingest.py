"""framesift_ingest: new uploads -> registry -> frames in S3 (one mapped task per video)."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from framesift.config import load_config
from framesift_airflow.assets import uploads_asset
from framesift_airflow.operators import ExtractFramesOperator, IngestSummaryOperator, RegisterUploadsOperator

cfg = load_config()

DOC = """
### framesift_ingest

Turns new video uploads into frames in S3.

* **Triggers**: the `framesift_uploads` asset, whose watcher lists the videos prefix
  (`discovery.mode: list`) or reads S3 event notifications from SQS (`discovery.mode: sqs`);
  or a manual run, which lists `prefix` (default: `storage.videos_prefix`).
* **register_uploads**: upserts each upload into the Mongo `videos` registry (keyed by
  bucket/key/etag: duplicates and re-runs never create a second record).
* **extract_frames** (one per video, named by its key): samples frames with PyAV and writes
  them, plus a manifest, under `<output_prefix>/videos/<video_id>/`.
* **summary**: counts read back from the registry.

**When it fails**: a *skipped* extract_frames means the video was quarantined (bad input;
the reason is in its log and on its `videos` record): fix and re-upload it. A *failed* one
is an infrastructure error (S3, Mongo): it retries with backoff, and the next run picks
the video up again (up to 3 attempts). `framesift videos` lists the registry.
"""

with DAG(
    dag_id="framesift_ingest",
    description="New uploads -> registry -> frames in S3",
    doc_md=DOC,
    schedule=[uploads_asset(cfg)],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    tags=["framesift", "ingest"],
    default_args={
        "owner": "framesift",
        "retries": 3,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
    },
    params={
        "prefix": Param(
            None,
            type=["null", "string"],
            description="S3 prefix to list for a manual run (default: storage.videos_prefix)",
        ),
    },
) as dag:
    register = RegisterUploadsOperator(task_id="register_uploads", prefix="{{ params.prefix or '' }}")
    extract = ExtractFramesOperator.partial(
        task_id="extract_frames",
        map_index_template="{{ task.video['key'] }}",
        execution_timeout=timedelta(hours=2),
    ).expand(video=register.output)
    summary = IngestSummaryOperator(
        task_id="summary",
        videos=register.output,
        run_params={"prefix": "{{ params.prefix }}"},
        trigger_rule="all_done",
    )
    extract >> summary
