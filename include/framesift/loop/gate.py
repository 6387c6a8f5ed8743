"""Stopping criteria: is another round of labeling and retraining still worth it?

:func:`decide` checks every criterion of the ``evaluation:`` config against the evaluation
history on the *current* test-set version (evaluations on other versions are never
compared; they are listed as excluded) and returns a decision:

- ``stop``: the targets were met on ``stability_k`` consecutive evaluations, or a budget
  (labels, labeling cost, GPU hours) is spent, or the metric gained less than
  ``diminishing_epsilon`` over the last ``diminishing_k`` rounds;
- ``hold``: no usable test set (missing or changed), the champion overfits (train - test
  gap over ``max_train_test_gap``), or fewer than ``min_new_labels`` frames were labeled
  since the last training;
- ``continue``: retrain.

Each criterion is ``{name, value, threshold, verdict, effect, detail}``; verdict is
``triggered`` (it decides the outcome, ``effect`` says how), ``ok`` or ``n/a`` (not enough
history, or switched off). :func:`gate` gathers the inputs from Mongo and S3 and writes the
``decisions`` document. The ``evaluations`` history it reads is kept by
:mod:`framesift.io.model_registry`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo.database import Database

from framesift.config.schema import EvaluationConfig, PipelineConfig
from framesift.io import model_registry
from framesift.io.model_registry import history
from framesift.loop import trainset

DECISIONS = "decisions"
CONTINUE, STOP, HOLD = "continue", "stop", "hold"
TRIGGERED, OK, NA = "triggered", "ok", "n/a"


def _now() -> datetime:
    return datetime.now(UTC)


def _criterion(name, value, threshold, triggered, effect, detail="", na=False) -> dict[str, Any]:
    return {
        "name": name,
        "value": value,
        "threshold": threshold,
        "verdict": NA if na else (TRIGGERED if triggered else OK),
        "effect": effect if (triggered and not na) else None,
        "detail": detail,
    }


def targets_met(metrics: Mapping[str, float] | None, targets: Mapping[str, float]) -> bool:
    if not metrics or not targets:
        return False
    return all(metrics.get(k) is not None and metrics[k] >= v for k, v in targets.items())


def decide(
    cfg: EvaluationConfig,
    *,
    evaluations: Sequence[Mapping[str, Any]],
    test_set_version: str | None,
    test_set_error: str | None = None,
    new_labels: int,
    labels_total: int,
    gpu_hours: float,
) -> dict[str, Any]:
    """The outcome and every criterion's verdict.

    ``evaluations``: oldest first, each ``{test_set_version, champion_metrics,
    champion_train_metrics}`` (the champion after that round, on the test set and on its
    training data).
    """
    usable = [e for e in evaluations if e.get("test_set_version") == test_set_version and test_set_version]
    excluded = [str(e.get("_id")) for e in evaluations if e not in usable]
    series = [e.get("champion_metrics") or {} for e in usable]
    latest = series[-1] if series else None
    m = cfg.metric
    crit: list[dict[str, Any]] = []

    crit.append(
        _criterion(
            "test_set",
            test_set_version,
            "a frozen test set, unchanged",
            test_set_error is not None,
            HOLD,
            test_set_error
            or f"{len(usable)} evaluation(s) on this version; {len(excluded)} on others excluded",
        )
    )
    b = cfg.budget
    crit.append(
        _criterion(
            "budget_labels",
            labels_total,
            b.max_labels,
            b.max_labels is not None and labels_total >= b.max_labels,
            STOP,
            na=b.max_labels is None,
        )
    )
    cost = labels_total * b.cost_per_label
    crit.append(
        _criterion(
            "budget_cost",
            round(cost, 4),
            b.max_cost,
            b.max_cost is not None and cost >= b.max_cost,
            STOP,
            f"{labels_total} labels x {b.cost_per_label}",
            na=b.max_cost is None,
        )
    )
    crit.append(
        _criterion(
            "budget_gpu_hours",
            round(gpu_hours, 4),
            b.max_gpu_hours,
            b.max_gpu_hours is not None and gpu_hours >= b.max_gpu_hours,
            STOP,
            na=b.max_gpu_hours is None,
        )
    )
    for name, target in cfg.targets.items():
        value = None if latest is None else latest.get(name)
        crit.append(
            _criterion(
                f"target_{name}",
                value,
                target,
                False,
                None,
                "met" if value is not None and value >= target else "not met",
                na=value is None,
            )
        )
    k = cfg.stability_k
    recent = series[-k:]
    met_run = 0
    for s in reversed(series):
        if not targets_met(s, cfg.targets):
            break
        met_run += 1
    crit.append(
        _criterion(
            "targets_stable",
            met_run,
            k,
            len(recent) == k and all(targets_met(s, cfg.targets) for s in recent),
            STOP,
            f"targets met on the last {met_run} consecutive evaluation(s)",
            na=not series,
        )
    )
    dk = cfg.diminishing_k
    if dk is None or len(series) < dk + 1 or any(s.get(m) is None for s in series[-dk - 1 :]):
        gain = None
        crit.append(
            _criterion(
                "diminishing_returns",
                None,
                cfg.diminishing_epsilon,
                False,
                STOP,
                "off" if dk is None else f"needs {dk + 1} evaluations, have {len(series)}",
                na=True,
            )
        )
    else:
        gain = series[-1][m] - series[-1 - dk][m]
        crit.append(
            _criterion(
                "diminishing_returns",
                round(gain, 6),
                cfg.diminishing_epsilon,
                gain < cfg.diminishing_epsilon,
                STOP,
                f"{m} gain over the last {dk} round(s)",
            )
        )
    train = (usable[-1].get("champion_train_metrics") or {}) if usable else {}
    if cfg.max_train_test_gap is None or latest is None or train.get(m) is None or latest.get(m) is None:
        crit.append(
            _criterion("overfitting", None, cfg.max_train_test_gap, False, HOLD, f"train - test {m}", na=True)
        )
    else:
        gap = train[m] - latest[m]
        crit.append(
            _criterion(
                "overfitting",
                round(gap, 6),
                cfg.max_train_test_gap,
                gap > cfg.max_train_test_gap,
                HOLD,
                f"train - test {m}; label more before retraining",
            )
        )
    crit.append(
        _criterion(
            "min_new_labels",
            new_labels,
            cfg.min_new_labels,
            new_labels < cfg.min_new_labels,
            HOLD,
            "frames labeled since the last training",
        )
    )

    by = {c["name"]: c for c in crit}
    order = [
        "test_set",
        "budget_labels",
        "budget_cost",
        "budget_gpu_hours",
        "targets_stable",
        "diminishing_returns",
        "overfitting",
        "min_new_labels",
    ]
    outcome, reason = CONTINUE, "no criterion stops or holds: retrain"
    for name in order:
        c = by[name]
        if c["verdict"] == TRIGGERED:
            outcome = c["effect"]
            reason = f"{name}: value {c['value']} vs threshold {c['threshold']}" + (
                f" ({c['detail']})" if c["detail"] else ""
            )
            break
    return {
        "outcome": outcome,
        "reason": reason,
        "criteria": crit,
        "test_set_version": test_set_version,
        "evaluations_used": [str(e.get("_id")) for e in usable],
        "evaluations_excluded": excluded,
        "new_labels": new_labels,
        "labels_total": labels_total,
        "gpu_hours": gpu_hours,
        "metric_gain": gain,
    }


# ------------------------------------------------------------------ Mongo glue


def gate(
    s3, db: Database, cfg: PipelineConfig, *, run_id: str | None = None, kind: str = "gate"
) -> dict[str, Any]:
    """Decide from what Mongo and S3 hold now, and write the ``decisions`` document."""

    error = version = None
    try:
        version = trainset.check_test_set(s3, cfg.evaluation.test_set)["version"]
    except trainset.BadTestSet as exc:
        error = str(exc)
    labels_total = db[trainset.LABELS].count_documents({})
    champ = model_registry.champion(db)
    trained_on = 0
    if champ and champ.get("trainset_version"):
        ts = db[trainset.TRAINSETS].find_one({"_id": champ["trainset_version"]}) or {}
        trained_on = int(ts.get("n_frames") or 0)
    latest_ts = trainset.latest_version(db)
    gpu_seconds = sum(
        float(m.get("train_seconds") or 0) for m in db[model_registry.MODELS].find({}, {"train_seconds": 1})
    )
    decision = decide(
        cfg.evaluation,
        evaluations=history(db),
        test_set_version=version,
        test_set_error=error,
        new_labels=max(0, labels_total - trained_on),
        labels_total=labels_total,
        gpu_hours=gpu_seconds / 3600,
    )
    doc = {
        "_id": f"decision-{uuid.uuid4().hex[:12]}",
        "at": _now(),
        "kind": kind,
        "run_id": run_id,
        "champion": champ["_id"] if champ else None,
        "trainset_version": latest_ts["_id"] if latest_ts else None,
        "trainset_uri": latest_ts["uri"] if latest_ts else None,
        "config": cfg.evaluation.model_dump(),
        **decision,
    }
    db[DECISIONS].insert_one(doc)
    return doc


def format_decision(doc: Mapping[str, Any]) -> str:
    """A decision as a small table, for logs and the CLI."""
    lines = [f"decision {doc.get('_id')}: {str(doc['outcome']).upper()} ({doc['reason']})"]
    for c in doc["criteria"]:
        effect = f" -> {c['effect']}" if c.get("effect") else ""
        lines.append(
            f"  {c['name']:<20} value={c['value']!s:<10} threshold={c['threshold']!s:<10} {c['verdict']}{effect}"
        )
    return "\n".join(lines)
