"""Drift incidents in Mongo (embedded SecantusDB) and their delivery through the Airflow
notifiers to real servers on loopback: an HTTP listener standing in for the Slack webhook,
and a minimal SMTP server."""

from __future__ import annotations

import json
import socketserver
import threading

import pytest

from framesift.config.loading import parse_config
from framesift.drift import incidents as alerts
from tests.listener import Listener

pytestmark = pytest.mark.slow


def window(wid, level="warning", value=0.12, source="videos/cam1/", family="embedding"):
    """A drift report window as drift.evaluate writes it (only what alerts read)."""
    stat = {
        "family": family,
        "name": "mmd2",
        "value": value,
        "threshold": 0.05,
        "level": level,
        "alarm": level in ("warning", "critical"),
        "window_frames": 500,
        "reference_frames": 1000,
        "reference_value": None,
        "window_value": None,
        "p_value": 0.005,
        "note": "",
    }
    return {
        "source": source,
        "window_id": wid,
        "statistics": [stat],
        "families": {family: level},
        "level": level,
        "videos": [f"{source}a.mp4"],
        "sample_frames": [f"s3://b/out/videos/v1/frames/a-00{i}-mp4.png" for i in range(2)],
    }


def report(*windows):
    return {"windows": list(windows)}


def drift_cfg(**alerts_cfg):
    return parse_config(
        {
            "drift": {
                "alerts": {
                    "channels": [{"type": "webhook", "conn_id": "framesift_alerts_webhook"}],
                    "resolve_after_windows": 2,
                    **alerts_cfg,
                }
            }
        }
    ).drift


def outbox(db):
    return sorted(d["_id"] for d in db[alerts.OUTBOX].find())


def test_incident_lifecycle_dedup_escalation_resolution(db):
    dc = drift_cfg()
    run_url = "http://airflow.example/dags/framesift_drift/runs/r1"
    out = alerts.update_incidents(
        db, report(window("w1")), dc, run_id="r1", clearml_url="file:///x.zip", airflow_run_url=run_url
    )
    (inc_id,) = out["opened"]
    assert inc_id == "embedding:videos/cam1/#1"
    # the alert links the Airflow run that raised it (issue #17, point 8)
    opened = db[alerts.ALERTS].find_one({"_id": inc_id})
    assert opened["airflow_run_url"] == run_url
    message = alerts.render_message(opened, {"event": "opened", "level": "warning"})
    assert f"Airflow run: {run_url}" in message["text"] and message["airflow_run_url"] == run_url
    assert outbox(db) == [f"{inc_id}|opened|warning|webhook:framesift_alerts_webhook"]

    # the same window again: a duplicate run, a retry, a second scheduler: nothing changes
    for run in ("r1", "r1-retry", "r2"):
        again = alerts.update_incidents(db, report(window("w1")), dc, run_id=run)
        assert again["opened"] == [] and again["unchanged"] == [inc_id]
    assert db[alerts.ALERTS].count_documents({}) == 1 and len(outbox(db)) == 1

    # a new window, still warning: updated, no second alert
    assert alerts.update_incidents(db, report(window("w2", value=0.09)), dc, run_id="r3")["updated"] == [
        inc_id
    ]
    assert len(outbox(db)) == 1
    # worse: critical re-alerts once
    assert alerts.update_incidents(db, report(window("w3", "critical", 0.3)), dc, run_id="r4")[
        "escalated"
    ] == [inc_id]
    assert alerts.update_incidents(db, report(window("w4", "critical", 0.4)), dc, run_id="r5")["updated"] == [
        inc_id
    ]
    assert len(outbox(db)) == 2 and f"{inc_id}|escalated|critical|webhook:framesift_alerts_webhook" in outbox(
        db
    )
    doc = db[alerts.ALERTS].find_one({"_id": inc_id})
    assert doc["state"] == "open" and doc["level"] == "critical" and doc["peak"]["mmd2"] == 0.4
    assert doc["first_seen"] < doc["last_seen"] and doc["windows"] == ["w1", "w2", "w3", "w4"]
    assert doc["clearml_url"] is None and doc["values"][0]["value"] == 0.4  # the latest window's

    # acked by on-call; two normal windows resolve it (the same normal window counts once)
    assert alerts.ack(db, inc_id, "alice")["state"] == "acked"
    assert alerts.update_incidents(db, report(window("n1", "normal", 0.01)), dc, run_id="r6")["updated"] == [
        inc_id
    ]
    assert alerts.update_incidents(db, report(window("n1", "normal", 0.01)), dc, run_id="r6b")[
        "unchanged"
    ] == [inc_id]
    assert alerts.update_incidents(db, report(window("n2", "normal", 0.01)), dc, run_id="r7")["resolved"] == [
        inc_id
    ]
    doc = db[alerts.ALERTS].find_one({"_id": inc_id})
    assert doc["state"] == "resolved" and doc["acked_by"] == "alice" and doc["resolved_at"]
    assert [h["event"] for h in doc["history"]] == ["opened", "escalated", "acked", "resolved"]
    assert len(outbox(db)) == 2  # notify_resolved is off by default

    # drift again later: a new incident of the same key, a new alert
    assert alerts.update_incidents(db, report(window("w9")), dc, run_id="r8")["opened"] == [
        "embedding:videos/cam1/#2"
    ]
    # other families and sources are their own incidents
    other = alerts.update_incidents(
        db, report(window("w9", family="outliers"), window("w9", source="videos/cam2/")), dc, run_id="r8"
    )
    assert sorted(other["opened"]) == ["embedding:videos/cam2/#1", "outliers:videos/cam1/#1"]
    assert len(alerts.open_incidents(db)) == 3


