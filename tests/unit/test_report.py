"""The selection report: files exist, the HTML references the PNGs, the table is right."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

from framesift.selection.engine import select
from framesift.selection.inputs import SelectionInputs
from framesift.selection.report import bucket_labels, build_report, project_2d
from framesift.selection.spec import parse_selection

CATS = [{"id": 0, "name": "car"}, {"id": 1, "name": "person"}, {"id": 2, "name": "bike"}]


@pytest.fixture(scope="module")
def selection():
    rng = np.random.default_rng(0)
    n = 300
    x = rng.standard_normal((n, 8)).astype(np.float32)
    x[n - 1] = x[n - 2]  # one exact duplicate
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    names = [f"{v}-{i:03d}-mp4.png" for v in ("street", "park", "lot") for i in range(n // 3)]
    preds = []
    for _ in range(n):
        boxes = []
        for _ in range(rng.integers(0, 3)):
            p = rng.dirichlet([1, 1, 1])
            boxes.append(
                {
                    "category_id": int(p.argmax()),
                    "bbox": [5, 8, 20, 12],
                    "score": float(p.max()),
                    "probabilities": p.tolist(),
                }
            )
        preds.append(boxes)
    sharp = rng.uniform(0, 100, n)
    inputs = SelectionInputs(names, x, predictions=preds, categories=CATS, metadata={"sharpness": sharp})
    spec = parse_selection(
        {
            "n_samples": 25,
            "balance": True,
            "strategies": [
                {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}},
                {
                    "input": {"type": "METADATA", "key": "lightly.sharpness"},
                    "strategy": {"type": "THRESHOLD", "threshold": 10, "operation": "BIGGER"},
                },
            ],
        },
        ["car", "bike"],
    )
    result = select(inputs, spec, datapool_ids=["street-000-mp4.png", "old-001-mov.png"])
    images = {inputs.frame_names[i]: np.full((40, 60, 3), 90, np.uint8) for i in result.selected[:3]}
    return inputs, result, images, int((sharp <= 10).sum())


def _decoded_images(text: str) -> list[bytes]:
    """Every <img> of the page, decoded; each must be a data: URI (no other file)."""
    import base64

    srcs = re.findall(r"<img src='([^']+)'", text)
    out = []
    for src in srcs:
        assert re.match(r"data:image/(png|jpeg);base64,", src), src[:60]
        out.append(base64.b64decode(src.split(",", 1)[1], validate=True))
    return out


def test_the_page_holds_its_images_and_the_files_exist(selection, tmp_path):
    """The page loads its images wherever it is opened (issue #17: a presigned page with
    relative image URLs showed no plots): every image is a data: URI inside it."""
    inputs, result, images, _ = selection
    index = build_report(result, inputs, tmp_path / "report", images=images)
    assert index == tmp_path / "report" / "index.html" and index.exists()
    decoded = _decoded_images(index.read_text())
    assert len(decoded) == 3 + 3  # three plots, three example frames
    pngs = [d for d in decoded if d[:8] == b"\x89PNG\r\n\x1a\n"]
    jpegs = [d for d in decoded if d[:3] == b"\xff\xd8\xff"]
    assert len(pngs) == 3 and len(jpegs) == 3 and all(len(d) > 1000 for d in decoded)
    for png in ("embeddings.png", "class_distribution.png", "sampling_density.png"):
        assert (index.parent / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((index.parent / "examples").glob("*.jpg"))) == 3
    saved = json.loads((index.parent / "selection.json").read_text())
    assert saved["selected_names"] == result.selected_names


def test_example_frames_are_bounded_thumbnails(selection, tmp_path):
    """A full-HD noisy frame (the worst case for compression) still makes a small
    thumbnail, so a page of MAX_EXAMPLES frames stays a few MB at most."""
    from PIL import Image

    inputs, result, _, _ = selection
    rng = np.random.default_rng(1)
    big = {
        inputs.frame_names[i]: rng.integers(0, 255, (1080, 1920, 3), np.uint8) for i in result.selected[:2]
    }
    index = build_report(result, inputs, tmp_path / "r", images=big)
    thumbs = [d for d in _decoded_images(index.read_text()) if d[:3] == b"\xff\xd8\xff"]
    assert len(thumbs) == 2
    for data in thumbs:
        with Image.open(io.BytesIO(data)) as im:
            assert im.width <= 600 and im.height <= 600
        assert len(data) < 400_000
    assert index.stat().st_size < 2_000_000


def test_frames_are_shown_by_their_labels(selection, tmp_path):
    inputs, result, images, _ = selection
    labels = {n: f"videos/cam 1/{n}" for n in result.selected_names}
    text = build_report(result, inputs, tmp_path / "r", images=images, frame_labels=labels).read_text()
    assert all(f"videos/cam 1/{n}" in text for n in result.selected_names)


def test_sizes_table_numbers(selection, tmp_path):
    inputs, result, images, n_blurry = selection
    text = build_report(result, inputs, tmp_path / "r").read_text()
    table = re.search(r"<table id='sizes'>(.*?)</table>", text, re.S).group(1)
    rows = dict(
        (m.group(1), (int(m.group(2).replace(",", "")), int(m.group(3).replace(",", ""))))
        for m in re.finditer(r"<th class='l'>([^<]+)</th><td>([\d,]+)</td><td>([\d,]+)</td>", table)
    )
    assert list(rows) == [
        "Input",
        "Corrupt",
        "Duplicate",
        "Removed",
        "Selected",
        "Datapool Input",
        "Datapool Selected",
    ]
    assert rows["Input"] == (300, 3)
    assert rows["Corrupt"] == (0, 0)
    assert rows["Duplicate"][0] == 2  # one datapool id, one exact copy
    assert rows["Removed"][0] == n_blurry - (1 if inputs.metadata["sharpness"][0] <= 10 else 0)
    assert rows["Selected"] == (25, len({inputs.video_keys[i] for i in result.selected}))
    assert rows["Datapool Input"] == (2, 2)  # street.mp4 and old.mov
    assert rows["Datapool Selected"][0] == 27
    assert rows == {k: (v["Image"], v["Video"]) for k, v in result.sizes.items()}


def test_report_without_embeddings_or_predictions(tmp_path):
    inputs = SelectionInputs([f"a-{i:02d}-mp4.png" for i in range(20)], None, metadata={"w": np.arange(20.0)})
    spec = parse_selection(
        {
            "n_samples": 5,
            "strategies": [{"input": {"type": "METADATA", "key": "w"}, "strategy": {"type": "WEIGHTS"}}],
        }
    )
    text = build_report(select(inputs, spec), inputs, tmp_path).read_text()
    assert (
        "<h2>Sampling density per video</h2>" in text
        and "<h2>Embeddings</h2>" not in text
        and "<h2>Class distribution</h2>" not in text
    )


def test_pca_projection():
    rng = np.random.default_rng(1)
    x = np.c_[rng.standard_normal(200) * 5, rng.standard_normal(200), rng.standard_normal(200) * 0.01]
    coords, method = project_2d(x)
    assert coords.shape == (200, 2)
    assert method.startswith("PCA") or method == "UMAP"
    if method.startswith("PCA"):
        assert abs(np.corrcoef(coords[:, 0], x[:, 0])[0, 1]) > 0.99


def test_balance_buckets_are_named_by_video_file_not_by_video_id():
    """A shot balance's buckets are ``<video id>:<shot>``: the plot names them by the file."""
    inputs = SelectionInputs(
        frame_names=["0123456789abcdef/a-0-mp4.png", "fedcba9876543210/b-0-mp4.png"],
        embeddings=None,
        video_keys=["videos/cam1/bikes.mp4", "videos/cam2/a very long name of a parking lot.mp4"],
    )
    labels = bucket_labels(["0123456789abcdef:3", "fedcba9876543210:12", "car"], inputs)
    assert labels[0] == "bikes.mp4 #3" and labels[2] == "car"
    assert len(labels[1]) == 28 and labels[1].endswith("…") and labels[1].startswith("a very long")
