"""Labeling backends without a labeling platform (the labeling queue against Mongo is in
tests/integration/test_labeling_queue.py).

- coordinates px <-> Label Studio percent, chunking, time order, status mapping;
- Label Studio's HTTP error handling against a stub HTTP server on loopback (401 fails
  fast, 429 waits Retry-After, 5xx / refused -> BackendUnavailable);
- Encord against a fake at the SDK boundary (see ``TestEncordFakeSdk``).
"""

from __future__ import annotations

import http.server
import inspect
import json
import os
import socket
import threading
import uuid
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framesift.config.loading import parse_config
from framesift.config.schema import ConfigError
from framesift.labeling import base
from framesift.labeling.base import (
    DONE,
    IN_PROGRESS,
    IN_QUEUE,
    BackendUnavailable,
    BadCredentials,
    Box,
    FrameMissing,
    SequenceStatus,
    build_request,
    chunk,
    combine_statuses,
    frame_index,
    image_size,
    time_order,
)
from framesift.labeling.factory import get_backend
from framesift.labeling.label_studio.backend import LabelStudioBackend
from framesift.labeling.label_studio.client import LabelStudioClient
from framesift.labeling.label_studio.tasks import config_labels, label_config, ls_to_px, px_to_ls
from tests.fakes import Crash, make_request

# ------------------------------------------------------------------ helpers


def png(width: int, height: int, value: int = 0) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((height, width, 3), value, np.uint8))
    assert ok
    return buf.tobytes()


class FakeS3:
    """The few boto3 S3 calls the backends make, over a dict; records calls."""

    class _Missing(Exception):
        def __init__(self, key):
            super().__init__(f"NoSuchKey {key}")
            self.response = {"Error": {"Code": "NoSuchKey"}}

    def __init__(self, objects: dict[tuple[str, str], bytes]):
        self.objects = dict(objects)
        self.calls: list[tuple[str, str]] = []

    def get_paginator(self, name):
        assert name == "list_objects_v2"
        outer = self

        class _P:
            def paginate(self, Bucket, Prefix):
                outer.calls.append(("list", Prefix))
                yield {
                    "Contents": [
                        {"Key": k} for (b, k) in outer.objects if b == Bucket and k.startswith(Prefix)
                    ]
                }

        return _P()

    def get_object(self, Bucket, Key):
        self.calls.append(("get", Key))
        if (Bucket, Key) not in self.objects:
            raise self._Missing(Key)
        data = self.objects[(Bucket, Key)]
        return {"Body": SimpleNamespace(read=lambda: data)}


# ------------------------------------------------------- coordinates, chunks, names


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 4000).flatmap(
        lambda w: st.integers(1, 3000).flatmap(
            lambda h: st.tuples(
                st.just(w),
                st.just(h),
                st.integers(0, w - 1).flatmap(
                    lambda x: st.integers(0, h - 1).flatmap(
                        lambda y: st.tuples(
                            st.just(x), st.just(y), st.integers(0, w - x), st.integers(0, h - y)
                        )
                    )
                ),
            )
        )
    )
)
def test_px_to_label_studio_percent_and_back_is_exact(case):
    width, height, bbox = case
    value = px_to_ls(bbox, width, height)
    assert all(0.0 <= value[k] <= 100.0 + 1e-9 for k in ("x", "y", "width", "height"))
    assert ls_to_px(value, width, height) == tuple(bbox)


def test_percent_values_match_label_studio_convention():
    # a 1280x720 frame, box at (320, 180) of 640x360: a quarter in, half the size
    assert px_to_ls([320, 180, 640, 360], 1280, 720) == {
        "x": 25.0,
        "y": 25.0,
        "width": 50.0,
        "height": 50.0,
        "rotation": 0,
    }
    # out-of-frame parts are clipped when coming back
    assert ls_to_px({"x": 90, "y": -5, "width": 20, "height": 10}, 100, 100) == (90, 0, 10, 5)
    # a rotated box comes back as its axis-aligned bounding box
    x, y, w, h = ls_to_px({"x": 50, "y": 10, "width": 10, "height": 10, "rotation": 90}, 100, 100)
    assert (x, y, w, h) == (40, 10, 10, 10)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2000), st.integers(1, 600))
