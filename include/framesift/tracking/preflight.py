"""Before a run touches a video: is everything it needs there?

Each check returns :class:`Problem` s, one per thing to fix, naming the config key (or the
connection) and the fix. A run that has problems fails at once (``check_setup``, the
first task of the DAGs), before any video is claimed, so a missing bucket, model file or
connection costs no video an attempt; once it is fixed the next run goes through. The same
checks back ``framesift config``. A server that does not answer is not a problem of the
setup: those errors propagate, and the task's retries wait for it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from framesift.config.errors import classify, one_line
from framesift.config.schema import PipelineConfig
from framesift.inference.models import ModelError, resolve_model


@dataclass(frozen=True)
class Problem:
    key: str  # the config key or connection it concerns
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}. Fix: {self.fix}"


class SetupError(Exception):
    """The run cannot work until a person fixes these problems (never retried)."""

    permanent = True

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


def _code(exc: Exception) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))


def _endpoint(s3) -> str:
    return str(getattr(getattr(s3, "meta", None), "endpoint_url", "") or "AWS")


def check_storage(s3, cfg: PipelineConfig) -> list[Problem]:
    """The input and output buckets exist and the AWS connection may use them."""
    from botocore.exceptions import ClientError

    wanted = {"storage.bucket": cfg.storage.bucket}
    if cfg.storage.output_bucket and cfg.storage.output_bucket != cfg.storage.bucket:
        wanted["storage.output_bucket"] = cfg.storage.output_bucket
    problems = []
    for key, bucket in wanted.items():
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            code = _code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                problems.append(
                    Problem(
                        key, f"bucket {bucket!r} does not exist at {_endpoint(s3)}", f"create it or fix {key}"
                    )
                )
            elif code in ("403", "AccessDenied", "Forbidden"):
                problems.append(
                    Problem(
                        key,
                        f"the AWS connection may not read bucket {bucket!r}",
                        "give the connection's credentials access to it (or fix the connection)",
                    )
                )
            elif classify(exc).permanent:
                problems.append(Problem(key, f"bucket {bucket!r}: {one_line(exc)}", classify(exc).fix or ""))
            else:
                raise
    return problems


def check_model(s3, cfg: PipelineConfig) -> list[Problem]:
    """``inference.model_uri`` names a checkpoint that exists (an S3 object is only looked
    at, not downloaded; the bundled default must be installed)."""
    from botocore.exceptions import ClientError

    uri = cfg.inference.model_uri
    key = "inference.model_uri"
    try:
        if uri and str(uri).startswith("s3://"):
            bucket, _, obj = str(uri)[5:].partition("/")
            try:
                s3.head_object(Bucket=bucket, Key=obj)
            except ClientError as exc:
                if _code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                    return [Problem(key, f"no model at {uri}", f"upload the checkpoint there or fix {key}")]
                if classify(exc).permanent:
                    return [Problem(key, f"{uri}: {one_line(exc)}", "give the AWS connection read access")]
                raise
        else:
            resolve_model(uri, s3)
    except ModelError as exc:
        return [Problem(key, str(exc), f"fix {key} (book key: model_path_in_s3)")]
    return []


def model_classes(cfg: PipelineConfig, s3=None) -> dict[int, str]:
    """The class names of the configured model (loads it: torch, a few seconds)."""
    from framesift.inference.networks import load_network  # torch loads only when the classes are checked

    path = resolve_model(cfg.inference.model_uri, s3)
    return dict(load_network(path, cfg.inference.model_uri or str(path)).names)


def check_classes(cfg: PipelineConfig, names: Mapping[int, str]) -> list[Problem]:
    """Every ``important_classes`` entry is a class of the model (with the closest names)."""
    known = list(names.values())
    problems = []
    for c in cfg.important_classes:
        if c in known:
            continue
        close = difflib.get_close_matches(c, known, n=3)
        hint = (
            f"did you mean {', '.join(repr(x) for x in close)}?" if close else f"the model knows {known[:20]}"
        )
        problems.append(
            Problem(
                "important_classes", f"{c!r} is not a class of the model ({hint})", "fix important_classes"
            )
        )
    return problems


def check_trigger_keys(conf: Mapping[str, Any] | None, known: Iterable[str]) -> list[Problem]:
    """A manual run's conf keys are all params of the DAG's trigger form (a typo such as
    ``n_sample`` would otherwise be accepted and silently do nothing)."""
    known = list(known)
    problems = []
    for key in conf or {}:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"the form's fields: {', '.join(known)}"
        problems.append(
            Problem(f"trigger key {key!r}", f"unknown ({hint})", "trigger the run again without it")
        )
    return problems


def check_labeling(make_backend: Callable[[], Any], conn_id: str) -> list[Problem]:
    """The labeling connection exists and the platform accepts its credentials."""
    key = f"connection {conn_id!r}"
    try:
        backend = make_backend()
        check = getattr(backend, "check_access", None)
        if check is not None:
            check()
    except Exception as exc:
        kind = classify(exc)
        if not kind.permanent:
            raise
        return [Problem(key, one_line(exc), kind.fix or "fix the labeling connection")]
    return []


def check_mongo(db) -> list[Problem]:
    """Mongo answers and accepts the credentials (a server that is down is retried)."""
    try:
        db.command("ping")
    except Exception as exc:
        kind = classify(exc)
        if not kind.permanent:
            raise
        return [Problem("connections.mongo", one_line(exc), kind.fix or "fix the Mongo connection")]
    return []