@pytest.fixture
def listener(monkeypatch):
    srv = Listener()
    conn = {
        "conn_type": "http",
        "host": f"http://127.0.0.1:{srv.port}",
        "password": "T000/B000/not-a-real-token",
    }
    monkeypatch.setenv("AIRFLOW_CONN_FRAMESIFT_ALERTS_WEBHOOK", json.dumps(conn))
    yield srv
    srv.close()


def _deliver(db, s3=None):
    from framesift.io.s3 import http_url
    from framesift_airflow.notifiers import notifier_for

    def render(incident, item):
        url = (lambda u: http_url(s3, u)) if s3 is not None else None
        return alerts.render_message(incident, item, frame_url=url)

    return alerts.deliver(db, lambda ch, msg: notifier_for(ch, msg).notify({}), render, owner="test")


def test_webhook_payload_and_outage_delivered_on_the_next_run(db, s3, listener):
    dc = drift_cfg()
    listener.status = 503  # the webhook is down
    (inc_id,) = alerts.update_incidents(
        db, report(window("w1")), dc, run_id="r1", clearml_url="file:///c.zip"
    )["opened"]
    first = _deliver(db, s3)
    assert first["sent"] == [] and "HTTP 503" in first["failed"][0][1]
    item = db[alerts.OUTBOX].find_one()
    assert item["state"] == "pending" and item["attempts"] == 1 and "503" in item["last_error"]
    assert listener.bodies == []

    # a duplicate run while it is still down: no new alert, still pending
    alerts.update_incidents(db, report(window("w1")), dc, run_id="r2")
    assert db[alerts.OUTBOX].count_documents({}) == 1

    listener.status = 200  # back up: the next run delivers it, once
    second = _deliver(db, s3)
    assert second["sent"] == [item["_id"]] and second["failed"] == []
    assert _deliver(db, s3) == {"sent": [], "failed": []}
    assert len(listener.bodies) == 1 and listener.paths == ["/T000/B000/not-a-real-token"]
    body = listener.bodies[0]
    text = body["text"]
    assert body["framesift"]["incident_id"] == inc_id and body["blocks"][0]["type"] == "header"
    assert "mmd2: 0.12 vs threshold 0.05" in text and "window 500 frames" in text
    assert "videos/cam1/a.mp4" in text and "Runbook" in text and "ClearML drift plots: file:///c.zip" in text
    # sample frames as presigned links a browser opens
    links = body["framesift"]["sample_frames"]
    assert len(links) == 2 and all(u.startswith("http") and "Signature=" in u for u in links)
    assert links[0] in text
    doc = db[alerts.ALERTS].find_one({"_id": inc_id})
    assert [n["event"] for n in doc["notifications"]] == ["opened"]
    assert db[alerts.OUTBOX].find_one()["state"] == "sent"


def test_unreachable_webhook_keeps_the_alert_and_hides_the_token(db, monkeypatch):
    conn = {"conn_type": "http", "host": "http://127.0.0.1:9", "password": "T000/B000/secret-token"}
    monkeypatch.setenv("AIRFLOW_CONN_FRAMESIFT_ALERTS_WEBHOOK", json.dumps(conn))
    alerts.update_incidents(db, report(window("w1")), drift_cfg(), run_id="r1")
    result = _deliver(db)
    ((_, error),) = result["failed"]
    assert "unreachable" in error and "secret-token" not in error
    assert db[alerts.OUTBOX].find_one()["state"] == "pending"


class _SMTP(socketserver.StreamRequestHandler):
    """Just enough SMTP (no auth, no TLS) to receive one message."""

    def handle(self):
        self.wfile.write(b"220 localhost test SMTP\r\n")
        mail = {"rcpt": [], "data": ""}
        while True:
            line = self.rfile.readline().decode()
            if not line:
                return
            cmd = line[:4].upper()
            if cmd in ("EHLO", "HELO"):
                self.wfile.write(b"250 localhost\r\n")
            elif cmd == "MAIL":
                self.wfile.write(b"250 OK\r\n")
            elif cmd == "RCPT":
                mail["rcpt"].append(line.split(":", 1)[1].strip().strip("<>"))
                self.wfile.write(b"250 OK\r\n")
            elif cmd == "DATA":
                self.wfile.write(b"354 go ahead\r\n")
                chunks = []
                while (data := self.rfile.readline().decode()) not in (".\r\n", ""):
                    chunks.append(data)
                mail["data"] = "".join(chunks)
                self.server.mails.append(mail)
                self.wfile.write(b"250 queued\r\n")
            elif cmd == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 OK\r\n")


def test_smtp_notifier_sends_the_alert(db, monkeypatch):
    import email

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTP)
    server.mails = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conn = {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": server.server_address[1],
            "extra": {
                "from_email": "framesift@example.com",
                "disable_ssl": True,
                "disable_tls": True,
                "retry_limit": 0,
            },
        }
        monkeypatch.setenv("AIRFLOW_CONN_FRAMESIFT_ALERTS_SMTP", json.dumps(conn))
        dc = drift_cfg(
            channels=[{"type": "smtp", "conn_id": "framesift_alerts_smtp", "to": ["oncall@example.com"]}]
        )
        (inc_id,) = alerts.update_incidents(db, report(window("w1", "critical", 0.5)), dc, run_id="r1")[
            "opened"
        ]
        assert _deliver(db)["failed"] == []
    finally:
        server.shutdown()
        server.server_close()
    (mail,) = server.mails
    assert mail["rcpt"] == ["oncall@example.com"]
    msg = email.message_from_string(mail["data"])
    assert "CRITICAL" in msg["Subject"] and inc_id in msg["Subject"]
    body = "".join(
        p.get_payload(decode=True).decode() for p in msg.walk() if p.get_content_type() == "text/html"
    )
    assert "mmd2: 0.5 vs threshold 0.05" in body
