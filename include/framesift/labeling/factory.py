"""The labeling backend named by the config (one place that knows every backend)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from framesift.config.schema import PipelineConfig
from framesift.labeling.base import LabelingBackend
from framesift.labeling.encord import EncordBackend
from framesift.labeling.label_studio.backend import LabelStudioBackend


def get_backend(cfg: PipelineConfig, credentials: Mapping[str, Any], s3, **kwargs: Any) -> LabelingBackend:
    """The backend named by ``cfg.labeling.backend``.

    ``credentials`` is a plain dict (the Airflow glue fills it from the connection
    ``cfg.connections.labeling``): Label Studio takes ``url`` (or ``host``/``port``/
    ``schema``) and ``token`` (or ``password``); Encord takes ``ssh_private_key`` (or
    ``password``, or ``ssh_private_key_path``) and ``domain`` (or ``host``). Other keys
    (e.g. ``max_frames_per_task``) tune the backend. They are never logged.
    """
    name = cfg.labeling.backend
    if name == "label_studio":
        return LabelStudioBackend.from_credentials(cfg, credentials, s3, **kwargs)
    if name == "encord":
        return EncordBackend.from_credentials(cfg, credentials, s3, **kwargs)
    raise ValueError(f"unknown labeling backend {name!r}")
