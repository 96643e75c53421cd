"""Wires the stages together from a Config: the all-in-one process behind ``kelemetry-py serve``."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kelemetry_py import __version__
from kelemetry_py.config import Config, allowed_clusters, records_wanted
from kelemetry_py.export import SpanWriter
from kelemetry_py.logs import error_middleware, request_ids
from kelemetry_py.metrics import Metrics, files_size_bytes
from kelemetry_py.pipeline.core import Pipeline
from kelemetry_py.pipeline.durable import Delivery, DirectWriter, SpanLogWriter
from kelemetry_py.pipeline.emission import EmissionSet
from kelemetry_py.pipeline.emission.memory import MemoryEmissionSet
from kelemetry_py.pipeline.emission.redis import RedisEmissionSet
from kelemetry_py.pipeline.priority import Priority
from kelemetry_py.process import release_memory_when_idle, shorten_thread_switches, tune_garbage_collector
from kelemetry_py.sources.auditdecode import BatchDecoder, create_decoder
from kelemetry_py.sources.webhook import AuditWebhook, CountedWebhook
from kelemetry_py.spool import DurableLog
from kelemetry_py.spool.local import LocalLog
from kelemetry_py.tls import server_ssl_context

if TYPE_CHECKING:  # imported where used: a process that never serves the frontend never loads it
    from kelemetry_py.alerts.evaluator import AlertEvaluator
    from kelemetry_py.auth.middleware import Authenticator
    from kelemetry_py.frontend.grpc_storage import GrpcStorageServer
    from kelemetry_py.frontend.service import FrontendService
    from kelemetry_py.kube.catalog import ClusterCatalogs
    from kelemetry_py.linking.graph import ObjectGraph
    from kelemetry_py.plugins.sources import SourceRunner
    from kelemetry_py.search.index import SearchIndex
    from kelemetry_py.sources.ingestproc import IngestProcess
    from kelemetry_py.sources.kubewatch import KubeWatching
    from kelemetry_py.storage import TraceReader
    from kelemetry_py.storage.sqlite import SqliteStore

Closer = Callable[[], Awaitable[None]]

# After this many observations, the next moment the pipeline is found idle gives freed memory back to the system.
_RELEASE_AFTER_OBSERVATIONS = 20_000
# At shutdown: how long a request in flight may take to finish before it is cut off (it was not answered yet).
_IN_FLIGHT_SECONDS = 5.0

log = logging.getLogger(__name__)


@dataclass
class Components:
    """What a running App is made of, for the frontend, the watchers and tests."""

    metrics: Metrics
    writers: dict[str, SpanWriter]
    emission: EmissionSet
    pipeline: Pipeline
    delivery: Delivery
    graph: ObjectGraph
    catalogs: ClusterCatalogs
    priority: Priority  # the webhook's requests before the pipeline's slices
    store: SqliteStore | None = None  # the embedded store when enabled (a SpanWriter and a TraceReader)
    closers: list[Closer] = field(default_factory=list)
    sources: SourceRunner | None = None  # the enabled source plugins, started and stopped by App
    search: SearchIndex | None = None  # when search.enabled
    alerts: AlertEvaluator | None = None  # when alerts.rules_file is set


class App:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.components: Components | None = None
        self._runners: list[web.AppRunner] = []
        self.ports: dict[str, int] = {}
        self.frontend: FrontendService | None = None  # when the frontend is enabled
        self._grpc: GrpcStorageServer | None = None
        self.watching: KubeWatching | None = None  # when kube.clusters are configured
        self.decoder: BatchDecoder | None = None  # the webhook's, until stopped (none with ingest.process)
        self.ingest_process: IngestProcess | None = None  # with ingest.process
        self._ready = False
        self._stopping = False
        self._background: list[asyncio.Task[None]] = []  # memory upkeep: giving freed memory back
        self.authenticator: Authenticator | None = None  # who may read (auth.mode); None when everyone may

    @property
    def base_url(self) -> str:
        scheme = "https" if self.config.http.tls_cert_file else "http"
        return f"{scheme}://127.0.0.1:{self.ports['http']}"

    @property
    def ingest_url(self) -> str:
        """Where the audit webhook listens: its own port (http.ingest_port) or the main one."""
        if "ingest" not in self.ports:
            return self.base_url
        scheme = "https" if self.config.ingest.tls_cert_file else "http"
        return f"{scheme}://127.0.0.1:{self.ports['ingest']}"

    async def start(self) -> None:
        tune_garbage_collector()
        shorten_thread_switches()
        self.components = await build_components(self.config)
        await self.components.pipeline.start()
        await self.components.delivery.start()
        intake = self.components.delivery.intake
        if self.components.sources is not None:
            await self.components.sources.start()
        if self.config.kube.clusters:
            from kelemetry_py.sources.kubewatch import KubeWatching

            self.watching = KubeWatching(
                self.config, self.components.pipeline, self.components.metrics, self.components.catalogs, intake
            )
            await self.watching.start()
        from kelemetry_py.auth.middleware import create_authenticator

        self.authenticator = await create_authenticator(self.config.auth, self.config.kube)
        main = self._web_application(client_max_size=self.config.audit.max_body_bytes)
        self._add_operational_routes(main)
        # The apiserver's trust domain: on its own listener (TLS, client CA) when http.ingest_port is set, served
        # by a process of its own with ingest.process.
        ingest = main
        from kelemetry_py.sources.ingestproc import IngestProcess, ingest_process_wanted

        process: IngestProcess | None = None
        if ingest_process_wanted(self.config):
            self.ingest_process = process = IngestProcess(
                self.config,
                sink=intake,
                metrics=self.components.metrics,
                priority=self.components.priority,
                readiness=self._readiness,
                whole_bodies=self.components.pipeline.reads_whole_bodies,
                in_flight_seconds=self._in_flight_seconds,
                on_main_listener=not self.config.http.ingest_port,
            )
        # Either the main listener passes webhook connections to it, or it serves a listener of its own.
        handed_to = process if process is not None and process.on_main_listener else None
        own_listener = process if process is not None and not process.on_main_listener else None
        if handed_to is not None:
            # The main listener serves the connections it does not take.
            main.on_response_prepare.append(handed_to.served_here.close_after_answer)
        if own_listener is None:
            if self.config.http.ingest_port:
                ingest = self._web_application(client_max_size=self.config.audit.max_body_bytes)
                self._add_operational_routes(ingest, with_metrics=False)
            self.decoder = create_decoder(
                self.config.audit,
                self.config.redaction,
                self.components.metrics,
                records=records_wanted(self.config),
                whole_bodies=self.components.pipeline.reads_whole_bodies,
            )
            await self.decoder.start()
            AuditWebhook(
                sink=intake,
                decoder=self.decoder,
                metrics=CountedWebhook(self.components.metrics),
                default_cluster=self.config.cluster,
                audit=self.config.audit,
                http=self.config.http,
                ingest=self.config.ingest,
                clusters=allowed_clusters(self.config),
                priority=self.components.priority,
            ).add_routes(ingest)
        if self.config.frontend.enabled:
            await self._start_frontend(main)
        if handed_to is not None:
            # Listening first: the child forwards there what is not the webhook's. Until it serves, the webhook's
            # connections are served here, each closed after its answer.
            self.ports["http"] = await self._serve(main, self.config.http.port, hand_over=handed_to)
            await handed_to.start_on_main_listener(self.config.http.host, self.ports["http"])
        else:
            self.ports["http"] = await self._serve(main, self.config.http.port)
        if own_listener is not None:
            self.ports["ingest"] = await own_listener.start(self.config.http.host, self.config.http.ingest_port)
        elif ingest is not main:
            self.ports["ingest"] = await self._serve(ingest, self.config.http.ingest_port, self._ingest_ssl_context())
        loop = asyncio.get_running_loop()
        pipeline, delivery = self.components.pipeline, self.components.delivery

        def idle() -> bool:
            # The writers too: a store still writing a burst's spans once the pipeline is done would allocate again
            # after the release and keep that until the next burst's.
            return pipeline.pending == 0 and delivery.writers_caught_up()

        releasing = release_memory_when_idle(idle, lambda: pipeline.handled, _RELEASE_AFTER_OBSERVATIONS)
        self._background = [loop.create_task(releasing)]
        self._ready = True
        log.info("kelemetry-py %s listening on %s", __version__, self.base_url)

    async def _start_frontend(self, main: web.Application) -> None:
        from kelemetry_py.analysis.http import add_analysis_routes
        from kelemetry_py.frontend.http import add_frontend_routes
        from kelemetry_py.frontend.tracecache import create_trace_cache

        assert self.components is not None
        config = self.config
        reader = await open_reader(config, self.components)
        cache = create_trace_cache(config.frontend, config.redis)
        self.components.closers.append(cache.close)
        if config.http.frontend_port:
            target = self._web_application()
            self._add_operational_routes(target)
        else:
            target = main
        retention_ns = int(config.store.retention_hours * 3600e9) if config.store.enabled else 0
        if retention_ns > 0 and config.frontend.reader == "embedded":
            self.frontend = add_frontend_routes(target, reader, cache, config.frontend, max_range_ns=retention_ns)
        else:
            self.frontend = add_frontend_routes(target, reader, cache, config.frontend)
        add_analysis_routes(target, self.frontend)
        from kelemetry_py.ui.http import add_ui_routes

        add_ui_routes(target)
        from kelemetry_py.plugins import load_transforms

        self.frontend.transforms = load_transforms(config.plugins)
        self.frontend.metrics = self.components.metrics
        if self.components.search is not None:
            from kelemetry_py.search.http import SearchApi

            SearchApi(self.components.search, config.search).add_routes(target)
        if target is not main:
            self.ports["frontend"] = await self._serve(target, config.http.frontend_port)
        if config.frontend.grpc_port:
            from kelemetry_py.frontend.grpc_storage import serve_grpc_storage

            self._grpc = await serve_grpc_storage(
                self.frontend, config.http.host, config.frontend.grpc_port, self.authenticator
            )
            self.ports["grpc"] = self._grpc.port

    async def settle(self) -> None:
        """Wait until everything accepted so far has been delivered by every writer."""
        assert self.components is not None
        await self.components.delivery.drain(float("inf"))

    async def stop(self, grace_seconds: float | None = None) -> bool:
        """Stop accepting, drain for at most ``grace_seconds`` (default ``shutdown_grace_seconds``), close.
        Returns whether everything accepted was delivered; what was not stays in the spool for the next start."""
        deadline = time.monotonic() + (self.config.shutdown_grace_seconds if grace_seconds is None else grace_seconds)
        self._ready = False
        self._stopping = True
        drained = True
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        if self.components is not None:
            if self.components.sources is not None:
                await self.components.sources.stop()  # they submit into the spool: stop them first
            if self.watching is not None:
                await self.watching.stop()
                self.watching = None
        if self._grpc is not None:
            await self._grpc.stop()
            self._grpc = None
        if self.ingest_process is not None:
            await self.ingest_process.stop()  # stops listening; batches in flight are kept and answered first
            self.ingest_process = None
        for runner in reversed(self._runners):
            await runner.cleanup()  # stops listening; requests in flight finish first
        self._runners.clear()
        if self.decoder is not None:
            await self.decoder.close()
            self.decoder = None
        if self.components is not None:
            components = self.components
            drained = await components.delivery.drain(deadline)
            if not drained:
                backlog = {name: records for name, (records, _) in components.delivery.backlog().items() if records}
                log.warning("shutdown: grace period over; kept in the spool for the next start: %s", backlog)
            await components.delivery.stop_feeding()
            await components.pipeline.stop(deadline=deadline)
            await components.delivery.stop()
            for closer in reversed(components.closers):
                await closer()
            self.components = None
        if self.authenticator is not None:
            await self.authenticator.close()
            self.authenticator = None
        self._stopping = False
        return drained

    def _web_application(self, **kwargs: Any) -> web.Application:
        """An aiohttp app with the error guard (500s tell a request id, nothing else) and authentication."""
        from kelemetry_py.auth.middleware import auth_middleware

        assert self.components is not None
        metrics = self.components.metrics
        guard = error_middleware(metrics.http_errors.inc)
        authenticate = auth_middleware(self.authenticator, metrics=metrics, metrics_public=self.config.metrics.public)
        return web.Application(middlewares=[request_ids, guard, authenticate], **kwargs)

    def _readiness(self) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"status": "ready"}
        status = 200
        if self._stopping:
            body["status"], status = "shutting down", 503
        elif not self._ready or self.components is None:
            body["status"], status = "starting", 503
        elif not self.components.delivery.has_room():
            body["status"], status = "spool full", 503
        elif (ingest := self.ingest_process) is not None and not ingest.on_main_listener and not ingest.up:
            body["status"], status = "ingest process down", 503  # on the main listener, this process serves meanwhile
        elif self.watching is not None and not self.watching.healthy:
            body["status"], status = "watchers down", 503
            body["watchers_down"] = list(self.watching.service.down)
        if self.components is not None:
            delivery = self.components.delivery
            body["backlog"] = {name: records for name, (records, _) in delivery.backlog().items()}
            body["failing_writers"] = delivery.failing_writers()
        return status, body

    @property
    def _in_flight_seconds(self) -> float:
        """At shutdown, how long a request in flight may take to finish before it is cut off (it was not answered
        yet): aiohttp's own 60 s would let one stalled upload outlast the grace period the drain needs."""
        return min(_IN_FLIGHT_SECONDS, self.config.shutdown_grace_seconds / 4)

    def _add_operational_routes(self, app: web.Application, *, with_metrics: bool = True) -> None:
        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def readyz(_: web.Request) -> web.Response:
            status, body = self._readiness()
            return web.json_response(body, status=status)

        async def metrics(_: web.Request) -> web.Response:
            assert self.components is not None
            self.components.delivery.update_metrics()
            if self.components.store is not None:
                size = await asyncio.to_thread(files_size_bytes, self.config.store.path)
                self.components.metrics.store_size.set(size)
            return web.Response(
                body=self.components.metrics.exposition(),
                headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
            )

        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        if with_metrics:
            app.router.add_get("/metrics", metrics)

    async def _serve(
        self,
        app: web.Application,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        *,
        hand_over: IngestProcess | None = None,
    ) -> int:
        # The webhook inflates gzip bodies itself, with a bound; aiohttp's own inflation has none. At shutdown a
        # request in flight gets a moment to finish, then is cut off (twice that at most: a wait, then the cancel).
        runner = web.AppRunner(app, access_log=None, auto_decompress=False, shutdown_timeout=self._in_flight_seconds)
        await runner.setup()
        self._runners.append(runner)
        host = self.config.http.host
        if hand_over is not None:  # plain HTTP: ingest.process refuses a TLS main listener
            from kelemetry_py.sources.ingestproc.handoff import HandOverSite

            handing = HandOverSite(runner, host, port, hand_over.hand_over, hand_over.served_here)
            await handing.start()
            return handing.port
        context = ssl_context if ssl_context is not None else self._ssl_context()
        site = web.TCPSite(runner, host, port, ssl_context=context)
        await site.start()
        server = site._server
        assert server is not None and hasattr(server, "sockets")
        return int(server.sockets[0].getsockname()[1])

    def _ssl_context(self) -> ssl.SSLContext | None:
        http = self.config.http
        return server_ssl_context(http.tls_cert_file, http.tls_key_file)

    def _ingest_ssl_context(self) -> ssl.SSLContext | None:
        """TLS of the ingest listener; with ingest.client_ca_file the apiserver must present a certificate."""
        ingest = self.config.ingest
        return server_ssl_context(ingest.tls_cert_file, ingest.tls_key_file, ingest.client_ca_file)


