"""One protocol for every labeling platform, and the plain data that crosses it.

A backend pushes one *image sequence* per video: the selected frames of that video in
time order, pre-annotated with our detector's boxes where the platform supports it.
Everything here is plain Python (no Airflow): the Airflow glue builds the credentials
dict from a connection and calls :func:`get_backend`.

Errors are typed so that callers (and Airflow retries) can tell them apart:

- :class:`BackendUnavailable`: 5xx, 429 (with ``retry_after`` seconds), timeouts,
  connection refused. Retryable.
- :class:`BadCredentials`: 401/403 or an unreadable key. Not retryable: fail fast.
- :class:`FrameMissing`: a frame is not in S3; names the S3 key. Not retryable.
- :class:`SequenceNotFound`: ids that the platform no longer knows (deleted by a person).
- :class:`BackendError`: any other refusal (a 4xx that retrying will not fix).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from framesift.config.schema import PipelineConfig
from framesift.io import layout

IN_QUEUE, IN_PROGRESS, DONE = "In queue", "In progress", "Done"
STATUSES = (IN_QUEUE, IN_PROGRESS, DONE)
Status = Literal["In queue", "In progress", "Done"]


# ------------------------------------------------------------------------ errors


class LabelingError(Exception):
    """Base of the labeling errors; ``retryable`` says whether trying again can help."""

    retryable = False


class BackendUnavailable(LabelingError):
    """The platform cannot answer now (5xx, 429, timeout, refused). Retry later."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class BadCredentials(LabelingError):
    """The platform refused the credentials (401/403) or they could not be read."""

    retryable = False


class BackendError(LabelingError):
    """The platform refused a request for a reason retrying will not fix (a 4xx)."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class FrameMissing(LabelingError):
    """A frame of the sequence is not in S3."""

    retryable = False

    def __init__(self, bucket: str, key: str, detail: str = ""):
        self.bucket, self.key = bucket, key
        super().__init__(f"frame missing in S3: s3://{bucket}/{key}" + (f" ({detail})" if detail else ""))


class SequenceNotFound(LabelingError):
    """The platform does not know these ids any more (e.g. a person deleted the task)."""

    retryable = False


# -------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ProjectRef:
    id: str
    url: str
    title: str = ""


@dataclass(frozen=True)
class Box:
    """One box in pixels from the frame's top-left corner: ``bbox = (x, y, w, h)``."""

    class_name: str
    bbox: tuple[int, int, int, int]
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"class_name": self.class_name, "bbox": list(self.bbox), "score": self.score}


@dataclass
class SequenceRequest:
    """One video's selected frames, to become one image sequence on the platform.

    ``frame_names`` are in time order (``build_request`` sorts them by frame index);
    ``predictions`` maps a frame name to its boxes (classes outside ``classes`` are left
    out of the pre-annotations); ``project`` names the platform project it goes to
    (:func:`project_for`; "": the backend's own).
    """

    idempotency_key: str
    title: str  # the book's "Name dataset"
    selection_id: str
    video_id: str
    video_key: str
    bucket: str
    frames_prefix: str
    frame_names: list[str]
    classes: list[str]
    predictions: dict[str, list[Box]] = field(default_factory=dict)
    model_version: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # for the labeler: each frame's time in the video (seconds) and why it was selected
    frame_times_s: dict[str, float] = field(default_factory=dict)
    frame_reasons: dict[str, str] = field(default_factory=dict)
    project: str = ""

    def frame_key(self, name: str) -> str:
        return f"{self.frames_prefix.rstrip('/')}/{name}"

    @property
    def frame_keys(self) -> list[str]:
        return [self.frame_key(n) for n in self.frame_names]


@dataclass
class PushedSequence:
    """Where a sequence lives on the platform: its ids (one per chunk), project and URL."""

    backend: str
    project_id: str
    ids: list[str]
    url: str
    n_frames: int
    idempotency_key: str = ""
    project_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_chunks(self) -> int:
        return len(self.ids)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SequenceStatus:
    labeling: Status
    reviewing: Status


@dataclass
class FrameAnnotation:
    """A person's labels on one frame (``boxes`` empty: the frame holds nothing to label)."""

    frame_name: str
    boxes: list[Box]
    annotator: str | None
    sequence_id: str  # the platform id of the chunk (LS task id, Encord data hash)
    annotation_id: str | None = None
    updated_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame_name": self.frame_name,
            "boxes": [b.to_dict() for b in self.boxes],
            "annotator": self.annotator,
            "sequence_id": self.sequence_id,
            "annotation_id": self.annotation_id,
            "updated_at": self.updated_at,
        }


# ---------------------------------------------------------------------- protocol


