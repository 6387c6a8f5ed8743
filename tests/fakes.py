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
    """A platform in memory: sequences by key; counts pushes; can fail on demand."""

    name = "fake"
    tracks_review = True

    def __init__(self):
        self.sequences: dict[str, PushedSequence] = {}
        self.pushes = 0
        self.finds = 0
        self.fail_push: Exception | None = None
        self.status: dict[str, SequenceStatus] = {}

    def ensure_project(self, classes):
        return base.ProjectRef("p1", "http://fake/p1")

    def push_sequence(self, request):
        if self.fail_push:
            raise self.fail_push
        self.pushes += 1
        if request.idempotency_key not in self.sequences:
            self.sequences[request.idempotency_key] = PushedSequence(
                backend=self.name,
                project_id="p1",
                ids=[f"t{len(self.sequences) + 1}"],
                url=f"http://fake/t{len(self.sequences) + 1}",
                n_frames=len(request.frame_names),
                idempotency_key=request.idempotency_key,
                project_url="http://fake/p1",
            )
        return self.sequences[request.idempotency_key]

    def find_sequence(self, key):
        self.finds += 1
        return self.sequences.get(key)

    def sequence_status(self, ids):
        if ids[0] not in self.status:
            raise base.SequenceNotFound(f"no {ids[0]}")
        return self.status[ids[0]]

    def export_annotations(self, ids):
        return []


class Crash(BaseException):
    """Stands in for a killed worker (not an Exception: nothing may swallow it)."""
