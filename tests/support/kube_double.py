"""A Kubernetes apiserver test double: an aiohttp server that replays a recorded fixture with real semantics.

It serves discovery, LIST (with limit/continue) and WATCH (resourceVersion filtering, bookmarks, ``410 Gone``
as an ERROR watch event, abrupt connection drops) and plain object CRUD (GET/POST/PUT/DELETE with
resourceVersion conflicts, used for coordination.k8s.io Leases). Replay "time" belongs to the test: recorded
watch lines are held back until :meth:`KubeApiDouble.release` lets them out, in their recorded order.

ResourceVersions are opaque strings to clients. Internally each change gets a sequence number in the order
the double applied it, and every resourceVersion a client can see is mapped to that number per resource, so
recorded changes and runtime changes (numbered above everything recorded) mix safely.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from kelemetry_py.kube.catalog import ResourceCatalog, ResourceInfo

GVR = tuple[str, str, str]
DEFAULT_AUDIENCE = "https://kubernetes.default.svc.cluster.local"

# The built-in ClusterRole "view" (Kubernetes 1.24), as (api groups, resources, verbs). It has no Secrets.
VIEW_RULES: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    (
        ("",),
        (
            "configmaps", "endpoints", "persistentvolumeclaims", "persistentvolumeclaims/status", "pods",
            "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts", "services",
            "services/status", "bindings", "events", "limitranges", "namespaces/status", "pods/log", "pods/status",
            "replicationcontrollers/status", "resourcequotas", "resourcequotas/status", "namespaces",
        ),
        ("get", "list", "watch"),
    ),
    (("discovery.k8s.io",), ("endpointslices",), ("get", "list", "watch")),
    (
        ("apps",),
        (
            "controllerrevisions", "daemonsets", "daemonsets/status", "deployments", "deployments/scale",
            "deployments/status", "replicasets", "replicasets/scale", "replicasets/status", "statefulsets",
            "statefulsets/scale", "statefulsets/status",
        ),
        ("get", "list", "watch"),
    ),
    (("autoscaling",), ("horizontalpodautoscalers", "horizontalpodautoscalers/status"), ("get", "list", "watch")),
    (("batch",), ("cronjobs", "cronjobs/status", "jobs", "jobs/status"), ("get", "list", "watch")),
    (
        ("extensions", "networking.k8s.io"),
        ("ingresses", "ingresses/status", "networkpolicies"),
        ("get", "list", "watch"),
    ),
    (("policy",), ("poddisruptionbudgets", "poddisruptionbudgets/status"), ("get", "list", "watch")),
    (("events.k8s.io",), ("events",), ("get", "list", "watch")),
)
Rules = tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...]


@dataclass(frozen=True)
class ReviewUser:
    """What a TokenReview of a valid token says (``kubectl create token`` gives a service account's)."""

    username: str
    uid: str
    groups: tuple[str, ...]
    audiences: tuple[str, ...] = (DEFAULT_AUDIENCE,)

    @classmethod
    def service_account(cls, namespace: str, name: str, uid: str) -> ReviewUser:
        return cls(
            f"system:serviceaccount:{namespace}:{name}",
            uid,
            ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
        )


@dataclass(frozen=True)
class Binding:
    """A RoleBinding (``namespace`` set) or ClusterRoleBinding (None) of a role's rules to one user or group."""

    name: str
    namespace: str | None
    role_kind: str  # Role or ClusterRole
    role_name: str
    subject: str  # a username or a group
    rules: Rules
    non_resource_urls: tuple[str, ...] = ()  # e.g. ("/metrics",) or ("*",); only a ClusterRoleBinding grants them

    def allows_path(self, user: str, groups: list[str], attributes: Mapping[str, Any]) -> bool:
        if (self.subject != user and self.subject not in groups) or self.namespace is not None:
            return False
        path = str(attributes.get("path", ""))
        return attributes.get("verb") == "get" and ("*" in self.non_resource_urls or path in self.non_resource_urls)

    def allows(self, user: str, groups: list[str], attributes: Mapping[str, Any]) -> bool:
        if self.subject != user and self.subject not in groups:
            return False
        namespace = attributes.get("namespace") or ""
        if self.namespace is not None and namespace != self.namespace:
            return False  # a RoleBinding grants nothing cluster-scoped, nothing in other namespaces
        resource = str(attributes.get("resource", ""))
        if attributes.get("subresource"):
            resource += "/" + str(attributes["subresource"])
        group, verb = str(attributes.get("group", "")), str(attributes.get("verb", ""))
        return any(
            (group in api_groups or "*" in api_groups)
            and (resource in resources or "*" in resources)
            and (verb in verbs or "*" in verbs)
            for api_groups, resources, verbs in self.rules
        )

    def reason(self, user: str) -> str:
        kind = "RoleBinding" if self.namespace is not None else "ClusterRoleBinding"
        where = f"{self.name}/{self.namespace}" if self.namespace is not None else self.name
        if self.subject.startswith("system:serviceaccount:"):
            _, _, sa_namespace, sa_name = self.subject.split(":", 3)
            subject = f'ServiceAccount "{sa_name}/{sa_namespace}"'
        elif self.subject == user:
            subject = f'User "{self.subject}"'
        else:
            subject = f'Group "{self.subject}"'
        return f'RBAC: allowed by {kind} "{where}" of {self.role_kind} "{self.role_name}" to {subject}'


@dataclass
class _Change:
    seq: int
    rv: str
    type: str  # ADDED / MODIFIED / DELETED / BOOKMARK
    line: bytes  # the serialized watch event, byte for byte what is sent


@dataclass
class _PendingLine:
    time: float
    order: int
    gvr: GVR
    line: bytes


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    peer_cert_subject: str = ""


class _Watcher:
    def __init__(self, bookmarks: bool, namespace: str | None) -> None:
        self.queue: asyncio.Queue[_Change | None] = asyncio.Queue()
        self.bookmarks = bookmarks
        self.namespace = namespace
        self.drop_abruptly = False


@dataclass
class _Store:
    info: ResourceInfo
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    history: list[_Change] = field(default_factory=list)
    rv_seq: dict[str, int] = field(default_factory=dict)
    latest_rv: str = "1"
    compacted_seq: int = 0
    watchers: list[_Watcher] = field(default_factory=list)


def _gvr_of_stream(name: str) -> GVR:
    group, version, resource = name.split("_")
    return ("" if group == "core" else group, version, resource)


class KubeApiDouble:
    """A fake kube-apiserver. Start with ``await double.start()``; ``double.url`` is its base URL."""

    def __init__(
        self,
        fixture_dir: Path | None = None,
        *,
        tokens: Iterable[str] = (),
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.tokens = set(tokens)
        # TokenReview / SubjectAccessReview: valid tokens of the cluster's users, and the RBAC bindings.
        self.review_tokens: dict[str, ReviewUser] = {}
        self.bindings: list[Binding] = []
        self.reviews: list[tuple[str, dict[str, Any]]] = []  # (kind, spec) of every review asked
        self.requests: list[RecordedRequest] = []
        self._tls = tls
        self._seq = 0
        self._stores: dict[GVR, _Store] = {}
        self._pending: list[_PendingLine] = []
        self._failures: list[tuple[str, int]] = []  # (path prefix, status) for the next matching requests
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.url = ""
        self._fixture = fixture_dir
        self._discovery: dict[str, Any] = {}
        self._watch_opened = asyncio.Condition()
        self.watches_opened = 0
        self._load(fixture_dir)

    # ------------------------------------------------------------------ loading
    def _load(self, fixture_dir: Path | None) -> None:
        if fixture_dir is not None:
            disc = fixture_dir / "discovery"
            for path in disc.glob("*.json"):
                self._discovery[path.stem] = json.loads(path.read_bytes())
        else:
            self._discovery = _minimal_discovery()
        api_v1 = self._discovery["api_v1"]
        group_versions = [doc for name, doc in self._discovery.items() if name.startswith("apis_")]
        catalog = ResourceCatalog.from_discovery(api_v1, group_versions, self._discovery.get("apis"))
        list_rvs: dict[GVR, str] = {}
        max_rv = 1
        if fixture_dir is not None:
            for path in sorted((fixture_dir / "list").glob("*.json")):
                gvr = _gvr_of_stream(path.stem)
                body = json.loads(path.read_bytes())
                list_rvs[gvr] = body["metadata"]["resourceVersion"]
                max_rv = max(max_rv, int(list_rvs[gvr]))
        for info in catalog:
            gvr = (info.group, info.version, info.resource)
            self._stores[gvr] = _Store(info)
        # Lists were taken one after another; their versions are applied in that order.
        start_rv = str(max_rv)
        for gvr in sorted(self._stores, key=lambda g: int(list_rvs.get(g, start_rv))):
            store = self._stores[gvr]
            rv = list_rvs.get(gvr, start_rv)
            self._seq += 1
            store.rv_seq[rv] = self._seq
            store.latest_rv = rv
            store.compacted_seq = self._seq
        if fixture_dir is None:
            self._next_rv = max_rv + 1
            return
        for path in sorted((fixture_dir / "list").glob("*.json")):
            gvr = _gvr_of_stream(path.stem)
            store = self._stores[gvr]
            body = json.loads(path.read_bytes())
            for item in body["items"]:
                obj = {"kind": store.info.kind, "apiVersion": store.info.api_version, **item}
                store.objects[_obj_key(obj)] = obj
        order = 0
        for path in sorted((fixture_dir / "watch").glob("*.jsonl")):
            gvr = _gvr_of_stream(path.stem)
            lines = [line for line in path.read_bytes().split(b"\n") if line.strip()]
            times = [float(t) for t in path.with_suffix(".times").read_text().split()]
            for line, when in zip(lines, times, strict=True):
                order += 1
                self._pending.append(_PendingLine(when, order, gvr, line + b"\n"))
                rv = json.loads(line)["object"]["metadata"].get("resourceVersion", "0")
                max_rv = max(max_rv, int(rv))
        self._pending.sort(key=lambda p: (p.time, p.order))
        self._next_rv = max_rv + 1

    # ------------------------------------------------------------------ lifecycle
    async def start(self, host: str = "127.0.0.1") -> str:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # A watcher that hangs up is forgotten at once, as the apiserver does, not at the next write.
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1, handler_cancellation=True)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, 0, ssl_context=self._tls)
        await self._site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if self._tls else 'http'}://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> KubeApiDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ test controls
    @property
    def pending(self) -> int:
        """Recorded watch lines not released yet."""
        return len(self._pending)

    def release(self, count: int | None = None, *, resource: str | None = None) -> int:
        """Apply the next ``count`` recorded watch lines (all when None), optionally only those of one
        ``resource`` (plural, or ``resource.group``); returns how many were released."""
        released = 0
        remaining: list[_PendingLine] = []
        for pending in self._pending:
            wanted = resource is None or resource in (pending.gvr[2], f"{pending.gvr[2]}.{pending.gvr[0]}")
            if wanted and (count is None or released < count):
                self._apply_line(pending.gvr, pending.line)
                released += 1
            else:
                remaining.append(pending)
        self._pending = remaining
        return released

    def release_until(self, moment: float) -> int:
        """Apply every recorded watch line received at or before ``moment`` (recording's unix seconds)."""
        due = sum(1 for pending in self._pending if pending.time <= moment)
        return self.release(due)

    def latest_version(self, group: str, version: str, resource: str) -> str:
        """The resourceVersion a watcher of this resource has seen once it has seen everything."""
        return self._stores[(group, version, resource)].latest_rv

    def compact(self) -> None:
        """Forget all history: a watch from any earlier resourceVersion now gets 410 Gone. As with etcd, a LIST
        afterwards answers with the current revision, from which a watch may start."""
        revision = self._new_rv()
        self._seq += 1
        for store in self._stores.values():
            store.history.clear()
            store.compacted_seq = self._seq
            store.rv_seq[revision] = self._seq
            store.latest_rv = revision

    def drop_watches(self, *, abrupt: bool = True) -> int:
        """End every open watch; ``abrupt`` cuts the connection mid-stream instead of ending it cleanly."""
        dropped = 0
        for store in self._stores.values():
            for watcher in store.watchers:
                watcher.drop_abruptly = abrupt
                watcher.queue.put_nowait(None)
                dropped += 1
        return dropped

    def watcher_count(self, resource: str | None = None) -> int:
        return sum(
            len(store.watchers)
            for gvr, store in self._stores.items()
            if resource is None or resource in (gvr[2], f"{gvr[2]}.{gvr[0]}")
        )

    async def wait_for_watches(self, opened: int, within: float = 10.0) -> None:
        """Wait until ``opened`` watch connections (counted since start) have been accepted."""
        async with self._watch_opened:
            await asyncio.wait_for(self._watch_opened.wait_for(lambda: self.watches_opened >= opened), within)

    def watch_requests(self, path: str) -> list[RecordedRequest]:
        """The WATCH requests made for a collection path, in order."""
        return [r for r in self.requests if r.path == path and r.query.get("watch") in ("1", "true")]

    def fail_next(self, path_prefix: str, status: int = 500, times: int = 1) -> None:
        """The next ``times`` requests whose path starts with ``path_prefix`` fail with ``status``."""
        self._failures.extend([(path_prefix, status)] * times)

    def clear_failures(self) -> None:
        """Forget the failures ``fail_next`` asked for that have not happened yet."""
        self._failures.clear()

    def send_bookmark(self, group: str, version: str, resource: str) -> str:
        """A BOOKMARK at a fresh resourceVersion to the resource's watchers (as after a quiet minute)."""
        store = self._stores[(group, version, resource)]
        rv = self._new_rv()
        event = {
            "type": "BOOKMARK",
            "object": {
                "kind": store.info.kind,
                "apiVersion": store.info.api_version,
                "metadata": {"resourceVersion": rv, "creationTimestamp": None},
            },
        }
        self._append(store, "BOOKMARK", rv, _encode(event))
        return rv

    def send_raw_line(self, group: str, version: str, resource: str, line: bytes) -> None:
        """Send ``line`` as is to the resource's watchers, as a broken or misbehaving apiserver (or a proxy in
        front of it) might; it changes nothing in the double's state."""
        for watcher in self._stores[(group, version, resource)].watchers:
            watcher.queue.put_nowait(_Change(-1, "", "RAW", line))

    def put_object(self, group: str, version: str, resource: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace an object at runtime (a new resourceVersion, an ADDED or MODIFIED event)."""
        store = self._stores[(group, version, resource)]
        stored = _with_type(store.info, obj)
        key = _obj_key(stored)
        event_type = "MODIFIED" if key in store.objects else "ADDED"
        if event_type == "ADDED":
            stored["metadata"].setdefault("uid", f"uid-{self._next_rv}")
        else:
            stored["metadata"]["uid"] = store.objects[key]["metadata"].get("uid")
        rv = self._new_rv()
        stored["metadata"]["resourceVersion"] = rv
        store.objects[key] = stored
        self._append(store, event_type, rv, _encode({"type": event_type, "object": stored}))
        return stored

    def delete_object(self, group: str, version: str, resource: str, namespace: str, name: str) -> None:
        store = self._stores[(group, version, resource)]
        obj = store.objects.pop((namespace, name))
        rv = self._new_rv()
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": rv}}
        self._append(store, "DELETED", rv, _encode({"type": "DELETED", "object": obj}))

    def get_object(self, group: str, version: str, resource: str, namespace: str, name: str) -> dict[str, Any]:
        return self._stores[(group, version, resource)].objects[(namespace, name)]

    def objects(self, group: str, version: str, resource: str) -> list[dict[str, Any]]:
        return list(self._stores[(group, version, resource)].objects.values())

    # ------------------------------------------------------------------ state changes
    def _new_rv(self) -> str:
        rv = str(self._next_rv)
        self._next_rv += 1
        return rv

    def _apply_line(self, gvr: GVR, line: bytes) -> None:
        store = self._stores[gvr]
        event = json.loads(line)
        event_type, obj = event["type"], event["object"]
        rv = obj["metadata"]["resourceVersion"]
        if event_type in ("ADDED", "MODIFIED"):
            store.objects[_obj_key(obj)] = obj
        elif event_type == "DELETED":
            store.objects.pop(_obj_key(obj), None)
        self._append(store, event_type, rv, line)

    def _append(self, store: _Store, event_type: str, rv: str, line: bytes) -> None:
        self._seq += 1
        change = _Change(self._seq, rv, event_type, line)
        store.history.append(change)
        store.rv_seq[rv] = self._seq
        store.latest_rv = rv
        for watcher in store.watchers:
            watcher.queue.put_nowait(change)

    # ------------------------------------------------------------------ HTTP
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        cert = request.transport.get_extra_info("peercert") if request.transport else None
        subject = ""
        if cert:
            subject = ",".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
        self.requests.append(
            RecordedRequest(request.method, request.path, dict(request.query), dict(request.headers), subject)
        )
        if self.tokens and not subject:
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
                return _status(401, "Unauthorized", "Unauthorized")
        for i, (prefix, status) in enumerate(self._failures):
            if request.path.startswith(prefix):
                del self._failures[i]
                return _status(status, "InternalError", f"injected failure {status}")
        result: web.StreamResponse = await handler(request)
        return result

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "POST" and request.path == "/apis/authentication.k8s.io/v1/tokenreviews":
            return await self._token_review(request)
        if request.method == "POST" and request.path == "/apis/authorization.k8s.io/v1/subjectaccessreviews":
            return await self._access_review(request)
        if request.path == "/version":
            return web.json_response(self._discovery.get("version", {"gitVersion": "v1.24.0"}))
        if parts == ["api"]:
            return web.json_response(self._discovery.get("api", {"kind": "APIVersions", "versions": ["v1"]}))
        if parts == ["api", "v1"]:
            return web.json_response(self._discovery["api_v1"])
        if parts == ["apis"]:
            return web.json_response(self._discovery["apis"])
        if len(parts) == 3 and parts[0] == "apis":
            doc = self._discovery.get(f"apis_{parts[1]}_{parts[2]}")
            return web.json_response(doc) if doc else _status(404, "NotFound", "group version not served")
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return _status(404, "NotFound", "the server could not find the requested resource")
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        store = self._stores.get((group, version, rest[0]))
        if store is None or len(rest) > 2:
            # /api/v1/namespaces/<name> is the namespace object itself.
            if namespace is not None and not rest:
                store = self._stores.get(("", "v1", "namespaces"))
                rest = ["namespaces", namespace]
                namespace = None
            if store is None or len(rest) > 2:
                return _status(404, "NotFound", "the server could not find the requested resource")
        if namespace is not None and not store.info.namespaced:
            return _status(404, "NotFound", f"{store.info.resource} is not namespaced")
        name = rest[1] if len(rest) == 2 else None
        if name is None:
            if request.method == "GET":
                if request.query.get("watch") in ("1", "true", "True"):
                    return await self._watch(request, store, namespace)
                return self._list(request, store, namespace)
            if request.method == "POST":
                return await self._create(request, store, namespace)
            return _status(405, "MethodNotAllowed", "method not allowed")
        key = (namespace or "", name)
        if request.method == "GET":
            obj = store.objects.get(key)
            if obj is None:
                return _not_found(store, name)
            return web.json_response(obj)
        if request.method == "PUT":
            return await self._update(request, store, key)
        if request.method == "DELETE":
            if key not in store.objects:
                return _not_found(store, name)
            obj = store.objects[key]
            self.delete_object(*_gvr(store), key[0], key[1])
            return web.json_response(obj)
        return _status(405, "MethodNotAllowed", "method not allowed")

    # ------------------------------------------------------------------ reviews (tests/fixtures/auth shapes)
    async def _token_review(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        spec = body.get("spec") or {}
        self.reviews.append(("TokenReview", spec))
        user = self.review_tokens.get(str(spec.get("token", "")))
        wanted = list(spec.get("audiences") or [])
        status: dict[str, Any]
        if user is None:
            status = {"user": {}, "error": "invalid bearer token"}
        elif wanted and not set(wanted) & set(user.audiences):
            status = {
                "user": {},
                "error": "[invalid bearer token, token audiences "
                + json.dumps(list(user.audiences))
                + " is invalid for the target audiences "
                + json.dumps(wanted)
                + "]",
            }
        else:
            status = {
                "authenticated": True,
                "user": {"username": user.username, "uid": user.uid, "groups": list(user.groups)},
                "audiences": wanted or list(user.audiences),
            }
        return _review_response("authentication.k8s.io/v1", "TokenReview", spec, status)

    async def _access_review(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        spec = body.get("spec") or {}
        self.reviews.append(("SubjectAccessReview", spec))
        attributes = spec.get("resourceAttributes") or {}
        paths = spec.get("nonResourceAttributes")
        user, groups = str(spec.get("user", "")), list(spec.get("groups") or [])
        for binding in self.bindings:
            allowed = (
                binding.allows_path(user, groups, paths) if paths else binding.allows(user, groups, attributes)
            )
            if allowed:
                status = {"allowed": True, "reason": binding.reason(user)}
                break
        else:
            status = {"allowed": False}  # the apiserver gives no reason when nothing allows it
        return _review_response("authorization.k8s.io/v1", "SubjectAccessReview", spec, status)

    def _list(self, request: web.Request, store: _Store, namespace: str | None) -> web.StreamResponse:
        items = sorted(
            (obj for key, obj in store.objects.items() if namespace is None or key[0] == namespace),
            key=_obj_key,
        )
        rv = store.latest_rv
        start = 0
        if token := request.query.get("continue"):
            try:
                token_rv, offset = json.loads(base64.urlsafe_b64decode(token))
            except ValueError:
                return _status(400, "BadRequest", "invalid continue token")
            if token_rv != rv:
                # The snapshot the token points into has moved on, as with an etcd compaction.
                return _status(410, "Expired", "The provided continue parameter is too old")
            start = int(offset)
        limit = int(request.query.get("limit") or 0)
        page = items[start : start + limit] if limit else items[start:]
        metadata: dict[str, Any] = {"resourceVersion": rv}
        if limit and start + limit < len(items):
            metadata["continue"] = base64.urlsafe_b64encode(json.dumps([rv, start + limit]).encode()).decode()
            metadata["remainingItemCount"] = len(items) - start - limit
        body = {
            "kind": f"{store.info.kind}List",
            "apiVersion": store.info.api_version,
            "metadata": metadata,
            # Like the real apiserver, list items carry neither apiVersion nor kind.
            "items": [{k: v for k, v in obj.items() if k not in ("apiVersion", "kind")} for obj in page],
        }
        if _wants_metadata(request):
            body = {
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": metadata,
                "items": [_partial(obj) for obj in page],
            }
        return web.json_response(body)

    async def _watch(self, request: web.Request, store: _Store, namespace: str | None) -> web.StreamResponse:
        requested = request.query.get("resourceVersion", "")
        bookmarks = request.query.get("allowWatchBookmarks") in ("1", "true", "True")
        watcher = _Watcher(bookmarks, namespace)
        metadata_only = _wants_metadata(request)
        backlog: list[_Change | bytes] = []
        expired = False
        if requested in ("", "0"):
            for key, obj in store.objects.items():
                if namespace is not None and key[0] != namespace:
                    continue
                backlog.append(_encode({"type": "ADDED", "object": obj}))
        else:
            seq = store.rv_seq.get(requested)
            if seq is None or seq < store.compacted_seq:
                expired = True
            else:
                backlog.extend(change for change in store.history if change.seq > seq)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if expired:
            status = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {requested} ({store.latest_rv})",
                "reason": "Expired",
                "code": 410,
            }
            await response.write(_encode({"type": "ERROR", "object": status}))
            await response.write_eof()
            return response
        store.watchers.append(watcher)
        async with self._watch_opened:
            self.watches_opened += 1
            self._watch_opened.notify_all()
        try:
            for item in backlog:
                if isinstance(item, bytes):
                    await response.write(_as_partial(item) if metadata_only else item)
                elif self._visible(item, watcher):
                    await response.write(_as_partial(item.line) if metadata_only else item.line)
            timeout = float(request.query.get("timeoutSeconds") or 0) or None
            while True:
                try:
                    change = await asyncio.wait_for(watcher.queue.get(), timeout)
                except TimeoutError:
                    break
                if change is None:
                    if watcher.drop_abruptly and request.transport is not None:
                        request.transport.close()  # no terminating chunk: the client sees a broken stream
                        return response
                    break
                if self._visible(change, watcher):
                    await response.write(_as_partial(change.line) if metadata_only else change.line)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away (a watcher stopped): nothing left to tell it
        finally:
            store.watchers.remove(watcher)
        return response

    @staticmethod
    def _visible(change: _Change, watcher: _Watcher) -> bool:
        if change.type == "BOOKMARK":
            return watcher.bookmarks
        if change.type == "RAW":
            return True
        if watcher.namespace is None:
            return True
        return bool(json.loads(change.line)["object"]["metadata"].get("namespace") == watcher.namespace)

    async def _create(self, request: web.Request, store: _Store, namespace: str | None) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _status(400, "BadRequest", "request body is not JSON")
        meta = body.setdefault("metadata", {})
        if namespace is not None:
            meta["namespace"] = namespace
        if not meta.get("name"):
            return _status(422, "Invalid", "metadata.name: Required value")
        if _obj_key(body) in store.objects:
            return _status(409, "AlreadyExists", f'{store.info.resource} "{meta["name"]}" already exists')
        meta.pop("resourceVersion", None)
        meta["uid"] = f"uid-{self._next_rv}"
        return web.json_response(self.put_object(*_gvr(store), body), status=201)

    async def _update(self, request: web.Request, store: _Store, key: tuple[str, str]) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _status(400, "BadRequest", "request body is not JSON")
        current = store.objects.get(key)
        if current is None:
            return _not_found(store, key[1])
        body.setdefault("metadata", {}).update(namespace=key[0] or None, name=key[1])
        if not body["metadata"]["namespace"]:
            del body["metadata"]["namespace"]
        sent_rv = body["metadata"].get("resourceVersion")
        if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
            return _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {store.info.resource} "{key[1]}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        return web.json_response(self.put_object(*_gvr(store), body))


def _wants_metadata(request: web.Request) -> bool:
    """``Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1``: metadata only."""
    accept = request.headers.get("Accept", "")
    return "as=PartialObjectMetadata" in accept and "g=meta.k8s.io" in accept


def _partial(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}


def _as_partial(line: bytes) -> bytes:
    event = json.loads(line)
    if event.get("type") in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
        event["object"] = _partial(event["object"])
    return _encode(event)


def _fields_v1(value: Any, nested: bool = False) -> Any:
    if isinstance(value, dict):
        fields = {f"f:{key}": _fields_v1(item, True) for key, item in value.items()}
        return {".": {}, **fields} if nested else fields
    return {}


def _review_response(api_version: str, kind: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> web.Response:
    """A review as the apiserver answers every one, allowed or not: 201 Created, the spec echoed, the verdict in
    ``status``, and the managedFields entry of an unnamed manager."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {
            "creationTimestamp": None,
            "managedFields": [
                {
                    "manager": "unknown",
                    "operation": "Update",
                    "apiVersion": api_version,
                    "time": now,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": _fields_v1(dict(spec))},
                }
            ],
        },
        "spec": dict(spec),
        "status": dict(status),
    }
    return web.json_response(body, status=201)


