"""The benchmark tables of the docs, generated from bench/results/*.json (never typed).

A page holds a generated table between two marker lines, the first naming the table:

    <!-- bench-table:start summary -->
    ...
    <!-- bench-table:end -->

Tables: ``summary`` (README.md: ratio, target, met), ``full`` (docs/benchmarks.md: also
the peer and what the ratio means), ``details`` (the headline numbers behind each ratio),
``loop`` (the label-efficiency curves per strategy and round), ``misses`` (the benchmarks
whose target is not met) and ``machines`` (where they ran).
Every table is a function of the JSON files alone (no clock, no run state), so
tests/unit/test_docs.py can check that each page shows exactly what the JSON says.

    python bench/tables.py            rewrite the tables in README.md and docs/*.md (``make docs``)
    python bench/tables.py --check    only check; exit 1 naming the pages that are stale

``make bench`` (bench/run_all.py) calls the same code after the benchmarks have run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
# a marker is a line of its own (a mention inside a sentence or `code` is not one)
MARKER = re.compile(
    r"(?P<start>^<!-- bench-table:start (?P<name>[a-z_]+) -->\n)(?P<body>.*?)(?P<end>^<!-- bench-table:end -->$)",
    re.DOTALL | re.MULTILINE,
)
ANY_MARKER = re.compile(r"^<!-- bench-table:.*-->$", re.MULTILINE)

Results = Mapping[str, dict[str, Any] | None]


class TableError(ValueError):
    """Markers that cannot be filled (unknown table name, unbalanced markers)."""


# ------------------------------------------------------------------ the JSON files


def bench_names(bench_dir: Path = BENCH) -> list[str]:
    """Names of the benchmarks: bench/bench_<name>.py."""
    return [p.stem.removeprefix("bench_") for p in sorted(bench_dir.glob("bench_*.py"))]


def load_results(results_dir: Path = RESULTS, names: Sequence[str] | None = None) -> dict[str, dict | None]:
    """name -> the parsed bench/results/<name>.json (None when missing or unreadable)."""
    out: dict[str, dict | None] = {}
    for name in bench_names() if names is None else names:
        try:
            out[name] = json.loads((results_dir / f"{name}.json").read_text())
        except (OSError, ValueError):
            out[name] = None
    return out


# ------------------------------------------------------------------ cells


def number(value: Any) -> str:
    """A JSON number as the JSON has it: 1.4 stays 1.4, 0.923 stays 0.923 (shortest repr)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return repr(value)
    return str(value)


