"""The datapool: frames that earlier selections picked (their ids and embeddings).

Diversity counts distance from them, and an input frame that repeats one is never picked
again. Each ``selections`` document points at its winners' embeddings (``datapool_uri``).
"""

from __future__ import annotations

import numpy as np
from pymongo.database import Database

from framesift.inference.predictions import read_embeddings

SELECTIONS = "selections"


def read_datapool(s3, db: Database, exclude: str) -> tuple[list[str], np.ndarray | None]:
    """Frames selected by earlier selections: their ids and embeddings."""
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for doc in db[SELECTIONS].find(
        {"_id": {"$ne": exclude}, "datapool_uri": {"$ne": None}}, {"datapool_uri": 1}
    ):
        pool_names, emb = read_embeddings(s3, doc["datapool_uri"])
        names += pool_names
        arrays.append(emb)
    return names, (np.concatenate(arrays) if arrays else None)
