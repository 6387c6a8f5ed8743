"""End to end through Airflow's REST API, the way a user runs it.

Airflow 3 starts on loopback in its own AIRFLOW_HOME under the pytest tmp dir (DB migrated
first; LocalExecutor, SQLite): api-server, scheduler, dag-processor and triggerer as four
processes in one process group (what `airflow standalone` runs; FRAMESIFT_E2E_STANDALONE=1
runs `airflow standalone` itself), pointed at this repo's dags/ and plugins/ and at the
embedded stack (moto S3 + SecantusDB). The test logs in (JWT from POST /auth/token) with
the admin password that the simple auth manager writes to AIRFLOW_HOME, unpauses
`framesift_ingest` through the API, uploads a video, and waits for the prefix-listing
AssetWatcher (NewVideosTrigger) to trigger a run. Then it checks Mongo, S3, the mapped
task instances' names (the video key) and the summary task's "ClearML run" link.

Timings (startup, upload to success) are printed; run with `-s` to see them.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import requests
import yaml

from framesift.config.loading import load_config
from framesift.io import layout
from framesift.io.s3 import list_objects, upload
from framesift.local.airflow import LocalAirflow, airflow_env, free_port
from framesift.local.stack import project_root
from framesift.local.synth import make_video

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = project_root()
VENV_BIN = Path(sys.executable).parent
DAG_ID = "framesift_ingest"
RUN_TIMEOUT_S = 240
# FRAMESIFT_E2E_STANDALONE=1: one `airflow standalone` instead of the four components
STANDALONE = os.environ.get("FRAMESIFT_E2E_STANDALONE", "") not in ("", "0", "false", "False")


def _free_port() -> int:
    return free_port()


class Airflow(LocalAirflow):
    """framesift.local.airflow.LocalAirflow (what `make airflow` runs), plus the API
    helpers and diagnostics of these tests."""

    def start(self) -> None:
        super().start(standalone=STANDALONE)

    # --- diagnostics (tail() is LocalAirflow's) -----------------------------------------
    def debug_report(self, run_id: str | None = None) -> str:
        parts = [self.tail(40, ("scheduler", "triggerer", "dag-processor"))]
        triggerer_logs = sorted((self.home / "logs").rglob("*trigger*"))
        for path in triggerer_logs[-2:]:
            if path.is_file():
                parts += [f"--- {path} ---", "\n".join(path.read_text(errors="replace").splitlines()[-30:])]
        if self.client is not None:
            try:
                errors = self.client.get("/importErrors").json()
                parts += ["--- import errors ---", json.dumps(errors, indent=1)[-3000:]]
                if run_id:
                    tis = self.task_instances(run_id)
                    parts += ["--- task instances ---"]
                    for ti in tis:
                        parts.append(
                            f"{ti['task_id']}[{ti['map_index']}] {ti['state']} {ti['rendered_map_index']}"
                        )
                        if ti["state"] in ("failed", "up_for_retry", "upstream_failed"):
                            parts.append(self.task_log(run_id, ti)[-3000:])
            except Exception as exc:  # diagnostics must not hide the real failure
                parts.append(f"(could not query the API: {exc})")
        return "\n".join(parts)

    # --- API helpers -------------------------------------------------------------------
    def post(self, path: str, body: dict, tries: int = 5):
        """POST to the REST API, again after a server error: Airflow on SQLite answers 500
        "Database error" when a write (its audit log of the request, before the endpoint
        runs) finds the database locked by the scheduler on a loaded machine. Any other
        answer is returned as it is."""
        for attempt in range(tries):
            resp = self.client.post(path, json=body)
            if resp.status_code < 500 or attempt == tries - 1:
                return resp
            time.sleep(2)

    def task_instances(self, run_id: str) -> list[dict]:
        resp = self.client.get(f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances")
        resp.raise_for_status()
        return resp.json()["task_instances"]

    def task_log(self, run_id: str, ti: dict) -> str:
        resp = self.client.get(
            f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{ti['task_id']}/logs/{max(ti['try_number'], 1)}",
            params={"map_index": ti["map_index"], "full_content": True},
        )
        if resp.status_code != 200:
            return resp.text
        # Airflow 3.3 answers JSON (text/plain is refused): {"content": [{"event": ...,
        # "error_detail": [{"exc_type": ..., "exc_value": ...}]}, ...]}
        lines = []
        for line in resp.json().get("content") or []:
            if not isinstance(line, dict):
                lines.append(str(line))
                continue
            lines.append(str(line.get("event", "")))
            lines += [f"{e.get('exc_type')}: {e.get('exc_value')}" for e in line.get("error_detail") or []]
        return "\n".join(lines)


@pytest.fixture(scope="module")
def e2e_config(stack, tmp_path_factory):
    """A pipeline config of its own (prefixes, database) with a fast-polling watcher."""
    tag = uuid.uuid4().hex[:8]
    path = tmp_path_factory.mktemp("e2e-config") / "framesift.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "storage": {
                    "bucket": stack.bucket,
                    "videos_prefix": f"e2e-{tag}/videos/",
                    "output_prefix": f"e2e-{tag}/out/",
                },
                "mongo": {"database": f"e2e_{tag}"},
                # uploads only: no cron run racing the asset-triggered one
                "discovery": {"poll_interval_s": 2, "drain_cron": None},
                "inference": {"imgsz": 320, "batch_size": 8},  # CPU here: small and quick
            }
        )
    )
    return path, load_config(path)


@pytest.fixture(scope="module")
def airflow(stack, label_studio, e2e_config, tmp_path_factory):
    config_path, _ = e2e_config
    home = tmp_path_factory.mktemp("airflow-home")
    port = _free_port()
    env = airflow_env(home, port, config_path, stack, label_studio)
    af = Airflow(home, env, port)
    try:
        af.start()
        what = "airflow standalone" if STANDALONE else "airflow api-server/scheduler/dag-processor/triggerer"
        print(
            f"\n[e2e] airflow db migrate {af.migrate_s:.1f} s; {what} healthy {af.startup_s:.1f} s later"
            f" (port {port}, home {home})"
        )
        yield af
    except BaseException:
        print(af.debug_report())
        raise
    finally:
        survivors = af.stop()
        assert not survivors, f"processes survived stopping Airflow: {survivors}"


def test_upload_triggers_asset_run_visible_through_rest_api(
    airflow, label_studio, e2e_config, s3, mongo, tmp_path
):
    _, cfg = e2e_config
    api = airflow.client
    run_id = None
    try:
        # the DAG is parsed and known to the API
        deadline = time.monotonic() + 120
        while (resp := api.get(f"/dags/{DAG_ID}")).status_code == 404:
            assert time.monotonic() < deadline, f"{DAG_ID} never showed up: {api.get('/importErrors').json()}"
            time.sleep(1)
        resp.raise_for_status()
        assert resp.json()["is_paused"] is True  # paused at creation, as in production

        resp = api.patch(f"/dags/{DAG_ID}", json={"is_paused": False})
        resp.raise_for_status()
        assert resp.json()["is_paused"] is False

        key = cfg.storage.videos_prefix + "street cam (1).mp4"
        video = make_video(tmp_path / "clip.mp4", seconds=3, fps=10, seed=7)
        t_upload = time.monotonic()
        upload(s3, video, cfg.storage.bucket, key)

        run = None
        deadline = t_upload + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            resp = api.get(f"/dags/{DAG_ID}/dagRuns", params={"order_by": "-start_date"})
            resp.raise_for_status()
            runs = resp.json()["dag_runs"]
            failed = [r for r in runs if r["state"] == "failed"]
            if failed:
                run_id = failed[0]["dag_run_id"]
            assert not failed, f"a run failed: {failed}"
            done = [r for r in runs if r["state"] == "success"]
            if done:
                run = done[0]
                break
            if runs:
                run_id = runs[0]["dag_run_id"]
            time.sleep(2)
        assert run, f"no successful run {RUN_TIMEOUT_S} s after the upload; runs: {runs}"
        run_id = run["dag_run_id"]
        took = time.monotonic() - t_upload
        print(f"[e2e] upload -> run {run_id} succeeded in {took:.1f} s")
        assert run["run_type"] == "asset_triggered", run

        # Mongo: the upload registered, went through extraction (and any later stage) without
        # failing, and the run was recorded
        db = mongo[cfg.mongo.database]
        doc = db.videos.find_one({"key": key})
        assert doc and doc["status"] not in ("discovered", "extracting", "quarantined", "failed"), doc
        assert "extracted" in [h["status"] for h in doc["history"]], doc["history"]
        assert {h["run_id"] for h in doc["history"]} == {run_id}
        assert doc["frames"]["frames_written"] == 3  # 3 s at 1 fps
        # the labeling platform: the video's selected frames are a task in Label Studio
        assert doc["status"] == "pushed", doc
        (rec,) = db.labeling_queue.find({"video_id": doc["_id"]})
        assert rec["state"] == "pushed" and rec["Labeling status"] == "In queue"
        task = requests.get(
            f"{label_studio.url}/api/tasks/{rec['backend_ids'][0]}",
            headers={"Authorization": f"Token {label_studio.token}"},
            timeout=30,
        ).json()
        assert len(task["data"]["images"]) == len(doc["selected_frames"]) == rec["n_frames"] >= 1
        run_doc = db.runs.find_one({"_id": f"{DAG_ID}/{run_id}"})
        assert run_doc and run_doc["summary"]["videos"] == 1, run_doc

        # S3: the frames, named like Lightly (later stages add their own files beside them)
        frames_prefix = layout.frames_prefix(cfg, doc["_id"]) + "/"
        frames = sorted(
            o.key[len(frames_prefix) :]
            for o in list_objects(s3, cfg.storage.out_bucket, frames_prefix)
            if o.key.endswith(".png") and "/" not in o.key[len(frames_prefix) :]
        )
        assert frames == ["street_cam_1-00-mp4.png", "street_cam_1-10-mp4.png", "street_cam_1-20-mp4.png"]

        # every per-video (mapped) task instance is named by the video key in the UI
        tis = airflow.task_instances(run_id)
        mapped = {ti["task_id"]: ti for ti in tis if ti["map_index"] >= 0}
        assert "extract_frames" in mapped, tis
        for ti in mapped.values():
            assert (ti["map_index"], ti["rendered_map_index"], ti["state"]) == (0, key, "success"), ti
        assert len([ti for ti in tis if ti["map_index"] >= 0]) == len(mapped)  # one video, one each
        print(f"[e2e] task instances: {sorted((ti['task_id'], ti['state']) for ti in tis)}")

        # the summary task's extra link resolves to the run's ClearML task
        resp = api.get(f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/summary/links")
        resp.raise_for_status()
        links = resp.json()["extra_links"]
        # the offline session is served by the api-server (a browser opens no file:// link)
        page = f"/framesift/clearml/{quote(DAG_ID, safe='')}/{quote(run_id, safe='')}"
        assert links.get("ClearML run") == page, links
        assert run_doc["clearml"]["offline_zip"].endswith(".zip")
        served = httpx.get(airflow.base + page, headers=airflow.client.headers, timeout=30)
        assert served.status_code == 200 and "text/html" in served.headers["content-type"], served.text[:500]
        assert httpx.get(airflow.base + page, timeout=30).status_code in (401, 403)  # not public
    except BaseException:
        # what the scheduler, triggerer and dag-processor said last, import errors, the
        # task instances and the logs of failed ones
        print(airflow.debug_report(run_id))
        raise
