"""The caller's tenant scope as an SQL clause, so totals, statistics and buckets count only what it may see."""

from __future__ import annotations

from typing import Any

import orjson

from kelemetry_py.auth import Scope, StaticScope
from kelemetry_py.model import ObjectRef
from kelemetry_py.search.filters import RecordFilter, SearchError
from kelemetry_py.search.index import Clause, SearchIndex

NOTHING: Clause = ("0", [])


def static_clause(static: StaticScope) -> Clause:
    """Records with no namespace (cluster-scoped objects, non-resource requests) need ``cluster_scoped``."""
    clauses: list[str] = []
    params: list[Any] = []
    if static.clusters is not None:
        if not static.clusters:
            return NOTHING
        clauses.append(f"cluster IN ({','.join('?' * len(static.clusters))})")
        params.extend(sorted(static.clusters))
    if static.namespaces is not None:
        namespaced = f"namespace IN ({','.join('?' * len(static.namespaces))})" if static.namespaces else "0"
        params.extend(sorted(static.namespaces))
        clauses.append(f"({namespaced} OR namespace = '')" if static.cluster_scoped else namespaced)
    elif not static.cluster_scoped:
        clauses.append("namespace != ''")
    return " AND ".join(clauses) or "1", params


async def scope_clause(
    scope: Scope, index: SearchIndex, record_filter: RecordFilter, max_objects: int
) -> Clause | None:
    """None when the caller sees everything; else the clause limiting a query to the objects it may see."""
    if scope.sees_everything:
        return None
    static = scope.static()
    if static is not None:
        return static_clause(static)
    # Only per-object checks can tell: ask about each distinct object the query matches (decisions are cached).
    objects = await index.distinct_objects(record_filter, max_objects + 1)
    if len(objects) > max_objects:
        raise SearchError(
            f"start_time: the query matches more than {max_objects} objects to check access to; "
            "narrow the time range or add filters"
        )
    refs = {
        ObjectRef(cluster, group, "", resource, namespace, name): obj
        for obj, cluster, group, resource, namespace, name in objects
        if resource
    }
    allowed = [refs[ref] for ref in await scope.visible(refs) if ref in refs]
    if not allowed:
        return NOTHING
    return "obj IN (SELECT value FROM json_each(?))", [orjson.dumps(allowed).decode()]
