"""relay's own metrics and log lines, as receivers of :mod:`relay.signals`.

What an operator sees in ``/healthz``, ``/metrics`` and the log is computed here from the same
signals a plugin can connect to, not by calls spread through the code that does the work.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from relay import metrics, signals

if TYPE_CHECKING:  # pragma: no cover
    from relay.runtime import Relay

log = logging.getLogger("relay")
rejections = logging.getLogger("relay.rejected")


def connect(relay: Relay) -> Callable[[], None]:
    """Count and log what ``relay`` signals; returns a function that disconnects the receivers
    (called when the relay stops: every listener is removed)."""
    stats = relay.stats

    def rejected(sender: Any, source: str, reason: str, where: str = "", error: str = "", payload: Any = None) -> None:
        stats.incr("rejected", source=source, reason=reason)
        if where:  # a broker message: nobody else will hear about it (HTTP callers get an answer)
            rejections.warning("rejected message from %s %s: %s; payload %s", source, where, error, payload)

    def connected(sender: Any, clients: int, **_: Any) -> None:
        stats.set("sse_clients", clients)

    def disconnected(sender: Any, clients: int, reason: str, channels: list[str], **_: Any) -> None:
        stats.set("sse_clients", clients)
        if reason == "slow":
            stats.incr("sse_disconnected_slow")
            log.info("disconnected a client whose queue was full (too slow) on %s", ",".join(channels))

    def failed(sender: Any, plugin: str, hook: str, event: Any, error: BaseException) -> None:
        stats.incr("plugin_errors", plugin=plugin, hook=hook)
        log.error("plugin %s failed in %s on event %s", plugin, hook, getattr(event, "id", None),
                  exc_info=(type(error), error, error.__traceback__))

    # event-published is counted by Relay.publish itself: the per-event path stays cheap.
    receivers = [(signals.event_rejected, rejected),
                 (signals.client_connected, connected), (signals.client_disconnected, disconnected),
                 (signals.delivery_failed, failed)]
    for signal, receiver in receivers:
        signal.connect(receiver, sender=relay, weak=False)

    def disconnect() -> None:
        for signal, receiver in receivers:
            signal.disconnect(receiver, sender=relay)

    return disconnect


def _source_state(source: Any, state: str, previous: str, detail: str) -> None:
    level = logging.WARNING if state == "down" else logging.INFO
    source.log.log(level, "source %s is %s%s", source.name, state, f": {detail}" if detail else "")
    metrics.GAUGES["source_up"].labels(source=source.name).set(1 if state == "up" else 0)


# Sources of every relay in the process: the gauge is per process, the log line names the source.
signals.source_state_changed.connect(_source_state, weak=False)
