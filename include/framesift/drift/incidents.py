"""Drift incidents for on-call: one incident per signal family and source, one alert each.

Mongo ``alerts`` holds one document per incident::

    _id            "<family>:<source>#<n>" (n-th incident of that key)
    dedup_key      "<family>:<source>"     at most one open/acked incident per key
    state          open -> acked -> resolved (acked is optional)
    level          warning | critical (the latest alarming window's); alerted_level: the
                   highest level on-call was told about
    first_seen / last_seen / resolved_at / acked_at, acked_by
    values         the family's statistics in the latest window (value, threshold, p, ...)
    peak           the largest value of each statistic while open
    windows        ids of the windows evaluated while open (a window counts once, so
                   duplicate runs and retries change nothing)
    normal_windows consecutive normal windows; resolve_after_windows of them resolve it
    videos, sample_frames, report_uri (JSON), report_html_uri (the page on-call opens),
    clearml_url, airflow_run_url, run_ids
    labeling_backend, labeling_urls   where the drifted frames were sent for labeling (the
                   sequences' URLs on the platform, from their queue records)

Notifications go through an outbox, ``alert_outbox``: one document per (incident, event,
level, channel) with a deterministic ``_id``, written in the same step that opens or
escalates the incident and sent later by :func:`deliver`. A channel that is down leaves
its item ``pending`` with the error; the next delivery (the next run) sends it. Delivery
is at least once: a crash between sending and recording sends that one message again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from framesift.config.schema import DriftConfig
from framesift.drift.signals import CRITICAL, INSUFFICIENT, LEVELS, NORMAL, WARNING

log = logging.getLogger("framesift.alerts")

ALERTS = "alerts"
OUTBOX = "alert_outbox"
OPEN, ACKED, RESOLVED = "open", "acked", "resolved"
ACTIVE = (OPEN, ACKED)
PENDING, SENDING, SENT = "pending", "sending", "sent"
OPENED, ESCALATED, RESOLVED_EVENT = "opened", "escalated", "resolved"
MAX_WINDOWS_KEPT = 200
MAX_LINKS = 10  # labeling sequences an alert links
SEND_LEASE = timedelta(minutes=5)

RUNBOOK = (
    "1. Open the drift report (HTML): each signal vs its threshold, the plots and the most drifted frames; "
    "is the scene really different (night, blur, camera moved, new objects)?\n"
    "2. Open the ClearML drift plots and the Airflow run: which signal moved, on which videos, since when.\n"
    "3. Real change that stays: ack it (`framesift drift ack <id>`); the most drifted frames, "
    "selected and held for your ack, go to labeling on the next drift run (sequences tagged "
    "`drift`; with drift.labeling.mode: auto they are queued already); retraining picks them up.\n"
    "4. Broken camera or pipeline (all dark, frozen, blurred): fix the source and drop the held "
    "frames (`framesift drift ack <id> --no-labeling`); the incident resolves itself after a few "
    "normal windows.\n"
    "5. Either way the ack tells others someone is on it. See docs/operations.md, section On-call: drift alerts."
)


def _now() -> datetime:
    return datetime.now(UTC)


def ensure_indexes(db: Database) -> None:
    db[ALERTS].create_index([("dedup_key", ASCENDING), ("state", ASCENDING)], name="key_state")
    db[ALERTS].create_index([("state", ASCENDING)], name="state")
    db[OUTBOX].create_index([("state", ASCENDING)], name="state")


def dedup_key(family: str, source: str) -> str:
    return f"{family}:{source}"


def _rank(level: str | None) -> int:
    return LEVELS.index(level) if level in LEVELS else 0


@dataclass(frozen=True)
class Reading:
    """One signal family's level for one source in one drift window, with its statistics."""

    family: str
    source: str
    level: str
    stats: list[dict[str, Any]]
    window: Mapping[str, Any]

    @property
    def key(self) -> str:
        return dedup_key(self.family, self.source)


@dataclass(frozen=True)
class RunLinks:
    """Where the drift run that produced a reading can be seen."""

    run_id: str
    report_uri: str | None
    clearml_url: str | None
    airflow_run_url: str | None = None  # the run's page in the Airflow UI
    report_html_uri: str | None = None  # the report as a page (s3://)

    def fields(self) -> dict[str, str | None]:
        """What an incident stores of them."""
        return {
            "report_uri": self.report_uri,
            "report_html_uri": self.report_html_uri,
            "clearml_url": self.clearml_url,
            "airflow_run_url": self.airflow_run_url,
        }


def active_incident(db: Database, key: str) -> dict[str, Any] | None:
    return db[ALERTS].find_one({"dedup_key": key, "state": {"$in": list(ACTIVE)}})


