"""Darknet YOLO (v3 / v3-tiny) in PyTorch: the ``.cfg`` parsed into modules, the
``.weights`` file loaded into them, and a forward pass that gives what the detector needs.

Why our own reader: ultralytics cannot load Darknet weights and OpenCV 5 dropped its
Darknet reader; ``darknet2any`` loads YOLOv3-tiny only after patching the cfg (it expects
YOLOv4 keys) and ``lightnet`` gave NaN outputs here. The layer types a YOLOv3 cfg uses are
few (``convolutional``, ``maxpool``, ``route``, ``shortcut``, ``upsample``, ``yolo``), so
a reader of ~200 lines is the smaller dependency. Tests check it against detections a
person can verify (a person and a car in a known bikes.mp4 frame) and that the weights
file is consumed to the last float.

The output matches ultralytics' detection head: ``[B, 4 + nc, anchors]`` with boxes as
centre x, centre y, width, height in input pixels and, per class, ``sigmoid(objectness) x
sigmoid(class logit)`` (YOLOv3's class scores are independent sigmoids, like YOLOv8's).
The embedding layer is the last layer before the first ``yolo`` head's branch point: in
YOLOv3-tiny the 1x1, 256-channel convolution at stride 32 that both heads read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from framesift.inference.runtimes import import_torch


class DarknetError(ValueError):
    """The cfg or weights file cannot be read; the message says which and why."""


@dataclass
class Section:
    kind: str
    options: dict[str, str] = field(default_factory=dict)
    line: int = 0

    def int(self, key: str, default: int | None = None) -> int:
        if key not in self.options:
            if default is None:
                raise DarknetError(f"[{self.kind}] at line {self.line}: missing {key}=")
            return default
        return int(self.options[key])

    def ints(self, key: str) -> list[int]:
        return [int(v) for v in self.options.get(key, "").split(",") if v.strip()]


def parse_cfg(text: str) -> list[Section]:
    """The sections of a Darknet cfg, in order (``[net]`` first)."""
    sections: list[Section] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise DarknetError(f"cfg line {n}: bad section header {raw!r}")
            sections.append(Section(line[1:-1].strip().lower(), line=n))
        elif "=" in line:
            if not sections:
                raise DarknetError(f"cfg line {n}: option before any section")
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise DarknetError(f"cfg line {n}: cannot read {raw!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise DarknetError("cfg: the first section must be [net]")
    return sections


def read_names(path: Path) -> dict[int, str]:
    names = [n.strip() for n in path.read_text().splitlines() if n.strip()]
    return dict(enumerate(names))


SUPPORTED = ("convolutional", "maxpool", "route", "shortcut", "upsample", "yolo")


def build(sections: list[Section]):
    """The torch module for a parsed cfg (weights not loaded)."""
    torch = import_torch()
    nn, F = torch.nn, torch.nn.functional

    class Conv(nn.Module):
        def __init__(self, cin: int, s: Section):
            super().__init__()
            filters, size = s.int("filters"), s.int("size", 1)
            stride, pad = s.int("stride", 1), s.int("pad", 0)
            padding = size // 2 if pad else s.int("padding", 0)
            self.bn = bool(s.int("batch_normalize", 0))
            self.conv = nn.Conv2d(cin, filters, size, stride, padding, bias=not self.bn)
            self.norm = nn.BatchNorm2d(filters, eps=1e-5) if self.bn else nn.Identity()
            self.activation = s.options.get("activation", "linear")
            if self.activation not in ("leaky", "linear", "relu", "mish", "swish", "logistic"):
                raise DarknetError(f"[convolutional] at line {s.line}: activation {self.activation!r}")

        def forward(self, x):
            x = self.norm(self.conv(x))
            a = self.activation
            if a == "leaky":
                return F.leaky_relu(x, 0.1)
            if a == "relu":
                return F.relu(x)
            if a == "mish":
                return F.mish(x)
            if a == "swish":
                return F.silu(x)
            if a == "logistic":
                return torch.sigmoid(x)
            return x

    class MaxPool(nn.Module):
        def __init__(self, s: Section):
            super().__init__()
            self.size, self.stride = s.int("size", 2), s.int("stride", 2)
            # Darknet pads size-1 on the right and bottom (ceil mode); a stride-1 pool keeps the size
            self.pad = s.int("padding", self.size - 1)

        def forward(self, x):
            if self.pad:
                x = F.pad(x, (0, self.pad, 0, self.pad), mode="replicate")
            return F.max_pool2d(x, self.size, self.stride)

    class Upsample(nn.Module):
        def __init__(self, s: Section):
            super().__init__()
            self.scale = s.int("stride", 2)

        def forward(self, x):
            return F.interpolate(x, scale_factor=float(self.scale), mode="nearest")

    class Yolo(nn.Module):
        """Decodes one head's raw map to [B, anchors, 4 + nc] (input pixels, scores)."""

        def __init__(self, s: Section, stride: int):
            super().__init__()
            anchors = np.asarray(s.ints("anchors"), dtype=np.float32).reshape(-1, 2)
            mask = s.ints("mask") or list(range(len(anchors)))
            self.nc = s.int("classes")
            self.na = len(mask)
            self.stride = stride
            self.scale_xy = float(s.options.get("scale_x_y", 1.0))
            self.register_buffer("anchors", torch.from_numpy(anchors[mask]))  # na x 2, input pixels

        def forward(self, x):
            b, _, h, w = x.shape
            x = x.view(b, self.na, 5 + self.nc, h, w).permute(0, 1, 3, 4, 2)
            gy = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1)
            gx = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w)
            k = self.scale_xy
            cx = ((torch.sigmoid(x[..., 0]) * k - (k - 1) / 2) + gx) * self.stride
            cy = ((torch.sigmoid(x[..., 1]) * k - (k - 1) / 2) + gy) * self.stride
            anchors = self.anchors.to(x.dtype).view(1, self.na, 1, 1, 2)
            bw = torch.exp(x[..., 2]) * anchors[..., 0]
            bh = torch.exp(x[..., 3]) * anchors[..., 1]
            scores = torch.sigmoid(x[..., 4:5]) * torch.sigmoid(x[..., 5:])
            out = torch.cat([cx[..., None], cy[..., None], bw[..., None], bh[..., None], scores], dim=-1)
            return out.reshape(b, -1, 4 + self.nc)

    class Darknet(nn.Module):
        def __init__(self, sections: list[Section]):
            super().__init__()
            net = sections[0]
            self.input_w = net.int("width", 416)
            self.input_h = net.int("height", 416)
            channels = [net.int("channels", 3)]  # channels[i + 1]: output of layer i
            strides = [1]
            layers, self.kinds, self.sources = [], [], []
            self.route_groups: list[tuple[int, int]] = []
            for i, s in enumerate(sections[1:]):
                cin, stride_in = channels[-1], strides[-1]
                src: list[int] = [i - 1]
                group = (1, 0)
                if s.kind == "convolutional":
                    m = Conv(cin, s)
                    cout, stride = m.conv.out_channels, stride_in * s.int("stride", 1)
                elif s.kind == "maxpool":
                    m = MaxPool(s)
                    cout, stride = cin, stride_in * m.stride
                elif s.kind == "upsample":
                    m = Upsample(s)
                    cout, stride = cin, max(stride_in // m.scale, 1)
                elif s.kind == "route":
                    src = [j if j >= 0 else i + j for j in s.ints("layers")]
                    groups, group_id = s.int("groups", 1), s.int("group_id", 0)
                    group = (groups, group_id)
                    m = nn.Identity()
                    cout = sum(channels[j + 1] for j in src) // groups
                    stride = strides[src[0] + 1]
                elif s.kind == "shortcut":
                    src = [i - 1, s.int("from") + i if s.int("from") < 0 else s.int("from")]
                    m = nn.Identity()
                    cout, stride = cin, stride_in
                elif s.kind == "yolo":
                    m = Yolo(s, stride_in)
                    cout, stride = cin, stride_in
                else:
                    raise DarknetError(
                        f"cfg line {s.line}: layer type [{s.kind}] is not supported (supported: "
                        f"{', '.join(SUPPORTED)})"
                    )
                layers.append(m)
                self.kinds.append(s.kind)
                self.sources.append(src)
                self.route_groups.append(group)
                channels.append(cout)
                strides.append(stride)
            self.layers = nn.ModuleList(layers)
            self.channels = channels[1:]
            heads = [i for i, k in enumerate(self.kinds) if k == "yolo"]
            if not heads:
                raise DarknetError("cfg: no [yolo] layer (framesift reads YOLO detection cfgs)")
            classes = {self.layers[i].nc for i in heads}
            if len(classes) != 1:
                raise DarknetError(f"cfg: the [yolo] layers disagree on classes ({sorted(classes)})")
            self.nc = classes.pop()
            self.heads = heads
            self.stride = max(self.layers[i].stride for i in heads)
            self.embedding_layer = _branch_point(self.kinds, self.sources)
            self.embedding_dim = self.channels[self.embedding_layer]
            self.keep = {j for src in self.sources for j in src if j >= 0} | {self.embedding_layer}

        def forward(self, x):
            """(raw [B, 4 + nc, anchors], feature map of the embedding layer)."""
            outputs: dict[int, object] = {}
            heads, feature = [], None
            for i, (m, kind, src) in enumerate(zip(self.layers, self.kinds, self.sources, strict=True)):
                if kind == "route":
                    groups, gid = self.route_groups[i]
                    parts = [outputs[j] if j != i - 1 else x for j in src]
                    if groups > 1:
                        parts = [p.chunk(groups, dim=1)[gid] for p in parts]
                    x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
                elif kind == "shortcut":
                    x = x + outputs[src[1]]
                elif kind == "yolo":
                    heads.append(m(x))
                else:
                    x = m(x)
                if i in self.keep:
                    outputs[i] = x
                if i == self.embedding_layer:
                    feature = x
            raw = torch.cat(heads, dim=1).transpose(1, 2)
            return raw, feature

    return Darknet(sections)


def _branch_point(kinds: list[str], sources: list[list[int]]) -> int:
    """The layer before the first head whose output a later route re-reads: the feature
    both heads share (YOLOv3-tiny's layer 13); else the layer before the first head."""
    first_head = kinds.index("yolo")
    routed = {j for i, src in enumerate(sources) if kinds[i] == "route" for j in src}
    shared = [j for j in routed if j < first_head and kinds[j] == "convolutional"]
    # the deepest shared convolution at the smallest resolution, feeding the first head
    candidates = [j for j in shared if j > first_head - 6]
    if candidates:
        return max(candidates)
    return first_head - 2


def load_weights(model, path: Path) -> None:
    """Darknet's weights layout: a header (major, minor, revision, images seen), then per
    convolution the batch-norm beta, gamma, mean, variance (or the conv bias), then the
    kernel. Raises DarknetError unless the file holds exactly what the cfg asks for."""
    torch = import_torch()
    data = path.read_bytes()
    if len(data) < 20:
        raise DarknetError(f"{path}: too short for a Darknet weights file ({len(data)} bytes)")
    major, minor, _revision = np.frombuffer(data[:12], dtype=np.int32)
    header = 20 if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000 else 16
    weights = np.frombuffer(data[header:], dtype=np.float32)
    at = 0

    def take(tensor) -> None:
        nonlocal at
        n = tensor.numel()
        if at + n > len(weights):
            raise DarknetError(
                f"{path}: ends after {at} floats but the cfg needs more: the weights do not belong to this cfg"
            )
        tensor.data.copy_(torch.from_numpy(weights[at : at + n].copy()).view_as(tensor))
        at += n

    for m, kind in zip(model.layers, model.kinds, strict=True):
        if kind != "convolutional":
            continue
        if m.bn:
            take(m.norm.bias)
            take(m.norm.weight)
            take(m.norm.running_mean)
            take(m.norm.running_var)
        else:
            take(m.conv.bias)
        take(m.conv.weight)
    if at != len(weights):
        raise DarknetError(
            f"{path}: {len(weights) - at} floats left over after the last layer: the weights do not "
            "belong to this cfg"
        )


def load(weights: Path, cfg: Path):
    """The Darknet model for ``cfg`` with ``weights`` loaded, in eval mode."""
    try:
        sections = parse_cfg(cfg.read_text())
    except UnicodeDecodeError:
        raise DarknetError(f"{cfg}: not a text cfg file") from None
    model = build(sections)
    load_weights(model, weights)
    return model.eval()
