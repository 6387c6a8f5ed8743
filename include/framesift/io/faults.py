"""Fault injection for the chaos test: real SIGKILLs and freezes at named points.

Inert unless ``FRAMESIFT_FAULTS`` names a plan file (JSON)::

    {"dir": "/tmp/chaos", "rules": [
        {"id": "r1", "point": "stage.extracting", "key": "videos/v01.mp4", "try": 1,
         "action": "kill", "delay_s": 0.4},
        {"id": "r2", "point": "push.after_platform", "key": "videos/v02.mp4", "action": "kill"},
        {"id": "r3", "point": "push.before_create", "key": "videos/v03.mp4", "try": 1,
         "action": "freeze", "with_parent": true}]}

Points: ``stage.<working status>`` (armed when a stage claims a video: the process is
killed ``delay_s`` after the claim, or when the work ends if it ends sooner, before its
result is recorded), ``push.after_platform`` (the platform call returned, the queue
record is not written yet) and ``push.before_create`` (the last check before a platform
object is created). ``kill`` is ``SIGKILL`` to the process itself: no ``finally``, no
``atexit``, what the OOM killer does. ``freeze`` is ``SIGSTOP`` (and its parent's, the
Airflow task supervisor, with ``with_parent``), so Airflow presumes the try dead and
retries it while it still exists: a zombie, resumed later with ``SIGCONT``.

Each rule fires at most once across all processes (an ``O_EXCL`` marker file in
``dir``), and every firing is appended to ``<dir>/fired.jsonl`` first (pid, parent pid,
point, key, attempt) so the test can count and resume what it did.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from functools import lru_cache
from typing import Any

ENV = "FRAMESIFT_FAULTS"


@lru_cache(maxsize=4)
def _plan(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _rules(point: str, key: str | None, try_number: int | None) -> list[dict[str, Any]]:
    path = os.environ.get(ENV)
    if not path:
        return []
    plan = _plan(path)
    return [
        {**r, "dir": plan["dir"]}
        for r in plan.get("rules", [])
        if r.get("point") == point
        and (r.get("key") is None or r.get("key") == key)
        and (r.get("try") is None or r.get("try") == try_number)
    ]


def _claim_rule(rule: dict[str, Any], point: str, key: str | None, attempt: Any) -> bool:
    """Mark the rule fired (once, across processes) and log the firing; False if it had fired."""
    try:
        fd = os.open(os.path.join(rule["dir"], f"fired-{rule['id']}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    entry = {
        "rule": rule["id"],
        "point": point,
        "key": key,
        "action": rule.get("action", "kill"),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "attempt": str(attempt),
        "at": time.time(),
    }
    with open(os.path.join(rule["dir"], "fired.jsonl"), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _act(rule: dict[str, Any]) -> None:
    if rule.get("action", "kill") == "freeze":
        if rule.get("with_parent"):
            os.kill(os.getppid(), signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)  # returns after SIGCONT
    else:
        os.kill(os.getpid(), signal.SIGKILL)


def point(name: str, *, key: str | None = None, attempt: Any = None) -> None:
    """Fire the matching rules of the plan at this point (nothing without a plan)."""
    for rule in _rules(name, key, getattr(attempt, "try_number", None)):
        if _claim_rule(rule, name, key, attempt):
            _act(rule)


class Armed:
    """A kill scheduled ``delay_s`` after arming; :meth:`fire_now` fires it at once if
    the timer has not yet (the work ended first), so the kill always lands in the stage."""

    def __init__(self, rule: dict[str, Any], name: str, key: str | None, attempt: Any):
        self.rule, self.name, self.key, self.attempt = rule, name, key, attempt
        self._lock = threading.Lock()
        self._fired = False
        self._timer = threading.Timer(float(rule.get("delay_s", 0.0)), self.fire_now)
        self._timer.daemon = True
        self._timer.start()

    def fire_now(self) -> None:
        with self._lock:
            if self._fired:
                return
            self._fired = True
        if _claim_rule(self.rule, self.name, self.key, self.attempt):
            _act(self.rule)


def arm(name: str, *, key: str | None = None, attempt: Any = None) -> Armed | None:
    rules = _rules(name, key, getattr(attempt, "try_number", None))
    return Armed(rules[0], name, key, attempt) if rules else None
