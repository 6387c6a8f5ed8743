"""The Label Studio backend and the labeling queue against a REAL Label Studio server.

A module fixture starts Label Studio 1.23 from its own virtualenv
(``framesift.labelstudio_service``; the venv is built once, ~1.5 min, then reused) on a
free loopback port, with a data dir of its own copied from a migrated template (made once,
40-90 s; a copy starts in seconds). Frames are real PNGs extracted by
``framesift.video.extract_to_s3`` from a synthetic clip into moto's S3; Mongo is SecantusDB.
Every test uses its own Label Studio project and Mongo database.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from framesift.config.loading import parse_config
from framesift.ingest.extract import extract_to_s3
from framesift.io.s3 import get_bytes, head, list_objects, put_bytes, upload
from framesift.labeling import queue as lq
from framesift.labeling.base import (
    DONE,
    IN_QUEUE,
    BackendUnavailable,
    BadCredentials,
    FrameMissing,
    build_request,
)
from framesift.labeling.factory import get_backend
from framesift.labeling.label_studio.tasks import px_to_ls
from framesift.local.synth import make_video
from tests.fakes import Crash

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["box", "disc"]
SCHEMA = {
    "task_type": "object-detection",
    "categories": [{"id": 0, "name": "box"}, {"id": 1, "name": "disc"}, {"id": 2, "name": "triangle"}],
}


@pytest.fixture(scope="module")
def clip(stack, s3, tmp_path_factory):
    """A 5 s synthetic clip uploaded and extracted at 1 fps: 5 PNG frames in S3."""
    tag = uuid.uuid4().hex[:8]
    base = {
        "storage": {
            "bucket": stack.bucket,
            "videos_prefix": f"ls-{tag}/videos/",
            "output_prefix": f"ls-{tag}/out/",
        },
        "important_classes": CLASSES,
        "extraction": {"dedupe": {"enabled": False}},
    }
    cfg = parse_config(base)
    work = tmp_path_factory.mktemp("clip")
    path = make_video(work / "street.mp4", seconds=5, fps=25)
    key = f"ls-{tag}/videos/street.mp4"
    upload(s3, path, stack.bucket, key)
    obj = head(s3, stack.bucket, key)
    manifest = extract_to_s3(s3, stack.bucket, key, obj.etag, cfg, work_dir=work)
    assert manifest["status"] == "extracted" and len(manifest["frame_names"]) == 5
    return {"base": base, "key": key, "manifest": manifest}


def predictions_for(names):
    """Lightly-format predictions: a box and a disc on every frame, plus a triangle (not an important class)."""
    return [
        {
            "file_name": n,
            "predictions": [
                {"category_id": 0, "bbox": [10 + i, 20, 30, 40], "score": 0.9},
                {"category_id": 1, "bbox": [100, 50, 60, 60], "score": 0.6},
                {"category_id": 2, "bbox": [5, 5, 10, 10], "score": 0.4},
            ],
        }
        for i, n in enumerate(names)
    ]


@pytest.fixture
def cfg(clip):
    data = json.loads(json.dumps(clip["base"]))
    data["labeling"] = {
        "backend": "label_studio",
        "project_name": f"it-{uuid.uuid4().hex[:8]}",
        "labeler": "ann@example.com",
    }
    return parse_config(data)


@pytest.fixture
def api(label_studio):
    """GET/POST on Label Studio's API with the token, for checking what is there."""
    session = requests.Session()
    session.headers["Authorization"] = f"Token {label_studio.token}"

    class Api:
        def get(self, path, **kw):
            resp = session.get(label_studio.url + path, timeout=30, **kw)
            resp.raise_for_status()
            return resp

        def post(self, path, **kw):
            resp = session.post(label_studio.url + path, timeout=30, **kw)
            resp.raise_for_status()
            return resp

        def tasks(self, project_id):
            data = self.get(
                "/api/tasks", params={"project": project_id, "page_size": 100, "fields": "all"}
            ).json()
            return sorted(data["tasks"], key=lambda t: t["id"])

    return Api()