def test_chunks_keep_order_respect_the_limit_and_are_balanced(n, limit):
    items = list(range(n))
    parts = chunk(items, limit)
    assert [x for p in parts for x in p] == items
    assert all(1 <= len(p) <= limit for p in parts)
    assert len(parts) == -(-n // limit)  # the fewest possible
    if parts:
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_frame_index_and_time_order():
    assert frame_index("bikes-042-mp4.png") == 42
    assert frame_index("my-clip-name-007-mov.jpg") == 7
    assert time_order(["a-100-mp4.png", "a-020-mp4.png", "a-003-mp4.png", "a-020-mp4.png"]) == [
        "a-003-mp4.png",
        "a-020-mp4.png",
        "a-100-mp4.png",
    ]
    with pytest.raises(ValueError, match="Lightly frame name"):
        frame_index("frame.png")


def test_build_request_sorts_frames_filters_classes_and_keys_by_backend():
    cfg = parse_config({"important_classes": ["car"], "storage": {"output_prefix": "out/"}})
    schema = {
        "task_type": "object-detection",
        "categories": [{"id": 0, "name": "car"}, {"id": 1, "name": "dog"}],
    }
    preds = [
        {
            "file_name": "v-030-mp4.png",
            "predictions": [
                {"category_id": 0, "bbox": [1, 2, 3, 4], "score": 0.8},
                {"category_id": 1, "bbox": [5, 6, 7, 8], "score": 0.7},
            ],
        },
        {
            "file_name": "v-999-mp4.png",
            "predictions": [{"category_id": 0, "bbox": [1, 1, 1, 1], "score": 0.5}],
        },
    ]
    req = build_request(
        cfg,
        selection_id="s1",
        video_id="abc",
        video_key="videos/v.mp4",
        frame_names=["v-030-mp4.png", "v-000-mp4.png"],
        predictions=preds,
        schema=schema,
        model_version="m1",
    )
    assert req.frame_names == ["v-000-mp4.png", "v-030-mp4.png"]
    assert req.classes == ["car"]
    assert req.predictions == {
        "v-030-mp4.png": [Box("car", (1, 2, 3, 4), 0.8)]
    }  # dog dropped, 999 not selected
    assert req.frames_prefix == "out/videos/abc/frames" and req.bucket == "framesift"
    assert req.frame_keys[0] == "out/videos/abc/frames/v-000-mp4.png"
    assert req.title == "videos/v.mp4"  # the S3 key, not a hash (issue #17)
    # empty important_classes: everything the model knows
    all_classes = build_request(
        parse_config({}), selection_id="s1", video_id="abc", video_key="v.mp4", frame_names=[], schema=schema
    )
    assert all_classes.classes == ["car", "dog"]
    # one key per (selection, video, backend)
    keys = {
        base.idempotency_key(s, v, b)
        for s in ("s1", "s2")
        for v in ("a", "b")
        for b in ("label_studio", "encord")
    }
    assert len(keys) == 8 and all(k.startswith("fs-") for k in keys)


def test_project_per_folder_names_a_project_per_video_folder():
    """One Label Studio project per folder below the videos prefix (issue #17, the labeler's view)."""
    from framesift.config.loading import DEFAULT_CONFIG_PATH, load_config
    from framesift.io.layout import folder_under, video_folder

    assert video_folder("videos/cam1/a.mp4") == "videos/cam1/" and video_folder("a.mp4") == ""
    assert folder_under("videos/cam1/day2/a.mp4", "videos/") == "cam1/day2"
    assert (
        folder_under("videos/a.mp4", "videos") == "" and folder_under("other/x/a.mp4", "videos/") == "other/x"
    )
    assert folder_under("cam1/a.mp4", "") == "cam1"

    default = parse_config({"labeling": {"project_name": "fs"}})
    assert (
        default.labeling.project_per == "none"
        and load_config(DEFAULT_CONFIG_PATH).labeling.project_per == "none"
    )
    assert base.project_for(default, "videos/cam1/a.mp4") == "fs"  # today's behaviour
    cfg = parse_config({"labeling": {"project_name": "fs", "project_per": "folder"}})
    assert base.project_for(cfg, "videos/cam1/a.mp4") == "fs / cam1"
    assert base.project_for(cfg, "videos/cam2/b.mp4") == "fs / cam2"
    assert base.project_for(cfg, "videos/a.mp4") == "fs"  # directly under the prefix
    req = build_request(cfg, selection_id="s", video_id="v", video_key="videos/cam1/a.mp4", frame_names=[])
    assert req.project == "fs / cam1"
    # Label Studio titles are at most 50 characters: long ones are cut, distinct by a hash
    long_a = base.project_for(cfg, "videos/" + "north-gate-" * 5 + "a/x.mp4")
    long_b = base.project_for(cfg, "videos/" + "north-gate-" * 5 + "b/x.mp4")
    assert len(long_a) == len(long_b) == base.PROJECT_TITLE_MAX_LEN and long_a != long_b
    assert long_a.startswith("fs / north-gate-")


def test_project_per_folder_is_refused_with_encord():
    with pytest.raises(ConfigError) as err:
        parse_config({"labeling": {"backend": "encord", "project_per": "folder"}}, "pipeline.yaml")
    msg = str(err.value)
    assert (
        msg.startswith("pipeline.yaml: labeling:")
        and "project_per: folder needs labeling.backend: label_studio" in msg
    )
    assert parse_config({"labeling": {"backend": "encord"}}).labeling.project_per == "none"
    with pytest.raises(ConfigError, match="labeling.project_per: Input should be 'none' or 'folder'"):
        parse_config({"labeling": {"project_per": "prefix"}})


def test_image_size_reads_png_and_jpeg_headers():
    assert image_size(png(640, 360)) == (640, 360)
    ok, jpg = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))
    assert image_size(jpg.tobytes()) == (64, 48)
    with pytest.raises(ValueError):
        image_size(b"GIF89a....")


def test_label_config_escapes_class_names_and_reads_back():
    classes = ["car", 'big "truck"', "a<b&c"]
    cfg = label_config(classes)
    assert 'valueList="$images"' in cfg and 'toName="frames"' in cfg
    assert config_labels(cfg) == classes


# --------------------------------------------------------------- status mapping


def test_combined_status_of_chunks():
    q, p, d = IN_QUEUE, IN_PROGRESS, DONE
    S = SequenceStatus
    assert combine_statuses([S(q, q), S(q, q)]) == S(q, q)
    assert combine_statuses([S(d, q), S(q, q)]) == S(p, q)
    assert combine_statuses([S(d, d), S(d, p)]) == S(d, p)
    assert combine_statuses([S(d, d), S(d, d)]) == S(d, d)
    assert combine_statuses([]) == S(q, q)


@pytest.mark.parametrize(
    "tasks, expected",
    [
        ([{"is_labeled": False, "total_annotations": 0, "drafts": []}], (IN_QUEUE, IN_QUEUE)),
        ([{"is_labeled": False, "total_annotations": 0, "drafts": [{"id": 1}]}], (IN_PROGRESS, IN_QUEUE)),
        ([{"is_labeled": False, "cancelled_annotations": 1}], (IN_PROGRESS, IN_QUEUE)),
        ([{"is_labeled": True, "total_annotations": 1}, {"is_labeled": False}], (IN_PROGRESS, IN_QUEUE)),
        ([{"is_labeled": True, "total_annotations": 1}, {"is_labeled": True}], (DONE, IN_QUEUE)),
        # Label Studio Enterprise review counts
        ([{"is_labeled": True, "reviews_rejected": 1}], (DONE, IN_PROGRESS)),
        ([{"is_labeled": True, "reviews_accepted": 1}], (DONE, DONE)),
    ],
)
def test_label_studio_status_mapping(tasks, expected):
    backend = LabelStudioBackend(LabelStudioClient("http://x", "t"), None, project_name="p")
    by_id = {str(i): t for i, t in enumerate(tasks)}
    backend._task = lambda task_id: by_id[task_id]  # type: ignore[method-assign]
    assert backend.sequence_status(list(by_id)) == SequenceStatus(*expected)


