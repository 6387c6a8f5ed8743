"""Encord through its Python SDK (``encord``, imported when the backend is built).

Per push (one video): the selected frames (time order) are downloaded from S3 into a
temporary folder and uploaded as an **image sequence** into a storage folder (Encord
builds a video from them, so all frames of a sequence must share one size, which frames
of one video do), linked into the project's dataset (``Dataset.link_items``), and
pre-annotated: the label row of the new data unit gets one bounding-box object per
predicted box (coordinates normalised to 0..1, ``confidence`` = score,
``manual_annotation=False``), then ``save()``.

On first use ``ensure_project`` creates an ontology of bounding-box objects (one per
class), a dataset without a backing folder, the project (``create_project``), and a
storage folder named like the project; later calls find them by title/name and add any
missing classes to the ontology.

The upload job: Encord registers an image sequence asynchronously, in an upload job.
``StorageFolder.create_image_sequence`` starts the job and then polls it for up to 7
days without handing out its id, so a worker killed while it waits leaves a job running
that nobody knows about, and a retry that lists the folder before the job is done finds
nothing and uploads again. So the push does what that method does, in two steps: it
uploads the frames to the signed URLs and starts the job (``_start_upload``, the same
SDK calls as ``create_image_sequence`` in encord 0.1.211, pinned), notes the job id in
the push's create-once record (``labeling.creations``), and waits for it with
``add_private_data_to_folder_get_result`` for at most ``job_timeout_s`` (default 600 s;
the connection extra ``upload_job_timeout_s``) before it lists or links anything. A job
still running then is a clear, retryable error naming the job; the next try waits for
the same job instead of uploading again. A failed or cancelled job is a BackendError
with Encord's errors.

Keys: every item is titled ``<title> <key> part i of n`` and carries ``client_metadata``
``{framesift_key, chunk, n_chunks, frame_names, frame_width, frame_height, video_key,
video_id, selection_id}``; ``find_sequence`` lists the project's label rows whose data
title contains the key. A push resumes a half-made one: items already uploaded are
linked, not uploaded again; rows already in the project are not touched, except that
pre-annotations missing from a row (no labels saved yet) are added.

Chunking: at most ``max_frames_per_sequence`` frames per image sequence (default 500;
our own limit, I found no documented maximum; it keeps one upload and one label row a
manageable size); longer sequences become several items of balanced sizes.

Status: from the label row's workflow stage: a stage titled like "Complete" -> Done/Done;
a review stage -> labeling Done, reviewing In progress if a reviewer holds the task
(``ReviewStage.get_tasks`` status ASSIGNED/REOPENED/...), else In queue; an annotate stage
-> In progress if an annotator holds it, else In queue. Projects without a workflow use
``annotation_task_status`` (QUEUED, ASSIGNED, IN_REVIEW, RETURNED, COMPLETED).

Errors: ``AuthenticationError``/``AuthorisationError`` or an unreadable key ->
BadCredentials; ``RateLimitExceededError`` -> BackendUnavailable with its
``retry_after`` (the SDK itself already retries 429/5xx with back-off and honours
Retry-After); timeouts, connection and server errors -> BackendUnavailable; other SDK
errors -> BackendError. The SSH key is never logged or put into a message.

Tested against a fake at the SDK boundary (tests/unit/test_labeling.py; see the
docstring there for what that proves and what it does not): no local Encord server exists.

Size (~600 lines): one backend class against one SDK; the upload-job steps described
above (start, record, wait, recover) are most of it and belong together.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from framesift.config.schema import PipelineConfig
from framesift.labeling.base import (
    DONE,
    IN_PROGRESS,
    IN_QUEUE,
    NO_GUARD,
    BackendError,
    BackendUnavailable,
    BadCredentials,
    Box,
    CreateGuard,
    FrameAnnotation,
    LabelingError,
    ProjectRef,
    PushedSequence,
    SequenceNotFound,
    SequenceRequest,
    SequenceStatus,
    check_frames_exist,
    chunk,
    clip_box,
    combine_statuses,
    image_size,
    read_frame,
)
from framesift.labeling.encord_jobs import start_image_sequence, wait_for_job

log = logging.getLogger("framesift.labeling.encord")

DEFAULT_DOMAIN = "https://api.encord.com"
DEFAULT_MAX_FRAMES_PER_SEQUENCE = 500
DEFAULT_JOB_TIMEOUT_S = 600.0
KEY_FIELD = "framesift_key"

# legacy (non-workflow) projects: AnnotationTaskStatus -> (labeling, reviewing)
_LEGACY_STATUS = {
    "QUEUED": (IN_QUEUE, IN_QUEUE),
    "ASSIGNED": (IN_PROGRESS, IN_QUEUE),
    "RETURNED": (IN_PROGRESS, IN_PROGRESS),
    "IN_REVIEW": (DONE, IN_PROGRESS),
    "COMPLETED": (DONE, DONE),
}
_HELD = {"ASSIGNED", "REOPENED", "SKIPPED", "RELEASED"}  # a person has had the task


def _default_factory() -> Callable[..., Any]:
    from encord import EncordUserClient

    return EncordUserClient.create_with_ssh_private_key


def app_url(domain: str) -> str:
    """``https://api.encord.com`` -> ``https://app.encord.com`` (the web app of that API)."""
    domain = domain.rstrip("/")
    return domain.replace("://api.", "://app.", 1) if "://api." in domain else domain


