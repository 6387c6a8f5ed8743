"""Frame selection: Lightly-shaped strategies, one greedy combiner, datapool, shards.

Plain numpy (no Airflow). The config keeps Lightly Worker's shape (``n_samples`` or
``proportion_samples`` and ``strategies: [{input: {...}, strategy: {...}}]``); the
semantics below are framesift's own, written down so a reviewer can check them.

Valid input/strategy pairs (Lightly's "input and strategy combinations"; docs.lightly.ai,
pages *Selection Input*, *Selection Strategies*, *Selection Algorithm*):

=============  ==================================================================
input          strategies
=============  ==================================================================
EMBEDDINGS     DIVERSITY, SIMILARITY (needs a query set), TYPICALITY
SCORES         WEIGHTS, THRESHOLD (``score``: a Lightly score name, ``task`` optional)
PREDICTIONS    BALANCE (``name``: CLASS_DISTRIBUTION or CATEGORY_COUNT);
               WEIGHTS, THRESHOLD with ``name: CATEGORY_COUNT`` (objects per frame;
               framesift extension: ``key: <class name>`` counts one class only)
METADATA       WEIGHTS, THRESHOLD (numeric ``key``), BALANCE (categorical ``key``)
RANDOM         WEIGHTS (``random_seed`` optional)
=============  ==================================================================

Anything else (a pair not in the table, an unknown key, a missing field, a budget
larger than the input) raises ``SelectionConfigError`` naming ``strategies[i].<section>.<key>``.

**Order.** Frames flagged corrupt (or with a non-finite / zero embedding) are dropped,
then duplicates: frames already in the datapool (by id), exact copies of an earlier input
frame, and frames closer to a datapool frame than 0.001 or than the DIVERSITY
``stopping_condition_minimum_distance``; then every THRESHOLD strategy filters (a NaN
value fails). The rest are the candidates. These are the sizes table's Corrupt,
Duplicate and Removed rows.

**Greedy.** One frame at a time, the candidate with the largest product of the
objectives, each raised to its strategy's ``strength``, is picked. Each objective is a
number per candidate, normalised to [0, 1]:

* WEIGHTS (SCORES, numeric METADATA, CATEGORY_COUNT, RANDOM): the value, min-max scaled
  over the candidates once, before the loop (these do not change while picking); a NaN
  value counts as the minimum;
* SIMILARITY: ``(1 + max cosine similarity to the query embeddings) / 2``, min-max scaled
  once; TYPICALITY: mean cosine similarity to the k = 10 nearest neighbours (among at
  most 10,000 seeded reference frames), min-max scaled once;
* DIVERSITY: ``d / d_max`` with ``d`` the Euclidean distance (on the unit sphere, in
  [0, 2]) from the candidate to the nearest selected or datapool frame, and ``d_max``
  the largest ``d`` among the candidates at that step; with nothing selected yet ``d`` is
  2 for all. Dividing every candidate by the same number does not change which product
  is largest, so this normalisation changes reported values only, never the pick;
* BALANCE: ``g`` = how much adding the candidate moves the selected class distribution
  towards the target, ``g = D(now) - D(with it)`` where ``D`` is the squared Euclidean
  distance between the selected distribution (class vectors of the selected frames,
  summed and divided by their total) and the target; re-normalised min-max over the
  candidates at every step (a frame without objects has ``g = 0``).

A negative strength inverts its objective: ``(1 - o) ** |strength|``. Product ties are
broken by a seeded per-frame priority, so a run is deterministic for a seed.

The distance ``d`` only ever decreases, so the loop evaluates it lazily: after each
batch of up to 64 picks one matrix product refreshes every frame (``X @ C.T`` in row
chunks); in between, a stale ``d`` is an upper bound, and only the frames whose
optimistic product could beat the best exact one are refreshed. The picks are the same
as recomputing every distance after every pick (the tests check it against a plain
implementation). Memory: the embedding matrix is never copied (unless it is not
L2-normalised, then one normalised float32 copy is made), never N x N, no float64 copy.

**Stopping.** The budget (``n_samples``, or ``round(proportion_samples * input)``); a
DIVERSITY ``stopping_condition_minimum_distance``: a candidate whose ``d`` falls below
it is dropped (Lightly: no two selected frames closer than that), and the run stops when
none is left; a WEIGHTS ``stopping_condition_max_sum``: the run stops once the summed raw
values of the selected frames reach it; or no candidates left.

**Sequences.** With ``selected_sequence_length = L > 1`` each greedy pick brings the
frames around it in the same video (consecutive in frame order among the frames still
available), about L/2 on each side, so a run of L frames is selected; the budget counts
frames and the last run is cut to fit.

**Shards.** ``select_shard`` runs the same selection on one shard with a budget of
``ceil(oversample * k)``; ``merge_shards`` runs it again on the union of the shards'
winners with budget k (distributed greedy). BALANCE with distribution INPUT uses the
class totals of all shards, not of the winners. Static objectives are re-normalised over
the union in the merge (min-max over fewer frames), and ``object_frequency``'s
rescaling is per shard: merged picks can differ slightly from a single-machine run's.
On clustered data the merged coverage is within 2 % of the single-machine one (tests
check 10 %).

**Scale.** Per pick: O(N) vector work (the product, the argmax, BALANCE's gains, in
float32) plus, per 64 picks, one pass of ``X @ C.T``. 1M x 256-d, 1,000 picks of
DIVERSITY x WEIGHTS x BALANCE on 2 shared cores: 41-56 s wall (38-40 s CPU) with a
load average of 2-4 from other work, about 25 s on a quieter machine; peak RSS 1.6x the
matrix, of which select's own allocations are 0.2x (bench/bench_selection.py).
TYPICALITY costs O(N x 10,000 x D) once.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from framesift import scores as scoring

_LOG = logging.getLogger("framesift.selection")

DEFAULT_TASK = "object-detection"
REFRESH_EVERY = 64  # pending centres before a full distance refresh
ROW_CHUNK = 65_536  # rows per chunk in matrix products over the embeddings
TYPICALITY_K = 10
TYPICALITY_REFERENCE = 10_000
DUPLICATE_DISTANCE = 1e-3  # float32 round-off on the unit sphere is ~3e-4
_EMPTY_DISTANCE = 2.0  # distance of any frame to an empty selected set
_TIE_BATCH = 4096  # stale candidates refreshed at a time before a full refresh


class SelectionConfigError(ValueError):
    """A selection config that cannot run, with the strategy index and key it concerns."""


class InputType(StrEnum):
    EMBEDDINGS = "EMBEDDINGS"
    SCORES = "SCORES"
    PREDICTIONS = "PREDICTIONS"
    METADATA = "METADATA"
    RANDOM = "RANDOM"


class StrategyType(StrEnum):
    DIVERSITY = "DIVERSITY"
    WEIGHTS = "WEIGHTS"
    THRESHOLD = "THRESHOLD"
    BALANCE = "BALANCE"
    SIMILARITY = "SIMILARITY"
    TYPICALITY = "TYPICALITY"


class PredictionsName(StrEnum):
    CLASS_DISTRIBUTION = "CLASS_DISTRIBUTION"
    CATEGORY_COUNT = "CATEGORY_COUNT"


class ThresholdOperation(StrEnum):
    SMALLER = "SMALLER"
    SMALLER_EQUAL = "SMALLER_EQUAL"
    BIGGER = "BIGGER"
    BIGGER_EQUAL = "BIGGER_EQUAL"


class Distribution(StrEnum):
    TARGET = "TARGET"
    UNIFORM = "UNIFORM"
    INPUT = "INPUT"


VALID_PAIRS: dict[InputType, frozenset[StrategyType]] = {
    InputType.EMBEDDINGS: frozenset(
        {StrategyType.DIVERSITY, StrategyType.SIMILARITY, StrategyType.TYPICALITY}
    ),
    InputType.SCORES: frozenset({StrategyType.WEIGHTS, StrategyType.THRESHOLD}),
    InputType.PREDICTIONS: frozenset({StrategyType.BALANCE, StrategyType.WEIGHTS, StrategyType.THRESHOLD}),
    InputType.METADATA: frozenset({StrategyType.WEIGHTS, StrategyType.THRESHOLD, StrategyType.BALANCE}),
    InputType.RANDOM: frozenset({StrategyType.WEIGHTS}),
}

# ---------------------------------------------------------------------------------------
# typed config
# ---------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StrategyInput(_Model):
    type: InputType
    task: str | None = None
    score: str | None = None
    name: PredictionsName | None = None
    key: str | None = None
    random_seed: int | None = None
    dataset_id: str | None = None
    tag_name: str | None = None
    query_frames: list[str] | None = None
    query_embeddings: list[list[float]] | None = None


class StrategyParams(_Model):
    type: StrategyType
    strength: float = 1.0
    stopping_condition_minimum_distance: float | None = Field(None, ge=0, le=2)
    stopping_condition_max_sum: float | None = Field(None, gt=0)
    threshold: float | None = None
    operation: ThresholdOperation | None = None
    target: dict[str, float] | None = None
    distribution: Distribution | None = None


class StrategyEntry(_Model):
    input: StrategyInput
    strategy: StrategyParams

    def label(self, index: int) -> str:
        what = self.input.score or self.input.key or (self.input.name.value if self.input.name else None)
        inner = f"{self.input.type.value}:{what}" if what else self.input.type.value
        return f"{index}:{self.strategy.type.value}({inner})"


class SelectionSpec(_Model):
    n_samples: int | None = Field(None, ge=1)
    proportion_samples: float | None = Field(None, gt=0, le=1)
    strategies: list[StrategyEntry]
    random_seed: int = 0
    selected_sequence_length: int = Field(1, ge=1)
    defaulted: bool = False  # the strategies are framesift's default (the config gave none)

    def budget(self, n_input: int) -> int:
        """How many frames to select from ``n_input`` input frames (errors if impossible)."""
        if self.n_samples is not None:
            if self.n_samples > n_input:
                raise SelectionConfigError(
                    f"n_samples: {self.n_samples} is larger than the input ({n_input} frames); "
                    "lower it or use proportion_samples"
                )
            return self.n_samples
        if self.proportion_samples is not None:
            return min(n_input, max(1, int(self.proportion_samples * n_input + 0.5))) if n_input else 0
        return n_input

    def describe(self) -> list[dict[str, Any]]:
        return [s.model_dump(mode="json", exclude_none=True) for s in self.strategies]


_ENTRY_KEYS = ("input", "strategy")
_INPUT_KEYS = tuple(StrategyInput.model_fields)
_STRATEGY_KEYS = tuple(StrategyParams.model_fields)


def _unknown_keys(where: str, data: Mapping[str, Any], known: Sequence[str]) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
            raise SelectionConfigError(f"{where}.{key}: unknown key{hint}")


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _enum(where: str, value: Any, enum: type[Enum]) -> Any:
    if value is None:
        return None
    value = _upper(value)
    allowed = [e.value for e in enum]
    if value not in allowed:
        raise SelectionConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return value


def parse_strategy(index: int, raw: Any) -> StrategyEntry:
    """Validate one Lightly-shaped strategy dict; errors name ``strategies[index]``."""
    at = f"strategies[{index}]"
    if not isinstance(raw, Mapping):
        raise SelectionConfigError(
            f"{at}: expected a mapping with 'input' and 'strategy', got {type(raw).__name__}"
        )
    _unknown_keys(at, raw, _ENTRY_KEYS)
    for part in _ENTRY_KEYS:
        if part not in raw:
            raise SelectionConfigError(f"{at}.{part}: missing")
        if not isinstance(raw[part], Mapping):
            raise SelectionConfigError(f"{at}.{part}: expected a mapping, got {type(raw[part]).__name__}")
    inp = dict(raw["input"])
    strat = dict(raw["strategy"])
    _unknown_keys(f"{at}.input", inp, _INPUT_KEYS)
    _unknown_keys(f"{at}.strategy", strat, _STRATEGY_KEYS)
    for part, data in (("input", inp), ("strategy", strat)):
        if "type" not in data:
            raise SelectionConfigError(f"{at}.{part}.type: missing")
    inp["type"] = _enum(f"{at}.input.type", inp["type"], InputType)
    strat["type"] = _enum(f"{at}.strategy.type", strat["type"], StrategyType)
    if "name" in inp:
        inp["name"] = _enum(f"{at}.input.name", inp["name"], PredictionsName)
    if "operation" in strat:
        strat["operation"] = _enum(f"{at}.strategy.operation", strat["operation"], ThresholdOperation)
    if "distribution" in strat:
        strat["distribution"] = _enum(f"{at}.strategy.distribution", strat["distribution"], Distribution)
    if isinstance(inp.get("query_embeddings"), np.ndarray):
        inp["query_embeddings"] = np.asarray(inp["query_embeddings"], dtype=np.float64).tolist()
    for key in ("strength", "threshold", "stopping_condition_minimum_distance", "stopping_condition_max_sum"):
        if isinstance(strat.get(key), bool):
            raise SelectionConfigError(f"{at}.strategy.{key}: expected a number, got {strat[key]!r}")
    try:
        entry = StrategyEntry.model_validate({"input": inp, "strategy": strat})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        got = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
        raise SelectionConfigError(f"{at}.{loc}: {err['msg']}{got}") from None
    _check_pair(at, entry, inp, strat)
    return entry


def _check_pair(at: str, e: StrategyEntry, inp: Mapping[str, Any], strat: Mapping[str, Any]) -> None:
    it, st = e.input.type, e.strategy.type
    if st not in VALID_PAIRS[it]:
        allowed = ", ".join(sorted(s.value for s in VALID_PAIRS[it]))
        raise SelectionConfigError(
            f"{at}.strategy.type: {st.value} cannot be used with input {it.value} (allowed: {allowed})"
        )

    def forbid(section: str, keys: Iterable[str], why: str) -> None:
        data = inp if section == "input" else strat
        for key in keys:
            if data.get(key) is not None:
                raise SelectionConfigError(f"{at}.{section}.{key}: not allowed {why}")

    def need(section: str, key: str, why: str) -> None:
        data = inp if section == "input" else strat
        if data.get(key) is None:
            raise SelectionConfigError(f"{at}.{section}.{key}: missing; {why}")

    query_keys = ("dataset_id", "tag_name", "query_frames", "query_embeddings")
    # input side
    if it is InputType.EMBEDDINGS:
        forbid("input", ("score", "name", "key", "random_seed"), "with input EMBEDDINGS")
        if e.input.task is not None:
            raise SelectionConfigError(
                f"{at}.input.task: object-level embeddings are not supported; drop 'task' to use frame embeddings"
            )
        if st is StrategyType.SIMILARITY:
            if not any(inp.get(k) is not None for k in query_keys):
                raise SelectionConfigError(
                    f"{at}.input.query_frames: missing; SIMILARITY needs a query set "
                    "(query_frames, query_embeddings, or dataset_id/tag_name)"
                )
        else:
            forbid("input", query_keys, f"with {st.value} (only SIMILARITY takes a query set)")
    else:
        forbid("input", query_keys, f"with input {it.value} (only EMBEDDINGS + SIMILARITY take a query set)")
    if it is InputType.SCORES:
        need("input", "score", "SCORES needs the score name, e.g. 'uncertainty_entropy'")
        forbid("input", ("name", "key", "random_seed"), "with input SCORES")
    if it is InputType.PREDICTIONS:
        need("input", "name", "PREDICTIONS needs name: CLASS_DISTRIBUTION or CATEGORY_COUNT")
        forbid("input", ("score", "random_seed"), "with input PREDICTIONS")
        if (
            st in (StrategyType.WEIGHTS, StrategyType.THRESHOLD)
            and e.input.name is not PredictionsName.CATEGORY_COUNT
        ):
            raise SelectionConfigError(
                f"{at}.input.name: {st.value} on PREDICTIONS needs name CATEGORY_COUNT (a number per frame)"
            )
        if st is StrategyType.BALANCE and e.input.key is not None:
            raise SelectionConfigError(f"{at}.input.key: not allowed with BALANCE on PREDICTIONS")
    if it is InputType.METADATA:
        need("input", "key", "METADATA needs the metadata key, e.g. 'lightly.sharpness'")
        forbid("input", ("score", "name", "task", "random_seed"), "with input METADATA")
    if it is InputType.RANDOM:
        forbid("input", ("score", "name", "key", "task"), "with input RANDOM")
    # strategy side
    if st is StrategyType.THRESHOLD:
        need("strategy", "threshold", "THRESHOLD needs a number to compare with")
        need("strategy", "operation", "THRESHOLD needs one of SMALLER, SMALLER_EQUAL, BIGGER, BIGGER_EQUAL")
        forbid("strategy", ("strength",), "with THRESHOLD (a filter has no strength)")
    else:
        forbid("strategy", ("threshold", "operation"), f"with {st.value} (only THRESHOLD)")
    if st is not StrategyType.DIVERSITY:
        forbid("strategy", ("stopping_condition_minimum_distance",), f"with {st.value} (only DIVERSITY)")
    if st is not StrategyType.WEIGHTS:
        forbid("strategy", ("stopping_condition_max_sum",), f"with {st.value} (only WEIGHTS)")
    if st is StrategyType.BALANCE:
        dist = e.strategy.distribution or (Distribution.TARGET if e.strategy.target is not None else None)
        if dist is None:
            raise SelectionConfigError(
                f"{at}.strategy.target: missing; BALANCE needs a target {{class: fraction}} "
                "or distribution UNIFORM / INPUT"
            )
        if dist is Distribution.TARGET:
            need("strategy", "target", "distribution TARGET needs target {class: fraction}")
            target = e.strategy.target or {}
            if not target:
                raise SelectionConfigError(f"{at}.strategy.target: empty")
            for name, frac in target.items():
                if not (0.0 <= frac <= 1.0):
                    raise SelectionConfigError(
                        f"{at}.strategy.target.{name}: {frac} is not a fraction in [0, 1]"
                    )
            if sum(target.values()) > 1.0 + 1e-6:
                raise SelectionConfigError(
                    f"{at}.strategy.target: the fractions sum to {sum(target.values()):.3f} > 1"
                )
        elif e.strategy.target is not None:
            raise SelectionConfigError(f"{at}.strategy.target: not allowed with distribution {dist.value}")
    else:
        forbid("strategy", ("target", "distribution"), f"with {st.value} (only BALANCE)")


def parse_strategies(raw: Sequence[Any] | None) -> list[StrategyEntry]:
    if raw is None:
        return []
    if isinstance(raw, Mapping | str | bytes) or not isinstance(raw, Sequence):
        raise SelectionConfigError(f"strategies: expected a list, got {type(raw).__name__}")
    return [parse_strategy(i, s) for i, s in enumerate(raw)]


def default_strategies() -> list[StrategyEntry]:
    """What runs when the config names no strategy: visual diversity times uncertainty.

    DIVERSITY on EMBEDDINGS (strength 1) and WEIGHTS on SCORES ``uncertainty_entropy``
    (strength 1): Lightly's "CORAL" recipe, frames far from everything already picked
    in which the detector hesitates between classes. Without predictions, the WEIGHTS part
    is dropped at select time (all entropies would be 0).
    """
    return [
        parse_strategy(0, {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}),
        parse_strategy(
            1, {"input": {"type": "SCORES", "score": "uncertainty_entropy"}, "strategy": {"type": "WEIGHTS"}}
        ),
    ]


def parse_selection(
    sel: Any, important_classes: Sequence[str] = (), *, selected_sequence_length: int = 1
) -> SelectionSpec:
    """``SelectionConfig`` (or its dict) + the top-level ``important_classes`` -> spec.

    Book keys: ``balance: true`` adds a BALANCE strategy on PREDICTIONS
    CLASS_DISTRIBUTION whose distribution follows ``balance_strategy``: UNIFORM (default)
    = equal fractions over ``important_classes`` (all classes of the task when none are
    listed), INPUT = the input's own class distribution, TARGET = needs ``balance`` to be
    a mapping ``{class: fraction}`` (a mapping alone implies TARGET). ``balance: false``
    or absent adds nothing. When ``strategies`` is empty the default
    (``default_strategies``) is used, plus that BALANCE if asked for.
    """
    data = sel.model_dump() if hasattr(sel, "model_dump") else dict(sel or {})
    known = ("n_samples", "proportion_samples", "strategies", "balance", "balance_strategy", "random_seed")
    # how a selection runs (shards), not what it selects
    data = {k: v for k, v in data.items() if k not in ("shard_max_frames", "shard_oversample")}
    _unknown_keys("selection", data, known)
    strategies = parse_strategies(data.get("strategies") or [])
    defaulted = not strategies
    if defaulted:
        strategies = default_strategies()
    balance = data.get("balance")
    how = _upper(data.get("balance_strategy"))
    if how is not None and how not in ("TARGET", "UNIFORM", "INPUT"):
        raise SelectionConfigError(f"balance_strategy: {how!r} is not one of TARGET, UNIFORM, INPUT")
    entry: dict[str, Any] | None = None
    if isinstance(balance, Mapping):
        if how not in (None, "TARGET"):
            raise SelectionConfigError(
                f"balance_strategy: {how} contradicts balance given as a {{class: fraction}} mapping (that is TARGET)"
            )
        entry = {"distribution": "TARGET", "target": dict(balance)}
    elif balance is True:
        how = how or "UNIFORM"
        if how == "TARGET":
            raise SelectionConfigError(
                "balance: balance_strategy TARGET needs balance to be a mapping {class: fraction}, not true"
            )
        if how == "UNIFORM" and important_classes:
            classes = list(dict.fromkeys(important_classes))
            entry = {"distribution": "TARGET", "target": {c: 1.0 / len(classes) for c in classes}}
        else:
            entry = {"distribution": how}
    elif balance not in (None, False):
        raise SelectionConfigError(
            f"balance: expected true/false or a mapping {{class: fraction}}, got {balance!r}"
        )
    elif how is not None:
        raise SelectionConfigError("balance_strategy: given, but balance is not enabled (set balance: true)")
    if entry is not None:
        if any(
            s.strategy.type is StrategyType.BALANCE and s.input.type is InputType.PREDICTIONS
            for s in strategies
        ):
            raise SelectionConfigError(
                "balance: the strategies already balance on PREDICTIONS; drop the book-style balance keys or that strategy"
            )
        strategies.append(
            parse_strategy(
                len(strategies),
                {
                    "input": {"type": "PREDICTIONS", "name": "CLASS_DISTRIBUTION"},
                    "strategy": {"type": "BALANCE", **entry},
                },
            )
        )
    n_samples = data.get("n_samples")
    proportion = data.get("proportion_samples")
    if n_samples is not None and proportion is not None:
        raise SelectionConfigError("n_samples / proportion_samples: give one of them, not both")
    has_stop = any(
        s.strategy.stopping_condition_minimum_distance is not None
        or s.strategy.stopping_condition_max_sum is not None
        for s in strategies
    )
    if n_samples is None and proportion is None and not has_stop:
        raise SelectionConfigError(
            "n_samples: missing; give n_samples or proportion_samples (or a stopping condition)"
        )
    try:
        return SelectionSpec(
            n_samples=n_samples,
            proportion_samples=proportion,
            strategies=strategies,
            random_seed=int(data.get("random_seed") or 0),
            selected_sequence_length=selected_sequence_length,
            defaulted=defaulted,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SelectionConfigError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"^(?P<stem>.+)-(?P<index>\d+)-(?P<ext>[A-Za-z0-9_]+)\.[A-Za-z0-9]+$")


def parse_frame_name(name: str) -> tuple[str, int] | None:
    """``bikes-042-mp4.png`` -> (``bikes.mp4``, 42); None when not a Lightly frame name."""
    m = _NAME_RE.match(name.rsplit("/", 1)[-1])
    if not m:
        return None
    return f"{m['stem']}.{m['ext']}", int(m["index"])


@dataclass
class SelectionInputs:
    """What selection reads, one entry per frame (N frames).

    ``frame_names``: Lightly names (``<stem>-<index>-<ext>.png``), also the frame ids
    used against the datapool. ``embeddings``: (N, D) float32, L2-normalised rows (or
    None when no strategy needs them). ``video_keys``: the video each frame came from
    (default: parsed from the frame name). ``predictions``: Lightly prediction lists per
    frame (with ``categories``, the schema ``[{"id", "name"}]``) or a
    ``scores.FlatPredictions``; ``task_name`` names that task. ``scores``: precomputed
    score arrays by name (default: computed from the predictions). ``metadata``: per-key
    arrays (numbers or category strings), e.g. ``{"lightly.sharpness": [...]}``;
    ``video`` and ``frame_index`` are always available. ``frame_indices``: each frame's
    position in its video (default: parsed from the name, else the input order).
    ``corrupt``: frames the extraction flagged. ``query_sets``: embeddings of SIMILARITY
    query sets by ``"dataset_id/tag_name"`` or ``"tag_name"``.
    """

    frame_names: Sequence[str]
    embeddings: np.ndarray | None
    video_keys: Sequence[str] | None = None
    predictions: Any = None
    categories: Sequence[Mapping[str, Any]] | None = None
    task_name: str = DEFAULT_TASK
    scores: Mapping[str, np.ndarray] | None = None
    metadata: Mapping[str, Any] | None = None
    frame_indices: np.ndarray | None = None
    corrupt: np.ndarray | None = None
    query_sets: Mapping[str, np.ndarray] | None = None
    _flat: scoring.FlatPredictions | None = field(default=None, init=False, repr=False)
    _scores: dict[str, np.ndarray] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.frame_names = list(self.frame_names)
        n = len(self.frame_names)
        if self.embeddings is not None:
            emb = self.embeddings
            if not isinstance(emb, np.ndarray) or emb.ndim != 2:
                raise ValueError("embeddings must be a 2-D numpy array (frames x dimensions)")
            if emb.dtype != np.float32:
                self.embeddings = emb.astype(np.float32)
            if len(self.embeddings) != n:
                raise ValueError(f"embeddings has {len(self.embeddings)} rows for {n} frame names")
        parsed: list[tuple[str, int] | None] | None = None
        if self.video_keys is None or self.frame_indices is None:
            parsed = [parse_frame_name(f) for f in self.frame_names]
        if self.video_keys is None:
            assert parsed is not None
            self.video_keys = [p[0] if p else "" for p in parsed]
        else:
            self.video_keys = list(self.video_keys)
            if len(self.video_keys) != n:
                raise ValueError(f"video_keys has {len(self.video_keys)} entries for {n} frames")
        if self.frame_indices is None:
            assert parsed is not None
            self.frame_indices = np.array([p[1] if p else i for i, p in enumerate(parsed)], dtype=np.int64)
        else:
            self.frame_indices = np.asarray(self.frame_indices, dtype=np.int64)
            if len(self.frame_indices) != n:
                raise ValueError("frame_indices needs one entry per frame")
        if self.corrupt is not None:
            self.corrupt = np.asarray(self.corrupt, dtype=bool)
            if len(self.corrupt) != n:
                raise ValueError("corrupt needs one entry per frame")
        if isinstance(self.predictions, scoring.FlatPredictions):
            if self.predictions.n_frames != n:
                raise ValueError("predictions cover a different number of frames than frame_names")
        elif self.predictions is not None and len(self.predictions) != n:
            raise ValueError(f"predictions has {len(self.predictions)} entries for {n} frames")
        for key, values in (self.metadata or {}).items():
            if len(values) != n:
                raise ValueError(f"metadata[{key!r}] has {len(values)} entries for {n} frames")
        for key, values in (self.scores or {}).items():
            if len(values) != n:
                raise ValueError(f"scores[{key!r}] has {len(values)} entries for {n} frames")

    @property
    def n(self) -> int:
        return len(self.frame_names)

    @property
    def flat_predictions(self) -> scoring.FlatPredictions | None:
        if self._flat is None and self.predictions is not None:
            self._flat = scoring.as_flat(self.predictions, self.categories)
        return self._flat

    @property
    def class_names(self) -> list[str]:
        flat = self.flat_predictions
        if flat is not None:
            return list(flat.category_names)
        return [str(c.get("name", c["id"])) for c in self.categories or []]

    def score_arrays(self) -> dict[str, np.ndarray]:
        if self._scores is None:
            computed: dict[str, np.ndarray] = {}
            if self.flat_predictions is not None:
                computed = scoring.compute_scores(self.flat_predictions)
            computed.update({k: np.asarray(v, dtype=np.float64) for k, v in (self.scores or {}).items()})
            self._scores = computed
        return self._scores

    def metadata_values(self, key: str) -> np.ndarray | None:
        meta = self.metadata or {}
        for candidate in (key, key.removeprefix("lightly."), f"lightly.{key}"):
            if candidate in meta:
                return np.asarray(meta[candidate])
        if key in ("video", "lightly.video"):
            return np.asarray(self.video_keys, dtype=object)
        if key in ("frame_index", "lightly.frame_index"):
            return np.asarray(self.frame_indices)
        return None

    def subset(self, indices: Sequence[int] | np.ndarray) -> SelectionInputs:
        """The given frames (in that order), with everything that is per frame."""
        idx = np.asarray(indices, dtype=np.int64)
        names = [self.frame_names[i] for i in idx]
        flat = self.flat_predictions
        return SelectionInputs(
            frame_names=names,
            embeddings=None if self.embeddings is None else self.embeddings[idx],
            video_keys=[self.video_keys[i] for i in idx],  # type: ignore[index]
            predictions=None if flat is None else flat.subset(idx),
            categories=self.categories,
            task_name=self.task_name,
            scores={k: np.asarray(v)[idx] for k, v in (self.scores or {}).items()} or None,
            metadata={k: np.asarray(v)[idx] for k, v in (self.metadata or {}).items()} or None,
            frame_indices=self.frame_indices[idx],  # type: ignore[index]
            corrupt=None if self.corrupt is None else self.corrupt[idx],
            query_sets=self.query_sets,
        )

    @classmethod
    def concat(cls, parts: Sequence[SelectionInputs]) -> SelectionInputs:
        """Frames of several inputs one after the other (the same task and schema)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        names = [n for p in parts for n in p.frame_names]
        emb = None if first.embeddings is None else np.concatenate([p.embeddings for p in parts])  # type: ignore[misc]
        flats = [p.flat_predictions for p in parts]
        flat = None
        if all(f is not None for f in flats) and flats:
            offsets = np.cumsum([0] + [p.n for p in parts])
            probs = [f.probabilities for f in flats]  # type: ignore[union-attr]
            has_any = any(p is not None for p in probs)
            flat = scoring.FlatPredictions(
                n_frames=len(names),
                category_names=list(flats[0].category_names),  # type: ignore[union-attr]
                frame=np.concatenate([f.frame + o for f, o in zip(flats, offsets, strict=False)]),  # type: ignore[union-attr]
                category=np.concatenate([f.category for f in flats]),  # type: ignore[union-attr]
                score=np.concatenate([f.score for f in flats]),  # type: ignore[union-attr]
                probabilities=np.concatenate(
                    [
                        p if p is not None else np.zeros((f.n_boxes, f.num_classes), np.float32)  # type: ignore[union-attr]
                        for p, f in zip(probs, flats, strict=True)
                    ]
                )
                if has_any
                else None,
                has_probs=np.concatenate(
                    [
                        f.has_probs if f.has_probs is not None else np.zeros(f.n_boxes, bool)  # type: ignore[union-attr]
                        for f in flats
                    ]
                )
                if has_any
                else None,
                bbox=np.concatenate(
                    [
                        f.bbox if f.bbox is not None else np.full((f.n_boxes, 4), np.nan, np.float32)  # type: ignore[union-attr]
                        for f in flats
                    ]
                ),
            )

        def cat_dict(attr: str) -> dict[str, np.ndarray] | None:
            keys = set.intersection(*(set(getattr(p, attr) or {}) for p in parts))
            return {k: np.concatenate([np.asarray(getattr(p, attr)[k]) for p in parts]) for k in keys} or None

        return cls(
            frame_names=names,
            embeddings=emb,
            video_keys=[v for p in parts for v in p.video_keys],  # type: ignore[union-attr]
            predictions=flat,
            categories=first.categories,
            task_name=first.task_name,
            scores=cat_dict("scores"),
            metadata=cat_dict("metadata"),
            frame_indices=np.concatenate([p.frame_indices for p in parts]),  # type: ignore[misc]
            corrupt=np.concatenate(
                [p.corrupt if p.corrupt is not None else np.zeros(p.n, bool) for p in parts]
            ),
            query_sets=first.query_sets,
        )


