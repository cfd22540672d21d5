"""Runs each source in its own greenlet and restarts it, with capped backoff, when it fails."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import gevent
import gevent.event

from relay.source import Source

if TYPE_CHECKING:  # pragma: no cover
    from relay.runtime import Relay

log = logging.getLogger("relay.supervisor")

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
HEALTHY_AFTER = 30.0  # a run that lasted this long resets the backoff


class Supervisor:
    def __init__(self, relay: Relay):
        self.relay = relay
        self.sources: list[tuple[str, Source]] = []  # (plugin name, source)
        self._greenlets: list[gevent.Greenlet] = []
        self._stopping = gevent.event.Event()

    def start(self, sources: list[tuple[str, Source]]) -> None:
        self.sources = sources
        for plugin, source in sources:
            self._greenlets.append(gevent.spawn(self._run, plugin, source))

    def _run(self, plugin: str, source: Source) -> None:
        delay = FIRST_DELAY
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                source.run(self.relay)
                if self._stopping.is_set():
                    break
                log.warning("source %s (plugin %s) returned without being stopped; restarting",
                            source.name, plugin)
            except gevent.GreenletExit:
                break
            except Exception as exc:  # noqa: BLE001 - a source must never take the worker down
                log.exception("source %s (plugin %s) failed; restarting in %.1fs", source.name, plugin, delay)
                self.relay.stats.incr("source_failures", source=source.name)
                source.set_status("down", f"{type(exc).__name__}: {exc}")
            if time.monotonic() - started > HEALTHY_AFTER:
                delay = FIRST_DELAY
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, MAX_DELAY)
        source.set_status("stopped")

    def stop(self, timeout: float = 5.0) -> None:
        """Ask every source to stop, then kill those still running after ``timeout`` seconds."""
        self._stopping.set()
        for plugin, source in self.sources:
            try:
                source.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                log.exception("source %s (plugin %s) failed to stop", source.name, plugin)
        gevent.joinall(self._greenlets, timeout=timeout)
        gevent.killall([g for g in self._greenlets if not g.dead], timeout=1)
        self._greenlets.clear()