def value_text(value: Any) -> str:
    """Any JSON value as one cell: numbers exactly, lists comma-separated, mappings as k v."""
    if value is None:
        return "—"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {value_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(value_text(v) for v in value)
    return number(value)


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = [row(header), "| " + " | ".join("---" for _ in header) + " |", *(row(r) for r in rows)]
    return "\n".join(lines) + "\n"


def script(name: str) -> str:
    return f"`bench_{name}.py`"


def peer(result: Mapping[str, Any]) -> str:
    p = result.get("peer") or result.get("peers")
    if isinstance(p, Mapping):
        p = p.get("name")
    if isinstance(p, list):
        p = "; ".join(map(str, p))
    return str(p) if p else "—"


def ratio(result: Mapping[str, Any]) -> str:
    r = result.get("ratio")
    if isinstance(r, int | float) and not isinstance(r, bool):
        return number(r)
    return "—" if r is None else "see JSON"


def met(result: Mapping[str, Any]) -> str:
    m = result.get("met")
    if isinstance(m, bool):
        return "yes" if m else "**no**"
    return "—" if m is None else "see JSON"


def date(result: Mapping[str, Any]) -> str:
    return str(result.get("finished_at") or "")[:10] or "—"


def lookup(data: Any, path: str) -> Any:
    """``a.b.c`` in nested mappings (a key may itself hold dots: ``details.ratio.x/y``)."""
    node = data
    rest = path
    while rest:
        if not isinstance(node, Mapping):
            return None
        if rest in node:
            return node[rest]
        head, _, rest = rest.partition(".")
        if head not in node:
            return None
        node = node[head]
    return node


# ------------------------------------------------------------------ the tables


def summary_table(results: Results) -> str:
    """README.md: one row per benchmark, its ratio, target and whether it is met."""
    rows = []
    for name, r in results.items():
        if r is None:
            rows.append([script(name), "not run yet", "", "", "", ""])
            continue
        rows.append(
            [script(name), ratio(r), r.get("ratio_means") or "—", r.get("target") or "—", met(r), date(r)]
        )
    return table(["benchmark", "ratio", "ratio means", "target", "met?", "date"], rows)


def full_table(results: Results) -> str:
    """docs/benchmarks.md: what is measured, the peer, the ratio and what it means, the target."""
    rows = []
    for name, r in results.items():
        if r is None:
            rows.append([script(name), "not run yet", "", "", "", "", ""])
            continue
        rows.append(
            [
                f"{script(name)}: {r.get('what') or ''}",
                peer(r),
                ratio(r),
                r.get("ratio_means") or "—",
                r.get("target") or "—",
                met(r),
                date(r),
            ]
        )
    return table(["benchmark", "peer", "ratio", "ratio means", "target", "met?", "date"], rows)


# the numbers behind each headline ratio: (what, the key path in the benchmark's JSON)
DETAILS: dict[str, list[tuple[str, str]]] = {
    "e2e": [
        ("framesift: upload -> labeling task, s", "framesift.upload_to_labeling_task_s"),
        ("framesift: seconds per stage", "framesift.stages_s"),
        ("framesift: Airflow and other overhead, s", "framesift.airflow_and_other_s"),
        ("peer: total, s", "naive.total_s"),
        ("peer: seconds per step", "naive.stages_s"),
        ("framesift inference", "framesift.inference"),
        ("GPU variant", "gpu"),
    ],
    "coverage": [
        ("the cascade's cheap embedding, ms per frame", "cascade_cheap_embedding_ms"),
    ],
    "extract": [
        ("median wall time, s", "median_s"),
        ("ratios", "ratios"),
        ("decode threading, median s", "threading_median_s"),
        ("decode only, s", "decode_only_s"),
        ("frames written", "frames_written"),
    ],
    "inference": [
        ("frames/s", "fps"),
        ("CPU s per frame (this process, all its threads)", "cpu_s_per_frame"),
        ("framesift's steps, ms per frame (OpenVINO detector)", "framesift_stages_ms_per_frame"),
        ("strongest peer", "strongest_peer"),
        ("runtime auto picked", "auto_picked"),
        ("vs ultralytics torch batched", "speedup_vs_ultralytics_torch_batched"),
        ("strongest peer at float32 (equal precision)", "strongest_peer_at_float32"),
        ("vs the strongest peer at float32", "speedup_vs_strongest_peer_at_float32"),
        ("GPU variant", "gpu"),
    ],
    "selection": [
        ("select() seconds at 10k / 100k / 1M frames", "raw_timings_s"),
        ("ratios at 1M frames", "details.ratio"),
    ],
    "selection_peer": [
        ("video-like, diversity", "details.ratio.video_like/framesift_diversity"),
        ("video-like, diversity x typicality", "details.ratio.video_like/framesift_diversity_typicality"),
        ("noisy, diversity", "details.ratio.noisy/framesift_diversity"),
        ("noisy, diversity x typicality", "details.ratio.noisy/framesift_diversity_typicality"),
    ],
    "loop": [
        ("uniform's final mean mAP50-95 and its labels", "uniform_final"),
        ("framesift's labels to reach it (linear between rounds)", "labels_to_reach_uniform_final"),
        ("mAP50-95 points vs random at the last round (mean of the seeds' differences)", "points_vs_random"),
        ("its 95 % interval", "points_vs_random_ci95"),
        ("mAP50-95 points vs uniform at the last round", "points_vs_uniform"),
        ("settings", "settings"),
    ],
}


# the loop table: per strategy and round, these metrics (mean [95 % interval] over seeds)
LOOP_METRICS = (
    ("mAP50-95", "map50_95"),
    ("mAP50", "map50"),
    ("rare-class AP50-95", "rare_ap50_95"),
    ("rare-event frames labeled", "rare_frames_labeled"),
    ("scenes labeled", "scenes_labeled"),
)


def mean_interval(value: Any) -> str:
    """``{"mean", "ci95"}`` as 'mean [low, high]'."""
    if not isinstance(value, Mapping):
        return value_text(value)
    low, high = value.get("ci95") or (None, None)
    return f"{number(value.get('mean'))} [{number(low)}, {number(high)}]"


def loop_table(results: Results) -> str:
    """docs/benchmarks.md: bench_loop.py's learning curves, every strategy and round."""
    r = results.get("loop")
    if not r or not r.get("table"):
        return "bench_loop.py has not been run yet.\n"
    rows = [
        [strategy, step["round"], step["labels"], *(mean_interval(step.get(key)) for _, key in LOOP_METRICS)]
        for strategy, steps in r["table"].items()
        for step in steps
    ]
    return table(["strategy", "round", "labels", *(name for name, _ in LOOP_METRICS)], rows)


# coverage rows: per data set and budget, these metrics of every method (random: its mean)
COVERAGE_METRICS = ("scene_recall", "mean_distance", "radius")


def coverage_rows(r: Mapping[str, Any]) -> list[list[str]]:
    """bench_coverage.py's numbers per data set and budget, each metric for every method
    (random's mean over its seeds), the scene-recall ceiling and the cascade's detector share."""
    rows = []
    for ds, data in (r.get("datasets") or {}).items():
        for k, b in (data.get("budgets") or {}).items():
            methods = {m: v for m, v in b["methods"].items() if "skipped" not in v}
            for metric in COVERAGE_METRICS:
                values = {
                    m: v[metric]["mean"] if isinstance(v[metric], Mapping) else v[metric]
                    for m, v in methods.items()
                }
                if metric == "scene_recall":
                    values["ceiling"] = b.get("scene_recall_ceiling")
                rows.append([script("coverage"), f"{ds}, {k} picks: {metric}", value_text(values)])
            rows.append([script("coverage"), f"{ds}, {k} picks: targets", value_text(b.get("targets"))])
            share = methods.get("framesift_cascade", {}).get("detector_share")
            if share is not None:
                rows.append([script("coverage"), f"{ds}, {k} picks: cascade's detector share", number(share)])
    return rows


def details_table(results: Results) -> str:
    """docs/benchmarks.md: the numbers behind each ratio, read from the JSON by key."""
    rows = []
    for name, r in results.items():
        if r is None:
            rows.append([script(name), "not run yet", ""])
            continue
        if name == "coverage":
            rows += coverage_rows(r)
        for label, path in DETAILS.get(name, []):
            value = lookup(r, path)
            rows.append([script(name), label, value_text(value)])
    return table(["benchmark", "measure", "value (from the JSON)"], rows)


def misses_table(results: Results) -> str:
    """docs/limitations.md: the benchmarks whose target is not met."""
    rows = [
        [script(name), r.get("target") or "—", ratio(r), r.get("ratio_means") or "—", date(r)]
        for name, r in results.items()
        if r is not None and r.get("met") is False
    ]
    if not rows:
        return "Every benchmark meets its target.\n"
    return table(["benchmark", "target (not met)", "ratio", "ratio means", "date"], rows)


def machines_list(results: Results) -> str:
    """Where the results were measured (one line per distinct machine)."""
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in results.values():
        m = (r or {}).get("machine") or {}
        if m.get("cpu_count"):
            seen.setdefault((m.get("cpu_count"), m.get("cpu_model"), m.get("gpu")), m)
    lines = []
    for m in seen.values():
        mem = m.get("memory_bytes")
        lines.append(
            f"- {m.get('cpu_count')} × {m.get('cpu_model') or m.get('cpu') or '?'}"
            + (f", {mem / 2**30:.0f} GiB" if mem else "")
            + f", Python {m.get('python', '?')}"
            + (f", torch {m['torch']}" if m.get("torch") else "")
            + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
        )
    return "\n".join(lines) + "\n" if lines else "- (no results yet)\n"


TABLES: dict[str, Callable[[Results], str]] = {
    "summary": summary_table,
    "full": full_table,
    "details": details_table,
    "misses": misses_table,
    "loop": loop_table,
    "machines": machines_list,
}


def render(name: str, results: Results) -> str:
    try:
        return TABLES[name](results)
    except KeyError:
        raise TableError(f"unknown bench table {name!r}; known: {', '.join(TABLES)}") from None


# ------------------------------------------------------------------ the pages


def fill(text: str, results: Results, where: str = "<text>") -> str:
    """``text`` with every marked table replaced by what ``results`` render to."""
    found = MARKER.findall(text)
    if len(ANY_MARKER.findall(text)) != 2 * len(found):
        raise TableError(f"{where}: unbalanced bench-table markers (each start needs its end)")

    def replace(m: re.Match[str]) -> str:
        return m["start"] + render(m["name"], results) + m["end"]

    return MARKER.sub(replace, text)


def table_names(text: str) -> list[str]:
    """The tables a page holds, in order."""
    return [m["name"] for m in MARKER.finditer(text)]


def pages(root: Path = ROOT) -> list[Path]:
    """The pages that may hold tables: README.md and every page under docs/."""
    readme = root / "README.md"
    return ([readme] if readme.exists() else []) + sorted((root / "docs").glob("*.md"))


def update(results: Results | None = None, *, check: bool = False, root: Path = ROOT) -> list[Path]:
    """Rewrite (or with ``check``, only compare) the tables; returns the stale pages.

    Every page is rendered before any is written, so a bad marker changes nothing.
    """
    results = load_results() if results is None else results
    changed = {}
    for path in pages(root):
        text = path.read_text()
        new = fill(text, results, str(path.relative_to(root)))
        if new != text:
            changed[path] = new
    if not check:
        for path, new in changed.items():
            path.write_text(new)
    return list(changed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when a table is stale")
    args = parser.parse_args(argv)
    stale = update(check=args.check)
    names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
    if args.check:
        if stale:
            print(f"stale bench tables in: {names} (run `python bench/tables.py`)", file=sys.stderr)
            return 1
        print("bench tables are up to date")
        return 0
    print(f"rewrote the bench tables in: {names}" if stale else "bench tables already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
