"""framesift_retrain: on new labels, the stopping criteria decide; retrain, evaluate, promote."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from framesift_airflow.assets import LABELS_ASSET
from framesift_airflow.operators.loop import (
    EvaluateOperator,
    PromoteOperator,
    RecordTrainingRunOperator,
    RetrainGateOperator,
    TrainOperator,
)

DOC = """
### framesift_retrain

Scheduled on the asset `framesift/labels` (a new training-set version), or triggered by hand.

* **decide**: every stopping criterion of `evaluation:` (targets and their stability,
  diminishing returns, overfitting, budgets, new labels, the test set) -> a `decisions`
  document. *continue* runs the rest; *hold* and *stop* skip it (the log and the document
  say which criterion decided, with its value and threshold).
* **train** (pool and queue `gpu`): ultralytics on the latest training-set version, from the
  champion; checkpoint to S3 under a new key, a `models` document with the lineage. A
  failure is recorded there and the champion stays.
* **evaluate**: mAP50-95, mAP50, precision, recall, accuracy on the frozen test set.
* **promote**: champion only if better than it by `training.promotion_margin`; then the
  criteria again on the new numbers (a second `decisions` document). The next ingest's
  inference uses the champion.
* **record**: one ClearML training task per run (also after a failed training).

**When it fails**: a failed *train* has its error on its `models` document (status
`failed`) and in its log; the champion stays and serves ingest. It retries once (a worker
lost mid-run); a real training error (bad data, out of memory) needs a look at the log,
then *Clear* the task. A failed *evaluate* names the test set: a missing or changed
`evaluation.test_set` is refused rather than compared across versions. *decide* skipping
the rest is not a failure: the `decisions` document says why (docs/concepts.md, "How to
read a decision").
"""

with DAG(
    dag_id="framesift_retrain",
    description="Stopping criteria -> train -> evaluate -> promote",
    doc_md=DOC,
    schedule=[LABELS_ASSET],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["framesift", "retrain"],
    default_args={
        "owner": "framesift",
        "retries": 1,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
    },
) as dag:
    decide = RetrainGateOperator(task_id="decide", retries=3)
    train = TrainOperator(task_id="train", pool="gpu", queue="gpu", execution_timeout=timedelta(hours=12))
    evaluate = EvaluateOperator(task_id="evaluate", model=train.output, pool="gpu", queue="gpu")
    promote = PromoteOperator(task_id="promote", model=evaluate.output)
    record = RecordTrainingRunOperator(task_id="record", trigger_rule="all_done")
    decide >> train >> evaluate >> promote >> record
