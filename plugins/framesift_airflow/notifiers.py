"""Airflow notifiers for drift alerts: a Slack-compatible webhook and SMTP e-mail.

Both take the alert (``framesift.drift.incidents.render_message``'s dict) as ``message`` and an
Airflow connection id; credentials live in the connection only. They work as callbacks
(``on_failure_callback=DriftWebhookNotifier(...)``) or, as the drift DAG uses them, by
calling ``notify(context)`` directly. A failure raises, so the alert outbox keeps the
alert for the next run.

Webhook connection (type ``http``): ``host`` is the base URL (``https://hooks.slack.com/services``
or ``http://127.0.0.1:8080``), ``password`` the secret path token Slack puts in the URL
(``T000/B000/XXXX``), optional extra ``{"endpoint": "/path", "timeout": 10}``. The body is
Slack's ``{"text": ..., "blocks": [...]}`` plus framesift's fields under ``"framesift"``;
Mattermost, Rocket.Chat, Teams (via connectors) and plain HTTP receivers accept it.

SMTP connection (type ``smtp``, the smtp provider's): host, port, login, password, extra
``from_email``, ``disable_ssl`` / ``disable_tls``, and ``to`` (a list) when the channel in
the config names no recipients.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseHook, BaseNotifier


def webhook_url(conn) -> str:
    """The webhook URL from a connection: base (host, with scheme/port) + secret token + endpoint."""
    host = (conn.host or "").rstrip("/")
    if not host.startswith(("http://", "https://")):
        scheme = conn.schema if conn.schema in ("http", "https") else "https"
        host = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
    elif conn.port and host.count(":") < 2:
        host = f"{host}:{conn.port}"
    parts = [host]
    if conn.password:
        parts.append(conn.password.strip("/"))
    endpoint = (conn.extra_dejson or {}).get("endpoint")
    if endpoint:
        parts.append(str(endpoint).strip("/"))
    return "/".join(parts)


def slack_payload(message: dict[str, Any]) -> dict[str, Any]:
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": message["subject"][:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": message["text"][:2900]}},
    ]
    fields = {
        k: message.get(k)
        for k in (
            "incident_id",
            "event",
            "level",
            "family",
            "source",
            "values",
            "videos",
            "sample_frames",
            "report_url",
            "report_json_url",
            "airflow_run_url",
            "clearml_url",
            "labeling_urls",
        )
    }
    return {"text": message["text"], "blocks": blocks, "framesift": fields}


class DriftWebhookNotifier(BaseNotifier):
    """POST a drift alert to a Slack-compatible incoming webhook."""

    # the message is not a template: alert text may hold braces; it is rendered by the core
    template_fields: Sequence[str] = ("conn_id",)

    def __init__(
        self, *, message: dict[str, Any], conn_id: str = "framesift_alerts_webhook", timeout: float = 10
    ):
        super().__init__()
        self.message = message
        self.conn_id = conn_id
        self.timeout = timeout

    def notify(self, context) -> None:
        import requests

        conn = BaseHook.get_connection(self.conn_id)
        url = webhook_url(conn)
        timeout = float((conn.extra_dejson or {}).get("timeout", self.timeout))
        try:
            resp = requests.post(url, json=slack_payload(self.message), timeout=timeout)
        except requests.RequestException as exc:
            # the exception text would carry the URL, and the URL the secret token
            raise RuntimeError(
                f"webhook of connection {self.conn_id!r} unreachable: {type(exc).__name__}"
            ) from None
        if resp.status_code >= 300:
            raise RuntimeError(
                f"webhook of connection {self.conn_id!r} answered HTTP {resp.status_code}: {resp.text[:200]}"
            )
        self.log.info("drift alert %s delivered to webhook %s", self.message.get("incident_id"), self.conn_id)


class DriftEmailNotifier(BaseNotifier):
    """Send a drift alert by e-mail through the smtp provider's SmtpHook."""

    template_fields: Sequence[str] = ("conn_id", "to")

    def __init__(self, *, message: dict[str, Any], conn_id: str = "smtp_default", to: Sequence[str] = ()):
        super().__init__()
        self.message = message
        self.conn_id = conn_id
        self.to = list(to)

    def notify(self, context) -> None:
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        conn = BaseHook.get_connection(self.conn_id)
        to = self.to or list((conn.extra_dejson or {}).get("to") or [])
        if not to:
            raise ValueError(
                f"no recipients: set `to` on the channel or extra 'to' on connection {self.conn_id!r}"
            )
        body = "<pre>" + html.escape(self.message["text"]) + "</pre>"
        with SmtpHook(smtp_conn_id=self.conn_id) as hook:
            hook.send_email_smtp(to=to, subject=self.message["subject"], html_content=body)
        self.log.info("drift alert %s e-mailed to %d recipient(s)", self.message.get("incident_id"), len(to))


def notifier_for(channel: dict[str, Any], message: dict[str, Any]) -> BaseNotifier:
    """The notifier of one ``drift.alerts.channels`` entry."""
    if channel["type"] == "webhook":
        return DriftWebhookNotifier(message=message, conn_id=channel["conn_id"])
    if channel["type"] == "smtp":
        return DriftEmailNotifier(message=message, conn_id=channel["conn_id"], to=channel.get("to") or ())
    raise ValueError(f"unknown alert channel type {channel['type']!r}")