async def build_components(config: Config) -> Components:
    from kelemetry_py.kube.catalog import ClusterCatalogs
    from kelemetry_py.linking.graph import ObjectGraph
    from kelemetry_py.plugins import load_decorators, load_linkers, load_sources
    from kelemetry_py.plugins.sources import SourceRunner

    metrics = Metrics()
    closers: list[Closer] = []
    writers: dict[str, SpanWriter] = {}
    store: SqliteStore | None = None
    if config.store.enabled:
        from kelemetry_py.storage.sqlite import SqliteStore

        Path(config.store.path).parent.mkdir(parents=True, exist_ok=True)
        store = await SqliteStore(
            config.store.path,
            retention_hours=config.store.retention_hours,
            metrics=metrics,
            durable_commits=config.spool.fsync == "always",  # as durable as what the span log acknowledges
            active_trace_seconds=2 * config.pipeline.window_seconds,  # the pipeline's window and the one before
        ).open()
        writers["sqlite"] = store
        closers.append(store.close)
    if config.otlp.endpoint:
        from kelemetry_py.export.otlp import OtlpSpanWriter

        otlp = OtlpSpanWriter(config.otlp, metrics)
        writers["otlp"] = otlp
        closers.insert(0, otlp.close)

    emission: EmissionSet
    if config.redis.url:
        emission = RedisEmissionSet.from_url(config.redis.url, config.redis.key_prefix)
    else:
        emission = MemoryEmissionSet()
    closers.append(emission.close)

    graph = ObjectGraph(max_nodes=config.pipeline.graph_max_nodes)
    # One catalog per cluster: the watchers refresh it from discovery, the linkers resolve owner kinds with it.
    catalogs = ClusterCatalogs()
    linkers = load_linkers(config.plugins, catalog=catalogs, graph=graph)  # plugins may read the graph
    observation_log, span_log = open_spool(config)
    priority = Priority(config.pipeline.background_share)
    # The embedded store alone: its commits acknowledge the observations, with no span log to pass through first.
    direct = DirectWriter("sqlite", store, metrics) if store is not None and writers.keys() == {"sqlite"} else None
    pipeline = Pipeline(
        priority=priority,
        writer=direct or SpanLogWriter(span_log, metrics),
        emission=emission,
        metrics=metrics,
        config=config.pipeline,
        linkers=linkers,
        graph=graph,
        decorators=load_decorators(config.plugins, catalog=catalogs),
    )
    sources = load_sources(config.plugins, catalog=catalogs)
    search = alerts = None
    consumers: dict[str, Any] = {}
    if config.search.enabled:
        from kelemetry_py.search import open_search_index

        search = await open_search_index(config, metrics)
        closers.append(search.close)
        consumers["search"] = search.index
    if config.alerts.rules_file:
        from kelemetry_py.alerts import start_alerts

        alerts = await start_alerts(config, metrics)
        closers.insert(0, alerts.close)
        consumers["alerts"] = alerts.evaluate
    delivery = Delivery(
        observations=observation_log,
        spans=span_log,
        pipeline=pipeline,
        writers=writers,
        metrics=metrics,
        consumers=consumers,
        # Redis Streams: an observation stays pending until every writer has its spans, so that another replica
        # can finish it if this one dies; a local spool survives on this disk anyway.
        ack_after_writers=config.spool.backend == "redis",
        priority=priority,
        direct=direct,
    )
    return Components(
        metrics=metrics,
        writers=writers,
        emission=emission,
        pipeline=pipeline,
        delivery=delivery,
        store=store,
        graph=graph,
        catalogs=catalogs,
        closers=closers,
        sources=SourceRunner(sources, delivery.intake, config, metrics) if sources else None,
        search=search,
        alerts=alerts,
        priority=priority,
    )


