"""Loading plugins: the one place that decides which plugins a relay runs.

Built-in plugins and third-party ones load the same way, through the entry-point group
``relay``; relay's own ``setup.cfg`` registers the built-ins there.
"""

from __future__ import annotations

import importlib
import logging
import time
from importlib.metadata import entry_points
from typing import Iterable

import pluggy

from relay import hookspecs

ENTRY_POINT_GROUP = "relay"
BUILTIN_PLUGINS = ("sse", "http_publish", "jwt_auth", "redis_backbone", "demo", "webhooks",
                   "redis", "kafka", "presence")

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
    refuse_wrappers_on_isolated_hooks(pm)
    return pm


# Hooks relay calls one implementation at a time, each in its own ``try`` and bounded by
# ``hook_timeout``, so that one plugin's failure or slowness cannot reach the others.
ISOLATED_HOOKS = ("relay_transform_event", "relay_deliver", "relay_deliver_durable", "relay_deliver_durable_batch",
                  "relay_sources", "relay_health", "relay_shutdown", "relay_openapi_paths")


def refuse_wrappers_on_isolated_hooks(pm: pluggy.PluginManager) -> None:
    """A hook wrapper wraps one call of every implementation; relay makes one call per
    implementation on these hooks, so a wrapper would silently never run: refuse it."""
    for name in ISOLATED_HOOKS:
        for impl in getattr(pm.hook, name).get_hookimpls():
            if impl.wrapper or impl.hookwrapper:
                raise PluginLoadError(
                    f"plugin {impl.plugin_name!r} implements {name} as a hook wrapper; relay calls each "
                    f"implementation of {name} on its own (isolated, bounded by hook_timeout), so a wrapper "
                    "would never run. Implement the hook itself (wrappers work on the hooks relay calls "
                    "once for all plugins, such as relay_replay and relay_authorize).")


def describe(pm: pluggy.PluginManager) -> list[dict]:
    """Each plugin with its origin and the hooks it implements."""
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0] or ""):
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        rows.append({"name": name, "origin": getattr(pm, "origins", {}).get(name, "registered directly"),
                     "module": getattr(plugin, "__name__", repr(plugin)), "hooks": hooks})
    return rows


def trace_calls(pm: pluggy.PluginManager, logger: logging.Logger | None = None) -> None:
    """Log every hook call with the plugins it ran and how long it took (``trace_plugins``).

    Uses pluggy's own ``add_hookcall_monitoring``, which sees every call: the hooks relay calls
    once for all plugins and, one implementation at a time, the isolated ones.
    """
    logger = logger or logging.getLogger("relay.trace")
    started: dict[int, float] = {}  # id of the call's kwargs -> start; greenlets may interleave

    def before(hook_name, impls, kwargs):
        started[id(kwargs)] = time.perf_counter()

    def after(outcome, hook_name, impls, kwargs):
        took = (time.perf_counter() - started.pop(id(kwargs), time.perf_counter())) * 1000
        failed = f" raised {type(outcome.exception).__name__}" if outcome.exception is not None else ""
        logger.info("hook %s [%s] %.2f ms%s", hook_name, ", ".join(i.plugin_name for i in reversed(impls)),
                    took, failed)

    pm.add_hookcall_monitoring(before, after)
