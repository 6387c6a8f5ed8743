"""The datapool: frames that earlier selections picked (their ids and embeddings).

Diversity counts distance from them, and an input frame that repeats one is never picked
again. Each ``selections`` document points at its winners' embeddings (``datapool_uris``,
one embeddings file per embedding space; records with only ``datapool_uri`` have one).
Every file records the embedding model that made it: distances are only taken within one
model's space, so entries of another space exclude their frames by id but stay out of
the distances (and are counted, so the report can say so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymongo.database import Database

from framesift.inference.predictions import read_embeddings_file, write_embeddings
from framesift.io.s3 import s3_uri

SELECTIONS = "selections"


@dataclass
class Datapool:
    """The datapool as one selection sees it: every frame id selected before (never to be
    selected again), the embeddings of those in this selection's space, and how many were
    left out of the distances because another model embedded them."""

    ids: list[str]
    embeddings: np.ndarray | None
    other_space: int = 0
    space_ids: list[str] | None = None  # the frame ids of ``embeddings``, row by row


def read_datapool(s3, db: Database, exclude: str, model_id: str | None, dim: int | None = None) -> Datapool:
    """The datapool of every selection but ``exclude``, in the space of ``model_id``
    (None: files without an id, read only when their dimension is ``dim``)."""
    ids: list[str] = []
    arrays: list[np.ndarray] = []
    space_ids: list[str] = []
    other = 0
    query = {
        "_id": {"$ne": exclude},
        "$or": [{"datapool_uri": {"$ne": None}}, {"datapool_uris.0": {"$exists": True}}],
    }
    for doc in db[SELECTIONS].find(query, {"datapool_uri": 1, "datapool_uris": 1}):
        for uri in doc.get("datapool_uris") or [doc["datapool_uri"]]:  # a drift selection has one
            f = read_embeddings_file(s3, uri)
            ids += f.frame_names
            same = f.model_id == model_id and (dim is None or f.embeddings.shape[1] == dim)
            if same:
                arrays.append(f.embeddings)
                space_ids += f.frame_names
            else:
                other += len(f.frame_names)
    return Datapool(ids, np.concatenate(arrays) if arrays else None, other, space_ids)


def write_datapool(
    s3, bucket: str, key: str, frame_names: list[str], embeddings: np.ndarray, model_id: str | None
) -> str:
    """The selected frames' names and embeddings (one space) as one ``.npz``; its URI."""
    return write_embeddings(s3, s3_uri(bucket, key), frame_names, embeddings, model_id)
