"""framesift_labels: labels back from the platform -> versioned training set -> review -> asset."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, CronTriggerTimetable

from framesift_airflow.assets import LABELS_ASSET
from framesift_airflow.operators.labeling import SyncLabelsOperator
from framesift_airflow.operators.loop import (
    ExportTrainingSetOperator,
    PublishLabelsOperator,
    ReviewLabelsOperator,
)

DOC = """
### framesift_labels

Every 15 minutes (and from *Trigger DAG*): brings finished labels back.

* **sync_labels**: Labeling/Reviewing status of the open `labeling_queue` records.
* **export_trainset**: finished sequences -> one Mongo `labels` document per frame (bad
  boxes clipped or rejected, with the reason on the document) -> a new training-set
  version `vNNNN` in S3 (images, YOLO labels, data.yaml; never overwritten), only when
  labels changed.
* **review_labels**: the new labels against the model's predictions (missed, spurious,
  class swaps, poor localisation; frames over `review.disagreement_threshold` go to
  `review_queue`), annotator accuracy and kappa on control frames; a ClearML task.
* **publish**: emits the asset `framesift/labels`, which schedules `framesift_retrain`;
  skipped when nothing new was exported.

**When it fails**: *sync_labels* / *export_trainset* failing on the labeling platform
(down, bad credentials in the `framesift_labeling` connection) retry with backoff; a
platform returning partial results exports what is complete and picks up the rest on the
next run. Annotations that cannot be used (boxes outside the image, unknown classes) do
not fail the run: they are clipped or rejected with the reason on their `labels`
document. A failed *review_labels* does not stop *publish*: the version is still used.
"""

with DAG(
    dag_id="framesift_labels",
    description="Labels back -> versioned training set -> review -> framesift/labels",
    doc_md=DOC,
    schedule=CronTriggerTimetable("*/15 * * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # versions are numbered in order; one sync at a time
    tags=["framesift", "labels"],
    default_args={
        "owner": "framesift",
        "retries": 3,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
    },
) as dag:
    sync = SyncLabelsOperator(task_id="sync_labels")
    export = ExportTrainingSetOperator(task_id="export_trainset")
    review = ReviewLabelsOperator(task_id="review_labels", export=export.output)
    # runs whatever the review did: a new version is published even if its review failed
    publish = PublishLabelsOperator(
        task_id="publish", export=export.output, outlets=[LABELS_ASSET], trigger_rule="all_done"
    )
    sync >> export >> review >> publish
