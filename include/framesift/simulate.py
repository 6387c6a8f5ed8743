"""Closed-loop simulation: generated videos with known boxes, a scripted annotator that
answers through the real Label Studio API, and N rounds of
ingest -> select -> label -> gate -> retrain -> evaluate, against uniform-in-time and
random sampling at the same labeling budget.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from framesift.labeling.base import frame_index
from framesift.labeling.label_studio import FROM_NAME, TO_NAME, px_to_ls

TruthFn = Callable[[str, str], list[tuple[str, tuple[int, int, int, int]]]]  # (video_id, frame) -> boxes


class ScriptedAnnotator:
    """Labels Label Studio tasks with ground-truth boxes, through the platform's REST API.

    With ``error_rate`` > 0 each true box is, with that probability, dropped, given
    another class or shifted by a third of its size (one of the three at random).
    """

    def __init__(
        self,
        backend,
        truth: TruthFn,
        *,
        classes: Sequence[str],
        error_rate: float = 0.0,
        seed: int = 0,
        size: tuple[int, int] = (320, 240),
    ):
        self.backend, self.truth, self.classes = backend, truth, list(classes)
        self.error_rate, self.rng = error_rate, random.Random(seed)
        self.width, self.height = size
        self.errors = 0

    def _noisy(self, boxes):
        out = []
        for cls, (x, y, w, h) in boxes:
            if self.rng.random() < self.error_rate:
                self.errors += 1
                kind = self.rng.choice(["drop", "swap", "shift"])
                if kind == "drop":
                    continue
                if kind == "swap":
                    cls = self.rng.choice([c for c in self.classes if c != cls] or [cls])
                else:
                    x, y = x + w // 3, y + h // 3
            out.append((cls, (x, y, w, h)))
        return out

    def label_task(self, task_id: str | int) -> int:
        """Annotate one task (an image sequence); returns the number of boxes drawn."""
        client = self.backend.client
        task = client.get_json(f"/api/tasks/{int(task_id)}")
        names = task["data"]["frame_names"]
        vid = task["data"]["video_id"]
        result = []
        for i, name in enumerate(names):
            for n, (cls, bbox) in enumerate(self._noisy(self.truth(vid, name))):
                result.append(
                    {
                        "id": f"s{i}-{n}",
                        "from_name": FROM_NAME,
                        "to_name": TO_NAME,
                        "type": "rectanglelabels",
                        "item_index": i,
                        "original_width": self.width,
                        "original_height": self.height,
                        "image_rotation": 0,
                        "value": {**px_to_ls(bbox, self.width, self.height), "rectanglelabels": [cls]},
                    }
                )
        client.request(
            "POST", f"/api/tasks/{int(task_id)}/annotations", json={"result": result, "lead_time": 1.0}
        )
        return len(result)


def synth_truth(videos: dict[str, dict[str, Any]]) -> TruthFn:
    """Ground truth of frames of generated videos: ``videos`` maps a video id to the
    ``make_video`` arguments (seconds, fps, width, height, n_objects, seed, kinds)."""
    from framesift.synth import ground_truth

    def truth(vid: str, frame: str):
        spec = videos[vid]
        t = frame_index(frame) / spec["fps"]
        keys = ("width", "height", "n_objects", "seed", "kinds")
        return ground_truth([t], **{k: spec[k] for k in keys if k in spec})[0]

    return truth
