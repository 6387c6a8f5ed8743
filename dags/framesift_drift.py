"""framesift_drift: recent frames vs the reference -> incidents -> on-call alerts -> labeling."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable

from framesift.config.loading import load_config_for_wiring
from framesift_airflow.assets import inference_asset
from framesift_airflow.operators.drift import (
    DeliverAlertsOperator,
    DriftLabelingOperator,
    DriftRunRecordOperator,
    DriftSignalsOperator,
    UpdateIncidentsOperator,
)
from framesift_airflow.operators.setup import MONGO, STORAGE, CheckSetupOperator

# a config that does not load still gives a listed DAG whose check_setup fails with the message
cfg, config_problem = load_config_for_wiring()
inferred = inference_asset(cfg)
schedule = (
    AssetOrTimeSchedule(timetable=CronTriggerTimetable(cfg.drift.schedule, timezone="UTC"), assets=[inferred])
    if cfg.drift.schedule
    else [inferred]
)

DOC = """
### framesift_drift

Notices when production video stops looking like the video the model knows, tells on-call
once per incident, and sends the frames that show the change to labeling.

* **Triggers**: `drift.schedule` (hourly) and the `framesift_inference` asset, which
  `framesift_ingest` updates when new inference lands.
* **compute_signals**: the latest `drift.window_frames` frames (per source) against the
  reference (`drift.reference_prefix`, else the earliest inferred videos): uncertainty rise,
  embedding MMD, class distribution PSI / Jensen-Shannon, outlier rate, committee
  disagreement. The report goes to S3 (`<output_prefix>/drift/reports/`), as JSON and as
  a page for on-call (HTML: each signal vs its threshold, plots, the most drifted frames;
  link: *Drift report*).
* **record_run**: a ClearML task with each statistic vs its threshold, the class
  histograms and the PCA scatter (link: *ClearML run*).
* **update_incidents**: Mongo `alerts`, one incident per signal family and source; a window
  counts once, so re-runs change nothing; resolves after `drift.alerts.resolve_after_windows`
  normal windows.
* **deliver_alerts**: sends the outbox (Slack-compatible webhook, SMTP) for new and
  escalated incidents, and whatever an earlier run could not send.
* **queue_for_labeling**: selects the most drifted frames of each alarming window and
  holds them for on-call (`framesift drift ack ID` approves, `--no-labeling` drops); sends
  the approved ones as labeling sequences tagged `drift` (exactly once); the incidents
  record the sequences' links (later alerts carry them).
  `drift.labeling.mode: auto` sends them at once.

**When it fails**: a failed *deliver_alerts* names the channel and the error (connection
missing, webhook down); the alert waits in Mongo `alert_outbox` and the next run sends it.
*compute_signals* failing on S3/Mongo retries. `framesift drift report` shows the current
signals and open incidents. On-call: docs/operations.md, "On-call: drift alerts".
"""

if config_problem:
    DOC = (
        f"**The pipeline config does not load**: `{config_problem}`. Every run fails at "
        "`check_setup` until it is fixed (`framesift config` checks it).\n\n" + DOC
    )

with DAG(
    dag_id="framesift_drift",
    description=(
        f"CONFIG ERROR: {config_problem[:200]}"
        if config_problem
        else "Drift signals on recent frames -> incidents -> alerts -> drifted frames to labeling"
    ),
    doc_md=DOC,
    schedule=schedule,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # incidents are updated by one run at a time
    tags=["framesift", "drift"],
    default_args={
        "owner": "framesift",
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
    },
) as dag:
    check = CheckSetupOperator(task_id="check_setup", checks=(STORAGE, MONGO))
    signals = DriftSignalsOperator(task_id="compute_signals", execution_timeout=timedelta(minutes=30))
    check >> signals
    recorded = DriftRunRecordOperator(task_id="record_run", signals=signals.output)
    incidents = UpdateIncidentsOperator(task_id="update_incidents", signals=recorded.output)
    labeling = DriftLabelingOperator(
        task_id="queue_for_labeling", signals=recorded.output, execution_timeout=timedelta(minutes=30)
    )
    # one quick retry for a blip; after that the alert waits in the outbox for the next run
    deliver = DeliverAlertsOperator(task_id="deliver_alerts", retries=1, retry_delay=timedelta(seconds=5))
    incidents >> [deliver, labeling]
