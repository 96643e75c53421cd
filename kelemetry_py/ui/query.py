"""What the UI's search box and time pickers mean: ``deploy/web -n shop``, ``name=web``, ``now-1h``."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from kelemetry_py.frontend.modes import FrontendError
from kelemetry_py.kube.catalog import ResourceCatalog
from kelemetry_py.times import DEFAULT_LOOKBACK_NS, parse_time

# Typing ``web-6b95…`` (or ``web-6b95*``) asks for names starting with ``web-6b95``.
_PREFIX_MARKS = ("…", "*", "...")
_NAMESPACE_FLAGS = ("-n", "--namespace")


@dataclass(slots=True)
class SearchQuery:
    """The parsed box: object fields, other raw tags (``username=admin``) and whether only errors count."""

    resource: str = ""
    group: str | None = None
    namespace: str | None = None
    cluster: str | None = None
    name: str = ""
    name_prefix: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    errors_only: bool = False

    def store_tags(self, *, with_name: bool = True) -> dict[str, str]:
        """The tags a store can match exactly (a name prefix is checked on the results)."""
        tags = dict(self.tags)
        for key, value in (
            ("resource", self.resource),
            ("group", self.group),
            ("namespace", self.namespace),
            ("cluster", self.cluster),
        ):
            if value is not None and (value or key == "namespace"):
                tags[key] = value
        if with_name and self.name and not self.name_prefix:
            tags["name"] = self.name
        return tags

    def name_matches(self, name: str) -> bool:
        if not self.name:
            return True
        return name.startswith(self.name) if self.name_prefix else name == self.name


def _resolve_kind(text: str, query: SearchQuery) -> None:
    info = ResourceCatalog.builtin().lookup(text)
    if info is not None:
        query.resource, query.group = info.resource, info.group
    else:  # a custom resource the built-in catalog does not know: take it as typed (plural[.group])
        resource, _, group = text.lower().partition(".")
        query.resource, query.group = resource, (group or None)


def _set_name(text: str, query: SearchQuery) -> None:
    for mark in _PREFIX_MARKS:
        if text.endswith(mark):
            query.name, query.name_prefix = text[: -len(mark)], True
            return
    query.name, query.name_prefix = text, False


def parse_search(text: str) -> SearchQuery:
    """Parse the box: ``KIND/NAME``, ``-n NS``, ``key=value`` (name, namespace, cluster, kind, error or any raw tag),
    a bare word is a name."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise FrontendError(f"search: {exc}") from None
    query = SearchQuery()
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word in _NAMESPACE_FLAGS:
            if index >= len(words):
                raise FrontendError(f"search: {word} needs a namespace")
            query.namespace = words[index]
            index += 1
        elif word.startswith("--namespace="):
            query.namespace = word.partition("=")[2]
        elif "=" in word:
            key, _, value = word.partition("=")
            key = key.strip()
            if not key:
                raise FrontendError(f"search: {word!r} has no key before '='")
            if key == "error":
                if value.lower() not in ("true", "false"):
                    raise FrontendError("search: error= takes true or false")
                query.errors_only = value.lower() == "true"
            elif key in ("kind", "resource"):
                _resolve_kind(value, query)
            elif key == "name":
                _set_name(value, query)
            elif key in ("namespace", "ns"):
                query.namespace = value
            elif key == "cluster":
                query.cluster = value
            elif key == "group":
                query.group = value
            else:
                query.tags[key] = value
        elif "/" in word:
            kind, _, name = word.partition("/")
            _resolve_kind(kind, query)
            if name:
                _set_name(name, query)
        else:
            _set_name(word, query)
    return query


def parse_range(start: str, end: str, now_ns: int, default_lookback_ns: int = DEFAULT_LOOKBACK_NS) -> tuple[int, int]:
    """The range of ``from``/``to`` parameters (``now``, ``now-1h``, RFC 3339 or unix milliseconds): ``to``
    defaults to now, ``from`` to ``default_lookback_ns`` before it."""
    end_ns = parse_time(end, "to", now_ns=now_ns, unix_unit_ns=10**6) if end else now_ns
    start_ns = (
        parse_time(start, "from", now_ns=now_ns, unix_unit_ns=10**6) if start else end_ns - default_lookback_ns
    )
    if end_ns < start_ns:
        raise FrontendError("the range ends before it starts")
    return start_ns, end_ns
