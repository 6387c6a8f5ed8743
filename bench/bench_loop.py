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

from common import write_result

ROOT = Path(__file__).resolve().parents[1]


def write(out: dict) -> None:
    """bench/results/loop.json with the common fields (ratio: labels framesift needed to reach
    uniform's final mAP, over uniform's labels)."""
    eff = out["efficiency"]
    write_result(
        "loop",
        out,
        what="closed loop (framesift simulate): labels to reach the uniform baseline's final mAP50-95, "
        "and mAP50-95 vs random at equal budget",
        peer="uniform in time (the 1-fps practice); random sampling; same budget per round",
        ratio=eff.get("label_ratio_vs_uniform"),
        ratio_means="framesift's labels to reach uniform's final mAP50-95 / uniform's labels; <= 0.5 meets it "
        f"(mAP points vs random at the end: {eff.get('map_points_vs_random_final')})",
        target="<= 50 % of uniform's labels and >= 5 mAP50-95 points over random",
        met=bool(eff.get("target_label_ratio_met") and eff.get("target_map_points_met")),
        raw_timings_s={"elapsed": out["elapsed_s"]},
    )


def main() -> int:
    from framesift.loop.simulate import SimSettings, run_local

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
        "efficiency": eff,
        "rows": result["rows"],
        "settings": result["settings"],
        "framesift_stopped_at_round": result["framesift_stopped_at_round"],
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    write(out)
    print((ROOT / "var" / "bench_loop" / "table.txt").read_text())
    print(json.dumps(out["efficiency"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
