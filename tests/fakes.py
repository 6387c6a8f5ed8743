"""Stand-ins shared by the labeling tests: a sequence request, an in-memory platform, a
simulated worker kill."""

from __future__ import annotations

from framesift.labeling import base
from framesift.labeling.base import Box, PushedSequence, SequenceRequest, SequenceStatus


def make_request(n_frames=3, *, video_id="vid1", selection_id="sel1", backend="label_studio", preds=True):
    names = [f"clip-{i * 10:03d}-mp4.png" for i in range(n_frames)]
    return SequenceRequest(
        idempotency_key=base.idempotency_key(selection_id, video_id, backend),
        title=f"clip-{video_id}",
        selection_id=selection_id,
        video_id=video_id,
        video_key="videos/clip.mp4",
        bucket="bkt",
        frames_prefix=f"out/videos/{video_id}/frames",
        frame_names=names,
        classes=["car", "person"],
        predictions={n: [Box("car", (10, 20, 30, 40), 0.9)] for n in names} if preds else {},
        model_version="yolo-test",
    )


class FakeBackend:
    """A platform in memory: one task per sequence, found by key in its project; counts pushes; can fail
    on demand. Like Label Studio it lists, then creates (``before_create`` runs between
    the two, so a test can stall an attempt there); ``tasks`` keeps every task ever
    created (a duplicate shows as two tasks with one key), ``deleted`` the ones removed."""

    name = "fake"
    tracks_review = True

    def __init__(self):
        self.tasks: list[dict] = []
        self.deleted: list[str] = []
        self.pushes = 0
        self.finds = 0
        self.fail_push: Exception | None = None
        self.before_create = None  # callable(request), e.g. to stall a zombie
        self.status: dict[str, SequenceStatus] = {}

    def _as_pushed(self, task):
        return PushedSequence(
            backend=self.name,
            project_id="p1",
            ids=[task["id"]],
            url=f"http://fake/{task['id']}",
            n_frames=task["n_frames"],
            idempotency_key=task["key"],
            project_url="http://fake/p1",
        )

    def ensure_project(self, classes):
        return base.ProjectRef("p1", "http://fake/p1")

    def push_sequence(self, request, guard=base.NO_GUARD):
        if self.fail_push:
            raise self.fail_push
        self.pushes += 1
        existing = self._find(request.idempotency_key, request.project)
        if existing:
            return existing
        guard.begin(1)
        if self.before_create is not None:
            self.before_create(request)
        guard.check(1)
        task = {
            "id": f"t{len(self.tasks) + 1}",
            "key": request.idempotency_key,
            "project": request.project,
            "n_frames": len(request.frame_names),
        }
        self.tasks.append(task)
        try:
            guard.created(1, task["id"])
        except Exception:
            self.tasks.remove(task)  # what the real backends do: delete the zombie's duplicate
            self.deleted.append(task["id"])
            raise
        return self._as_pushed(task)

    def find_sequence(self, key, project=""):
        self.finds += 1
        return self._find(key, project)

    def _find(self, key, project):
        return next(
            (self._as_pushed(t) for t in self.tasks if (t["key"], t["project"]) == (key, project)), None
        )

    def sequence_status(self, ids):
        if ids[0] not in self.status:
            raise base.SequenceNotFound(f"no {ids[0]}")
        return self.status[ids[0]]

    def export_annotations(self, ids):
        return []


class Crash(BaseException):
    """Stands in for a killed worker (not an Exception: nothing may swallow it)."""
