"""The model registry's records in Mongo: ``models`` (every trained model, its
lineage, metrics and whether it is the champion) and ``evaluations`` (each evaluation
round on the fixed test set). :mod:`framesift.loop.training` writes them (train,
evaluate, promote); inference serves the champion (:func:`serving_config`); the gate and
the drift monitor read them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.database import Database

from framesift.config.schema import PipelineConfig

log = logging.getLogger("framesift.training")

MODELS = "models"


def champion(db: Database) -> dict[str, Any] | None:
    return db[MODELS].find_one({"champion": True})


def serving_config(db: Database, cfg: PipelineConfig, log_: logging.Logger | None = None) -> PipelineConfig:
    """``cfg`` with ``inference.model_uri`` set to the champion's checkpoint, when there is
    a champion and ``training.serve_champion`` is on; else ``cfg`` unchanged."""
    if not cfg.training.serve_champion:
        return cfg
    champ = champion(db)
    if not champ or not champ.get("uri"):
        return cfg
    (log_ or log).info("inference uses the champion model %s (%s)", champ["_id"], champ["uri"])
    out = cfg.model_copy(deep=True)
    out.inference.model_uri = champ["uri"]
    return out


EVALUATIONS = "evaluations"


def _now() -> datetime:
    return datetime.now(UTC)


def record_evaluation(db: Database, doc: Mapping[str, Any]) -> dict[str, Any]:
    """Append one evaluation (a trained model on the test set, plus the champion after it)."""
    doc = {"_id": doc.get("_id") or f"eval-{uuid.uuid4().hex[:12]}", "at": _now(), **doc}
    db[EVALUATIONS].insert_one(doc)
    return doc


def history(db: Database) -> list[dict[str, Any]]:
    db[EVALUATIONS].create_index([("at", ASCENDING)], name="at")
    return list(db[EVALUATIONS].find({}).sort("at", ASCENDING))
