"""``python -m bench <name> [--json] [options]``: one benchmark, or ``all`` of them (each in its own process, so
peak RSS is its own), printing each result beside the parse-only limit of the same input."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable

from bench.common import ROOT, machine

# name -> module; the optional ones are written by other parts of the project and dispatched when present.
BENCHES = {
    "webhook": "bench.webhook",
    "differ": "bench.differ",
    "store": "bench.store",
    "frontend": "bench.frontend",
    "watch": "bench.watch",
    "graph": "bench.graph",
    "spool": "bench.spool",
}
OPTIONAL = {"faults": "bench.faults", "search": "bench.search"}
# The overload case: 64 connections at once, far more than the tracer takes (429s past
# audit.max_in_flight_bytes); its figures are its throughput, latency and memory, so no paced phases follow.
OVERLOAD = ["webhook", "--concurrency", "64", "--paced-batches", "0", "--load-fraction", "0"]
# What ``all`` runs: the default path, the OTLP-only path and the overload, then each component.
ALL = (["webhook"], ["webhook", "--otlp-only"], OVERLOAD, ["differ"], ["store"], ["frontend"], ["graph"], ["spool"])


def _present(name: str) -> bool:
    """Whether the benchmark's module is there, without importing it (importing runs its imports)."""
    module = BENCHES.get(name) or OPTIONAL.get(name)
    return module is not None and importlib.util.find_spec(module) is not None


def _entry(name: str) -> Callable[[list[str]], int] | None:
    if not _present(name):
        return None
    main: Callable[[list[str]], int] = importlib.import_module(BENCHES.get(name) or OPTIONAL[name]).main
    return main


def run_all(argv: list[str]) -> int:
    """Every benchmark in a child process; ``--json`` prints one object holding the machine and every result."""
    as_json = "--json" in argv
    results = []
    started = time.perf_counter()
    for args in ALL:
        command = [sys.executable, "-m", "bench", *args, *(["--json"] if as_json else [])]
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            print(f"bench {' '.join(args)} failed with exit code {done.returncode}", file=sys.stderr)
            return done.returncode
        if as_json:
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result.pop("machine", None)
            results.append(result)
        else:
            print(f"== {' '.join(args)}\n{done.stdout}", flush=True)
    if as_json:
        total = round(time.perf_counter() - started, 1)
        print(json.dumps({"machine": machine(), "wall_seconds": total, "results": results}, indent=1))
    return 0


def main(argv: list[str]) -> int:
    names = sorted([*BENCHES, *(name for name in OPTIONAL if _present(name)), "all"])
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m bench {{{','.join(names)}}} [--json] [options]\n\n{__doc__}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "all":
        return run_all(rest)
    entry = _entry(name)
    if entry is None:
        print(f"unknown benchmark {name!r}; choose one of {', '.join(names)}", file=sys.stderr)
        return 2
    return entry(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
