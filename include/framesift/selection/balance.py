"""BALANCE: move the selected class (or metadata) distribution towards a target.

``g`` = how much adding a frame moves the selected distribution towards the target,
``g = D(now) - D(with it)`` with ``D`` the squared Euclidean distance between the selected
distribution (class vectors of the selected frames, summed and divided by their total)
and the target. Gains are recomputed for every frame at every pick: in O(N x B) for class
distributions of predictions; for categorical METADATA (each frame in one bucket, e.g. a
video or a shot) in O(B + N), one gain per bucket, so thousands of buckets stay cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from framesift.selection.inputs import SelectionInputs
from framesift.selection.spec import Distribution, InputType, StrategyEntry, check_task, strategy_error


@dataclass
class BalanceState:
    """One BALANCE strategy while picking: the class vectors of every frame (``vt``), the
    target, and the running totals of the selected frames (``c``, ``s``), so the gains of
    all frames cost a few vector operations per pick."""

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


@dataclass
class OneHotBalanceState:
    """BALANCE over a categorical value: frame ``i`` is in bucket ``bucket[i]`` (-1: in none),
    so adding it moves the selected distribution along one axis and its gain is its
    bucket's. The same interface and the same gains as :class:`BalanceState`."""

    index: int
    label: str
    strength: float
    classes: list[str]
    target: np.ndarray  # (B,)
    bucket: np.ndarray  # (N,) int64
    input_totals: np.ndarray  # (B,) float64
    c: np.ndarray = field(init=False)
    s: float = 0.0

    def __post_init__(self) -> None:
        self.c = np.zeros(len(self.target))
        self.tt = float(self.target @ self.target)
        self.in_bucket = self.bucket >= 0
        self.safe_bucket = np.where(self.in_bucket, self.bucket, 0)

    def current_distance(self) -> float:
        if self.s <= 0:
            return 1.0 + self.tt
        return float(((self.c / self.s - self.target) ** 2).sum())

    def gains(self) -> np.ndarray:
        s1 = self.s + 1.0
        q = self.c / s1
        # D(with one more frame of bucket b) = |q - t|^2 + 2 (q_b - t_b) / s1 + 1 / s1^2
        after = float(((q - self.target) ** 2).sum()) + 2.0 * (q - self.target) / s1 + 1.0 / s1**2
        g_bucket = (self.current_distance() - after).astype(np.float32)
        return np.where(self.in_bucket, g_bucket[self.safe_bucket], np.float32(0.0)).astype(np.float32)

    def add(self, i: int) -> None:
        if self.bucket[i] >= 0:
            self.c[self.bucket[i]] += 1.0
            self.s += 1.0

    def selected_distribution(self) -> np.ndarray:
        return self.c / self.s if self.s > 0 else np.zeros_like(self.c)


def build_balance(
    inputs: SelectionInputs,
    i: int,
    e: StrategyEntry,
    alive: np.ndarray,
    corrupt: np.ndarray,
    given_totals: Mapping[str, float] | None,
) -> BalanceState | OneHotBalanceState:
    """BALANCE strategy ``i``'s state over the inputs. ``alive``: the candidates (a distribution
    INPUT follows their classes, unless ``given_totals``, all shards' totals by class,
    are given); ``corrupt``: frames left out of the input totals."""
    it = e.input.type
    dist = e.strategy.distribution or Distribution.TARGET
    target_map = dict(e.strategy.target or {})
    if it is InputType.PREDICTIONS:
        check_task(i, e, inputs.task_name)
        flat = inputs.flat_predictions
        if flat is None:
            raise strategy_error(
                i, "input", "name", "BALANCE on PREDICTIONS needs predictions; the inputs have none"
            )
        classes = list(flat.category_names)

        def vectors(bucket_of_class: np.ndarray, n_buckets: int) -> np.ndarray:
            return flat.class_vectors(e.input.name.value, bucket_of_class, n_buckets)  # type: ignore[union-attr]

        vectors_of = "dense"
    else:  # METADATA, categorical: one bucket per frame
        values = inputs.metadata_values(e.input.key)  # type: ignore[arg-type]
        if values is None:
            raise strategy_error(i, "input", "key", f"no metadata {e.input.key!r}")
        labels = np.asarray([str(v) for v in values], dtype=object)
        classes, codes = np.unique(labels, return_inverse=True)
        classes = [str(c) for c in classes]
        vectors_of = "one-hot"

        def vectors(bucket_of_class: np.ndarray, n_buckets: int) -> np.ndarray:
            return bucket_of_class[codes]  # (N,) the bucket of each frame, -1: none

    if dist is Distribution.TARGET:
        unknown = [c for c in target_map if c not in classes]
        if unknown:
            raise strategy_error(
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
            given = given_totals
            if given is None:
                totals = _totals(vecs, alive, len(classes), vectors_of)
            else:  # all shards' totals, by class name
                totals = np.array([float(given.get(str(c), 0.0)) for c in classes])
            total = float(np.sum(totals))
            target = (
                np.asarray(totals, dtype=np.float64) / total
                if total > 0
                else np.full(len(classes), 1.0 / max(1, len(classes)))
            )
    input_totals = _totals(vecs, ~corrupt, len(bucket_names), vectors_of)
    if vectors_of == "one-hot":
        return OneHotBalanceState(
            index=i,
            label="",
            strength=e.strategy.strength,
            classes=bucket_names,
            target=np.asarray(target, dtype=np.float64),
            bucket=np.asarray(vecs, dtype=np.int64),
            input_totals=input_totals,
        )
    vt = np.ascontiguousarray(vecs.T)
    mass = vt.sum(axis=0)
    vv = np.einsum("ij,ij->j", vt, vt)
    tv = (target.astype(np.float32) @ vt).astype(np.float32)
    return BalanceState(
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


def _totals(vecs: np.ndarray, rows: np.ndarray, n_buckets: int, kind: str) -> np.ndarray:
    """Per bucket, the summed class vectors of the frames in ``rows`` (a mask)."""
    if kind == "one-hot":
        b = vecs[rows]
        return np.bincount(b[b >= 0], minlength=n_buckets).astype(np.float64)
    return vecs[rows].sum(axis=0, dtype=np.float64)
