"""The selection report opened the ways an operator opens it (issue #17, point 4): the
extra link's URL (framesift's page on the api-server, ``/framesift/s3/...``) and a
presigned S3 URL of the page alone. Every <img> of the page must load: a data: URI that
decodes as an image, or a URL that answers 200 with an image. The old report's relative
image URLs did not load from a presigned page (403 on real S3)."""

from __future__ import annotations

import base64
import io
import re
from types import SimpleNamespace
from urllib.parse import urljoin

import numpy as np
import pytest
import requests

from framesift.io.s3 import http_url
from framesift.selection.engine import select
from framesift.selection.inputs import SelectionInputs
from framesift.selection.report import build_report, upload_report
from framesift.selection.spec import parse_selection


@pytest.fixture
def report_uri(isolated, s3, tmp_path):
    rng = np.random.default_rng(0)
    names = [f"vid{i % 2}/frame_{i:05d}.jpg" for i in range(30)]
    inputs = SelectionInputs(names, rng.normal(size=(30, 8)).astype(np.float32))
    result = select(inputs, parse_selection({"n_samples": 5}, []))
    images = {result.selected_names[i]: rng.integers(0, 255, (720, 1280, 3), np.uint8) for i in range(3)}
    index = build_report(result, inputs, tmp_path / "report", images=images)
    prefix = isolated.storage.output_prefix + "selections/s1/report"
    return upload_report(s3, index.parent, isolated.storage.out_bucket, prefix)


def check_every_image_loads(html: str, page_url: str, get) -> int:
    from PIL import Image

    srcs = re.findall(r"<img[^>]*\ssrc=['\"]([^'\"]+)['\"]", html)
    assert srcs, "no images in the report"
    for src in srcs:
        if src.startswith("data:"):
            head, _, payload = src.partition(",")
            assert head in ("data:image/png;base64", "data:image/jpeg;base64"), head
            data = base64.b64decode(payload, validate=True)
        else:
            resp = get(urljoin(page_url, src))
            assert resp.status_code == 200, (src, resp.status_code)
            assert resp.headers["content-type"].startswith("image/"), resp.headers["content-type"]
            data = resp.content
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    return len(srcs)


def test_presigned_page_shows_its_images(report_uri, s3):
    url = http_url(s3, report_uri)
    page = requests.get(url, timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()

    def get_signed(u: str):
        # the embedded S3 (moto) serves unsigned GETs; real S3 answers 403 to them, so a
        # URL the page resolves must carry its own signature to count as loading
        assert "Signature=" in u, f"{u} is not presigned: real S3 refuses it"
        return requests.get(u, timeout=30)

    n = check_every_image_loads(page.text, url, get_signed)
    assert n == 2 + 3  # embeddings and density plots (no predictions), three frames


def test_extra_link_page_shows_its_images(report_uri, s3, isolated, monkeypatch):
    """Through the page the extra link points at (pages.app, as the api-server mounts it),
    with the pipeline's S3 client; the Airflow login is stubbed (tested in the e2e)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from framesift_airflow import pages
    from framesift_airflow.urls import PREFIX, page_url

    monkeypatch.setattr(pages, "_hook", lambda: SimpleNamespace(config=isolated, s3=s3))
    monkeypatch.setattr(pages, "_allowed", lambda user, dag_id: None)
    pages.app.dependency_overrides[pages._user] = lambda: object()
    server = FastAPI()
    server.mount(PREFIX, pages.app)  # as the plugin's fastapi_apps entry mounts it
    try:
        client = TestClient(server, base_url="http://airflow.test")
        url = page_url("s3", uri=report_uri)
        assert url.startswith(PREFIX + "/s3/")
        resp = client.get(url)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
        n = check_every_image_loads(resp.text, "http://airflow.test" + url, client.get)
        assert n == 2 + 3  # embeddings and density plots (no predictions), three frames
    finally:
        pages.app.dependency_overrides.clear()