def update_incidents(
    db: Database,
    report: Mapping[str, Any],
    dc: DriftConfig,
    *,
    run_id: str,
    report_uri: str | None = None,
    clearml_url: str | None = None,
    airflow_run_url: str | None = None,
    report_html_uri: str | None = None,
) -> dict[str, list[str]]:
    """Open, update, escalate or resolve incidents from one drift report; queue alerts.

    Idempotent: a window already counted for an incident is not counted again, alert ids
    are deterministic. Returns the incident ids by what happened to them.
    """
    ensure_indexes(db)
    out: dict[str, list[str]] = {
        "opened": [],
        "updated": [],
        "escalated": [],
        "resolved": [],
        "unchanged": [],
    }
    links = RunLinks(run_id, report_uri, clearml_url, airflow_run_url, report_html_uri)
    for window in report.get("windows", []):
        for family, level in window["families"].items():
            if level == INSUFFICIENT:
                continue
            stats = [s for s in window["statistics"] if s["family"] == family]
            what, inc_id = _apply(db, dc, Reading(family, window["source"], level, stats, window), links)
            if inc_id:
                out[what].append(inc_id)
    return out


def _apply(db: Database, dc: DriftConfig, reading: Reading, links: RunLinks) -> tuple[str, str | None]:
    now = _now()
    level, stats, window = reading.level, reading.stats, reading.window
    wid = window["window_id"]
    inc = active_incident(db, reading.key)
    alarming = level in (WARNING, CRITICAL)
    if inc is None:
        if not alarming:
            return "unchanged", None
        return _open(db, dc, reading, links, now)

    # counted once per window: the filter on `windows` makes a duplicate run a no-op
    common = {
        "$push": {"windows": {"$each": [wid], "$slice": -MAX_WINDOWS_KEPT}},
        "$addToSet": {"run_ids": links.run_id},
    }
    if alarming:
        update = {
            **common,
            "$set": {
                "level": level,
                "last_seen": now,
                "normal_windows": 0,
                "values": stats,
                "videos": window["videos"],
                "sample_frames": window.get("sample_frames", []),
                **links.fields(),
                "updated_at": now,
                **{f"peak.{s['name']}": s["value"] for s in stats if _above_peak(inc, s)},
            },
        }
    else:
        update = {
            **common,
            "$set": {"updated_at": now, "latest_normal_values": stats},
            "$inc": {"normal_windows": 1},
        }
    doc = db[ALERTS].find_one_and_update(
        {"_id": inc["_id"], "windows": {"$ne": wid}}, update, return_document=ReturnDocument.AFTER
    )
    if doc is None:
        return "unchanged", inc["_id"]
    if alarming and _rank(level) > _rank(doc.get("alerted_level")):
        claimed = db[ALERTS].find_one_and_update(
            {"_id": doc["_id"], "alerted_level": doc.get("alerted_level")},
            {
                "$set": {"alerted_level": level},
                "$push": {"history": {"at": now, "event": ESCALATED, "level": level}},
            },
        )
        if claimed is not None:
            _enqueue(db, dc, doc["_id"], ESCALATED, level, now)
            log.warning("incident %s escalated to %s", doc["_id"], level)
            return "escalated", doc["_id"]
    if not alarming and doc.get("normal_windows", 0) >= dc.alerts.resolve_after_windows:
        resolved = db[ALERTS].find_one_and_update(
            {"_id": doc["_id"], "state": {"$in": list(ACTIVE)}},
            {
                "$set": {"state": RESOLVED, "resolved_at": now},
                "$push": {"history": {"at": now, "event": RESOLVED_EVENT, "level": NORMAL}},
            },
        )
        if resolved is not None:
            if dc.alerts.notify_resolved:
                _enqueue(db, dc, doc["_id"], RESOLVED_EVENT, NORMAL, now)
            log.info("incident %s resolved after %d normal windows", doc["_id"], doc["normal_windows"])
            return "resolved", doc["_id"]
    return "updated", doc["_id"]


def _above_peak(inc: Mapping[str, Any], stat: Mapping[str, Any]) -> bool:
    old = (inc.get("peak") or {}).get(stat["name"])
    return stat["value"] is not None and (old is None or stat["value"] > old)


