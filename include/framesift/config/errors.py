"""Which failures a retry can fix: *permanent* ones (a missing model file, bucket or
connection, refused credentials, a bad config) fail at once with the fix named; *transient*
ones (a server down, a timeout, a throttled request) are retried with backoff.

Plain Python over exception types and attributes, so every layer can classify an error
without importing the layer that raised it: an exception that says ``retryable = False``
(the labeling errors) or ``permanent = True`` is permanent, one that says ``retryable =
True`` transient; then known types by name (anywhere in their class hierarchy) and the
error codes of botocore's ``ClientError`` and pymongo's ``OperationFailure``. Anything
else is transient: an unknown error is retried rather than given up on.
"""

from __future__ import annotations

from dataclasses import dataclass

PERMANENT = "permanent"
TRANSIENT = "transient"

# type name -> what to do about it (the error's own message names the details)
PERMANENT_TYPES: dict[str, str] = {
    "ConfigError": "fix the pipeline config (check it with `framesift config`)",
    "ModelError": "fix inference.model_uri or the checkpoint it names",
    "BadCredentials": "fix the labeling connection's credentials",
    "FrameMissing": "the frames are gone from S3: requeue the video after re-extracting it",
    "BackendError": "the labeling platform refused the request; see the message",
    "AirflowNotFoundException": "create the Airflow connection the message names",
    "NoCredentialsError": "give the AWS connection credentials",
    "PartialCredentialsError": "give the AWS connection both the key id and the secret",
    "InvalidURI": "fix the s3:// URI in the config",
    "ParamValidationError": "fix the bucket or key in the config",
}
# botocore ClientError codes that no retry fixes
S3_PERMANENT_CODES: dict[str, str] = {
    "NoSuchBucket": "the bucket does not exist: fix storage.bucket / storage.output_bucket or create it",
    "AccessDenied": "the AWS connection may not do this: fix its credentials or the bucket policy",
    "InvalidAccessKeyId": "the AWS connection's key id is unknown: fix the connection",
    "SignatureDoesNotMatch": "the AWS connection's secret is wrong: fix the connection",
    "InvalidBucketName": "fix storage.bucket / storage.output_bucket",
    "403": "the AWS connection may not do this: fix its credentials or the bucket policy",
}
# pymongo OperationFailure codes: 13 unauthorized, 18 authentication failed
MONGO_PERMANENT_CODES: dict[int, str] = {
    13: "the Mongo connection's user may not do this: fix its roles",
    18: "the Mongo connection's credentials are wrong: fix the connection",
}


@dataclass(frozen=True)
class Classified:
    kind: str  # PERMANENT or TRANSIENT
    fix: str | None  # what to do, for a permanent error

    @property
    def permanent(self) -> bool:
        return self.kind == PERMANENT


def _names(exc: BaseException) -> list[str]:
    return [cls.__name__ for cls in type(exc).__mro__]


def classify(exc: BaseException) -> Classified:
    """Permanent (with the fix) or transient; see the module docstring for the rules."""
    if getattr(exc, "permanent", None) is True:
        return Classified(PERMANENT, getattr(exc, "fix", None))
    retryable = getattr(exc, "retryable", None)
    if retryable is True:
        return Classified(TRANSIENT, None)
    names = _names(exc)
    for name in names:
        if name in PERMANENT_TYPES:
            return Classified(PERMANENT, PERMANENT_TYPES[name])
    if retryable is False:
        return Classified(PERMANENT, None)
    if "ClientError" in names:
        code = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))
        if code in S3_PERMANENT_CODES:
            return Classified(PERMANENT, S3_PERMANENT_CODES[code])
    if "OperationFailure" in names and getattr(exc, "code", None) in MONGO_PERMANENT_CODES:
        return Classified(PERMANENT, MONGO_PERMANENT_CODES[exc.code])
    return Classified(TRANSIENT, None)


def one_line(exc: BaseException, limit: int = 400) -> str:
    """``Type: first line of the message``, cut at ``limit`` characters (for records and logs)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
