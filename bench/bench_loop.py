"""Label efficiency of the closed loop: framesift's selection vs uniform-in-time (the 1-fps
practice) and random sampling, at the same labeling budget per round.

Runs `framesift simulate` (fresh embedded stack + Label Studio; framesift's labels go
through Label Studio's API, answered by the scripted annotator with the true boxes) and
writes bench/results/loop.json: the per-round table and
- labels framesift needed to reach the uniform baseline's final mAP50-95 (target <= 50 %),
- framesift's mAP50-95 minus random's at equal budget, in points (target >= 5).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from framesift.simulate import SimSettings, run_local

    settings = SimSettings(
        rounds=int(os.environ.get("LOOP_ROUNDS", 4)),
        videos_per_round=2,
        budget_per_round=8,
        seed_labels=8,
        epochs=int(os.environ.get("LOOP_EPOCHS", 10)),
        imgsz=160,
        error_rate=0.05,
        # run every round: the bench measures the curves; the gate's verdicts are still recorded
        evaluation={"targets": {"map50_95": 0.99}, "diminishing_k": None},
    )
    started = time.monotonic()
    result = run_local(settings, ROOT / "var" / "bench_loop")
    eff = result["efficiency"]
    out = {
        "benchmark": "closed-loop label efficiency (framesift simulate)",
        "peers": ["uniform in time (1-fps practice)", "random"],
        "targets": {"label_ratio_vs_uniform_max": 0.5, "map_points_vs_random_min": 5},
        "efficiency": eff,
        "met": {
            "label_ratio": eff.get("target_label_ratio_met"),
            "map_points_vs_random": eff.get("target_map_points_met"),
        },
        "rows": result["rows"],
        "settings": result["settings"],
        "framesift_stopped_at_round": result["framesift_stopped_at_round"],
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "loop.json").write_text(json.dumps(out, indent=1, default=str))
    print((ROOT / "var" / "bench_loop" / "table.txt").read_text())
    print(json.dumps(out["efficiency"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