def _open(db: Database, dc: DriftConfig, reading: Reading, links: RunLinks, now: datetime) -> tuple[str, str]:
    key, level, stats, window = reading.key, reading.level, reading.stats, reading.window
    n = db[ALERTS].count_documents({"dedup_key": key, "state": RESOLVED}) + 1
    inc_id = f"{key}#{n}"
    doc = {
        "_id": inc_id,
        "dedup_key": key,
        "family": reading.family,
        "source": reading.source,
        "state": OPEN,
        "level": level,
        "alerted_level": level,
        "first_seen": now,
        "last_seen": now,
        "opened_at": now,
        "updated_at": now,
        "resolved_at": None,
        "acked_at": None,
        "acked_by": None,
        "values": stats,
        "peak": {s["name"]: s["value"] for s in stats if s["value"] is not None},
        "windows": [window["window_id"]],
        "normal_windows": 0,
        "videos": window["videos"],
        "sample_frames": window.get("sample_frames", []),
        **links.fields(),
        "run_ids": [links.run_id],
        "history": [{"at": now, "event": OPENED, "level": level}],
    }
    try:
        db[ALERTS].insert_one(doc)
    except DuplicateKeyError:  # a concurrent run opened it first
        return "unchanged", inc_id
    _enqueue(db, dc, inc_id, OPENED, level, now)
    log.warning("incident %s opened (%s): %s", inc_id, level, _values_line(stats))
    return "opened", inc_id


def _enqueue(db: Database, dc: DriftConfig, inc_id: str, event: str, level: str, now: datetime) -> None:
    for ch in dc.alerts.channels:
        channel = ch.model_dump(mode="json")
        item = {
            "_id": f"{inc_id}|{event}|{level}|{ch.type}:{ch.conn_id}",
            "incident_id": inc_id,
            "event": event,
            "level": level,
            "channel": channel,
            "state": PENDING,
            "attempts": 0,
            "last_error": None,
            "created_at": now,
            "sent_at": None,
            "claimed_until": None,
        }
        try:
            db[OUTBOX].insert_one(item)
        except DuplicateKeyError:
            pass
    if not dc.alerts.channels:
        log.warning("incident %s %s: no alert channel configured (drift.alerts.channels)", inc_id, event)


def deliver(
    db: Database,
    send: Callable[[dict[str, Any], dict[str, Any]], None],
    render: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
    *,
    owner: str = "",
) -> dict[str, Any]:
    """Send every pending outbox item: ``send(channel, message)`` with ``message =
    render(incident, item)``. Failures stay pending (with the error) for the next call.

    Returns ``{"sent": [...ids], "failed": [(id, error), ...]}``.
    """
    ensure_indexes(db)
    result: dict[str, Any] = {"sent": [], "failed": []}
    now = _now()
    items = list(
        db[OUTBOX]
        .find({"$or": [{"state": PENDING}, {"state": SENDING, "claimed_until": {"$lt": now}}]})
        .sort("created_at", ASCENDING)
    )
    for item in items:
        claimed = db[OUTBOX].find_one_and_update(
            {"_id": item["_id"], "state": item["state"], "claimed_until": item.get("claimed_until")},
            {
                "$set": {"state": SENDING, "claimed_until": _now() + SEND_LEASE, "claimed_by": owner},
                "$inc": {"attempts": 1},
            },
            return_document=ReturnDocument.AFTER,
        )
        if claimed is None:
            continue  # another deliverer has it
        incident = db[ALERTS].find_one({"_id": item["incident_id"]}) or {}
        try:
            send(claimed["channel"], render(incident, claimed))
        except Exception as exc:  # noqa: BLE001 - any channel failure keeps the item for later
            error = f"{type(exc).__name__}: {exc}"
            db[OUTBOX].update_one(
                {"_id": item["_id"]},
                {"$set": {"state": PENDING, "claimed_until": None, "last_error": error, "failed_at": _now()}},
            )
            log.warning("alert %s not delivered (attempt %d): %s", item["_id"], claimed["attempts"], error)
            result["failed"].append((item["_id"], error))
            continue
        db[OUTBOX].update_one(
            {"_id": item["_id"]},
            {"$set": {"state": SENT, "sent_at": _now(), "claimed_until": None, "last_error": None}},
        )
        db[ALERTS].update_one(
            {"_id": item["incident_id"]},
            {
                "$push": {
                    "notifications": {
                        "at": _now(),
                        "event": item["event"],
                        "level": item["level"],
                        "channel": claimed["channel"]["type"],
                    }
                }
            },
        )
        result["sent"].append(item["_id"])
    return result


def link_labeling(db: Database, incident_ids: list[str], backend: str, urls: list[str]) -> None:
    """Record on incidents where their drifted frames were sent for labeling (the
    sequences' URLs on the platform), so the alerts link them."""
    urls = [u for u in urls if u]
    if incident_ids and urls:
        db[ALERTS].update_many(
            {"_id": {"$in": list(incident_ids)}},
            {"$set": {"labeling_backend": backend}, "$addToSet": {"labeling_urls": {"$each": urls}}},
        )


def ack(db: Database, incident_id: str, by: str) -> dict[str, Any] | None:
    """Mark an open incident acknowledged (someone is on it); it still escalates and resolves."""
    now = _now()
    return db[ALERTS].find_one_and_update(
        {"_id": incident_id, "state": OPEN},
        {
            "$set": {"state": ACKED, "acked_at": now, "acked_by": by},
            "$push": {"history": {"at": now, "event": "acked", "by": by}},
        },
        return_document=ReturnDocument.AFTER,
    )


