"""Wires the stages together from a Config: the all-in-one process behind ``kelemetry-py serve``."""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from kelemetry_py import __version__
from kelemetry_py.config import Config, records_wanted
from kelemetry_py.export import SpanWriter
from kelemetry_py.metrics import Metrics
from kelemetry_py.pipeline.core import Pipeline
from kelemetry_py.pipeline.emission import EmissionSet
from kelemetry_py.pipeline.emission.memory import MemoryEmissionSet
from kelemetry_py.pipeline.emission.redis import RedisEmissionSet
from kelemetry_py.sources.audit import AuditConverter
from kelemetry_py.sources.webhook import AuditWebhook

log = logging.getLogger(__name__)


@dataclass
class Components:
    """What a running App is made of, for the frontend, the watchers and tests."""

    metrics: Metrics
    writer: SpanWriter
    emission: EmissionSet
    pipeline: Pipeline
    store: Any = None  # the embedded SqliteStore when enabled (a SpanWriter and a TraceReader)
    graph: Any = None
    catalogs: Any = None
    closers: list[Any] = field(default_factory=list)
    sources: Any = None  # the SourceRunner of the enabled source plugins, started and stopped by App
    search: Any = None  # the SearchIndex, when search.enabled
    alerts: Any = None  # the AlertEvaluator, when alerts.rules_file is set


