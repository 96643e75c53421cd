"""Fault benchmark (issue #8): the real ``kelemetry-py serve`` under kill -9, SIGTERM and a 60 s OTLP outage.

Drives the same scenarios as ``tests/faults`` (re-batched recorded audit events with unique audit IDs, posted
concurrently over loopback; an OTLP/gRPC receiver in this process; the embedded store) and prints what they
measured: events acknowledged, acknowledged audit events lost at the receiver and in the store, duplicate
deliveries, exit code and drain time, peak RSS of the serve process, and the store's rate during the outage
against the same full load with the receiver up.

    python -m bench faults [--events 37500] [--outage-seconds 60] [--json]
    python -m bench.faults ...
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from kelemetry_py.process import run_event_loop
from tests.faults import scenarios
from tests.faults.scenarios import FaultEnv
from tests.faults.workload import Workload
from tests.support.otlp_receiver import GrpcOtlpReceiver
from tests.support.redis_server import running_redis

SCENARIOS = ("kill", "sigterm", "outage", "poison", "replicas")
DEFAULT_SCENARIOS = ("kill", "sigterm", "outage")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench faults", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=37_500, help="audit events per kill/SIGTERM run (37500)")
    parser.add_argument("--outage-seconds", type=float, default=60.0, help="OTLP outage at full load (60)")
    parser.add_argument("--concurrency", type=int, default=4, help="batches in flight (4)")
    parser.add_argument("--batch-size", type=int, default=200, help="audit events per webhook batch (200)")
    parser.add_argument(
        "--settle-seconds", type=float, default=120.0, help="longest wait for delivery once undisturbed (120)"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated, of {', '.join(SCENARIOS)} (default: {','.join(DEFAULT_SCENARIOS)})",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON document")
    args = parser.parse_args(argv)
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario {unknown[0]} (known: {', '.join(SCENARIOS)})")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workload = Workload.from_fixtures(batch_size=args.batch_size)
    receiver = GrpcOtlpReceiver(keep_requests=False)
    await receiver.start()
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="kelemetry-faults-") as tmp:
            env = FaultEnv(
                workdir=Path(tmp),
                workload=workload,
                receiver=receiver,
                concurrency=args.concurrency,
                settle_seconds=args.settle_seconds,
            )
            try:
                for name in args.scenarios:
                    try:
                        results[name] = await _scenario(name, env, args)
                    except Exception as exc:  # one scenario that cannot run (e.g. a config key serve rejects)
                        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                    await env.close()
            finally:
                await env.close()
    finally:
        await receiver.stop()
    return results


async def _scenario(name: str, env: FaultEnv, args: argparse.Namespace) -> Any:
    if name == "kill":
        return (await scenarios.kill_and_restart(env, args.events)).as_dict()
    if name == "sigterm":
        return (await scenarios.sigterm(env, args.events)).as_dict()
    if name == "poison":
        return (await scenarios.poison(env, args.events // 3)).as_dict()
    if name == "replicas":
        with running_redis() as url:
            env.redis_url = url
            return (await scenarios.replicas_kill(env, args.events)).as_dict()
    outage = await scenarios.otlp_outage(env, args.outage_seconds)
    baseline = await scenarios.full_load(env, args.outage_seconds)
    during = outage.details.get("store_audit_spans_per_second")
    undisturbed = baseline.details.get("store_audit_spans_per_second")
    return {
        "outage": outage.as_dict(),
        "undisturbed": baseline.as_dict(),
        "store_rate_ratio": during / undisturbed if during and undisturbed else None,
    }


def _number(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}"


def _print_run(figures: dict[str, Any]) -> None:
    print(f"== {figures['scenario']}")
    print(
        f"  acknowledged        {_number(figures['events_acknowledged'])} events in "
        f"{_number(figures['batches_acknowledged'])} batches ({_number(figures['batches_unanswered'])} unanswered); "
        f"{_number(figures['expected_audit_ids'])} audit spans expected; answers {figures['statuses']}"
    )
    print(
        f"  lost                {_number(figures['lost_at_receiver'])} at the receiver, "
        f"{_number(figures['lost_in_store'])} in the store"
    )
    print(
        f"  duplicates          {_number(figures['duplicate_deliveries'])} re-delivered spans; "
        f"{figures['split_roots']} object windows with two root ids; {figures['orphan_traces']} traces without root"
    )
    print(
        f"  exit                code {figures['exit_code']} {_number(figures['exit_seconds'], ' s', 2)} after the "
        f"signal; drained {figures['drained']} ({_number(figures['drain_seconds'], ' s', 2)})"
    )
    print(f"  peak RSS            {_number(figures['peak_rss_mib'], ' MiB', 0)}")
    details = {k: v for k, v in figures["details"].items() if not k.startswith("stderr")}
    if details:
        print(f"  details             {orjson.dumps(details, default=str).decode()[:1500]}")


def print_results(results: dict[str, Any]) -> None:
    for name, figures in results.items():
        if "error" in figures:
            print(f"== {name}: could not run: {figures['error'][:1500]}")
            continue
        if name != "outage":
            _print_run(figures)
            continue
        _print_run(figures["outage"])
        _print_run(figures["undisturbed"])
        during = figures["outage"]["details"].get("store_audit_spans_per_second")
        undisturbed = figures["undisturbed"]["details"].get("store_audit_spans_per_second")
        ratio = figures["store_rate_ratio"]
        print(
            f"== store rate         {_number(during, '/s', 0)} audit spans during the outage vs "
            f"{_number(undisturbed, '/s', 0)} undisturbed ({_number(ratio * 100 if ratio else None, ' %', 0)})"
        )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    results = run_event_loop(run(args))
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2, default=str).decode())
    else:
        print_results(results)
    return 1 if any("error" in figures for figures in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
