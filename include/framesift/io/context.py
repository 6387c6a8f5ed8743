"""What every stage function needs, in one value: the clients, the config and the run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo.database import Database

from framesift.config.schema import PipelineConfig


@dataclass(frozen=True)
class StageContext:
    """The S3 client, the Mongo database, the pipeline config and the run id of one stage."""

    s3: Any
    db: Database
    cfg: PipelineConfig
    run_id: str
