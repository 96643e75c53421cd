"""Finding the object a user names and analysing its assembled tree over a time range."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kelemetry_py.analysis.analyzer import analyze
from kelemetry_py.auth import EVERYTHING, Scope
from kelemetry_py.auth.masking import mask_document, namespaces_allowed
from kelemetry_py.frontend.assembly import Modifier, ObjectMatch
from kelemetry_py.frontend.modes import FrontendError
from kelemetry_py.frontend.service import FrontendService
from kelemetry_py.storage import TraceQuery

SCOPES = {"owned": Modifier.OWNED_OBJECTS, "full": Modifier.FULL_TREE, "object": Modifier.NONE}
_CANDIDATES = 20


class AnalysisError(FrontendError):
    """The request cannot be analysed as asked (answered with HTTP 400)."""


@dataclass(slots=True, kw_only=True)
class AnalysisRequest:
    """An object (``None`` fields match anything) and the range to analyse."""

    resource: str
    name: str
    start_ns: int
    end_ns: int
    namespace: str | None = None
    cluster: str | None = None
    group: str | None = None
    scope: str = "owned"

    def check(self) -> None:
        if not self.resource or not self.name:
            raise AnalysisError("an analysis needs at least a resource (or kind) and a name")
        if self.end_ns < self.start_ns:
            raise AnalysisError("the range ends before it starts")
        if self.scope not in SCOPES:
            raise AnalysisError(f"scope must be one of {', '.join(SCOPES)}, not {self.scope!r}")


class AnalysisService:
    """Analyses the same assembled traces the frontend serves."""

    def __init__(self, frontend: FrontendService) -> None:
        self.frontend = frontend

    async def find(self, request: AnalysisRequest, scope: Scope = EVERYTHING) -> ObjectMatch | None:
        """The object the request names with data in the range; the most recently active one on a tie."""
        request.check()
        wanted = {
            "resource": request.resource,
            "name": request.name,
            "namespace": request.namespace,
            "cluster": request.cluster,
            "group": request.group,
        }
        tags = {key: value for key, value in wanted.items() if value is not None}
        matches = await self.frontend.assembler.search(
            TraceQuery(
                tags={k: v for k, v in tags.items() if v},
                start_ns=request.start_ns,
                end_ns=request.end_ns,
                limit=_CANDIDATES,
            ),
            max_objects=_CANDIDATES,
            scope=scope,
        )
        exact = [match for match in matches if all(_field(match, k) == v for k, v in tags.items())]
        return exact[0] if exact else None

    async def analyze(self, request: AnalysisRequest, scope: Scope = EVERYTHING) -> dict[str, Any] | None:
        """The analysis document over what ``scope`` may see, or None when the object has no data in the range."""
        match = await self.find(request, scope)
        if match is None:
            return None
        trace = await self.frontend.assembler.assemble(
            match.key, request.start_ns, request.end_ns, SCOPES[request.scope], scope
        )
        if trace is None:
            return None
        document = analyze(trace)
        if not scope.sees_everything:
            shown = namespaces_allowed(scope, (obj.ref for obj in trace.objects.values()))
            document = mask_document(document, shown)
        return document


def _field(match: ObjectMatch, name: str) -> str:
    return str(getattr(match.ref, name))
