"""Soft objectives never veto a frame, the cold-start regime of the default recipe, and
properties of the greedy pick (clusters covered, minimum distance) checked against a
brute-force reference written apart from the engine."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framesift.selection.engine import select
from framesift.selection.inputs import SelectionInputs
from framesift.selection.spec import StrategyType, parse_selection

CATS = [{"id": 0, "name": "car"}, {"id": 1, "name": "person"}]
DIV = {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}
ENTROPY = {"input": {"type": "SCORES", "score": "uncertainty_entropy"}, "strategy": {"type": "WEIGHTS"}}


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def names(n: int, video: str = "cam") -> list[str]:
    return [f"{video}-{i:03d}-mp4.png" for i in range(n)]


def box(p_car: float) -> dict:
    return {"category_id": 0 if p_car >= 0.5 else 1, "bbox": [0, 0, 4, 4], "score": 0.9,
            "probabilities": [p_car, 1 - p_car]}  # fmt: skip


def spec(strategies, n_samples, **kw):
    return parse_selection({"strategies": strategies, "n_samples": n_samples, **kw})


def clusters(k: int, per: int, d: int = 16, radius: float = 0.002, seed: int = 0):
    """``per`` frames around each of ``k`` orthogonal centres (1.41 apart), cluster labels."""
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:k]
    x = np.repeat(centres, per, axis=0) + radius * rng.standard_normal((k * per, d))
    return unit(x), np.repeat(np.arange(k), per)


# --- never a veto ------------------------------------------------------------------------


def test_frames_without_detections_compete_on_diversity():
    # three near-identical frames where the detector hesitates (high entropy) and three
    # distinct scenes without a single detection (entropy 0, the minimum)
    x, _ = clusters(4, 3, radius=0.001)
    x = np.concatenate([x[:3], x[3::3]])  # cluster 0 three times, clusters 1-3 once each
    preds = [[box(0.5)], [box(0.5)], [box(0.5)], [], [], []]
    inp = SelectionInputs(names(6), x, predictions=preds, categories=CATS)
    r = select(inp, spec([DIV, ENTROPY], 4))
    picked = sorted(int(i) for i in r.selected)
    # one of the hesitant near-duplicates, then every scene without detections
    assert picked[1:] == [3, 4, 5] and picked[0] in (0, 1, 2), picked
    assert np.all(r.raw_values[:, 0] > 0.5), "no pick may be a near-duplicate of another"


def test_the_worst_balance_candidate_still_competes():
    # target 90 % person: four near-identical person frames and one car frame far away. After
    # the first person, another person keeps the distribution where it is (gain 0) and the car
    # moves it away from the target (the worst gain, scaled to 0) - but the car is the only
    # new scene, so it is the second pick
    x = unit(np.r_[np.tile([1.0, 0, 0], (4, 1)) + 0.001 * np.arange(12).reshape(4, 3), [[0, 1.0, 0]]])
    preds = [[box(0.0)]] * 4 + [[box(1.0)]]
    bal = {"input": {"type": "PREDICTIONS", "name": "CLASS_DISTRIBUTION"},
           "strategy": {"type": "BALANCE", "target": {"car": 0.1, "person": 0.9}}}  # fmt: skip
    inp = SelectionInputs(names(5), x, predictions=preds, categories=CATS)
    r = select(inp, spec([DIV, bal], 2))
    assert int(r.selected[1]) == 4
    assert r.objective_values[1, 1] == 0.0  # the car's scaled balance value: the worst


@pytest.mark.parametrize("floor", [0.0, 0.25, 0.6])
def test_objective_floor_is_the_factor_of_the_worst_frame(floor):
    # two frames at the same distance from the datapool: weights 0 and 1. With floor f the
    # worse frame's product is f times the better one's; a third frame farther by 1 / f
    # ties it, farther by more wins
    x = unit([[1, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    w = [1.0, 0.0, 0.5]
    inp = SelectionInputs(names(3), x, metadata={"w": w})
    weights = {"input": {"type": "METADATA", "key": "w"}, "strategy": {"type": "WEIGHTS"}}
    r = select(inp, spec([DIV, weights], 3, objective_floor=floor), datapool_embeddings=unit([[0.0, -1.0]]))
    assert r.spec["objective_floor"] == floor
    scaled = r.objective_values[:, 1]
    assert set(np.round(scaled, 6)) == {0.0, 0.5, 1.0}  # reported values stay min-max in [0, 1]
    if floor == 0.0:  # the old behaviour: weight 0 is a veto until nothing else is left
        assert int(r.selected[-1]) == 1


# --- brute-force reference: diversity x weights x balance ------------------------------


def _reference(x, w, vec, target, k, floor):
    """Greedy diversity x weights x balance recomputed from scratch at every step.

    Written apart from the engine: factors floor + (1 - floor) * o with o min-max over the
    candidates (weights once, balance gains at every step); a gain is how much the frame
    moves the selected class distribution towards the target in squared distance."""
    n = len(x)
    alive = np.ones(n, bool)
    d = np.full(n, 2.0)
    wn = floor + (1 - floor) * (w - w.min()) / (w.max() - w.min())
    counts = np.zeros(vec.shape[1])
    out = []

    def dist2(c):
        return float(((c / c.sum() - target) ** 2).sum()) if c.sum() > 0 else 1.0 + float(target @ target)

    for _ in range(k):
        now = dist2(counts)
        gain = np.array([now - dist2(counts + vec[i]) if vec[i].sum() > 0 else 0.0 for i in range(n)])
        ga = gain[alive]
        g = (gain - ga.min()) / (ga.max() - ga.min()) if ga.max() > ga.min() else np.ones(n)
        score = np.where(alive, d * wn * (floor + (1 - floor) * np.clip(g, 0, 1)), -1.0)
        i = int(np.argmax(score))
        out.append(i)
        alive[i] = False
        counts += vec[i]
        d = np.minimum(d, np.sqrt(np.maximum(2 - 2 * (x.astype(np.float64) @ x[i]), 0)))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diversity_weights_balance_match_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    n = 120
    x = unit(rng.standard_normal((n, 6)))
    w = rng.uniform(0, 1, n)
    p_car = rng.uniform(0, 1, n)
    has_box = rng.uniform(0, 1, n) < 0.7  # 30 % of the frames have no detection
    preds = [[box(float(p))] if b else [] for p, b in zip(p_car, has_box, strict=True)]
    vec = np.array([[p, 1 - p] if b else [0.0, 0.0] for p, b in zip(p_car, has_box, strict=True)])
    target = np.array([0.7, 0.3])
    strategies = [
        DIV,
        {"input": {"type": "METADATA", "key": "w"}, "strategy": {"type": "WEIGHTS"}},
        {"input": {"type": "PREDICTIONS", "name": "CLASS_DISTRIBUTION"},
         "strategy": {"type": "BALANCE", "target": {"car": 0.7, "person": 0.3}}},
    ]  # fmt: skip
    inp = SelectionInputs(names(n), x, predictions=preds, categories=CATS, metadata={"w": w})
    r = select(inp, spec(strategies, 30, objective_floor=0.3))
    assert [int(i) for i in r.selected] == _reference(x, w, vec, target, 30, 0.3)


# --- properties ----------------------------------------------------------------------------


@st.composite
def clustered_problems(draw):
    k = draw(st.integers(2, 8))
    per = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 10_000))
    x, label = clusters(k, per, seed=seed)
    rng = np.random.default_rng(seed + 1)
    n = len(x)
    # scores that would favour some clusters entirely: whole clusters at the minimum
    w = rng.uniform(0, 1, n) * (rng.uniform(0, 1, k)[label] > 0.5)
    strength = draw(st.sampled_from([0.5, 1.0, 2.0, -1.0]))
    budget = draw(st.integers(k, n))
    return x, label, w, strength, budget, k


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clustered_problems())
def test_every_cluster_gets_a_pick_whatever_the_scores(problem):
    x, label, w, strength, budget, k = problem
    weights = {
        "input": {"type": "METADATA", "key": "w"},
        "strategy": {"type": "WEIGHTS", "strength": strength},
    }
    inp = SelectionInputs(names(len(x)), x, metadata={"w": w})
    r = select(inp, spec([DIV, weights], budget))
    assert set(label[r.selected]) == set(range(k))
    # and the first k picks are one per cluster: a covered cluster's frames are 0.004 apart,
    # any uncovered one is 1.41 away, and the weights' factor is at least 0.25 ** 2
    assert len(set(label[r.selected[:k]])) == k


@st.composite
def spread_problems(draw):
    n = draw(st.integers(4, 60))
    seed = draw(st.integers(0, 10_000))
    rng = np.random.default_rng(seed)
    x = unit(rng.standard_normal((n, draw(st.integers(2, 5)))))
    return x, rng.uniform(0, 1, n), draw(st.floats(0.05, 1.2)), draw(st.integers(1, n))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spread_problems())
def test_no_pair_closer_than_the_minimum_distance_while_a_farther_frame_is_left(problem):
    x, w, min_distance, budget = problem
    div = {"input": {"type": "EMBEDDINGS"},
           "strategy": {"type": "DIVERSITY", "stopping_condition_minimum_distance": min_distance}}  # fmt: skip
    weights = {"input": {"type": "METADATA", "key": "w"}, "strategy": {"type": "WEIGHTS"}}
    inp = SelectionInputs(names(len(x)), x, metadata={"w": w})
    r = select(inp, spec([div, weights], budget))
    sel = [int(i) for i in r.selected]
    xs = x[sel].astype(np.float64)
    dists = np.sqrt(np.maximum(2 - 2 * xs @ xs.T, 0))[np.triu_indices(len(sel), 1)]
    rest = [i for i in range(len(x)) if i not in sel]
    to_sel = np.sqrt(np.maximum(2 - 2 * x[rest].astype(np.float64) @ xs.T, 0)).min(axis=1) if rest else []
    farther_left = bool(np.any(np.asarray(to_sel) > min_distance + 1e-5))
    assert not (np.any(dists < min_distance - 1e-5) and farther_left)
    if len(sel) < budget:  # stopped early: nothing farther than the minimum distance is left
        assert r.stop_reason == "minimum_distance" and not farther_left


# --- the budget-aware default recipe ------------------------------------------------------


def types(s) -> dict:
    """Strength by strategy type, besides the BALANCE over shots every default recipe has."""
    shots = [e for e in s.strategies if e.input.key == "shot"]
    assert len(shots) == (1 if s.defaulted else 0)
    return {e.strategy.type: e.strategy.strength for e in s.strategies if e.input.key != "shot"}


def test_cold_start_favours_typical_and_diverse_frames():
    s = parse_selection({"n_samples": 10}, labeled=412)
    assert types(s) == {StrategyType.DIVERSITY: 1.0, StrategyType.TYPICALITY: 0.25}
    assert s.regime["name"] == "cold_start"
    assert s.regime["text"] == "regime: cold start, 412 labeled frames < 500 (diversity x typicality 0.25)"


def test_uncertainty_gains_weight_as_labels_grow():
    half = parse_selection({"n_samples": 10}, labeled=750)
    assert types(half) == {
        StrategyType.DIVERSITY: 1.0,
        StrategyType.TYPICALITY: 0.125,
        StrategyType.WEIGHTS: 0.5,
    }
    assert half.regime["name"] == "warming"
    warm = parse_selection({"n_samples": 10}, labeled=1000)
    assert types(warm) == {StrategyType.DIVERSITY: 1.0, StrategyType.WEIGHTS: 1.0}
    assert warm.regime["text"].startswith("regime: warm, 1000 labeled frames >= 1000")
    never = parse_selection({"n_samples": 10, "cold_start_labels": 0}, labeled=0)
    assert never.regime["name"] == "warm"
    custom = parse_selection({"n_samples": 10, "cold_start_labels": 50}, labeled=60)
    assert custom.regime["name"] == "warming" and custom.regime["uncertainty"] == pytest.approx(0.2)


def test_configured_strategies_run_as_written():
    s = parse_selection({"n_samples": 10, "strategies": [DIV]}, labeled=0)
    assert types(s) == {StrategyType.DIVERSITY: 1.0} and s.regime is None


def test_cold_start_covers_dense_regions_before_outliers():
    # a dense scene of 30 frames, a second one of 30, and 6 scattered outliers: with 2 picks
    # the cold-start recipe takes one frame from each dense scene; plain diversity (k-center)
    # starts with outliers
    rng = np.random.default_rng(3)
    dense = np.concatenate([np.eye(8)[0] + 0.05 * rng.standard_normal((30, 8)),
                            np.eye(8)[1] + 0.05 * rng.standard_normal((30, 8))])  # fmt: skip
    outliers = -(np.eye(8)[0] + np.eye(8)[1]) + 0.6 * rng.standard_normal((6, 8))
    x = unit(np.concatenate([dense, outliers]))
    inp = SelectionInputs(names(len(x)), x)
    cold = select(inp, parse_selection({"n_samples": 2}, labeled=0))
    assert sorted(int(i) // 30 for i in cold.selected) == [0, 1]
    plain = select(inp, spec([DIV], 2))
    assert any(int(i) >= 60 for i in plain.selected)


def test_a_static_video_gives_a_handful_and_a_montage_gets_its_scenes():
    # video A: ten minutes of a parked camera (600 near-identical frames) in which the detector
    # hesitates on a box; video B: a 30-frame montage of 6 shots without a single detection
    rng = np.random.default_rng(7)
    static = np.eye(16)[0] + 0.002 * rng.standard_normal((600, 16))
    shots = np.repeat(np.eye(16)[1:7], 5, axis=0) + 0.02 * rng.standard_normal((30, 16))
    x = unit(np.concatenate([static, shots]))
    preds = [[box(0.5)]] * 600 + [[]] * 30
    names_ = names(600, "parked") + names(30, "montage")
    inp = SelectionInputs(names_, x, predictions=preds, categories=CATS)
    shot = np.r_[np.zeros(600, int), 1 + np.arange(30) // 5]
    for labeled in (0, 5000):  # the cold-start recipe and the warm one (with uncertainty)
        r = select(inp, parse_selection({"n_samples": 8}, labeled=labeled))
        picked = shot[r.selected]
        assert (picked == 0).sum() <= 2, (labeled, picked)  # a handful of the parked hours
        assert set(picked) >= set(range(1, 7)), (labeled, picked)  # every shot of the montage


def test_one_hot_balance_gains_equal_the_dense_ones():
    from framesift.selection.balance import BalanceState, OneHotBalanceState

    rng = np.random.default_rng(11)
    n, b = 400, 7
    bucket = rng.integers(-1, b, n)  # -1: in no bucket of the target
    target = rng.dirichlet(np.ones(b))
    vecs = np.zeros((n, b), np.float32)
    vecs[np.flatnonzero(bucket >= 0), bucket[bucket >= 0]] = 1.0
    vt = np.ascontiguousarray(vecs.T)
    dense = BalanceState(0, "", 1.0, [str(i) for i in range(b)], target, vt, vt.sum(axis=0),
                         np.einsum("ij,ij->j", vt, vt), (target.astype(np.float32) @ vt).astype(np.float32),
                         np.zeros(b))  # fmt: skip
    onehot = OneHotBalanceState(0, "", 1.0, [str(i) for i in range(b)], target, bucket, np.zeros(b))
    for i in rng.permutation(n)[:60]:
        np.testing.assert_allclose(onehot.gains(), dense.gains(), rtol=1e-4, atol=1e-5)
        dense.add(int(i))
        onehot.add(int(i))
    np.testing.assert_allclose(onehot.selected_distribution(), dense.selected_distribution())
