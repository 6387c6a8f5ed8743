"""The drift report as a page for on-call: one self-contained HTML file per drift run,
written next to the run's JSON report (``<output_prefix>/drift/reports/<run>.html``).

Per source window: its level, a table of every statistic (value, threshold, value over
threshold, reference -> window, p-value, level), one figure of plots (each statistic
over its threshold; the class distribution of reference vs window; the embeddings' PCA,
reference vs window with the outliers), and the most drifted frames (the ones the alert
links, ``drift.alerts.sample_frames``) as thumbnails labeled ``<video key> @ <time>``. A
suspended comparison (the reference is in another model's space) or a report without a
window says why in one line. Plots and thumbnails are ``data:`` URIs, like the selection
report's, so the page opens alone wherever it is (framesift's page on the api-server, a
presigned URL, a downloaded file).

matplotlib and OpenCV load only when a page is built.
"""

from __future__ import annotations

import html
import io
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from pymongo.database import Database

from framesift.config.schema import PipelineConfig
from framesift.drift.monitor import frame_uri
from framesift.drift.signals import CRITICAL, INSUFFICIENT, WARNING
from framesift.ingest import registry
from framesift.io import layout
from framesift.io.s3 import get_bytes, parse_s3_uri, put_bytes

log = logging.getLogger("framesift.drift")

THUMB_WIDTH = 320
MAX_CLASS_BARS = 12  # classes in the reference-vs-window plot
_LEVEL_COLORS = {"normal": "#2ca02c", WARNING: "#ff7f0e", CRITICAL: "#d62728", INSUFFICIENT: "#9aa7b8"}
_REF, _WIN, _OUT = "#9aa7b8", "#1f77b4", "#d62728"


def html_uri(json_uri: str) -> str:
    """Where a run's page goes: beside its JSON report, same name, ``.html``."""
    return json_uri.removesuffix(".json") + ".html"


