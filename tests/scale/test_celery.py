"""Scale-out proof: framesift_ingest on Airflow's CeleryExecutor, the production shape.

Postgres (metadata DB and Celery result backend) and Redis (broker) are Debian's
packages (scripts/ensure_services.sh, run by `make test`), started here on loopback with
their files under var/scale/. Airflow runs as separate components (api-server, scheduler,
dag-processor, triggerer) plus two Celery workers: one consuming `default`, one consuming
only `gpu` (as docker-compose.yaml's airflow-worker and airflow-worker-gpu). The embedded
stack stands in for S3 and Mongo, and the real Label Studio receives the pushes.

test_twenty_videos_each_once_inference_on_gpu_worker: 20 generated videos are uploaded
while the DAG is paused, then the DAG is unpaused; the uploads watcher triggers the run
(as a user would see it). Checked from Mongo: every video went through every stage exactly
once and has one labeling_queue record; from the REST API: every `infer` task instance
ran on queue `gpu`, everything else on `default`; from the workers' own logs: the gpu
worker executed the 20 `infer` task instances and nothing else.

test_burst_of_uploads_runs_in_batches_each_once: a burst of 200 uploads is registered at
once and worked through in batches of `discovery.max_videos_per_run` (mapped task
instances per run never above it, nor above `[core] max_map_length`) with the `gpu` pool
capping concurrent inference, and every upload is processed once. See its docstring for
what it runs to keep it cheap.

Run with `-s` to see timings.
"""

from __future__ import annotations

import re
import secrets
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest
import yaml

from framesift.config.loading import load_config
from framesift.io.s3 import upload
from framesift.local.stack import project_root
from framesift.local.synth import make_video
from tests.e2e.test_rest_e2e import DAG_ID, Airflow, airflow_env
from tests.scale.services import ENSURE, Postgres, Redis, free_port, missing_binaries

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = project_root()
N_VIDEOS = 20
RUN_TIMEOUT_S = 420
WORKERS = {"default-worker": "default", "gpu-worker": "gpu"}
# tiny clips: 2 s at 1 fps -> 2 frames each, so the test measures Airflow, not the model
CLIP = {"seconds": 2, "fps": 5, "width": 160, "height": 120}
GPU_SLOTS = 2  # the `gpu` pool; the gpu worker runs as many at once (one per GPU in production)


@pytest.fixture(scope="module")
def celery_config(stack, tmp_path_factory):
    tag = uuid.uuid4().hex[:8]
    path = tmp_path_factory.mktemp("celery-config") / "framesift.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "storage": {
                    "bucket": stack.bucket,
                    "videos_prefix": f"celery-{tag}/videos/",
                    "output_prefix": f"celery-{tag}/out/",
                },
                "mongo": {"database": f"celery_{tag}"},
                # uploads only (no cron run racing the asset-triggered one), listed every 2 s
                "discovery": {"poll_interval_s": 2, "drain_cron": None, "max_videos_per_run": 10},
                "extraction": {"dedupe": {"enabled": False}},
                "inference": {"imgsz": 160, "batch_size": 8},
                # every frame: each video is pushed, so exactly-once is checked at every stage
                "selection": {"proportion_samples": 1.0},
            }
        )
    )
    return path, load_config(path)


