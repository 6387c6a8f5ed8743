"""Active-learning scores: the book's worked example, Lightly's scaled scores, committees,
density weighting and image metadata, each pinned on hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from framesift.selection import scores

P1 = [0.05, 0.85, 0.10]  # confident
P2 = [0.35, 0.15, 0.50]  # uncertain


# --- the book's worked example -------------------------------------------------------


def test_least_confidence_worked_example():
    assert scores.least_confidence(P1) == pytest.approx(0.15)
    assert scores.least_confidence(P2) == pytest.approx(0.50)


def test_margin_both_forms_worked_example():
    # raw margin p1 - p2: SMALL means uncertain
    assert scores.margin(P1) == pytest.approx(0.85 - 0.10)  # 0.75
    assert scores.margin(P2) == pytest.approx(0.50 - 0.35)  # 0.15
    # Lightly's form 1 - (p1 - p2): LARGE means uncertain
    assert scores.margin_uncertainty(P1) == pytest.approx(0.25)
    assert scores.margin_uncertainty(P2) == pytest.approx(0.85)


def test_ratio_of_top_two_worked_example():
    assert scores.ratio_of_top_two(P1) == pytest.approx(8.5)
    assert scores.ratio_of_top_two(P2) == pytest.approx(1.43, abs=0.005)
    assert scores.ratio_of_top_two([1.0, 0.0]) == math.inf


def test_entropy_bits_worked_example():
    assert scores.entropy_bits(P1) == pytest.approx(0.748, abs=5e-4)
    assert scores.entropy_bits(P2) == pytest.approx(1.441, abs=5e-4)
    assert scores.entropy_bits([1.0, 0.0, 0.0]) == 0.0
    assert scores.entropy_bits([0.25] * 4) == pytest.approx(2.0)


def test_classic_measures_are_vectorised_over_rows():
    stack = np.array([P1, P2])
    np.testing.assert_allclose(scores.least_confidence(stack), [0.15, 0.50])
    np.testing.assert_allclose(scores.margin(stack), [0.75, 0.15])
    np.testing.assert_allclose(scores.entropy_bits(stack), [0.7476, 1.4406], atol=1e-4)


# --- Lightly's scores ----------------------------------------------------------------

CATS = [{"id": 0, "name": "car"}, {"id": 1, "name": "person"}, {"id": 2, "name": "bike"}]


def box(cat, score, probs=None):
    out = {"category_id": cat, "bbox": [0, 0, 10, 10], "score": score}
    if probs is not None:
        out["probabilities"] = probs
    return out


def test_lightly_scores_scaling_and_max_over_boxes():
    frames = [
        [box(1, 0.85, P1), box(2, 0.50, P2)],  # max over boxes: P2 dominates
        [box(1, 0.85, P1)],
        [],  # no boxes: uncertainty 0
    ]
    s = scores.compute_scores(frames, CATS)
    c = 3
    # least confidence scaled by C/(C-1)
    assert s["uncertainty_least_confidence"][0] == pytest.approx(0.50 * c / (c - 1))
    assert s["uncertainty_least_confidence"][1] == pytest.approx(0.15 * c / (c - 1))
    # margin 1 - (p1 - p2), already in [0, 1]
    assert s["uncertainty_margin"][0] == pytest.approx(0.85)
    assert s["uncertainty_margin"][1] == pytest.approx(0.25)
    # entropy divided by ln C
    assert s["uncertainty_entropy"][0] == pytest.approx(1.4406 / math.log2(3), abs=1e-4)
    assert s["uncertainty_entropy"][1] == pytest.approx(0.7476 / math.log2(3), abs=1e-4)
    for name in ("uncertainty_least_confidence", "uncertainty_margin", "uncertainty_entropy"):
        assert s[name][2] == 0.0
        assert np.all((s[name] >= 0) & (s[name] <= 1))
    # objectness: 1 - mean box score; 0 without boxes
    assert s["objectness_least_confidence"][0] == pytest.approx(1 - (0.85 + 0.50) / 2)
    assert s["objectness_least_confidence"][1] == pytest.approx(0.15)
    assert s["objectness_least_confidence"][2] == 0.0


def test_uniform_probabilities_give_one_and_one_hot_gives_zero():
    s = scores.compute_scores([[box(0, 0.34, [1 / 3] * 3)], [box(0, 1.0, [1.0, 0.0, 0.0])]], CATS)
    for name in ("uncertainty_least_confidence", "uncertainty_margin", "uncertainty_entropy"):
        assert s[name][0] == pytest.approx(1.0)
        assert s[name][1] == pytest.approx(0.0)


def test_box_without_probabilities_uses_score_as_two_class_vector():
    s = scores.compute_scores([[box(0, 0.8)], [box(0, 0.5)]], CATS)
    # [0.8, 0.2]: least confidence (1 - 0.8) * 2/1 = 0.4; margin 1 - 0.6 = 0.4;
    # entropy H(0.8) / ln 2 = 0.7219 bits
    assert s["uncertainty_least_confidence"][0] == pytest.approx(0.4)
    assert s["uncertainty_margin"][0] == pytest.approx(0.4)
    assert s["uncertainty_entropy"][0] == pytest.approx(0.7219, abs=1e-4)
    for name in ("uncertainty_least_confidence", "uncertainty_margin", "uncertainty_entropy"):
        assert s[name][1] == pytest.approx(1.0)


def test_object_frequency_penalty_and_rescaling():
    frames = [
        [box(0, 0.9), box(0, 0.9), box(0, 0.9)],  # 1 + 0.25 + 0.25 = 1.5
        [box(0, 0.9), box(1, 0.9)],  # 1 + 1 = 2.0 (two classes)
        [],  # 0
        [box(2, 0.9)],  # 1
    ]
    s = scores.compute_scores(frames, CATS)["object_frequency"]
    raw = np.array([1.5, 2.0, 0.0, 1.0])
    np.testing.assert_allclose(s, 0.9 + 0.1 * (raw - 0) / (2.0 - 0))
    assert s.min() == pytest.approx(0.9) and s.max() == pytest.approx(1.0)
    same = scores.compute_scores([[box(0, 0.9)], [box(1, 0.9)]], CATS)["object_frequency"]
    np.testing.assert_allclose(same, [1.0, 1.0])


def test_flat_predictions_round_trip_and_class_vectors():
    frames = [[box(0, 0.8, [0.8, 0.1, 0.1]), box(2, 0.6)], [], [box(1, 0.7, [0.2, 0.7, 0.1])]]
    flat = scores.FlatPredictions.from_lightly(frames, CATS)
    assert flat.n_frames == 3 and flat.n_boxes == 3 and flat.category_names == ["car", "person", "bike"]
    dist = flat.class_vectors("CLASS_DISTRIBUTION")
    np.testing.assert_allclose(dist, [[0.8, 0.1, 1.1], [0, 0, 0], [0.2, 0.7, 0.1]], atol=1e-6)
    counts = flat.class_vectors("CATEGORY_COUNT")
    np.testing.assert_array_equal(counts, [[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    sub = flat.subset([2, 0])
    np.testing.assert_allclose(sub.class_vectors("CATEGORY_COUNT"), [[0, 1, 0], [1, 0, 1]])
    # buckets: car alone, person+bike together
    np.testing.assert_allclose(
        flat.class_vectors("CLASS_DISTRIBUTION", np.array([0, 1, 1]), 2)[0], [0.8, 1.2]
    )


def test_schema_errors_are_clear():
    with pytest.raises(ValueError, match="category_id 7"):
        scores.FlatPredictions.from_lightly([[box(7, 0.5)]], CATS)
    with pytest.raises(ValueError, match="2 entries"):
        scores.FlatPredictions.from_lightly([[box(0, 0.5, [0.5, 0.5])]], CATS)


# --- committees ----------------------------------------------------------------------


def test_vote_entropy():
    agree = [[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]]
    split = [[0.9, 0.1], [0.2, 0.8]]
    assert scores.vote_entropy(agree) == 0.0
    assert scores.vote_entropy(split) == pytest.approx(math.log(2))
    assert scores.vote_entropy(split, normalize=True) == pytest.approx(1.0)
    # (models, samples, classes)
    stack = np.array([[[0.9, 0.1], [0.9, 0.1]], [[0.8, 0.2], [0.1, 0.9]]])
    np.testing.assert_allclose(scores.vote_entropy(stack), [0.0, math.log(2)])


def test_kl_to_consensus():
    same = [[0.7, 0.3], [0.7, 0.3]]
    assert scores.kl_to_consensus(same) == pytest.approx(0.0)
    p, q = np.array([0.9, 0.1]), np.array([0.5, 0.5])
    m = (p + q) / 2
    expected = 0.5 * (np.sum(p * np.log(p / m)) + np.sum(q * np.log(q / m)))
    assert scores.kl_to_consensus([p, q]) == pytest.approx(expected)
    # disagreement about the spread counts even when the top class is the same
    assert scores.kl_to_consensus([[0.99, 0.01], [0.6, 0.4]]) > 0.05


# --- density -------------------------------------------------------------------------


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_knn_mean_similarity_matches_brute_force_in_small_chunks():
    rng = np.random.default_rng(1)
    x = _unit(rng, 57, 6)
    k = 4
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    expected = np.sort(full, axis=1)[:, -k:].mean(axis=1)
    got = scores.knn_mean_similarity(x, k, chunk_elements=100)  # chunks of 1 row
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    ref = _unit(rng, 9, 6)
    expected_ref = np.sort(x @ ref.T, axis=1)[:, -k:].mean(axis=1)
    np.testing.assert_allclose(
        scores.knn_mean_similarity(x, k, reference=ref), expected_ref, rtol=1e-5, atol=1e-6
    )


def test_density_weighting_prefers_dense_regions():
    rng = np.random.default_rng(2)
    centre = np.zeros(8, np.float32)
    centre[0] = 1
    cluster = centre + 0.05 * rng.standard_normal((30, 8)).astype(np.float32)
    outlier = np.zeros((1, 8), np.float32)
    outlier[0, 5] = 1
    x = np.vstack([cluster, outlier])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    info = np.ones(len(x))
    w = scores.density_weighted(info, x, k=5)
    assert w[:30].min() > w[30]
    assert scores.density_weighted(info, x, k=5, beta=0.0) == pytest.approx(info)