class CreateGuard(Protocol):
    """What a backend calls around each platform object it creates, so that a chunk is
    created at most once even when two attempts race (``labeling.creations`` keeps the
    records; :data:`NO_GUARD` when a backend is used on its own).

    ``begin(chunk)`` reserves the right to create the chunk (raises ``ClaimLost`` when
    another attempt holds it) and returns what an earlier attempt noted for it (e.g. an
    upload job still running); ``note(chunk, **info)`` records such facts; ``check(chunk)``
    comes right before the platform call (raises ``ClaimLost`` when this attempt lost its
    claim meanwhile); ``created(chunk, platform_id)`` records the object (raises
    ``ClaimLost`` when refused: the caller then deletes what it created, a zombie's
    duplicate).
    """

    def begin(self, chunk: int) -> dict[str, Any]: ...

    def note(self, chunk: int, **info: Any) -> None: ...

    def check(self, chunk: int) -> None: ...

    def created(self, chunk: int, platform_id: str) -> None: ...


class _NoGuard:
    """A guard that allows everything (a backend used outside the queue's push)."""

    def begin(self, chunk: int) -> dict[str, Any]:
        return {}

    def note(self, chunk: int, **info: Any) -> None:
        return None

    def check(self, chunk: int) -> None:
        return None

    def created(self, chunk: int, platform_id: str) -> None:
        return None


NO_GUARD: CreateGuard = _NoGuard()


@runtime_checkable
class LabelingBackend(Protocol):
    """What every labeling platform offers framesift."""

    name: str

    def ensure_project(self, ontology_classes: Sequence[str]) -> ProjectRef:
        """The project (created on first use) with at least these box classes."""
        ...

    def push_sequence(self, request: SequenceRequest, guard: CreateGuard = NO_GUARD) -> PushedSequence:
        """Create the sequence (resuming a half-made one: chunks already there are kept),
        each chunk's platform object inside ``guard`` (see :class:`CreateGuard`)."""
        ...

    def find_sequence(self, idempotency_key: str, project: str = "") -> PushedSequence | None:
        """The complete sequence with this key in ``project`` ("": the backend's own), or None."""
        ...

    def sequence_status(self, ids: Sequence[str]) -> SequenceStatus:
        """Labeling and reviewing status of a pushed sequence (all its chunks together)."""
        ...

    def export_annotations(self, ids: Sequence[str]) -> list[FrameAnnotation]:
        """Per-frame labels of the chunks that people have finished."""
        ...


# ------------------------------------------------------------------ the request


def idempotency_key(selection_id: str, video_id: str, backend: str) -> str:
    """The key of one video's push in one selection to one backend (stable, short)."""
    digest = hashlib.sha256(f"{selection_id}\x00{video_id}\x00{backend}".encode()).hexdigest()
    return f"fs-{digest[:24]}"


PROJECT_TITLE_MAX_LEN = 50  # Label Studio's limit on a project title (PROJECT_TITLE_MAX_LEN)


def project_for(cfg: PipelineConfig, video_key: str) -> str:
    """The labeling project of a video: ``labeling.project_name``, or with ``project_per:
    folder`` ``"<project_name> / <folder>"``, the folder below ``storage.videos_prefix``
    (videos directly under it stay in ``project_name``). A name over
    :data:`PROJECT_TITLE_MAX_LEN` characters is cut and ends with a hash of the whole name,
    so that two long folders never share a project."""
    name = cfg.labeling.project_name
    folder = layout.folder_under(video_key, cfg.storage.videos_prefix)
    if cfg.labeling.project_per != "folder" or not folder:
        return name
    title = f"{name} / {folder}"
    if len(title) <= PROJECT_TITLE_MAX_LEN:
        return title
    digest = hashlib.sha256(title.encode()).hexdigest()[:8]
    return f"{title[: PROJECT_TITLE_MAX_LEN - len(digest) - 1]}~{digest}"


def frame_index(name: str) -> int:
    """``bikes-042-mp4.png`` -> 42 (Lightly naming: ``<stem>-<index>-<ext>.<image ext>``)."""
    base = name.rsplit("/", 1)[-1]
    parts = base.rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return int(parts[1])
    raise ValueError(f"not a Lightly frame name (<stem>-<index>-<ext>.png): {name!r}")


def time_order(frame_names: Iterable[str]) -> list[str]:
    """Frame names by frame index, duplicates dropped."""
    return sorted(dict.fromkeys(frame_names), key=frame_index)


def boxes_from_lightly(
    prediction: Mapping[str, Any], categories: Mapping[int, str], classes: Sequence[str] | None = None
) -> list[Box]:
    """Boxes of one Lightly prediction file (``{"file_name", "predictions": [...]}``).

    ``categories`` maps category ids to names (the schema); boxes whose class is not in
    ``classes`` (when given) are left out.
    """
    wanted = set(classes) if classes else None
    out = []
    for pred in prediction.get("predictions") or []:
        name = categories.get(int(pred["category_id"]))
        if name is None or (wanted is not None and name not in wanted):
            continue
        x, y, w, h = (int(round(float(v))) for v in pred["bbox"])
        score = pred.get("score")
        out.append(Box(name, (x, y, w, h), None if score is None else float(score)))
    return out