# ---------------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------------

SIZE_ROWS = ("Input", "Corrupt", "Duplicate", "Removed", "Selected", "Datapool Input", "Datapool Selected")


@dataclass
class SelectionResult:
    """What a selection did.

    ``selected``: indices into the inputs in pick order; ``anchor``: True for greedy
    picks, False for frames added as part of a sequence. ``objective_values``
    (picks x objectives): each objective's normalised value in [0, 1] for the frame at
    the moment it was picked (NaN for sequence frames); ``raw_values`` the unnormalised
    ones. ``counts`` / ``sizes``: Lightly's sizes table (rows ``SIZE_ROWS``, columns
    Image = frames, Video = distinct videos). ``balance``: per BALANCE strategy the
    classes, target, input and selected distributions.
    """

    selected: np.ndarray
    selected_names: list[str]
    anchor: np.ndarray
    objective_names: list[str]
    objective_values: np.ndarray
    raw_values: np.ndarray
    stop_reason: str
    budget: int
    timings: dict[str, float]
    counts: dict[str, int]
    sizes: dict[str, dict[str, int]]
    balance: list[dict[str, Any]] = field(default_factory=list)
    merged_from: list[tuple[str, int]] | None = None
    spec: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (for the ``selections`` record and the report)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return v

        return {
            "selected": [int(i) for i in self.selected],
            "selected_names": list(self.selected_names),
            "anchor": [bool(a) for a in self.anchor],
            "objective_names": list(self.objective_names),
            "objective_values": [[clean(float(x)) for x in row] for row in self.objective_values],
            "stop_reason": self.stop_reason,
            "budget": self.budget,
            "timings": dict(self.timings),
            "counts": dict(self.counts),
            "sizes": {k: dict(v) for k, v in self.sizes.items()},
            "balance": [
                {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in b.items()}
                for b in self.balance
            ],
            "merged_from": None if self.merged_from is None else [list(m) for m in self.merged_from],
            "spec": self.spec,
        }


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------