def _gvr(store: _Store) -> GVR:
    return (store.info.group, store.info.version, store.info.resource)


def _obj_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return (meta.get("namespace") or "", meta["name"])


def _with_type(info: ResourceInfo, obj: Mapping[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(obj))
    copied["kind"], copied["apiVersion"] = info.kind, info.api_version
    copied.setdefault("metadata", {})
    return copied


def _encode(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


def _not_found(store: _Store, name: str) -> web.Response:
    return _status(404, "NotFound", f'{store.info.resource} "{name}" not found')


def _minimal_discovery() -> dict[str, Any]:
    """Just enough API for election and engine tests without a recording."""
    verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
    return {
        "api_v1": {
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": [
                {"name": "configmaps", "namespaced": True, "kind": "ConfigMap", "verbs": verbs},
                {"name": "namespaces", "namespaced": False, "kind": "Namespace", "verbs": verbs},
            ],
        },
        "apis": {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": "coordination.k8s.io",
                    "versions": [{"groupVersion": "coordination.k8s.io/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": "coordination.k8s.io/v1", "version": "v1"},
                }
            ],
        },
        "apis_coordination.k8s.io_v1": {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "coordination.k8s.io/v1",
            "resources": [{"name": "leases", "namespaced": True, "kind": "Lease", "verbs": verbs}],
        },
    }
