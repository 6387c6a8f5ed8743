"""Object storage through boto3: URIs, reads, writes, listings.

Functions take a boto3 S3 client so the same code runs against AWS, MinIO or the
embedded loopback server; Airflow's S3Hook hands us that client in production.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import boto3
from botocore.config import Config as BotoConfig


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str
    etag: str
    size: int

    @property
    def uri(self) -> str:
        return s3_uri(self.bucket, self.key)


# The most S3 requests one task process has in flight at once: inference's frame readers
# and prediction writers (8 + 8) or the prediction readers (16), the frame uploads of
# extraction (``extraction.upload_workers``), plus a few for listings. A pool smaller than
# that makes urllib3 drop connections ("Connection pool is full, discarding connection").
POOL_FLOOR = 32
POOL_SLACK = 8


def pool_size(upload_workers: int = 0) -> int:
    """HTTP connections an S3 client needs for the stages' thread pools."""
    return max(POOL_FLOOR, int(upload_workers)) + POOL_SLACK


def client_config(upload_workers: int = 0) -> BotoConfig:
    """botocore settings of framesift's S3 clients: the pool sized to the workers, retries."""
    return BotoConfig(
        retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=pool_size(upload_workers)
    )


def make_client(endpoint_url: str | None = None, region_name: str | None = None, **kwargs: Any):
    """A boto3 S3 client; credentials come from the environment or the arguments."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or os.environ.get("FRAMESIFT_S3_ENDPOINT_URL"),
        region_name=region_name or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=kwargs.pop("config", None) or client_config(),
        **kwargs,
    )


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> (bucket, key). Raises ValueError on anything else."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return bucket, key


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def clean_etag(etag: str) -> str:
    return etag.strip('"')


def head(s3, bucket: str, key: str) -> S3Object:
    resp = s3.head_object(Bucket=bucket, Key=key)
    return S3Object(bucket, key, clean_etag(resp["ETag"]), int(resp["ContentLength"]))


def exists(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def list_objects(s3, bucket: str, prefix: str = "") -> Iterator[S3Object]:
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/"):
                continue  # folder marker
            yield S3Object(bucket, item["Key"], clean_etag(item["ETag"]), int(item["Size"]))


def put_bytes(s3, bucket: str, key: str, data: bytes, content_type: str | None = None) -> None:
    extra = {"ContentType": content_type} if content_type else {}
    s3.put_object(Bucket=bucket, Key=key, Body=data, **extra)


def get_bytes(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def put_json(s3, bucket: str, key: str, obj: Any) -> None:
    put_bytes(s3, bucket, key, json.dumps(obj, indent=2, default=str).encode(), "application/json")


def get_json(s3, bucket: str, key: str) -> Any:
    return json.loads(get_bytes(s3, bucket, key))


def upload(s3, path: str | os.PathLike[str], bucket: str, key: str) -> None:
    s3.upload_file(str(path), bucket, key)


def ensure_bucket(s3, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError:
        s3.create_bucket(Bucket=bucket)


def unquote_event_key(key: str) -> str:
    """S3 event notifications URL-encode keys with '+' for spaces."""
    return unquote(key.replace("+", " "))


def http_url(s3, uri: str, expires_s: int = 7 * 24 * 3600) -> str:
    """A browser-openable (presigned) URL for an ``s3://`` object."""
    bucket, key = parse_s3_uri(uri)
    return s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s)
