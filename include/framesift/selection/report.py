"""An HTML report of one selection, with PNG plots (matplotlib, Agg; no pyplot state).

``build_report(result, inputs, out_dir)`` writes, into ``out_dir``:

* ``index.html``: the run's summary, Lightly's sizes table (rows Input, Corrupt,
  Duplicate, Removed, Selected, Datapool Input, Datapool Selected x columns Image, Video),
  the strategies, links to the plots and a table of the picks' objective values;
* ``embeddings.png``: a 2-D projection of the embeddings (UMAP when ``umap-learn`` is
  installed, else PCA by numpy SVD), at most 20,000 points (all selected frames plus a
  seeded sample of the others), selected frames highlighted;
* ``class_distribution.png``: per class, the share in the input, in the selection and
  the BALANCE target (when there is one);
* ``sampling_density.png``: one strip per video along its timeline (frame index), one
  tick per selected frame;
* ``examples/<frame>.jpg``: selected frames with their predicted boxes drawn, for the
  frames whose pixels are passed in ``images``: thumbnails, 550 px wide whatever the
  frame's size, JPEG (a photo as PNG weighs ~5x more);
* ``selection.json``: ``result.to_dict()``.

``index.html`` is self-contained: every plot and example frame is inside it as a ``data:``
URI, so the page shows them wherever it is opened (a presigned URL of the page alone, a
ClearML artifact, a downloaded file); the image files are written beside it too. The page
stays small: at most ``MAX_EXAMPLES`` thumbnails of ~50-150 kB and three plots. Frames are
shown by ``frame_labels`` (e.g. ``<video key>/<frame>``) when given, else by their ids.

Only local files are written; the caller uploads the folder (e.g. to S3).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import PercentFormatter

from framesift.io import layout
from framesift.io.s3 import join_key, put_bytes, s3_uri
from framesift.selection.inputs import TIME_KEY, SelectionInputs
from framesift.selection.result import SIZE_ROWS, SelectionResult

MAX_POINTS = 20_000
MAX_VIDEOS = 40
MAX_EXAMPLES = 12
MAX_TABLE_ROWS = 100
_SELECTED = "#d62728"
_INPUT = "#9aa7b8"
_TARGET = "#2ca02c"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def build_report(
    result: SelectionResult,
    inputs: SelectionInputs,
    out_dir: str | Path,
    *,
    images: Mapping[str, np.ndarray] | None = None,
    title: str = "framesift selection",
    max_points: int = MAX_POINTS,
    max_examples: int = MAX_EXAMPLES,
    seed: int = 0,
    notes: list[str] | None = None,
    frame_labels: Mapping[str, str] | None = None,
) -> Path:
    """Write the report into ``out_dir`` (created if missing); return the index.html path.

    ``images``: frame name -> H x W x 3 uint8 pixels of (some of) the selected frames,
    drawn with their predicted boxes. ``notes``: lines shown under the summary (embedding
    spaces, datapool frames left out, redundancy).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: list[tuple[str, str, str]] = []  # (file, heading, caption)

    emb = _embedding_plot(result, inputs, out / "embeddings.png", max_points, seed)
    if emb:
        plots.append(("embeddings.png", "Embeddings", emb))
    cls = _class_plot(result, inputs, out / "class_distribution.png")
    if cls:
        plots.append(("class_distribution.png", "Class distribution", cls))
    dens = _density_plot(result, inputs, out / "sampling_density.png")
    if dens:
        plots.append(("sampling_density.png", "Sampling density per video", dens))
    labels = frame_labels or {}
    examples = _examples(result, inputs, images or {}, out / "examples", max_examples, labels)

    (out / "selection.json").write_text(json.dumps(result.to_dict(), indent=1))
    inline = [(data_uri(out / f), head, cap) for f, head, cap in plots]
    inline_examples = [(data_uri(out / f), cap) for f, cap in examples]
    (out / "index.html").write_text(
        _html(result, inputs, title, inline, inline_examples, notes or [], labels)
    )
    return out / "index.html"


