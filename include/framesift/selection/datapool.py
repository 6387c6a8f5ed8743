"""The datapool: frames that earlier selections picked (their ids and embeddings).

Diversity counts distance from them, and an input frame that repeats one is never picked
again. Each ``selections`` document points at its winners' embeddings (``datapool_uri``).
"""

from __future__ import annotations

import io

import numpy as np
from pymongo.database import Database

from framesift.inference.predictions import read_embeddings
from framesift.io.s3 import put_bytes, s3_uri
from framesift.selection.inputs import SelectionInputs
from framesift.selection.result import SelectionResult

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


def write_datapool(s3, bucket: str, key: str, inputs: SelectionInputs, result: SelectionResult) -> str:
    """The selected frames' names and embeddings as one ``.npz``; returns its URI."""
    buf = io.BytesIO()
    np.savez(buf, embeddings=inputs.embeddings[result.selected], frame_names=np.array(result.selected_names))
    put_bytes(s3, bucket, key, buf.getvalue(), "application/octet-stream")
    return s3_uri(bucket, key)