def test_label_studio_export_converts_percent_to_pixels_per_frame():
    backend = LabelStudioBackend(LabelStudioClient("http://x", "t"), None, project_name="p")
    region = {
        "from_name": "boxes",
        "to_name": "frames",
        "type": "rectanglelabels",
        "item_index": 1,
        "original_width": 200,
        "original_height": 100,
        "value": {"x": 10, "y": 20, "width": 25, "height": 50, "rectanglelabels": ["car"]},
    }
    task = {
        "id": 7,
        "data": {"frame_names": ["a-0-mp4.png", "a-1-mp4.png"]},
        "annotations": [
            {"id": 1, "was_cancelled": True, "result": [], "completed_by": {"email": "skip@x"}},
            {"id": 2, "result": [region], "completed_by": {"id": 3, "email": "ann@x"}, "updated_at": "t"},
        ],
    }
    backend._task = lambda task_id: task  # type: ignore[method-assign]
    out = backend.export_annotations(["7"])
    assert [(a.frame_name, a.boxes, a.annotator) for a in out] == [
        ("a-0-mp4.png", [], "ann@x"),
        ("a-1-mp4.png", [Box("car", (20, 20, 50, 50))], "ann@x"),
    ]


# ----------------------------------------------- Label Studio HTTP: 401, 429, 5xx


