"""Loading plugins: the one place that decides which plugins a relay runs.

Built-in plugins and third-party ones load the same way, through the entry-point group
``relay``; relay's own ``setup.cfg`` registers the built-ins there.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import Iterable

import pluggy

from relay import hookspecs

ENTRY_POINT_GROUP = "relay"
BUILTIN_PLUGINS = ("sse", "http_publish", "jwt_auth", "redis_backbone", "demo", "webhooks", "redis", "kafka",
                   "presence")

log = logging.getLogger("relay.plugins")


class PluginLoadError(RuntimeError):
    pass


def get_plugin_manager(modules: Iterable[str] = (), disabled: Iterable[str] = ()) -> pluggy.PluginManager:
    """Add the hookspecs, block disabled names, load every ``relay`` entry point and the
    ``modules`` named in the configuration, then validate every implementation."""
    pm = pluggy.PluginManager("relay")
    pm.add_hookspecs(hookspecs)
    for name in disabled:
        pm.set_blocked(name)
    pm.origins = {}  # plugin name -> "distribution version", for `relay plugins` and logs
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
            continue
        origin = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:
            raise PluginLoadError(f"plugin {ep.name!r} ({ep.value}, from {origin}) failed to load: "
                                  f"{type(exc).__name__}: {exc}") from exc
        pm.origins[ep.name] = origin
    for module in modules:
        if pm.is_blocked(module) or pm.get_plugin(module) is not None:
            continue
        try:
            pm.register(importlib.import_module(module), name=module)
        except Exception as exc:
            raise PluginLoadError(f"plugin module {module!r} (from the plugins setting) failed to load: "
                                  f"{type(exc).__name__}: {exc}") from exc
        pm.origins[module] = "plugins setting"
    missing = [name for name in BUILTIN_PLUGINS if pm.get_plugin(name) is None and not pm.is_blocked(name)]
    if missing:
        raise PluginLoadError(f"built-in plugins {', '.join(missing)} are not registered: relay's entry "
                              "points are missing. Install relay (pip install -e .) before running it.")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"plugin {exc.plugin!r} implements a hook relay does not have: {exc}") from exc
    return pm


def describe(pm: pluggy.PluginManager) -> list[dict]:
    """Each plugin with its origin and the hooks it implements."""
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0] or ""):
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        rows.append({"name": name, "origin": getattr(pm, "origins", {}).get(name, "registered directly"),
                     "module": getattr(plugin, "__name__", repr(plugin)), "hooks": hooks})
    return rows
