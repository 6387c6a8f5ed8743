"""The selection config in Lightly's shape, validated.

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
How a valid spec runs is :mod:`framesift.selection.engine`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum, StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from framesift.config.schema import DEFAULT_COLD_START_LABELS, DEFAULT_OBJECTIVE_FLOOR
from framesift.selection.regime import Regime


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
    # every soft objective's factor lies in [objective_floor, 1]: it never vetoes a frame
    objective_floor: float = Field(DEFAULT_OBJECTIVE_FLOOR, ge=0, le=1)
    regime: dict[str, Any] | None = None  # the default recipe's regime (Regime.to_dict)

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
    if hasattr(inp.get("query_embeddings"), "tolist"):  # a numpy array (spec stays free of numpy)
        inp["query_embeddings"] = inp["query_embeddings"].tolist()
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


def default_strategies(regime: Regime | None = None) -> list[StrategyEntry]:
    """What runs when the config names no strategy (see :mod:`framesift.selection.regime`):
    DIVERSITY x TYPICALITY while few frames are labeled, DIVERSITY x WEIGHTS on SCORES
    ``uncertainty_entropy`` (Lightly's "CORAL" recipe: frames far from everything already
    picked in which the detector hesitates between classes) once enough are, a blend in
    between. Without predictions, the WEIGHTS part is dropped at select time.
    """
    regime = regime or Regime.for_labels(None, DEFAULT_COLD_START_LABELS)
    return [parse_strategy(i, raw) for i, raw in enumerate(regime.recipe())]


def parse_selection(
    sel: Any,
    important_classes: Sequence[str] = (),
    *,
    selected_sequence_length: int = 1,
    labeled: int | None = None,
) -> SelectionSpec:
    """``SelectionConfig`` (or its dict) + the top-level ``important_classes`` -> spec.

    Book keys: ``balance: true`` adds a BALANCE strategy on PREDICTIONS
    CLASS_DISTRIBUTION whose distribution follows ``balance_strategy``: UNIFORM (default)
    = equal fractions over ``important_classes`` (all classes of the task when none are
    listed), INPUT = the input's own class distribution, TARGET = needs ``balance`` to be
    a mapping ``{class: fraction}`` (a mapping alone implies TARGET). ``balance: false``
    or absent adds nothing. When ``strategies`` is empty the default
    (``default_strategies``) is used, plus that BALANCE if asked for; its regime follows
    ``labeled`` (frames in the datapool; None: not known) and ``cold_start_labels``.
    """
    data = sel.model_dump() if hasattr(sel, "model_dump") else dict(sel or {})
    known = (
        "n_samples",
        "proportion_samples",
        "strategies",
        "balance",
        "balance_strategy",
        "random_seed",
        "objective_floor",
        "cold_start_labels",
    )
    # how a selection runs (shards), not what it selects
    data = {k: v for k, v in data.items() if k not in ("shard_max_frames", "shard_oversample")}
    _unknown_keys("selection", data, known)
    strategies = parse_strategies(data.get("strategies") or [])
    defaulted = not strategies
    cold_start_labels = data.get("cold_start_labels")
    regime = Regime.for_labels(
        labeled, DEFAULT_COLD_START_LABELS if cold_start_labels is None else int(cold_start_labels)
    )
    if defaulted:
        strategies = default_strategies(regime)
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
            objective_floor=DEFAULT_OBJECTIVE_FLOOR
            if data.get("objective_floor") is None
            else data["objective_floor"],
            regime=regime.to_dict() if defaulted else None,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SelectionConfigError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def strategy_error(index: int, section: str, key: str, msg: str) -> SelectionConfigError:
    """An error about ``strategies[index].<section>.<key>`` found while selecting."""
    return SelectionConfigError(f"strategies[{index}].{section}.{key}: {msg}")


def check_task(index: int, entry: StrategyEntry, task_name: str) -> None:
    """A strategy naming a prediction task must name the task the predictions are."""
    if entry.input.task is not None and entry.input.task != task_name:
        raise strategy_error(
            index,
            "input",
            "task",
            f"unknown task {entry.input.task!r}; the predictions are task {task_name!r}",
        )