@pytest.fixture(scope="module")
def servers():
    missing = missing_binaries()
    assert not missing, f"{missing} not installed: run {ENSURE} (make test does)"
    root = ROOT / "var" / "scale" / uuid.uuid4().hex[:8]
    pg, redis = Postgres(root / "postgres"), Redis(root / "redis")
    try:
        pg.start()
        redis.start()
        yield pg, redis
    finally:
        redis.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def celery_airflow(servers, stack, label_studio, celery_config, tmp_path_factory):
    pg, redis = servers
    config_path, _ = celery_config
    home = tmp_path_factory.mktemp("airflow-celery-home")
    port = free_port()
    env = airflow_env(home, port, config_path, stack, label_studio)
    env.update(
        {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.url,
            "AIRFLOW__CELERY__BROKER_URL": redis.url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + pg.url,
            # 2 cores: a few task processes at a time (3 worker slots below)
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__MAX_MAP_LENGTH": "1024",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        }
    )
    components = {
        "api-server": "api-server",
        "scheduler": "scheduler --skip-serve-logs",
        "dag-processor": "dag-processor",
        "triggerer": "triggerer --skip-serve-logs",
        # as docker-compose.yaml: a CPU worker on `default`, a GPU worker on `gpu` only
        "default-worker": "celery worker --queues default --concurrency 2 --celery-hostname default@%h --skip-serve-logs",
        "gpu-worker": f"celery worker --queues gpu --concurrency {GPU_SLOTS} --celery-hostname gpu@%h --skip-serve-logs",
    }
    af = Airflow(home, env, port, components=components, pools=[("gpu", GPU_SLOTS, "GPU inference slots")])
    try:
        af.start()
        t0 = time.monotonic()
        for name in WORKERS:  # celery prints "<node> ready." once it consumes its queues
            log = home / f"{name}.log"
            while not (log.exists() and " ready." in log.read_text(errors="replace")):
                assert time.monotonic() - t0 < 120, f"{name} not ready\n{af.tail(40, (name,))}"
                time.sleep(1)
        print(
            f"\n[celery] postgres+redis up; airflow db migrate {af.migrate_s:.1f} s; components healthy "
            f"{af.startup_s:.1f} s later; workers ready {time.monotonic() - t0:.1f} s after that"
        )
        yield af
    except BaseException:
        print(af.debug_report())
        raise
    finally:
        survivors = af.stop()
        assert not survivors, f"processes survived stopping Airflow: {survivors}"


def workloads(af: Airflow, worker: str) -> list[tuple[str, str, int]]:
    """(run_id, task_id, map_index) of every task instance a Celery worker executed, from its log."""
    text = (af.home / f"{worker}.log").read_text(errors="replace")
    out = []
    for line in text.splitlines():
        if "Executing workload in Celery" in line:
            run = re.search(r"run_id='([^']+)'", line)
            task = re.search(r"task_id='([^']+)'", line)
            index = re.search(r"map_index=(-?\d+)", line)
            out.append((run.group(1), task.group(1), int(index.group(1))))
    return out


def task_instances(af: Airflow, run_id: str) -> list[dict]:
    """All of a run's task instances (the API pages at 50)."""
    out: list[dict] = []
    while True:
        resp = af.client.get(
            f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances",
            params={"limit": 100, "offset": len(out)},
        )
        resp.raise_for_status()
        page = resp.json()
        out += page["task_instances"]
        if not page["task_instances"] or len(out) >= page["total_entries"]:
            return out


def dag_runs(af: Airflow) -> list[dict]:
    resp = af.client.get(f"/dags/{DAG_ID}/dagRuns", params={"order_by": "start_date", "limit": 100})
    resp.raise_for_status()
    return resp.json()["dag_runs"]


def wait_idle(af: Airflow, timeout: float) -> list[dict]:
    """Poll the REST API until at least one run exists and every run ended; fail on a failed run."""
    deadline, runs = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        runs = dag_runs(af)
        failed = [r for r in runs if r["state"] == "failed"]
        assert not failed, f"a run failed: {failed}\n{af.debug_report(failed[0]['dag_run_id'])}"
        if runs and all(r["state"] == "success" for r in runs):
            return runs
        time.sleep(2)
    raise AssertionError(f"runs not done after {timeout} s: {runs}")


def max_overlap(intervals: list[tuple[str, str]]) -> int:
    """Most intervals (ISO start, end) open at one instant."""
    edges = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1])
    )
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def unpause(af: Airflow) -> None:
    api = af.client
    deadline = time.monotonic() + 120
    while (resp := api.get(f"/dags/{DAG_ID}")).status_code == 404:
        assert time.monotonic() < deadline, f"{DAG_ID} never showed up: {api.get('/importErrors').json()}"
        time.sleep(1)
    resp = api.patch(f"/dags/{DAG_ID}", json={"is_paused": False})
    resp.raise_for_status()


