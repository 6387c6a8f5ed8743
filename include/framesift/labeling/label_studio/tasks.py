"""What a Label Studio task looks like to framesift: the labeling config (box labels on
a sequence of frames) and the coordinate conversions (pixels <-> Label Studio's percent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import quoteattr

FROM_NAME = "boxes"  # the RectangleLabels control


TO_NAME = "frames"  # the Image object (valueList="$images")


KEY_FIELD = "framesift_key"


def px_to_ls(bbox: Sequence[float], width: int, height: int) -> dict[str, float]:
    """``[x, y, w, h]`` in pixels -> Label Studio's value in percent of the image size."""
    x, y, w, h = (float(v) for v in bbox)
    return {
        "x": 100.0 * x / width,
        "y": 100.0 * y / height,
        "width": 100.0 * w / width,
        "height": 100.0 * h / height,
        "rotation": 0,
    }


def ls_to_px(value: Mapping[str, Any], width: int, height: int) -> tuple[int, int, int, int]:
    """Label Studio's percent value -> ``(x, y, w, h)`` integer pixels, clipped to the image.

    A rotated box (``rotation`` degrees clockwise around its top-left corner) becomes its
    axis-aligned bounding box.
    """
    x = float(value["x"]) * width / 100.0
    y = float(value["y"]) * height / 100.0
    w = float(value["width"]) * width / 100.0
    h = float(value["height"]) * height / 100.0
    rotation = float(value.get("rotation") or 0.0)
    if rotation:
        a = math.radians(rotation)
        cos, sin = math.cos(a), math.sin(a)
        xs = [x + dx * cos - dy * sin for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
        ys = [y + dx * sin + dy * cos for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
        x, y, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    x0, y0 = max(0, round(x)), max(0, round(y))
    x1, y1 = min(width, round(x + w)), min(height, round(y + h))
    return int(x0), int(y0), int(max(0, x1 - x0)), int(max(0, y1 - y0))


def label_config(classes: Sequence[str]) -> str:
    """A labeling config for box labels on a sequence of frames (one task = one sequence)."""
    labels = "\n".join(f"    <Label value={quoteattr(c)}/>" for c in classes)
    return (
        "<View>\n"
        '  <Header value="$title"/>\n'
        f'  <Image name="{TO_NAME}" valueList="$images" zoom="true" zoomControl="true"/>\n'
        f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}" canRotate="false">\n'
        f"{labels}\n"
        "  </RectangleLabels>\n"
        "</View>"
    )


def config_labels(config: str) -> list[str]:
    """The Label values of our RectangleLabels control in a labeling config."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(config)
    except ET.ParseError:
        return []
    for node in root.iter("RectangleLabels"):
        if node.get("name") == FROM_NAME:
            return [lab.get("value", "") for lab in node.iter("Label")]
    return []
