"""Stopping criteria: each criterion, the outcome's priority, test-set versions."""

import pytest

from framesift.config.schema import EvaluationConfig
from framesift.loop.gate import CONTINUE, HOLD, NA, STOP, TRIGGERED, decide, format_decision


def ev(i, m, train=None, version="t1"):
    return {
        "_id": f"e{i}",
        "test_set_version": version,
        "champion_metrics": {"map50_95": m, "map50": m + 0.2, "precision": 0.9, "recall": 0.9, "accuracy": m},
        "champion_train_metrics": {"map50_95": train if train is not None else m},
    }


def run(cfg=None, evaluations=(), **kw):
    args = {"test_set_version": "t1", "new_labels": 100, "labels_total": 100, "gpu_hours": 0.0}
    args.update(kw)
    return decide(cfg or EvaluationConfig(), evaluations=list(evaluations), **args)


def crit(decision, name):
    return next(c for c in decision["criteria"] if c["name"] == name)


def test_continue_when_nothing_stops_or_holds():
    d = run()
    assert d["outcome"] == CONTINUE
    assert crit(d, "targets_stable")["verdict"] == NA and crit(d, "diminishing_returns")["verdict"] == NA
    names = [c["name"] for c in d["criteria"]]
    for name in (
        "test_set",
        "budget_labels",
        "budget_cost",
        "budget_gpu_hours",
        "target_map50_95",
        "targets_stable",
        "diminishing_returns",
        "overfitting",
        "min_new_labels",
    ):
        assert name in names
    assert "CONTINUE" in format_decision({"_id": "x", **d})


def test_hold_when_too_few_new_labels():
    d = run(EvaluationConfig(min_new_labels=50), new_labels=49)
    assert d["outcome"] == HOLD and d["reason"].startswith("min_new_labels")
    c = crit(d, "min_new_labels")
    assert (c["value"], c["threshold"], c["verdict"], c["effect"]) == (49, 50, TRIGGERED, HOLD)
    assert run(EvaluationConfig(min_new_labels=50), new_labels=50)["outcome"] == CONTINUE


def test_stop_when_targets_met_on_k_consecutive_evaluations():
    cfg = EvaluationConfig(targets={"map50_95": 0.5, "precision": 0.9}, stability_k=2, diminishing_k=None)
    once = run(cfg, [ev(0, 0.3), ev(1, 0.55)])
    assert once["outcome"] == CONTINUE and crit(once, "targets_stable")["value"] == 1
    assert crit(once, "target_map50_95")["detail"] == "met"
    twice = run(cfg, [ev(0, 0.3), ev(1, 0.55), ev(2, 0.56)])
    assert twice["outcome"] == STOP and twice["reason"].startswith("targets_stable")
    # met, then lost, then met again: not stable
    assert run(cfg, [ev(0, 0.55), ev(1, 0.4), ev(2, 0.56)])["outcome"] == CONTINUE


def test_book_classification_targets():
    cfg = EvaluationConfig(targets={"accuracy": 0.95, "precision": 0.90}, stability_k=1, diminishing_k=None)
    assert run(cfg, [ev(0, 0.94)])["outcome"] == CONTINUE
    assert run(cfg, [ev(0, 0.96)])["outcome"] == STOP


def test_stop_on_diminishing_returns():
    cfg = EvaluationConfig(targets={"map50_95": 0.99}, diminishing_k=2, diminishing_epsilon=0.01)
    growing = run(cfg, [ev(0, 0.30), ev(1, 0.35), ev(2, 0.40)])
    assert growing["outcome"] == CONTINUE and crit(growing, "diminishing_returns")["value"] == pytest.approx(
        0.10
    )
    flat = run(cfg, [ev(0, 0.30), ev(1, 0.40), ev(2, 0.404), ev(3, 0.405)])
    assert flat["outcome"] == STOP and crit(flat, "diminishing_returns")["value"] == pytest.approx(0.005)
    short = run(cfg, [ev(0, 0.4), ev(1, 0.4)])  # needs k + 1 evaluations
    assert short["outcome"] == CONTINUE and crit(short, "diminishing_returns")["verdict"] == NA


def test_hold_when_the_champion_overfits():
    cfg = EvaluationConfig(max_train_test_gap=0.2, diminishing_k=None, targets={"map50_95": 0.9})
    d = run(cfg, [ev(0, 0.4, train=0.7)])
    assert d["outcome"] == HOLD and crit(d, "overfitting")["value"] == pytest.approx(0.3)
    assert run(cfg, [ev(0, 0.4, train=0.55)])["outcome"] == CONTINUE
    off = EvaluationConfig(max_train_test_gap=None, diminishing_k=None, targets={"map50_95": 0.9})
    assert run(off, [ev(0, 0.4, train=0.9)])["outcome"] == CONTINUE


@pytest.mark.parametrize(
    "budget,usage,name",
    [
        ({"max_labels": 100}, {"labels_total": 100}, "budget_labels"),
        ({"max_cost": 10.0, "cost_per_label": 0.1}, {"labels_total": 100}, "budget_cost"),
        ({"max_gpu_hours": 1.0}, {"gpu_hours": 1.5}, "budget_gpu_hours"),
    ],
)
def test_stop_when_a_budget_is_spent(budget, usage, name):
    cfg = EvaluationConfig(budget=budget)
    d = run(cfg, **usage)
    assert d["outcome"] == STOP and d["reason"].startswith(name)
    # budget stops even when there are too few new labels: stop outranks hold
    assert run(cfg, **{**usage, "new_labels": 0})["outcome"] == STOP


def test_budget_under_the_limit_continues():
    assert run(EvaluationConfig(budget={"max_labels": 101}), labels_total=100)["outcome"] == CONTINUE


def test_missing_or_changed_test_set_holds_and_other_versions_never_compare():
    d = run(test_set_version=None, test_set_error="no test set")
    assert d["outcome"] == HOLD and crit(d, "test_set")["verdict"] == TRIGGERED
    cfg = EvaluationConfig(targets={"map50_95": 0.5}, stability_k=2, diminishing_k=None)
    # two evaluations meeting the target, but the first on an older test set: not stable yet
    d = run(cfg, [ev(0, 0.6, version="t0"), ev(1, 0.6)])
    assert (
        d["outcome"] == CONTINUE and d["evaluations_excluded"] == ["e0"] and d["evaluations_used"] == ["e1"]
    )


def test_config_rejects_unknown_metrics():
    with pytest.raises(ValueError, match="unknown metric"):
        EvaluationConfig(targets={"f1": 0.5})
