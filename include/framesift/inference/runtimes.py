"""Where a model runs: the torch device (``inference.device``), fp16, CUDA memory.

torch is imported on first use (:func:`import_torch`), never at module import, so DAG
parsing and light tasks stay free of it.
"""

from __future__ import annotations

import logging

from framesift.inference.models import InferenceError

_LOG = logging.getLogger("framesift.inference")


# images per forward pass on CPU: measured on 2 cores with YOLOv8s at 640, batches of 2-4 ran
# ~15 % faster per image than 1 and 30-50 % faster than 16 (cache pressure); GPUs take the
# configured batch whole
CPU_FORWARD_BATCH = 4


def import_torch():
    import torch  # noqa: PLC0415  (imported before ultralytics, which would set OMP_NUM_THREADS=1)

    return torch


def select_device(device: str = "auto"):
    torch = import_torch()
    device = (device or "auto").strip().lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.isdigit():
        device = f"cuda:{device}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InferenceError(
            f"inference.device is {device!r} but CUDA is not available here; use 'auto' or 'cpu'"
        )
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise InferenceError(f"inference.device {device!r} is not a torch device ({exc})") from None


def use_half(half: bool | str, device) -> bool:
    if half == "auto":
        return device.type == "cuda"
    if half and device.type != "cuda":
        _LOG.warning("inference.half is on but the device is %s: running in float32", device)
        return False
    return bool(half)


def is_oom(exc: BaseException) -> bool:
    torch = import_torch()
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom)


def empty_cuda_cache() -> None:
    torch = import_torch()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
