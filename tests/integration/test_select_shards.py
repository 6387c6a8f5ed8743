"""Sharded selection's plan and merge against the real Mongo and S3 on loopback."""

import pytest

from framesift.ingest import registry
from framesift.ingest.registry import VideoRef
from framesift.selection.batch import plan_selection, select_batch, selection_id

pytestmark = pytest.mark.slow


def _inferred(db, n: int, frames: int) -> list[VideoRef]:
    refs = []
    for i in range(n):
        ref = VideoRef(video_id=f"v{i}", bucket="b", key=f"videos/v{i}.mp4", etag=f"e{i}", size=1)
        db.videos.insert_one(
            {
                "_id": ref.video_id,
                "key": ref.key,
                "status": registry.INFERRED,
                "attempts": 0,
                "history": [],
                "inference": {"frames": frames, "task_name": "object-detection"},
            }
        )
        refs.append(ref)
    return refs


def test_plan_packs_whole_videos_and_a_retry_returns_the_same_shards(s3, db, isolated):
    refs = _inferred(db, 5, frames=40)
    cfg = isolated.model_copy(deep=True)
    cfg.selection.shard_max_frames = 100
    shards = plan_selection(s3, db, cfg, refs, run_id="r1")
    assert [(s["shard"], s["videos"], s["frames"]) for s in shards] == [
        ("0", 2, 80),
        ("1", 2, 80),
        ("2", 1, 40),
    ]
    assert {d["status"] for d in db.videos.find()} == {registry.SELECTING}
    assert plan_selection(s3, db, cfg, refs, run_id="r1") == shards  # a task retry
    cfg.selection.shard_max_frames = 500  # fits one worker: no shards, nothing claimed
    assert plan_selection(s3, db, cfg, _inferred(db.client[db.name + "_b"], 2, 40), run_id="r2") == []


def test_merge_with_a_missing_shard_fails_clearly_and_frees_the_videos(s3, db, isolated):
    refs = _inferred(db, 3, frames=40)
    cfg = isolated.model_copy(deep=True)
    cfg.selection.shard_max_frames = 50
    assert len(plan_selection(s3, db, cfg, refs, run_id="r1")) == 3
    # no select_shard task finished (they failed for good): the merge cannot pretend
    with pytest.raises(RuntimeError, match=r"shard\(s\) 0, 1, 2 of 3 have no result"):
        select_batch(s3, db, cfg, refs, run_id="r1")
    for doc in db.videos.find():
        assert doc["status"] == registry.FAILED and doc["failed_stage"] == registry.SELECTING
        assert "select_shard task failed" in doc["reason"]
    # the next run may claim them again (failed in this stage fewer than MAX_ATTEMPTS times)
    assert plan_selection(s3, db, cfg, refs, run_id="r2")
    assert db.selections.count_documents({"_id": selection_id("r2", [r.video_id for r in refs])}) == 1
