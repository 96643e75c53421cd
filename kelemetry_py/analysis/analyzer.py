"""Automated analysis of an assembled object tree: timeline, rollout latency, failures and changes.

The input is the :class:`AssembledTrace` the frontend builds (the same objects and spans the UI shows); the
output is a JSON-ready dict that :data:`kelemetry_py.analysis.schema.ANALYSIS_SCHEMA` describes. Every fact
names its evidence: the span id, the object, the time and the actor.
"""

from __future__ import annotations

from typing import Any

from kelemetry_py.analysis.changes import summarize_changes
from kelemetry_py.analysis.evidence import Fact, ref_json
from kelemetry_py.analysis.facts import iso
from kelemetry_py.analysis.failures import find_failures
from kelemetry_py.analysis.rollouts import Rollouts, slowest_step
from kelemetry_py.analysis.timeline import objects_json, timeline_entry
from kelemetry_py.frontend.assembly import AssembledTrace

ANALYSIS_API_VERSION = "kelemetry-py/analysis/v1"


def analyze(trace: AssembledTrace) -> dict[str, Any]:
    """The full analysis of ``trace`` as a JSON-ready dict."""
    facts = sorted(
        (Fact(key, span) for key, obj in trace.objects.items() for span in obj.children),
        key=lambda fact: (fact.span.start_ns, fact.span.span_id),
    )
    rollouts = Rollouts(trace, facts).build()
    failures = find_failures(trace, facts, rollouts)
    changes = summarize_changes(facts)
    slowest = slowest_step(rollouts)
    searched = trace.objects[trace.searched].ref
    return {
        "apiVersion": ANALYSIS_API_VERSION,
        "object": ref_json(searched),
        "range": {
            "start": iso(trace.start_ns),
            "end": iso(trace.end_ns),
            "startUnixNano": trace.start_ns,
            "endUnixNano": trace.end_ns,
        },
        "objects": objects_json(trace),
        "timeline": [timeline_entry(fact) for fact in facts],
        "latency": {"rollouts": rollouts, "slowestStep": slowest},
        "failures": failures,
        "changes": changes,
        "summary": {
            "objects": len(trace.objects),
            "spans": len(facts),
            "rollouts": len(rollouts),
            "failedRequests": sum(1 for item in failures["requests"] if not item["routine"]),
            "routineFailedRequests": sum(1 for item in failures["requests"] if item["routine"]),
            "warningEvents": len(failures["warningEvents"]),
            "backOffs": len(failures["backOffs"]),
            "stuckRollouts": len(failures["stuckRollouts"]),
            "unscheduledPods": len(failures["unscheduledPods"]),
            "changes": len(changes["entries"]),
            "slowestStep": slowest,
        },
    }