def sample_frames(s3, db: Database, window: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """The window's most drifted frames as ``(<video key> @ <time>, JPEG thumbnail)``; a
    frame that cannot be read is left out (with a log line), never the page."""
    import cv2  # OpenCV: only when a page is built

    ids = list(window.get("most_drifted") or [])
    vids = sorted({f.split("/", 1)[0] for f in ids})
    docs = {
        d["_id"]: d
        for d in db[registry.VIDEOS].find(
            {"_id": {"$in": vids}}, {"key": 1, "frames_prefix": 1, "manifest_uri": 1}
        )
    }
    times = {vid: layout.frame_times(s3, d.get("manifest_uri")) for vid, d in docs.items()}
    prefixes = {vid: d.get("frames_prefix") for vid, d in docs.items()}
    out = []
    for fid in ids:
        vid, name = fid.split("/", 1)
        uri = frame_uri(prefixes, fid)
        try:
            image = cv2.imdecode(np.frombuffer(get_bytes(s3, *parse_s3_uri(uri)), np.uint8), cv2.IMREAD_COLOR)
        except Exception as exc:  # noqa: BLE001 - a missing frame costs its thumbnail only
            log.warning("drift report: frame %s not shown: %s: %s", uri or fid, type(exc).__name__, exc)
            continue
        if image is None:
            log.warning("drift report: frame %s does not decode", uri)
            continue
        h, w = image.shape[:2]
        if w > THUMB_WIDTH:
            image = cv2.resize(image, (THUMB_WIDTH, round(h * THUMB_WIDTH / w)), interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            out.append((layout.frame_label(docs[vid]["key"], name, times.get(vid)), jpeg.tobytes()))
    return out


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _plots(window: Mapping[str, Any], critical_factor: float) -> bytes | None:
    """One PNG of the window's plots: statistics over threshold, classes, embeddings."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    from framesift.selection.report import save_figure  # matplotlib

    stats = [s for s in window.get("statistics", []) if s.get("value") is not None and s.get("threshold")]
    hist = window.get("class_histogram") or {}
    points = window.get("plot") or {}
    panels = [p for p, has in (("stats", stats), ("classes", hist.get("classes")), ("pca", points)) if has]
    if not panels:
        return None
    fig = Figure(figsize=(5.2 * len(panels), 4.2))
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        if panel == "stats":
            ratios = [s["value"] / s["threshold"] for s in stats]
            y = np.arange(len(stats))[::-1]
            ax.barh(y, ratios, color=[_LEVEL_COLORS.get(s["level"], _REF) for s in stats])
            ax.set_yticks(y, [f"{s['family']}: {s['name']}" for s in stats], fontsize=8)
            ax.axvline(1.0, color="#333", linestyle="--", linewidth=1, label="threshold")
            ax.axvline(
                critical_factor, color=_LEVEL_COLORS[CRITICAL], linestyle=":", linewidth=1, label="critical"
            )
            ax.set_xlabel("value / threshold")
            ax.set_title("Signals vs their thresholds")
            ax.legend(fontsize=8, framealpha=0.9)
        elif panel == "classes":
            names, ref, win = (
                hist["classes"],
                np.asarray(hist["reference"], float),
                np.asarray(hist["window"], float),
            )
            ref, win = ref / (ref.sum() or 1), win / (win.sum() or 1)
            # the classes seen on either side, those that moved most first (an 80-class
            # detector's empty bins would bury them)
            keep = [i for i in np.argsort(-np.abs(win - ref), kind="stable") if ref[i] or win[i]][
                :MAX_CLASS_BARS
            ]
            names, ref, win = [names[i] for i in keep], ref[keep], win[keep]
            x = np.arange(len(names))
            ax.bar(x - 0.2, ref, 0.4, color=_REF, label="reference")
            ax.bar(x + 0.2, win, 0.4, color=_WIN, label="window")
            ax.set_xticks(
                x, names, rotation=30 if len(names) > 5 else 0, ha="right" if len(names) > 5 else "center"
            )
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
            ax.set_title("Predicted classes: reference vs window")
            ax.legend(fontsize=8)
        else:
            for key, color, size in (("reference", _REF, 6), ("window", _WIN, 10), ("outliers", _OUT, 14)):
                xy = np.asarray(points.get(key) or [], float).reshape(-1, 2)
                if len(xy):
                    ax.scatter(
                        xy[:, 0],
                        xy[:, 1],
                        s=size,
                        c=color,
                        alpha=0.7,
                        linewidths=0,
                        label=f"{key} ({len(xy)})",
                    )
            ax.set_title("Embeddings, PCA of the reference")
            ax.legend(fontsize=8)
        ax.grid(alpha=0.25)
    fig.tight_layout()
    buf = io.BytesIO()
    save_figure(fig, buf, "png")
    return buf.getvalue()


def _stat_table(window: Mapping[str, Any]) -> str:
    rows = []
    for s in window.get("statistics", []):
        v, t = s.get("value"), s["threshold"]
        change = (
            f"{_fmt(s.get('reference_value'))} &rarr; {_fmt(s.get('window_value'))}"
            if s.get("window_value") is not None
            else ""
        )
        note = f" ({html.escape(s['note'])})" if s.get("note") else ""
        p = "" if s.get("p_value") is None else f"{s['p_value']:.3g}"
        rows.append(
            f"<tr><td class='l'>{html.escape(s['family'])}</td><td class='l'>{html.escape(s['name'])}</td>"
            f"<td>{_fmt(v)}</td><td>{t:g}</td><td>{_fmt(v / t if v is not None and t else None)}</td>"
            f"<td>{change}</td><td>{p}</td>"
            f"<td class='l {html.escape(s['level'])}'>{html.escape(s['level'])}{note}</td></tr>"
        )
    left = "<th class='l'>{}</th>"
    head = "".join(
        [left.format("signal"), left.format("statistic")]
        + [
            f"<th>{h}</th>"
            for h in ("value", "threshold", "value / threshold", "reference &rarr; window", "p")
        ]
        + [left.format("verdict")]
    )
    return f"<table class='signals'><tr>{head}</tr>{''.join(rows)}</table>"


def _window_section(
    window: Mapping[str, Any], frames: list[tuple[str, bytes]], critical_factor: float
) -> str:
    from framesift.selection.report import data_uri  # matplotlib

    level = window["level"]
    videos = window.get("videos") or []
    own = "its own camera's frames" if window.get("reference") == "own" else "the whole reference"
    parts = [
        f"<h2>Source <code>{html.escape(window['source'])}</code>: <span class='{html.escape(level)}'>{html.escape(level.upper())}</span></h2>",
        f"<p>Window {html.escape(window['window_id'])}: {window['n_frames']} frames of {len(videos)} video(s), "
        f"against {window.get('reference_frames', '?')} reference frames ({own}).</p>",
        _stat_table(window),
    ]
    png = _plots(window, critical_factor)
    if png:
        parts.append(f"<figure><img src='{data_uri(png, 'image/png')}' alt='drift plots'></figure>")
    if frames:
        cells = "".join(
            f"<figure><img src='{data_uri(jpeg, 'image/jpeg')}' alt='{html.escape(label)}'>"
            f"<figcaption>#{i + 1} {html.escape(label)}</figcaption></figure>"
            for i, (label, jpeg) in enumerate(frames)
        )
        parts.append(f"<h3>Most drifted frames</h3><div class='grid'>{cells}</div>")
    shown = ", ".join(html.escape(v) for v in videos[:20]) + (" ..." if len(videos) > 20 else "")
    parts.append(f"<p class='muted'>Videos: {shown}</p>")
    return "\n".join(parts)


def render_html(
    report: Mapping[str, Any],
    frames: Mapping[str, list[tuple[str, bytes]]],
    *,
    critical_factor: float,
    links: Mapping[str, str | None] | None = None,
) -> str:
    """The page of one drift report. ``frames``: per source, ``sample_frames``'s
    thumbnails; ``links``: label -> URL shown at the top (the Airflow run, ...)."""
    from framesift.selection.report import CSS  # matplotlib

    ref = report.get("reference") or {}
    model = ref.get("model") or {}
    title = f"framesift drift report {report.get('run_id') or ''}".strip()
    head = [
        f"<p>Computed {html.escape(str(report.get('computed_at', '?')))}. Reference: {ref.get('frames', 0)} frames "
        f"from {html.escape(str(ref.get('how', '?')))} ({len(ref.get('videos') or [])} videos).</p>"
    ]
    if model:
        head.append(
            f"<p class='muted'>Serving model {html.escape(str(model.get('serving_version') or model.get('serving')))}; reference: "
            f"{html.escape(str(model.get('reference')))}.</p>"
        )
    if report.get("suspended"):
        head.append(
            f"<p class='suspended'><b>Comparison suspended</b>: {html.escape(report['suspended'])}</p>"
        )
    elif report.get("note"):
        head.append(f"<p><b>{html.escape(report['note'])}</b></p>")
    shown = [(k, u) for k, u in (links or {}).items() if u]
    if shown:
        head.append(
            "<p>"
            + " &middot; ".join(f"<a href='{html.escape(u)}'>{html.escape(k)}</a>" for k, u in shown)
            + "</p>"
        )
    windows = report.get("windows") or []
    if windows:
        summary = "".join(
            f"<tr><td class='l'><code>{html.escape(w['source'])}</code></td><td class='l {html.escape(w['level'])}'>"
            f"{html.escape(w['level'])}</td><td>{w['n_frames']}</td><td class='l'>"
            + ", ".join(f"{html.escape(f)} {html.escape(lv)}" for f, lv in w.get("families", {}).items())
            + "</td></tr>"
            for w in windows
        )
        head.append(
            "<table><tr><th class='l'>source</th><th class='l'>level</th><th>frames</th>"
            f"<th class='l'>signals</th></tr>{summary}</table>"
        )
    body = [_window_section(w, frames.get(w["source"], []), critical_factor) for w in windows]
    colors = "".join(f".{lv}{{color:{c};font-weight:600}}" for lv, c in _LEVEL_COLORS.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}{colors}.suspended{{background:#fff4e5;padding:.5rem}}</style></head>
<body>
<h1>{html.escape(title)}</h1>
{"".join(head)}
{"".join(body)}
</body></html>
"""


def build_html(
    s3,
    db: Database,
    cfg: PipelineConfig,
    report: Mapping[str, Any],
    *,
    links: Mapping[str, str | None] | None = None,
) -> str:
    """The page of a drift report, with the frames read from S3."""
    frames = {w["source"]: sample_frames(s3, db, w) for w in report.get("windows") or []}
    return render_html(report, frames, critical_factor=cfg.drift.alerts.critical_factor, links=links)


def publish(
    s3,
    db: Database,
    cfg: PipelineConfig,
    report: Mapping[str, Any],
    json_uri: str,
    *,
    links: Mapping[str, str | None] | None = None,
) -> str:
    """Write the report's page beside its JSON (``text/html; charset=utf-8``); its ``s3://`` URI."""
    from framesift.selection.report import HTML_CONTENT_TYPE  # matplotlib

    uri = html_uri(json_uri)
    page = build_html(s3, db, cfg, report, links=links)
    put_bytes(s3, *parse_s3_uri(uri), page.encode("utf-8"), HTML_CONTENT_TYPE)
    return uri
