"""A burst: 200 uploads land at once; they are worked through in batches, each once.

What this runs, and why: through Airflow every video costs three task instances (extract,
infer, push) of seconds each, so 200 videos through the scheduler would take ~20 minutes
on a 2-core CI machine. tests/scale/test_celery.py proves the Airflow side on 20 videos
(two runs of `discovery.max_videos_per_run`, inference on the `gpu` queue within the
`gpu` pool's slots, each video once). Here the same stage functions the DAG's tasks call
(framesift.ingest / select_batch / push, no Airflow) drain a burst of 200 one-frame clips
the way successive DAG runs would, against the real embedded S3 and Mongo and the real
Label Studio:

* each run's `register_uploads` returns at most `discovery.max_videos_per_run` videos,
  which is the length the run's mapped tasks expand to (`[core] max_map_length` caps
  that length; the config refuses a batch size above its default, 1024);
* two runs race over the first batch (a watcher-triggered run and a cron run seeing the
  same uploads): every stage claims a video atomically, so each video is extracted,
  inferred, selected and pushed exactly once whichever run gets it;
* per-video stages run on two threads, as mapped task instances run on two worker slots;
  inference shares one loaded detector, as a warm GPU worker would (and stays serial,
  one `gpu` pool slot).

Checked from Mongo: every upload registered once and went through every stage once; one
labeling_queue record and one Label Studio task per video; ceil(200 / batch) batches.
"""

from __future__ import annotations

import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from framesift.config.loading import load_config
from framesift.inference.stage import infer_one
from framesift.ingest.stage import extract_one, register_uploads
from framesift.io.s3 import upload
from framesift.labeling.factory import get_backend
from framesift.labeling.push import push_items, push_video
from framesift.local.synth import make_video
from framesift.selection.batch import select_batch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

N_UPLOADS = 200
BATCH = 50  # discovery.max_videos_per_run here: 4 runs
STAGES = ("discovered", "extracting", "extracted", "inferring", "inferred", "selecting", "selected")


@pytest.fixture
def burst_cfg(stack, tmp_path, monkeypatch):
    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "framesift.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "storage": {
                    "bucket": stack.bucket,
                    "videos_prefix": f"burst-{tag}/videos/",
                    "output_prefix": f"burst-{tag}/out/",
                },
                "mongo": {"database": f"burst_{tag}"},
                "discovery": {"max_videos_per_run": BATCH},
                "extraction": {"dedupe": {"enabled": False}, "upload_workers": 1},
                "inference": {"imgsz": 64, "batch_size": 8},
                "selection": {"proportion_samples": 1.0},  # every frame: every video is pushed
            }
        )
    )
    monkeypatch.setenv("FRAMESIFT_CONFIG", str(path))
    return load_config(path)


def test_burst_of_200_uploads_drains_in_batches_each_once(burst_cfg, s3, mongo, label_studio, tmp_path):
    cfg = burst_cfg
    db = mongo[cfg.mongo.database]
    prefix = cfg.storage.videos_prefix
    t0 = time.monotonic()
    # 200 distinct one-frame clips (1 s at 1 fps), uploaded at once
    keys = [f"{prefix}upload-{i:03d}.mp4" for i in range(N_UPLOADS)]

    def make_and_upload(i: int) -> None:
        clip = make_video(tmp_path / f"c{i}.mp4", seconds=1, fps=1, width=64, height=48, seed=i)
        upload(s3, clip, cfg.storage.bucket, keys[i])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(make_and_upload, range(N_UPLOADS)))
    t_uploaded = time.monotonic()

    from framesift.inference.detector import Detector

    detector = Detector.from_config(cfg, s3)
    backend = get_backend(cfg, label_studio.credentials(), s3)
    work_dir = str(tmp_path / "work")
    batches: list[tuple[str, list]] = []
    workers = ThreadPoolExecutor(2)
    try:
        for n in range(1, 2 * N_UPLOADS // BATCH):
            run_ids = [f"burst-run-{n}"] + ([f"burst-run-{n}-racer"] if n == 1 else [])
            refs_by_run = {r: register_uploads(s3, db, cfg, run_id=r) for r in run_ids}
            refs = refs_by_run[run_ids[0]]
            if not refs:
                break
            for run_refs in refs_by_run.values():
                assert len(run_refs) <= BATCH  # the length the run's mapped tasks expand to
            batches.append((run_ids[0], refs))
            # each run's mapped extract, then infer, over the same refs (racing in batch 1)
            jobs = [(r, ref) for ref in refs for r in run_ids]
            list(workers.map(lambda j: extract_one(s3, db, cfg, j[1], run_id=j[0], work_dir=work_dir), jobs))
            for run_id, ref in jobs:
                infer_one(s3, db, cfg, ref, run_id=run_id, detector=detector)
            for run_id in run_ids:
                record = select_batch(s3, db, cfg, refs, run_id=run_id)
                items = [(run_id, item) for item in push_items(db, record)]
                list(
                    workers.map(
                        lambda j: push_video(s3, db, cfg, j[1], backend, run_id=j[0], owner=f"{j[0]}/push"),
                        items,
                    )
                )
    finally:
        workers.shutdown()
    took = time.monotonic() - t_uploaded
    print(
        f"\n[burst] {N_UPLOADS} uploads in {t_uploaded - t0:.1f} s; drained in {len(batches)} batches "
        f"of <= {BATCH} in {took:.1f} s"
    )

    # batches: ceil(200 / 50), disjoint, covering every upload, oldest first
    assert [len(refs) for _, refs in batches] == [BATCH] * math.ceil(N_UPLOADS / BATCH)
    batched = [ref.key for _, refs in batches for ref in refs]
    assert sorted(batched) == keys

    docs = {d["key"]: d for d in db.videos.find()}
    assert sorted(docs) == keys  # one registry record per upload
    run_of = {ref.key: run_id for run_id, refs in batches for ref in refs}
    for key, doc in docs.items():
        statuses = [h["status"] for h in doc["history"]]
        assert statuses == [*STAGES, "pushing", "pushed"], (key, statuses)  # every stage once
        # batch 1's racer may win any stage of a video; later batches are one run each
        assert {h["run_id"] for h in doc["history"][1:]} <= {run_of[key], run_of[key] + "-racer"}, doc
    queue = list(db.labeling_queue.find())
    assert sorted(r["video_id"] for r in queue) == sorted(d["_id"] for d in docs.values())
    assert all(r["state"] == "pushed" for r in queue)
    assert len({r["backend_ids"][0] for r in queue}) == N_UPLOADS  # one Label Studio task each
    selections = list(db.selections.find({"state": "done"}))
    selected = [v["video_id"] for s in selections for v in s["videos"]]
    assert sorted(selected) == sorted(d["_id"] for d in docs.values())  # each in one selection