def test_twenty_videos_each_once_inference_on_gpu_worker(celery_airflow, celery_config, s3, mongo, tmp_path):
    af, (_, cfg) = celery_airflow, celery_config
    db = mongo[cfg.mongo.database]
    t0 = time.monotonic()
    clips = [make_video(tmp_path / f"cam{i:02d}.mp4", seed=i, **CLIP) for i in range(N_VIDEOS)]
    keys = [f"{cfg.storage.videos_prefix}cam{i:02d}.mp4" for i in range(N_VIDEOS)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: upload(s3, kv[0], cfg.storage.bucket, kv[1]), zip(clips, keys, strict=True)))
    print(f"[celery] {N_VIDEOS} clips generated and uploaded in {time.monotonic() - t0:.1f} s")

    # the watcher starts with the next parse after the unpause and finds all 20 at once; its
    # run takes a batch of discovery.max_videos_per_run (10), the rest wait in the registry
    # as `discovered` until the next run, which a manual trigger starts here (in production
    # also the drain cron, disabled in this config)
    t_unpause = time.monotonic()
    unpause(af)
    runs = wait_idle(af, RUN_TIMEOUT_S)
    while db.videos.count_documents({"status": "discovered"}):
        assert len(runs) < N_VIDEOS, runs
        resp = af.client.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None})
        assert resp.status_code == 200, resp.text
        runs = wait_idle(af, RUN_TIMEOUT_S)
    took = time.monotonic() - t_unpause
    print(f"[celery] unpause -> {len(runs)} runs succeeded in {took:.1f} s: {[r['run_type'] for r in runs]}")
    assert runs[0]["run_type"] == "asset_triggered", runs
    run_ids = [r["dag_run_id"] for r in runs]

    # Mongo: each video once through every stage, all in one run, and one labeling task each
    docs = {d["key"]: d for d in db.videos.find()}
    assert sorted(docs) == sorted(keys)
    by_run: dict[str, list[str]] = {}
    for key, doc in docs.items():
        statuses = [h["status"] for h in doc["history"]]
        assert doc["status"] == "pushed", (key, doc["status"], doc.get("reason"))
        for stage in ("discovered", "extracted", "inferred", "selected", "pushed"):
            assert statuses.count(stage) == 1, (key, statuses)
        # registered by the first run, processed by exactly one run (a batch)
        assert doc["history"][0]["run_id"] == run_ids[0]
        (worker_run,) = {h["run_id"] for h in doc["history"][1:]}
        by_run.setdefault(worker_run, []).append(key)
        assert doc["frames"]["frames_written"] == 2 == doc["inference"]["frames"]
    batch = cfg.discovery.max_videos_per_run
    assert sorted(len(v) for v in by_run.values()) == [batch] * (N_VIDEOS // batch), by_run
    queue = list(db.labeling_queue.find())
    assert sorted(r["video_id"] for r in queue) == sorted(d["_id"] for d in docs.values())
    assert all(r["state"] == "pushed" and len(r["backend_ids"]) == 1 for r in queue)
    assert len({r["backend_ids"][0] for r in queue}) == N_VIDEOS  # 20 distinct labeling tasks

    # REST API: each run mapped one batch; inference on queue `gpu` within the `gpu` pool's
    # slots, everything else on `default`
    tis = {run_id: task_instances(af, run_id) for run_id in by_run}
    infer = [ti for run_tis in tis.values() for ti in run_tis if ti["task_id"] == "infer"]
    for run_id, run_tis in tis.items():
        for task_id in ("extract_frames", "infer", "push_to_labeling"):
            mapped = sorted(ti["map_index"] for ti in run_tis if ti["task_id"] == task_id)
            assert mapped == list(range(len(by_run[run_id]))), (run_id, task_id, mapped)
    assert {(ti["queue"], ti["pool"], ti["state"]) for ti in infer} == {("gpu", "gpu", "success")}
    assert sorted(ti["rendered_map_index"] for ti in infer) == sorted(keys)
    ran = [ti for run_tis in tis.values() for ti in run_tis if ti["state"] == "success"]
    assert {ti["queue"] for ti in ran if ti["task_id"] != "infer"} == {"default"}
    overlap = max_overlap([(ti["start_date"], ti["end_date"]) for ti in infer])
    assert 1 <= overlap <= GPU_SLOTS, overlap

    # the workers' own logs: the gpu worker ran the 20 inferences and nothing else; the
    # default worker ran every other task instance once
    on_gpu, on_default = workloads(af, "gpu-worker"), workloads(af, "default-worker")
    assert sorted(on_gpu) == sorted((ti["dag_run_id"], "infer", ti["map_index"]) for ti in infer)
    assert sorted(on_default) == sorted(
        (ti["dag_run_id"], ti["task_id"], ti["map_index"]) for ti in ran if ti["task_id"] != "infer"
    )
    per_task: dict[str, list[float]] = {}
    for ti in ran:
        per_task.setdefault(ti["task_id"], []).append(ti["duration"] or 0)
    print(
        "[celery] task instance seconds (n, mean): "
        + ", ".join(f"{k} {len(v)} {sum(v) / len(v):.1f}" for k, v in per_task.items())
        + f"; most concurrent infer: {overlap}"
    )
