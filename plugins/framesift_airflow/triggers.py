"""Deferrable trigger that finds uploads by listing a prefix (any S3-compatible store).

It is a BaseEventTrigger, so it serves both as an AssetWatcher trigger (event-driven
scheduling of ``framesift_ingest``) and as a sensor's deferral target.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent


class NewVideosTrigger(BaseEventTrigger):
    """Yield ``{"objects": [...]}`` for video keys under the prefix not yet in the registry.

    Keys already yielded by this trigger instance are not yielded again while they
    wait to be registered (the registry makes a repeat harmless anyway).
    """

    def __init__(
        self, config_path: str | None = None, prefix: str | None = None, poll_interval_s: float | None = None
    ):
        super().__init__()
        self.config_path = config_path
        self.prefix = prefix
        self.poll_interval_s = poll_interval_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "framesift_airflow.triggers.NewVideosTrigger",
            {"config_path": self.config_path, "prefix": self.prefix, "poll_interval_s": self.poll_interval_s},
        )

    @staticmethod
    def _poll(hook, prefix: str | None) -> list[dict[str, Any]]:
        from framesift.ingest.discovery import find_new_videos

        found = find_new_videos(hook.s3, hook.db, hook.config, prefix)
        return [{"bucket": o.bucket, "key": o.key, "etag": o.etag, "size": o.size} for o in found]

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from framesift_airflow.hooks import FramesiftHook

        # one hook (one boto3 client, one Mongo client) for the trigger's life
        hook = await asyncio.to_thread(FramesiftHook, self.config_path)
        interval = self.poll_interval_s or hook.config.discovery.poll_interval_s
        yielded: set[tuple[str, str, str]] = set()
        try:
            while True:
                objects = await asyncio.to_thread(self._poll, hook, self.prefix)
                fresh = [o for o in objects if (o["bucket"], o["key"], o["etag"]) not in yielded]
                if fresh:
                    self.log.info(
                        "found %d new upload(s): %s", len(fresh), ", ".join(o["key"] for o in fresh[:10])
                    )
                    yielded.update((o["bucket"], o["key"], o["etag"]) for o in fresh)
                    yield TriggerEvent({"objects": fresh})
                await asyncio.sleep(interval)
        finally:
            if "mongo_client" in hook.__dict__:
                hook.mongo_client.close()