def make_request(cfg, clip, *, selection_id="sel-1", frame_names=None, video_id=None):
    m = clip["manifest"]
    names = frame_names or list(reversed(m["frame_names"]))  # the selection's order is not time order
    return build_request(
        cfg,
        selection_id=selection_id,
        video_id=video_id or m["video_id"],
        video_key=clip["key"],
        frame_names=names,
        predictions=predictions_for(m["frame_names"]),
        schema=SCHEMA,
        model_version="yolo-it-1",
    )


def backend_for(cfg, label_studio, s3, **kw):
    return get_backend(cfg, label_studio.credentials(), s3, **kw)


# ----------------------------------------------------------------------- tests


def test_push_creates_one_sequence_task_with_frames_and_predictions(label_studio, api, cfg, clip, s3, db):
    backend = backend_for(cfg, label_studio, s3)
    req = make_request(cfg, clip)
    rec = lq.push_exactly_once(db, backend, req, labeler=cfg.labeling.labeler, reviewer="rev@example.com")

    # the queue record has every field
    for field in lq.RECORD_FIELDS:
        assert rec.get(field) not in (None, [], ""), field
    assert rec["state"] == lq.PUSHED and rec["backend"] == "label_studio"
    assert rec["Labeling status"] == IN_QUEUE and rec["Reviewing status"] == IN_QUEUE
    assert rec["frames"] == clip["manifest"]["frame_names"]  # time order
    assert rec["url"].startswith(label_studio.url) and len(rec["backend_ids"]) == 1

    # the project: multi-image config with our classes
    project = api.get(f"/api/projects/{rec['project_id']}").json()
    assert project["title"] == cfg.labeling.project_name
    assert 'valueList="$images"' in project["label_config"]
    assert project["parsed_label_config"]["boxes"]["labels"] == CLASSES

    # one task = the whole sequence, frames in time order
    (task,) = api.tasks(rec["project_id"])
    assert str(task["id"]) == rec["backend_ids"][0]
    data = task["data"]
    assert data["frame_names"] == clip["manifest"]["frame_names"]
    assert len(data["images"]) == 5 and data["framesift_key"] == req.idempotency_key
    assert data["video_id"] == clip["manifest"]["video_id"] and data["chunk"] == 1 and data["n_chunks"] == 1

    # images: Label Studio serves the PNG bytes we have in S3
    img = api.get(data["images"][2])
    assert img.headers["Content-Type"] == "image/png" and img.content[:8] == b"\x89PNG\r\n\x1a\n"
    frame_key = f"{req.frames_prefix}/{data['frame_names'][2]}"
    assert img.content == get_bytes(s3, req.bucket, frame_key)
    assert requests.get(label_studio.url + data["images"][2], timeout=10).status_code in (
        401,
        403,
    )  # not public

    # predictions: boxes of the important classes, percent coordinates, per frame
    (pred,) = task["predictions"]
    assert pred["model_version"] == "yolo-it-1"
    result = pred["result"]
    assert len(result) == 10  # 5 frames x (box, disc); the triangle is not an important class
    assert {r["value"]["rectanglelabels"][0] for r in result} == set(CLASSES)
    first_box = next(r for r in result if r["item_index"] == 3 and r["value"]["rectanglelabels"] == ["box"])
    width, height = first_box["original_width"], first_box["original_height"]
    assert (width, height) == (320, 240)
    expected = px_to_ls([13, 20, 30, 40], width, height)
    assert {k: first_box["value"][k] for k in ("x", "y", "width", "height")} == pytest.approx(
        {k: expected[k] for k in ("x", "y", "width", "height")}
    )

    # pushing again creates nothing new
    again = lq.push_exactly_once(db, backend, make_request(cfg, clip))
    assert again["backend_ids"] == rec["backend_ids"]
    assert len(api.tasks(rec["project_id"])) == 1
    assert db[lq.COLLECTION].count_documents({}) == 1
    # and a fresh backend (another worker) finds it by its key
    found = backend_for(cfg, label_studio, s3).find_sequence(req.idempotency_key)
    assert found is not None and found.ids == rec["backend_ids"]


