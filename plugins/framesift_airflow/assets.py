"""The assets that chain the DAGs: uploads (with its watcher: SQS notifications on AWS,
prefix listing elsewhere), new inference (schedules drift), new labels (schedules retrain)."""

from __future__ import annotations

import os

from airflow.sdk import Asset, AssetWatcher

from framesift.config.schema import PipelineConfig


def uploads_asset(cfg: PipelineConfig, config_path: str | None = None) -> Asset:
    uri = f"s3://{cfg.storage.bucket}/{cfg.storage.videos_prefix}"
    if cfg.discovery.mode == "sqs":
        from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

        queue_url = cfg.discovery.sqs_queue_url or os.environ["FRAMESIFT_SQS_QUEUE_URL"]
        trigger = MessageQueueTrigger(scheme="sqs", sqs_queue=queue_url, aws_conn_id=cfg.connections.aws)
    else:
        from framesift_airflow.triggers import NewVideosTrigger

        trigger = NewVideosTrigger(config_path=config_path)
    return Asset(
        name="framesift_uploads",
        uri=uri,
        watchers=[AssetWatcher(name="framesift_uploads_watcher", trigger=trigger)],
    )


def inference_asset(cfg: PipelineConfig | None = None) -> Asset:
    """Updated when an ingest run has new inference (predictions + embeddings) in S3; the
    drift DAG is scheduled on it. One fixed identity whatever the config: an asset name may
    map to one URI only, and an outlet whose name another DAG version maps elsewhere is
    refused as inactive (tests run with many output prefixes)."""
    return Asset(name="framesift_inference", uri="framesift://inference")


# a new training-set version: emitted by framesift_labels, schedules framesift_retrain
LABELS_ASSET = Asset(name="framesift/labels", uri="framesift://labels")
