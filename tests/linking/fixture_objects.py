"""Objects from the recorded fixtures, with the ObjectRef a source would build for them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kelemetry_py.model import ObjectRef

CLUSTER = "fixture"


def audit_writes(scenario_dir: Path) -> Iterator[tuple[ObjectRef, dict[str, Any]]]:
    """(ref, responseObject) of every audit event that returned an object, as the audit source sees them.

    Audit items carry no kind of their own: the ref comes from ``objectRef``, the name from the response
    when the request used generateName.
    """
    with (scenario_dir / "audit.jsonl").open() as lines:
        for line in lines:
            for item in json.loads(line)["items"]:
                target = item.get("objectRef") or {}
                body = item.get("responseObject")
                if not target.get("resource") or not isinstance(body, dict) or "metadata" not in body:
                    continue
                if body.get("kind") == "Status" or target.get("subresource"):
                    continue
                metadata = body["metadata"]
                yield (
                    ObjectRef(
                        cluster=CLUSTER,
                        group=target.get("apiGroup", ""),
                        version=target.get("apiVersion", ""),
                        resource=target["resource"],
                        namespace=target.get("namespace", ""),
                        name=target.get("name") or metadata.get("name", ""),
                        uid=metadata.get("uid", ""),
                    ),
                    body,
                )


def watched_objects(scenario_dir: Path, stream: str) -> Iterator[tuple[ObjectRef, dict[str, Any]]]:
    """(ref, object) of every non-bookmark line of ``watch/<stream>.jsonl`` (e.g. ``core_v1_configmaps``)."""
    group, version, resource = stream.split("_")
    with (scenario_dir / "watch" / f"{stream}.jsonl").open() as lines:
        for line in lines:
            event = json.loads(line)
            if event["type"] == "BOOKMARK":
                continue
            metadata = event["object"]["metadata"]
            yield (
                ObjectRef(
                    cluster=CLUSTER,
                    group="" if group == "core" else group,
                    version=version,
                    resource=resource,
                    namespace=metadata.get("namespace", ""),
                    name=metadata["name"],
                    uid=metadata.get("uid", ""),
                ),
                event["object"],
            )


def listed_objects(scenario_dir: Path, stream: str) -> Iterator[tuple[ObjectRef, dict[str, Any]]]:
    """(ref, item) of a recorded LIST response; the items lack apiVersion and kind like the real ones."""
    group, version, resource = stream.split("_")
    document = json.loads((scenario_dir / "list" / f"{stream}.json").read_text())
    for item in document["items"]:
        metadata = item["metadata"]
        yield (
            ObjectRef(
                cluster=CLUSTER,
                group="" if group == "core" else group,
                version=version,
                resource=resource,
                namespace=metadata.get("namespace", ""),
                name=metadata["name"],
                uid=metadata.get("uid", ""),
            ),
            item,
        )


def first(objects: Iterator[tuple[ObjectRef, dict[str, Any]]], name: str) -> tuple[ObjectRef, dict[str, Any]]:
    for ref, body in objects:
        if ref.name == name:
            return ref, body
    raise AssertionError(f"no object named {name} in the recording")
