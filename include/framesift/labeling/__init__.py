"""Labeling platforms behind one protocol (see ``base``): Label Studio and Encord.

``get_backend(cfg, credentials, s3)`` picks the one named by ``cfg.labeling.backend``;
``framesift.labeling_queue`` keeps the Mongo record of every pushed sequence and makes the
push exactly-once.
"""

from framesift.labeling.base import (
    DONE,
    IN_PROGRESS,
    IN_QUEUE,
    BackendError,
    BackendUnavailable,
    BadCredentials,
    Box,
    FrameAnnotation,
    FrameMissing,
    LabelingBackend,
    LabelingError,
    ProjectRef,
    PushedSequence,
    SequenceNotFound,
    SequenceRequest,
    SequenceStatus,
    build_request,
    frame_index,
    get_backend,
    idempotency_key,
)

__all__ = [
    "DONE",
    "IN_PROGRESS",
    "IN_QUEUE",
    "BackendError",
    "BackendUnavailable",
    "BadCredentials",
    "Box",
    "FrameAnnotation",
    "FrameMissing",
    "LabelingBackend",
    "LabelingError",
    "ProjectRef",
    "PushedSequence",
    "SequenceNotFound",
    "SequenceRequest",
    "SequenceStatus",
    "build_request",
    "frame_index",
    "get_backend",
    "idempotency_key",
]
