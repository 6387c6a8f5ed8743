"""What the selection stage feeds the engine: the batch's frames read back from S3 (names,
embeddings, predictions), grouped by embedding space, the SIMILARITY query sets from the
datapool, and the check that refuses what the config accepts but the pipeline cannot feed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pymongo.database import Database

from framesift.config.schema import PipelineConfig
from framesift.inference.predictions import load_video_outputs
from framesift.io.labels import frames_with_class
from framesift.io.s3 import get_json, parse_s3_uri
from framesift.selection.datapool import SELECTIONS, Datapool
from framesift.selection.inputs import DEFAULT_TASK, TIME_KEY, SelectionInputs
from framesift.selection.spec import InputType, SelectionSpec, StrategyType, strategy_error

# per-frame metadata extraction records in the manifest (``frame_metadata``), by the names
# METADATA strategies use; a frame without a value gets NaN (numbers) or its video (shot)
FRAME_METADATA = (
    "lightly.sharpness",
    "lightly.luminance",
    "lightly.contrast",
    "lightly.width",
    "lightly.height",
)
PIPELINE_METADATA = ("video", "frame_index", "shot", *(k.removeprefix("lightly.") for k in FRAME_METADATA))


def read_inputs(s3, cfg: PipelineConfig, docs: list[dict[str, Any]]) -> SelectionInputs:
    """The frames of the videos, one after the other; frame names are ``<video_id>/<name>``;
    with the per-frame metadata the extraction recorded (shots are ``<video_id>:<shot>``)
    and each frame's time in its video (``time_s``, NaN where unknown; for the report, not
    a METADATA key), all from one read of each video's manifest."""
    ids, videos, embs, preds = [], [], [], []
    metadata: dict[str, list] = {k: [] for k in ("shot", *FRAME_METADATA)}
    recorded: set[str] = set()  # the keys some video's extraction recorded
    frame_times: list[float] = []
    schema: dict[str, Any] = {}
    for doc in docs:
        v_names, v_ids, emb, v_preds, schema = load_video_outputs(s3, cfg, doc)
        ids += v_ids
        videos += [doc["key"]] * len(v_names)
        embs.append(emb)
        preds += v_preds
        manifest = _manifest(s3, doc)
        per_frame = manifest.get("frame_metadata") or {}
        times = dict(
            zip(manifest.get("frame_names") or [], manifest.get("frame_timestamps_s") or [], strict=False)
        )
        frame_times += [float(times.get(name, np.nan)) for name in v_names]
        for m in per_frame.values():
            recorded.update(f"lightly.{k}" if f"lightly.{k}" in FRAME_METADATA else k for k in m)
        for name in v_names:
            m = per_frame.get(name) or {}
            metadata["shot"].append(f"{doc['_id']}:{m.get('shot', 0)}")
            for key in FRAME_METADATA:
                value = m.get(key.removeprefix("lightly."))
                metadata[key].append(np.nan if value is None else float(value))
    return SelectionInputs(
        frame_names=ids,
        embeddings=np.concatenate(embs).astype(np.float32, copy=False) if ids else None,
        video_keys=videos,
        predictions=preds,
        categories=schema.get("categories"),
        task_name=docs[0]["inference"]["task_name"] if docs else DEFAULT_TASK,
        metadata={
            **{
                k: np.asarray(v, dtype=object if k == "shot" else np.float64)
                for k, v in metadata.items()
                if k in recorded
            },
            TIME_KEY: np.asarray(frame_times, dtype=np.float64),
        },
    )


def _manifest(s3, doc: dict[str, Any]) -> dict[str, Any]:
    """The video's extraction manifest ({} when it has none)."""
    if not doc.get("manifest_uri"):
        return {}
    return get_json(s3, *parse_s3_uri(doc["manifest_uri"]))


def space_of(doc: dict[str, Any]) -> str | None:
    """The embedding space a video's embeddings live in (None: written before ids)."""
    return (doc.get("inference") or {}).get("embedding_model_id")


def by_space(docs: list[dict[str, Any]]) -> list[tuple[str | None, list[dict[str, Any]]]]:
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for doc in docs:
        groups.setdefault(space_of(doc), []).append(doc)
    return list(groups.items())


def split_budget(budget: int, sizes: list[int]) -> list[int]:
    """``budget`` split in proportion to ``sizes`` (largest remainders), none over its size."""
    total = sum(sizes)
    if not total:
        return [0] * len(sizes)
    shares = [budget * s / total for s in sizes]
    out = [min(int(sh), s) for sh, s in zip(shares, sizes, strict=True)]
    for i in sorted(range(len(sizes)), key=lambda i: out[i] - shares[i]):
        if sum(out) >= budget:
            break
        if out[i] < sizes[i]:
            out[i] += 1
    return out


def check_supported(spec: SelectionSpec) -> None:
    """Refuse, before anything is claimed, what the config accepts but the pipeline cannot
    feed: Lightly cloud datasets as SIMILARITY query sets, metadata nobody computes."""
    for i, e in enumerate(spec.strategies):
        if e.strategy.type is StrategyType.SIMILARITY and e.input.dataset_id is not None:
            raise strategy_error(
                i,
                "input",
                "dataset_id",
                "names a Lightly cloud dataset, which framesift cannot read; query sets are tag_name "
                "'class:<name>' (labeled frames of a class), tag_name '<selection tag>' (e.g. 'drift'), "
                "query_frames or query_embeddings",
            )
        if (
            e.input.type is InputType.METADATA
            and e.input.key.removeprefix("lightly.") not in PIPELINE_METADATA
        ):
            raise strategy_error(
                i,
                "input",
                "key",
                f"no metadata {e.input.key!r} in the pipeline; it has {', '.join(PIPELINE_METADATA)}",
            )


def query_sets(db: Database, spec: SelectionSpec, pool: Datapool) -> dict[str, np.ndarray]:
    """SIMILARITY query sets named by ``tag_name``, from this space's datapool: ``class:<name>``
    the labeled frames with a box of that class, any other tag the frames of selections so
    tagged (e.g. ``drift``)."""
    sets: dict[str, np.ndarray] = {}
    for i, e in enumerate(spec.strategies):
        tag = e.input.tag_name
        if e.strategy.type is not StrategyType.SIMILARITY or tag is None:
            continue
        if tag.startswith("class:"):
            wanted = set(frames_with_class(db, tag.removeprefix("class:")))
            what = f"labeled frame with class {tag.removeprefix('class:')!r}"
        else:
            wanted = {
                f for d in db[SELECTIONS].find({"tags": tag}, {"selected": 1}) for f in d.get("selected", [])
            }
            what = f"frame of a selection tagged {tag!r}"
        rows = [r for r, f in enumerate(pool.space_ids or []) if f in wanted]
        if not rows:
            raise strategy_error(
                i, "input", "tag_name", f"no query frames: no {what} in this embedding space yet"
            )
        sets[tag] = pool.embeddings[rows]
    return sets
