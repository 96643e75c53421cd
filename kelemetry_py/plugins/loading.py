"""Loading each kind of plugin from its entry-point group, keeping only what fits the protocol."""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any, cast

from kelemetry_py.config import PluginsConfig
from kelemetry_py.linking.registry import load_linkers, load_plugins

if TYPE_CHECKING:
    from kelemetry_py.plugins import Decorator, FrontendTransform, Source

logger = logging.getLogger(__name__)

__all__ = ["load_decorators", "load_linkers", "load_sources", "load_transforms"]


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