def open_incidents(db: Database) -> list[dict[str, Any]]:
    return list(db[ALERTS].find({"state": {"$in": list(ACTIVE)}}).sort("first_seen", ASCENDING))


def _values_line(stats: list[Mapping[str, Any]]) -> str:
    parts = []
    for s in stats:
        value = "n/a" if s.get("value") is None else f"{s['value']:.4g}"
        parts.append(f"{s['name']} {value} (threshold {s['threshold']:g}, {s['level']})")
    return "; ".join(parts)


def render_message(
    incident: Mapping[str, Any],
    item: Mapping[str, Any],
    *,
    frame_url: Callable[[str], str] | None = None,
    report_url: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """The alert as plain data: ``subject``, ``text`` (Slack mrkdwn-friendly plain text) and
    the fields it was built from. ``frame_url``/``report_url`` turn ``s3://`` URIs into
    links a browser opens (framesift's page on the api-server, or presigned); they are
    made at send time, never stored. The drift report links to its page (HTML) first, the
    raw JSON beside it."""
    event, level = item.get("event", OPENED), item.get("level", incident.get("level"))
    family, source = incident.get("family", "?"), incident.get("source", "?")
    head = {OPENED: "DRIFT", ESCALATED: "DRIFT ESCALATED", RESOLVED_EVENT: "DRIFT RESOLVED"}.get(
        event, "DRIFT"
    )
    subject = f"[framesift] {head} {level.upper()}: {family} on {source} ({incident.get('_id')})"
    lines = [f"*{subject}*"]
    if event == RESOLVED_EVENT:
        lines.append(f"Back to normal for {incident.get('normal_windows')} windows.")
    for s in incident.get("values") or []:
        value = "n/a" if s.get("value") is None else f"{s['value']:.4g}"
        extra = f", p={s['p_value']:.3g}" if s.get("p_value") is not None else ""
        ref = (
            f", reference {s['reference_value']:.4g} -> window {s['window_value']:.4g}"
            if s.get("window_value") is not None
            else ""
        )
        lines.append(
            f"- {s['name']}: {value} vs threshold {s['threshold']:g} ({s['level']}{extra}{ref}); "
            f"window {s['window_frames']} frames vs reference {s['reference_frames']} frames"
        )
    first, last = incident.get("first_seen"), incident.get("last_seen")
    lines.append(
        f"First seen {first:%Y-%m-%d %H:%M} UTC, last seen {last:%Y-%m-%d %H:%M} UTC."
        if isinstance(first, datetime) and isinstance(last, datetime)
        else ""
    )
    videos = incident.get("videos") or []
    lines.append(
        f"Affected videos ({len(videos)}): " + ", ".join(videos[:10]) + (" ..." if len(videos) > 10 else "")
    )
    frames = incident.get("sample_frames") or []
    links = [(u, frame_url(u) if frame_url else u) for u in frames]
    if links:
        lines.append("Sample frames (most drifted):")
        lines += [f"  {url}" for _, url in links]

    def openable(uri: str | None) -> str | None:
        return (report_url(uri) if report_url else uri) if uri else None

    report_page, report_json = openable(incident.get("report_html_uri")), openable(incident.get("report_uri"))
    if report_page:
        lines.append(f"Drift report: {report_page}")
    if report_json:
        lines.append(f"Drift report (JSON): {report_json}")
    if incident.get("airflow_run_url"):
        lines.append(f"Airflow run: {incident['airflow_run_url']}")
    if incident.get("clearml_url"):
        lines.append(f"ClearML drift plots: {incident['clearml_url']}")
    labeling = (incident.get("labeling_urls") or [])[-MAX_LINKS:]  # the latest windows'
    if labeling:
        lines.append(f"Drifted frames sent for labeling ({incident.get('labeling_backend')}):")
        lines += [f"  {url}" for url in labeling]
    lines.append("Runbook:\n" + RUNBOOK)
    text = "\n".join(line for line in lines if line)
    return {
        "subject": subject,
        "text": text,
        "incident_id": incident.get("_id"),
        "event": event,
        "level": level,
        "family": family,
        "source": source,
        "values": [
            {k: s.get(k) for k in ("name", "value", "threshold", "level", "p_value")}
            for s in incident.get("values") or []
        ],
        "videos": videos,
        "sample_frames": [url for _, url in links],
        "report_url": report_page,
        "report_json_url": report_json,
        "clearml_url": incident.get("clearml_url"),
        "airflow_run_url": incident.get("airflow_run_url"),
        "labeling_urls": labeling,
    }