def data_uri(image: Path | bytes, mime: str | None = None) -> str:
    """A PNG or JPEG (a file, or its bytes with ``mime``) as a ``data:`` URI, so a page
    needs no other file."""
    import base64

    if isinstance(image, Path):
        mime = mime or ("image/jpeg" if image.suffix.lower() in (".jpg", ".jpeg") else "image/png")
        image = image.read_bytes()
    return f"data:{mime or 'image/png'};base64," + base64.b64encode(image).decode("ascii")


def frame_labels(inputs: SelectionInputs, frames: Sequence[int], time_key: str = TIME_KEY) -> dict[str, str]:
    """Frame id -> ``"<video key> @ <time>"`` for the report: frames by their video's S3
    key and time (``inputs.metadata[time_key]``, NaN where unknown), not by the video id."""
    times = (inputs.metadata or {}).get(time_key)
    labels = {}
    for i in frames:
        fid = inputs.frame_names[int(i)]
        name = fid.split("/", 1)[1]
        t = None if times is None or not np.isfinite(times[int(i)]) else {name: float(times[int(i)])}
        labels[fid] = layout.frame_label(inputs.video_keys[int(i)], name, t)
    return labels


# the charset in the header too: a client that reads only the header (requests, curl | less)
# would otherwise decode the page as Latin-1 and garble non-ASCII video keys
HTML_CONTENT_TYPE = "text/html; charset=utf-8"
_CONTENT_TYPES = {
    "html": HTML_CONTENT_TYPE,
    "png": "image/png",
    "jpg": "image/jpeg",
    "json": "application/json",
}


def upload_report(s3, folder: Path, bucket: str, prefix: str) -> str:
    """Upload a report folder (``build_report``'s) under ``prefix``; the index.html's URI."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            put_bytes(
                s3, bucket, join_key(prefix, rel), path.read_bytes(), _CONTENT_TYPES.get(path.suffix[1:])
            )
    return s3_uri(bucket, join_key(prefix, "index.html"))


# ---------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------


EXAMPLE_WIDTH_IN = 5.0  # x 110 dpi: 550 px wide thumbnails
JPEG_QUALITY = 80


def save_figure(fig: Figure, path: Path | BinaryIO, fmt: str | None = None) -> None:
    """Render a figure (Agg, no pyplot state) to a file, or to a buffer in ``fmt``
    (``png``/``jpg``, JPEG at ``JPEG_QUALITY``)."""
    FigureCanvasAgg(fig)
    fmt = fmt or Path(path).suffix[1:]
    extra = {"pil_kwargs": {"quality": JPEG_QUALITY}} if fmt == "jpg" else {}
    fig.savefig(path, format=fmt, dpi=110, bbox_inches="tight", **extra)


def project_2d(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(n, 2) coordinates and the method's name: UMAP if installed, else PCA (SVD)."""
    if len(x) < 3:
        return np.zeros((len(x), 2)), "none"
    try:  # optional; not a dependency
        import umap  # type: ignore[import-not-found]

        coords = umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
        return np.asarray(coords), "UMAP"
    except ImportError:
        pass
    xc = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    var = s**2
    share = var[:2].sum() / var.sum() if var.sum() > 0 else 0.0
    return xc @ vt[:2].T, f"PCA ({share:.0%} of the variance)"


def _embedding_plot(result, inputs, path: Path, max_points: int, seed: int) -> str | None:
    x = inputs.embeddings
    if x is None or inputs.n == 0:
        return None
    sel = np.asarray(result.selected, dtype=np.int64)
    is_sel = np.zeros(inputs.n, dtype=bool)
    is_sel[sel] = True
    finite = np.isfinite(x[:, 0])
    others = np.flatnonzero(~is_sel & finite)
    room = max(0, max_points - len(sel))
    if len(others) > room:
        others = np.sort(np.random.default_rng(seed).choice(others, room, replace=False))
    rows = np.concatenate([others, sel[finite[sel]]])
    coords, method = project_2d(x[rows], seed)
    n_other = len(others)
    fig = Figure(figsize=(7.5, 6.2))
    ax = fig.add_subplot()
    ax.scatter(
        coords[:n_other, 0],
        coords[:n_other, 1],
        s=4,
        c=_INPUT,
        alpha=0.5,
        linewidths=0,
        label=f"input frames ({n_other:,} shown)",
    )
    ax.scatter(
        coords[n_other:, 0],
        coords[n_other:, 1],
        s=22,
        c=_SELECTED,
        edgecolors="white",
        linewidths=0.5,
        label=f"selected ({len(sel):,})",
    )
    ax.set_title(f"Embeddings, 2-D {method.split(' ')[0]}")
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")
    ax.legend(loc="best", framealpha=0.9, markerscale=1.5)
    ax.grid(alpha=0.2)
    save_figure(fig, path)
    shown = f"{len(rows):,} of {inputs.n:,} frames" if len(rows) < inputs.n else f"all {inputs.n:,} frames"
    return f"{method}; {shown} shown, every selected frame among them."


