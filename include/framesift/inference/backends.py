"""What a :class:`~framesift.inference.networks.Network` runs on: ``inference.runtime``.

- ``torch``: the module itself (channels-last; fp16 on CUDA);
- ``onnxruntime``: the module exported to ONNX (both outputs in the graph), run by ONNX
  Runtime's CPU provider (CUDA provider when onnxruntime-gpu is installed and asked for);
- ``openvino``: the same ONNX file converted to OpenVINO IR, run by OpenVINO's CPU plugin
  in streams (a batch split across them, :class:`OpenVinoRuntime`);
- ``auto``: CUDA present -> torch (fp16); else the fastest of the installed runtimes as
  measured on this machine for this model and input size (a few timed batches once, the
  result kept beside the exports; see :func:`pick_auto`).

Exports are cached in the model store (``FRAMESIFT_MODEL_CACHE`` or ``$FRAMESIFT_VAR_DIR/models``)
under ``exports/<weights sha256[:16]>-<format>/``, so a model is exported once per content
and a changed file gets a new export. Exports are written to a temporary name and renamed:
concurrent workers never read a half-written file. Every runtime returns numpy arrays
``(raw [B, 4 + nc, anchors], embedding [B, D])``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from framesift.inference.models import InferenceError, PathLike, default_cache_dir
from framesift.inference.networks import Network, prepare_for_export, restore_after_export
from framesift.inference.runtimes import CPU_FORWARD_BATCH, import_torch
from framesift.io.machine import usable_cpus

_LOG = logging.getLogger("framesift.inference")

RUNTIMES = ("torch", "onnxruntime", "openvino")

ONNX_OPSET = 17

# the timing auto does once per model, input size and machine: batches of this many images
_AUTO_BATCH = 4
_AUTO_REPEATS = 3
# part of the record's key: a pick timed before a runtime changed how it runs is timed again
# (2: OpenVINO in streams)
_AUTO_SCHEME = "v2"


def cpu_threads() -> int:
    """Threads every runtime uses: ``FRAMESIFT_INFERENCE_THREADS``, else the CPUs this
    process may run on. Not torch's current setting: importing or running ultralytics
    drops that to cpu_count - 1 (1 on a 2-core machine)."""
    env = os.environ.get("FRAMESIFT_INFERENCE_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return usable_cpus()


def is_installed(runtime: str) -> bool:
    if runtime == "torch":
        return True
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino"}[runtime]
    import importlib.util

    return importlib.util.find_spec(module) is not None


class TorchRuntime:
    name = "torch"

    def __init__(self, network: Network, device, half: bool):
        torch = import_torch()
        self.device, self.half = device, half
        self.threads = cpu_threads()
        module = network.module.to(device)
        if half:
            module = module.half()
        # channels-last convolutions: faster on CPU (oneDNN) and what tensor cores prefer
        self.module = module.to(memory_format=torch.channels_last)

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = import_torch()
        if self.device.type == "cpu" and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)  # someone (ultralytics) lowered it
        t = torch.from_numpy(x).to(self.device)
        t = t.half() if self.half else t
        t = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            raw, emb = self.module(t)
        return raw.float().cpu().numpy(), emb.float().cpu().numpy()


def export_dir(network: Network, fmt: str, cache_dir: PathLike | None = None) -> Path:
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / "exports" / f"{network.weights_sha256[:16]}-{fmt}"


def export_onnx(network: Network, cache_dir: PathLike | None = None, log=None) -> Path:
    """The network as ONNX (inputs ``images`` [B, 3, H, W]; outputs ``raw``, ``embedding``),
    exported once per weights content."""
    log = log or _LOG
    target = export_dir(network, "onnx", cache_dir) / "model.onnx"
    if target.is_file():
        return target
    torch = import_torch()
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".model.{os.getpid()}-{uuid.uuid4().hex[:8]}.onnx")
    started = time.monotonic()
    module = network.module.float().cpu()
    prepare_for_export(network)
    try:
        x = torch.zeros(1, 3, network.stride * 8, network.stride * 8)
        with torch.inference_mode():
            torch.onnx.export(
                module,
                (x,),
                str(part),
                dynamo=False,
                input_names=["images"],
                output_names=["raw", "embedding"],
                dynamic_axes={
                    "images": {0: "batch", 2: "height", 3: "width"},
                    "raw": {0: "batch", 2: "anchors"},
                    "embedding": {0: "batch"},
                },  # fmt: skip
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
            )
        os.replace(part, target)
    except Exception as exc:
        raise InferenceError(f"ONNX export of {network.path} failed ({type(exc).__name__}: {exc})") from None
    finally:
        restore_after_export(network)
        part.unlink(missing_ok=True)
    log.info("exported %s to ONNX in %.1f s: %s", network.path.name, time.monotonic() - started, target)
    return target


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, network: Network, device, cache_dir=None, log=None):
        import onnxruntime as ort

        path = export_onnx(network, cache_dir, log)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cpu_threads()
        opts.inter_op_num_threads = 1
        # idle threads sleep instead of spinning: just as fast alone, and while frames
        # decode and encode beside inference (inference.overlap) spinning took ~20 CPU
        # seconds of a 10-minute video's ~130 from them
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if (
            getattr(device, "type", "cpu") == "cuda"
            and "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), opts, providers=providers)

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw, emb = self.session.run(
            ["raw", "embedding"], {"images": np.ascontiguousarray(x, dtype=np.float32)}
        )
        return raw, emb


def export_openvino(network: Network, cache_dir: PathLike | None = None, log=None) -> Path:
    """The network as OpenVINO IR (from the ONNX export), converted once per weights content."""
    log = log or _LOG
    target = export_dir(network, "openvino", cache_dir) / "model.xml"
    if target.is_file() and target.with_suffix(".bin").is_file():
        return target
    import openvino as ov

    onnx_path = export_onnx(network, cache_dir, log)
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    part = target.with_name(f".model.{tag}.xml")
    try:
        ov.save_model(ov.convert_model(str(onnx_path)), str(part), compress_to_fp16=False)
        os.replace(part.with_suffix(".bin"), target.with_suffix(".bin"))
        os.replace(part, target)
    except Exception as exc:
        raise InferenceError(
            f"OpenVINO conversion of {network.path} failed ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        part.unlink(missing_ok=True)
        part.with_suffix(".bin").unlink(missing_ok=True)
    log.info("converted %s to OpenVINO in %.1f s: %s", network.path.name, time.monotonic() - started, target)
    return target


class OpenVinoRuntime:
    """OpenVINO on the CPU, float32 (CPUs with AVX-512 BF16 default to bfloat16, ~1.7x
    faster there but the embeddings drift to cosine 0.9998 and boxes move: not the same
    outputs), the same thread count as torch, split into streams: a batch is cut into up
    to ``streams`` parts run at the same time, each on its own stream and threads (one
    core each on 2 cores), so the cores do not wait for each other inside every layer.
    Measured on 2 shared cores against one stream of 2 threads (LATENCY) on the same
    inputs, the same outputs: 8-14 % less CPU per frame and a far better median when
    other work takes a core (docs/limitations.md). One image runs on one stream."""

    name = "openvino"

    def __init__(self, network: Network, device, cache_dir=None, log=None):
        import openvino as ov

        threads = cpu_threads()
        # no more streams than images in a CPU batch (more would idle); threads shared among them
        self.streams = max(1, min(threads, CPU_FORWARD_BATCH))
        self.core = ov.Core()
        self.model = self.core.read_model(str(export_openvino(network, cache_dir, log)))
        self.config = {
            "PERFORMANCE_HINT": "THROUGHPUT",
            "NUM_STREAMS": self.streams,
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.compiled = self.core.compile_model(self.model, "CPU", self.config)
        self.requests = [self.compiled.create_infer_request() for _ in range(self.streams)]

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        parts = np.array_split(x, min(self.streams, max(len(x), 1)))
        requests = self.requests[: len(parts)]
        for request, part in zip(requests, parts, strict=True):
            request.start_async({0: part})
        raw, emb = [], []
        for request in requests:
            request.wait()
            raw.append(request.get_output_tensor(0).data.copy())
            emb.append(request.get_output_tensor(1).data.copy())
        return np.concatenate(raw), np.concatenate(emb)


def make_runtime(
    name: str, network: Network, device, half: bool, *, cache_dir: PathLike | None = None, imgsz: int = 640,
    log: logging.Logger | None = None,
):  # fmt: skip
    """The runtime ``name`` (one of RUNTIMES or "auto") for ``network`` on ``device``."""
    log = log or _LOG
    if name == "auto":
        name = pick_auto(network, device, half, cache_dir=cache_dir, imgsz=imgsz, log=log)
    if name == "torch":
        return TorchRuntime(network, device, half)
    if name not in RUNTIMES:
        raise InferenceError(f"inference.runtime {name!r}: use one of auto, {', '.join(RUNTIMES)}")
    if not is_installed(name):
        raise InferenceError(f"inference.runtime is {name!r} but the {name} package is not installed")
    if half:
        log.warning("inference.half is for the torch runtime; %s runs in float32", name)
    if name == "onnxruntime":
        return OnnxRuntime(network, device, cache_dir, log)
    return OpenVinoRuntime(network, device, cache_dir, log)


def pick_auto(
    network: Network, device, half: bool, *, cache_dir: PathLike | None = None, imgsz: int = 640, log=None
) -> str:
    """CUDA: torch. CPU: the runtime that ran fastest here, timed once per (weights, input
    size, threads, CPU) on batches of a letterboxed 16:9 input, the runtimes in turns (best
    of the repeats); the timings are kept in ``exports/<hash>-auto.json`` and reused."""
    log = log or _LOG
    if getattr(device, "type", "cpu") == "cuda":
        return "torch"
    threads = cpu_threads()
    machine = f"{platform.machine()}-{_cpu_model()}-{threads}t"
    record_path = export_dir(network, "auto", cache_dir).with_suffix(".json")
    key = f"{imgsz}|{machine}|{_AUTO_SCHEME}"
    try:
        records = json.loads(record_path.read_text())
    except (OSError, ValueError):
        records = {}
    if key in records and records[key].get("best") in RUNTIMES and is_installed(records[key]["best"]):
        return records[key]["best"]
    stride = network.stride
    w = int(np.ceil(imgsz / stride) * stride)
    h = int(np.ceil(imgsz * 9 / 16 / stride) * stride)
    x = np.random.default_rng(0).random((_AUTO_BATCH, 3, h, w), dtype=np.float32)
    runtimes: dict[str, Any] = {}
    for name in RUNTIMES:
        if not is_installed(name):
            continue
        try:
            runtimes[name] = make_runtime(
                name, network, device, False, cache_dir=cache_dir, imgsz=imgsz, log=log
            )
            runtimes[name].run(x)  # warm-up (compilation, allocations)
        except Exception as exc:  # noqa: BLE001 - a runtime that fails here is not picked
            log.warning("runtime auto: %s failed its timing run (%s); not using it", name, exc)
            runtimes.pop(name, None)
    # in turns, best of the repeats: a burst of load from other work hits every runtime alike
    timings = {name: float("inf") for name in runtimes}
    for _ in range(_AUTO_REPEATS):
        for name, rt in runtimes.items():
            started = time.perf_counter()
            rt.run(x)
            timings[name] = min(timings[name], time.perf_counter() - started)
    runtimes.clear()
    if not timings:
        return "torch"
    best = min(timings, key=timings.get)
    log.info(
        "runtime auto: %s (seconds per batch of %d at %dx%d, %d threads: %s)",
        best,
        _AUTO_BATCH,
        w,
        h,
        threads,
        ", ".join(f"{k} {v:.3f}" for k, v in sorted(timings.items(), key=lambda kv: kv[1])),
    )
    records[key] = {"best": best, "seconds_per_batch": timings, "batch": _AUTO_BATCH, "input": [h, w]}
    record_path.parent.mkdir(parents=True, exist_ok=True)
    part = record_path.with_name(f".{record_path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    part.write_text(json.dumps(records, indent=1))
    os.replace(part, record_path)
    return best


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip().replace(" ", "_")[:60]
    except OSError:
        pass
    return platform.processor() or "cpu"


def describe(runtime: Any) -> str:
    return getattr(runtime, "name", type(runtime).__name__)
