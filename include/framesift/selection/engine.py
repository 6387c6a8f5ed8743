"""The selection engine: thresholds first, then a greedy pick that maximises the product
of the objectives (each objective's values come from its own module).

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

**Sequences.** With ``selected_sequence_length = L > 1`` each greedy pick brings a run of
L frames around it (:mod:`framesift.selection.sequences`); the budget counts frames and
the last run is cut to fit.

**Scale.** Per pick: O(N) vector work (the product, the argmax, BALANCE's gains, in
float32) plus, per 64 picks, one pass of ``X @ C.T``. 1M x 256-d, 1,000 picks of
DIVERSITY x WEIGHTS x BALANCE on 2 shared cores: 41-56 s wall (38-40 s CPU) with a
load average of 2-4 from other work, about 25 s on a quieter machine; peak RSS 1.6x the
matrix, of which select's own allocations are 0.2x (bench/bench_selection.py).
TYPICALITY costs O(N x 10,000 x D) once.

Size (~600 lines): one greedy loop, :class:`SelectionRun`, with the state it keeps
(candidates, distances, balance counts, per-step values); the objectives' values come
from their own modules, and splitting the loop itself would spread one state over files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

import numpy as np

from framesift.selection.balance import BalanceState, build_balance
from framesift.selection.diversity import (
    DUPLICATE_DISTANCE,
    EMPTY_DISTANCE,
    exact_duplicates,
    min_distance_to,
    row_norms,
)
from framesift.selection.inputs import SelectionInputs, parse_frame_name
from framesift.selection.random_values import name_hash_uniform
from framesift.selection.result import SelectionResult
from framesift.selection.sequences import FrameOrder
from framesift.selection.similarity import similarity_values
from framesift.selection.spec import InputType, SelectionConfigError, SelectionSpec, StrategyType
from framesift.selection.threshold import threshold_mask
from framesift.selection.typicality import typicality_values
from framesift.selection.weights import StaticObjective, minmax_scale, numeric_values, soft_factor

_LOG = logging.getLogger("framesift.selection")


REFRESH_EVERY = 64  # pending centres before a full distance refresh


_TIE_BATCH = 4096  # stale candidates refreshed at a time before a full refresh


# status codes of frames
_ALIVE, _CORRUPT, _DUPLICATE, _REMOVED, _SELECTED, _TOO_CLOSE = 0, 1, 2, 3, 4, 5


class SelectionRun:
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
        self.floor = spec.objective_floor
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
        if spec.defaulted:
            # the default recipe takes what the inputs have: its WEIGHTS on uncertainty_entropy
            # needs predictions, its BALANCE over shots the shot metadata
            if inputs.predictions is None and not inputs.scores:
                self.entries = [(i, e) for i, e in self.entries if e.input.type is not InputType.SCORES]
            self.entries = [
                (i, e)
                for i, e in self.entries
                if e.input.type is not InputType.METADATA or inputs.metadata_values(e.input.key) is not None
            ]
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
            norms = row_norms(self.x)
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
            dup[exact_duplicates(self.x, ~self.dead)] = True
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
            self.ub = np.full(n, EMPTY_DISTANCE, dtype=np.float32)
            self.ub[self.dead] = 0.0
            dp = self.datapool_embeddings
            if dp is not None and len(dp):
                dp = np.asarray(dp, dtype=np.float32)
                dn = row_norms(dp)
                if float(np.abs(dn - 1.0).max()) > 1e-3:
                    dp = dp / np.maximum(dn, 1e-12)[:, None]
                for a in range(0, len(dp), 256):
                    min_distance_to(self.x, dp[a : a + 256], self.ub)
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
                values = numeric_values(self.inputs, i, e, self.seed)
                ok = threshold_mask(values, e.strategy.operation, float(e.strategy.threshold))  # type: ignore[arg-type]
                removed |= ~ok
        self.counts["removed"] = self._mark(removed, _REMOVED)
        self.timings["thresholds_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        alive = ~self.dead
        self.statics: list[StaticObjective] = []
        self.balances: list[BalanceState] = []
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
                bal = build_balance(
                    self.inputs, i, e, alive, self.status == _CORRUPT, self.input_totals.get(i)
                )
                bal.label = label
                self.objective_kinds.append(("balance", len(self.balances)))
                self.balances.append(bal)
                self.objective_labels.append(label)
                continue
            if st is StrategyType.SIMILARITY:
                raw = similarity_values(self.inputs, self.x, i, e)
            elif st is StrategyType.TYPICALITY:
                raw = typicality_values(self.x, self.dead, self.seed)
            else:  # WEIGHTS
                raw = numeric_values(self.inputs, i, e, self.seed)
            norm = minmax_scale(raw, alive)
            self.objective_kinds.append(("static", len(self.statics)))
            self.statics.append(
                StaticObjective(
                    i, label, raw, norm, e.strategy.strength, e.strategy.stopping_condition_max_sum
                )
            )
            self.objective_labels.append(label)
        base = np.ones(n, dtype=np.float32)
        for s in self.statics:
            if s.strength != 0:
                base *= soft_factor(s.norm, s.strength, self.floor)
        self.base = base
        self.priority = name_hash_uniform(self.inputs.frame_names, self.seed + 7919)
        self.timings["objectives_s"] = time.perf_counter() - t0

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
        frame_order = (
            FrameOrder.of(self.inputs.video_keys, self.inputs.frame_indices)
            if self.sequence_length > 1
            else None
        )

        def flush() -> None:
            nonlocal refreshes
            if pending and ub is not None:
                min_distance_to(x, x[pending], ub)
                pending.clear()
                refreshes += 1
                if self.min_distance > 0:
                    self.counts["too_close"] += self._mark(ub < self.min_distance, _TOO_CLOSE)

        def refresh_rows(rows: np.ndarray) -> None:
            if pending and ub is not None and len(rows):
                min_distance_to(x, x[pending], ub, rows=rows)

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
                        combined_static *= soft_factor(o, b.strength, self.floor)
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
                group = frame_order.sequence(pick, min(self.sequence_length, k - len(selected)), self.dead)
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
    run = SelectionRun(
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