def _class_shares(result, inputs) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None, str] | None:
    if result.balance:
        b = result.balance[0]
        return (
            [str(c) for c in b["classes"]],
            np.asarray(b["input"], dtype=np.float64),
            np.asarray(b["selected"], dtype=np.float64),
            np.asarray(b["target"], dtype=np.float64),
            b.get("label", "BALANCE"),
        )
    flat = inputs.flat_predictions
    if flat is None or flat.n_boxes == 0:
        return None
    vec = flat.class_vectors("CLASS_DISTRIBUTION").astype(np.float64)
    inp = vec.sum(axis=0)
    sel = vec[np.asarray(result.selected, dtype=np.int64)].sum(axis=0)
    return (
        list(flat.category_names),
        inp / inp.sum() if inp.sum() else inp,
        sel / sel.sum() if sel.sum() else sel,
        None,
        "predicted classes (summed probabilities)",
    )


def bucket_labels(classes: list[str], inputs: SelectionInputs, width: int = 28) -> list[str]:
    """Bucket names a reader knows: a per-video value such as a shot (``<video id>:<n>``)
    becomes ``<video file> #<n>``; long names are cut to ``width`` characters."""
    files = {
        f.split("/", 1)[0]: k.rsplit("/", 1)[-1]
        for f, k in zip(inputs.frame_names, inputs.video_keys or [], strict=False)
    }
    out = []
    for c in classes:
        vid, sep, rest = c.partition(":")
        name = f"{files[vid]} #{rest}" if sep and vid in files else c
        out.append(name if len(name) <= width else name[: width - 1] + "…")
    return out


def _class_plot(result, inputs, path: Path) -> str | None:
    shares = _class_shares(result, inputs)
    if shares is None:
        return None
    classes, inp, sel, target, what = shares
    classes = bucket_labels(classes, inputs)
    frames = "METADATA" in what  # a metadata balance counts frames, a prediction one objects
    order = np.argsort(-inp, kind="stable")
    if len(order) > 30:  # the 30 most frequent in the input
        order = order[:30]
    n = len(order)
    width = 0.8 / (3 if target is not None else 2)
    fig = Figure(figsize=(max(6.5, 0.55 * n + 2.5), 4.4))
    ax = fig.add_subplot()
    pos = np.arange(n)
    bars = [("input", inp, _INPUT), ("selected", sel, _SELECTED)]
    if target is not None:
        bars.append(("target", target, _TARGET))
    for j, (label, values, color) in enumerate(bars):
        ax.bar(pos + (j - (len(bars) - 1) / 2) * width, values[order], width, label=label, color=color)
    ticks = [classes[i] for i in order]
    tilt = n > 6 or max(len(t) for t in ticks) * n > 60  # labels that would run into each other
    ax.set_xticks(pos, ticks, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_ylabel("share of frames" if frames else "share of objects")
    ax.set_ylim(0, max(0.05, float(max(v[order].max() for _, v, _ in bars)) * 1.15))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
    title = f"Balance over {what.split('METADATA:')[-1].rstrip(')')}" if frames else "Class distribution"
    ax.set_title(f"{title}: input vs selected" + (" vs target" if target is not None else ""))
    ax.legend(framealpha=0.9)
    ax.grid(axis="y", alpha=0.25)
    save_figure(fig, path)
    err = (
        f" Total variation distance selected-target: {0.5 * np.abs(sel - target).sum():.3f}."
        if target is not None
        else ""
    )
    return f"From {what}.{err}"


def _density_plot(result, inputs, path: Path) -> str | None:
    if inputs.n == 0:
        return None
    videos = np.asarray(inputs.video_keys, dtype=object)
    frames = np.asarray(inputs.frame_indices)
    sel = np.asarray(result.selected, dtype=np.int64)
    names, codes = np.unique(videos.astype(str), return_inverse=True)
    per_video_sel = np.bincount(codes[sel], minlength=len(names))
    per_video_all = np.bincount(codes, minlength=len(names))
    order = np.lexsort((names, -per_video_sel))
    shown = order[:MAX_VIDEOS]
    fig = Figure(figsize=(9, 0.9 + 0.32 * len(shown)))
    ax = fig.add_subplot()
    for row, v in enumerate(shown):
        in_v = codes == v
        lo, hi = int(frames[in_v].min()), int(frames[in_v].max())
        span = max(hi - lo, 1)
        y = len(shown) - 1 - row
        ax.add_patch(Rectangle((0, y - 0.3), 1, 0.6, color="#eef1f5", linewidth=0))
        mine = sel[codes[sel] == v]
        xs = (frames[mine] - lo) / span
        ax.vlines(xs, y - 0.3, y + 0.3, color=_SELECTED, linewidth=1.2)
    ax.set_yticks(
        np.arange(len(shown)),
        [f"{names[v]}  ({per_video_sel[v]}/{per_video_all[v]})" for v in shown[::-1]],
        fontsize=8,
    )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.6, len(shown) - 0.4)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["start", "25%", "50%", "75%", "end"])
    ax.set_xlabel("position in the video (frame index, scaled per video)")
    ax.set_title("Selected frames along each video's timeline")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    save_figure(fig, path)
    more = (
        f" The {MAX_VIDEOS} videos with the most selected frames of {len(names)}."
        if len(names) > MAX_VIDEOS
        else ""
    )
    return f"One tick per selected frame; labels give selected/input frames.{more}"


