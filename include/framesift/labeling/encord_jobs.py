"""Encord's upload job, in two steps the SDK's ``create_image_sequence`` does as one.

``StorageFolder.create_image_sequence`` (encord 0.1.211, pinned) uploads the files to
signed URLs, starts an upload job and then polls it for up to 7 days without handing
out the job's id. :func:`start_image_sequence` makes the same SDK calls and returns the
job id, so the caller can note it before waiting; :func:`wait_for_job` waits a bounded
time. Why it matters is in :mod:`framesift.labeling.encord` ("The upload job").
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from framesift.labeling.base import BackendError, BackendUnavailable

JOB_POLL_S = 60  # one long poll of the upload job (the server answers when done or after this)


def start_image_sequence(
    folder: Any, paths: Sequence[Path], title: str, client_metadata: dict[str, Any]
) -> Any:
    """Upload ``paths`` (one image sequence, in order) and start its upload job; the job id."""
    from encord.orm.storage import (
        DataUploadImageGroup,
        DataUploadImageGroupImage,
        DataUploadItems,
        StorageItemType,
    )

    urls = folder._get_upload_signed_urls(item_type=StorageItemType.IMAGE, count=len(paths))
    if len(urls) != len(paths):
        raise BackendError(f"Encord gave {len(urls)} upload URLs for {len(paths)} frames")
    images = []
    for path, url in zip(paths, urls, strict=True):
        # as create_image_sequence does (its image-group files go up as DICOM_FILE)
        folder._upload_local_file(
            str(path),
            path.name,
            StorageItemType.DICOM_FILE,
            url.signed_url,
            upload_headers=url.upload_headers,
        )
        images.append(
            DataUploadImageGroupImage(
                url=url.object_key, placeholder_item_uuid=url.item_uuid, title=path.name
            )
        )
    items = DataUploadItems(
        image_groups=[
            DataUploadImageGroup(
                images=images, title=title, client_metadata=client_metadata, create_video=True
            )
        ]
    )
    return folder.add_private_data_to_folder_start(None, items, ignore_errors=False)


def wait_for_job(
    folder: Any,
    job: Any,
    what: str,
    *,
    timeout_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """Wait at most ``timeout_s`` for an upload job; the uuid of the item it made.

    A job that failed or was cancelled is a BackendError with Encord's errors; one still
    running at the deadline is a BackendUnavailable (retryable) naming the job.
    """
    from encord.orm.dataset import LongPollingStatus

    deadline = clock() + timeout_s
    job_id = _as_uuid(job) if isinstance(job, str) else job
    while True:
        left = deadline - clock()
        res = folder.add_private_data_to_folder_get_result(
            job_id, timeout_seconds=max(1, int(min(JOB_POLL_S, left)))
        )
        status = getattr(res.status, "value", res.status)
        if status == LongPollingStatus.DONE.value:
            if not res.items_with_names:
                raise BackendError(f"Encord upload job {job} of {what} made no item")
            return res.items_with_names[0].item_uuid
        if status in (LongPollingStatus.ERROR.value, LongPollingStatus.CANCELLED.value):
            errors = "; ".join(str(e) for e in (res.errors or [])[:5]) or "no detail"
            raise BackendError(f"Encord upload job {job} of {what} ended {status}: {errors}")
        if clock() >= deadline:
            done = res.units_done_count + res.units_error_count + res.units_cancelled_count
            total = done + res.units_pending_count
            raise BackendUnavailable(
                f"Encord upload job {job} of {what} has not finished after {timeout_s:g} s (status "
                f"{status}, {done}/{total} units done); nothing was linked; the next try waits for "
                "this same job instead of uploading again"
            )
        sleep(min(1.0, max(0.0, deadline - clock())))


def _as_uuid(value: str) -> Any:
    try:
        return uuid.UUID(value)
    except ValueError:
        return value
