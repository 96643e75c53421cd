"""Builds the demo's bundled watch recording from tests/fixtures (``python -m tests.demo.bundle`` rewrites it).

One line per delivery, in arrival order: the first scenario's LIST items (the cluster as the watchers found it)
then every watch line of the three scenarios, as ``{"at", "group", "version", "resource", "type", "object"}``.
Leases are left out (kubelet heartbeats; never watched by default). The audit batches are bundled as they are.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from kelemetry_py.demo import RECORDINGS, SCENARIOS, WATCH_RECORDING

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SKIPPED_STREAMS = ("coordination.k8s.io_v1_leases",)


def watch_lines() -> bytes:
    entries: list[tuple[float, int, bytes]] = []
    for position, scenario in enumerate(SCENARIOS):
        folder = FIXTURES / scenario
        streams = json.loads((folder / "streams.json").read_text())["streams"]
        for name, stream in streams.items():
            if name in SKIPPED_STREAMS:
                continue
            head = {"group": stream["group"], "version": stream["version"], "resource": stream["resource"]}
            if position == 0:
                listed = json.loads((folder / "list" / f"{name}.json").read_text())
                for item in listed["items"]:
                    line = {"at": stream["list"]["received"], **head, "type": "LIST", "object": item}
                    entries.append((stream["list"]["received"], len(entries), _dump(line)))
            raw = (folder / "watch" / f"{name}.jsonl").read_text().splitlines()
            times = (folder / "watch" / f"{name}.times").read_text().split()
            assert len(raw) == len(times), name
            for text, at in zip(raw, times, strict=True):
                event = json.loads(text)
                if event["type"] == "BOOKMARK":
                    continue
                line = {"at": float(at), **head, "type": event["type"], "object": event["object"]}
                entries.append((float(at), len(entries), _dump(line)))
    entries.sort()
    return b"".join(line + b"\n" for _, _, line in entries)


def _dump(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def write() -> None:
    (RECORDINGS / WATCH_RECORDING).write_bytes(gzip.compress(watch_lines(), compresslevel=9, mtime=0))


if __name__ == "__main__":
    write()
