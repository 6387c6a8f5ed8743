"""framesift_ingest: uploads -> frames -> detections -> one selection -> labeling platform."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param

from framesift.config.loading import load_config_for_wiring
from framesift.selection.presets import PRESETS
from framesift_airflow.assets import inference_asset, uploads_asset
from framesift_airflow.operators.ingest import (
    ExtractFramesOperator,
    InferOperator,
    IngestSummaryOperator,
    RegisterUploadsOperator,
)
from framesift_airflow.operators.labeling import PushSequenceOperator
from framesift_airflow.operators.selection import (
    PlanSelectionOperator,
    SelectFramesOperator,
    SelectShardOperator,
)
from framesift_airflow.operators.setup import LABELING, MODEL, MONGO, STORAGE, TRIGGER, CheckSetupOperator

# a config that does not load still gives a listed DAG (with the defaults' wiring) whose
# check_setup fails every run with the validation message
cfg, config_problem = load_config_for_wiring()

# a mapped task's name in the UI: the video key, and what happened when it is not the usual
MAP_NAME = "{{ task.video['key'] }}{% if framesift_note is defined and framesift_note %} · {{ framesift_note }}{% endif %}"

# new uploads trigger a run at once; the cron picks up what a run left for later
# (batches over discovery.max_videos_per_run, videos whose pipeline stopped half way)
uploads = uploads_asset(cfg)
schedule = (
    AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(cfg.discovery.drain_cron, timezone="UTC"), assets=[uploads]
    )
    if cfg.discovery.drain_cron
    else [uploads]
)

DOC = """
### framesift_ingest

Turns new video uploads into the few frames worth labeling, on the labeling platform.

* **Triggers**: the `framesift_uploads` asset, whose watcher lists the videos prefix
  (`discovery.mode: list`) or reads S3 event notifications from SQS (`discovery.mode: sqs`);
  on `discovery.drain_cron` (every 15 minutes), to drain what earlier runs left (batches over
  `discovery.max_videos_per_run`, interrupted videos); or a manual run from the trigger
  form (prefix, budget, strategy preset, dry run).
* **check_setup**: the config loads, the buckets, the model file and the connections are
  there and the labeling platform accepts the credentials; fails at once otherwise.
* **register_uploads**: requeues what the form's *Requeue* names, then upserts each upload into the Mongo `videos` registry (keyed by
  bucket/key/etag: duplicates and re-runs never create a second record).
* **extract_frames** (one per video, named by its key): samples frames with PyAV (decoding
  only what sampling keeps) and writes them, plus a manifest, under
  `<output_prefix>/videos/<video_id>/`; with `inference.overlap` (the default, for CPU
  deployments) it also runs the detector on the frames as they decode.
* **infer** (one per video, pool and Celery queue `gpu`): the detector over the frames, in
  batches; Lightly-format predictions under `frames/.lightly/predictions/` and an
  embedding per frame (`embeddings/<model>.npz`), from one forward pass. With
  `inference.overlap` the video is already inferred and this task passes it on.
* **plan_selection** / **select_shard** (one per shard): only for batches over
  `selection.shard_max_frames` frames (500,000 by default); otherwise `select_shard` is
  *skipped*. Each shard (whole videos) keeps its best `shard_oversample` x budget frames,
  stored in S3 for the merge.
* **select_frames** (one for the batch): the selection engine over every inferred frame,
  or a second greedy pass over the shards' winners (diversity x uncertainty x class
  balance by default, datapool-aware); the `selections`
  record and an HTML report (link: *Selection report*). `dry_run` stops here. Updates the
  `framesift_inference` asset, which runs `framesift_drift`.
* **push_to_labeling** (one per video with selected frames): an image sequence with the
  model's boxes as pre-annotations on the labeling platform (link: *Labeling project*),
  recorded once in Mongo `labeling_queue`.
* **summary**: counts read back from the registry, a ClearML task (link: *ClearML run*),
  a `runs` record.

