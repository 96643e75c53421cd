"""``kelemetry-py events`` and ``kelemetry-py audit``: kubectl-like searches over the search API."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any, TextIO

import aiohttp
import orjson

from kelemetry_py.process import run_event_loop

EVENTS_PATH = "/kapis/tenant.kubesphere.io/v1alpha2/events"
AUDIT_PATH = "/kapis/tenant.kubesphere.io/v1alpha2/auditing/events"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_search_commands(commands: Any) -> None:
    for name, helptext in (("events", "search Kubernetes Events"), ("audit", "search audit records")):
        parser = commands.add_parser(name, help=helptext)
        parser.add_argument("-n", "--namespace", help="only this namespace (default: all)")
        parser.add_argument("--cluster", default="", help="only this cluster")
        parser.add_argument("--since", default="1h", help="how far back to look: 30s, 10m, 1h, 7d (default 1h)")
        parser.add_argument("--name", help="only this object name")
        parser.add_argument("--limit", type=int, default=200, help="at most this many records (default 200)")
        if name == "events":
            parser.add_argument("--reason", help="comma-separated reasons")
            parser.add_argument("--type", help="Normal or Warning")
            parser.add_argument("--kind", help="involved object kind, e.g. Pod")
        else:
            parser.add_argument("--user", help="comma-separated users")
            parser.add_argument("--verb", help="comma-separated verbs")
            parser.add_argument("--resource", help="comma-separated resources")
        parser.add_argument("-o", "--output", choices=("table", "wide", "json"), default="table")
        parser.add_argument("-w", "--watch", action="store_true", help="keep printing new records")
        parser.add_argument(
            "--server",
            default=os.environ.get("KELEMETRY_SERVER", "http://127.0.0.1:8080"),
            help="kelemetry-py URL (env KELEMETRY_SERVER)",
        )
        parser.add_argument("--token", default=os.environ.get("KELEMETRY_TOKEN", ""), help="bearer token")


def since_seconds(text: str) -> int:
    text = text.strip()
    if len(text) < 2 or text[-1] not in _UNITS or not text[:-1].isdigit():
        raise ValueError(f"--since: {text!r} is not a duration such as 30s, 10m, 1h or 7d")
    return int(text[:-1]) * _UNITS[text[-1]]


def query_params(args: argparse.Namespace, start: int) -> dict[str, str]:
    params = {"start_time": str(start), "sort": "asc", "size": str(max(1, min(args.limit, 1000)))}
    if args.command == "events":
        pairs = {
            "involved_object_namespace_filter": args.namespace,
            "involved_object_name_filter": args.name,
            "reason_filter": args.reason,
            "type_filter": args.type,
            "involved_object_kind_filter": args.kind,
        }
    else:
        pairs = {
            "objectref_namespace_filter": args.namespace,
            "objectref_name_filter": args.name,
            "user_filter": args.user,
            "verb_filter": args.verb,
            "objectref_resource_filter": args.resource,
        }
    if args.cluster:
        pairs["cluster"] = args.cluster
    params.update({key: value for key, value in pairs.items() if value})
    return params


def _event_row(record: dict[str, Any], wide: bool) -> list[str]:
    involved = record.get("involvedObject") or {}
    when = record.get("lastTimestamp") or record.get("eventTime") or ""
    row = [
        str(when),
        record.get("type", ""),
        record.get("reason", ""),
        f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
        record.get("message", ""),
    ]
    if wide:
        source = record.get("source") or {}
        row[4:4] = [involved.get("namespace", ""), str(source.get("component", "")), str(record.get("count", 1))]
    return row


def _audit_row(record: dict[str, Any], wide: bool) -> list[str]:
    ref = record.get("objectRef") or {}
    user = (record.get("impersonatedUser") or record.get("user") or {}).get("username", "")
    resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    row = [
        record.get("requestReceivedTimestamp") or record.get("stageTimestamp", ""),
        user,
        record.get("verb", ""),
        resource,
        ref.get("namespace", ""),
        ref.get("name", ""),
        str((record.get("responseStatus") or {}).get("code", "")),
    ]
    if wide:
        row += [",".join(record.get("sourceIPs") or []), record.get("userAgent", ""), record.get("auditID", "")]
    return row


HEADERS = {
    ("events", False): ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
    ("events", True): ["LAST SEEN", "TYPE", "REASON", "OBJECT", "NAMESPACE", "SOURCE", "COUNT", "MESSAGE"],
    ("audit", False): ["TIME", "USER", "VERB", "RESOURCE", "NAMESPACE", "NAME", "CODE"],
    ("audit", True): [
        "TIME",
        "USER",
        "VERB",
        "RESOURCE",
        "NAMESPACE",
        "NAME",
        "CODE",
        "SOURCE IP",
        "USER AGENT",
        "AUDIT ID",
    ],
}


def render(command: str, records: list[dict[str, Any]], output: str, out: TextIO, *, header: bool) -> None:
    if output == "json":
        for record in records:
            out.write(orjson.dumps(record).decode() + "\n")
        return
    wide = output == "wide"
    make = _event_row if command == "events" else _audit_row
    rows = [make(record, wide) for record in records]
    titles = HEADERS[(command, wide)]
    widths = [max([len(titles[i])] + [len(row[i]) for row in rows]) for i in range(len(titles) - 1)]
    lines = ([titles] if header else []) + rows
    for row in lines:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        out.write("   ".join(cells).rstrip() + "\n")


def _key(record: dict[str, Any]) -> str:
    if "auditID" in record:
        return f"{record['auditID']}/{record.get('stage', '')}"
    return f"{(record.get('metadata') or {}).get('uid', '')}/{record.get('count', 1)}"


_WATCH_OVERLAP_SECONDS = 60  # records can land in the index a little after their own time


def _record_seconds(record: dict[str, Any]) -> int | None:
    text = (
        record.get("requestReceivedTimestamp")
        or record.get("lastTimestamp")
        or record.get("eventTime")
        or record.get("firstTimestamp")
    )
    if not isinstance(text, str):
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


async def run(args: argparse.Namespace, out: TextIO) -> int:
    """The newest ``--limit`` records since ``--since``, oldest first; with ``--watch``, then every new one."""
    start = int(time.time()) - since_seconds(args.since)
    path = args.server.rstrip("/") + (EVENTS_PATH if args.command == "events" else AUDIT_PATH)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    seen: OrderedDict[str, None] = OrderedDict()
    first = True
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as session:
        while True:
            params = query_params(args, start)
            if first:
                params["sort"] = "desc"
            async with session.get(path, params=params) as response:
                body = await response.read()
                if response.status != 200:
                    message = orjson.loads(body).get("message", "") if body.startswith(b"{") else body.decode()
                    print(f"kelemetry-py {args.command}: {response.status}: {message}", file=sys.stderr)
                    return 1
            page = orjson.loads(body)["query"]["records"]
            if first:
                page.reverse()
            records = [record for record in page if _key(record) not in seen]
            for record in records:
                seen[_key(record)] = None
            while len(seen) > 100_000:
                seen.popitem(last=False)
            if records or first:
                render(args.command, records, args.output, out, header=first)
                out.flush()
            first = False
            if not args.watch:
                return 0
            newest = max((t for t in map(_record_seconds, page) if t is not None), default=None)
            if newest is not None:
                start = max(start, newest - _WATCH_OVERLAP_SECONDS)
            if not records or len(page) < int(params["size"]):
                await asyncio.sleep(2.0)  # the API has no change feed: poll


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    try:
        since_seconds(args.since)
    except ValueError as exc:
        print(f"kelemetry-py {args.command}: {exc}", file=sys.stderr)
        return 2
    try:
        return run_event_loop(run(args, out or sys.stdout))
    except aiohttp.ClientError as exc:
        print(f"kelemetry-py {args.command}: cannot reach {args.server}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