# status codes of frames
_ALIVE, _CORRUPT, _DUPLICATE, _REMOVED, _SELECTED, _TOO_CLOSE = 0, 1, 2, 3, 4, 5


def _name_hash_uniform(names: Sequence[str], seed: int) -> np.ndarray:
    """A uniform [0, 1) number per frame from its name and a seed (order-independent)."""
    h = np.fromiter((zlib.crc32(n.encode()) for n in names), dtype=np.uint64, count=len(names))
    with np.errstate(over="ignore"):
        x = h + np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _row_norms(x: np.ndarray) -> np.ndarray:
    out = np.empty(len(x), dtype=np.float32)
    for a in range(0, len(x), ROW_CHUNK):
        b = min(len(x), a + ROW_CHUNK)
        chunk = x[a:b]
        out[a:b] = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
    return out


def _min_distance_to(
    x: np.ndarray, centres: np.ndarray, out: np.ndarray, rows: np.ndarray | None = None
) -> None:
    """out = min(out, distance from each row of x (or x[rows]) to its nearest centre).

    Unit vectors: d = sqrt(2 - 2 max cos). Chunked: O(chunk x centres) memory.
    """
    if len(centres) == 0:
        return
    c_t = np.ascontiguousarray(centres.T)
    n = len(x) if rows is None else len(rows)
    step = max(1, min(ROW_CHUNK, (16_000_000 // max(1, len(centres)))))
    for a in range(0, n, step):
        b = min(n, a + step)
        if rows is None:
            sims = x[a:b] @ c_t
            target = slice(a, b)
        else:
            sel = rows[a:b]
            sims = x[sel] @ c_t
            target = sel
        best = sims.max(axis=1) if sims.shape[1] > 1 else sims[:, 0]
        np.clip(best, -1.0, 1.0, out=best)
        d = np.sqrt(np.maximum(2.0 - 2.0 * best, 0.0, dtype=np.float32))
        if rows is None:
            np.minimum(out[target], d, out=out[target])
        else:
            out[target] = np.minimum(out[target], d)


def _exact_duplicates(x: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Indices of alive rows that repeat an earlier alive row exactly."""
    idx = np.flatnonzero(alive)
    if len(idx) < 2:
        return np.empty(0, dtype=np.int64)
    rng = np.random.default_rng(12345)
    proj = rng.standard_normal((x.shape[1], 2)).astype(np.float32)
    keys = np.empty((len(idx), 2), dtype=np.float32)
    step = ROW_CHUNK
    for a in range(0, len(idx), step):
        keys[a : a + step] = x[idx[a : a + step]] @ proj
    # equal rows have equal keys; sorted by key then index, a copy follows its original
    order = np.lexsort((idx, keys[:, 1], keys[:, 0]))
    k_sorted = keys[order]
    same = np.all(k_sorted[1:] == k_sorted[:-1], axis=1)
    dups = [
        int(idx[order[pos + 1]])
        for pos in np.flatnonzero(same)
        if np.array_equal(x[idx[order[pos + 1]]], x[idx[order[pos]]])
    ]
    return np.asarray(sorted(set(dups)), dtype=np.int64)


def _compare(values: np.ndarray, op: ThresholdOperation, threshold: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        if op is ThresholdOperation.SMALLER:
            ok = values < threshold
        elif op is ThresholdOperation.SMALLER_EQUAL:
            ok = values <= threshold
        elif op is ThresholdOperation.BIGGER:
            ok = values > threshold
        else:
            ok = values >= threshold
    return ok & np.isfinite(values)


def _minmax(values: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Min-max scale over the alive frames to [0, 1] (float32); NaN -> 0; constant -> 1."""
    vals = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(vals) & alive
    out = np.zeros(len(vals), dtype=np.float32)
    if not finite.any():
        out[alive] = 1.0
        return out
    lo, hi = vals[finite].min(), vals[finite].max()
    if hi <= lo:
        out[np.isfinite(vals)] = 1.0
        return out
    scaled = (vals - lo) / (hi - lo)
    scaled[~np.isfinite(scaled)] = 0.0
    out[:] = np.clip(scaled, 0.0, 1.0)
    return out


@dataclass
class _Static:
    index: int
    label: str
    raw: np.ndarray  # float64 (N,)
    norm: np.ndarray  # float32 (N,) in [0, 1]
    strength: float
    max_sum: float | None = None


@dataclass
class _BalanceState:
    index: int
    label: str
    strength: float
    classes: list[str]
    target: np.ndarray  # (B,)
    vt: np.ndarray  # (B, N) float32 class vectors, one row per bucket
    mass: np.ndarray  # (N,) float32
    vv: np.ndarray  # (N,) float32
    tv: np.ndarray  # (N,) float32
    input_totals: np.ndarray  # (B,) float64
    c: np.ndarray = field(init=False)
    s: float = 0.0
    cv: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.c = np.zeros(len(self.target))
        self.cv = np.zeros(self.vt.shape[1], dtype=np.float32)
        self.tt = float(self.target @ self.target)
        self.zero_mass = self.mass <= 0

    def current_distance(self) -> float:
        if self.s <= 0:
            return 1.0 + self.tt  # at least the distance of any distribution to the target
        q = self.c / self.s
        return float(((q - self.target) ** 2).sum())

    def gains(self) -> np.ndarray:
        """g_i = D(now) - D(now + frame i) for every frame (float32)."""
        d0 = self.current_distance()
        cc = float(self.c @ self.c)
        tc = float(self.target @ self.c)
        den = self.mass + np.float32(self.s)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.float32(1.0) / den
            num = self.cv * np.float32(2.0)
            num += self.vv
            num += np.float32(cc)
            num *= inv
            tvc = self.tv + np.float32(tc)
            tvc *= np.float32(2.0)
            num -= tvc
            num *= inv
        num += np.float32(self.tt)  # D_i
        g = np.float32(d0) - num
        # a frame without objects leaves the distribution as it is (0/0 when nothing is selected)
        g[self.zero_mass] = 0.0
        return g

    def add(self, i: int) -> None:
        v = self.vt[:, i].astype(np.float64)
        # cv_j = c . v_j, updated for the new c. einsum, not BLAS: a tiny threaded gemv per
        # pick stalls for a scheduler slice whenever another process holds a core
        self.cv += np.einsum("k,kn->n", v.astype(np.float32), self.vt)
        self.c += v
        self.s += float(v.sum())

    def selected_distribution(self) -> np.ndarray:
        return self.c / self.s if self.s > 0 else np.zeros_like(self.c)


# ---------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------


class _Run:
    """One selection: resolves the strategies against the inputs, then the greedy loop."""

    def __init__(
        self,
        inputs: SelectionInputs,
        spec: SelectionSpec,
        *,
        budget: int | None,
        datapool_embeddings: np.ndarray | None,
        datapool_ids: Iterable[str] | None,
        sequence_length: int | None,
        duplicate_distance: float,
        refresh_every: int,
        input_totals: Mapping[int, Mapping[str, float]] | None,
        check_budget: bool,
    ):
        self.t_start = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.inputs = inputs
        self.spec = spec
        self.n = inputs.n
        self.seed = spec.random_seed
        self.refresh_every = max(1, refresh_every)
        self.sequence_length = sequence_length or spec.selected_sequence_length
        self.duplicate_distance = duplicate_distance
        self.input_totals = {i: dict(t) for i, t in (input_totals or {}).items()}
        if budget is None:
            self.k = spec.budget(self.n)
        else:
            if check_budget and budget > self.n:
                raise SelectionConfigError(f"n_samples: {budget} is larger than the input ({self.n} frames)")
            self.k = min(budget, self.n)
        self.datapool_ids = {str(i) for i in datapool_ids} if datapool_ids is not None else set()
        self.datapool_embeddings = datapool_embeddings
        self.status = np.zeros(self.n, dtype=np.uint8)
        self.dead = np.zeros(self.n, dtype=bool)
        self.counts: dict[str, int] = {}

        # (index in the spec, entry): errors and labels name the spec's index
        self.entries = list(enumerate(spec.strategies))
        if spec.defaulted and inputs.predictions is None and not inputs.scores:
            # the default's WEIGHTS on uncertainty_entropy needs predictions: drop it
            self.entries = [(i, e) for i, e in self.entries if e.input.type is not InputType.SCORES]
        self.x: np.ndarray | None = None
        self.ub: np.ndarray | None = None
        needs_embeddings = any(e.input.type is InputType.EMBEDDINGS for _, e in self.entries)
        if needs_embeddings and inputs.embeddings is None:
            raise SelectionConfigError(
                "strategies: an EMBEDDINGS strategy needs embeddings, and the inputs have none"
            )
        if inputs.embeddings is not None:
            self.x = inputs.embeddings
        if datapool_embeddings is not None and self.x is None:
            raise SelectionConfigError(
                "datapool: datapool embeddings given but the inputs have no embeddings"
            )

    # -- preparation ---------------------------------------------------------------------

    def _mark(self, mask: np.ndarray, code: int) -> int:
        new = mask & ~self.dead
        count = int(new.sum())
        self.status[new] = code
        self.dead |= new
        if self.ub is not None:
            self.ub[new] = 0.0  # so that ub.max() is the largest distance among candidates
        return count

    def _mark_one(self, i: int, code: int) -> None:
        if not self.dead[i]:
            self.status[i] = code
            self.dead[i] = True
            if self.ub is not None:
                self.ub[i] = 0.0

    def prepare(self) -> None:
        t0 = time.perf_counter()
        n = self.n
        corrupt = np.zeros(n, dtype=bool) if self.inputs.corrupt is None else self.inputs.corrupt.copy()
        if self.x is not None and n:
            norms = _row_norms(self.x)
            bad = ~np.isfinite(norms) | (norms < 1e-6)
            corrupt |= bad
            good = ~bad
            if good.any() and float(np.abs(norms[good] - 1.0).max()) > 1e-3:
                _LOG.warning("embeddings are not L2-normalised: normalising a float32 copy")
                safe = np.where(good, norms, 1.0).astype(np.float32)
                x = self.x / safe[:, None]
                x[bad] = 0.0
                self.x = x
        self.counts["corrupt"] = self._mark(corrupt, _CORRUPT)

        in_pool = np.zeros(n, dtype=bool)
        if self.datapool_ids:
            in_pool = np.fromiter(
                (name in self.datapool_ids for name in self.inputs.frame_names), bool, count=n
            )
        self.counts["in_datapool"] = self._mark(in_pool, _DUPLICATE)

        dup = np.zeros(n, dtype=bool)
        if self.x is not None:
            dup[_exact_duplicates(self.x, ~self.dead)] = True
        self.counts["exact_duplicates"] = self._mark(dup, _DUPLICATE)

        # distances to the datapool start the diversity objective
        self.min_distance = max(
            [
                e.strategy.stopping_condition_minimum_distance or 0.0
                for _, e in self.entries
                if e.strategy.type is StrategyType.DIVERSITY
            ]
            or [0.0]
        )
        if self.x is not None:
            self.ub = np.full(n, _EMPTY_DISTANCE, dtype=np.float32)
            self.ub[self.dead] = 0.0
            dp = self.datapool_embeddings
            if dp is not None and len(dp):
                dp = np.asarray(dp, dtype=np.float32)
                dn = _row_norms(dp)
                if float(np.abs(dn - 1.0).max()) > 1e-3:
                    dp = dp / np.maximum(dn, 1e-12)[:, None]
                for a in range(0, len(dp), 256):
                    _min_distance_to(self.x, dp[a : a + 256], self.ub)
                near = self.ub < max(self.duplicate_distance, self.min_distance)
                self.counts["datapool_duplicates"] = self._mark(near, _DUPLICATE)
            else:
                self.counts["datapool_duplicates"] = 0
        else:
            self.counts["datapool_duplicates"] = 0
        self.timings["prepare_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        removed = np.zeros(n, dtype=bool)
        for i, e in self.entries:
            if e.strategy.type is StrategyType.THRESHOLD:
                values = self._numeric(i, e)
                ok = _compare(values, e.strategy.operation, float(e.strategy.threshold))  # type: ignore[arg-type]
                removed |= ~ok
        self.counts["removed"] = self._mark(removed, _REMOVED)
        self.timings["thresholds_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        alive = ~self.dead
        self.statics: list[_Static] = []
        self.balances: list[_BalanceState] = []
        self.div_strength = 0.0
        self.has_diversity = False
        self.objective_labels: list[str] = []
        self.objective_kinds: list[tuple[str, int]] = []
        for i, e in self.entries:
            st = e.strategy.type
            label = e.label(i)
            if st is StrategyType.THRESHOLD:
                continue
            if st is StrategyType.DIVERSITY:
                self.has_diversity = True
                self.div_strength += e.strategy.strength
                if ("diversity", 0) not in self.objective_kinds:
                    self.objective_kinds.append(("diversity", 0))
                    self.objective_labels.append(label)
                continue
            if st is StrategyType.BALANCE:
                bal = self._balance(i, e, alive)
                bal.label = label
                self.objective_kinds.append(("balance", len(self.balances)))
                self.balances.append(bal)
                self.objective_labels.append(label)
                continue
            if st is StrategyType.SIMILARITY:
                raw = self._similarity(i, e)
            elif st is StrategyType.TYPICALITY:
                raw = self._typicality()
            else:  # WEIGHTS
                raw = self._numeric(i, e)
            norm = _minmax(raw, alive)
            self.objective_kinds.append(("static", len(self.statics)))
            self.statics.append(
                _Static(i, label, raw, norm, e.strategy.strength, e.strategy.stopping_condition_max_sum)
            )
            self.objective_labels.append(label)
        base = np.ones(n, dtype=np.float32)
        for s in self.statics:
            if s.strength == 0:
                continue
            factor = s.norm if s.strength > 0 else (1.0 - s.norm)
            base *= factor if abs(s.strength) == 1 else np.power(factor, abs(s.strength), dtype=np.float32)
        self.base = base
        self.priority = _name_hash_uniform(self.inputs.frame_names, self.seed + 7919)
        self.timings["objectives_s"] = time.perf_counter() - t0

    def _err(self, i: int, section: str, key: str, msg: str) -> SelectionConfigError:
        return SelectionConfigError(f"strategies[{i}].{section}.{key}: {msg}")

    def _check_task(self, i: int, e: StrategyEntry) -> None:
        if e.input.task is not None and e.input.task != self.inputs.task_name:
            raise self._err(
                i,
                "input",
                "task",
                f"unknown task {e.input.task!r}; the predictions are task {self.inputs.task_name!r}",
            )

    def _numeric(self, i: int, e: StrategyEntry) -> np.ndarray:
        """The number per frame that WEIGHTS / THRESHOLD read (float64)."""
        it = e.input.type
        if it is InputType.SCORES:
            self._check_task(i, e)
            scores = self.inputs.score_arrays()
            if e.input.score not in scores:
                have = ", ".join(sorted(scores)) or "none (no predictions)"
                raise self._err(i, "input", "score", f"{e.input.score!r} is not available; scores: {have}")
            return np.asarray(scores[e.input.score], dtype=np.float64)
        if it is InputType.METADATA:
            values = self.inputs.metadata_values(e.input.key)  # type: ignore[arg-type]
            if values is None:
                have = ", ".join(sorted(self.inputs.metadata or {})) or "none"
                raise self._err(i, "input", "key", f"no metadata {e.input.key!r}; metadata keys: {have}")
            try:
                return np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError):
                raise self._err(
                    i,
                    "input",
                    "key",
                    f"metadata {e.input.key!r} is not numeric; {e.strategy.type.value} needs numbers",
                ) from None
        if it is InputType.PREDICTIONS:
            self._check_task(i, e)
            flat = self.inputs.flat_predictions
            if flat is None:
                raise self._err(i, "input", "name", "the inputs have no predictions")
            if e.input.key is None:
                return flat.boxes_per_frame().astype(np.float64)
            if e.input.key not in flat.category_names:
                raise self._err(
                    i,
                    "input",
                    "key",
                    f"class {e.input.key!r} is not in the schema ({', '.join(flat.category_names)})",
                )
            cls = flat.category_names.index(e.input.key)
            return np.bincount(flat.frame[flat.category == cls], minlength=flat.n_frames).astype(np.float64)
        if it is InputType.RANDOM:
            seed = e.input.random_seed if e.input.random_seed is not None else self.seed
            return _name_hash_uniform(self.inputs.frame_names, seed)
        raise self._err(i, "input", "type", f"{it.value} gives no number per frame")

    def _similarity(self, i: int, e: StrategyEntry) -> np.ndarray:
        assert self.x is not None
        inp = e.input
        if inp.query_embeddings is not None:
            q = np.asarray(inp.query_embeddings, dtype=np.float32)
            if q.ndim == 1:
                q = q[None, :]
        elif inp.query_frames is not None:
            pos = {name: j for j, name in enumerate(self.inputs.frame_names)}
            missing = [f for f in inp.query_frames if f not in pos]
            if missing:
                raise self._err(i, "input", "query_frames", f"not among the input frames: {missing[:5]}")
            q = self.x[[pos[f] for f in inp.query_frames]]
        else:
            sets = self.inputs.query_sets or {}
            keys = [f"{inp.dataset_id}/{inp.tag_name}", str(inp.tag_name), str(inp.dataset_id)]
            found = next((sets[k] for k in keys if k in sets), None)
            if found is None:
                raise self._err(
                    i, "input", "tag_name", f"query set {keys[0]!r} not given (SelectionInputs.query_sets)"
                )
            q = np.asarray(found, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.x.shape[1] or len(q) == 0:
            raise self._err(
                i, "input", "query_embeddings", f"expected (queries, {self.x.shape[1]}) embeddings"
            )
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        best = np.full(self.n, -1.0, dtype=np.float32)
        qt = np.ascontiguousarray(q.T)
        for a in range(0, self.n, ROW_CHUNK):
            b = min(self.n, a + ROW_CHUNK)
            best[a:b] = (self.x[a:b] @ qt).max(axis=1)
        return (1.0 + best.astype(np.float64)) / 2.0

    def _typicality(self) -> np.ndarray:
        assert self.x is not None
        alive = np.flatnonzero(~self.dead)
        if len(alive) <= TYPICALITY_REFERENCE:
            sims = np.zeros(self.n, dtype=np.float32)
            sims[alive] = scoring.knn_mean_similarity(self.x[alive], TYPICALITY_K)
            return sims.astype(np.float64)
        rng = np.random.default_rng(self.seed)
        ref_rows = np.sort(rng.choice(alive, TYPICALITY_REFERENCE, replace=False))
        ref_t = np.ascontiguousarray(self.x[ref_rows].T)
        column = np.full(self.n, -1, dtype=np.int64)
        column[ref_rows] = np.arange(len(ref_rows))
        r, k = len(ref_rows), TYPICALITY_K
        out = np.zeros(self.n, dtype=np.float64)
        step = max(1, 16_000_000 // r)
        for a in range(0, self.n, step):
            b = min(self.n, a + step)
            sims = self.x[a:b] @ ref_t
            own = column[a:b]
            rows = np.flatnonzero(own >= 0)
            sims[rows, own[rows]] = -np.inf  # a reference frame is not its own neighbour
            out[a:b] = np.partition(sims, r - k, axis=1)[:, r - k :].mean(axis=1)
        return out

    def _balance(self, i: int, e: StrategyEntry, alive: np.ndarray) -> _BalanceState:
        it = e.input.type
        dist = e.strategy.distribution or Distribution.TARGET
        target_map = dict(e.strategy.target or {})
        if it is InputType.PREDICTIONS:
            self._check_task(i, e)
            flat = self.inputs.flat_predictions
            if flat is None:
                raise self._err(
                    i, "input", "name", "BALANCE on PREDICTIONS needs predictions; the inputs have none"
                )
            classes = list(flat.category_names)

            def vectors(bucket_of_class: np.ndarray, n_buckets: int) -> np.ndarray:
                return flat.class_vectors(e.input.name.value, bucket_of_class, n_buckets)  # type: ignore[union-attr]

        else:  # METADATA, categorical
            values = self.inputs.metadata_values(e.input.key)  # type: ignore[arg-type]
            if values is None:
                raise self._err(i, "input", "key", f"no metadata {e.input.key!r}")
            labels = np.asarray([str(v) for v in values], dtype=object)
            classes = sorted(set(labels.tolist()))
            code_of = {c: j for j, c in enumerate(classes)}
            codes = np.fromiter((code_of[v] for v in labels), dtype=np.int64, count=len(labels))

            def vectors(bucket_of_class: np.ndarray, n_buckets: int) -> np.ndarray:
                out = np.zeros((len(codes), n_buckets), dtype=np.float32)
                b = bucket_of_class[codes]
                ok = b >= 0
                out[np.flatnonzero(ok), b[ok]] = 1.0
                return out

        if dist is Distribution.TARGET:
            unknown = [c for c in target_map if c not in classes]
            if unknown:
                raise self._err(
                    i,
                    "strategy",
                    "target",
                    f"unknown classes {unknown}; known: {', '.join(map(str, classes[:30]))}",
                )
            named = list(target_map)
            rest = [c for c in classes if c not in target_map]
            remainder = max(0.0, 1.0 - sum(target_map.values()))
            bucket = np.array(
                [named.index(c) if c in target_map else len(named) for c in classes], dtype=np.int64
            )
            if rest and remainder > 1e-9:
                # Lightly: what the target leaves over is the target for all other classes
                bucket_names = named + ["(other)"]
                target = np.array([target_map[c] for c in named] + [remainder])
            else:
                bucket = np.where(bucket == len(named), -1, bucket)
                bucket_names = named
                target = np.array([target_map[c] for c in named], dtype=np.float64)
                target = target / target.sum() if target.sum() > 0 else np.full(len(named), 1.0 / len(named))
            vecs = vectors(bucket, len(bucket_names))
        else:
            bucket = np.arange(len(classes))
            bucket_names = list(classes)
            vecs = vectors(bucket, len(classes))
            if dist is Distribution.UNIFORM:
                target = np.full(len(classes), 1.0 / max(1, len(classes)))
            else:  # INPUT
                given = self.input_totals.get(i)
                if given is None:
                    totals = vecs[alive].sum(axis=0, dtype=np.float64)
                else:  # all shards' totals, by class name
                    totals = np.array([float(given.get(str(c), 0.0)) for c in classes])
                total = float(np.sum(totals))
                target = (
                    np.asarray(totals, dtype=np.float64) / total
                    if total > 0
                    else np.full(len(classes), 1.0 / max(1, len(classes)))
                )
        input_totals = vecs[~(self.status == _CORRUPT)].sum(axis=0, dtype=np.float64)
        vt = np.ascontiguousarray(vecs.T)
        mass = vt.sum(axis=0)
        vv = np.einsum("ij,ij->j", vt, vt)
        tv = (target.astype(np.float32) @ vt).astype(np.float32)
        return _BalanceState(
            index=i,
            label="",
            strength=e.strategy.strength,
            classes=bucket_names,
            target=np.asarray(target, dtype=np.float64),
            vt=vt,
            mass=mass.astype(np.float32),
            vv=vv.astype(np.float32),
            tv=tv,
            input_totals=input_totals,
        )

    # -- greedy --------------------------------------------------------------------------

    def run(self) -> SelectionResult:
        self.prepare()
        t0 = time.perf_counter()
        n, k = self.n, self.k
        x, ub = self.x, self.ub
        lazy = self.has_diversity and self.div_strength > 0
        exact_div = self.has_diversity and self.div_strength < 0
        s_div = self.div_strength
        selected: list[int] = []
        anchors: list[bool] = []
        n_obj = len(self.objective_kinds)
        obj_rows: list[np.ndarray] = []
        raw_rows: list[np.ndarray] = []
        pending: list[int] = []
        weight_sums = [0.0 for _ in self.statics]
        stop_reason = "budget"
        self.counts["too_close"] = 0
        refreshes = 0
        order, first_of_video, last_of_video, rank = (
            self._sequence_index() if self.sequence_length > 1 else (None,) * 4
        )

        def flush() -> None:
            nonlocal refreshes
            if pending and ub is not None:
                _min_distance_to(x, x[pending], ub)
                pending.clear()
                refreshes += 1
                if self.min_distance > 0:
                    self.counts["too_close"] += self._mark(ub < self.min_distance, _TOO_CLOSE)

        def refresh_rows(rows: np.ndarray) -> None:
            if pending and ub is not None and len(rows):
                _min_distance_to(x, x[pending], ub, rows=rows)

        def div_factor(d: np.ndarray) -> np.ndarray:
            if not self.has_diversity or s_div == 0:
                return np.ones_like(d)
            if lazy:
                return d if s_div == 1 else np.power(d, s_div, dtype=np.float32)
            dmax = float(ub.max())  # type: ignore[union-attr]  (dead frames hold 0)
            o = 1.0 - d / max(dmax, 1e-12)
            return o if s_div == -1 else np.power(np.clip(o, 0, 1), -s_div, dtype=np.float32)

        while len(selected) < k:
            if not (~self.dead).any():
                stop_reason = "minimum_distance" if self.counts["too_close"] else "pool_exhausted"
                break
            if exact_div:
                flush()
            bal_norm: list[np.ndarray] = []
            bal_raw: list[np.ndarray] = []
            combined_static = self.base
            if self.balances:
                combined_static = self.base.copy()
                alive = ~self.dead
                for b in self.balances:
                    g = b.gains()
                    ga = g[alive]
                    lo, hi = (float(ga.min()), float(ga.max())) if len(ga) else (0.0, 0.0)
                    o = (g - np.float32(lo)) * np.float32(1.0 / (hi - lo)) if hi > lo else np.ones_like(g)
                    np.clip(o, 0.0, 1.0, out=o)
                    bal_raw.append(g)
                    bal_norm.append(o)
                    if b.strength != 0:
                        f = o if b.strength > 0 else 1.0 - o
                        combined_static *= (
                            f if abs(b.strength) == 1 else np.power(f, abs(b.strength), dtype=np.float32)
                        )
            pick = -1
            fbar: np.ndarray | None = None
            refreshed = 0
            while pick < 0:
                if fbar is None:
                    if not (~self.dead).any():
                        break
                    fbar = combined_static * div_factor(ub) if self.has_diversity else combined_static.copy()
                    np.putmask(fbar, self.dead, -1.0)
                i = int(np.argmax(fbar))
                if fbar[i] < 0:
                    break
                stale = lazy and bool(pending)
                if stale:
                    refresh_rows(np.array([i]))
                    refreshed += 1
                    if ub[i] < self.min_distance:  # type: ignore[index]
                        self._mark_one(i, _TOO_CLOSE)
                        self.counts["too_close"] += 1
                        fbar[i] = -1.0
                        continue
                    fbar[i] = combined_static[i] * div_factor(ub[i : i + 1])[0]
                f_i = fbar[i]
                # every frame whose (optimistic) product reaches the exact f_i may beat or tie i
                tied = np.flatnonzero(fbar >= f_i)
                if len(tied) == 1:
                    pick = i
                    break
                if stale and len(tied) > _TIE_BATCH:
                    # many stale bounds above f_i (typically the neighbourhood of the last
                    # picks): make the highest ones exact, then look again
                    if refreshed > max(_TIE_BATCH, n // 8):
                        flush()  # cheaper to refresh everything at once
                        fbar = None
                        refreshed = 0
                        continue
                    top = np.argpartition(fbar, n - _TIE_BATCH)[n - _TIE_BATCH :]
                    self._refresh_exact(top, fbar, combined_static, div_factor, refresh_rows)
                    refreshed += len(top)
                    continue
                if stale:
                    self._refresh_exact(tied, fbar, combined_static, div_factor, refresh_rows)
                    tied = tied[fbar[tied] >= 0]
                    if len(tied) == 0:
                        continue
                # exact values now: the best of them wins, ties go to the seeded priority
                exact = fbar[tied]
                cands = tied[exact >= exact.max()]
                pick = int(cands[np.argmin(self.priority[cands])]) if len(cands) > 1 else int(cands[0])
            if pick < 0:
                stop_reason = "minimum_distance" if self.counts["too_close"] else "pool_exhausted"
                break

            # record the pick's objective values
            row = np.full(n_obj, np.nan)
            raw = np.full(n_obj, np.nan)
            for j, (kind, idx) in enumerate(self.objective_kinds):
                if kind == "static":
                    row[j] = self.statics[idx].norm[pick]
                    raw[j] = self.statics[idx].raw[pick]
                elif kind == "balance":
                    row[j] = bal_norm[idx][pick]
                    raw[j] = bal_raw[idx][pick]
                else:
                    d = float(ub[pick])  # type: ignore[index]
                    dmax = float(ub.max())  # type: ignore[union-attr]  (dead frames hold 0)
                    row[j] = d / dmax if dmax > 0 else 1.0
                    raw[j] = d
            group = [pick]
            if self.sequence_length > 1:
                group = self._sequence_members(
                    pick, order, first_of_video, last_of_video, rank, k - len(selected)
                )
            stop_max_sum = False
            for f in group:
                self.status[f] = _SELECTED
                self.dead[f] = True
                selected.append(f)
                anchors.append(f == pick)
                obj_rows.append(row if f == pick else np.full(n_obj, np.nan))
                raw_rows.append(raw if f == pick else np.full(n_obj, np.nan))
                if ub is not None:
                    pending.append(f)
                    ub[f] = 0.0
                for b in self.balances:
                    b.add(f)
                for si, s in enumerate(self.statics):
                    if s.max_sum is not None:
                        v = s.raw[f]
                        weight_sums[si] += float(v) if np.isfinite(v) else 0.0
                        if weight_sums[si] >= s.max_sum:
                            stop_max_sum = True
            if stop_max_sum:
                stop_reason = "max_sum"
                break
            if len(pending) >= self.refresh_every:
                flush()
        self.timings["greedy_s"] = time.perf_counter() - t0
        self.counts["full_refreshes"] = refreshes
        self.timings["total_s"] = time.perf_counter() - self.t_start
        return self._result(selected, anchors, obj_rows, raw_rows, stop_reason)

    def _refresh_exact(self, rows, fbar, combined_static, div_factor, refresh_rows) -> None:
        """Make ``fbar[rows]`` exact (refresh their distances); drop those now too close."""
        refresh_rows(rows)
        if self.min_distance > 0:
            close = rows[self.ub[rows] < self.min_distance]  # type: ignore[index]
            if len(close):
                mask = np.zeros(self.n, dtype=bool)
                mask[close] = True
                self.counts["too_close"] += self._mark(mask, _TOO_CLOSE)
        fbar[rows] = combined_static[rows] * div_factor(self.ub[rows])  # type: ignore[index]
        fbar[rows[self.dead[rows]]] = -1.0

    def _sequence_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        videos = np.asarray(self.inputs.video_keys, dtype=object)
        _, vcode = np.unique(videos, return_inverse=True)
        order = np.lexsort((np.arange(self.n), self.inputs.frame_indices, vcode))
        rank = np.empty(self.n, dtype=np.int64)
        rank[order] = np.arange(self.n)
        vs = vcode[order]
        starts = np.r_[0, np.flatnonzero(np.diff(vs)) + 1]
        ends = np.r_[starts[1:], self.n]
        first = np.empty(self.n, dtype=np.int64)
        last = np.empty(self.n, dtype=np.int64)
        for a, b in zip(starts, ends, strict=True):
            first[order[a:b]] = a
            last[order[a:b]] = b
        return order, first, last, rank

    def _sequence_members(self, pick, order, first, last, rank, room) -> list[int]:
        """The pick plus available frames of its video around it, up to L (and ``room``)."""
        want = min(self.sequence_length, room)
        lo_lim, hi_lim = int(first[pick]), int(last[pick])
        r = int(rank[pick])
        left: list[int] = []
        right: list[int] = []
        li, ri = r - 1, r + 1
        need_left = (want - 1) // 2
        while 1 + len(left) + len(right) < want and (li >= lo_lim or ri < hi_lim):
            take_left = len(left) < need_left or ri >= hi_lim
            if take_left and li >= lo_lim:
                f = int(order[li])
                li -= 1
                if not self.dead[f]:
                    left.append(f)
            elif ri < hi_lim:
                f = int(order[ri])
                ri += 1
                if not self.dead[f]:
                    right.append(f)
            else:
                need_left = want  # only the left side is left
        # temporal order: left (reversed) + pick + right, the greedy pick first in pick order
        return [pick] + sorted(left + right, key=lambda f: int(rank[f]))

    def _result(self, selected, anchors, obj_rows, raw_rows, stop_reason) -> SelectionResult:
        sel = np.asarray(selected, dtype=np.int64)
        inputs = self.inputs
        videos = inputs.video_keys
        n_obj = len(self.objective_kinds)

        def n_videos(mask_or_idx: np.ndarray) -> int:
            idx = np.flatnonzero(mask_or_idx) if mask_or_idx.dtype == bool else mask_or_idx
            return len({videos[i] for i in idx})  # type: ignore[index]

        pool_ids = sorted(self.datapool_ids)
        pool_videos = {p[0] for p in (parse_frame_name(f) for f in pool_ids) if p}
        dp_n = (
            len(pool_ids)
            if pool_ids
            else (0 if self.datapool_embeddings is None else len(self.datapool_embeddings))
        )
        sel_videos = {videos[i] for i in sel}  # type: ignore[index]
        counts = {
            "input": self.n,
            "corrupt": int(self.counts.get("corrupt", 0)),
            "duplicate": int(
                self.counts.get("in_datapool", 0)
                + self.counts.get("exact_duplicates", 0)
                + self.counts.get("datapool_duplicates", 0)
            ),
            "removed": int(self.counts.get("removed", 0)),
            "selected": len(sel),
            "datapool_input": dp_n,
            "datapool_selected": dp_n + len(sel),
            "candidates": int(
                self.n
                - self.counts.get("corrupt", 0)
                - self.counts.get("in_datapool", 0)
                - self.counts.get("exact_duplicates", 0)
                - self.counts.get("datapool_duplicates", 0)
                - self.counts.get("removed", 0)
            ),
            "too_close": int(self.counts.get("too_close", 0)),
            "full_refreshes": int(self.counts.get("full_refreshes", 0)),
            "in_datapool": int(self.counts.get("in_datapool", 0)),
            "exact_duplicates": int(self.counts.get("exact_duplicates", 0)),
            "datapool_duplicates": int(self.counts.get("datapool_duplicates", 0)),
        }
        sizes = {
            "Input": {"Image": self.n, "Video": n_videos(np.ones(self.n, dtype=bool))},
            "Corrupt": {"Image": counts["corrupt"], "Video": n_videos(self.status == _CORRUPT)},
            "Duplicate": {"Image": counts["duplicate"], "Video": n_videos(self.status == _DUPLICATE)},
            "Removed": {"Image": counts["removed"], "Video": n_videos(self.status == _REMOVED)},
            "Selected": {"Image": len(sel), "Video": len(sel_videos)},
            "Datapool Input": {"Image": dp_n, "Video": len(pool_videos)},
            "Datapool Selected": {"Image": dp_n + len(sel), "Video": len(pool_videos | sel_videos)},
        }
        balance = []
        for b in self.balances:
            balance.append(
                {
                    "index": b.index,
                    "label": b.label,
                    "classes": list(b.classes),
                    "target": b.target.tolist(),
                    "input": (b.input_totals / b.input_totals.sum()).tolist()
                    if b.input_totals.sum() > 0
                    else [0.0] * len(b.classes),
                    "selected": b.selected_distribution().tolist(),
                    "input_totals": b.input_totals.tolist(),
                }
            )
        return SelectionResult(
            selected=sel,
            selected_names=[inputs.frame_names[i] for i in sel],
            anchor=np.asarray(anchors, dtype=bool),
            objective_names=list(self.objective_labels),
            objective_values=np.asarray(obj_rows, dtype=np.float64).reshape(len(sel), n_obj),
            raw_values=np.asarray(raw_rows, dtype=np.float64).reshape(len(sel), n_obj),
            stop_reason=stop_reason,
            budget=self.k,
            timings=dict(self.timings),
            counts=counts,
            sizes=sizes,
            balance=balance,
            spec=self.spec.model_dump(mode="json", exclude_none=True),
        )


def select(
    inputs: SelectionInputs,
    spec: SelectionSpec,
    *,
    datapool_embeddings: np.ndarray | None = None,
    datapool_ids: Iterable[str] | None = None,
    selected_sequence_length: int | None = None,
    budget: int | None = None,
    duplicate_distance: float = DUPLICATE_DISTANCE,
    refresh_every: int = REFRESH_EVERY,
    input_totals: Mapping[int, Mapping[str, float]] | None = None,
) -> SelectionResult:
    """Select frames from ``inputs`` following ``spec`` (see the module docstring).

    ``datapool_embeddings`` (P, D): frames selected or labeled before; diversity counts
    distance from them and input frames closer than the duplicate distance (or the
    DIVERSITY minimum distance) to one are dropped as duplicates. ``datapool_ids``: their
    frame names; an input frame with such a name is never selected. ``budget`` overrides
    the spec's (used by shards). ``input_totals``: per BALANCE strategy index, the class
    totals ``{class: total}`` a distribution INPUT follows (default: this input's).
    """
    run = _Run(
        inputs,
        spec,
        budget=budget,
        datapool_embeddings=datapool_embeddings,
        datapool_ids=datapool_ids,
        sequence_length=selected_sequence_length,
        duplicate_distance=duplicate_distance,
        refresh_every=refresh_every,
        input_totals=input_totals,
        check_budget=True,
    )
    result = run.run()
    _LOG.info(
        "selected %d of %d frames (%s) in %.2f s",
        len(result.selected),
        inputs.n,
        result.stop_reason,
        result.timings.get("total_s", 0.0),
    )
    return result


# ---------------------------------------------------------------------------------------
# shards (distributed greedy)
# ---------------------------------------------------------------------------------------


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
    run = _Run(
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
    import io
    import json

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
    import io
    import json

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
) -> SelectionResult:
    """Second greedy pass over the union of the shards' winners, budget k of the whole.

    The sizes table adds up the shards' Input / Corrupt / Duplicate / Removed rows;
    ``merged_from`` says for each selected frame which shard and which of its frames.
    """
    if not shards:
        raise ValueError("no shards to merge")
    union = SelectionInputs.concat([s.winners for s in shards])
    total = sum(s.result.counts["input"] for s in shards)
    k = spec.budget(total)
    totals: dict[int, dict[str, float]] = {}
    for s in shards:
        for idx, t in s.input_totals.items():
            acc = totals.setdefault(idx, {})
            for name, value in t.items():
                acc[name] = acc.get(name, 0.0) + float(value)
    run = _Run(
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


def coverage(embeddings: np.ndarray, selected: Sequence[int] | np.ndarray) -> float:
    """Mean distance from every frame to its nearest selected frame (lower is better)."""
    sel = np.asarray(selected, dtype=np.int64)
    if len(sel) == 0:
        return float("nan")
    d = np.full(len(embeddings), np.inf, dtype=np.float32)
    x = np.asarray(embeddings, dtype=np.float32)
    for a in range(0, len(sel), 256):
        _min_distance_to(x, x[sel[a : a + 256]], d)
    return float(d.mean(dtype=np.float64))