def build_request(
    cfg: PipelineConfig,
    *,
    selection_id: str,
    video_id: str,
    video_key: str,
    frame_names: Iterable[str],
    predictions: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]] | None = None,
    schema: Mapping[str, Any] | None = None,
    model_version: str | None = None,
    title: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    frame_times_s: Mapping[str, float] | None = None,
    frame_reasons: Mapping[str, str] | None = None,
) -> SequenceRequest:
    """A push request for one video from the selection's frame names and Lightly predictions.

    ``predictions``: Lightly prediction dicts, either a list or a mapping keyed by frame
    name; ``schema``: the Lightly ``schema.json`` (``{"task_type", "categories": [{"id",
    "name"}]}``). The classes of the project are ``important_classes``, or all the schema's
    categories when that list is empty. The title is the video's S3 key (what a labeler
    knows it by), unless ``title`` is given; the project is :func:`project_for` the key.
    """
    names = time_order(frame_names)
    categories = {int(c["id"]): str(c["name"]) for c in (schema or {}).get("categories", [])}
    classes = list(cfg.important_classes) or [categories[k] for k in sorted(categories)]
    if predictions is None:
        pred_list: list[Mapping[str, Any]] = []
    elif isinstance(predictions, Mapping):
        pred_list = list(predictions.values())
    else:
        pred_list = list(predictions)
    selected = set(names)
    boxes: dict[str, list[Box]] = {}
    for pred in pred_list:
        name = str(pred.get("file_name", "")).rsplit("/", 1)[-1]
        if name in selected:
            boxes[name] = boxes_from_lightly(pred, categories, classes)
    backend = cfg.labeling.backend
    return SequenceRequest(
        idempotency_key=idempotency_key(selection_id, video_id, backend),
        title=title or video_key,
        selection_id=selection_id,
        video_id=video_id,
        video_key=video_key,
        bucket=cfg.storage.out_bucket,
        frames_prefix=layout.frames_prefix(cfg, video_id),
        frame_names=names,
        classes=classes,
        predictions=boxes,
        model_version=model_version,
        metadata=dict(metadata or {}),
        frame_times_s={n: float(t) for n, t in (frame_times_s or {}).items() if n in selected},
        frame_reasons={n: str(r) for n, r in (frame_reasons or {}).items() if n in selected},
        project=project_for(cfg, video_key),
    )


# --------------------------------------------------------------------- helpers


def chunk(items: Sequence[Any], max_size: int) -> list[list[Any]]:
    """Split into the fewest chunks of at most ``max_size``, sizes differing by at most one."""
    if max_size < 1:
        raise ValueError("max_size must be >= 1")
    n = len(items)
    if n == 0:
        return []
    n_chunks = math.ceil(n / max_size)
    base, extra = divmod(n, n_chunks)
    out, start = [], 0
    for i in range(n_chunks):
        size = base + (1 if i < extra else 0)
        out.append(list(items[start : start + size]))
        start += size
    return out


def combine_statuses(statuses: Sequence[SequenceStatus]) -> SequenceStatus:
    """One status for several chunks: Done when all are, In queue when all are, else In progress."""

    def one(values: list[str]) -> Status:
        if not values or all(v == IN_QUEUE for v in values):
            return IN_QUEUE
        if all(v == DONE for v in values):
            return DONE
        return IN_PROGRESS

    return SequenceStatus(
        labeling=one([s.labeling for s in statuses]), reviewing=one([s.reviewing for s in statuses])
    )


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG or JPEG from its header, without decoding it."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:2] == b"\xff\xd8":  # JPEG: walk the segments to a start-of-frame marker
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = struct.unpack(">H", data[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return int(width), int(height)
            i += 2 + length
    raise ValueError("not a PNG or JPEG image (cannot read its size)")


def clip_box(bbox: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """A pixel box ``(x, y, w, h)`` cut to the frame (detectors may overshoot an edge)."""
    x, y, w, h = (float(v) for v in bbox)
    x0, y0 = min(max(0.0, x), width), min(max(0.0, y), height)
    x1, y1 = min(max(0.0, x + w), width), min(max(0.0, y + h), height)
    return round(x0), round(y0), round(x1 - x0), round(y1 - y0)


def content_type(name: str) -> str:
    lower = name.lower()
    if lower.endswith((".jpg", ".jpeg")):
        return "image/jpeg"
    return "image/png"


def list_frame_keys(s3, bucket: str, prefix: str) -> set[str]:
    """Keys directly under ``prefix`` (one listing: cheaper than a HEAD per frame)."""
    keys: set[str] = set()
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


def check_frames_exist(s3, request: SequenceRequest) -> None:
    """Raise FrameMissing naming the first frame of the request that is not in S3."""
    present = list_frame_keys(s3, request.bucket, request.frames_prefix)
    for key in request.frame_keys:
        if key not in present:
            raise FrameMissing(request.bucket, key)


def read_frame(s3, bucket: str, key: str) -> bytes:
    """A frame's bytes; FrameMissing (naming the key) when it is not there."""
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:  # botocore ClientError; imported lazily by boto3
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FrameMissing(bucket, key) from None
        raise
