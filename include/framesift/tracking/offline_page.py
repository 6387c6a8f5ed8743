"""A ClearML offline session as a web page: what an operator can open from the Airflow UI
when no ClearML server is configured (a ``file://`` zip opens nowhere from a web page).

``session_summary(zip)`` reads the zip ClearML's offline mode writes (``task.json``,
``metrics.jsonl``, the artifacts' previews); ``render_page(summary, ...)`` makes one
self-contained HTML page of it: the task, its parameters, every scalar, the plots and
artifacts it holds, a download link of the zip and the step that imports it into a
server (``framesift clearml import <zip>``, i.e. ``Task.import_offline_session``).
"""

from __future__ import annotations

import html
import json
import zipfile
from pathlib import Path
from typing import Any

MAX_PREVIEW = 2000  # characters of an artifact's preview shown


def session_summary(zip_path: str | Path) -> dict[str, Any]:
    """The task, parameters, scalars, plots and artifacts of an offline session zip."""
    path = Path(zip_path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        task = json.loads(zf.read("task.json")) if "task.json" in names else {}
        events: list[dict[str, Any]] = []
        if "metrics.jsonl" in names:
            for line in zf.read("metrics.jsonl").decode("utf-8", "replace").splitlines():
                line = line.strip()
                if not line:
                    continue
                try:
                    batch = json.loads(line)
                except json.JSONDecodeError:
                    continue
                events += batch if isinstance(batch, list) else [batch]
    scalars = [
        {
            "metric": e.get("metric"),
            "variant": e.get("variant"),
            "iter": e.get("iter"),
            "value": e.get("value"),
        }
        for e in events
        if e.get("type") == "training_stats_scalar"
    ]
    plots = sorted(
        {
            f"{e.get('metric')} / {e.get('variant')}" if e.get("variant") else str(e.get("metric"))
            for e in events
            if e.get("type") in ("plot", "training_stats_vector")
        }
    )
    images = sorted(
        {f"{e.get('metric')} / {e.get('variant')}" for e in events if e.get("type") == "training_debug_image"}
    )
    hyper = task.get("hyperparams") or {}
    params = {
        f"{section}/{name}": (item or {}).get("value")
        for section, values in hyper.items()
        for name, item in (values or {}).items()
    }
    artifacts = [
        {
            "name": a.get("key"),
            "type": a.get("type"),
            "size": a.get("content_size"),
            "preview": ((a.get("type_data") or {}).get("preview") or "")[:MAX_PREVIEW],
        }
        for a in (task.get("execution") or {}).get("artifacts") or []
    ]
    return {
        "zip": str(path),
        "zip_bytes": path.stat().st_size,
        "task_id": task.get("id"),
        "name": task.get("name"),
        "project": task.get("project_name"),
        "type": task.get("type"),
        "params": params,
        "configuration": sorted((task.get("configuration") or {}).keys()),
        "scalars": scalars,
        "plots": plots,
        "images": images,
        "artifacts": artifacts,
    }


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1000px;padding:0 1rem;color:#1d2330}"
    "table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #dde3ea;padding:.25rem .6rem;"
    "text-align:left;vertical-align:top}th{background:#f4f6f9}code,pre{background:#f4f6f9;padding:.1rem .3rem}"
    "pre{padding:.6rem;overflow:auto;max-height:18rem}.muted{color:#667}"
)


def render_page(summary: dict[str, Any], *, download_url: str | None, run_label: str = "") -> str:
    """One HTML page (no external assets) of a session summary."""
    rows = "".join(
        f"<tr><td>{_esc(s['metric'])}</td><td>{_esc(s['variant'])}</td><td>{_esc(s['iter'])}</td>"
        f"<td>{_esc(round(s['value'], 6) if isinstance(s['value'], float) else s['value'])}</td></tr>"
        for s in summary["scalars"]
    )
    params = "".join(
        f"<tr><td><code>{_esc(k)}</code></td><td>{_esc(v)}</td></tr>"
        for k, v in sorted(summary["params"].items())
    )
    arts = "".join(
        f"<h3>{_esc(a['name'])} <span class='muted'>({_esc(a['type'])}, {_esc(a['size'])} bytes)</span></h3>"
        + (f"<pre>{_esc(a['preview'])}</pre>" if a["preview"] else "")
        for a in summary["artifacts"]
    )
    lists = "".join(
        f"<h2>{title}</h2><ul>{''.join(f'<li>{_esc(i)}</li>' for i in items)}</ul>"
        for title, items in (("Plots", summary["plots"]), ("Debug images", summary["images"]))
        if items
    )
    download = (
        f"<p><a href='{_esc(download_url)}'>Download the session ({summary['zip_bytes']:,} bytes)</a></p>"
        if download_url
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ClearML {_esc(summary["name"])}</title><style>{_CSS}</style></head>
<body>
<h1>ClearML task {_esc(summary["name"])}</h1>
<p>{_esc(run_label)}</p>
<table>
<tr><th>project</th><td>{_esc(summary["project"])}</td></tr>
<tr><th>task type</th><td>{_esc(summary["type"])}</td></tr>
<tr><th>task id</th><td><code>{_esc(summary["task_id"])}</code></td></tr>
<tr><th>offline session</th><td><code>{_esc(summary["zip"])}</code></td></tr>
<tr><th>configuration</th><td>{_esc(", ".join(summary["configuration"]) or "-")}</td></tr>
</table>
<p class="muted">Recorded offline (no ClearML server is configured). To see it in a ClearML server's UI, set
<code>CLEARML_API_HOST</code>, <code>CLEARML_WEB_HOST</code> and the API keys, then import it:
<code>framesift clearml import {_esc(summary["zip"])}</code> (the ClearML SDK's
<code>Task.import_offline_session</code>). With <code>tracking.offline: false</code> later runs go to the server directly.</p>
{download}
<h2>Scalars</h2>
<table><tr><th>metric</th><th>series</th><th>iteration</th><th>value</th></tr>{rows}</table>
<h2>Parameters</h2>
<table>{params}</table>
{lists}
<h2>Artifacts</h2>
{arts or "<p class='muted'>none</p>"}
</body></html>
"""