def test_labelers_view_key_times_reasons_and_model_version(label_studio, api, cfg, clip, s3, db):
    """What a labeler sees (issue #17, point 9): the task titled by the video's S3 key, the
    frames' times and why they were selected as Data Manager columns, the prediction's
    model version a name and a hash, not a path."""
    from framesift.inference.models import DEFAULT_MODEL_URI, model_version
    from framesift.io.layout import frame_times
    from framesift.labeling.push import selection_reasons

    m = clip["manifest"]
    vid, names = m["video_id"], m["frame_names"]
    # a selections record: frames 3 and 1 picked (in that order), 2 added as a sequence frame
    db.selections.insert_one(
        {
            "_id": "sel-view",
            "selected": [f"{vid}/{names[3]}", f"other/{names[0]}", f"{vid}/{names[1]}", f"{vid}/{names[2]}"],
            "objective_names": ["DIVERSITY", "UNCERTAINTY"],
            "objective_values": [[0.91, 0.5], [0.8, 0.1], [0.4, 0.25], [None, None]],
        }
    )
    times = frame_times(s3, m["manifest_uri"])
    assert times == {n: pytest.approx(float(i)) for i, n in enumerate(names)}  # 1 fps
    req = build_request(
        cfg,
        selection_id="sel-view",
        video_id=vid,
        video_key=clip["key"],
        frame_names=[names[3], names[1], names[2]],
        predictions=predictions_for(names),
        schema=SCHEMA,
        model_version=model_version(DEFAULT_MODEL_URI, "0123456789abcdef" * 4),
        frame_times_s=times,
        frame_reasons=selection_reasons(db, "sel-view", vid),
    )
    rec = lq.push_exactly_once(db, backend_for(cfg, label_studio, s3), req)
    (task,) = api.tasks(rec["project_id"])
    data = task["data"]
    assert data["title"] == clip["key"] and clip["key"].endswith("/street.mp4")
    assert data["video_key"] == clip["key"] and data["n_frames"] == 3
    assert data["frame_names"] == [names[1], names[2], names[3]]  # time order
    assert data["frame_times_s"] == pytest.approx([1.0, 2.0, 3.0])
    assert data["time_span"] == "1.00 s - 3.00 s"
    assert data["frame_reasons"] == [
        "pick 3 of 4: DIVERSITY 0.40, UNCERTAINTY 0.25",
        "pick 4 of 4: part of a sequence around a pick",
        "pick 1 of 4: DIVERSITY 0.91, UNCERTAINTY 0.50",
    ]
    (pred,) = task["predictions"]
    assert pred["model_version"] == "yolov3-tiny@01234567"


def test_long_sequence_becomes_several_tasks(label_studio, api, cfg, clip, s3, db):
    backend = backend_for(cfg, label_studio, s3, max_frames_per_task=2)
    rec = lq.push_exactly_once(db, backend, make_request(cfg, clip))
    tasks = api.tasks(rec["project_id"])
    assert [len(t["data"]["images"]) for t in tasks] == [2, 2, 1]
    assert [t["data"]["chunk"] for t in tasks] == [1, 2, 3]
    assert [str(t["id"]) for t in tasks] == rec["backend_ids"]
    assert tasks[1]["data"]["title"].endswith("(part 2 of 3)")
    assert [n for t in tasks for n in t["data"]["frame_names"]] == clip["manifest"]["frame_names"]
    assert backend.find_sequence(rec["idempotency_key"]).ids == rec["backend_ids"]


def test_a_push_interrupted_mid_sequence_resumes_with_the_missing_parts(label_studio, api, cfg, clip, s3, db):
    backend = backend_for(cfg, label_studio, s3, max_frames_per_task=2)
    real_push_chunk = backend._push_chunk
    made = []

    def flaky(*args, **kwargs):
        if made:
            raise BackendUnavailable("simulated: Label Studio answered 502 after part 1")
        made.append(real_push_chunk(*args, **kwargs))
        return made[-1]

    backend._push_chunk = flaky
    req = make_request(cfg, clip)
    with pytest.raises(BackendUnavailable):
        lq.push_exactly_once(db, backend, req)
    pid = _project_id(api, cfg)
    assert [t["data"]["chunk"] for t in api.tasks(pid)] == [1]
    assert db[lq.COLLECTION].find_one({})["state"] == lq.PENDING
    assert backend.find_sequence(req.idempotency_key) is None  # half-made is not "found"

    backend._push_chunk = real_push_chunk
    rec = lq.push_exactly_once(db, backend, req)
    tasks = api.tasks(pid)
    assert [t["data"]["chunk"] for t in tasks] == [1, 2, 3]  # part 1 kept, parts 2 and 3 added
    assert tasks[0]["id"] == made[0] and rec["backend_ids"] == [str(t["id"]) for t in tasks]
    assert rec["state"] == lq.PUSHED and rec["attempts"] == 2


