"""Finding new uploads: by listing a prefix, or from S3 event notifications.

Both paths end in the same list of :class:`S3Object`; registration (registry.py)
makes them idempotent, so it does not matter if an upload is seen twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from framesift.config.schema import PipelineConfig
from framesift.ingest.registry import known_ids
from framesift.io.layout import video_id
from framesift.io.s3 import S3Object, clean_etag, list_objects, unquote_event_key


def is_video_key(key: str, extensions: Iterable[str]) -> bool:
    return key.lower().endswith(tuple(e.lower() for e in extensions))


def list_candidates(
    s3, cfg: PipelineConfig, prefix: str | None = None
) -> tuple[list[S3Object], list[S3Object]]:
    """Objects under the videos prefix: (video-like keys, ignored keys)."""
    prefix = cfg.storage.videos_prefix if prefix is None else prefix
    videos, ignored = [], []
    for obj in list_objects(s3, cfg.storage.bucket, prefix):
        (videos if is_video_key(obj.key, cfg.discovery.video_extensions) else ignored).append(obj)
    return videos, ignored


def find_new_videos(s3, db, cfg: PipelineConfig, prefix: str | None = None) -> list[S3Object]:
    """Video-like objects under the prefix whose bucket/key/etag is not registered yet."""
    videos, _ = list_candidates(s3, cfg, prefix)
    known = known_ids(db, videos)
    return [o for o in videos if video_id(o.bucket, o.key, o.etag) not in known]


def objects_from_s3_event(body: str | dict[str, Any]) -> list[S3Object]:
    """S3 ``ObjectCreated`` records from one notification message body.

    Handles the plain S3 -> SQS shape and the S3 -> SNS -> SQS envelope; ignores
    ``s3:TestEvent`` and non-create events. Keys arrive URL-encoded.
    """
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except json.JSONDecodeError:
            return []
    if not isinstance(body, dict):
        return []
    if "Records" not in body and isinstance(body.get("Message"), str):  # SNS envelope
        return objects_from_s3_event(body["Message"])
    out = []
    for record in body.get("Records", []):
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        s3 = record.get("s3", {})
        bucket = s3.get("bucket", {}).get("name")
        obj = s3.get("object", {})
        if not bucket or "key" not in obj:
            continue
        out.append(
            S3Object(
                bucket,
                unquote_event_key(obj["key"]),
                clean_etag(obj.get("eTag", "")),
                int(obj.get("size", 0)),
            )
        )
    return out


def objects_from_trigger_payloads(payloads: Iterable[dict[str, Any]]) -> list[S3Object]:
    """Objects from asset-event payloads of either watcher.

    The SQS watcher's payload carries ``message_batch`` (raw SQS messages); the
    prefix-listing watcher's carries ``objects``. One run may fold several events.
    """
    out = []
    for payload in payloads:
        for message in payload.get("message_batch") or []:
            out.extend(
                objects_from_s3_event(message.get("Body", "") if isinstance(message, dict) else message)
            )
        for obj in payload.get("objects") or []:
            out.append(S3Object(obj["bucket"], obj["key"], clean_etag(obj["etag"]), int(obj.get("size", 0))))
    return dedupe(out)


def dedupe(objects: Iterable[S3Object]) -> list[S3Object]:
    """Drop repeats of the same bucket/key/etag, keeping the first seen order.

    An event without an etag (some stores omit it) is kept only if no event for the
    same key carries one.
    """
    seen: dict[tuple[str, str, str], S3Object] = {}
    for obj in objects:
        seen.setdefault((obj.bucket, obj.key, obj.etag), obj)
    with_etag = {(b, k) for (b, k, e) in seen if e}
    return [o for (b, k, e), o in seen.items() if e or (b, k) not in with_etag]
