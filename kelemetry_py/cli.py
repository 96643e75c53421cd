"""The ``kelemetry-py`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from kelemetry_py import __version__
from kelemetry_py.config import Config, ConfigError, load_config, masked
from kelemetry_py.process import run_event_loop


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=os.environ.get("KELEMETRY_CONFIG"), help="YAML configuration file")
    parser.add_argument("--cluster", dest="cluster", help="cluster name for POST /audit (default: default)")
    parser.add_argument("--http-host", dest="http.host", help="address to listen on")
    parser.add_argument("--http-port", dest="http.port", type=int, help="webhook and frontend port (8080)")
    parser.add_argument("--otlp-endpoint", dest="otlp.endpoint", help="grpc://HOST:PORT or http://HOST:PORT/v1/traces")
    parser.add_argument("--store-path", dest="store.path", help="embedded SQLite store file")
    parser.add_argument(
        "--no-store",
        dest="store.enabled",
        action="store_const",
        const=False,
        help="disable the embedded store",
    )
    parser.add_argument("--redis-url", dest="redis.url", help="share state with other replicas through Redis")
    parser.add_argument(
        "--ui-dir", dest="frontend.ui_dir", help="serve a Jaeger UI build from this directory under /jaeger/"
    )
    parser.add_argument("--log-level", dest="log_level", help="debug, info, warning or error")
    parser.add_argument("--log-format", dest="log.format", help="text or json")


def _config_from(args: argparse.Namespace) -> Config:
    flags = {key: value for key, value in vars(args).items() if "." in key or key in ("cluster", "log_level")}
    return load_config(args.config, overrides=flags)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kelemetry-py", description="Kubernetes control-plane tracer")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the webhook, pipeline and frontend in one process")
    _add_config_flags(serve)

    config = commands.add_parser("config", help="print the effective configuration")
    _add_config_flags(config)

    replay = commands.add_parser("replay", help="post recorded audit.jsonl batches to a webhook")
    replay.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    replay.add_argument("--target", default="http://127.0.0.1:8080", help="webhook base URL")
    replay.add_argument("--cluster", default="default", help="cluster name (POST /audit/CLUSTER)")
    replay.add_argument("--gzip", action="store_true", help="gzip each batch as the apiserver can")
    replay.add_argument("--token", default="", help="bearer token for the webhook")
    replay.add_argument("--concurrency", type=int, default=1, help="batches in flight at once")

    demo = commands.add_parser("demo", help="serve and replay the bundled recordings: a trace in a minute")
    _add_config_flags(demo)
    demo.add_argument("--fast", action="store_true", help="post the recordings at once, not at their pace")
    demo.add_argument("--data-dir", default="./kelemetry-demo", help="where the demo keeps its store")

    commands.add_parser("version", help="print the version")
    _add_analysis_commands(commands)
    from kelemetry_py.search.cli import add_search_commands

    add_search_commands(commands)
    return parser


def _add_object_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("object", metavar="KIND/NAME", help="e.g. deploy/web, pod/web-1, clusterrole/view")
    parser.add_argument("-n", "--namespace", help="namespace of a namespaced object (default: default)")
    parser.add_argument("--cluster", default="", help="cluster name (default: any)")
    parser.add_argument("--since", default="1h", help="how far back from --end to look (Go duration, 1h)")
    parser.add_argument("--start", help="range start: RFC 3339 or unix seconds (overrides --since)")
    parser.add_argument("--end", help="range end: RFC 3339 or unix seconds (default: now)")
    parser.add_argument(
        "--server",
        default=os.environ.get("KELEMETRY_SERVER", "http://127.0.0.1:8080"),
        help="kelemetry-py frontend URL (env KELEMETRY_SERVER)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("KELEMETRY_TOKEN", ""),
        help="bearer token when the server has auth.mode token or kubernetes (env KELEMETRY_TOKEN)",
    )
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text", help="output format")


def _add_analysis_commands(commands: Any) -> None:
    analyze = commands.add_parser("analyze", help="timeline, rollout latency, failures and changes of an object")
    _add_object_flags(analyze)
    analyze.add_argument(
        "--scope",
        choices=("owned", "full", "object"),
        default="owned",
        help="the object and what it owns (default), its whole tree, or the object alone",
    )
    trace = commands.add_parser("trace", help="print an object's trace as a tree")
    _add_object_flags(trace)
    trace.add_argument(
        "--mode",
        default="tracing [owned objects]",
        help="display mode (default: tracing [owned objects], like kubectl tree); e.g. tree, tracing [full tree]",
    )
    trace.add_argument("--no-logs", action="store_true", help="spans only")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"kelemetry-py {__version__}")
        return 0
    if args.command == "replay":
        return _replay(args)
    if args.command in ("analyze", "trace"):
        return _query_command(args)
    if args.command == "demo":
        return _demo(args)
    if args.command in ("events", "audit"):
        from kelemetry_py.search.cli import main as search_main

        return search_main(args)
    try:
        config = _config_from(args)
    except ConfigError as exc:
        print(f"kelemetry-py: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(yaml.safe_dump(masked(config.to_dict()), sort_keys=False), end="")
        return 0
    return _serve(config)


def _serve(config: Config) -> int:
    from kelemetry_py.app import App
    from kelemetry_py.logs import configure_logging

    configure_logging(config.log_level, config.log.format)
    return run_event_loop(_run_until_signalled(App(config)))


async def _run_until_signalled(app: Any) -> int:
    """Serve until SIGTERM or SIGINT, then drain within ``shutdown_grace_seconds`` and exit 0: a rolling update
    or a Ctrl-C must not drop what was accepted (whatever does not drain in time stays in the spool)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def request_stop(signum: int) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signum)
    try:
        await app.start()
    except BaseException:
        await app.stop(grace_seconds=0)
        raise
    await stop.wait()
    logging.getLogger("kelemetry_py").info(
        "%s received: draining for at most %ss", received[0], app.config.shutdown_grace_seconds
    )
    drained = await app.stop()
    logging.getLogger("kelemetry_py").info("stopped (%s)", "drained" if drained else "the rest waits in the spool")
    return 0


