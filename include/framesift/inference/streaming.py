"""Inference over one video's frames, streamed: frames from S3 through a bounded
prefetch queue into batches, Lightly-format predictions and the embeddings out
(:mod:`framesift.inference.predictions`). Memory stays flat in the number of frames.
"""

from __future__ import annotations

import collections
import itertools
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from framesift.config.schema import PipelineConfig
from framesift.inference import predictions
from framesift.inference.backends import cpu_threads
from framesift.inference.cascade import CascadeGate
from framesift.inference.detector import Detector
from framesift.inference.embedders import SSL_BATCH_SIZE, Embedder, SimCLREmbedder, make_embedder
from framesift.inference.models import PathLike, model_version
from framesift.io import layout
from framesift.io.s3 import get_bytes, join_key, parse_s3_uri, s3_uri, upload
from framesift.io.summaries import detections_line

_LOG = logging.getLogger("framesift.inference")


PROGRESS_EVERY_S = 5.0


_READ_WORKERS = 8


_WRITE_WORKERS = 8


_MAX_FAILED_LISTED = 100


class FrameError(Exception):
    """One frame cannot be read or decoded: it is skipped, counted and recorded."""


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
    frames: Iterable[tuple[str, np.ndarray | None, BaseException | None]] | None = None,
    expected_frames: int | None = None,
) -> dict[str, Any]:
    """Predict every frame of ``manifest`` and write Lightly predictions + embeddings.

    ``frames``: ``(name, BGR image, error)`` in time order, instead of reading the manifest's
    frames back from S3 (the overlap with extraction, :mod:`framesift.inference.overlap`);
    ``manifest`` then needs only ``video_id``, ``source`` and ``frames_prefix``, and
    ``expected_frames`` sizes the progress lines.

    Frames are read from the manifest's ``frames_prefix`` by a reader pool at most
    ``inference.prefetch`` frames ahead, batched by ``inference.batch_size``; boxes and
    embeddings come from one forward pass per batch (embedding model "detector").
    Undecodable or missing frames are skipped and listed in the summary. With
    ``inference.cascade`` on, a cheap embedding of each frame decides whether the detector
    sees it (:mod:`framesift.inference.cascade`); the frames it skips get no prediction and
    no embedding row, and are counted (``frames_cascade_skipped``). Re-running
    writes the same keys and removes prediction files of frames no longer listed.
    Returns a summary dict (plain JSON types).
    """
    log = log or _LOG
    started = time.monotonic()
    inf = cfg.inference
    vid = manifest["video_id"]
    names: list[str] = list(manifest.get("frame_names") or [])
    stem = layout.safe_stem(manifest.get("source", {}).get("key", "") or vid)
    # frames decoded from damaged references stay out of inference (and so of selection)
    # unless the extraction said to include them (extraction.damaged_frames)
    damaged = set(manifest.get("damaged_frames") or [])
    if damaged and (manifest.get("sampling") or {}).get("damaged_frames", "exclude") == "exclude":
        names = [n for n in names if n not in damaged]
        log.info(
            "infer %s: %d damaged frame(s) left out (extraction.damaged_frames: exclude)", stem, len(damaged)
        )
    else:
        damaged = set()
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
        predictions.write_prediction(s3, cfg, vid, task, record)

    counts: collections.Counter[str] = collections.Counter()
    failed: list[dict[str, str]] = []
    n_failed = 0
    done_names: list[str] = []
    n_boxes = 0
    total = len(names) if frames is None else int(expected_frames or 0)
    batch_size = inf.batch_size
    threads = f" ({cpu_threads()} threads)" if str(detector.device) == "cpu" else ""
    log.info(
        "infer %s: %d frames, model %s on %s%s%s (runtime %s), batch %d, imgsz %d, embeddings %s%s",
        stem,
        total,
        detector.model_uri,
        detector.device,
        threads,
        " (fp16)" if detector.half else "",
        getattr(detector, "runtime_name", "torch"),
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
    cascade = inf.cascade
    gate = CascadeGate(cascade.min_distance, cascade.max_skip_frames) if cascade.enabled else None
    if gate is not None:
        log.info(
            "infer %s: cascade on: the detector runs on a frame farther than %.3f (cheap embedding) from "
            "every frame it ran on%s",
            stem,
            cascade.min_distance,
            f", at least once every {cascade.max_skip_frames + 1} frames" if cascade.max_skip_frames else "",
        )
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
        progress.update(len(done_names), n_failed, None if gate is None else gate.skipped)

    source = prefetch_map(fetch, names, prefetch=inf.prefetch) if frames is None else frames
    ok = False
    try:
        for name, image, error in source:
            if error is not None:
                if not isinstance(error, FrameError):
                    raise error
                n_failed += 1
                if len(failed) < _MAX_FAILED_LISTED:
                    failed.append({"name": name, "reason": str(error)})
                log.warning("infer %s: frame %s skipped: %s", stem, name, error)
                continue
            if gate is not None and not gate.admit(image):
                progress.update(len(done_names), n_failed, gate.skipped)
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
        predictions.write_schema(s3, cfg, vid, task, schema)
        stale = predictions.remove_stale_predictions(s3, cfg, vid, task, done_names)
        if stale:
            log.info("infer %s: removed %d stale prediction files", stem, stale)
        predictions.write_tasks(s3, cfg, vid, task)

        emb_dim = detector.embedding_dim if same_pass else getattr(embedder, "embedding_dim", 0)
        embeddings = rows.finish(emb_dim)
        model_id = getattr(embedder, "embedding_model_id", None)
        uris = {emb_name: _upload_npz(s3, cfg, vid, emb_name, done_names, embeddings, tmp, model_id)}
        model_ids = {emb_name: model_id}
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
            model_ids[primary] = ssl_embedder.embedding_model_id
            uris[primary] = _upload_npz(s3, cfg, vid, primary, done_names, ssl_emb, tmp, model_ids[primary])
            ssl_emb = train = None
        embeddings = thumbs = None  # release the memmaps before the folder goes
    finally:
        workdir.cleanup()

    elapsed = time.monotonic() - started
    done = len(done_names)
    skipped = None if gate is None else gate.skipped  # None: the cascade is off
    if frames is not None:
        total = done + n_failed + (skipped or 0)  # streamed: what came
    summary = {
        "video_id": vid,
        "status": "done" if total else "no_frames",
        "task_name": task,
        "model_uri": detector.model_uri,
        "model_version": model_version(
            detector.model_uri, getattr(getattr(detector, "network", None), "weights_sha256", None)
        ),
        "device": str(detector.device),
        "half": detector.half,
        "frames_total": total,
        "frames": done,
        "frames_failed": n_failed,
        "frames_cascade_skipped": skipped,
        "frames_damaged_excluded": len(damaged),
        "failed_frames": failed,
        "boxes": n_boxes,
        "counts": {detector.names[i]: counts.get(detector.names[i], 0) for i in detector.class_ids},
        "fps": round(done / elapsed, 3) if elapsed > 0 else 0.0,
        "elapsed_s": round(elapsed, 3),
        "embedding_model": primary,
        "embedding_model_id": model_ids[primary],
        "embedding_model_ids": model_ids,
        "embeddings_uri": uris[primary],
        "embeddings_uris": uris,
        "runtime": getattr(detector, "runtime_name", "torch"),
        "imgsz": detector.imgsz,
        "predictions_prefix": s3_uri(out_bucket, predictions.task_prefix(cfg, vid, task) + "/"),
        "datasource_root": s3_uri(out_bucket, predictions.datasource_root(cfg, vid) + "/"),
        "batch_size": detector.max_batch or batch_size,
    }
    if ssl_embedder is not None:
        summary["ssl"] = {"epochs": ssl.max_epochs, "backbone": ssl_embedder.kind, "losses": ssl_losses}
    log.info(
        "infer %s: done, %d/%d frames (%d failed%s), %s in %.1f s (%.1f frames/s)",
        stem,
        done,
        total,
        n_failed,
        f", {skipped} skipped by the cascade" if gate is not None else "",
        detections_line(dict(counts), n_boxes),
        elapsed,
        summary["fps"],
    )
    return summary


def _device_of(detector: Detector):
    return getattr(detector, "device", "cpu")


def _upload_npz(s3, cfg, vid, model, names, embeddings, tmp: Path, model_id: str | None) -> str:
    path = tmp / f"{model}.npz"
    predictions.save_embeddings_npz(path, names, embeddings, model_id)
    uri = predictions.embeddings_uri(cfg, vid, model)
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

    def update(self, done: int, failed: int, skipped: int | None = None) -> None:
        """``skipped``: frames the cascade kept from the detector (None: the cascade is off)."""
        now = time.monotonic()
        if now < self.next_log:
            return
        self.next_log = now + PROGRESS_EVERY_S
        elapsed = now - self.started
        seen = done + failed + (skipped or 0)
        speed = seen / elapsed if elapsed > 0 else 0.0
        cascade = f", {skipped} skipped by the cascade" if skipped is not None else ""
        if not self.total:  # frames streamed from the extraction: the total is not known yet
            self.log.info(
                "infer %s: %d frames so far (streamed from extraction), %d failed%s, %.1f frames/s",
                self.stem,
                seen,
                failed,
                cascade,
                speed,
            )
            return
        left = (self.total - seen) / speed if speed > 0 else float("nan")
        self.log.info(
            "infer %s: %d/%d frames (%d%%), %d failed%s, %.1f frames/s, ETA %.0f s",
            self.stem,
            seen,
            self.total,
            100 * seen // max(self.total, 1),
            failed,
            cascade,
            speed,
            left,
        )
