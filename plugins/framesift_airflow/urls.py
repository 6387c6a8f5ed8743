"""URLs of the pages framesift serves on the Airflow api-server (``pages``) and of the
Airflow UI itself, for extra links, the ``runs`` record and alerts. No FastAPI here: the
operators import this at DAG parse time."""

from __future__ import annotations

from urllib.parse import quote

from framesift.io.s3 import http_url

PREFIX = "/framesift"


def base_url() -> str:
    """The api-server's public URL (``[api] base_url``), or "" when it is not set."""
    from airflow.configuration import conf

    return (conf.get("api", "base_url", fallback="") or "").rstrip("/")


def page_url(kind: str, *, absolute: bool = False, **kw: str) -> str | None:
    """The URL of one of these pages: ``page_url("s3", uri="s3://b/k")`` or
    ``page_url("clearml", dag_id=..., run_id=...)``. Relative (``/framesift/...``, what
    an extra link in the UI needs) unless ``[api] base_url`` is set; ``absolute=True``
    (for alerts, which are read outside Airflow) returns None without a base URL."""
    base = base_url()
    if absolute and not base:
        return None
    if kind == "s3":
        bucket, _, key = kw["uri"].removeprefix("s3://").partition("/")
        path = f"{PREFIX}/s3/{quote(bucket)}/{quote(key)}"
    elif kind == "clearml":
        path = f"{PREFIX}/clearml/{quote(kw['dag_id'], safe='')}/{quote(kw['run_id'], safe='')}"
    else:
        raise ValueError(f"unknown page kind {kind!r}")
    return base + path


def airflow_run_url(dag_id: str, run_id: str) -> str | None:
    """The Airflow UI page of a DAG run (absolute; None without ``[api] base_url``)."""
    base = base_url()
    return f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}" if base else None


def s3_link(s3, uri: str, *, absolute: bool = False) -> str:
    """A link that opens an output in ``s3://`` (a report, a frame): framesift's page on the
    api-server when Airflow serves it (never expires, no bucket access needed), else a
    presigned S3 URL. ``absolute`` for what is read outside Airflow (alerts)."""
    return page_url("s3", absolute=absolute, uri=uri) or http_url(s3, uri)
