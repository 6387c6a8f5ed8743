"""What every benchmark's JSON carries, so `bench/run_all.py` can tabulate them.

Each bench script keeps its own detailed report and calls :func:`write_result`, which
adds the common fields at the top level and writes ``bench/results/<name>.json``:

    benchmark    the script (bench/bench_<name>.py)
    what         one line: what is measured
    peer         the named peer measured in the same run (or why there is none)
    ratio        the headline number; ratio_means says which way is better
    target       the target, in words; met: whether the ratio meets it (None: not judged)
    raw_timings_s the raw wall times behind the ratio, per side
    machine      CPU count and model, memory, Python, torch and GPU (merged with the
                 script's own machine fields), load average at the end
    finished_at  UTC timestamp
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
COMMON_KEYS = (
    "benchmark",
    "what",
    "peer",
    "ratio",
    "ratio_means",
    "target",
    "met",
    "raw_timings_s",
    "machine",
    "finished_at",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """The machine, without importing anything heavy that the benchmark did not import."""
    import sys

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch  # noqa: F811  (cheap once the benchmark ran; version info is the point)
        except ImportError:
            torch = None
    if torch is not None:
        info["torch"] = torch.__version__
        info["cuda"] = bool(torch.cuda.is_available())
        info["gpu"] = torch.cuda.get_device_name(0) if info["cuda"] else None
    return info


def write_result(
    name: str,
    report: dict[str, Any],
    *,
    what: str,
    peer: str | None,
    ratio: float | None,
    ratio_means: str,
    target: str | None,
    met: bool | None,
    raw_timings_s: dict[str, Any] | None,
) -> Path:
    """Write ``report`` plus the common fields to bench/results/<name>.json (atomically).

    The script's own keys stay; where one clashes with a common key it is kept under
    ``details`` (e.g. a per-variant ``ratio`` dict).
    """
    details = {k: report[k] for k in COMMON_KEYS if k in report and k != "machine"}
    rest = {k: v for k, v in report.items() if k not in COMMON_KEYS}
    out = {
        "benchmark": f"bench/bench_{name}.py",
        "what": what,
        "peer": peer,
        "ratio": None if ratio is None else round(float(ratio), 3),
        "ratio_means": ratio_means,
        "target": target,
        "met": met,
        "raw_timings_s": raw_timings_s,
        "machine": {**(report.get("machine") or {}), **machine_info()},
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **rest,
    }
    if details:
        out["details"] = details
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(out, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path
