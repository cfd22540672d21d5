"""The runtime of one relay app: configuration, plugins, bus, backbone and sources together.

``create_app`` builds one :class:`Relay` and keeps it in ``app.extensions["relay"]``. Plugins
receive it in every hook.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Iterator

import gevent
import gevent.event
import pluggy

from relay import observe, signals
from relay.auth import Decision
from relay.backbone import Backbone, MemoryBackbone, Replay, merge_replays
from relay.bus import Bus
from relay.config import Config, ConfigError
from relay.event import Event, InvalidEvent
from relay.plugins import trace_calls
from relay.sink_queue import SinkQueue
from relay.source import Source
from relay.stats import Stats
from relay.supervisor import Supervisor

log = logging.getLogger("relay")
STOP_WAIT = 15.0  # seconds a second stop() call waits for the first one to finish
SINK_HOOKS = ("relay_deliver", "relay_deliver_durable", "relay_deliver_durable_batch")  # a failure there is signalled: delivery-failed


class HookTimeout(Exception):
    """A plugin's hook ran longer than ``hook_timeout``."""


class Relay:
    def __init__(self, config: Config, plugins: pluggy.PluginManager):
        self.config = config
        self.plugins = plugins
        self.stats = Stats()
        self._unobserve = observe.connect(self)  # counters and log lines, as receivers of relay.signals
        self.extensions: dict[str, Any] = {}  # per-app state of plugins, by plugin name
        core = config.section("")
        self.history_size: int = core["history_size"]
        self.history_bytes: int = core["history_bytes"]  # per channel
        self.history_total_bytes: int = core["history_total_bytes"]  # per worker
        self.bus = Bus(on_error=lambda receiver, exc: self.stats.incr("receiver_errors"))
        self.supervisor = Supervisor(self)
        self.hook_timeout: float = core["hook_timeout"]
        if core["trace_plugins"]:
            trace_calls(plugins)
        self.sinks = SinkQueue(self.run_sinks, run_batch=self.run_sinks_batch)  # relay_deliver runs there, never in the delivering greenlet
        # Sources whose events durable sinks take through relay_deliver_durable (e.g. Kafka in
        # group mode); relay_deliver then skips those sinks for these events.
        self.durable_sources: set[str] = set()
        self.state = "new"  # -> "running" -> "stopped"; a stopped relay never starts again
        self._stopped = gevent.event.Event()  # set when stop() has finished
        # Last: relay_backbone is the first hook to receive this Relay, and finds it fully built.
        self.backbone: Backbone = self._make_backbone(core["backbone"])

    def _make_backbone(self, url: str) -> Backbone:
        if url == "memory":
            return MemoryBackbone(self.history_size, deliver=self.deliver, history_bytes=self.history_bytes,
                                  total_bytes=self.history_total_bytes, deliver_batch=self.deliver_batch)
        backbone = self.plugins.hook.relay_backbone(relay=self, url=url)
        if backbone is None:
            raise ConfigError([f"backbone: no loaded plugin provides a backbone for {url!r}; "
                               "allowed: 'memory' or 'redis://…'"])
        return backbone

    # -- the event path -----------------------------------------------------------------------

    def publish(self, event: Event, broadcast: bool = False) -> Event | None:
        """Run the transforms, then give the event to the backbone, which gives it its id.

        :param broadcast: ``True`` for an event that arrived in this worker only (an HTTP
            publish): the backbone carries it to every worker. ``False`` (sources) for an event
            that every worker receives from its own connection to the broker: it is delivered
            in this worker only.
        :return: the event with its id, or ``None`` when a transform dropped it. With the
            in-memory backbone it has been delivered when this returns; with a shared backbone
            it is stored and on its way.
        :raises InvalidEvent: when the backbone cannot take it (e.g. a publisher-chosen id).
        """
        event = self.transform(event)
        if event is None:
            return None
        published = self.backbone.publish(event, broadcast)
        # Counted here rather than by a receiver: a blinker send costs ~4 µs, and this runs for
        # every event; the signal goes out only when someone listens.
        self.stats.incr("events_in", source=event.source)
        if signals.event_published.receivers:
            signals.event_published.send(self, event=published)
        if broadcast:
            # The publisher answers once the sinks had it (a webhook is stored before the 202);
            # bounded, as a sink that outlives hook_timeout is interrupted anyway.
            self.sinks.wait_for(published, self.hook_timeout * 2 + 1)
        return published

    def publish_batch(self, events: list[Event]) -> list[Event | InvalidEvent | None]:
        """:meth:`publish` (not broadcast) for each of a source's events, delivered together.

        For a source that reads many events at once (a Kafka poll): each SSE stream takes the
        batch in one step and the counters move once, instead of once per event.

        :return: per event, in order: the event with its id, ``None`` when a transform dropped
            it, or the :class:`InvalidEvent` with which the backbone refused it.
        """
        results: list[Event | InvalidEvent | None] = [self.transform(event) for event in events]
        kept = [event for event in results if event is not None]
        if not kept:
            return results
        published = iter(self.backbone.publish_batch(kept))
        results = [None if event is None else next(published) for event in results]
        sources = Counter(event.source for event in results if isinstance(event, Event))
        for source, count in sources.items():
            self.stats.incr("events_in", count, source=source)
        if signals.event_published.receivers:
            for event in results:
                if isinstance(event, Event):
                    signals.event_published.send(self, event=event)
        return results

    def deliver(self, event: Event) -> None:
        """Hand an event the backbone has numbered to this worker's subscribers and sinks.

        Called by the backbone, exactly once per event in each worker that should see it. The
        SSE clients get it here and now; the ``relay_deliver`` sinks get it in their own greenlet
        (:class:`relay.sink_queue.SinkQueue`), so a sink that waits never delays a stream.
        """
        receivers = self.bus.send(event)  # browsers first: a sink plugin cannot delay them
        if receivers:
            self.stats.incr("events_out", receivers, sink="sse")
        if self.plugins.hook.relay_deliver.get_hookimpls():
            self.sinks.put(event)  # the sinks' own greenlet: a waiting sink holds back no stream

    def deliver_batch(self, events: list[Event]) -> None:
        """:meth:`deliver` for each of ``events``, in order: each SSE stream takes them at once."""
        deliveries = self.bus.send_batch(events)
        if deliveries:
            self.stats.incr("events_out", deliveries, sink="sse")
        if self.plugins.hook.relay_deliver.get_hookimpls():
            self.sinks.put_batch(events)

    def run_sinks(self, event: Event) -> None:
        """Call every ``relay_deliver`` implementation for one event (in the sinks' greenlet)."""
        self.run_sinks_batch([event])

    def run_sinks_batch(self, events: list[Event]) -> None:
        """:meth:`run_sinks` for each of ``events``: each sink takes them in order, one call per
        event, and its counter moves once."""
        durable = set(self.durable_sinks()) if self.durable_sources else set()
        for impl in self._impls("relay_deliver"):
            skip_durable = impl.plugin_name in durable
            taken, timeout = 0, self._timeout()
            for event in events:
                if skip_durable and event.source in self.durable_sources:
                    continue  # it takes this source's events through relay_deliver_durable
                ok, _ = self._call(impl, "relay_deliver", {"relay": self, "event": event}, timeout)
                taken += ok
            timeout.close()
            if taken:
                self.stats.incr("events_out", taken, sink=impl.plugin_name)

    def transform(self, event: Event) -> Event | None:
        """Run the ``relay_transform_event`` chain: the event to deliver, or ``None`` if dropped."""
        for impl in self._impls("relay_transform_event"):
            ok, result = self._call(impl, "relay_transform_event", {"relay": self, "event": event})
            if not ok or result is None:
                continue
            if result is False:
                self.stats.incr("dropped", plugin=impl.plugin_name)
                return None
            if isinstance(result, Event):
                event = result
            else:
                log.error("plugin %s: relay_transform_event returned a %s; expected None, False or an Event",
                          impl.plugin_name, type(result).__name__)
                self.stats.incr("plugin_errors", plugin=impl.plugin_name, hook="relay_transform_event")
        return event

    def durable_sinks(self) -> list[str]:
        """Names of the plugins that implement ``relay_deliver_durable``."""
        return [impl.plugin_name for impl in self._impls("relay_deliver_durable")]

    def deliver_durable(self, event: Event, sinks: set[str] | None = None) -> set[str]:
        """Offer ``event`` to the durable sinks (all, or those named in ``sinks``).

        Returns the names of the sinks that took responsibility for it (returned without
        raising). A sink that raised is logged and counted; the caller offers the event again.
        """
        taken = set()
        for impl in self._impls("relay_deliver_durable"):
            if sinks is not None and impl.plugin_name not in sinks:
                continue
            ok, _ = self._call(impl, "relay_deliver_durable", {"relay": self, "event": event})
            if ok:
                taken.add(impl.plugin_name)
                self.stats.incr("events_out", sink=impl.plugin_name)
        return taken

    def deliver_durable_batch(self, events: list[Event], sink: str) -> int:
        """Offer ``events`` to the durable sink ``sink``, at once through its
        ``relay_deliver_durable_batch`` when it has one, else one by one.

        Returns how many of the events, from the first, it took: all of them, or those before
        the one it refused (a batch is taken whole or not at all).
        """
        for impl in self._impls("relay_deliver_durable_batch"):
            if impl.plugin_name == sink:
                ok, _ = self._call(impl, "relay_deliver_durable_batch", {"relay": self, "events": events})
                taken = len(events) if ok else 0
                break
        else:
            taken, timeout = 0, self._timeout()
            for impl in self._impls("relay_deliver_durable"):
                if impl.plugin_name != sink:
                    continue
                for event in events:
                    ok, _ = self._call(impl, "relay_deliver_durable", {"relay": self, "event": event}, timeout)
                    if not ok:
                        break
                    taken += 1
            timeout.close()
        if taken:
            self.stats.incr("events_out", taken, sink=sink)
        return taken

    def replay(self, channels: list[str], last_event_id: str) -> Replay:
        """What a client resuming after ``last_event_id`` missed: from this worker's history, else
        from the ``relay_replay`` plugins and the backbone's storage together."""
        replay = self.backbone.replay(channels, last_event_id, self.history_size)
        if replay is not None:
            return replay
        try:
            replay = self.plugins.hook.relay_replay(relay=self, channels=channels,
                                                    last_event_id=last_event_id, limit=self.history_size)
        except Exception:  # noqa: BLE001 - a broken replay must not break the stream
            log.exception("relay_replay failed for id %r", last_event_id)
            self.stats.incr("plugin_errors", hook="relay_replay")
            replay = None
        # A source's log and the backbone's streams may both hold events after this id (their ids
        # can look alike): take every answer and merge them.
        stored = self.backbone.replay_stored(channels, last_event_id, self.history_size)
        answers = [r for r in (replay, stored) if isinstance(r, Replay)]
        if not answers:
            return Replay([], complete=False, reason="unknown-id")
        return answers[0] if len(answers) == 1 else merge_replays(answers, self.history_size)

    def authorize(self, request: Any, action: str, channels: list[str]) -> Decision:
        """Ask the ``relay_authorize`` plugins; allowed when none has an opinion."""
        decision = self.plugins.hook.relay_authorize(relay=self, request=request, action=action, channels=channels)
        if decision is None:
            return Decision.allow()
        if not isinstance(decision, Decision):
            raise TypeError(f"relay_authorize returned {decision!r}, not a relay.auth.Decision")
        return decision

    # -- calling plugins with fault isolation ---------------------------------------------------

    def call_each(self, hook_name: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        """Call every implementation of a hook, each in its own ``try``.

        Yields ``(plugin name, result)`` in pluggy's call order. A failing implementation is
        logged with its plugin's name and counted, and the others still run.
        """
        kwargs["relay"] = self
        for impl in self._impls(hook_name):
            ok, result = self._call(impl, hook_name, kwargs)
            if ok:
                yield impl.plugin_name, result

    def _impls(self, hook_name: str) -> list[pluggy.HookImpl]:
        # pluggy calls the last registered implementation first; keep its order.
        return list(reversed(getattr(self.plugins.hook, hook_name).get_hookimpls()))

    def _call(self, impl: pluggy.HookImpl, hook_name: str, kwargs: dict[str, Any],
              timeout: gevent.Timeout | None = None) -> tuple[bool, Any]:
        """One implementation, isolated and bounded by ``hook_timeout``. A caller that makes many
        calls in a row may pass one ``timeout`` (:meth:`_timeout`) to be restarted for each."""
        # A hook that waits longer than hook_timeout is interrupted at its next yield to the hub
        # (any I/O under gevent); CPU-bound code cannot be interrupted.
        own = timeout is None
        if own:
            timeout = self._timeout()
        timeout.start()
        try:
            # Through pluggy's hook executor, one implementation at a time: pluggy's tracing and
            # add_hookcall_monitoring (RELAY_TRACE_PLUGINS) see every call.
            results = self.plugins._hookexec(hook_name, [impl], kwargs, False)
            return True, results[0] if results else None
        except Exception as exc:  # noqa: BLE001 - one plugin's bug must not reach the others
            if hook_name in SINK_HOOKS:  # counted and logged by relay.observe, like any receiver may
                signals.delivery_failed.send(self, plugin=impl.plugin_name, hook=hook_name, event=kwargs.get("event"),
                                             error=exc)
            else:
                log.exception("plugin %s failed in %s", impl.plugin_name, hook_name)
                self.stats.incr("plugin_errors", plugin=impl.plugin_name, hook=hook_name)
            return False, None
        finally:
            if own:
                timeout.close()
            else:
                timeout.cancel()  # started again by the next call

    def _timeout(self) -> gevent.Timeout:
        return gevent.Timeout(self.hook_timeout, HookTimeout(f"took longer than {self.hook_timeout}s"))

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sources. Call once per worker, after fork; calling again does nothing."""
        if self.state != "new":
            return
        self.state = "running"
        sources = []
        for plugin, result in self.call_each("relay_sources"):
            for source in result if isinstance(result, (list, tuple)) else [result] if result else []:
                if isinstance(source, Source):
                    sources.append((plugin, source))
                else:
                    log.error("plugin %s: relay_sources returned %r, not a relay.Source; ignored", plugin, source)
                    self.stats.incr("plugin_errors", plugin=plugin, hook="relay_sources")
        sources[:0] = [("core", source) for source in self.backbone.sources()]
        self.supervisor.start(sources)
        log.info("relay started: %d source(s): %s", len(sources),
                 ", ".join(s.name for _, s in sources) or "none besides HTTP")

    def stop(self) -> None:
        """End streams, stop sources. Bounded: returns within a few seconds.

        A second call while the first is under way (gunicorn's ``worker_exit`` after the worker's
        own stop began) waits for it, so the process does not exit in the middle of it.
        """
        if self.state == "stopped":
            self._stopped.wait(STOP_WAIT)
            return
        if self.state != "running":
            return
        self.state = "stopped"
        try:
            for _ in self.call_each("relay_shutdown"):
                pass
            self.supervisor.stop()
            self.sinks.stop(timeout=5.0)
            self._unobserve()
            log.info("relay stopped")
        finally:
            self._stopped.set()

    def health(self) -> dict[str, Any]:
        components: dict[str, Any] = {}
        for plugin, source in self.supervisor.sources:
            components[f"source:{source.name}"] = {"state": source.status, "detail": source.detail,
                                                   "plugin": plugin}
        for plugin, result in self.call_each("relay_health"):
            if isinstance(result, dict):
                components.update(result)
            elif result is not None:
                log.error("plugin %s: relay_health returned a %s, not a dict; ignored", plugin, type(result).__name__)
                self.stats.incr("plugin_errors", plugin=plugin, hook="relay_health")
        down = [name for name, c in components.items() if c.get("state") == "down"]
        return {
            "status": "degraded" if down else "ok",
            "time": time.time(),
            "components": components,
            "bus": {"receivers": self.bus.receiver_count},
            "backbone": self.backbone.stats(),
            "counters": self.stats.snapshot(),
        }
