"""Where framesift puts things in the output bucket, in one place.

<output_prefix>/videos/<video_id>/frames/<stem>-<idx>-<ext>.png   (Lightly naming)
<output_prefix>/videos/<video_id>/manifest.json
"""

from __future__ import annotations

import hashlib
import re

from framesift.config.schema import PipelineConfig
from framesift.io.s3 import get_json, join_key, parse_s3_uri

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


def video_folder(key: str) -> str:
    """The folder of a video's S3 key, with its slash: ``"videos/cam1/"`` for
    ``videos/cam1/a.mp4`` ("" for a key at the bucket root). A folder is a source (a camera):
    drift keeps a window per folder, labeling can keep a project per folder."""
    return key.rsplit("/", 1)[0] + "/" if "/" in key else ""


def folder_under(key: str, prefix: str) -> str:
    """A video's folder below ``prefix``, without the outer slashes: ``"cam1"`` for
    ``videos/cam1/a.mp4`` under ``videos/``; "" for a video directly under the prefix; the
    whole folder for a key outside it."""
    folder = video_folder(key)
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    return folder.removeprefix(prefix).strip("/")


def video_prefix(cfg: PipelineConfig, vid: str) -> str:
    return join_key(cfg.storage.output_prefix, "videos", vid)


def frames_prefix(cfg: PipelineConfig, vid: str) -> str:
    return join_key(video_prefix(cfg, vid), "frames")


def manifest_key(cfg: PipelineConfig, vid: str) -> str:
    return join_key(video_prefix(cfg, vid), "manifest.json")


def frame_times(s3, manifest_uri: str | None) -> dict[str, float]:
    """Frame name -> its time in the video (seconds), from the video's manifest.json;
    empty when there is no manifest or it predates timestamps."""
    if not manifest_uri:
        return {}
    try:
        manifest = get_json(s3, *parse_s3_uri(manifest_uri))
    except Exception:  # noqa: BLE001 - a missing manifest only loses the times
        return {}
    names = manifest.get("frame_names") or []
    times = manifest.get("frame_timestamps_s") or []
    return {str(n): float(t) for n, t in zip(names, times, strict=False)}


def format_time(seconds: float) -> str:
    """``75.25`` -> ``"1:15.25"``, ``4.5`` -> ``"4.50 s"``: a frame's time for a person."""
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{rest:05.2f}" if hours else f"{minutes}:{rest:05.2f}"


def frame_label(video_key: str, frame_name: str, times: dict[str, float] | None = None) -> str:
    """How a person finds a frame: ``"<video key> @ <time>"``, or ``"<video key>/<frame>"``
    when its time is not known."""
    t = (times or {}).get(frame_name)
    return f"{video_key} @ {format_time(t)}" if t is not None else f"{video_key}/{frame_name}"
