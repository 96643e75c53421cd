"""Watch states teach the object graph: objects that existed before the watchers started are linked in their
later windows, with no audit body and no create snapshot anywhere."""

from __future__ import annotations

import copy
import time
from typing import Any

from kelemetry_py.config import PipelineConfig
from kelemetry_py.linking.owners import OwnerReferenceLinker
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import ObjectRef, Observation
from kelemetry_py.pipeline.core import Pipeline
from kelemetry_py.pipeline.emission.memory import MemoryEmissionSet
from kelemetry_py.sources.diffcache.memory import MemoryDiffCache
from kelemetry_py.sources.differ import ObjectDiffer
from tests.differ.support import CLUSTER, REPLICASETS, CollectingSink
from tests.support.writers import CollectingWriter

RS = ObjectRef(CLUSTER, "apps", "v1", "replicasets", "shop", "web-6b95")
DEPLOY = ObjectRef(CLUSTER, "apps", "v1", "deployments", "shop", "web")


def replicaset(owner: str, rv: str, replicas: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": RS.name,
            "namespace": RS.namespace,
            "uid": "rs-uid",
            "resourceVersion": rv,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": owner,
                    "uid": f"{owner}-uid",
                    "controller": True,
                }
            ],
        },
        "spec": {"replicas": replicas},
    }


def status_change(at_s: int) -> Observation:
    """An observation of the ReplicaSet that carries no body (a diff span of a status update)."""
    return Observation(
        ref=RS, kind="diff", title="status", start_ns=at_s * 10**9, end_ns=at_s * 10**9, dedup_key=f"diff/{at_s}"
    )


def parents_linked(writer: CollectingWriter) -> set[tuple[str, str]]:
    return {
        (str(span.attributes["name"]), str(span.attributes["linkedName"]))
        for span in writer.spans
        if span.service == "link" and span.attributes["linkRole"] == "parent"
    }


async def test_an_object_listed_at_start_links_its_owner_in_later_windows() -> None:
    writer = CollectingWriter()
    pipeline = Pipeline(
        writer=writer,
        emission=MemoryEmissionSet(),
        metrics=Metrics(),
        config=PipelineConfig(window_seconds=60),
        linkers=[OwnerReferenceLinker()],
    )
    differ = ObjectDiffer(CollectingSink(), Metrics(), MemoryDiffCache(), learn=pipeline.learn)
    # The watchers start: the ReplicaSet is in the first list, long after it was created. Nothing is emitted.
    await differ.on_event(CLUSTER, REPLICASETS, "ADDED", replicaset("web", "10"), relisted=True)
    await pipeline.start()
    now = int(time.time())
    await pipeline.submit([status_change(now)])
    await pipeline.drain()
    assert parents_linked(writer) == {(RS.name, DEPLOY.name)}

    # Its owner changes (an adoption); a later window links the new owner only.
    writer.spans.clear()
    adopted = replicaset("web-v2", "11")
    await differ.on_event(CLUSTER, REPLICASETS, "MODIFIED", adopted, relisted=False)
    await pipeline.submit([status_change(now + 120)])  # a later window, after the adoption
    await pipeline.drain()
    assert parents_linked(writer) == {(RS.name, "web-v2")}

    # A change that touches no relation does not re-run the linkers (a scale is not news to the graph).
    learned: list[ObjectRef] = []

    async def counting(ref: ObjectRef, body: Any) -> None:
        learned.append(ref)

    counted = ObjectDiffer(CollectingSink(), Metrics(), MemoryDiffCache(), learn=counting)
    await counted.on_event(CLUSTER, REPLICASETS, "ADDED", copy.deepcopy(adopted), relisted=True)
    await counted.on_event(CLUSTER, REPLICASETS, "MODIFIED", replicaset("web-v2", "12", replicas=3), relisted=False)
    assert learned == [RS]
    await pipeline.stop()