def _examples(result, inputs, images, folder: Path, limit: int, labels=None) -> list[tuple[str, str]]:
    wanted = [(i, inputs.frame_names[i]) for i in result.selected if inputs.frame_names[i] in images][:limit]
    if not wanted:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    flat = inputs.flat_predictions
    out = []
    for rank, (i, name) in enumerate(wanted):
        img = np.asarray(images[name])
        h, w = img.shape[:2]
        fig = Figure(figsize=(EXAMPLE_WIDTH_IN, EXAMPLE_WIDTH_IN * h / max(w, 1) + 0.4))
        ax = fig.add_subplot()
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        n_boxes = 0
        if flat is not None and flat.bbox is not None:
            for b in np.flatnonzero(flat.frame == i):
                x0, y0, bw, bh = (float(v) for v in flat.bbox[b])
                if not np.isfinite([x0, y0, bw, bh]).all():
                    continue
                n_boxes += 1
                ax.add_patch(Rectangle((x0, y0), bw, bh, fill=False, edgecolor="#ffdd00", linewidth=1.8))
                label = f"{flat.category_names[flat.category[b]]} {flat.score[b]:.2f}"
                ax.text(
                    x0,
                    y0,
                    label,
                    color="black",
                    fontsize=7,
                    va="bottom",
                    bbox={"facecolor": "#ffdd00", "pad": 1, "linewidth": 0},
                    clip_on=True,
                )
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        shown = (labels or {}).get(name, name)
        ax.set_title(f"#{rank + 1}  {shown}", fontsize=9)
        ax.set_axis_off()
        file = f"{rank + 1:03d}-{_SAFE.sub('_', Path(name).stem)}.jpg"
        save_figure(fig, folder / file)
        out.append((f"examples/{file}", f"{shown}: {n_boxes} predicted boxes"))
    return out


