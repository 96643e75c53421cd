"""The plugin loader: each kind of plugin from its entry-point group, keeping only what fits the protocol.

:class:`PluginsConfig` picks which ones run and how they are built.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, cast

from kelemetry_py.config import PluginsConfig
from kelemetry_py.linking import Linker

if TYPE_CHECKING:
    from kelemetry_py.plugins import Decorator, FrontendTransform, Source

logger = logging.getLogger(__name__)

__all__ = ["load_decorators", "load_linkers", "load_plugins", "load_sources", "load_transforms"]


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
    """The enabled ``kelemetry_py.linkers`` plugins; anything but a :class:`Linker` is logged and skipped.
    A linker whose constructor takes ``graph`` gets the object graph to read."""
    from kelemetry_py.plugins import LINKERS_GROUP

    linkers: list[Linker] = []
    for plugin in load_plugins(LINKERS_GROUP, config, **ctor_kwargs):
        if isinstance(plugin, Linker) and inspect.iscoroutinefunction(plugin.links):
            linkers.append(plugin)
        else:
            logger.error("plugin %r is not a linker (needs a name and an async links(ref, body))", plugin)
    return linkers




def load_sources(config: PluginsConfig, **ctor_kwargs: Any) -> list[Source]:
    """The enabled ``kelemetry_py.sources`` plugins, in configured order."""
    from kelemetry_py.plugins import SOURCES_GROUP

    found = _load(SOURCES_GROUP, "run", "a source (needs a name and an async run(sink, context))", config, ctor_kwargs)
    return cast("list[Source]", found)


def load_decorators(config: PluginsConfig, **ctor_kwargs: Any) -> list[Decorator]:
    """The enabled ``kelemetry_py.decorators`` plugins, in configured order (later ones see earlier tags)."""
    from kelemetry_py.plugins import DECORATORS_GROUP

    found = _load(
        DECORATORS_GROUP, "decorate", "a decorator (needs a name and an async decorate(span))", config, ctor_kwargs
    )
    return cast("list[Decorator]", found)


def load_transforms(config: PluginsConfig, **ctor_kwargs: Any) -> list[FrontendTransform]:
    """The enabled ``kelemetry_py.frontend_transforms`` plugins, applied in configured order."""
    from kelemetry_py.plugins import TRANSFORMS_GROUP

    found = _load(
        TRANSFORMS_GROUP,
        "transform",
        "a frontend transform (needs a name and an async transform(spans, view))",
        config,
        ctor_kwargs,
    )
    return cast("list[FrontendTransform]", found)


def _load(group: str, method: str, what: str, config: PluginsConfig, ctor_kwargs: dict[str, Any]) -> list[object]:
    plugins: list[object] = []
    for plugin in load_plugins(group, config, **ctor_kwargs):
        if isinstance(getattr(plugin, "name", None), str) and inspect.iscoroutinefunction(
            getattr(plugin, method, None)
        ):
            plugins.append(plugin)
        else:
            logger.error("plugin %r (%s) is not %s; skipped", plugin, group, what)
    return plugins


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