def open_spool(config: Config) -> tuple[DurableLog, LocalLog]:
    """The observation log (local, or Redis Streams) and the span log (always local: per-writer cursors)."""
    spool = config.spool

    def local(name: str) -> LocalLog:
        return LocalLog(
            config.spool_dir() / name,
            name=name,
            max_bytes=spool.max_bytes,
            fsync=spool.fsync,
            fsync_interval_seconds=spool.fsync_interval_seconds,
            segment_bytes=spool.segment_bytes,
            cache_bytes=spool.memory_bytes,
        )

    observations: DurableLog
    if spool.backend == "redis":
        from kelemetry_py.spool.redis import RedisLog

        observations = RedisLog.from_config(config, name="observations")
    else:
        observations = local("observations")
    return observations, local("spans")


async def open_reader(config: Config, components: Components) -> TraceReader:
    """The TraceReader the frontend assembles views from: the embedded store, Tempo or Jaeger."""
    if config.frontend.reader == "tempo":
        from kelemetry_py.storage.tempo import TempoReader

        reader: TempoReader | JaegerReader = TempoReader(config.frontend.tempo)
    elif config.frontend.reader == "jaeger":
        from kelemetry_py.storage.jaeger import JaegerReader

        reader = JaegerReader(config.frontend.jaeger, window_seconds=config.pipeline.window_seconds)
    else:
        if components.store is None:
            raise ValueError("frontend.reader embedded needs store.enabled")  # config validation says so first
        return components.store  # closed with the store
    components.closers.append(reader.close)
    return reader