class App:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.components: Components | None = None
        self._runners: list[web.AppRunner] = []
        self.ports: dict[str, int] = {}
        self.frontend: Any = None  # the FrontendService, when the frontend is enabled
        self._grpc: Any = None
        self.watching: Any = None  # KubeWatching, when kube.clusters are configured
        self._ready = False

    @property
    def base_url(self) -> str:
        scheme = "https" if self.config.http.tls_cert_file else "http"
        return f"{scheme}://127.0.0.1:{self.ports['http']}"

    async def start(self) -> None:
        tune_garbage_collector()
        self.components = await build_components(self.config)
        await self.components.pipeline.start()
        if self.components.sources is not None:
            await self.components.sources.start()
        if self.config.kube.clusters:
            from kelemetry_py.sources.kubewatch import KubeWatching

            self.watching = KubeWatching(
                self.config, self.components.pipeline, self.components.metrics, self.components.catalogs
            )
            await self.watching.start()
        main = web.Application(client_max_size=self.config.audit.max_body_bytes)
        self._add_operational_routes(main)
        AuditWebhook(
            sink=self.components.pipeline,
            converter=AuditConverter(self.config.audit, self.config.redaction, records=records_wanted(self.config)),
            metrics=self.components.metrics,
            default_cluster=self.config.cluster,
            audit=self.config.audit,
            http=self.config.http,
        ).add_routes(main)
        if self.config.frontend.enabled:
            await self._start_frontend(main)
        self.ports["http"] = await self._serve(main, self.config.http.port)
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
            target = web.Application()
            self._add_operational_routes(target)
        else:
            target = main
        self.frontend = add_frontend_routes(target, reader, cache, config.frontend)
        add_analysis_routes(target, self.frontend)
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

            self._grpc = await serve_grpc_storage(self.frontend, config.http.host, config.frontend.grpc_port)
            self.ports["grpc"] = self._grpc.port

    async def stop(self) -> None:
        self._ready = False
        if self._grpc is not None:
            await self._grpc.stop()
            self._grpc = None
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.components is not None:
            if self.components.sources is not None:
                await self.components.sources.stop()  # before the pipeline stops accepting their batches
            if self.watching is not None:
                await self.watching.stop()
                self.watching = None
            await self.components.pipeline.stop()
            for closer in reversed(self.components.closers):
                await closer()
            self.components = None

    async def run_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    def _add_operational_routes(self, app: web.Application) -> None:
        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def readyz(_: web.Request) -> web.Response:
            if not self._ready:
                return web.Response(status=503, text="not ready")
            return web.Response(text="ready")

        async def metrics(_: web.Request) -> web.Response:
            assert self.components is not None
            return web.Response(
                body=self.components.metrics.exposition(),
                headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
            )

        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)

    async def _serve(self, app: web.Application, port: int) -> int:
        # The webhook inflates gzip bodies itself, with a bound; aiohttp's own inflation has none.
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.config.http.host, port, ssl_context=self._ssl_context())
        await site.start()
        server = site._server
        assert server is not None and hasattr(server, "sockets")
        return int(server.sockets[0].getsockname()[1])

    def _ssl_context(self) -> ssl.SSLContext | None:
        http = self.config.http
        if not http.tls_cert_file:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(http.tls_cert_file, http.tls_key_file)
        if http.client_ca_file:
            context.load_verify_locations(http.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


async def build_components(config: Config) -> Components:
    from kelemetry_py.kube.catalog import ClusterCatalogs
    from kelemetry_py.linking.graph import ObjectGraph
    from kelemetry_py.linking.registry import load_linkers
    from kelemetry_py.plugins import load_decorators, load_sources
    from kelemetry_py.plugins.sources import SourceRunner

    metrics = Metrics()
    closers: list[Any] = []
    writers: list[SpanWriter] = []
    store = None
    if config.store.enabled:
        from kelemetry_py.storage.sqlite import SqliteStore

        Path(config.store.path).parent.mkdir(parents=True, exist_ok=True)
        store = await SqliteStore(
            config.store.path, retention_hours=config.store.retention_hours, metrics=metrics
        ).open()
        writers.append(store)
        closers.append(store.close)
    if config.otlp.endpoint:
        from kelemetry_py.export.otlp import OtlpSpanWriter

        otlp = OtlpSpanWriter(config.otlp, metrics)
        writers.append(otlp)
        closers.insert(0, otlp.close)  # flush exports before the store closes
    writer: SpanWriter
    if len(writers) == 1:
        writer = writers[0]
    else:
        from kelemetry_py.export.fanout import FanoutWriter

        writer = FanoutWriter(writers)

    emission: EmissionSet
    if config.redis.url:
        emission = RedisEmissionSet.from_url(config.redis.url, config.redis.key_prefix)
    else:
        emission = MemoryEmissionSet()
    closers.append(emission.close)

    graph = ObjectGraph()
    # One catalog per cluster: the watchers refresh it from discovery, the linkers resolve owner kinds with it.
    catalogs = ClusterCatalogs()
    linkers = load_linkers(config.plugins, catalog=catalogs)
    pipeline = Pipeline(
        writer=writer,
        emission=emission,
        metrics=metrics,
        config=config.pipeline,
        linkers=linkers,
        graph=graph,
        decorators=load_decorators(config.plugins, catalog=catalogs),
    )
    sources = load_sources(config.plugins, catalog=catalogs)
    search = alerts = None
    # The lead moves these consumers onto the durable spool's log; for now the pipeline feeds them.
    if config.search.enabled:
        from kelemetry_py.search import open_search_index

        search = await open_search_index(config, metrics)
        closers.append(search.close)
        pipeline.add_consumer(search.index)
    if config.alerts.rules_file:
        from kelemetry_py.alerts import start_alerts

        alerts = await start_alerts(config, metrics)
        closers.insert(0, alerts.close)
        pipeline.add_consumer(alerts.evaluate)
    return Components(
        metrics=metrics,
        writer=writer,
        emission=emission,
        pipeline=pipeline,
        store=store,
        graph=graph,
        catalogs=catalogs,
        closers=closers,
        sources=SourceRunner(sources, pipeline, config, metrics) if sources else None,
        search=search,
        alerts=alerts,
    )


async def open_reader(config: Config, components: Components) -> Any:
    """The TraceReader the frontend assembles views from: the embedded store, Tempo or Jaeger."""
    if config.frontend.reader == "tempo":
        from kelemetry_py.storage.tempo import TempoReader

        reader: Any = TempoReader(config.frontend.tempo)
    elif config.frontend.reader == "jaeger":
        from kelemetry_py.storage.jaeger import JaegerReader

        reader = JaegerReader(config.frontend.jaeger, window_seconds=config.pipeline.window_seconds)
    else:
        return components.store  # closed with the store
    components.closers.append(reader.close)
    return reader


def tune_garbage_collector() -> None:
    """Audit batches allocate tens of thousands of short-lived dicts per second; with CPython's default
    threshold (700) the collector runs thousands of times a second and full collections stall the webhook
    (bench/webhook_replay.py: p99 85 ms → 31 ms, +35% throughput). Objects alive at start-up are frozen out of it."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
