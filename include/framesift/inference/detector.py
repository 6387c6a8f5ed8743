"""The detector: a detection network (an ultralytics checkpoint or Darknet YOLO weights,
:mod:`framesift.inference.networks`) run batched on the configured runtime
(:mod:`framesift.inference.backends`), ONE forward pass per batch for both the boxes (own
NMS on the raw head output, so every kept box has its per-class scores) and an embedding
per image (the backbone's feature map, global-average-pooled and L2-normalised, an output
of the same graph). A box's ``probabilities`` are its per-class scores (independent
sigmoids in YOLOv3 and YOLOv8 heads; YOLOv3's times objectness) normalised to sum to 1
over the written categories; ``score`` is the kept class's score. A Detector is not
thread-safe: one per worker.

Policy on ``important_classes``: every listed class must be a class of the model (a typo
would otherwise silently drop a class from selection and balancing); the predictions
and the schema then keep only those classes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from framesift.config.schema import PipelineConfig
from framesift.inference import predictions
from framesift.inference.backends import make_runtime
from framesift.inference.models import (
    InferenceError,
    ModelError,
    PathLike,
    check_local_model,
    resolve_model,
)
from framesift.inference.networks import load_network
from framesift.inference.runtimes import (
    CPU_FORWARD_BATCH,
    empty_cuda_cache,
    import_torch,
    is_oom,
    select_device,
    use_half,
)

_LOG = logging.getLogger("framesift.inference")

IOU_THRESHOLD = 0.7  # ultralytics' predict default


MAX_DET = 300


_MAX_NMS = 30_000  # candidates into NMS at most (ultralytics' default)


_LETTERBOX_FILL = 114


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
        return predictions.prediction_record(file_name, (b.to_lightly() for b in self.boxes))


class Detector:
    """A detection network run batched: boxes + one embedding per image, one forward pass.

    ``model_path``: an ultralytics ``.pt`` or a Darknet ``.weights`` (see
    :mod:`framesift.inference.networks`). ``imgsz`` None: the size the model was trained at.
    ``runtime``: torch, onnxruntime, openvino or auto (:mod:`framesift.inference.backends`).
    """

    name = "detector"

    def __init__(
        self,
        model_path: PathLike,
        *,
        confidence_threshold: float = 0.3,
        iou_threshold: float = IOU_THRESHOLD,
        imgsz: int | None = None,
        device: str = "auto",
        half: bool | str = "auto",
        important_classes: Sequence[str] = (),
        max_det: int = MAX_DET,
        forward_batch: int | None = None,
        model_uri: str | None = None,
        runtime: str = "torch",
        cache_dir: PathLike | None = None,
        log: logging.Logger | None = None,
    ):
        self.log = log or _LOG
        self.model_uri = model_uri or str(model_path)
        self.model_path = Path(model_path)
        network = load_network(check_local_model(self.model_path, self.model_uri), self.model_uri)
        self.network = network
        self.names: dict[int, str] = dict(network.names)
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
        self.stride = network.stride
        self.imgsz = int(math.ceil((imgsz or network.native_imgsz) / self.stride) * self.stride)
        self.device = select_device(device)
        self.half = use_half(half, self.device)
        self.runtime = make_runtime(
            runtime, network, self.device, self.half, cache_dir=cache_dir, imgsz=self.imgsz, log=self.log
        )
        if self.runtime.name != "torch":
            self.half = False
        self.runtime_name = self.runtime.name
        if forward_batch is None and self.device.type == "cpu":
            forward_batch = CPU_FORWARD_BATCH
        self.forward_batch = forward_batch
        self.embedding_dim = network.embedding_dim
        self.embedding_layer = network.embedding_layer
        self.max_batch: int | None = None  # lowered after a CUDA OOM

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
            runtime=inf.runtime,
            cache_dir=cache_dir,
            log=log,
        )

    @property
    def embedding_model_id(self) -> str:
        """Which embedding space the vectors live in: weights, layer, input size, kind."""
        return predictions.embedding_model_id(
            self.network.weights_sha256, self.embedding_layer, self.imgsz, "detector"
        )

    @property
    def categories(self) -> dict[int, str]:
        """The categories written (model ids -> names): all, or the important classes."""
        return {i: self.names[i] for i in self.class_ids}

    def schema(self) -> dict[str, Any]:
        return predictions.make_schema(self.names, self.important_classes or None)

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
            if not is_oom(exc):
                raise
        empty_cuda_cache()
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
            if not is_oom(exc):
                raise
            empty_cuda_cache()
            raise InferenceError(
                f"CUDA out of memory at batch size {n} and again at {half}: lower inference.batch_size "
                f"(or inference.imgsz, now {self.imgsz})"
            ) from None
        self.max_batch = half
        return a[0] + b[0], np.concatenate([a[1], b[1]])

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Letterbox]]:
        """Letterbox (minimum rectangle when all shapes agree, as ultralytics does), BGR->RGB,
        NCHW float32 in [0, 1]; returns the array and the per-image geometry."""
        auto = len({im.shape for im in images}) == 1
        boxed = [letterbox(im, self.imgsz, self.stride, auto) for im in images]
        batch = np.stack([b[0] for b in boxed])[..., ::-1].transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(batch, dtype=np.float32)
        x *= 1.0 / 255.0
        return x, [b[1] for b in boxed]

    def _forward(self, images: list[np.ndarray]) -> tuple[list[FramePredictions], np.ndarray]:
        x, geometry = self.preprocess(images)
        raw, emb = self.runtime.run(x)
        dets = self.nms(raw)
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        return [self.frame_predictions(d, lb) for d, lb in zip(dets, geometry, strict=True)], emb

    def nms(self, raw: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Per image: (xyxy, score, class, class scores) of the kept boxes, in input pixels."""
        torch = import_torch()
        from torchvision.ops import batched_nms

        nc = len(self.names)
        out = []
        for pred in np.asarray(raw, dtype=np.float32).transpose(0, 2, 1):  # anchors x (4 + nc)
            cls = pred[:, 4 : 4 + nc]
            j = cls.argmax(axis=1)
            conf = cls[np.arange(len(cls)), j]
            keep = conf >= self.confidence_threshold
            if not keep.any():
                out.append((np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros((0, nc))))
                continue
            xywh, conf, j, cls = pred[keep, :4], conf[keep], j[keep], cls[keep]
            if conf.shape[0] > _MAX_NMS:
                top = np.argsort(-conf, kind="stable")[:_MAX_NMS]
                xywh, conf, j, cls = xywh[top], conf[top], j[top], cls[top]
            xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
            idx = batched_nms(
                torch.from_numpy(xyxy), torch.from_numpy(conf), torch.from_numpy(j), self.iou_threshold
            )
            idx = idx[: self.max_det].numpy()
            out.append((xyxy[idx], conf[idx], j[idx], cls[idx]))
        return out

    def frame_predictions(self, det, lb: Letterbox) -> FramePredictions:
        """One image's kept boxes (from :meth:`nms`) in the original frame's pixels, the
        classes the detector was asked for only, with their probability vectors."""
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
        """A trainable float32 copy of the backbone (input to the embedding layer), or None
        when the backbone's layers are not a plain sequence."""
        return self.network.backbone()