class StubLabelStudio:
    """A loopback HTTP server answering from a script of (status, headers, body)."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[tuple[str, str, dict]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                stub.requests.append((self.command, self.path, dict(self.headers)))
                status, headers, body = stub.script.pop(0) if stub.script else (500, {}, {})
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    servers = []

    def make(script):
        servers.append(StubLabelStudio(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


SECRET = "fake-token-for-tests"  # not a credential; the tests check it never leaks


def test_401_fails_fast_with_a_clear_message_and_no_token(stub):
    server = stub([(401, {}, {"detail": "Invalid token."})])
    sleeps = []
    client = LabelStudioClient(server.url, SECRET, sleep=sleeps.append)
    with pytest.raises(BadCredentials) as err:
        client.get_json("/api/projects")
    assert not err.value.retryable
    assert "refused the API token" in str(err.value) and "HTTP 401" in str(err.value)
    assert SECRET not in str(err.value) and SECRET not in repr(client)
    assert len(server.requests) == 1 and sleeps == []  # no retry
    assert server.requests[0][2]["Authorization"] == f"Token {SECRET}"


def test_403_is_bad_credentials_too(stub):
    server = stub([(403, {}, {})])
    with pytest.raises(BadCredentials):
        LabelStudioClient(server.url, SECRET).get_json("/api/projects")


def test_429_waits_retry_after_then_succeeds(stub):
    server = stub([(429, {"Retry-After": "2"}, {}), (429, {"Retry-After": "1"}, {}), (200, {}, {"ok": 1})])
    sleeps = []
    client = LabelStudioClient(server.url, SECRET, sleep=sleeps.append)
    assert client.get_json("/api/projects") == {"ok": 1}
    assert sleeps == [2.0, 1.0]
    assert len(server.requests) == 3


def test_429_beyond_the_wait_limit_is_backend_unavailable_with_retry_after(stub):
    server = stub([(429, {"Retry-After": "600"}, {})])
    sleeps = []
    client = LabelStudioClient(server.url, SECRET, sleep=sleeps.append, max_retry_after_s=120)
    with pytest.raises(BackendUnavailable) as err:
        client.get_json("/api/projects")
    assert err.value.retryable and err.value.retry_after == 600 and err.value.status == 429
    assert sleeps == [] and len(server.requests) == 1


def test_429_retries_are_bounded(stub):
    server = stub([(429, {"Retry-After": "1"}, {})] * 5)
    sleeps = []
    with pytest.raises(BackendUnavailable):
        LabelStudioClient(server.url, SECRET, sleep=sleeps.append, max_429_retries=2).get_json("/x")
    assert sleeps == [1.0, 1.0] and len(server.requests) == 3


def test_5xx_and_refused_connections_are_backend_unavailable(stub):
    server = stub([(503, {}, {})])
    with pytest.raises(BackendUnavailable) as err:
        LabelStudioClient(server.url, SECRET).get_json("/api/projects")
    assert err.value.status == 503 and err.value.retryable
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BackendUnavailable, match="cannot reach Label Studio"):
        LabelStudioClient(f"http://127.0.0.1:{port}", SECRET).get_json("/api/projects")


def test_get_backend_reads_the_connection_dict():
    cfg = parse_config({"labeling": {"backend": "label_studio", "project_name": "p1"}})
    b = get_backend(
        cfg, {"host": "ls.internal", "port": 8080, "password": SECRET, "max_frames_per_task": 7}, None
    )
    assert isinstance(b, LabelStudioBackend)
    assert b.client.url == "http://ls.internal:8080" and b.max_frames_per_task == 7 and b.project_name == "p1"
    assert SECRET not in repr(b)
    with pytest.raises(BadCredentials, match="no Label Studio API token"):
        get_backend(cfg, {"url": "http://x"}, None)
    enc = parse_config({"labeling": {"backend": "encord"}})
    with pytest.raises(BadCredentials, match="no Encord SSH private key"):
        get_backend(enc, {"domain": "https://api.encord.com"}, None)


# --------------------------------------------------------------- frame missing


def test_frame_missing_names_the_key_before_anything_is_created(stub):
    req = make_request(3)
    objects = {(req.bucket, k): png(64, 48) for k in req.frame_keys}
    gone = req.frame_keys[1]
    del objects[(req.bucket, gone)]
    project = {"id": 1, "title": "p", "label_config": label_config(["car", "person"])}
    server = stub(
        [
            (200, {}, {"results": [project], "next": None}),  # find project
            (200, {}, {"tasks": []}),  # tasks with the key
        ]
    )
    backend = LabelStudioBackend(LabelStudioClient(server.url, SECRET), FakeS3(objects), project_name="p")
    with pytest.raises(FrameMissing) as err:
        backend.push_sequence(req)
    assert err.value.key == gone and f"s3://bkt/{gone}" in str(err.value)
    assert not err.value.retryable
    assert [r[0] for r in server.requests] == ["GET", "GET"]  # nothing was uploaded or created


# ------------------------------------------------------------ Encord, fake SDK


class TestEncordFakeSdk:
    """Encord against a fake at the SDK boundary (the user-client factory is injected).

    What this proves: the backend makes exactly the expected SDK calls, in the expected
    order, with the expected arguments; every call binds to the signature of the real
    method in the installed ``encord`` (0.1.211; ``FakeSdk.record`` checks it with
    ``inspect.signature(...).bind``), so a renamed or removed parameter fails here; the
    image sequence receives the frames' real bytes in time order; pre-annotations are
    built with the SDK's own ontology / ObjectInstance / BoundingBoxCoordinates classes,
    normalised to 0..1 from pixels; a retry after a crash links an already-uploaded item
    instead of uploading again; SDK exceptions map to our error types.

    What it does not prove: that Encord's servers accept these calls (permissions,
    quotas, server-side validation), how long processing the image sequence takes, that
    linked items show up as label rows immediately, or the workflow stage titles of a
    real project. Those need a real Encord account.
    """

    @pytest.fixture
    def sdk(self):
        return FakeSdk()

    def backend(self, sdk, s3, **kw):
        from framesift.labeling.encord import EncordBackend

        return EncordBackend(
            s3,
            ssh_private_key="not-a-real-key",  # the fake SDK factory never parses it
            domain="https://api.encord.com",
            project_name="fs-proj",
            client_factory=sdk.factory,
            **kw,
        )

    def s3_for(self, req, size=(128, 96)):
        return FakeS3({(req.bucket, k): png(*size, value=i) for i, k in enumerate(req.frame_keys)})

    def test_first_push_calls_in_order_with_arguments(self, sdk):
        from encord.objects import OntologyStructure
        from encord.orm.dataset import StorageLocation

        req = make_request(3, backend="encord")
        s3 = self.s3_for(req)
        pushed = self.backend(sdk, s3).push_sequence(req)

        names = [c[0] for c in sdk.calls]
        assert names == [
            "create_with_ssh_private_key",
            "EncordUserClient.list_projects",
            "EncordUserClient.create_ontology",
            "EncordUserClient.create_dataset",
            "EncordUserClient.create_project",
            "EncordUserClient.get_project",
            "Project.list_label_rows_v2",
            "EncordUserClient.list_storage_folders",
            "EncordUserClient.create_storage_folder",
            "Project.list_datasets",
            "EncordUserClient.get_dataset",
            "StorageFolder.list_items",
            "StorageFolder._get_upload_signed_urls",
            "StorageFolder._upload_local_file",
            "StorageFolder._upload_local_file",
            "StorageFolder._upload_local_file",
            "StorageFolder.add_private_data_to_folder_start",
            "StorageFolder.add_private_data_to_folder_get_result",  # the job is PENDING
            "StorageFolder.add_private_data_to_folder_get_result",  # DONE: only now link it
            "Dataset.link_items",
            "Project.list_label_rows_v2",
            "LabelRowV2.initialise_labels",
            "LabelRowV2.add_object_instance",
            "LabelRowV2.add_object_instance",
            "LabelRowV2.add_object_instance",
            "LabelRowV2.save",
        ]
        args = {name: kw for name, kw in sdk.calls}
        assert args["create_with_ssh_private_key"]["domain"] == "https://api.encord.com"
        assert args["EncordUserClient.list_projects"] == {"title_eq": "fs-proj"}
        structure = args["EncordUserClient.create_ontology"]["structure"]
        assert isinstance(structure, OntologyStructure)
        assert [(o.name, o.shape.value) for o in structure.objects] == [
            ("car", "bounding_box"),
            ("person", "bounding_box"),
        ]
        ds = args["EncordUserClient.create_dataset"]
        assert ds["dataset_title"] == "fs-proj" and ds["dataset_type"] == StorageLocation.CORD_STORAGE
        assert ds["create_backing_folder"] is False
        proj = args["EncordUserClient.create_project"]
        assert proj["dataset_hashes"] == ["ds-1"] and proj["ontology_hash"] == "onto-1"
        (group,) = args["StorageFolder.add_private_data_to_folder_start"]["private_files"].image_groups
        assert group.title == f"clip-vid1 {req.idempotency_key} part 1 of 1" and group.create_video is True
        uploads = [kw for name, kw in sdk.calls if name == "StorageFolder._upload_local_file"]
        assert [os.path.basename(u["file_path"]) for u in uploads] == req.frame_names  # time order
        assert [i.title for i in group.images] == req.frame_names
        assert sdk.uploaded_bytes == [png(128, 96, value=i) for i in range(3)]  # the frames' real bytes
        meta = group.client_metadata
        assert meta["framesift_key"] == req.idempotency_key and meta["frame_names"] == req.frame_names
        assert (meta["chunk"], meta["n_chunks"], meta["frame_width"], meta["frame_height"]) == (1, 1, 128, 96)
        assert args["Dataset.link_items"]["item_uuids"] == [sdk.items[0].uuid]
        # pre-annotations: real SDK objects, 0..1 coordinates, one per frame
        inst = sdk.rows[0].instances
        assert [i.object_name for i in inst] == ["car"] * 3
        ann = [i.get_annotations()[0] for i in inst]
        assert [a.frame for a in ann] == [0, 1, 2]
        c = ann[0].coordinates
        assert (c.top_left_x, c.top_left_y, c.width, c.height) == (10 / 128, 20 / 96, 30 / 128, 40 / 96)
        assert ann[0].confidence == 0.9 and ann[0].manual_annotation is False
        assert pushed.ids == ["dh-1"] and pushed.project_id == "proj-1"
        assert pushed.url == "https://app.encord.com/label_editor/dh-1"
        assert pushed.project_url == "https://app.encord.com/projects/view/proj-1/summary"

    def test_second_push_and_find_create_nothing(self, sdk):
        req = make_request(2, backend="encord")
        s3 = self.s3_for(req)
        b = self.backend(sdk, s3)
        first = b.push_sequence(req)
        sdk.calls.clear()
        again = b.push_sequence(req)
        found = b.find_sequence(req.idempotency_key)
        assert again.ids == first.ids == found.ids
        assert [c[0] for c in sdk.calls] == ["Project.list_label_rows_v2", "Project.list_label_rows_v2"]
        assert sdk.calls[0][1] == {
            "data_title_like": f"%{req.idempotency_key}%",
            "include_client_metadata": True,
        }

    def test_long_sequence_is_chunked(self, sdk):
        req = make_request(5, backend="encord", preds=False)
        pushed = self.backend(sdk, self.s3_for(req), max_frames_per_sequence=2).push_sequence(req)
        seqs = [
            kw["private_files"].image_groups[0]
            for name, kw in sdk.calls
            if name == "StorageFolder.add_private_data_to_folder_start"
        ]
        assert [len(s.images) for s in seqs] == [2, 2, 1]
        assert [s.client_metadata["chunk"] for s in seqs] == [1, 2, 3]
        assert [s.title.rsplit(" ", 4)[-4:] for s in seqs][0] == ["part", "1", "of", "3"]
        assert pushed.ids == ["dh-1", "dh-2", "dh-3"] and pushed.n_frames == 5
        assert not any(name == "LabelRowV2.save" for name, _ in sdk.calls)  # nothing to pre-annotate

    def test_retry_after_crash_links_the_uploaded_item_instead_of_uploading_again(self, sdk):
        req = make_request(2, backend="encord")
        b = self.backend(sdk, self.s3_for(req))
        sdk.crash_on_link = True
        with pytest.raises(Crash):
            b.push_sequence(req)
        sdk.crash_on_link = False
        fresh = self.backend(sdk, self.s3_for(req))  # a new worker
        assert fresh.find_sequence(req.idempotency_key) is None  # not in the project yet
        sdk.calls.clear()
        pushed = fresh.push_sequence(req)
        names = [c[0] for c in sdk.calls]
        assert "StorageFolder.add_private_data_to_folder_start" not in names
        assert names.count("Dataset.link_items") == 1
        assert len(sdk.items) == 1 and pushed.ids == ["dh-1"]

    def test_status_mapping_from_workflow_stages(self, sdk):
        req = make_request(2, backend="encord", preds=False)
        b = self.backend(sdk, self.s3_for(req), max_frames_per_sequence=1)
        pushed = b.push_sequence(req)
        assert b.sequence_status(pushed.ids) == SequenceStatus(IN_QUEUE, IN_QUEUE)
        sdk.rows[0].task_status = "ASSIGNED"
        assert b.sequence_status(pushed.ids) == SequenceStatus(IN_PROGRESS, IN_QUEUE)
        sdk.rows[0].stage, sdk.rows[0].task_status = "Review 1", "NEW"
        sdk.rows[1].stage, sdk.rows[1].task_status = "Review 1", "ASSIGNED"
        assert b.sequence_status(pushed.ids) == SequenceStatus(DONE, IN_PROGRESS)
        sdk.rows[0].stage = sdk.rows[1].stage = "Complete"
        assert b.sequence_status(pushed.ids) == SequenceStatus(DONE, DONE)
        stage_calls = [kw for name, kw in sdk.calls if name == "AnnotationStage.get_tasks"]
        assert stage_calls and stage_calls[0] == {"data_hash": ["dh-1"]}

    def test_export_returns_pixel_boxes_of_done_sequences(self, sdk):
        req = make_request(2, backend="encord")
        b = self.backend(sdk, self.s3_for(req, size=(128, 96)))
        pushed = b.push_sequence(req)
        assert b.export_annotations(pushed.ids) == []  # not labeled yet
        sdk.rows[0].stage = "Complete"
        for inst in sdk.rows[0].instances:
            for a in inst.get_annotations():
                a.last_edited_by = "ann@example.com"
        out = b.export_annotations(pushed.ids)
        assert [(a.frame_name, a.boxes, a.annotator) for a in out] == [
            (req.frame_names[0], [Box("car", (10, 20, 30, 40))], "ann@example.com"),
            (req.frame_names[1], [Box("car", (10, 20, 30, 40))], "ann@example.com"),
        ]

    def test_sdk_errors_map_to_ours(self, sdk):
        from encord import exceptions as ex

        req = make_request(1, backend="encord")
        sdk.fail_on = ("EncordUserClient.list_projects", ex.AuthenticationError("bad key"))
        with pytest.raises(BadCredentials, match="refused the credentials"):
            self.backend(sdk, self.s3_for(req)).push_sequence(req)
        sdk.fail_on = ("EncordUserClient.list_projects", ex.RateLimitExceededError(retry_after=7))
        with pytest.raises(BackendUnavailable) as err:
            self.backend(sdk, self.s3_for(req)).push_sequence(req)
        assert err.value.retry_after == 7
        sdk.fail_on = ("EncordUserClient.list_projects", ex.GenericServerError("boom"))
        with pytest.raises(BackendUnavailable):
            self.backend(sdk, self.s3_for(req)).push_sequence(req)

        def bad_key(key, domain):
            raise ValueError("Could not deserialize key data")

        from framesift.labeling.encord import EncordBackend

        b = EncordBackend(None, ssh_private_key="x" * 40, project_name="p", client_factory=bad_key)
        with pytest.raises(BadCredentials, match="cannot use the Encord SSH private key") as e2:
            b.find_sequence("k")
        assert "x" * 40 not in str(e2.value) and "x" * 40 not in repr(b)

    def test_frame_missing_uploads_nothing(self, sdk):
        req = make_request(3, backend="encord")
        s3 = self.s3_for(req)
        del s3.objects[(req.bucket, req.frame_keys[2])]
        with pytest.raises(FrameMissing) as err:
            self.backend(sdk, s3).push_sequence(req)
        assert err.value.key == req.frame_keys[2]
        assert not any(n.startswith("StorageFolder._upload") for n, _ in sdk.calls)

    def test_links_only_after_the_upload_job_is_done(self, sdk):
        """Encord makes the image sequence in an asynchronous upload job: the push waits
        for it (polling) before it lists or links anything."""
        sdk.job_polls = 4
        req = make_request(2, backend="encord")
        pushed = self.backend(sdk, self.s3_for(req)).push_sequence(req)
        names = [c[0] for c in sdk.calls]
        polls = [i for i, n in enumerate(names) if n == "StorageFolder.add_private_data_to_folder_get_result"]
        assert len(polls) == 4 and polls[-1] < names.index("Dataset.link_items")
        assert pushed.ids == ["dh-1"] and len(sdk.items) == 1

    def test_a_job_that_does_not_finish_is_a_bounded_clear_error(self, sdk):
        sdk.job_polls = 10**6
        req = make_request(2, backend="encord")
        guard = MemoryGuard()
        clock = {"t": 0.0}
        b = self.backend(
            sdk,
            self.s3_for(req),
            job_timeout_s=30,
            sleep=lambda s: clock.__setitem__("t", clock["t"] + s),
            clock=lambda: clock["t"],
        )
        with pytest.raises(BackendUnavailable) as err:
            b.push_sequence(req, guard)
        (job_id,) = sdk.jobs
        msg = str(err.value)
        assert str(job_id) in msg and "has not finished after 30 s" in msg and "nothing was linked" in msg
        assert 25 <= clock["t"] <= 35  # bounded by job_timeout_s
        assert not any(n == "Dataset.link_items" for n, _ in sdk.calls)
        assert guard.records[1]["job"] == str(job_id)  # noted before waiting, for the next try

    def test_a_retry_waits_for_the_job_an_earlier_try_started_instead_of_uploading_again(self, sdk):
        req = make_request(2, backend="encord")
        guard = MemoryGuard()
        sdk.crash_on_job_wait = True  # the worker dies while the job runs on Encord's side
        with pytest.raises(Crash):
            self.backend(sdk, self.s3_for(req)).push_sequence(req, guard)
        sdk.crash_on_job_wait = False
        uploads_before = len(sdk.uploaded_bytes)
        fresh = self.backend(sdk, self.s3_for(req))  # the retry, on another worker
        pushed = fresh.push_sequence(req, guard)
        assert len(sdk.items) == 1 and len(sdk.jobs) == 1  # one upload job, one item
        assert len(sdk.uploaded_bytes) == uploads_before  # nothing uploaded again
        assert pushed.ids == ["dh-1"] and guard.records[1]["platform_id"] == str(sdk.items[0].uuid)

    def test_a_zombie_is_stopped_before_it_uploads(self, sdk):
        from framesift.io.leases import ClaimLost

        req = make_request(2, backend="encord")
        guard = MemoryGuard(lost=True)  # this attempt's claim was taken over
        with pytest.raises(ClaimLost):
            self.backend(sdk, self.s3_for(req)).push_sequence(req, guard)
        assert not sdk.jobs and not sdk.uploaded_bytes


class MemoryGuard:
    """The push's create-once guard (labeling.creations) in memory: records per chunk;
    ``lost`` makes every check fail, as for an attempt whose claim was taken over."""

    def __init__(self, lost=False):
        self.records: dict[int, dict] = {}
        self.lost = lost

    def begin(self, chunk):
        return dict(self.records.setdefault(chunk, {}))

    def note(self, chunk, **info):
        self.records[chunk].update(info)

    def check(self, chunk):
        from framesift.io.leases import ClaimLost

        if self.lost:
            raise ClaimLost(f"create chunk {chunk}")

    def created(self, chunk, platform_id):
        self.records[chunk]["platform_id"] = platform_id


class FakeSdk:
    """The encord SDK objects the backend touches, in memory, recording every call.

    ``record`` binds each call to the real SDK method's signature, so a call that would
    not bind to encord 0.1.211 fails the test.
    """

    def __init__(self):
        from encord import EncordUserClient
        from encord.dataset import Dataset
        from encord.objects import LabelRowV2
        from encord.project import Project
        from encord.storage import StorageFolder
        from encord.workflow.stages.annotation import AnnotationStage

        self.real = {
            "EncordUserClient": EncordUserClient,
            "Project": Project,
            "Dataset": Dataset,
            "StorageFolder": StorageFolder,
            "LabelRowV2": LabelRowV2,
            "AnnotationStage": AnnotationStage,
        }
        self.calls: list[tuple[str, dict]] = []
        self.projects: list = []
        self.folders: list = []
        self.items: list = []
        self.rows: list = []
        self.uploaded_bytes: list[bytes] = []
        self.jobs: dict = {}
        self.job_polls = 2  # polls of an upload job until it is DONE
        self.crash_on_job_wait = False
        self.crash_on_link = False
        self.fail_on: tuple[str, Exception] | None = None

    def record(self, qualname: str, *args, **kwargs) -> None:
        cls_name, meth = qualname.split(".")
        real = inspect.getattr_static(self.real[cls_name], meth)
        real = getattr(real, "__func__", real)
        bound = inspect.signature(real).bind(None, *args, **kwargs)  # raises TypeError on a bad call
        self.calls.append((qualname, {k: v for k, v in bound.arguments.items() if k != "self"}))
        if self.fail_on and self.fail_on[0] == qualname:
            raise self.fail_on[1]

    def factory(self, ssh_private_key, domain):
        from encord import EncordUserClient

        inspect.signature(EncordUserClient.create_with_ssh_private_key).bind(ssh_private_key, domain=domain)
        self.calls.append(("create_with_ssh_private_key", {"domain": domain}))
        return FakeUserClient(self)


class FakeUserClient:
    def __init__(self, sdk: FakeSdk):
        self.sdk = sdk

    def list_projects(self, **kw):
        self.sdk.record("EncordUserClient.list_projects", **kw)
        return [p for p in self.sdk.projects if p.title == kw.get("title_eq")]

    def create_ontology(self, title, description="", structure=None):
        self.sdk.record(
            "EncordUserClient.create_ontology", title, description=description, structure=structure
        )
        self.sdk.ontology = SimpleNamespace(ontology_hash="onto-1", structure=structure, save=lambda: None)
        return self.sdk.ontology

    def create_dataset(
        self, dataset_title, dataset_type, dataset_description=None, create_backing_folder=True
    ):
        self.sdk.record(
            "EncordUserClient.create_dataset",
            dataset_title,
            dataset_type,
            dataset_description=dataset_description,
            create_backing_folder=create_backing_folder,
        )
        self.sdk.dataset = FakeDataset(self.sdk)
        return SimpleNamespace(dataset_hash="ds-1")

    def create_project(self, project_title, dataset_hashes, project_description="", ontology_hash=""):
        self.sdk.record(
            "EncordUserClient.create_project",
            project_title,
            dataset_hashes,
            project_description=project_description,
            ontology_hash=ontology_hash,
        )
        self.sdk.projects.append(FakeProject(self.sdk, project_title, self.sdk.ontology.structure))
        return "proj-1"

    def get_project(self, project_hash):
        self.sdk.record("EncordUserClient.get_project", project_hash)
        return next(p for p in self.sdk.projects if p.project_hash == project_hash)

    def get_dataset(self, dataset_hash):
        self.sdk.record("EncordUserClient.get_dataset", dataset_hash)
        return self.sdk.dataset

    def list_storage_folders(self, **kw):
        self.sdk.record("EncordUserClient.list_storage_folders", **kw)
        return [f for f in self.sdk.folders if kw.get("search") in f.name]

    def create_storage_folder(self, name, description=None):
        self.sdk.record("EncordUserClient.create_storage_folder", name, description=description)
        folder = FakeFolder(self.sdk, name)
        self.sdk.folders.append(folder)
        return folder


class FakeProject:
    project_hash = "proj-1"
    ontology_hash = "onto-1"

    def __init__(self, sdk, title, structure):
        self.sdk, self.title, self.ontology_structure = sdk, title, structure
        self.workflow = SimpleNamespace(get_stage=self._get_stage)

    def list_datasets(self):
        self.sdk.record("Project.list_datasets")
        return [SimpleNamespace(dataset_hash="ds-1")]

    def list_label_rows_v2(self, **kw):
        self.sdk.record("Project.list_label_rows_v2", **kw)
        rows = self.sdk.rows
        if kw.get("data_hashes") is not None:
            rows = [r for r in rows if r.data_hash in kw["data_hashes"]]
        if kw.get("data_title_like"):
            needle = kw["data_title_like"].strip("%")
            rows = [r for r in rows if needle in r.data_title]
        return list(rows)

    def refetch_ontology(self):
        self.sdk.record("Project.refetch_ontology")

    def _get_stage(self, uuid=None, name=None, type_=None):
        return FakeStage(self.sdk, uuid)


class FakeStage:
    def __init__(self, sdk, uuid):
        self.sdk, self.uuid = sdk, uuid

    def get_tasks(self, **kw):
        self.sdk.record("AnnotationStage.get_tasks", **kw)
        rows = [r for r in self.sdk.rows if r.data_hash in kw["data_hash"]]
        return [
            SimpleNamespace(status=SimpleNamespace(value=r.task_status), data_hash=r.data_hash) for r in rows
        ]


class FakeFolder:
    """A storage folder whose image sequences are made by an asynchronous upload job, as
    Encord's are: the item exists (listed, linkable) only once its job is DONE, which
    takes ``sdk.job_polls`` polls of the job (the server's long poll answers PENDING
    until then)."""

    def __init__(self, sdk, name):
        self.sdk, self.name, self.uuid = sdk, name, uuid.uuid4()

    def list_items(self, **kw):
        self.sdk.record("StorageFolder.list_items", **kw)
        return [i for i in self.sdk.items if kw.get("search", "") in i.name and i.done]

    def create_image_sequence(self, file_paths, title=None, client_metadata=None):
        """The one-call path: here it returns while its job still runs (the item is a
        placeholder not yet listed or linkable), the asynchrony the push must wait out."""
        self.sdk.record(
            "StorageFolder.create_image_sequence", file_paths, title=title, client_metadata=client_metadata
        )
        self.sdk.uploaded_bytes += [open(p, "rb").read() for p in file_paths]
        job = self._job(title, client_metadata, len(file_paths))
        return job.item.uuid

    def _get_upload_signed_urls(self, item_type, count, frames_subfolder_name=None):
        self.sdk.record(
            "StorageFolder._get_upload_signed_urls",
            item_type,
            count,
            frames_subfolder_name=frames_subfolder_name,
        )
        return [
            SimpleNamespace(
                signed_url=f"https://upload.invalid/{n}",
                object_key=f"obj-{n}",
                item_uuid=uuid.uuid4(),
                upload_headers={},
            )
            for n in range(count)
        ]

    def _upload_local_file(
        self, file_path, title, item_type, signed_url, cloud_upload_settings=None, upload_headers=None
    ):
        kw = {} if upload_headers is None else {"upload_headers": upload_headers}
        self.sdk.record("StorageFolder._upload_local_file", file_path, title, item_type, signed_url, **kw)
        self.sdk.uploaded_bytes.append(open(file_path, "rb").read())

    def add_private_data_to_folder_start(self, integration_id, private_files, ignore_errors=False):
        self.sdk.record(
            "StorageFolder.add_private_data_to_folder_start",
            integration_id,
            private_files,
            ignore_errors=ignore_errors,
        )
        (group,) = private_files.image_groups
        assert group.create_video is True  # an image sequence, not an image group
        return self._job(group.title, group.client_metadata, len(group.images)).id

    def add_private_data_to_folder_get_result(self, upload_job_id, timeout_seconds=7 * 24 * 3600):
        from encord.orm.dataset import LongPollingStatus

        self.sdk.record(
            "StorageFolder.add_private_data_to_folder_get_result",
            upload_job_id,
            timeout_seconds=timeout_seconds,
        )
        job = self.sdk.jobs[upload_job_id]
        if self.sdk.crash_on_job_wait:
            raise Crash()
        job.polls_left -= 1
        if job.polls_left <= 0:
            job.item.done = True
        done = job.item.done
        return SimpleNamespace(
            status=LongPollingStatus.DONE if done else LongPollingStatus.PENDING,
            items_with_names=[SimpleNamespace(item_uuid=job.item.uuid, name=job.item.name)] if done else [],
            errors=[],
            units_pending_count=0 if done else 1,
            units_done_count=1 if done else 0,
            units_error_count=0,
            units_cancelled_count=0,
        )

    def _job(self, title, client_metadata, n_files):
        item = SimpleNamespace(
            uuid=uuid.uuid4(), name=title, client_metadata=dict(client_metadata), done=False
        )
        self.sdk.items.append(item)
        job = SimpleNamespace(id=uuid.uuid4(), item=item, polls_left=self.sdk.job_polls, n_files=n_files)
        self.sdk.jobs[job.id] = job
        return job


class FakeDataset:
    def __init__(self, sdk):
        self.sdk = sdk

    def link_items(self, item_uuids, duplicates_behavior=None):
        kw = {} if duplicates_behavior is None else {"duplicates_behavior": duplicates_behavior}
        self.sdk.record("Dataset.link_items", item_uuids, **kw)
        if self.sdk.crash_on_link:
            raise Crash()
        out = []
        for u in item_uuids:
            item = next(i for i in self.sdk.items if i.uuid == u)
            if not item.done:
                from encord.exceptions import ResourceNotFoundError

                raise ResourceNotFoundError(f"item {u} is still being processed")
            row = FakeLabelRow(self.sdk, f"dh-{len(self.sdk.rows) + 1}", item.name, item.client_metadata)
            self.sdk.rows.append(row)
            out.append(SimpleNamespace(uid=row.data_hash))
        return out


class FakeLabelRow:
    def __init__(self, sdk, data_hash, title, meta):
        self.sdk, self.data_hash, self.data_title, self.client_metadata = sdk, data_hash, title, meta
        self.label_hash = None
        self.instances = []
        self.stage = "Annotate 1"
        self.task_status = "NEW"
        self.width = self.height = None
        self.last_edited_at = None

    @property
    def workflow_graph_node(self):
        return SimpleNamespace(uuid=f"stage-{self.stage}", title=self.stage)

    def initialise_labels(self, *args, **kwargs):
        self.sdk.record("LabelRowV2.initialise_labels", *args, **kwargs)

    def add_object_instance(self, object_instance, force=True):
        self.sdk.record("LabelRowV2.add_object_instance", object_instance)
        self.instances.append(object_instance)

    def save(self, *args, **kwargs):
        self.sdk.record("LabelRowV2.save", *args, **kwargs)
        self.label_hash = f"lh-{self.data_hash}"

    def get_object_instances(self, *args, **kwargs):
        return list(self.instances)


# ------------------------------------------------------ the Label Studio service


def test_label_studio_venv_is_built_once_per_requirements(tmp_path, monkeypatch):
    import time

    from framesift.local import label_studio as svc

    req = tmp_path / "requirements-labelstudio.txt"
    req.write_text("label-studio==1.23.2\n")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "label-studio"):
        (venv / "bin" / name).write_text("")
    pip_runs = []
    monkeypatch.setattr(svc, "_run", lambda cmd, env: pip_runs.append(cmd))
    svc.ensure_venv(venv, req)
    assert len(pip_runs) == 1 and pip_runs[0][-2:] == ["-r", str(req)]
    t0 = time.monotonic()
    svc.ensure_venv(venv, req)  # stamp matches: nothing to do
    assert len(pip_runs) == 1 and time.monotonic() - t0 < 0.5
    req.write_text("label-studio==1.23.3\n")  # a new pin rebuilds
    svc.ensure_venv(venv, req)
    assert len(pip_runs) == 2


def test_label_studio_info_never_shows_the_token():
    from framesift.local.label_studio import LabelStudioInfo

    info = LabelStudioInfo("http://127.0.0.1:1", SECRET, "u@x", "pw-secret", 1, "/d")
    assert SECRET not in repr(info) and "pw-secret" not in repr(info)
    assert info.credentials() == {"url": "http://127.0.0.1:1", "token": SECRET}


def test_boxes_are_clipped_to_the_frame():
    assert base.clip_box((-5, 10, 20, 500), 100, 80) == (0, 10, 15, 70)
    assert base.clip_box((90, 70, 50, 50), 100, 80) == (90, 70, 10, 10)
    assert base.clip_box((200, 10, 5, 5), 100, 80)[2] == 0