CRASHING_PUSH = r"""
import json, os, sys
from pymongo import MongoClient
from framesift.config.loading import parse_config
from framesift.io.s3 import make_client
from framesift.labeling import queue as lq
from framesift.labeling.base import build_request
from framesift.labeling.factory import get_backend

args = json.loads(sys.argv[1])
cfg = parse_config(args["cfg"])
backend = get_backend(cfg, {"url": args["url"], "token": os.environ["FRAMESIFT_TEST_LS_TOKEN"]},
                      make_client(endpoint_url=args["s3"]))
request = build_request(cfg, **args["request"])
db = MongoClient(args["mongo"])[args["db"]]

def die(pushed):
    print("platform call done:", pushed.ids, flush=True)
    os._exit(17)  # killed between the platform call and the record update

lq.push_exactly_once(db, backend, request, owner="extract-task-7", after_push=die)
print("not reached", flush=True)
"""


def test_crash_between_push_and_record_leaves_no_duplicate(label_studio, api, cfg, clip, s3, db, stack):
    m = clip["manifest"]
    args = {
        "cfg": cfg.model_dump(mode="json"),
        "url": label_studio.url,
        "s3": stack.s3_endpoint,
        "mongo": stack.mongo_uri,
        "db": db.name,
        "request": {
            "selection_id": "sel-crash",
            "video_id": m["video_id"],
            "video_key": clip["key"],
            "frame_names": m["frame_names"],
            "predictions": predictions_for(m["frame_names"]),
            "schema": SCHEMA,
            "model_version": "yolo-it-1",
        },
    }
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "include"), os.environ.get("PYTHONPATH", "")]),
        "FRAMESIFT_TEST_LS_TOKEN": label_studio.token,
    }
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_PUSH, json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 17, proc.stdout + proc.stderr
    assert "platform call done" in proc.stdout and "not reached" not in proc.stdout
    assert label_studio.token not in proc.stdout + proc.stderr

    # the platform has the task; the record is still pending (the worker died)
    pending = db[lq.COLLECTION].find_one({})
    assert pending["state"] == lq.PENDING and pending["backend_ids"] == [] and pending["attempts"] == 1
    (task,) = api.tasks(_project_id(api, cfg))

    # the retry (the same task instance, after the worker died) finds it and completes the record
    backend = backend_for(cfg, label_studio, s3)
    req = build_request(cfg, **args["request"])
    rec = lq.push_exactly_once(db, backend, req, owner="extract-task-7")
    assert rec["state"] == lq.PUSHED and rec["recovered"] is True and rec["attempts"] == 2
    assert rec["backend_ids"] == [str(task["id"])]
    assert [t["id"] for t in api.tasks(rec["project_id"])] == [task["id"]]  # no second task


def _project_id(api, cfg):
    data = api.get("/api/projects", params={"title": cfg.labeling.project_name}).json()
    (project,) = [p for p in data["results"] if p["title"] == cfg.labeling.project_name]
    return project["id"]


@pytest.fixture(scope="module")
def folder_clips(stack, s3, clip, tmp_path_factory):
    """Two 2 s clips in two camera folders under the clip's videos prefix, extracted at 1 fps."""
    cfg = parse_config(clip["base"])
    work = tmp_path_factory.mktemp("folders")
    out = []
    for folder in ("cam1", "cam2"):
        key = f"{cfg.storage.videos_prefix}{folder}/gate.mp4"
        upload(s3, make_video(work / f"{folder}.mp4", seconds=2, fps=25), stack.bucket, key)
        manifest = extract_to_s3(s3, stack.bucket, key, head(s3, stack.bucket, key).etag, cfg, work_dir=work)
        out.append({"folder": folder, "key": key, "manifest": manifest})
    return out