def _demo(args: Any) -> int:
    from kelemetry_py import demo
    from kelemetry_py.logs import configure_logging

    # The demo's own defaults, below every flag: loopback only, a data dir of its own, the recordings' cluster.
    defaults = {"http.host": "127.0.0.1", "store.path": str(Path(args.data_dir) / "traces.db"), "cluster": demo.CLUSTER}
    flags = {key: value for key, value in vars(args).items() if "." in key or key in ("cluster", "log_level")}
    try:
        config = load_config(args.config, overrides={**defaults, **{k: v for k, v in flags.items() if v is not None}})
    except ConfigError as exc:
        print(f"kelemetry-py: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging("warning" if args.log_level is None else config.log_level, config.log.format)
    result = run_event_loop(demo.run(config, data_dir=args.data_dir, fast=args.fast, out=sys.stdout))
    return 1 if result.failed else 0


def _replay(args: Any) -> int:
    from kelemetry_py.sources.replay import read_batches, replay

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    missing = [str(path) for path in args.paths if not path.is_file()]
    if missing:
        print(f"kelemetry-py replay: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    result = run_event_loop(
        replay(
            read_batches(args.paths),
            target=args.target,
            cluster=args.cluster,
            use_gzip=args.gzip,
            token=args.token,
            concurrency=max(1, args.concurrency),
        )
    )
    print(
        f"replayed {result.batches} batches ({result.events} events); "
        f"{result.throttled} throttled and retried; {result.failed} failed"
    )
    return 1 if result.failed else 0


def _query_command(args: Any, out: Any = None) -> int:
    """``analyze`` and ``trace``: ask a running server, print a report or JSON."""
    import orjson

    from kelemetry_py.analysis.client import CommandError, Target, fetch_analysis, fetch_trace, time_range
    from kelemetry_py.analysis.report import render_report
    from kelemetry_py.analysis.tree import render_tree

    out = out or sys.stdout
    try:
        target = Target.parse(args.object, args.namespace, args.cluster)
        start_ns, end_ns = time_range(args.since, args.start, args.end)
        if args.command == "analyze":
            document = run_event_loop(fetch_analysis(args.server, target, start_ns, end_ns, args.scope, args.token))
            text = render_report(document) if args.output == "text" else None
        else:
            document = run_event_loop(fetch_trace(args.server, target, start_ns, end_ns, args.mode, args.token))
            text = render_tree(document, show_logs=not args.no_logs) if args.output == "text" else None
    except CommandError as exc:
        print(f"kelemetry-py {args.command}: {exc}", file=sys.stderr)
        return exc.status
    out.write(text if text is not None else orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