class EncordBackend:
    name = "encord"
    tracks_review = True

    def __init__(
        self,
        s3,
        *,
        ssh_private_key: str,
        project_name: str,
        domain: str = DEFAULT_DOMAIN,
        client_factory: Callable[..., Any] | None = None,
        max_frames_per_sequence: int = DEFAULT_MAX_FRAMES_PER_SEQUENCE,
        folder_name: str | None = None,
        work_dir: str | None = None,
        job_timeout_s: float = DEFAULT_JOB_TIMEOUT_S,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_frames_per_sequence < 1:
            raise ValueError("max_frames_per_sequence must be >= 1")
        self.s3 = s3
        self._ssh_private_key = ssh_private_key
        self.domain = domain
        self.project_name = project_name
        self.folder_name = folder_name or project_name
        self.max_frames_per_sequence = max_frames_per_sequence
        self.work_dir = work_dir
        self.job_timeout_s = float(job_timeout_s)
        self._sleep, self._clock = sleep, clock
        self._factory = client_factory
        self._user_client: Any = None
        self._project: Any = None
        self._dataset: Any = None
        self._folder: Any = None

    def __repr__(self) -> str:  # never show the key
        return f"EncordBackend(domain={self.domain!r}, project={self.project_name!r})"

    @classmethod
    def from_credentials(
        cls, cfg: PipelineConfig, credentials: Mapping[str, Any], s3, **kwargs: Any
    ) -> EncordBackend:
        key = credentials.get("ssh_private_key") or credentials.get("password")
        if not key and credentials.get("ssh_private_key_path"):
            try:
                key = Path(str(credentials["ssh_private_key_path"])).expanduser().read_text()
            except OSError as exc:
                raise BadCredentials(f"cannot read the Encord SSH key file ({exc.strerror})") from None
        if not key:
            raise BadCredentials("the labeling connection has no Encord SSH private key")
        domain = credentials.get("domain") or credentials.get("host") or DEFAULT_DOMAIN
        if "://" not in str(domain):
            domain = f"https://{domain}"
        for name in ("max_frames_per_sequence", "folder_name"):
            if name in credentials and name not in kwargs:
                kwargs[name] = credentials[name]
        if "upload_job_timeout_s" in credentials and "job_timeout_s" not in kwargs:
            kwargs["job_timeout_s"] = float(credentials["upload_job_timeout_s"])
        if "max_frames_per_sequence" in kwargs:
            kwargs["max_frames_per_sequence"] = int(kwargs["max_frames_per_sequence"])
        return cls(
            s3, ssh_private_key=str(key), domain=str(domain), project_name=cfg.labeling.project_name, **kwargs
        )

    # --- SDK access with our error types

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except LabelingError:
            raise
        except Exception as exc:
            raise _translate(exc, what) from exc

    def _user(self) -> Any:
        if self._user_client is None:
            factory = self._factory or _default_factory()
            try:
                self._user_client = factory(self._ssh_private_key, domain=self.domain)
            except (ValueError, TypeError) as exc:
                # cryptography's message never contains the key itself
                raise BadCredentials(f"cannot use the Encord SSH private key: {exc}") from None
            except Exception as exc:
                raise _translate(exc, "connect") from exc
        return self._user_client

    # --- project, dataset, folder

    def _find_project(self) -> Any:
        if self._project is None:
            with self._errors("find project"):
                found = list(self._user().list_projects(title_eq=self.project_name))
            self._project = found[0] if found else None
        return self._project

    def _project_ref(self) -> ProjectRef:
        project = self._project
        return ProjectRef(
            id=str(project.project_hash),
            url=f"{app_url(self.domain)}/projects/view/{project.project_hash}/summary",
            title=self.project_name,
        )

    def ensure_project(self, ontology_classes: Sequence[str]) -> ProjectRef:
        from encord.objects import OntologyStructure, Shape
        from encord.orm.dataset import StorageLocation

        classes = list(dict.fromkeys(str(c) for c in ontology_classes))
        if not classes:
            raise ValueError("a labeling project needs at least one class (important_classes or the model's)")
        user = self._user()
        project = self._find_project()
        with self._errors("ensure project"):
            if project is None:
                structure = OntologyStructure()
                for name in classes:
                    structure.add_object(name=name, shape=Shape.BOUNDING_BOX)
                ontology = user.create_ontology(
                    title=f"{self.project_name} ontology",
                    description="bounding boxes, made by framesift",
                    structure=structure,
                )
                dataset = user.create_dataset(
                    dataset_title=self.project_name,
                    dataset_type=StorageLocation.CORD_STORAGE,
                    dataset_description="frames selected by framesift",
                    create_backing_folder=False,
                )
                project_hash = user.create_project(
                    project_title=self.project_name,
                    dataset_hashes=[dataset.dataset_hash],
                    project_description="frames selected by framesift, one image sequence per video",
                    ontology_hash=ontology.ontology_hash,
                )
                project = self._project = user.get_project(project_hash)
                log.info("created Encord project %r (%s)", self.project_name, project_hash)
            else:
                have = {obj.name for obj in project.ontology_structure.objects}
                missing = [c for c in classes if c not in have]
                if missing:
                    ontology = user.get_ontology(project.ontology_hash)
                    for name in missing:
                        ontology.structure.add_object(name=name, shape=Shape.BOUNDING_BOX)
                    ontology.save()
                    project.refetch_ontology()
                    log.info("added classes %s to the Encord ontology of %r", missing, self.project_name)
        return self._project_ref()

    def _get_dataset(self) -> Any:
        if self._dataset is None:
            with self._errors("find dataset"):
                datasets = list(self._project.list_datasets())
                if not datasets:
                    raise BackendError(f"Encord project {self.project_name!r} has no dataset attached")
                self._dataset = self._user().get_dataset(datasets[0].dataset_hash)
        return self._dataset

    def _get_folder(self, create: bool = True) -> Any:
        if self._folder is None:
            with self._errors("find storage folder"):
                user = self._user()
                found = [
                    f
                    for f in user.list_storage_folders(search=self.folder_name)
                    if f.name == self.folder_name
                ]
                if found:
                    self._folder = found[0]
                elif create:
                    self._folder = user.create_storage_folder(
                        name=self.folder_name, description="frames selected by framesift"
                    )
        return self._folder

    # --- sequences

    def _rows_with_key(self, key: str) -> dict[int, Any]:
        with self._errors("list label rows"):
            rows = self._project.list_label_rows_v2(data_title_like=f"%{key}%", include_client_metadata=True)
        out: dict[int, Any] = {}
        for row in rows:
            meta = row.client_metadata or {}
            if meta.get(KEY_FIELD) == key:
                out.setdefault(int(meta.get("chunk", 1)), row)
        return out

    def _pushed(self, key: str, rows: dict[int, Any]) -> PushedSequence:
        ordered = [rows[i] for i in sorted(rows)]
        project_url = self._project_ref().url
        first = ordered[0]
        return PushedSequence(
            backend=self.name,
            project_id=str(self._project.project_hash),
            ids=[str(r.data_hash) for r in ordered],
            url=f"{app_url(self.domain)}/label_editor/{first.data_hash}",
            n_frames=sum(len((r.client_metadata or {}).get("frame_names", [])) for r in ordered),
            idempotency_key=key,
            project_url=project_url,
            extra={"n_chunks": len(ordered)},
        )

    def find_sequence(self, idempotency_key: str, project: str = "") -> PushedSequence | None:
        """In this backend's one project (``project_per: folder`` is refused for Encord)."""
        if self._find_project() is None:
            return None
        rows = self._rows_with_key(idempotency_key)
        if not rows:
            return None
        n_chunks = int((next(iter(rows.values())).client_metadata or {}).get("n_chunks", 1))
        if len(rows) < n_chunks:
            return None  # half pushed: push_sequence completes it
        return self._pushed(idempotency_key, rows)

    def push_sequence(self, request: SequenceRequest, guard: CreateGuard = NO_GUARD) -> PushedSequence:
        if not request.frame_names:
            raise ValueError(f"sequence {request.title!r} has no frames")
        key = request.idempotency_key
        self.ensure_project(request.classes)
        chunks = chunk(request.frame_names, self.max_frames_per_sequence)
        n = len(chunks)
        rows = self._rows_with_key(key)
        todo = [i for i in range(1, n + 1) if i not in rows]
        if todo:
            folder = self._get_folder()
            dataset = self._get_dataset()
            items = self._items_with_key(folder, key)
            if any(i not in items for i in todo):
                check_frames_exist(self.s3, request)  # before uploading anything
            for i in todo:
                names = chunks[i - 1]
                noted = guard.begin(i)
                if i in items:
                    item_uuid = items[i].uuid
                    log.info("%s part %d/%d was uploaded before; linking it", request.title, i, n)
                elif noted.get("job"):
                    log.info(
                        "%s part %d/%d: waiting for the upload job %s an earlier try started",
                        request.title,
                        i,
                        n,
                        noted["job"],
                    )
                    item_uuid = self._wait_job(folder, noted["job"], request.title, i, n)
                else:
                    guard.check(i)
                    job = self._start_upload(folder, request, names, i, n)
                    guard.note(i, job=str(job), folder=str(folder.uuid))
                    item_uuid = self._wait_job(folder, job, request.title, i, n)
                with self._errors("link items"):
                    linked = dataset.link_items([item_uuid])
                if not linked:
                    raise BackendError(f"Encord linked nothing for item {item_uuid} of {request.title!r}")
                guard.created(i, str(item_uuid))
                log.info(
                    "pushed %s part %d/%d (%d frames) as Encord data unit %s",
                    request.title,
                    i,
                    n,
                    len(names),
                    linked[0].uid,
                )
            rows = self._rows_with_key(key)
            missing = [i for i in range(1, n + 1) if i not in rows]
            if missing:
                raise BackendUnavailable(
                    f"Encord does not list parts {missing} of {request.title!r} in the project yet; retry"
                )
        for i in range(1, n + 1):
            self._pre_annotate(rows[i], request, chunks[i - 1])
        return self._pushed(key, rows)

    def _items_with_key(self, folder: Any, key: str) -> dict[int, Any]:
        """The storage items (finished uploads) of this key, by chunk."""
        with self._errors("list storage items"):
            items: dict[int, Any] = {}
            for item in folder.list_items(search=key):
                meta = item.client_metadata or {}
                if meta.get(KEY_FIELD) == key:
                    items.setdefault(int(meta.get("chunk", 1)), item)
        return items

    def _start_upload(self, folder: Any, request: SequenceRequest, names: list[str], i: int, n: int) -> Any:
        """Upload one chunk's frames and start its upload job; the job id."""
        title = f"{request.title} {request.idempotency_key} part {i} of {n}"
        with tempfile.TemporaryDirectory(prefix="framesift-encord-", dir=self.work_dir) as tmp:
            paths, size = [], None
            for name in names:
                data = read_frame(self.s3, request.bucket, request.frame_key(name))
                size = size or image_size(data)
                path = Path(tmp) / name
                path.write_bytes(data)
                paths.append(path)
            meta = {
                KEY_FIELD: request.idempotency_key,
                "chunk": i,
                "n_chunks": n,
                "frame_names": names,
                "frame_width": size[0] if size else None,
                "frame_height": size[1] if size else None,
                "video_key": request.video_key,
                "video_id": request.video_id,
                "selection_id": request.selection_id,
            }
            with self._errors("upload image sequence"):
                return start_image_sequence(folder, paths, title, meta)

    def _wait_job(self, folder: Any, job: Any, title: str, i: int, n: int) -> Any:
        with self._errors("upload job status"):
            return wait_for_job(
                folder,
                job,
                f"{title!r} part {i} of {n}",
                timeout_s=self.job_timeout_s,
                sleep=self._sleep,
                clock=self._clock,
            )

    def _pre_annotate(self, row: Any, request: SequenceRequest, names: list[str]) -> None:
        if not any(request.predictions.get(name) for name in names):
            return
        if row.label_hash is not None:
            return  # labels saved already (ours on an earlier try, or a person's): leave them
        from encord.objects import Object
        from encord.objects.coordinates import BoundingBoxCoordinates

        meta = row.client_metadata or {}
        width, height = meta.get("frame_width"), meta.get("frame_height")
        if not (width and height):
            width, height = row.width, row.height
        with self._errors("pre-annotate"):
            ontology = self._project.ontology_structure
            row.initialise_labels()
            added = 0
            for index, name in enumerate(names):
                for box in request.predictions.get(name, []):
                    try:
                        cls = ontology.get_child_by_title(title=box.class_name, type_=Object)
                    except Exception:
                        continue  # not in the ontology
                    x, y, w, h = clip_box(box.bbox, width, height)
                    if w <= 0 or h <= 0:
                        continue
                    coords = BoundingBoxCoordinates(
                        height=_unit(h / height),
                        width=_unit(w / width),
                        top_left_x=_unit(x / width),
                        top_left_y=_unit(y / height),
                    )
                    instance = cls.create_instance()
                    instance.set_for_frames(
                        coords,
                        frames=index,
                        confidence=1.0 if box.score is None else float(box.score),
                        manual_annotation=False,
                    )
                    row.add_object_instance(instance)
                    added += 1
            if added:
                row.save()

    # --- status and export

    def _rows(self, ids: Sequence[str], **kwargs: Any) -> list[Any]:
        if self._find_project() is None:
            raise SequenceNotFound(f"Encord project {self.project_name!r} does not exist")
        with self._errors("list label rows"):
            rows = self._project.list_label_rows_v2(data_hashes=list(ids), **kwargs)
        by_hash = {str(r.data_hash): r for r in rows}
        missing = [i for i in ids if str(i) not in by_hash]
        if missing:
            raise SequenceNotFound(
                f"Encord project {self.project_name!r} has no data units {missing} (deleted?)"
            )
        return [by_hash[str(i)] for i in ids]

    def _row_status(self, row: Any) -> SequenceStatus:
        node = row.workflow_graph_node
        if node is None:
            status = getattr(row.annotation_task_status, "value", str(row.annotation_task_status))
            labeling, reviewing = _LEGACY_STATUS.get(str(status).upper(), (IN_QUEUE, IN_QUEUE))
            return SequenceStatus(labeling, reviewing)
        title = (node.title or "").lower()
        if "complete" in title or "done" in title:
            return SequenceStatus(DONE, DONE)
        with self._errors("workflow tasks"):
            stage = self._project.workflow.get_stage(uuid=node.uuid)
            tasks = list(stage.get_tasks(data_hash=[row.data_hash]))
        held = any(str(getattr(t.status, "value", t.status)).upper() in _HELD for t in tasks)
        if "review" in title:
            return SequenceStatus(DONE, IN_PROGRESS if held else IN_QUEUE)
        return SequenceStatus(IN_PROGRESS if held else IN_QUEUE, IN_QUEUE)

    def sequence_status(self, ids: Sequence[str]) -> SequenceStatus:
        return combine_statuses([self._row_status(r) for r in self._rows(ids)])

    def export_annotations(self, ids: Sequence[str]) -> list[FrameAnnotation]:
        """Frames of the data units whose labeling is Done (in review or complete)."""
        out: list[FrameAnnotation] = []
        for row in self._rows(ids, include_client_metadata=True):
            if self._row_status(row).labeling != DONE:
                continue
            meta = row.client_metadata or {}
            names = list(meta.get("frame_names", []))
            width = meta.get("frame_width") or row.width
            height = meta.get("frame_height") or row.height
            with self._errors("read labels"):
                row.initialise_labels()
                instances = list(row.get_object_instances())
            boxes: dict[int, list[Box]] = {i: [] for i in range(len(names))}
            who: dict[int, Counter] = {i: Counter() for i in range(len(names))}
            everyone: Counter = Counter()
            for instance in instances:
                for ann in instance.get_annotations():
                    if ann.frame not in boxes:
                        continue
                    c = ann.coordinates
                    x0, y0 = round(c.top_left_x * width), round(c.top_left_y * height)
                    x1, y1 = (
                        round((c.top_left_x + c.width) * width),
                        round((c.top_left_y + c.height) * height),
                    )
                    bbox = (
                        max(0, x0),
                        max(0, y0),
                        max(0, min(width, x1) - max(0, x0)),
                        max(0, min(height, y1) - max(0, y0)),
                    )
                    boxes[ann.frame].append(Box(instance.object_name, bbox))
                    person = ann.last_edited_by or ann.created_by
                    if person:
                        who[ann.frame][person] += 1
                        everyone[person] += 1
            default = everyone.most_common(1)[0][0] if everyone else None
            for i, name in enumerate(names):
                annotator = who[i].most_common(1)[0][0] if who[i] else default
                out.append(
                    FrameAnnotation(
                        frame_name=name,
                        boxes=boxes[i],
                        annotator=annotator,
                        sequence_id=str(row.data_hash),
                        annotation_id=row.label_hash,
                        updated_at=str(row.last_edited_at) if getattr(row, "last_edited_at", None) else None,
                    )
                )
        return out


def _unit(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


def _translate(exc: Exception, what: str) -> LabelingError:
    """An SDK/transport exception -> one of ours (the message names the operation)."""
    import requests

    try:
        from encord import exceptions as ex
    except ImportError:  # pragma: no cover - encord is a runtime dependency
        ex = None
    name = type(exc).__name__
    if ex is not None:
        if isinstance(exc, ex.AuthenticationError | ex.AuthorisationError):
            return BadCredentials(
                f"Encord refused the credentials on {what} ({name}); check the SSH key and domain "
                "in the labeling connection"
            )
        if isinstance(exc, ex.RateLimitExceededError):
            return BackendUnavailable(
                f"Encord is rate limiting ({what})", retry_after=getattr(exc, "retry_after", None), status=429
            )
        if isinstance(
            exc, ex.TimeOutError | ex.RequestException | ex.GenericServerError | ex.UnknownException
        ):
            return BackendUnavailable(
                f"Encord unavailable on {what} ({name}: {getattr(exc, 'message', exc)})"
            )
        if isinstance(exc, ex.ResourceNotFoundError):
            return SequenceNotFound(f"Encord has no such resource on {what} ({getattr(exc, 'message', exc)})")
        if isinstance(exc, ex.EncordException):
            return BackendError(f"Encord refused {what} ({name}: {getattr(exc, 'message', exc)})")
    if isinstance(exc, requests.Timeout | requests.ConnectionError | ConnectionError | TimeoutError):
        return BackendUnavailable(f"cannot reach Encord on {what} ({name})")
    return BackendError(f"Encord {what} failed ({name}: {exc})")
