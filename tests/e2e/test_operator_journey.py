"""An operator's journey through a real Airflow (issue #17): a run fails for a reason the
operator fixes, the fix, a requeue with the ``framesift`` command, a green run, and the
pages a person opens from the run, looked at in headless Chromium.

Airflow starts the way ``make airflow`` starts it (``framesift.local.airflow``: api-server,
scheduler, dag-processor, triggerer on loopback, through ``test_rest_e2e.Airflow``) on the
embedded stack and a real Label Studio, with a pipeline config whose ``inference.model_uri``
names a file that is not a checkpoint:

1. two uploads to the embedded S3; the asset watcher's run is red: ``infer`` failed once
   per video (permanent, no retries), and each ``videos`` record says the stage, the
   error and the fix; ``framesift videos --failed`` prints them with the requeue command;
2. the operator copies a real checkpoint over the file and runs
   ``framesift videos requeue KEY... --reason ...`` (a subprocess, as in a shell);
3. a run triggered through the REST API is green; each pushed video is in Label Studio
   once (tasks counted through its API);
4. the run's "Selection report" and "ClearML run" extra links (resolved through the REST
   API) open in headless Chromium (``tests/cdp.py``) with the Airflow login as the
   browser's ``_token`` cookie: every image of the report rendered, at least one plot;
   then the Airflow UI's page of the red run. PNG screenshots land in ``var/screenshots/``
   (paths printed; run with ``-s``).

About 3 to 4 minutes on 2 busy cores (Label Studio and Airflow start-up included).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urljoin

import httpx
import pytest
import requests
import yaml

from framesift.config.loading import load_config
from framesift.inference.models import fall_model_path
from framesift.io.s3 import upload
from framesift.local.airflow import airflow_env, free_port
from framesift.local.stack import project_root
from framesift.local.synth import make_video
from tests.cdp import Browser, chromium_binary
from tests.e2e.test_rest_e2e import DAG_ID, Airflow

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        chromium_binary() is None, reason="no chromium: scripts/ensure_services.sh installs it"
    ),
]

RUN_TIMEOUT_S = 300
SCREENSHOTS = project_root() / "var" / "screenshots"
ALL_IMAGES_RENDERED = "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
# the report's plots are its images outside the grid of example frames
PLOTS = "Array.from(document.images).filter(i => !i.closest('.grid')).length"
FRAMES = "document.querySelectorAll('.grid img').length"
AUTH_COOKIE = "_token"  # the cookie Airflow's UI keeps its JWT in (COOKIE_NAME_JWT_TOKEN)


@pytest.fixture(scope="module")
def journey(stack, label_studio, tmp_path_factory):
    """Airflow on a config of its own whose model file is broken; yields (airflow, config
    path, config, model path)."""
    tag = uuid.uuid4().hex[:8]
    tmp = tmp_path_factory.mktemp("journey")
    model = tmp / "models" / "detector.pt"
    model.parent.mkdir()
    model.write_bytes(b"\x80\x02not a checkpoint" * 100)  # exists, so check_setup lets it through
    config_path = tmp / "framesift.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "storage": {
                    "bucket": stack.bucket,
                    "videos_prefix": f"journey-{tag}/videos/",
                    "output_prefix": f"journey-{tag}/out/",
                },
                "mongo": {"database": f"journey_{tag}"},
                "discovery": {"poll_interval_s": 2, "drain_cron": None},  # uploads only
                "inference": {"model_uri": str(model), "imgsz": 256, "batch_size": 8},
                "labeling": {"project_name": f"journey-{tag}"},  # a project of its own: count its tasks
            }
        )
    )
    home = tmp / "airflow-home"
    port = free_port()
    af = Airflow(home, airflow_env(home, port, config_path, stack, label_studio), port)
    try:
        af.start()
        print(
            f"\n[journey] Airflow healthy in {af.startup_s:.1f} s (migrate {af.migrate_s:.1f} s), {af.base}"
        )
        yield af, config_path, load_config(config_path), model
    finally:
        survivors = af.stop()
        assert not survivors, f"processes survived stopping Airflow: {survivors}"


def wait_for_run(api, run_id: str | None = None, timeout_s: float = RUN_TIMEOUT_S) -> dict:
    """The run ``run_id`` (or the DAG's first run) once it finished."""
    deadline = time.monotonic() + timeout_s
    runs: list[dict] = []
    while time.monotonic() < deadline:
        try:
            resp = api.get(f"/dags/{DAG_ID}/dagRuns", params={"order_by": "start_date"})
        except httpx.TimeoutException:  # an api-server stalled on busy cores: ask again
            continue
        resp.raise_for_status()
        runs = [r for r in resp.json()["dag_runs"] if run_id in (None, r["dag_run_id"])]
        if runs and runs[0]["state"] in ("success", "failed"):
            return runs[0]
        time.sleep(2)
    raise AssertionError(f"no finished run {timeout_s:.0f} s on; runs: {runs}")


def framesift(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The ``framesift`` command in a shell of the operator's: the stack's env (set by the
    ``stack`` fixture) and the pipeline config."""
    env = {**os.environ, "FRAMESIFT_CONFIG": str(config_path)}
    return subprocess.run(
        [sys.executable, "-m", "framesift.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=project_root(),
    )


def extra_link(af: Airflow, run_id: str, task_id: str, name: str) -> str:
    resp = af.client.get(f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/links")
    resp.raise_for_status()
    link = resp.json()["extra_links"].get(name)
    assert link, f"{task_id} has no {name!r} link: {resp.json()}"
    return urljoin(af.base + "/", link)


def test_fail_fix_requeue_green_and_the_pages_render(journey, s3, mongo, label_studio, tmp_path):
    af, config_path, cfg, model = journey
    api = af.client
    db = mongo[cfg.mongo.database]
    run_id = None
    t0 = time.monotonic()
    try:
        deadline = time.monotonic() + 120
        while api.get(f"/dags/{DAG_ID}").status_code == 404:
            assert time.monotonic() < deadline, api.get("/importErrors").json()
            time.sleep(1)

        # 1. uploads; the asset watcher's run fails at infer, for a cause the operator fixes
        keys = [cfg.storage.videos_prefix + f"cam{i}/clip {i}.mp4" for i in (1, 2)]
        for i, key in enumerate(keys):
            upload(s3, make_video(tmp_path / f"{i}.mp4", seconds=3, fps=10, seed=i), cfg.storage.bucket, key)
        api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
        red = wait_for_run(api)
        run_id = red["dag_run_id"]
        print(f"[journey] upload -> run {run_id} {red['state']} in {time.monotonic() - t0:.0f} s")
        assert red["state"] == "failed" and red["run_type"] == "asset_triggered", red
        tis = {(t["task_id"], t["map_index"]): t for t in af.task_instances(run_id)}
        for i in range(len(keys)):
            infer = tis[("infer", i)]
            assert (infer["state"], infer["try_number"]) == ("failed", 1), infer  # no retries: permanent
            assert tis[("extract_frames", i)]["state"] == "success"
        assert "Retrying will not help" in af.task_log(run_id, tis[("infer", 0)])
        for key in keys:
            doc = db.videos.find_one({"key": key})
            assert (doc["status"], doc["failed_stage"]) == ("failed", "inferring"), doc
            err = doc["error"]
            assert (err["kind"], err["task"]) == ("permanent", "infer"), err
            assert err["message"] and "inference.model_uri" in err["fix"], err
        listed = framesift(config_path, "videos", "--failed")
        assert listed.returncode == 0, listed.stderr
        for key in keys:
            assert f"{key}: permanent error at infer" in listed.stdout, listed.stdout
        assert f"framesift videos requeue '{keys[0]}'" in listed.stdout, listed.stdout

        # 2. the fix (a real checkpoint in place; the config is unchanged, so only a requeue
        # brings the videos back) and the requeue, with the command the failure names
        shutil.copyfile(fall_model_path(), model)
        requeued = framesift(config_path, "videos", "requeue", *keys, "--reason", "model file replaced")
        assert requeued.returncode == 0, requeued.stdout + requeued.stderr
        assert "2 video(s) requeued" in requeued.stdout, requeued.stdout

        # 3. the next run, triggered through the REST API, is green; pushed once each
        t1 = time.monotonic()
        resp = af.post(f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {}})
        resp.raise_for_status()
        run_id = resp.json()["dag_run_id"]
        green = wait_for_run(api, run_id)
        print(f"[journey] requeue -> run {run_id} {green['state']} in {time.monotonic() - t1:.0f} s")
        assert green["state"] == "success", green
        docs = [db.videos.find_one({"key": key}) for key in keys]
        assert {d["status"] for d in docs} <= {"pushed", "not_selected"}, [d["status"] for d in docs]
        assert all(d["requeued"][-1]["reason"] == "model file replaced" for d in docs)
        pushed = [d for d in docs if d["status"] == "pushed"]
        assert pushed, "no video was pushed"
        recs = list(db.labeling_queue.find({}))
        assert sorted(r["video_id"] for r in recs) == sorted(d["_id"] for d in pushed), recs
        (project,) = {r["project_id"] for r in recs}
        ls = requests.get(
            f"{label_studio.url}/api/projects/{project}/",
            headers={"Authorization": f"Token {label_studio.token}"},
            timeout=30,
        )
        ls.raise_for_status()
        assert ls.json()["task_number"] == sum(len(r["backend_ids"]) for r in recs), ls.json()

        # 4. the pages the run links to, in a browser logged in to Airflow
        report_url = extra_link(af, run_id, "select_frames", "Selection report")
        clearml_url = extra_link(af, run_id, "summary", "ClearML run")
        token = api.headers["Authorization"].split(" ", 1)[1]
        shots = {}
        with Browser() as browser:
            browser.set_cookie(AUTH_COOKIE, token, af.base)
            assert browser.goto(report_url) == 200
            assert browser.url() == report_url  # not sent to the login page
            n_images, plots, frames = (browser.evaluate(e) for e in ("document.images.length", PLOTS, FRAMES))
            print(f"[journey] selection report: {n_images} images ({plots} plots, {frames} frames)")
            assert browser.evaluate(ALL_IMAGES_RENDERED), browser.evaluate(
                "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                ".map(i => i.src.slice(0, 120))"
            )
            assert plots >= 1 and frames >= 1, (plots, frames)
            shots["selection report"] = browser.screenshot(SCREENSHOTS / "journey-selection-report.png")

            assert browser.goto(clearml_url) == 200
            assert browser.url() == clearml_url
            title = browser.evaluate("document.title")
            assert title.startswith("ClearML"), title
            assert browser.evaluate(ALL_IMAGES_RENDERED)
            shots["ClearML run"] = browser.screenshot(SCREENSHOTS / "journey-clearml-run.png")

            # the Airflow UI's page of the red run, as the operator first saw it
            browser.goto(f"{af.base}/dags/{DAG_ID}/runs/{quote(red['dag_run_id'], safe='')}")
            assert browser.wait_for("document.body.innerText.includes('infer')"), browser.evaluate(
                "document.body.innerText.slice(0, 500)"
            )
            shots["red run in the Airflow UI"] = browser.screenshot(
                SCREENSHOTS / "journey-airflow-red-run.png"
            )
        for what, path in shots.items():
            assert path.stat().st_size > 10_000, path  # a page, not a blank
            print(f"[journey] screenshot of the {what}: {path}")
        print(f"[journey] the whole journey took {time.monotonic() - t0:.0f} s after Airflow started")
    except BaseException:
        print(af.debug_report(run_id))
        raise
