"""JSON Schema (draft 2020-12) of the analysis document that ``GET /api/analysis`` and ``analyze -o json`` give."""

from __future__ import annotations

from typing import Any

_TIME = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"}
_NANOS = {"type": "integer", "minimum": 0}
_SPAN_ID = {"type": "string", "pattern": "^[0-9a-f]{16}$"}
_KEY = {"type": "string", "pattern": "^[^/]*/[^/]*/[^/]+/[^/]*/.*$"}
_ACTOR_KIND = {"enum": ["user", "controller", "scheduler", "node", "system", "unknown"]}
_STRINGS = {"type": "array", "items": {"type": "string"}}


def _object(properties: dict[str, Any], *, extra: bool = False) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": extra,
    }


_EVIDENCE = {"time": _TIME, "timeUnixNano": _NANOS, "object": _KEY, "spanId": _SPAN_ID}
_ACTOR = {"actor": {"type": "string"}, "actorKind": _ACTOR_KIND, "user": {"type": "string"}}

_STEP = _object(
    {
        **_EVIDENCE,
        **_ACTOR,
        "name": {"type": "string", "minLength": 1},
        "action": {"type": "string"},
        "startUnixNano": _NANOS,
        "endUnixNano": _NANOS,
        "durationMs": {"type": "number", "minimum": 0},
    }
)

_ROLLOUT = _object(
    {
        "workload": _KEY,
        "kind": {"enum": ["create", "update", "scale", "delete"]},
        "trigger": _object({**_EVIDENCE, **_ACTOR, "action": {"type": "string"}, "summary": {"type": "string"}}),
        "start": _TIME,
        "end": _TIME,
        "durationMs": {"type": "number", "minimum": 0},
        "steps": {"type": "array", "items": _STEP, "minItems": 1},
        "slowestStep": _object({"name": {"type": "string"}, "durationMs": {"type": "number", "minimum": 0}}),
        "stages": {
            "type": "array",
            "items": _object(
                {
                    "name": {"type": "string"},
                    "count": {"type": "integer", "minimum": 1},
                    "first": _TIME,
                    "last": _TIME,
                    "spanIds": {"type": "array", "items": _SPAN_ID},
                }
            ),
        },
        "converged": {"type": "boolean"},
        "pending": {
            "type": "array",
            "items": _object({"pod": _KEY, "lastStep": {"type": "string"}}),
        },
    }
)

_SLOWEST = {
    "oneOf": [
        {"type": "null"},
        _object(
            {
                "name": {"type": "string"},
                "durationMs": {"type": "number", "minimum": 0},
                "object": _KEY,
                "spanId": _SPAN_ID,
                "rollout": _SPAN_ID,
            }
        ),
    ]
}

_FAILED_REQUEST = _object(
    {
        **_EVIDENCE,
        **_ACTOR,
        "impersonatedUser": {"type": "string"},
        "verb": {"type": "string"},
        "subresource": {"type": "string"},
        "targetResource": {"type": "string"},
        "code": {"type": "integer"},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "routine": {"type": "boolean"},
    }
)

_WARNING = _object(
    {
        **_EVIDENCE,
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "count": {"type": "integer", "minimum": 1},
        "source": {"type": "string"},
    }
)

_BACKOFF = _object(
    {
        "object": _KEY,
        "reason": {"type": "string"},
        "occurrences": {"type": "integer", "minimum": 1},
        "count": {"type": "integer", "minimum": 1},
        "first": _TIME,
        "last": _TIME,
        "message": {"type": "string"},
        "spanIds": {"type": "array", "items": _SPAN_ID, "minItems": 1},
        "repeated": {"type": "boolean"},
    }
)

_STUCK = _object(
    {
        "workload": _KEY,
        "trigger": _SPAN_ID,
        "time": _TIME,
        "reason": {"type": "string"},
        "detail": {"type": "string"},
        "spanIds": {"type": "array", "items": _SPAN_ID, "minItems": 1},
    }
)

_UNSCHEDULED = _object(
    {**_EVIDENCE, "pod": _KEY, "deleted": {"type": "boolean"}, "waitedMs": {"type": "number", "minimum": 0}}
)

_CHANGE = _object(
    {
        **_EVIDENCE,
        **_ACTOR,
        "fieldManager": {"type": "string"},
        "userAgent": {"type": "string"},
        "source": {"enum": ["diff", "patch"]},
        "paths": _STRINGS,
        "lines": _STRINGS,
    }
)

_BY_ACTOR = _object(
    {
        "actor": {"type": "string"},
        "actorKind": _ACTOR_KIND,
        "fieldManagers": _STRINGS,
        "objects": {"type": "array", "items": _KEY},
        "paths": _STRINGS,
        "changes": {"type": "integer", "minimum": 1},
    }
)

_TIMELINE_ENTRY = _object(
    {
        **_EVIDENCE,
        **_ACTOR,
        "durationMs": {"type": "number", "minimum": 0},
        "source": {"type": "string"},
        "action": {"type": "string"},
        "code": {"type": "integer"},
        "error": {"type": "boolean"},
        "summary": {"type": "string"},
    }
)

_COUNT = {"type": "integer", "minimum": 0}

ANALYSIS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://kelemetry-py.invalid/schemas/analysis-v1.json",
    "title": "kelemetry-py trace analysis",
    **_object(
        {
            "apiVersion": {"const": "kelemetry-py/analysis/v1"},
            "object": _object(
                {
                    "key": _KEY,
                    **{
                        name: {"type": "string"}
                        for name in ("cluster", "group", "version", "resource", "namespace", "name", "uid")
                    },
                }
            ),
            "range": _object({"start": _TIME, "end": _TIME, "startUnixNano": _NANOS, "endUnixNano": _NANOS}),
            "objects": {
                "type": "array",
                "minItems": 1,
                "items": _object(
                    {
                        "key": _KEY,
                        "resource": {"type": "string"},
                        "namespace": {"type": "string"},
                        "name": {"type": "string"},
                        "parent": {"oneOf": [{"type": "null"}, _KEY]},
                        "linkClass": {"type": "string"},
                        "depth": {"type": "integer", "minimum": 0},
                        "spans": _COUNT,
                        "firstSeen": _TIME,
                        "lastSeen": _TIME,
                    }
                ),
            },
            "timeline": {"type": "array", "items": _TIMELINE_ENTRY},
            "latency": _object({"rollouts": {"type": "array", "items": _ROLLOUT}, "slowestStep": _SLOWEST}),
            "failures": _object(
                {
                    "requests": {"type": "array", "items": _FAILED_REQUEST},
                    "warningEvents": {"type": "array", "items": _WARNING},
                    "backOffs": {"type": "array", "items": _BACKOFF},
                    "stuckRollouts": {"type": "array", "items": _STUCK},
                    "unscheduledPods": {"type": "array", "items": _UNSCHEDULED},
                }
            ),
            "changes": _object(
                {
                    "entries": {"type": "array", "items": _CHANGE},
                    "byActor": {"type": "array", "items": _BY_ACTOR},
                }
            ),
            "summary": _object(
                {
                    **{
                        name: _COUNT
                        for name in (
                            "objects",
                            "spans",
                            "rollouts",
                            "failedRequests",
                            "routineFailedRequests",
                            "warningEvents",
                            "backOffs",
                            "stuckRollouts",
                            "unscheduledPods",
                            "changes",
                        )
                    },
                    "slowestStep": _SLOWEST,
                }
            ),
        }
    ),
}
