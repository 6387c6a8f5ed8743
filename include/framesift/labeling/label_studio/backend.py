"""Label Studio over its REST API, with ``requests`` only (no SDK in Airflow's env).

Image sequences
    One *multi-image task* per video (per chunk of a long one): the labeling config's
    ``<Image name="frames" valueList="$images"/>`` shows the task's list of images with a
    pager, and ``<RectangleLabels toName="frames">`` draws boxes on each of them; every
    region carries ``item_index``, the position of its image in the list (Label Studio's
    "multi-page document" support, used here for frames in time order). Checked against
    Label Studio 1.23.2: tasks, predictions and annotations with ``item_index`` round-trip
    through the API. Task data: ``images`` (URLs), ``frame_names``, ``framesift_key``
    (the idempotency key), ``chunk``/``n_chunks``, ``title`` (the video's S3 key),
    ``video_key``, ``video_id``, ``selection_id``, and for the labeler (columns of the
    Data Manager): ``n_frames``, ``frame_times_s`` (each frame's time in the video),
    ``time_span`` and ``frame_reasons`` (why each frame was selected: pick rank and
    objective values).

Projects
    Each request names its project (``request.project``: ``labeling.project_name``, or one
    per video folder with ``labeling.project_per: folder``; "" means ``project_name``); a
    project is found by its title or created with the labeling config below, once per
    backend (cached by title). Two pushes that create the same new project at once both
    keep the oldest (lowest id) and delete their own if it is not that one.

How frames reach Label Studio
    Uploaded: frames are read from S3 and sent to ``POST /api/projects/<id>/import
    ?commit_to_project=false`` (files only, no tasks), then the task is created with the
    returned ``/data/upload/...`` URLs. Label Studio serves them itself, to logged-in users
    only. Why not presigned S3 URLs: SigV4 presigned URLs live 7 days at most while a
    sequence may wait longer in the queue, and the annotator's browser would need to
    reach the bucket (a loopback S3 is not reachable from anyone else's browser). An S3
    "source storage" connection would avoid the copy, but hands Label Studio S3
    credentials; uploading needs nothing but the API token and works wherever the API
    does. Only the selected frames are copied (hundreds per video).

Limits (Label Studio's defaults, which we stay under)
    ``DATA_UPLOAD_MAX_NUMBER_FILES`` = 100 files and ``DATA_UPLOAD_MAX_MEMORY_SIZE`` =
    250 MB per request: we upload at most 50 files / 64 MB per request. Frames per task:
    ``max_frames_per_task`` (default 100; our choice, the multi-image pager stays usable
    and one task's JSON stays small); longer sequences become several tasks ("part i of
    n") of balanced sizes sharing the key.

Pre-annotations
    ``predictions`` on the task, ``model_version`` the model's name and weights hash
    (``yolov3-tiny@1a2b3c4d``), boxes converted from pixels to
    Label Studio's percent coordinates (``px_to_ls``), ``original_width/height`` from the
    frame's PNG header.

Idempotency
    ``push_sequence`` first lists the tasks carrying the request's key and creates only the
    missing chunks, so a retry after a crash never duplicates a task (files uploaded
    before a crash and never used stay behind as unreferenced uploads). Each task is
    created inside the push's create-once guard (``labeling.creations``): only the
    attempt holding the queue record's claim creates it, right after checking it still
    does; a task whose creation the guard then refuses (a zombie's) is deleted again.

Errors
    401/403 -> BadCredentials (at once); 429 -> waits ``Retry-After`` seconds (up to
    ``max_retry_after_s``, ``max_429_retries`` times) then BackendUnavailable with
    ``retry_after``; 5xx, timeouts, refused connections -> BackendUnavailable. The token is
    never put in a message or log line.

Tokens
    A legacy token (``Authorization: Token ...``; the server needs
    ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true``) or a personal access token (a JWT
    refresh token, exchanged at ``/api/token/refresh/`` for a short-lived access token).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from framesift.config.schema import PipelineConfig
from framesift.io.layout import format_time
from framesift.io.leases import ClaimLost
from framesift.labeling.base import (
    DONE,
    IN_PROGRESS,
    IN_QUEUE,
    NO_GUARD,
    BackendError,
    BadCredentials,
    Box,
    CreateGuard,
    FrameAnnotation,
    ProjectRef,
    PushedSequence,
    SequenceNotFound,
    SequenceRequest,
    SequenceStatus,
    check_frames_exist,
    chunk,
    clip_box,
    combine_statuses,
    content_type,
    image_size,
    read_frame,
)
from framesift.labeling.label_studio.client import LabelStudioClient
from framesift.labeling.label_studio.tasks import (
    FROM_NAME,
    KEY_FIELD,
    TO_NAME,
    config_labels,
    label_config,
    ls_to_px,
    px_to_ls,
)

log = logging.getLogger("framesift.labeling.label_studio")


DEFAULT_MAX_FRAMES_PER_TASK = 100


UPLOAD_MAX_FILES = 50  # Label Studio: DATA_UPLOAD_MAX_NUMBER_FILES = 100 per request


UPLOAD_MAX_BYTES = 64 * 1024 * 1024  # Label Studio: DATA_UPLOAD_MAX_MEMORY_SIZE = 250 MB


PAGE_SIZE = 100


class LabelStudioBackend:
    name = "label_studio"

    def __init__(
        self,
        client: LabelStudioClient,
        s3,
        *,
        project_name: str,
        max_frames_per_task: int = DEFAULT_MAX_FRAMES_PER_TASK,
        description: str = "Frames selected by framesift (one task per video sequence)",
        tracks_review: bool = False,
    ):
        if max_frames_per_task < 1:
            raise ValueError("max_frames_per_task must be >= 1")
        self.client = client
        self.s3 = s3
        self.project_name = project_name
        self.max_frames_per_task = max_frames_per_task
        self.description = description
        # Label Studio Enterprise has a review step (review counts on tasks); Community has none
        self.tracks_review = tracks_review
        self._projects: dict[str, dict[str, Any]] = {}  # by title

    def __repr__(self) -> str:
        return f"LabelStudioBackend(url={self.client.url!r}, project={self.project_name!r})"

    @classmethod
    def from_credentials(
        cls, cfg: PipelineConfig, credentials: Mapping[str, Any], s3, **kwargs: Any
    ) -> LabelStudioBackend:
        url = _url_from(credentials)
        token = credentials.get("token") or credentials.get("api_key") or credentials.get("password")
        if not url:
            raise BadCredentials("the labeling connection has no Label Studio URL (host or url)")
        if not token:
            raise BadCredentials("the labeling connection has no Label Studio API token (token or password)")
        client_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _CLIENT_KWARGS}
        for key in ("timeout_s",):
            if key in credentials:
                client_kwargs["timeout"] = (5.0, float(credentials[key]))
        if "max_frames_per_task" in credentials and "max_frames_per_task" not in kwargs:
            kwargs["max_frames_per_task"] = int(credentials["max_frames_per_task"])
        if "enterprise_reviews" in credentials and "tracks_review" not in kwargs:
            kwargs["tracks_review"] = str(credentials["enterprise_reviews"]).lower() in ("1", "true", "yes")
        client = LabelStudioClient(url, str(token), **client_kwargs)
        return cls(client, s3, project_name=cfg.labeling.project_name, **kwargs)

    def check_access(self) -> None:
        """The server answers and accepts the token (BadCredentials / BackendUnavailable)."""
        self.client.get_json("/api/current-user/whoami")

    # --- project

    def _find_project(self, title: str) -> dict[str, Any] | None:
        """The project with this title (the oldest, should two pushes have made it at once)."""
        if title in self._projects:
            return self._projects[title]
        found = None
        page = 1
        while True:
            data = self.client.get_json(
                "/api/projects", params={"title": title, "page": page, "page_size": PAGE_SIZE}
            )
            results = (data or {}).get("results", []) if isinstance(data, dict) else (data or [])
            for project in results:
                if project.get("title") == title and (found is None or project["id"] < found["id"]):
                    found = project
            if not isinstance(data, dict) or not data.get("next"):
                break
            page += 1
        if found is not None:
            self._projects[title] = found
        return found

    def _create_project(self, title: str, classes: list[str]) -> dict[str, Any]:
        resp = self.client.request(
            "POST",
            "/api/projects",
            json={"title": title, "description": self.description, "label_config": label_config(classes)},
        )
        created = resp.json()
        # two pushes may create the same new project at once: each keeps the oldest and
        # deletes its own (still empty) one if that is not it
        project = self._find_project(title) or created
        if project["id"] != created["id"]:
            self.client.request("DELETE", f"/api/projects/{int(created['id'])}")
            log.info("another push created Label Studio project %r first (id %s)", title, project["id"])
        else:
            log.info("created Label Studio project %r (id %s)", title, project["id"])
        return project

    def _project_ref(self, project: Mapping[str, Any]) -> ProjectRef:
        pid = project["id"]
        return ProjectRef(id=str(pid), url=f"{self.client.url}/projects/{pid}/data", title=project["title"])

    def _ensure_project(self, title: str, ontology_classes: Sequence[str]) -> dict[str, Any]:
        classes = list(dict.fromkeys(str(c) for c in ontology_classes))
        if not classes:
            raise ValueError("a labeling project needs at least one class (important_classes or the model's)")
        project = self._find_project(title) or self._create_project(title, classes)
        have = config_labels(project.get("label_config", ""))
        missing = [c for c in classes if c not in have]
        if missing:  # add classes; never drop one (annotations may use it)
            resp = self.client.request(
                "PATCH",
                f"/api/projects/{project['id']}",
                json={"label_config": label_config(have + missing)},
            )
            project = self._projects[title] = resp.json()
            log.info("added classes %s to Label Studio project %r", missing, title)
        return project

    def ensure_project(self, ontology_classes: Sequence[str], project: str = "") -> ProjectRef:
        """The project named ``project`` ("": ``project_name``), created on first use, with
        at least these classes."""
        return self._project_ref(self._ensure_project(project or self.project_name, ontology_classes))

    # --- tasks by key

    def _tasks_with_key(self, project_id: int, key: str) -> list[dict[str, Any]]:
        filters = {
            "conjunction": "and",
            "items": [
                {
                    "filter": f"filter:tasks:data.{KEY_FIELD}",
                    "operator": "equal",
                    "type": "String",
                    "value": key,
                }
            ],
        }
        tasks: list[dict[str, Any]] = []
        page = 1
        while True:
            data = self.client.get_json(
                "/api/tasks",
                params={
                    "project": project_id,
                    "query": json.dumps({"filters": filters}),
                    "fields": "task_only",
                    "page": page,
                    "page_size": PAGE_SIZE,
                },
            )
            batch = (data or {}).get("tasks", [])
            # the filter is exact on Label Studio 1.23; check again in case a version matches loosely
            tasks += [t for t in batch if t.get("data", {}).get(KEY_FIELD) == key]
            if len(batch) < PAGE_SIZE:
                return tasks
            page += 1

    def _as_pushed(self, project: Mapping[str, Any], key: str, tasks: list[dict[str, Any]]) -> PushedSequence:
        tasks = sorted(tasks, key=lambda t: int(t["data"].get("chunk", 1)))
        pid = project["id"]
        return PushedSequence(
            backend=self.name,
            project_id=str(pid),
            ids=[str(t["id"]) for t in tasks],
            url=f"{self.client.url}/projects/{pid}/data?task={tasks[0]['id']}",
            n_frames=sum(len(t["data"].get("frame_names", [])) for t in tasks),
            idempotency_key=key,
            project_url=f"{self.client.url}/projects/{pid}/data",
            extra={"n_chunks": len(tasks)},
        )

    def find_sequence(self, idempotency_key: str, project: str = "") -> PushedSequence | None:
        project = self._find_project(project or self.project_name)
        if project is None:
            return None
        tasks = _one_per_chunk(self._tasks_with_key(project["id"], idempotency_key))
        if not tasks:
            return None
        n_chunks = int(tasks[0]["data"].get("n_chunks", 1))
        if len(tasks) < n_chunks:
            return None  # half pushed: push_sequence completes it
        return self._as_pushed(project, idempotency_key, tasks)

    # --- push

    def push_sequence(self, request: SequenceRequest, guard: CreateGuard = NO_GUARD) -> PushedSequence:
        if not request.frame_names:
            raise ValueError(f"sequence {request.title!r} has no frames")
        project = self._ensure_project(request.project or self.project_name, request.classes)
        pid = project["id"]
        chunks = chunk(request.frame_names, self.max_frames_per_task)
        existing = {
            int(t["data"].get("chunk", 1)): t
            for t in _one_per_chunk(self._tasks_with_key(pid, request.idempotency_key))
        }
        if existing:
            their_n = {int(t["data"].get("n_chunks", 1)) for t in existing.values()}
            if their_n != {len(chunks)}:
                raise BackendError(
                    f"sequence {request.idempotency_key} is half-pushed in {sorted(their_n)} chunk(s) but this "
                    f"push makes {len(chunks)}; keep max_frames_per_task as it was, or delete its tasks"
                )
        todo = [i for i in range(1, len(chunks) + 1) if i not in existing]
        if todo:
            check_frames_exist(self.s3, request)  # before creating anything
        allowed = set(config_labels(project.get("label_config", "")))
        for i in todo:
            guard.begin(i)
            task_id = self._push_chunk(pid, request, chunks[i - 1], i, len(chunks), allowed, guard)
            try:
                guard.created(i, str(task_id))
            except ClaimLost:
                self._delete_task(task_id)
                log.warning(
                    "deleted Label Studio task %s of %s part %d: another attempt owns this push",
                    task_id,
                    request.title,
                    i,
                )
                raise
            existing[i] = {"id": task_id, "data": {"chunk": i, "frame_names": chunks[i - 1]}}
            log.info(
                "pushed %s part %d/%d (%d frames) as Label Studio task %s",
                request.title,
                i,
                len(chunks),
                len(chunks[i - 1]),
                task_id,
            )
        return self._as_pushed(project, request.idempotency_key, list(existing.values()))

    def _push_chunk(
        self,
        pid: int,
        request: SequenceRequest,
        names: list[str],
        index: int,
        n_chunks: int,
        allowed: set[str],
        guard: CreateGuard = NO_GUARD,
    ) -> int:
        urls: dict[str, str] = {}
        sizes: dict[str, tuple[int, int]] = {}
        batch: list[tuple[str, bytes]] = []
        batch_bytes = 0
        for name in names:
            data = read_frame(self.s3, request.bucket, request.frame_key(name))
            sizes[name] = image_size(data)
            if batch and (len(batch) >= UPLOAD_MAX_FILES or batch_bytes + len(data) > UPLOAD_MAX_BYTES):
                urls.update(self._upload(pid, batch))
                batch, batch_bytes = [], 0
            batch.append((name, data))
            batch_bytes += len(data)
        if batch:
            urls.update(self._upload(pid, batch))

        title = request.title if n_chunks == 1 else f"{request.title} (part {index} of {n_chunks})"
        task: dict[str, Any] = {
            "data": {
                "images": [urls[n] for n in names],
                "frame_names": names,
                "title": title,
                KEY_FIELD: request.idempotency_key,
                "chunk": index,
                "n_chunks": n_chunks,
                "video_key": request.video_key,
                "video_id": request.video_id,
                "selection_id": request.selection_id,
                "frames_prefix": f"s3://{request.bucket}/{request.frames_prefix}",
                # columns of the Data Manager, for the labeler
                "n_frames": len(names),
                "frame_times_s": [request.frame_times_s.get(n) for n in names],
                "time_span": time_span([request.frame_times_s.get(n) for n in names]),
                "frame_reasons": [request.frame_reasons.get(n, "") for n in names],
            }
        }
        result = []
        for item_index, name in enumerate(names):
            width, height = sizes[name]
            for n, box in enumerate(request.predictions.get(name, [])):
                if box.class_name not in allowed:
                    continue
                bbox = clip_box(box.bbox, width, height)
                if bbox[2] <= 0 or bbox[3] <= 0:
                    continue
                region = {
                    "id": f"p{item_index}-{n}",
                    "from_name": FROM_NAME,
                    "to_name": TO_NAME,
                    "type": "rectanglelabels",
                    "item_index": item_index,
                    "original_width": width,
                    "original_height": height,
                    "image_rotation": 0,
                    "value": {
                        **px_to_ls(bbox, width, height),
                        "rectanglelabels": [box.class_name],
                    },
                }
                if box.score is not None:
                    region["score"] = box.score
                result.append(region)
        if result:
            scores = [r["score"] for r in result if "score" in r]
            prediction: dict[str, Any] = {
                "model_version": request.model_version or "framesift",
                "result": result,
            }
            if scores:
                prediction["score"] = sum(scores) / len(scores)
            task["predictions"] = [prediction]
        guard.check(index)  # still ours, right before the task is made
        resp = self.client.request(
            "POST", f"/api/projects/{pid}/import", params={"return_task_ids": "true"}, json=[task]
        )
        ids = resp.json().get("task_ids") or []
        if len(ids) != 1:
            raise BackendError(f"Label Studio import of {title!r} returned task ids {ids!r}, expected one")
        return int(ids[0])

    def _delete_task(self, task_id: int) -> None:
        self.client.request("DELETE", f"/api/tasks/{int(task_id)}")

    def _upload(self, pid: int, batch: list[tuple[str, bytes]]) -> dict[str, str]:
        """Upload files without creating tasks; frame name -> URL Label Studio serves it at."""
        # one form field per file: Label Studio keeps only the last file of a repeated field name
        files = [(name, (name, data, content_type(name))) for name, data in batch]
        resp = self.client.request(
            "POST", f"/api/projects/{pid}/import", params={"commit_to_project": "false"}, files=files
        )
        ids = resp.json().get("file_upload_ids") or []
        if len(ids) != len(batch):
            raise BackendError(f"Label Studio stored {len(ids)} of {len(batch)} uploaded frames")
        uploads = (
            self.client.get_json(f"/api/projects/{pid}/file-uploads", params={"ids": json.dumps(ids)}) or []
        )
        by_id = {u["id"]: u["file"] for u in uploads}
        urls: dict[str, str] = {}
        for (name, _), upload_id in zip(batch, ids, strict=True):
            path = by_id.get(upload_id)
            if not path:
                raise BackendError(f"Label Studio lost the upload of {name} (file upload {upload_id})")
            # stored as upload/<project>/<8 hex>-<name>; served under /data/
            urls[name] = "/data/" + path.lstrip("/")
        return urls

    # --- status and export

    def _task(self, task_id: str) -> dict[str, Any]:
        task = self.client.get_json(f"/api/tasks/{int(task_id)}")
        if task is None:
            raise SequenceNotFound(f"Label Studio task {task_id} does not exist (deleted?)")
        return task

    def sequence_status(self, ids: Sequence[str]) -> SequenceStatus:
        """Labeling: Done when every task is labeled, In progress when any has an annotation,
        a draft or a skip, else In queue. Reviewing: from the review counts Label Studio
        Enterprise adds to tasks; Community has no review step, so it stays In queue."""
        statuses = []
        for task_id in ids:
            task = self._task(task_id)
            if task.get("is_labeled"):
                labeling = DONE
            elif task.get("total_annotations") or task.get("cancelled_annotations") or task.get("drafts"):
                labeling = IN_PROGRESS
            else:
                labeling = IN_QUEUE
            accepted, rejected = task.get("reviews_accepted") or 0, task.get("reviews_rejected") or 0
            reviewing = (
                DONE if accepted and labeling == DONE else IN_PROGRESS if (accepted or rejected) else IN_QUEUE
            )
            statuses.append(SequenceStatus(labeling, reviewing))
        return combine_statuses(statuses)

    def export_annotations(self, ids: Sequence[str]) -> list[FrameAnnotation]:
        """Every frame of every task that has a finished annotation (the latest one; a ground
        truth one first), with its boxes in pixels; frames without boxes come back empty."""
        out: list[FrameAnnotation] = []
        for task_id in ids:
            task = self._task(task_id)
            done = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
            if not done:
                continue
            ann = max(
                done, key=lambda a: (bool(a.get("ground_truth")), a.get("updated_at") or "", a.get("id", 0))
            )
            names = task["data"].get("frame_names", [])
            boxes: dict[int, list[Box]] = {i: [] for i in range(len(names))}
            for region in ann.get("result", []):
                if region.get("type") != "rectanglelabels" or region.get("from_name") != FROM_NAME:
                    continue
                idx = int(region.get("item_index") or 0)
                labels = region.get("value", {}).get("rectanglelabels") or []
                if idx not in boxes or not labels:
                    continue
                bbox = ls_to_px(
                    region["value"], int(region["original_width"]), int(region["original_height"])
                )
                boxes[idx].append(Box(labels[0], bbox))
            who = ann.get("completed_by")
            annotator = (
                (who.get("email") or str(who.get("id")))
                if isinstance(who, dict)
                else (None if who is None else str(who))
            )
            for i, name in enumerate(names):
                out.append(
                    FrameAnnotation(
                        frame_name=name,
                        boxes=boxes[i],
                        annotator=annotator,
                        sequence_id=str(task["id"]),
                        annotation_id=str(ann.get("id")),
                        updated_at=ann.get("updated_at"),
                    )
                )
        return out


def time_span(times: Sequence[float | None]) -> str:
    """``"0.00 s - 12.50 s"``: where in the video a task's frames are ("" when unknown)."""
    known = [t for t in times if t is not None]
    if not known:
        return ""
    lo, hi = min(known), max(known)
    return format_time(lo) if lo == hi else f"{format_time(lo)} - {format_time(hi)}"


_CLIENT_KWARGS = {"timeout", "max_429_retries", "max_retry_after_s", "sleep", "session"}


def _one_per_chunk(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first task of each chunk index (a duplicate, if one ever existed, is ignored)."""
    by_chunk: dict[int, dict[str, Any]] = {}
    for task in sorted(tasks, key=lambda t: t["id"]):
        by_chunk.setdefault(int(task["data"].get("chunk", 1)), task)
    return [by_chunk[k] for k in sorted(by_chunk)]


def _url_from(credentials: Mapping[str, Any]) -> str | None:
    url = credentials.get("url") or credentials.get("host")
    if not url:
        return None
    url = str(url).rstrip("/")
    if "://" not in url:
        scheme = credentials.get("schema") if credentials.get("schema") in ("http", "https") else "http"
        url = f"{scheme}://{url}"
    port = credentials.get("port")
    if port and url.count(":") < 2:
        url = f"{url}:{int(port)}"
    return url