**When it fails**: a failed *check_setup* names what to fix before anything runs (the
config, a bucket, the model file, a connection, the labeling credentials, an unknown
trigger key); nothing was claimed, the next run goes through once it is fixed.
*Skipped* means one thing: the video was quarantined (bad input; the reason is beside the
key and on its `videos` record): fix and re-upload it. A mapped task whose name carries a
note after the key (`· pushed earlier`, `· inferring in run ...`) had nothing to do in
this run. A *failed* per-video task names the stage, the error and the fix: a permanent
error (missing or unreadable model, refused credentials, missing frames) fails at once and
waits for the fix and `framesift videos requeue KEY` (or this form's *Requeue*); a
changed config retries it by itself. A transient one (S3, Mongo, the platform down)
retries with backoff, and later runs retry the video (in up to 3 runs). The *summary*
fails the run once, naming every video that failed in it; later runs do not fail for it.
A task *killed* (out of memory, node lost) leaves its video claimed: the retry waits for
the claim's lease (`claims.lease_s`) and takes it over, and after the last retry the next
run does; a "refused the write" line is a presumed-dead attempt whose late result was
discarded. `framesift videos --failed` lists what waits, `framesift status` the last runs.
"""

if config_problem:
    DOC = (
        f"**The pipeline config does not load**: `{config_problem}`. Every run fails at "
        "`check_setup` until it is fixed (`framesift config` checks it).\n\n" + DOC
    )

with DAG(
    dag_id="framesift_ingest",
    description=(
        f"CONFIG ERROR: {config_problem[:200]}"
        if config_problem
        else "New uploads -> frames -> detections -> selected frames -> labeling platform"
    ),
    doc_md=DOC,
    schedule=schedule,
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
            title="S3 prefix",
            description="Prefix to list for a manual run (default: storage.videos_prefix).",
        ),
        "n_samples": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Budget: frames",
            description="Frames to select over the whole batch (wins over the proportion).",
        ),
        "proportion_samples": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            maximum=1,
            title="Budget: proportion",
            description="Fraction of the input frames to select (default: selection.* in the config).",
        ),
        "preset": Param(
            "config",
            type="string",
            enum=list(PRESETS),
            title="Selection strategy",
            description="config: the YAML's strategies; diverse; uncertain (diverse x uncertain); "
            "balanced (diverse x uncertain x class balance).",
        ),
        "dry_run": Param(
            False, type="boolean", title="Dry run", description="Stop after the selection, push nothing."
        ),
        "requeue": Param(
            [],
            type=["null", "array"],
            items={"type": "string"},
            title="Requeue",
            description="Failed videos to retry in this run: S3 keys, one per line, or 'failed' for every "
            "failed video (what `framesift videos requeue` does).",
        ),
        "requeue_reason": Param(
            None,
            type=["null", "string"],
            title="Requeue reason",
            description="Why (recorded on each requeued video), e.g. 'model file replaced'.",
        ),
    },
) as dag:
    check = CheckSetupOperator(
        task_id="check_setup", checks=(TRIGGER, STORAGE, MONGO, MODEL, LABELING), retries=2
    )
    register = RegisterUploadsOperator(task_id="register_uploads", prefix="{{ params.prefix or '' }}")
    check >> register
    extract = ExtractFramesOperator.partial(
        task_id="extract_frames",
        map_index_template=MAP_NAME,
        execution_timeout=timedelta(hours=2),
    ).expand(video=register.output)
    infer = InferOperator.partial(
        task_id="infer",
        map_index_template=MAP_NAME,
        pool="gpu",
        queue="gpu",
        execution_timeout=timedelta(hours=4),
        # runs for every video whose extraction succeeded, whatever happened to the others
        trigger_rule="all_done",
    ).expand(video=extract.output)
    plan = PlanSelectionOperator(task_id="plan_selection", videos=infer.output, trigger_rule="all_done")
    shards = SelectShardOperator.partial(
        task_id="select_shard",
        map_index_template="shard {{ task.shard['shard'] }}",
        execution_timeout=timedelta(hours=2),
    ).expand(shard=plan.output)
    select = SelectFramesOperator(
        task_id="select_frames",
        videos=infer.output,
        batch=register.output,  # videos an earlier run selected and never pushed are pushed too
        trigger_rule="all_done",
        outlets=[inference_asset(cfg)],  # new inference landed: schedules framesift_drift
    )
    shards >> select
    push = PushSequenceOperator.partial(
        task_id="push_to_labeling",
        map_index_template=MAP_NAME,
        execution_timeout=timedelta(hours=1),
    ).expand(video=select.output)
    summary = IngestSummaryOperator(task_id="summary", videos=register.output, trigger_rule="all_done")
    push >> summary
