"""Review metrics on hand-computed cases: IoU, matching, kappa, annotator quality, majority vote."""

import math

import pytest

from framesift.config.schema import ReviewConfig
from framesift.loop.review import (
    annotator_quality,
    cohens_kappa,
    iou,
    majority_vote,
    match_frame,
    paired_categories,
)


def test_iou_hand_computed():
    # 10x10 boxes overlapping in a 5x10 strip: 50 / (100 + 100 - 50) = 1/3
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(1 / 3)
    # a 4x4 box inside a 10x10 one: 16 / 100
    assert iou((0, 0, 10, 10), (3, 3, 4, 4)) == pytest.approx(0.16)
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # degenerate: no area, no overlap


def test_match_frame_names_each_kind_of_disagreement():
    labels = [
        ("car", (0, 0, 10, 10)),  # predicted exactly: agreement
        ("car", (100, 0, 10, 10)),  # predicted as a person: class swap
        ("person", (200, 0, 10, 10)),  # predicted shifted by 2 px: IoU 80/120 = 0.667 -> poor localisation
        ("person", (300, 0, 10, 10)),  # no prediction: missed
    ]
    preds = [
        ("car", (0, 0, 10, 10)),
        ("person", (100, 0, 10, 10)),
        ("person", (202, 0, 10, 10)),
        ("car", (400, 400, 10, 10)),  # no label: spurious
    ]
    r = match_frame(preds, labels, ReviewConfig(match_iou=0.5, localisation_iou=0.75), frame="f")
    assert [s["label"][0] for s in r.class_swaps] == ["car"] and r.class_swaps[0]["prediction"][0] == "person"
    assert len(r.poor_localisation) == 1 and r.poor_localisation[0]["iou"] == pytest.approx(
        80 / 120, abs=1e-4
    )
    assert [m["label"] for m in r.missed] == [["person", [300.0, 0.0, 10.0, 10.0]]]
    assert [s["prediction"][0] for s in r.spurious] == ["car"]
    assert r.n_issues == 4 and r.disagreement == pytest.approx(4 / 4)


def test_matching_is_greedy_by_iou_and_each_box_is_used_once():
    labels = [("a", (0, 0, 10, 10))]
    preds = [("a", (1, 0, 10, 10)), ("a", (0, 0, 10, 10))]  # the exact one wins, the other is spurious
    r = match_frame(preds, labels)
    assert not r.poor_localisation and len(r.spurious) == 1 and r.spurious[0]["prediction"][1][0] == 1.0


def test_cohens_kappa_hand_computed():
    # 10 items, 2 categories. agree on 7 (4 yes/yes, 3 no/no); rater a: 6 yes, b: 5 yes.
    a = ["y"] * 4 + ["n"] * 3 + ["y"] * 2 + ["n"]
    b = ["y"] * 4 + ["n"] * 3 + ["n"] * 2 + ["y"]
    p_o = 0.7
    p_e = (6 * 5 + 4 * 5) / 100  # 0.5
    assert cohens_kappa(a, b) == pytest.approx((p_o - p_e) / (1 - p_e))  # 0.4
    assert cohens_kappa(a, a) == 1.0
    assert cohens_kappa(["y", "n"], ["n", "y"]) == pytest.approx(-1.0)
    assert cohens_kappa(["y", "y"], ["y", "y"]) == 1.0  # one category only: perfect agreement
    assert math.isnan(cohens_kappa([], []))
    with pytest.raises(ValueError):
        cohens_kappa(["y"], [])


def test_annotator_accuracy_and_kappa_on_control_frames():
    control = {
        "c1.png": [("car", (0, 0, 10, 10)), ("person", (50, 50, 10, 10))],
        "c2.png": [("car", (0, 0, 10, 10))],
    }
    good = [
        {
            "frame_name": "c1.png",
            "annotator": "good",
            "boxes": [("car", (0, 0, 10, 10)), ("person", (50, 50, 10, 10))],
        },
        {"frame_name": "c2.png", "annotator": "good", "boxes": [("car", (1, 0, 10, 10))]},
        {"frame_name": "other.png", "annotator": "good", "boxes": []},  # not a control frame: ignored
    ]
    # sloppy: swaps a class on c1, misses the car on c2 and draws a box where nothing is
    sloppy = [
        {
            "frame_name": "c1.png",
            "annotator": "sloppy",
            "boxes": [("person", (0, 0, 10, 10)), ("person", (50, 50, 10, 10))],
        },
        {"frame_name": "c2.png", "annotator": "sloppy", "boxes": [("car", (100, 100, 10, 10))]},
    ]
    q = annotator_quality(good + sloppy, control, ReviewConfig(min_accuracy=0.9, min_kappa=0.8))
    assert q["good"]["accuracy"] == 1.0 and q["good"]["kappa"] == 1.0 and q["good"]["passed"]
    assert q["good"]["control_frames"] == 2 and q["good"]["items"] == 3
    # sloppy items (truth, given): (car, person), (person, person), (car, <none>), (<none>, car)
    t, g = paired_categories(control["c2.png"], sloppy[1]["boxes"])
    assert (t, g) == (["car", "<none>"], ["<none>", "car"])
    assert q["sloppy"]["items"] == 4 and q["sloppy"]["accuracy"] == pytest.approx(0.25)
    # truth marginals car 2, person 1, none 1; given person 2, none 1, car 1 -> p_e = (2*1 + 1*2 + 1*1)/16
    p_e = 5 / 16
    assert q["sloppy"]["kappa"] == pytest.approx((0.25 - p_e) / (1 - p_e))
    assert not q["sloppy"]["passed"]


def test_majority_vote_keeps_what_most_annotators_drew():
    a = [("car", (0, 0, 10, 10)), ("person", (50, 50, 10, 10))]
    b = [("car", (2, 0, 10, 10)), ("dog", (200, 200, 5, 5))]
    c = [("truck", (0, 0, 10, 10)), ("person", (51, 50, 10, 10))]
    votes = majority_vote([a, b, c])
    assert ("car", (0.67, 0.0, 10.0, 10.0)) in votes  # 2 of 3 say car; the box is the mean
    assert any(cls == "person" for cls, _ in votes)  # 2 of 3 drew it
    assert not any(cls == "dog" for cls, _ in votes)  # 1 of 3
    assert majority_vote([a, []]) == []  # 1 of 2 is not a majority
