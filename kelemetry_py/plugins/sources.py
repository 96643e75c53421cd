"""Running source plugins beside the app: started with it, restarted after a failure, stopped with it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from kelemetry_py.config import Config
from kelemetry_py.metrics import Metrics
from kelemetry_py.pipeline import ObservationSink
from kelemetry_py.plugins import Source, SourceContext

logger = logging.getLogger(__name__)


class SourceRunner:
    """Runs each source in its own task. A source that raises is logged, counted in ``plugin_errors`` and
    restarted after a back-off that doubles up to ``max_restart_delay_seconds``; one that returns is done."""

    def __init__(
        self,
        sources: Sequence[Source],
        sink: ObservationSink,
        config: Config,
        metrics: Metrics,
        *,
        restart_delay_seconds: float = 1.0,
        max_restart_delay_seconds: float = 60.0,
        stop_grace_seconds: float = 10.0,
    ) -> None:
        self.sources = list(sources)
        self._sink = sink
        self._config = config
        self._metrics = metrics
        self._restart_delay = restart_delay_seconds
        self._max_restart_delay = max_restart_delay_seconds
        self._grace = stop_grace_seconds
        self._stopping = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.failures: dict[str, int] = {}

    def context(self) -> SourceContext:
        return SourceContext(config=self._config, metrics=self._metrics, stopping=self._stopping)

    @property
    def running(self) -> list[str]:
        return [name for name, task in self._tasks.items() if not task.done()]

    async def start(self) -> None:
        self._stopping.clear()
        for source in self.sources:
            name = source.name
            if name in self._tasks:
                logger.error("two sources are named %s; the second one is not started", name)
                continue
            self._tasks[name] = asyncio.create_task(self._supervise(source), name=f"source-{name}")

    async def stop(self) -> None:
        """Ask every source to finish, wait up to the grace period, then cancel what is left."""
        self._stopping.set()
        tasks = list(self._tasks.values())
        self._tasks.clear()
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self._grace)
        for task in late:
            logger.warning("source %s did not stop within %gs; cancelled", task.get_name(), self._grace)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _supervise(self, source: Source) -> None:
        delay = self._restart_delay
        context = self.context()
        while not self._stopping.is_set():
            try:
                await source.run(self._sink, context)
            except Exception:
                self.failures[source.name] = self.failures.get(source.name, 0) + 1
                self._metrics.plugin_errors.labels(plugin=source.name).inc()
                logger.exception("source %s failed; restarting in %gs", source.name, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, self._max_restart_delay)
                continue
            logger.info("source %s finished", source.name)
            return
