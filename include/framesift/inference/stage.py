"""The inference stage of an ingest run: claim an extracted video, run the detector over
its frames, record the outcome in the registry.
"""

from __future__ import annotations

import logging
from typing import Any

from pymongo.database import Database

from framesift.config.schema import PipelineConfig
from framesift.inference.models import ModelError
from framesift.inference.streaming import run_inference
from framesift.ingest import registry
from framesift.ingest.registry import (
    DISCOVERED,
    EXTRACTED,
    EXTRACTING,
    INFERRED,
    INFERRING,
    VideoRef,
    run_stage,
    stage_outcome,
)
from framesift.ingest.stage import extraction_outcome
from framesift.io.model_registry import serving_config
from framesift.io.s3 import get_json, parse_s3_uri

log = logging.getLogger("framesift.ingest")


def infer_one(
    s3, db: Database, cfg: PipelineConfig, ref: VideoRef, *, run_id: str, detector=None
) -> dict[str, Any]:
    """Claim an extracted video, run the detector over its frames, record the outcome.

    Predictions (Lightly layout) and embeddings go to S3; the registry keeps their URIs
    and per-class counts. A video with zero frames is recorded as inferred with no
    predictions.
    """

    def work():
        current = registry.get(db, ref.video_id) or {}
        bucket, key = parse_s3_uri(current["manifest_uri"])
        manifest = get_json(s3, bucket, key)
        # the champion of the model registry, when there is one (training.serve_champion)
        summary = run_inference(s3, serving_config(db, cfg, log), manifest, detector=detector, log=log)
        return INFERRED, None, {"inference": inference_fields(summary)}

    doc, did = run_stage(db, ref, run_id, working=INFERRING, from_statuses=[EXTRACTED], work=work)
    return stage_outcome(ref, doc, skipped=not did)


def extract_and_infer_one(
    s3, db: Database, cfg: PipelineConfig, ref: VideoRef, *, run_id: str, work_dir: str, detector=None
) -> dict[str, Any]:
    """Claim a new video, extract its frames and run the detector over them as they are
    decoded (:mod:`framesift.inference.overlap`); record both stages. Bad input ends
    ``quarantined``; a video another run already extracted is left to its ``infer`` task.
    A model that does not load does not stop the extraction: the video is extracted alone
    and its ``infer`` task fails on the model, so the failure is recorded where it is."""
    from framesift.inference.detector import Detector  # torch loads only where a model runs
    from framesift.inference.overlap import extract_and_infer  # PyAV loads only where frames are decoded
    from framesift.ingest.extract import extract_to_s3  # PyAV, as above

    done: dict[str, Any] = {}

    def extract_work():
        serving = serving_config(db, cfg, log)
        model = detector
        if model is None:
            try:
                model = Detector.from_config(serving, s3, log=log)
            except ModelError as exc:
                log.warning("%s: extracting without inference: the model does not load (%s)", ref.key, exc)
                return extraction_outcome(
                    ref, extract_to_s3(s3, ref.bucket, ref.key, ref.etag, cfg, work_dir=work_dir, log=log)
                )
        manifest, summary = extract_and_infer(
            s3, ref.bucket, ref.key, ref.etag, serving, work_dir=work_dir, detector=model, log=log
        )
        done["summary"] = summary
        return extraction_outcome(ref, manifest)

    doc, did = run_stage(db, ref, run_id, working=EXTRACTING, from_statuses=[DISCOVERED], work=extract_work)
    if did and done.get("summary") is not None and doc.get("status") == EXTRACTED:
        doc, _ = run_stage(
            db,
            ref,
            run_id,
            working=INFERRING,
            from_statuses=[EXTRACTED],
            work=lambda: (INFERRED, None, {"inference": inference_fields(done["summary"])}),
        )
    return stage_outcome(ref, doc, skipped=not did)


def inference_fields(summary: dict[str, Any]) -> dict[str, Any]:
    """What the ``videos`` record keeps of an inference summary."""
    keep = (
        "frames",
        "frames_failed",
        "frames_cascade_skipped",  # null: the cascade was off
        "frames_damaged_excluded",
        "boxes",
        "counts",
        "fps",
        "elapsed_s",
        "model_uri",
        "model_version",
        "device",
        "task_name",
        "embedding_model",
        "embedding_model_id",
        "embeddings_uri",
        "runtime",
        "imgsz",
        "predictions_prefix",
        "datasource_root",
        "failed_frames",
        "overlapped",
    )
    return {k: summary.get(k) for k in keep}
