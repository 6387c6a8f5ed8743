"""Run every benchmark in bench/ and regenerate the benchmark tables (what `make bench` does).

Discovers bench/bench_*.py, runs each in its own process (one at a time: they measure
the machine), expects each to write bench/results/<name>.json with the common fields of
bench/common.py, then rewrites the generated tables in README.md and docs/*.md from those
files (bench/tables.py: benchmark, peer, ratio, target, met, and the numbers behind them).

    python bench/run_all.py                    every benchmark, then the tables
    python bench/run_all.py --only e2e,extract some of them, then the tables
    python bench/run_all.py --table-only       just the tables, from the JSON files there are
                                               (the same as python bench/tables.py)

A benchmark that fails does not stop the others; the tables then show its last result
(with its date), the failure is printed and the run exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tables  # noqa: E402  (bench/ is not a package)

ROOT = tables.ROOT
BENCH = tables.BENCH
RESULTS = tables.RESULTS


def discover() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(BENCH.glob("bench_*.py"))}


def run(name: str, script: Path) -> dict:
    env = dict(os.environ)
    paths = [str(ROOT / "include"), str(ROOT / "plugins"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    print(f"== {script.relative_to(ROOT)}", flush=True)
    t0 = time.monotonic()
    rc = subprocess.call([sys.executable, str(script)], cwd=ROOT, env=env)
    took = round(time.monotonic() - t0, 1)
    print(f"== {name}: exit {rc} after {took} s", flush=True)
    return {"rc": rc, "wall_s": took}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated names (e2e, extract, ...)")
    parser.add_argument(
        "--table-only",
        "--tables-only",
        dest="table_only",
        action="store_true",
        help="only regenerate the tables in README.md and docs/*.md from bench/results/*.json",
    )
    args = parser.parse_args()
    scripts = discover()
    chosen = [n for n in args.only.split(",") if n] or list(scripts)
    unknown = sorted(set(chosen) - set(scripts))
    if unknown:
        parser.error(f"no bench/bench_<name>.py for {unknown}; there are {sorted(scripts)}")
    outcomes: dict[str, dict] = {}
    if not args.table_only:
        RESULTS.mkdir(parents=True, exist_ok=True)
        for name in chosen:
            outcomes[name] = run(name, scripts[name])
    rewritten = tables.update()
    names = ", ".join(str(p.relative_to(ROOT)) for p in rewritten)
    print(f"rewrote the bench tables in: {names}" if rewritten else "bench tables already up to date")
    failed = [n for n, o in outcomes.items() if o["rc"]]
    if failed:
        print(
            f"failed: {failed} (exit codes {[outcomes[n]['rc'] for n in failed]}); "
            "their rows show the last result there is",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
