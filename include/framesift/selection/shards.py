"""Distributed greedy: each shard selects ``ceil(oversample * k)`` winners, a second
greedy pass over the union of the winners selects ``k``.

BALANCE with distribution INPUT uses the class totals of all shards, not of the winners.
Static objectives are re-normalised over the union in the merge (min-max over fewer
frames), and ``object_frequency``'s rescaling is per shard: merged picks can differ
slightly from a single-machine run's. On clustered data the merged coverage is within 2 %
of the single-machine one (tests check 10 %). Shards travel between workers as ``.npz``
(no pickle).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from framesift.selection import scores as scoring
from framesift.selection.diversity import DUPLICATE_DISTANCE
from framesift.selection.engine import REFRESH_EVERY, SelectionRun
from framesift.selection.inputs import SelectionInputs
from framesift.selection.result import SelectionResult
from framesift.selection.spec import SelectionSpec


@dataclass
class ShardResult:
    """One shard's winners, ready to be merged (``winners`` holds their per-frame data)."""

    shard_id: str
    winners: SelectionInputs
    winner_index: np.ndarray  # positions of the winners in the shard's inputs
    result: SelectionResult
    input_totals: dict[int, dict[str, float]]  # per BALANCE strategy: {class: total} of the shard


def select_shard(
    inputs: SelectionInputs,
    spec: SelectionSpec,
    *,
    total_frames: int | None = None,
    oversample: float = 1.0,
    shard_id: str = "0",
    datapool_embeddings: np.ndarray | None = None,
    datapool_ids: Iterable[str] | None = None,
    refresh_every: int = REFRESH_EVERY,
) -> ShardResult:
    """Greedy selection on one shard with budget ``k' = ceil(oversample * k)``.

    ``k`` is the whole selection's budget: ``spec.budget(total_frames)`` (all shards'
    frames together; default this shard's size). The shard keeps at most its own size.
    """
    total = inputs.n if total_frames is None else total_frames
    k = spec.budget(total)
    k_shard = min(inputs.n, int(math.ceil(max(1.0, oversample) * k)))
    run = SelectionRun(
        inputs,
        spec,
        budget=k_shard,
        datapool_embeddings=datapool_embeddings,
        datapool_ids=datapool_ids,
        sequence_length=1,
        duplicate_distance=DUPLICATE_DISTANCE,
        refresh_every=refresh_every,
        input_totals=None,
        check_budget=False,
    )
    result = run.run()
    totals = {
        b.index: dict(zip(map(str, b.classes), b.input_totals.tolist(), strict=True)) for b in run.balances
    }
    return ShardResult(
        shard_id=shard_id,
        winners=inputs.subset(result.selected),
        winner_index=result.selected.copy(),
        result=result,
        input_totals=totals,
    )


_RESULT_ARRAYS = ("selected", "anchor", "objective_values", "raw_values")


_FLAT_ARRAYS = ("frame", "category", "score", "probabilities", "has_probs", "bbox")