# ---------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde3ea;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #dde3ea;padding:.3rem .7rem;text-align:right}
th{background:#f4f6f9}td.l,th.l{text-align:left}figure{margin:1rem 0}figcaption{color:#566;font-size:.9rem}
img{max-width:100%;border:1px solid #eee}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:1rem}
code{background:#f4f6f9;padding:0 .25rem}.muted{color:#667}
"""


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _sizes_table(result: SelectionResult) -> str:
    rows = "".join(
        f"<tr><th class='l'>{_esc(row)}</th><td>{result.sizes[row]['Image']:,}</td><td>{result.sizes[row]['Video']:,}</td></tr>"
        for row in SIZE_ROWS
        if row in result.sizes
    )
    return f"<table id='sizes'><tr><th class='l'></th><th>Image</th><th>Video</th></tr>{rows}</table>"


def _objective_table(result: SelectionResult, labels: Mapping[str, str]) -> str:
    names = result.objective_names
    head = "".join(f"<th>{_esc(n)}</th>" for n in names)
    body = []
    for r in range(min(len(result.selected), MAX_TABLE_ROWS)):
        vals = "".join(
            "<td class='muted'>-</td>" if not np.isfinite(v) else f"<td>{v:.3f}</td>"
            for v in result.objective_values[r]
        )
        kind = "pick" if result.anchor[r] else "sequence"
        body.append(
            f"<tr><td>{r + 1}</td><td class='l'>{_esc(labels.get(result.selected_names[r], result.selected_names[r]))}</td><td class='l'>{kind}</td>{vals}</tr>"
        )
    more = (
        f"<p class='muted'>First {MAX_TABLE_ROWS} of {len(result.selected):,} picks; all are in selection.json.</p>"
        if len(result.selected) > MAX_TABLE_ROWS
        else ""
    )
    return f"<table><tr><th>#</th><th class='l'>frame</th><th class='l'></th>{head}</tr>{''.join(body)}</table>{more}"


def _html(result, inputs, title, plots, examples, notes, labels) -> str:
    t = result.timings
    strategies = (result.spec or {}).get("strategies", [])
    strat_rows = "".join(
        f"<tr><td>{i}</td><td class='l'><code>{_esc(json.dumps(s.get('input', {})))}</code></td>"
        f"<td class='l'><code>{_esc(json.dumps(s.get('strategy', {})))}</code></td></tr>"
        for i, s in enumerate(strategies)
    )
    default_note = (
        " (framesift's default: the config named none)" if (result.spec or {}).get("defaulted") else ""
    )
    regime = ((result.spec or {}).get("regime") or {}).get("text")
    regime_line = f"<p><b>{_esc(regime)}</b></p>" if regime else ""
    figs = "".join(
        f"<h2>{_esc(head)}</h2><figure><img src='{_esc(file)}' alt='{_esc(head)}'><figcaption>{_esc(cap)}</figcaption></figure>"
        for file, head, cap in plots
    )
    ex = ""
    if examples:
        cells = "".join(
            f"<figure><img src='{_esc(f)}' alt='{_esc(c)}'><figcaption>{_esc(c)}</figcaption></figure>"
            for f, c in examples
        )
        ex = f"<h2>Example selected frames</h2><div class='grid'>{cells}</div>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title><style>{CSS}</style></head>
<body>
<h1>{_esc(title)}</h1>
<p>Selected <b>{len(result.selected):,}</b> of {inputs.n:,} frames (budget {result.budget:,}); stopped: <b>{_esc(result.stop_reason)}</b>;
selection took {t.get("total_s", 0.0):.2f} s.</p>
{"".join(f"<p>{_esc(n)}</p>" for n in notes)}
<h2>Sizes</h2>
{_sizes_table(result)}
<p class="muted">Duplicate: frames already in the datapool, exact copies and near-copies of datapool frames.
Removed: frames that failed a THRESHOLD strategy.</p>
<h2>Strategies{default_note}</h2>
{regime_line}
<table><tr><th>#</th><th class='l'>input</th><th class='l'>strategy</th></tr>{strat_rows}</table>
{figs}
{ex}
<h2>Objective values at pick time</h2>
<p class="muted">Each objective's value for the frame when it was picked, normalised to [0, 1] (WEIGHTS-like objectives
min-max over the candidates; DIVERSITY as distance over the largest distance at that step; BALANCE min-max at that step).
The pick maximises their product: each soft objective (all but DIVERSITY) enters as floor + (1 - floor) x value, raised to its
strength, so no soft objective vetoes a frame (floor {(result.spec or {}).get("objective_floor", 0)}); "-" marks frames added as part of a sequence.</p>
{_objective_table(result, labels)}
</body></html>
"""
