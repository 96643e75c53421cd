"""Issue 9: link spans come from the object graph, in every window an object has a span, with or without a body.

The recordings last half a minute to a minute and a half; their times are stretched twelvefold so that objects
live several minutes and cross several one-minute windows, as long-lived objects do in a real cluster.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession

from kelemetry_py.app import App
from kelemetry_py.model import SERVICE_LINK, SERVICE_OBJECT, Span
from tests.e2e.conftest import AppFactory
from tests.e2e.test_core_pipeline import exported, key_of
from tests.frontend.scenario import FrontendClient, key_tags, object_tree, scenario_facts
from tests.kube.helpers import DOUBLE_TOKEN, all_watching, caught_up, watcher_settings
from tests.support.kube_double import KubeApiDouble
from tests.support.otlp_receiver import GrpcOtlpReceiver

WINDOW = 60
STRETCH = 12
LIFECYCLE = "deployment-lifecycle"
WEB = "fixture/apps/deployments/shop/web"
SETTINGS = {"pipeline.window_seconds": WINDOW}


def _ns(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1e9)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stretched_audit(source: Path, target: Path, boundary_ns: int | None = None) -> None:
    """The recorded webhook batches with every timestamp moved ``STRETCH`` times as far from the first; with
    ``boundary_ns``, also shifted so that a window starts at that (recorded) moment."""
    lines = source.read_bytes().splitlines()
    origin = min(_ns(item["stageTimestamp"]) for line in lines for item in orjson.loads(line)["items"])
    if boundary_ns is not None:
        stretched = origin + (boundary_ns - origin) * STRETCH
        origin -= (-stretched) % (WINDOW * 10**9) // (STRETCH - 1)  # nudges the stretched boundary up to it
    with target.open("wb") as out:
        for line in lines:
            batch = orjson.loads(line)
            for item in batch["items"]:
                for field in ("requestReceivedTimestamp", "stageTimestamp"):
                    if item.get(field):
                        item[field] = _iso(origin + (_ns(item[field]) - origin) * STRETCH)
            out.write(orjson.dumps(batch) + b"\n")


def controllers(scenario_dir: Path) -> dict[str, str]:
    """Pod key -> its controller's key, as the recorded Pods' ownerReferences say."""
    found: dict[str, str] = {}
    for line in (scenario_dir / "audit.jsonl").read_bytes().splitlines():
        for item in orjson.loads(line)["items"]:
            ref, body = item.get("objectRef") or {}, item.get("responseObject") or {}
            if ref.get("resource") != "pods" or body.get("kind") != "Pod":
                continue
            for owner in body["metadata"].get("ownerReferences") or []:
                if owner.get("controller"):
                    group = owner["apiVersion"].rpartition("/")[0]
                    resource = owner["kind"].lower() + "s"
                    name = body["metadata"]["name"]
                    found[f"fixture//pods/{ref['namespace']}/{name}"] = (
                        f"fixture/{group}/{resource}/{ref['namespace']}/{owner['name']}"
                    )
    return found


def linked_windows(spans: list[Span]) -> tuple[dict[str, set[int]], dict[tuple[str, int], set[str]]]:
    """Windows in which each object has a span other than link spans, and (object, window) -> linked keys."""
    active: dict[str, set[int]] = defaultdict(set)
    links: dict[tuple[str, int], set[str]] = defaultdict(set)
    for span in spans:
        window = span.start_ns // 1_000_000_000 // WINDOW
        if span.service == SERVICE_LINK:
            parts = ("linkedCluster", "linkedGroup", "linkedResource", "linkedNamespace", "linkedName")
            other = "/".join(str(span.attributes[part]) for part in parts)
            links[(key_of(span), window)].add(other)
        elif span.service != SERVICE_OBJECT:
            active[key_of(span)].add(window)
    return active, links


def assert_every_pod_window_links_its_controller(spans: list[Span], owners: dict[str, str]) -> int:
    active, links = linked_windows(spans)
    checked = 0
    for pod, owner in owners.items():
        for window in active.get(pod, ()):
            assert owner in links[(pod, window)], f"{pod} has spans in window {window} but no link to {owner}"
            assert pod in links[(owner, window)], f"{owner} has no link to {pod} in window {window}"
            checked += 1
    return checked


async def replay_stretched(app: App, scenario_dir: Path, tmp_path: Path, boundary_ns: int | None = None) -> None:
    audit = tmp_path / "stretched.audit.jsonl"
    stretched_audit(scenario_dir / "audit.jsonl", audit, boundary_ns)
    async with ClientSession() as session:
        for body in audit.read_bytes().splitlines():
            async with session.post(
                f"{app.base_url}/audit/fixture", data=body, headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 200, await response.text()
    await app.settle()


@pytest.mark.parametrize("scenario", ["deployment-lifecycle", "batch-and-stateful"])
async def test_every_pod_window_links_its_controller_through_the_webhook(
    scenario: str, fixtures_dir: Path, make_app: AppFactory, otlp_receiver: GrpcOtlpReceiver, tmp_path: Path
) -> None:
    app = await make_app(**SETTINGS, **{"otlp.endpoint": otlp_receiver.endpoint})
    await replay_stretched(app, fixtures_dir / scenario, tmp_path)
    spans = await exported(otlp_receiver, app)
    owners = controllers(fixtures_dir / scenario)
    assert owners
    active, _ = linked_windows(spans)
    assert max(len(active[pod]) for pod in owners) >= 3, "the stretched Pods live across several windows"
    assert assert_every_pod_window_links_its_controller(spans, owners) > len(owners)


async def test_a_deployment_window_holding_only_its_delete_links_its_replicasets(
    fixtures_dir: Path, make_app: AppFactory, otlp_receiver: GrpcOtlpReceiver, tmp_path: Path
) -> None:
    app = await make_app(**SETTINGS, **{"otlp.endpoint": otlp_receiver.endpoint})
    # A window starts between the Deployment's last change and its delete (1.1 s apart as recorded).
    requests = scenario_facts(fixtures_dir, LIFECYCLE).requests[WEB]
    deleted = next(_ns(e["stageTimestamp"]) for e in requests if e["verb"] == "delete")
    before = max(_ns(e["stageTimestamp"]) for e in requests if _ns(e["stageTimestamp"]) < deleted)
    await replay_stretched(app, fixtures_dir / LIFECYCLE, tmp_path, (before + deleted) // 2)
    spans = await exported(otlp_receiver, app)
    own = [s for s in spans if key_of(s) == WEB and s.service not in (SERVICE_OBJECT, SERVICE_LINK)]
    (delete,) = [s for s in own if s.attributes.get("verb") == "delete"]
    window = delete.start_ns // 1_000_000_000 // WINDOW
    in_window = [s for s in own if s.start_ns // 1_000_000_000 // WINDOW == window]
    assert [s.attributes.get("verb") for s in in_window] == ["delete"], "the window holds only the delete"
    _, links = linked_windows(spans)
    replicasets = {key for key in links[(WEB, window)] if "/replicasets/" in key}
    assert len(replicasets) == 2, links[(WEB, window)]


async def test_owned_objects_over_a_range_after_creation(
    fixtures_dir: Path, make_app: AppFactory, tmp_path: Path
) -> None:
    app = await make_app(**SETTINGS)
    await replay_stretched(app, fixtures_dir / LIFECYCLE, tmp_path)
    facts = scenario_facts(fixtures_dir, LIFECYCLE)
    created = min(_ns(e["stageTimestamp"]) for e in facts.requests[WEB] if e["verb"] == "create")
    origin = facts.start_ns
    # From the first whole window after the Deployment's (stretched) creation to the end of the stretched recording.
    start_ns = (created // 10**9 // WINDOW + 2) * WINDOW * 10**9
    end_ns = origin + (facts.end_ns - origin) * STRETCH + 600 * 10**9
    async with ClientSession() as session:
        client = FrontendClient(session, app.base_url, facts)
        (owned,) = await client.search(
            "tracing [owned objects]",
            key_tags(WEB),
            start=str(start_ns // 1000),
            end=str(end_ns // 1000),
        )
    tree = object_tree(owned)
    replicasets = {key for key, parent in tree.items() if parent == WEB}
    pods = {key for key, parent in tree.items() if parent in replicasets}
    assert len(replicasets) == 2 and all("/replicasets/" in key for key in replicasets)
    assert pods and all("/pods/" in key for key in pods)


def recorded_times(scenario_dir: Path) -> list[float]:
    times: set[float] = set()
    for path in (scenario_dir / "watch").glob("*.times"):
        times.update(float(line) for line in path.read_text().split())
    return sorted(times)


async def test_every_pod_window_links_its_controller_with_only_the_watchers(
    fixtures_dir: Path, make_app: AppFactory, otlp_receiver: GrpcOtlpReceiver, tmp_path: Path
) -> None:
    scenario_dir = fixtures_dir / LIFECYCLE
    async with KubeApiDouble(scenario_dir, tokens=[DOUBLE_TOKEN]) as double:
        app = await make_app(
            **watcher_settings(
                tmp_path,
                double.url,
                **SETTINGS,
                **{"otlp.endpoint": otlp_receiver.endpoint, "kube.watch_events": False},
            )
        )
        await all_watching(app, kinds=("objects",))
        assert app.watching is not None
        times = recorded_times(scenario_dir)
        clock = _StretchedClock(times[0])
        # The differ stamps a change with the time it sees it; the replay's time is the recording's, stretched.
        app.watching.differ._wall_clock_ns = clock
        for moment in times:
            clock.moment = moment
            double.release_until(moment)
            await caught_up(app, double)
        await app.watching.differ.flush_unclaimed(now=math.inf)
        await app.settle()
        spans = await exported(otlp_receiver, app)
    assert {s.service for s in spans} <= {"diff", SERVICE_OBJECT, SERVICE_LINK}, "nothing came through audit"
    owners = controllers(scenario_dir)
    active, _ = linked_windows(spans)
    assert max(len(active[pod]) for pod in owners) >= 3, "the Pods live across several windows"
    assert assert_every_pod_window_links_its_controller(spans, owners) > len(owners)


class _StretchedClock:
    def __init__(self, origin: float) -> None:
        self.origin = origin
        self.moment = origin

    def __call__(self) -> int:
        return int((self.origin + (self.moment - self.origin) * STRETCH) * 1e9)

