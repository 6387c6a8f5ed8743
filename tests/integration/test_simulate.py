"""The closed-loop simulation, tiny: 2 rounds, one short video per round, 1 epoch at 64 px.

framesift's rounds go through the real components and a real Label Studio (the scripted
annotator answers through its REST API); the numbers are meaningless at this size, the
test checks that every round ran and was recorded."""

import json

import pytest

from framesift.loop.simulate import SimSettings, run_simulation

pytestmark = pytest.mark.slow


def test_two_round_simulation_end_to_end(isolated, s3, mongo, label_studio, tmp_path):
    settings = SimSettings(
        rounds=2,
        videos_per_round=1,
        seconds=6,
        video_fps=5,
        sample_fps=1,
        seed_labels=3,
        budget_per_round=3,
        test_frames=6,
        epochs=1,
        imgsz=64,
        error_rate=0.2,
    )
    out = run_simulation(
        s3, mongo, isolated, label_studio.credentials(), settings, tmp_path, log=lambda *_: None
    )
    rows = out["rows"]
    assert {(r["strategy"], r["round"]) for r in rows} == {
        (s, r) for s in ("framesift", "uniform", "random") for r in (0, 1, 2)
    }
    by = {(r["strategy"], r["round"]): r for r in rows}
    for s in ("framesift", "uniform", "random"):
        assert by[(s, 0)]["labels"] == 3  # the shared seed set
        assert by[(s, 0)]["map50_95"] == by[("framesift", 0)]["map50_95"]  # the same first model
    for s in ("uniform", "random"):
        assert by[(s, 2)]["labels"] == 9  # equal budget: 3 per round
    fs = [by[("framesift", r)] for r in (1, 2)]
    assert all(r["decision"] for r in fs)  # the gate decided every round
    if fs[0]["decision"].startswith("continue"):
        assert fs[0]["labels"] == 6  # 3 frames selected, pushed, labeled in Label Studio, exported
    db = mongo[f"{isolated.mongo.database}_framesift"]
    assert db.decisions.count_documents({}) >= 2
    assert db.labeling_queue.count_documents({"Labeling status": "Done"}) >= 1
    saved = json.loads((tmp_path / "simulation.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows, default=str))
    assert "efficiency" in saved and (tmp_path / "map_per_round.png").stat().st_size > 1000
    assert "framesift" in (tmp_path / "table.txt").read_text()
