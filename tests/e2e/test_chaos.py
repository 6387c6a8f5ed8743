"""Chaos: framesift_ingest through a real Airflow while its task processes are killed.

Airflow 3 (api-server, scheduler, dag-processor, triggerer; LocalExecutor, SQLite) on
loopback, the embedded stack, a real Label Studio. 12 generated videos are uploaded; the
uploads watcher (prefix listing) reports them, and every upload is reported a second
time: one more asset event per video, posted through the REST API with the payload the
watcher gives (what a restarted triggerer, or SQS's at-least-once delivery, does). The
duplicates start runs of their own, racing the first. A seeded plan (``framesift.io.faults``) then
kills task processes with SIGKILL at random points: during extraction, during inference,
during the push, and between the platform call and the Mongo write; for some videos the
retry is killed too, so Airflow gives up and the video is stranded for a later run. One
push is frozen (SIGSTOP, with its supervisor) right before it creates its Label Studio
task: Airflow presumes it dead and retries it; the retry takes the push over; then the
zombie is resumed (SIGCONT) and must neither create a task nor record anything. Airflow
retries each task once after 2 s (a cluster policy in the test's AIRFLOW_HOME); leases
are 6 s. Recovery runs (manual triggers) follow until nothing is left to do.

Printed and asserted: kills survived, videos pushed exactly once (tasks counted through
Label Studio's API), stranded videos 0, duplicates (registry records, queue records,
Label Studio tasks, frames in S3) 0, the zombie's refused writes. ``FRAMESIFT_CHAOS_SEED``
picks another plan; a failing seed reproduces.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from framesift.config.loading import load_config
from framesift.io.s3 import list_objects, upload
from framesift.local.synth import make_video
from tests.e2e.test_rest_e2e import DAG_ID, Airflow, _free_port, airflow_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

N_VIDEOS = 12
SEED = int(os.environ.get("FRAMESIFT_CHAOS_SEED", "1616"))
LEASE_S, HEARTBEAT_S = 6.0, 1.0
KILL_POINTS = ("stage.extracting", "stage.inferring", "stage.pushing", "push.after_platform")
STRANDED = 4  # videos whose retry is killed too: Airflow gives up, a later run finishes them
TIME_BUDGET_S = 600  # from the uploads until quiet
WORKING = ("extracting", "inferring", "selecting", "pushing")

POLICY = '''
from datetime import timedelta


def task_policy(task):
    """Chaos test: retry once, quickly (the DAG's own policy waits 30 s and more)."""
    task.retries = 1
    task.retry_delay = timedelta(seconds=2)
    task.retry_exponential_backoff = False
'''


def plan(seed: int, keys: list[str], chaos_dir: Path) -> dict:
    rng = random.Random(seed)
    points = [KILL_POINTS[i % len(KILL_POINTS)] for i in range(len(keys))]
    rng.shuffle(points)
    rules = []
    for i, (key, point) in enumerate(zip(keys, points, strict=True)):
        delay = round(rng.uniform(0.05, 1.5), 3)
        rules.append(
            {"id": f"k{i}", "point": point, "key": key, "try": 1, "action": "kill", "delay_s": delay}
        )
    for i in rng.sample(range(len(keys)), STRANDED):
        rules.append({**rules[i], "id": f"s{i}", "try": 2, "delay_s": round(rng.uniform(0.05, 1.5), 3)})
    # the zombie: a video whose own kill is not in the push, frozen before its create call
    zombie = rng.choice([k for k, p in zip(keys, points, strict=True) if p.startswith("stage.ext")])
    rules.append(
        {
            "id": "z",
            "point": "push.before_create",
            "key": zombie,
            "try": 1,
            "action": "freeze",
            "with_parent": True,
        }
    )
    return {"dir": str(chaos_dir), "seed": seed, "zombie": zombie, "rules": rules}


def fired(chaos_dir: Path) -> list[dict]:
    path = chaos_dir / "fired.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def chaos(stack, label_studio, tmp_path_factory):
    """The config (prefixes, database, project of its own), the fault plan, a running Airflow."""
    tag = uuid.uuid4().hex[:8]
    tmp = tmp_path_factory.mktemp("chaos")
    config = tmp / "framesift.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": {
                    "bucket": stack.bucket,
                    "videos_prefix": f"chaos-{tag}/videos/",
                    "output_prefix": f"chaos-{tag}/out/",
                },
                "mongo": {"database": f"chaos_{tag}"},
                "discovery": {"poll_interval_s": 2, "drain_cron": None},
                "claims": {"lease_s": LEASE_S, "heartbeat_s": HEARTBEAT_S},
                "extraction": {"dedupe": {"enabled": False}},
                "inference": {"imgsz": 160, "batch_size": 8},
                "selection": {"n_samples": 1000},  # every frame: every video gets pushed
                "labeling": {"project_name": f"chaos-{tag}"},
            }
        )
    )
    cfg = load_config(config)
    keys = [f"{cfg.storage.videos_prefix}clip{i:02d}.mp4" for i in range(N_VIDEOS)]
    chaos_dir = tmp / "faults"
    chaos_dir.mkdir()
    the_plan = plan(SEED, keys, chaos_dir)
    (chaos_dir / "plan.json").write_text(json.dumps(the_plan, indent=1))

    home = tmp_path_factory.mktemp("chaos-airflow")
    (home / "config").mkdir()
    (home / "config" / "airflow_local_settings.py").write_text(POLICY)
    port = _free_port()
    env = airflow_env(home, port, config, stack, label_studio)
    env.update(
        {
            "FRAMESIFT_FAULTS": str(chaos_dir / "plan.json"),
            # a frozen try stops heartbeating: Airflow presumes it dead after this long
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        }
    )
    af = Airflow(home, env, port, pools=[("gpu", 2, "GPU inference slots")])
    try:
        af.start()
        yield {
            "af": af,
            "cfg": cfg,
            "keys": keys,
            "plan": the_plan,
            "dir": chaos_dir,
        }
    except BaseException:
        print(af.debug_report())
        raise
    finally:
        for entry in fired(chaos_dir):  # never leave a frozen process behind
            for pid in (entry["pid"], entry["ppid"]) if entry["action"] == "freeze" else ():
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        survivors = af.stop()
        assert not survivors, f"processes survived stopping Airflow: {survivors}"


def runs_of(af: Airflow) -> list[dict]:
    resp = af.client.get(f"/dags/{DAG_ID}/dagRuns", params={"order_by": "start_date", "limit": 200})
    resp.raise_for_status()
    return resp.json()["dag_runs"]


def wait_runs_done(af: Airflow, deadline: float) -> list[dict]:
    while time.monotonic() < deadline:
        runs = runs_of(af)
        if runs and all(r["state"] in ("success", "failed") for r in runs):
            return runs
        time.sleep(2)
    raise AssertionError(f"runs still going at the deadline: {runs_of(af)}")


def open_work(db) -> dict[str, int]:
    """What is left to do: videos not final, queue records not pushed."""
    return {
        "videos": db.videos.count_documents({"status": {"$nin": ["pushed", "not_selected", "quarantined"]}}),
        "queue_pending": db.labeling_queue.count_documents({"state": {"$ne": "pushed"}}),
    }


def duplicate_upload_events(af: Airflow, s3, cfg, keys: list[str]) -> int:
    """One more asset event per upload, with the payload the uploads watcher gives."""
    from framesift.io.s3 import head

    resp = af.client.get("/assets", params={"name_pattern": "framesift_uploads"})
    resp.raise_for_status()
    (asset,) = [a for a in resp.json()["assets"] if a["name"] == "framesift_uploads"]
    for key in keys:
        obj = head(s3, cfg.storage.bucket, key)
        payload = {"objects": [{"bucket": obj.bucket, "key": obj.key, "etag": obj.etag, "size": obj.size}]}
        body = {"asset_id": asset["id"], "extra": {"from_trigger": True, "payload": payload}}
        made = af.post("/assets/events", body)
        assert made.status_code == 200, made.text
    return len(keys)


def test_chaos_nothing_stranded_nothing_twice(chaos, s3, mongo, label_studio, tmp_path):
    af, cfg, keys, the_plan, chaos_dir = chaos["af"], chaos["cfg"], chaos["keys"], chaos["plan"], chaos["dir"]
    db = mongo[cfg.mongo.database]
    api = af.client
    deadline_unpause = time.monotonic() + 120
    while (resp := api.get(f"/dags/{DAG_ID}")).status_code == 404:
        assert time.monotonic() < deadline_unpause, api.get("/importErrors").json()
        time.sleep(1)

    clips = [
        make_video(tmp_path / f"clip{i:02d}.mp4", seconds=4, fps=10, seed=100 + i) for i in range(N_VIDEOS)
    ]
    t0 = time.monotonic()
    deadline = t0 + TIME_BUDGET_S
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda kv: upload(s3, kv[0], cfg.storage.bucket, kv[1]), zip(clips, keys, strict=True)))
    api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
    while not runs_of(af):  # the watcher found the uploads
        assert time.monotonic() < t0 + 120, "no run 120 s after the uploads"
        time.sleep(1)
    dups = duplicate_upload_events(af, s3, cfg, keys)

    # the zombie: frozen before its create call; resume it once its retry has pushed
    zombie_key = the_plan["zombie"]
    zombie = None
    while time.monotonic() < deadline:
        zombie = next((f for f in fired(chaos_dir) if f["action"] == "freeze"), None)
        doc = db.videos.find_one({"key": zombie_key}) or {}
        if zombie and doc.get("status") == "pushed":
            break
        time.sleep(2)
    assert zombie, f"the zombie's freeze never fired; fired: {fired(chaos_dir)}"
    os.kill(zombie["pid"], signal.SIGCONT)  # the task process first: it finds its claim gone
    refused_by_zombie = []
    while time.monotonic() < deadline and not refused_by_zombie:
        doc = db.videos.find_one({"key": zombie_key}) or {}
        refused_by_zombie = [r for r in doc.get("refused") or [] if r.get("pid") == zombie["pid"]]
        time.sleep(1)
    os.kill(zombie["ppid"], signal.SIGCONT)  # then its supervisor (Airflow ends it: the try is over)

    # the first wave ends (some runs fail: their tasks were killed twice); then recovery
    # runs, one after another, each started once the dead workers' leases ran out
    wait_runs_done(af, deadline)
    recovery = 0
    while open_work(db) != {"videos": 0, "queue_pending": 0}:
        assert recovery < 6 and time.monotonic() < deadline, (open_work(db), runs_of(af))
        time.sleep(LEASE_S + 1)
        resp = af.post(f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {}})
        assert resp.status_code == 200, resp.text
        recovery += 1
        wait_runs_done(af, deadline)
    took = time.monotonic() - t0
    runs = runs_of(af)

    # --- figures -----------------------------------------------------------------------------
    shots = fired(chaos_dir)
    kills = [f for f in shots if f["action"] == "kill"]
    by_point = {p: sum(1 for f in kills if f["point"] == p) for p in KILL_POINTS}
    docs = list(db.videos.find())
    same_title = [
        p
        for p in requests.get(
            f"{label_studio.url}/api/projects",
            params={"title": cfg.labeling.project_name},
            headers={"Authorization": f"Token {label_studio.token}"},
            timeout=30,
        ).json()["results"]
        if p["title"] == cfg.labeling.project_name
    ]

    def project_tasks(project_id: int) -> list[dict]:
        return requests.get(
            f"{label_studio.url}/api/tasks",
            params={"project": project_id, "page_size": 1000, "fields": "all"},
            headers={"Authorization": f"Token {label_studio.token}"},
            timeout=60,
        ).json()["tasks"]

    # framesift pushes to the oldest project of its title; a push killed between creating the
    # project and deleting its own duplicate leaves an empty one behind, which stays empty
    project = min(same_title, key=lambda p: p["id"])
    tasks = project_tasks(project["id"])
    stray_tasks = {p["id"]: len(project_tasks(p["id"])) for p in same_title if p is not project}
    tasks_by_key: dict[str, int] = {}
    for task in tasks:
        tasks_by_key[task["data"]["video_key"]] = tasks_by_key.get(task["data"]["video_key"], 0) + 1
    pushed_once = sum(1 for k in keys if tasks_by_key.get(k) == 1)
    stranded = sum(1 for d in docs if d["status"] in WORKING) + db.labeling_queue.count_documents(
        {"state": {"$ne": "pushed"}}
    )
    duplicate_records = (len(docs) - len({d["key"] for d in docs})) + (
        db.labeling_queue.count_documents({}) - len({r["video_id"] for r in db.labeling_queue.find()})
    )
    duplicate_tasks = sum(n - 1 for n in tasks_by_key.values() if n > 1)
    duplicate_frames = 0
    for d in docs:
        prefix = d["frames_prefix"][len(f"s3://{cfg.storage.out_bucket}/") :]
        pngs = [o.key for o in list_objects(s3, cfg.storage.out_bucket, prefix) if o.key.endswith(".png")]
        duplicate_frames += len(pngs) - d["frames"]["frames_written"]
    refused = sum(len(d.get("refused") or []) for d in docs)
    print(
        f"\n[chaos] seed {SEED}: {N_VIDEOS} videos, {dups} duplicate upload events, {len(runs)} runs "
        f"({recovery} recovery), {took:.0f} s\n"
        f"[chaos] kills survived: {len(kills)} ({', '.join(f'{p} {n}' for p, n in by_point.items())}); "
        f"zombie {zombie_key}: frozen, retried, resumed, {len(refused_by_zombie)} write(s) refused\n"
        f"[chaos] pushed exactly once (Label Studio tasks): {pushed_once}/{N_VIDEOS}; stranded: {stranded}; "
        f"duplicates: records {duplicate_records}, tasks {duplicate_tasks}, frames {duplicate_frames}, "
        f"empty projects of the same title left by a kill {len(stray_tasks)}; "
        f"refused writes in all: {refused}"
    )

    # --- the guarantees --------------------------------------------------------------------
    assert len(kills) >= N_VIDEOS, shots  # every video's first kill landed (timers end in the stage)
    assert all(by_point.values()), by_point
    assert dups == N_VIDEOS
    assert sorted(d["key"] for d in docs) == keys and all(d["status"] == "pushed" for d in docs), [
        (d["key"], d["status"], d.get("reason")) for d in docs if d["status"] != "pushed"
    ]
    assert pushed_once == N_VIDEOS and len(tasks) == N_VIDEOS, tasks_by_key
    assert stranded == 0 and duplicate_records == 0 and duplicate_tasks == 0 and duplicate_frames == 0
    assert not any(stray_tasks.values()), f"tasks outside the project framesift uses: {stray_tasks}"
    assert refused_by_zombie, "the zombie's attempt was not refused (or never resumed)"
    for d in docs:  # every video pushed once, its record naming the one Label Studio task
        assert [h["status"] for h in d["history"]].count("pushed") == 1, d["history"]
        rec = db.labeling_queue.find_one({"video_id": d["_id"]})
        assert rec["state"] == "pushed" and len(rec["backend_ids"]) == 1
        assert [str(t["id"]) for t in tasks if t["data"]["video_key"] == d["key"]] == rec["backend_ids"]