def folder_request(cfg, video):
    m = video["manifest"]
    return build_request(
        cfg,
        selection_id="sel-folders",
        video_id=m["video_id"],
        video_key=video["key"],
        frame_names=m["frame_names"],
        predictions=predictions_for(m["frame_names"]),
        schema=SCHEMA,
    )


def test_project_per_folder_makes_one_project_per_folder_and_pushes_once(
    label_studio, api, clip, folder_clips, s3, db
):
    """``labeling.project_per: folder`` (issue #17, the labeler's view): each camera folder
    gets its own project; a retry, also one that recovers after a crash, looks in the
    record's project and creates no second task."""
    name = f"pf-{uuid.uuid4().hex[:8]}"
    cfg = parse_config({**clip["base"], "labeling": {"project_name": name, "project_per": "folder"}})
    cam1, cam2 = folder_clips
    backend = backend_for(cfg, label_studio, s3)
    rec1 = lq.push_exactly_once(db, backend, folder_request(cfg, cam1))

    def die(_pushed):
        raise Crash()

    with pytest.raises(Crash):  # cam2: the worker dies between the platform call and the record
        lq.push_exactly_once(db, backend, folder_request(cfg, cam2), owner="push-cam2", after_push=die)
    pending = db[lq.COLLECTION].find_one({"video_key": cam2["key"]})
    assert pending["state"] == lq.PENDING and pending["project"] == f"{name} / cam2"
    # the retry, by a fresh worker: found in cam2's project, not pushed again
    rec2 = lq.push_exactly_once(
        db, backend_for(cfg, label_studio, s3), folder_request(cfg, cam2), owner="push-cam2"
    )
    assert rec2["state"] == lq.PUSHED and rec2["recovered"] is True

    projects = {p["title"]: p for p in _projects(api) if p["title"].startswith(name)}
    assert sorted(projects) == [f"{name} / cam1", f"{name} / cam2"]
    for rec, video in ((rec1, cam1), (rec2, cam2)):
        project = projects[f"{name} / {video['folder']}"]
        assert rec["project"] == project["title"] and rec["project_id"] == str(project["id"])
        assert rec["url"].startswith(f"{label_studio.url}/projects/{project['id']}/data?task=")
        assert project["parsed_label_config"]["boxes"]["labels"] == CLASSES
        (task,) = api.tasks(project["id"])
        assert [str(task["id"])] == rec["backend_ids"] and task["data"]["video_key"] == video["key"]

    # pushing both again (another run, another worker) creates nothing
    again = backend_for(cfg, label_studio, s3)
    for rec, video in ((rec1, cam1), (rec2, cam2)):
        assert (
            lq.push_exactly_once(db, again, folder_request(cfg, video))["backend_ids"] == rec["backend_ids"]
        )
        assert len(api.tasks(rec["project_id"])) == 1
    assert db[lq.COLLECTION].count_documents({}) == 2


def test_two_pushes_creating_the_same_new_project_keep_one(label_studio, api, cfg, s3):
    """Two mapped pushes of a new folder may both miss its project and create it: both end
    in the oldest, and the other one is deleted."""
    first = backend_for(cfg, label_studio, s3)
    second = backend_for(cfg, label_studio, s3)
    find = second._find_project
    blind = []

    def find_after_the_first_missed_it(title):
        if not blind:
            blind.append(title)
            return None  # listed before the first push's project existed
        return find(title)

    second._find_project = find_after_the_first_missed_it
    ref1 = first.ensure_project(CLASSES)
    ref2 = second.ensure_project(CLASSES)
    assert blind and ref2.id == ref1.id
    assert [p["id"] for p in _projects(api) if p["title"] == cfg.labeling.project_name] == [int(ref1.id)]


def _projects(api):
    return api.get("/api/projects", params={"page_size": 1000}).json()["results"]


