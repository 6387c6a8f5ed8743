"""Where framesift puts things in the output bucket, in one place.

<output_prefix>/videos/<video_id>/frames/<stem>-<idx>-<ext>.png   (Lightly naming)
<output_prefix>/videos/<video_id>/manifest.json
"""

from __future__ import annotations

import hashlib
import re

from framesift.config.schema import PipelineConfig
from framesift.io.s3 import join_key

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def video_id(bucket: str, key: str, etag: str) -> str:
    """Stable id of one version of one uploaded object."""
    return hashlib.sha1(f"{bucket}/{key}/{etag}".encode()).hexdigest()[:16]


def safe_stem(key: str) -> str:
    """The file stem of a key, with characters that trouble shells and URLs replaced."""
    name = key.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return _UNSAFE.sub("_", stem).strip("._") or "video"


def video_ext(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else "video"
    return _UNSAFE.sub("_", ext) or "video"


def video_prefix(cfg: PipelineConfig, vid: str) -> str:
    return join_key(cfg.storage.output_prefix, "videos", vid)


def frames_prefix(cfg: PipelineConfig, vid: str) -> str:
    return join_key(video_prefix(cfg, vid), "frames")


def manifest_key(cfg: PipelineConfig, vid: str) -> str:
    return join_key(video_prefix(cfg, vid), "manifest.json")
