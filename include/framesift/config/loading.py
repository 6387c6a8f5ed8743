"""Loading the pipeline YAML into :class:`~framesift.config.schema.PipelineConfig`.

The book-style flat keys (``model_path_in_s3``, ``proportionSamples``, ...) are accepted
too and each is mapped, independently of the others, onto its place in the nested model.
Unknown keys and wrong types fail with a message naming the file and the key.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from framesift.config.schema import ConfigError, PipelineConfig

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "config" / "framesift.yaml"


# book-style flat key -> dotted path in the nested model
BOOK_KEYS: dict[str, str] = {
    "videos_folder_in_s3": "storage.videos_prefix",
    "s3_bucket_output": "storage.output_bucket",
    "model_path_in_s3": "inference.model_uri",
    "inference_confidence_threshold": "inference.confidence_threshold",
    "isSSLEnabled": "inference.embedding.ssl.enabled",
    "maxSSLepochs": "inference.embedding.ssl.max_epochs",
    "proportionSamples": "selection.proportion_samples",
    "balance": "selection.balance",
    "balance_strategy": "selection.balance_strategy",
}


def _map_book_keys(data: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Move each book-style key to its nested place; return the data and path->book key."""
    data = dict(data)
    origin: dict[str, str] = {}
    for book_key, dotted in BOOK_KEYS.items():
        if book_key not in data:
            continue
        value = data.pop(book_key)
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"{source}: {part}: expected a mapping, got {type(child).__name__}")
            node[part] = child = dict(child)
            node = child
        if leaf in node and node[leaf] != value:
            raise ConfigError(
                f"{source}: '{book_key}' ({value!r}) and '{dotted}' ({node[leaf]!r}) say different things; keep one"
            )
        node[leaf] = value
        origin[dotted] = book_key
    return data, origin


def _describe(err: dict[str, Any], origin: dict[str, str]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    key = f"{origin[loc]} (= {loc})" if loc in origin else loc
    if err["type"] == "extra_forbidden":
        section_model = _section_model(err["loc"][:-1])
        known = list(section_model.model_fields) if section_model else []
        close = difflib.get_close_matches(str(err["loc"][-1]), known + list(BOOK_KEYS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys here: {', '.join(known)}"
        return f"{key}: unknown key{hint}"
    got = "" if err["type"].endswith("_missing") else f" (got {err.get('input')!r})"
    return f"{key or '<top level>'}: {err['msg']}{got}"


def _section_model(path: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = PipelineConfig
    for part in path:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def parse_config(data: dict[str, Any] | None, source: str = "<config>") -> PipelineConfig:
    """Validate a config mapping; ``source`` names the file in error messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(data).__name__}")
    mapped, origin = _map_book_keys(data, source)
    try:
        return PipelineConfig.model_validate(mapped)
    except ValidationError as exc:
        problems = "; ".join(_describe(e, origin) for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> PipelineConfig:
    """Load the pipeline YAML (``FRAMESIFT_CONFIG`` or the packaged default).

    ``overrides`` is a nested mapping merged over the file, e.g. from DAG params.
    """
    path = Path(path or os.environ.get("FRAMESIFT_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if overrides:
        data = deep_merge(data or {}, overrides)
    return parse_config(data, str(path))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config_for_wiring(
    path: str | os.PathLike[str] | None = None,
) -> tuple[PipelineConfig, str | None]:
    """For DAG files: the config, or the defaults and the validation message when it does
    not load, so that a typo in the YAML never makes a DAG vanish from Airflow's list.
    The DAG shows the message and its first task (``check_setup``) fails with it."""
    try:
        return load_config(path), None
    except ConfigError as exc:
        return PipelineConfig(), str(exc)