def test_platform_down_is_backend_unavailable(cfg, clip, s3, db):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    backend = get_backend(cfg, {"url": f"http://127.0.0.1:{closed}", "token": "t" * 40}, s3)
    with pytest.raises(BackendUnavailable) as err:
        lq.push_exactly_once(db, backend, make_request(cfg, clip))
    assert err.value.retryable
    rec = db[lq.COLLECTION].find_one({})
    assert rec["state"] == lq.PENDING and "BackendUnavailable" in rec["last_error"]


def test_wrong_token_is_bad_credentials_and_fails_fast(label_studio, cfg, clip, s3, db):
    wrong = "f" * 40
    backend = get_backend(cfg, {"url": label_studio.url, "token": wrong}, s3)
    t0 = time.monotonic()
    with pytest.raises(BadCredentials) as err:
        lq.push_exactly_once(db, backend, make_request(cfg, clip))
    assert time.monotonic() - t0 < 5 and not err.value.retryable
    assert "HTTP 401" in str(err.value) and wrong not in str(err.value)
    assert wrong not in (db[lq.COLLECTION].find_one({})["last_error"] or "")


def test_personal_access_token_works_too(label_studio, api, cfg, s3):
    pat = api.post("/api/token/").json()["token"]  # a JWT refresh token of the same user
    ref = get_backend(cfg, {"url": label_studio.url, "token": pat}, s3).ensure_project(CLASSES)
    assert api.get(f"/api/projects/{ref.id}").json()["title"] == cfg.labeling.project_name


def test_frame_missing_names_the_key_while_another_video_goes_on(label_studio, api, cfg, clip, s3, db):
    m = clip["manifest"]
    # a second "video": a copy of the clip's frames under another video id, one frame then lost
    other_id = "0ther" + uuid.uuid4().hex[:11]
    src_prefix = m["frames_prefix"].split("/", 3)[3].rstrip("/")
    dst_prefix = src_prefix.replace(m["video_id"], other_id)
    for obj in list_objects(s3, cfg.storage.out_bucket, src_prefix + "/"):
        if "/.lightly/" not in obj.key:
            put_bytes(
                s3, obj.bucket, obj.key.replace(src_prefix, dst_prefix), get_bytes(s3, obj.bucket, obj.key)
            )
    lost = f"{dst_prefix}/{m['frame_names'][3]}"
    s3.delete_object(Bucket=cfg.storage.out_bucket, Key=lost)

    backend = backend_for(cfg, label_studio, s3)
    outcomes = {}
    for vid in (other_id, m["video_id"]):  # as the DAG would: one push per video, errors kept per video
        try:
            outcomes[vid] = lq.push_exactly_once(db, backend, make_request(cfg, clip, video_id=vid))
        except FrameMissing as exc:
            outcomes[vid] = exc
    err = outcomes[other_id]
    assert isinstance(err, FrameMissing) and err.key == lost and lost in str(err)
    assert outcomes[m["video_id"]]["state"] == lq.PUSHED
    tasks = api.tasks(outcomes[m["video_id"]]["project_id"])
    assert [t["data"]["video_id"] for t in tasks] == [m["video_id"]]  # nothing half-made for the broken one
    failed = db[lq.COLLECTION].find_one({"video_id": other_id})
    assert failed["state"] == lq.PENDING and lost in failed["last_error"]