def shard_to_bytes(shard: ShardResult) -> bytes:
    """A shard's winners and result as one ``.npz`` (no pickle), to pass between workers."""

    w, r = shard.winners, shard.result
    arrays: dict[str, np.ndarray] = {
        "frame_names": np.array(w.frame_names, dtype=str),
        "video_keys": np.array(w.video_keys, dtype=str),
        "frame_indices": np.asarray(w.frame_indices, dtype=np.int64),
        "winner_index": np.asarray(shard.winner_index, dtype=np.int64),
    }
    if w.embeddings is not None:
        arrays["embeddings"] = w.embeddings
    if w.corrupt is not None:
        arrays["corrupt"] = w.corrupt
    for name in _RESULT_ARRAYS:
        arrays[f"result.{name}"] = np.asarray(getattr(r, name))
    flat = w.flat_predictions
    if flat is not None:
        for name in _FLAT_ARRAYS:
            if getattr(flat, name) is not None:
                arrays[f"flat.{name}"] = np.asarray(getattr(flat, name))
    for group in ("scores", "metadata"):
        for key, values in (getattr(w, group) or {}).items():
            values = np.asarray(values)
            arrays[f"{group}.{key}"] = values.astype(str) if values.dtype == object else values
    info = {
        "shard_id": shard.shard_id,
        "task_name": w.task_name,
        "categories": list(w.categories) if w.categories is not None else None,
        "category_names": None if flat is None else list(flat.category_names),
        "input_totals": {str(k): v for k, v in shard.input_totals.items()},
        "result": {k: v for k, v in r.to_dict().items() if k not in _RESULT_ARRAYS},
    }
    arrays["info"] = np.frombuffer(json.dumps(info).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def shard_from_bytes(data: bytes) -> ShardResult:
    """The inverse of ``shard_to_bytes``."""

    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    info = json.loads(arrays.pop("info").tobytes().decode())
    n = len(arrays["frame_names"])
    flat = None
    if info["category_names"] is not None:
        flat = scoring.FlatPredictions(
            n_frames=n,
            category_names=info["category_names"],
            **{name: arrays.get(f"flat.{name}") for name in _FLAT_ARRAYS},
        )

    def group(prefix: str) -> dict[str, np.ndarray] | None:
        found = {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + ".")}
        return found or None

    winners = SelectionInputs(
        frame_names=arrays["frame_names"].tolist(),
        embeddings=arrays.get("embeddings"),
        video_keys=arrays["video_keys"].tolist(),
        predictions=flat,
        categories=info["categories"],
        task_name=info["task_name"],
        scores=group("scores"),
        metadata=group("metadata"),
        frame_indices=arrays["frame_indices"],
        corrupt=arrays.get("corrupt"),
    )
    res = dict(info["result"])
    result = SelectionResult(
        **{name: arrays[f"result.{name}"] for name in _RESULT_ARRAYS},
        selected_names=res["selected_names"],
        objective_names=res["objective_names"],
        stop_reason=res["stop_reason"],
        budget=res["budget"],
        timings=res["timings"],
        counts=res["counts"],
        sizes=res["sizes"],
        balance=res["balance"],
        spec=res["spec"],
    )
    return ShardResult(
        shard_id=info["shard_id"],
        winners=winners,
        winner_index=arrays["winner_index"],
        result=result,
        input_totals={int(k): v for k, v in info["input_totals"].items()},
    )


def merge_shards(
    shards: Sequence[ShardResult],
    spec: SelectionSpec,
    *,
    datapool_embeddings: np.ndarray | None = None,
    datapool_ids: Iterable[str] | None = None,
    selected_sequence_length: int | None = None,
    refresh_every: int = REFRESH_EVERY,
    budget: int | None = None,
) -> SelectionResult:
    """Second greedy pass over the union of the shards' winners, budget k of the whole
    (``budget``: another k, e.g. this embedding space's share of the whole's).

    The sizes table adds up the shards' Input / Corrupt / Duplicate / Removed rows;
    ``merged_from`` says for each selected frame which shard and which of its frames.
    """
    if not shards:
        raise ValueError("no shards to merge")
    union = SelectionInputs.concat([s.winners for s in shards])
    total = sum(s.result.counts["input"] for s in shards)
    k = spec.budget(total) if budget is None else budget
    totals: dict[int, dict[str, float]] = {}
    for s in shards:
        for idx, t in s.input_totals.items():
            acc = totals.setdefault(idx, {})
            for name, value in t.items():
                acc[name] = acc.get(name, 0.0) + float(value)
    run = SelectionRun(
        union,
        spec,
        budget=min(k, union.n),
        datapool_embeddings=datapool_embeddings,
        datapool_ids=datapool_ids,
        sequence_length=selected_sequence_length,
        duplicate_distance=DUPLICATE_DISTANCE,
        refresh_every=refresh_every,
        input_totals=totals,
        check_budget=False,
    )
    merged = run.run()
    origin = [(s.shard_id, int(i)) for s in shards for i in s.winner_index]
    merged.merged_from = [origin[i] for i in merged.selected]
    merged.budget = k
    for key in ("input", "corrupt", "removed"):
        merged.counts[key] = sum(s.result.counts[key] for s in shards)
    merged.counts["duplicate"] = (
        sum(s.result.counts["duplicate"] for s in shards) + merged.counts["duplicate"]
    )
    for row, key in (
        ("Input", "input"),
        ("Corrupt", "corrupt"),
        ("Duplicate", "duplicate"),
        ("Removed", "removed"),
    ):
        merged.sizes[row]["Image"] = merged.counts[key]
        merged.sizes[row]["Video"] = sum(s.result.sizes[row]["Video"] for s in shards)
    for b in merged.balance:
        if b["index"] in totals:
            t = np.array([totals[b["index"]].get(str(c), 0.0) for c in b["classes"]])
            b["input_totals"] = t.tolist()
            b["input"] = (t / t.sum()).tolist() if t.sum() > 0 else b["input"]
    merged.timings["shards_total_s"] = sum(s.result.timings.get("total_s", 0.0) for s in shards)
    return merged
