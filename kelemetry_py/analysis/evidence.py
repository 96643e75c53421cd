"""What every part of the analysis shares: one span of one object (a :class:`Fact`) and how it is cited."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kelemetry_py.analysis.facts import Actor, iso
from kelemetry_py.model import ObjectRef, Span

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


CONTROL_PLANE = frozenset({"controller", "scheduler", "node", "system"})


KINDS = {
    "replicasets": "ReplicaSet",
    "controllerrevisions": "ControllerRevision",
    "jobs": "Job",
    "pods": "Pod",
    "deployments": "Deployment",
    "statefulsets": "StatefulSet",
    "daemonsets": "DaemonSet",
}


@dataclass(frozen=True, slots=True)
class Fact:
    """One span of one object of the tree."""

    key: str
    span: Span

    @property
    def time_ns(self) -> int:
        return self.span.end_ns


def ref_json(ref: ObjectRef) -> dict[str, str]:
    return {
        "key": ref.key,
        "cluster": ref.cluster,
        "group": ref.group,
        "version": ref.version,
        "resource": ref.resource,
        "namespace": ref.namespace,
        "name": ref.name,
        "uid": ref.uid,
    }


def evidence(fact: Fact) -> dict[str, Any]:
    return {
        "time": iso(fact.time_ns),
        "timeUnixNano": fact.time_ns,
        "object": fact.key,
        "spanId": fact.span.span_id_hex,
    }


def actor_json(actor: Actor) -> dict[str, Any]:
    return {"actor": actor.name, "actorKind": actor.kind, "user": actor.user or actor.name}


def is_pod(key: str) -> bool:
    ref = ObjectRef.from_key(key)
    return ref.group == "" and ref.resource == "pods"


def kind_label(key: str) -> str:
    resource = ObjectRef.from_key(key).resource
    return KINDS.get(resource, resource)
