"""Hooks own the clients; operators and triggers ask them for clients and config."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from framesift.config.loading import load_config
from framesift.config.schema import PipelineConfig


class FramesiftHook(BaseHook):
    """The pipeline config plus the S3 and Mongo clients of its configured connections.

    Credentials come from the Airflow connections named in ``connections:`` of the
    config (``aws_default`` and ``mongo_default`` by default), never from the config.
    """

    def __init__(self, config_path: str | None = None, overrides: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config: PipelineConfig = load_config(config_path, overrides)

    @cached_property
    def s3(self):
        """The S3 client of the aws connection, its HTTP pool sized to the stages' workers
        (botocore's default of 10 is smaller than the upload and prediction thread pools).
        Settings in the connection's ``config_kwargs`` are kept; a larger
        ``max_pool_connections`` there wins."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from framesift.io.s3 import client_config

        ours = client_config(self.config.extraction.upload_workers)
        theirs = S3Hook(aws_conn_id=self.config.connections.aws).conn_config.botocore_config
        if theirs is not None:
            pool = max(ours.max_pool_connections, getattr(theirs, "max_pool_connections", None) or 0)
            ours = ours.merge(theirs).merge(type(ours)(max_pool_connections=pool))
        return S3Hook(aws_conn_id=self.config.connections.aws, config=ours).get_conn()

    @cached_property
    def mongo_client(self):
        from airflow.providers.mongo.hooks.mongo import MongoHook

        return MongoHook(mongo_conn_id=self.config.connections.mongo).get_conn()

    @cached_property
    def db(self):
        return self.mongo_client[self.config.mongo.database]

    def labeling_credentials(self) -> dict[str, Any]:
        """The labeling connection as the plain dict the core backends take (never logged)."""
        conn = self.get_connection(self.config.connections.labeling)
        fields = {
            "host": conn.host,
            "port": conn.port,
            "schema": conn.schema,
            "login": conn.login,
            "password": conn.password,
        }
        return {k: v for k, v in {**fields, **conn.extra_dejson}.items() if v not in (None, "")}

    def labeling_backend(self):
        from framesift.labeling.factory import get_backend

        return get_backend(self.config, self.labeling_credentials(), self.s3)
