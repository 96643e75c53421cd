"""What every benchmark shares: fixture loading, the parse-only limit, percentiles, RSS and JSON output."""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SCENARIOS = ("deployment-lifecycle", "errors-and-links", "batch-and-stateful")
MIN_LIMIT_CPU_SECONDS = 0.3


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 50 samples is the second largest)."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds_of(pids: Sequence[int]) -> float:
    """User and system CPU of other processes, running or not yet reaped (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def peak_rss_mib_of(pids: Sequence[int]) -> float:
    """The sum of other processes' peak resident sets (Linux): an upper bound, as forked ones share pages."""
    total_kib = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def parse_limit(items: Sequence[bytes], count_of: Callable[[Any], int], parse: Callable[[bytes], Any]) -> float:
    """Units per CPU second that ``parse`` alone manages over ``items`` (repeated until the clock is trustworthy).

    ``count_of`` says how many units (events, spans) one parsed item holds. The cyclic collector is paused meanwhile:
    with CPython's default thresholds the figure was mostly its passes over everything else the process holds (the
    webhook's audit limit, once the App's modules were imported: 35,000-51,000 events per CPU second, against
    125,000-156,000 paused, in the same process and minutes).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        units = 0
        started = time.process_time()
        while True:
            for item in items:
                units += count_of(parse(item))
            spent = time.process_time() - started
            if spent >= MIN_LIMIT_CPU_SECONDS:
                return units / spent
    finally:
        if was_enabled:
            gc.enable()


def other_installed_plugins() -> list[str]:
    """Entry-point names of plugins installed beside kelemetry-py (the examples of ``plugins/`` in a development
    environment): the default configuration of a plain install has only the built-in ones, and a figure must
    not depend on what else happens to be installed."""
    from importlib.metadata import entry_points

    from kelemetry_py.plugins import DECORATORS_GROUP, LINKERS_GROUP, SOURCES_GROUP, TRANSFORMS_GROUP

    groups = entry_points()
    return sorted(
        {
            entry.name
            for group in (SOURCES_GROUP, LINKERS_GROUP, DECORATORS_GROUP, TRANSFORMS_GROUP)
            for entry in groups.select(group=group)
            if entry.dist is None or entry.dist.name != "kelemetry-py"
        }
    )


def dir_bytes(path: str | Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def machine() -> dict[str, Any]:
    """Enough to tell two results files apart: CPU model and count, load while running, Python, the store's SQLite
    (apsw's build) and the stdlib's (the search index and the state files)."""
    import sqlite3

    import apsw

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "sqlite": apsw.sqlite_lib_version(),
        "sqlite_stdlib": sqlite3.sqlite_version,
        "system": f"{platform.system()} {platform.release()}",
    }


def arguments(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The command line of ``python -m bench NAME``, with its ``--json``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m bench {name}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    return parser


def report(result: dict[str, Any], as_json: bool) -> None:
    """One JSON object per run on one line, or the same fields aligned for a person; the machine is added."""
    result.setdefault("machine", machine())
    if as_json:
        print(json.dumps(result, sort_keys=False), flush=True)
        return
    width = max(len(key) for key in result)
    for key, value in result.items():
        shown = f"{value:,.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}", file=sys.stdout)
    print(flush=True)


def ratio(value: float, limit: float) -> float:
    return round(value / limit, 4) if limit else 0.0
