"""Plugin loading through entry points, and running linkers so that one failing plugin harms nobody else.

Entry-point groups: ``kelemetry_py.linkers`` (here), ``kelemetry_py.sources`` and
``kelemetry_py.decorators`` (loaded with the same :func:`load_plugins`). :class:`PluginsConfig` picks which
ones run and how they are built.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from kelemetry_py.config import PluginsConfig
from kelemetry_py.linking import Linker
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Link, ObjectRef

logger = logging.getLogger(__name__)

LINKERS_GROUP = "kelemetry_py.linkers"


def load_plugins(group: str, config: PluginsConfig, **ctor_kwargs: Any) -> list[object]:
    """Instantiate the enabled plugins of an entry-point group, in a stable order.

    ``config.enabled[group]`` (when non-empty) lists the names to load, in that order; otherwise every
    installed plugin of the group loads, sorted by name. Names in ``config.disabled`` never load. Each plugin
    is built with ``config.settings[name]`` as keyword arguments, plus whichever of ``ctor_kwargs`` (shared
    services such as a resource catalog) its constructor accepts. A plugin that cannot be imported or built
    is logged and skipped.
    """
    installed: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=group):
        # The first distribution on sys.path wins, as for imports.
        installed.setdefault(entry_point.name, entry_point)
    wanted = config.enabled.get(group) or sorted(installed)
    disabled = set(config.disabled)
    plugins: list[object] = []
    for name in dict.fromkeys(wanted):
        if name in disabled:
            logger.info("plugin %s (%s) is disabled", name, group)
            continue
        found = installed.get(name)
        if found is None:
            logger.error(
                "plugin %s is enabled for %s but not installed (installed: %s)",
                name,
                group,
                sorted(installed),
            )
            continue
        settings = config.settings.get(name) or {}
        if not isinstance(settings, Mapping):
            logger.error(
                "plugin %s (%s): settings must be a mapping of options, not %r", name, group, settings
            )
            continue
        plugin = _instantiate(found, settings, ctor_kwargs)
        if plugin is not None:
            plugins.append(plugin)
    return plugins


def load_linkers(config: PluginsConfig, **ctor_kwargs: Any) -> list[Linker]:
    """The enabled ``kelemetry_py.linkers`` plugins; anything but a :class:`Linker` is logged and skipped."""
    linkers: list[Linker] = []
    for plugin in load_plugins(LINKERS_GROUP, config, **ctor_kwargs):
        if isinstance(plugin, Linker) and inspect.iscoroutinefunction(plugin.links):
            linkers.append(plugin)
        else:
            logger.error("plugin %r is not a linker (needs a name and an async links(ref, body))", plugin)
    return linkers


def plugin_name(plugin: object) -> str:
    name = getattr(plugin, "name", None)
    return name if isinstance(name, str) and name else type(plugin).__name__


async def run_linkers(
    linkers: Sequence[Linker],
    ref: ObjectRef,
    body: Mapping[str, Any],
    metrics: Metrics | None = None,
    *,
    timeout_seconds: float | None = None,
) -> list[tuple[str, Link]]:
    """Every linker's links as ``(linker name, link)``, in linker order.

    Linkers run concurrently. One that raises, returns something other than links, or outlives
    ``timeout_seconds`` is logged, counted in ``metrics.plugin_errors`` and contributes nothing.
    """
    results = await asyncio.gather(
        *(_run_one(linker, ref, body, metrics, timeout_seconds) for linker in linkers)
    )
    return [
        (plugin_name(linker), link) for linker, links in zip(linkers, results, strict=True) for link in links
    ]


async def _run_one(
    linker: Linker,
    ref: ObjectRef,
    body: Mapping[str, Any],
    metrics: Metrics | None,
    timeout_seconds: float | None,
) -> list[Link]:
    name = plugin_name(linker)
    try:
        async with asyncio.timeout(timeout_seconds):
            links = await linker.links(ref, body)
        bad = [item for item in links if not isinstance(item, Link)]
        if bad:
            raise TypeError(f"returned {len(bad)} item(s) that are not Links, e.g. {bad[0]!r}")
        return list(links)
    except Exception as exc:  # a plugin's bug must not stop the pipeline
        reason = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc!r}"
        logger.warning("linker %s %s on %s", name, reason, ref, exc_info=not isinstance(exc, TimeoutError))
        if metrics is not None:
            metrics.plugin_errors.labels(plugin=name).inc()
        return []


def _instantiate(
    entry_point: EntryPoint, settings: Mapping[str, Any], shared: Mapping[str, Any]
) -> object | None:
    try:
        factory = entry_point.load()
    except Exception:
        logger.exception(
            "plugin %s (%s) failed to import: %s", entry_point.name, entry_point.group, entry_point.value
        )
        return None
    if not callable(factory):
        logger.error(
            "plugin %s (%s) is %r, not a class or factory", entry_point.name, entry_point.group, factory
        )
        return None
    kwargs = {**_accepted(factory, shared), **settings}
    try:
        plugin: object = factory(**kwargs)
    except Exception:
        logger.exception(
            "plugin %s (%s) failed to start with settings %s",
            entry_point.name,
            entry_point.group,
            sorted(settings),
        )
        return None
    if not isinstance(getattr(plugin, "name", None), str):
        # With slots or a read-only property the name stays unset; metrics then use the type's name.
        with contextlib.suppress(AttributeError):
            setattr(plugin, "name", entry_point.name)  # noqa: B010 (mypy: object has no "name")
    return plugin


def _accepted(factory: Callable[..., object], offered: Mapping[str, Any]) -> dict[str, Any]:
    """The ``offered`` keyword arguments that ``factory`` takes (all of them if it takes ``**kwargs``)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(offered)
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {key: value for key, value in offered.items() if key in names}