def test_sync_status_and_export_after_a_person_labels(label_studio, api, cfg, clip, s3, db):
    backend = backend_for(cfg, label_studio, s3)
    rec = lq.push_exactly_once(db, backend, make_request(cfg, clip))
    assert lq.sync_status(db, backend) == {"checked": 1, "changed": 0, "done": 0, "missing": 0}
    assert db[lq.COLLECTION].find_one({})["Labeling status"] == IN_QUEUE

    # a person labels the sequence: one box on frame 1, one disc on frame 4
    task_id = int(rec["backend_ids"][0])
    boxes = {1: ("box", [32, 24, 64, 48]), 4: ("disc", [160, 120, 80, 60])}
    result = [
        {
            "id": f"r{i}",
            "from_name": "boxes",
            "to_name": "frames",
            "type": "rectanglelabels",
            "item_index": i,
            "original_width": 320,
            "original_height": 240,
            "image_rotation": 0,
            "value": {**px_to_ls(bbox, 320, 240), "rectanglelabels": [cls]},
        }
        for i, (cls, bbox) in boxes.items()
    ]
    api.post(f"/api/tasks/{task_id}/annotations", json={"result": result, "lead_time": 12.5})

    counts = lq.sync_status(db, backend)
    assert counts["changed"] == 1 and counts["done"] == 1  # Community: no review step, done when labeled
    after = db[lq.COLLECTION].find_one({})
    assert after["Labeling status"] == DONE and after["status_history"][-1]["Labeling status"] == DONE
    assert lq.sync_status(db, backend)["checked"] == 0  # done records are not polled again

    exported = backend.export_annotations(after["backend_ids"])
    assert [a.frame_name for a in exported] == clip["manifest"]["frame_names"]
    got = {i: [(b.class_name, list(b.bbox)) for b in a.boxes] for i, a in enumerate(exported)}
    assert got == {0: [], 1: [("box", [32, 24, 64, 48])], 2: [], 3: [], 4: [("disc", [160, 120, 80, 60])]}
    assert {a.annotator for a in exported} == {label_studio.username}


def _attempt(try_number, heartbeat_s=0.2):
    from framesift.io.leases import Attempt

    return Attempt(
        run_id="run-z",
        try_number=try_number,
        task="framesift_ingest.push_to_labeling[0]",
        lease_s=1.5,
        heartbeat_s=heartbeat_s,
    )


def _zombie_and_retry(label_studio, api, cfg, clip, s3, db, stall_on):
    """Try 1 stalls at ``stall_on`` and stops renewing its lease (a frozen worker); try 2
    takes over and pushes; then try 1 wakes up. Returns (try 1's error, try 2's record,
    the project's tasks)."""
    import threading

    zombie_backend = backend_for(cfg, label_studio, s3)
    stalled, wake = threading.Event(), threading.Event()
    real_request = zombie_backend.client.request

    def request(method, path, **kw):
        if stall_on(method, path, kw) and not stalled.is_set():
            stalled.set()
            wake.wait(60)
        return real_request(method, path, **kw)

    zombie_backend.client.request = request
    out = {}

    def zombie():
        try:
            out["value"] = lq.push_exactly_once(
                db, zombie_backend, make_request(cfg, clip), owner=_attempt(1, heartbeat_s=60)
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=zombie)
    t.start()
    assert stalled.wait(60), out
    rec = lq.push_exactly_once(
        db, backend_for(cfg, label_studio, s3), make_request(cfg, clip), owner=_attempt(2)
    )
    wake.set()
    t.join(60)
    return out.get("error"), rec, api.tasks(rec["project_id"])


def test_a_zombie_and_its_retry_push_one_task(label_studio, api, cfg, clip, s3, db):
    """The zombie stalls while uploading the frames (before its create call): after it
    wakes up, its check before creating the task fails; one task in Label Studio."""
    from framesift.io.leases import ClaimLost

    err, rec, tasks = _zombie_and_retry(
        label_studio, api, cfg, clip, s3, db, lambda m, p, kw: m == "POST" and "files" in kw
    )
    assert isinstance(err, ClaimLost), err
    assert [t["id"] for t in tasks] == [int(i) for i in rec["backend_ids"]] and len(tasks) == 1


def test_a_zombie_whose_create_call_lands_deletes_its_task(label_studio, api, cfg, clip, s3, db):
    """The zombie stalls after its last check, with its create call about to be sent: the
    task it makes is refused by the create-once record and deleted again; one task left."""
    from framesift.io.leases import ClaimLost

    err, rec, tasks = _zombie_and_retry(
        label_studio,
        api,
        cfg,
        clip,
        s3,
        db,
        lambda m, p, kw: m == "POST" and (kw.get("params") or {}).get("return_task_ids") == "true",
    )
    assert isinstance(err, ClaimLost), err
    assert [t["id"] for t in tasks] == [int(i) for i in rec["backend_ids"]] and len(tasks) == 1
    assert db["labeling_creations"].find_one({})["platform_id"] == rec["backend_ids"][0]
