"""The Mongo ``labels`` collection as other stages read it: one document per labeled frame,
``_id`` ``<video_id>/<frame name>`` (the frame's id in selections), ``boxes`` with
``class_name``. :mod:`framesift.loop.trainset` writes it."""

from __future__ import annotations

from pymongo.database import Database

LABELS = "labels"


def frames_with_class(db: Database, class_name: str) -> list[str]:
    """Ids of the labeled frames with at least one box of ``class_name``."""
    return [d["_id"] for d in db[LABELS].find({"boxes.class_name": class_name}, {"_id": 1})]
