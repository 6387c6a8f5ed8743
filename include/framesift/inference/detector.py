"""The detector: an ultralytics detection checkpoint run batched, ONE forward pass per
batch for both the boxes (own NMS on the raw head output, so every kept box has its
per-class scores) and an embedding per image (a forward hook on the backbone's last
layer, global-average-pooled and L2-normalised). A box's ``probabilities`` are its
per-class sigmoid scores (YOLOv8 heads score classes independently) normalised to sum to
1 over the written categories; ``score`` is the kept class's sigmoid score. A Detector is
not thread-safe: one per worker.

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
from framesift.inference.models import (
    InferenceError,
    ModelError,
    PathLike,
    load_detection_model,
    resolve_model,
)
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
        torch = import_torch()
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
        self.half = use_half(half, self.device)
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
        torch = import_torch()
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
        self._captured = None
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

    def preprocess(self, images: Sequence[np.ndarray]):
        """Letterbox (minimum rectangle when all shapes agree, as ultralytics does), BGR->RGB,
        NCHW, [0, 1]; returns the tensor and the per-image geometry."""
        torch = import_torch()
        auto = len({im.shape for im in images}) == 1
        boxed = [letterbox(im, self.imgsz, self.stride, auto) for im in images]
        batch = np.stack([b[0] for b in boxed])[..., ::-1].transpose(0, 3, 1, 2)
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        x = x.half() if self.half else x.float()
        x /= 255.0
        return x, [b[1] for b in boxed]

    def _forward(self, images: list[np.ndarray]) -> tuple[list[FramePredictions], np.ndarray]:
        torch = import_torch()
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
        torch = import_torch()
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

        torch = import_torch()
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
    torch = import_torch()
    layers = list(model.model)
    for i, m in enumerate(layers):
        if isinstance(m, torch.nn.Upsample) and i > 0:
            return i - 1
    sppf = [i for i, m in enumerate(layers) if type(m).__name__ in ("SPPF", "SPP", "SPPELAN")]
    return sppf[-1] if sppf else len(layers) - 2
