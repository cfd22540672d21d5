"""The plugin API: everything a plugin may use, from one module.

relay's built-in plugins import from here only (``tests/test_plugin_api.py`` checks it), so any
of them can be copied as the start of a third-party plugin. Anything not named here is internal
and may change. ``from relay.api import hookimpl, Event, Source, Option, Section`` covers most
plugins; docs/writing-plugins.md shows them at work and docs/hooks.md lists every hook.

* Hooks: :data:`hookimpl`.
* Events: :class:`Event`, :class:`InvalidEvent`, :func:`check_name`, :func:`loads_json`,
  :class:`InvalidJSON`, :data:`MAX_DEPTH`, :data:`MAX_CURSOR_LENGTH`.
* Sources: :class:`Source`; broker messages: :func:`decode`, :class:`BadMessage`,
  :func:`reject`, :data:`FORMATS`, :func:`parse_object`; consumer groups: :class:`DurableOffers`.
* Settings: :class:`Option`, :class:`Section`, :class:`ConfigError`, :func:`check_networks`;
  :class:`Config` is ``relay.config``.
* Resume and backbones: :class:`Replay`, :class:`Backbone`, :class:`MemoryBackbone`,
  :class:`BackboneUnavailable`, :func:`check_chosen_id`, :func:`parse_stream_id`; Redis URLs
  start with one of :data:`REDIS_URL_SCHEMES`.
* Authorisation: :class:`Decision`, :func:`matches`.
* SSE framing: :func:`encode_event`, :func:`encode_comment`, :func:`encode_retry`,
  :data:`MISSED_EVENT`; HTTP: :func:`close_connection_after`, :func:`parse_retry_after`.
* Command-line tools (``relay_cli_commands``): :class:`CommandError`,
  :func:`add_client_options`, :func:`call`, :func:`fail`, :func:`print_json`, :func:`print_table`.
* Signals (:mod:`relay.signals`, blinker): :data:`event_published`, :data:`event_rejected`,
  :data:`client_connected`, :data:`client_disconnected`, :data:`source_state_changed`,
  :data:`delivery_failed`.
* :class:`Relay`: what a plugin may read and call on the ``relay`` argument of the hooks;
  :class:`Stats` is ``relay.stats``.
"""

from __future__ import annotations

from typing import Any, Protocol

from relay import hookimpl
from relay.app import close_connection_after
from relay.auth import Decision, matches
from relay.backbone import Backbone, BackboneUnavailable, MemoryBackbone, Replay, check_chosen_id, parse_stream_id
from relay.cli_support import CommandError, add_client_options, call, fail, print_json, print_table
from relay.client import parse_retry_after
from relay.config import REDIS_URL_SCHEMES, Config, ConfigError, Option, Section, check_networks
from relay.durable import DurableOffers
from relay.envelope import FORMATS, BadMessage, decode, parse_object, reject
from relay.event import MAX_CURSOR_LENGTH, MAX_DEPTH, Event, InvalidEvent, InvalidJSON, check_name, loads_json
from relay.signals import (
    client_connected,
    client_disconnected,
    delivery_failed,
    event_published,
    event_rejected,
    source_state_changed,
)
from relay.source import Source
from relay.sse import MISSED_EVENT, encode_comment, encode_event, encode_retry
from relay.stats import Stats

__all__ = [
    "hookimpl", "Relay",
    "Event", "InvalidEvent", "InvalidJSON", "check_name", "loads_json", "MAX_DEPTH", "MAX_CURSOR_LENGTH",
    "Source", "decode", "BadMessage", "reject", "FORMATS", "parse_object", "DurableOffers",
    "Option", "Section", "Config", "ConfigError", "check_networks",
    "Replay", "Backbone", "MemoryBackbone", "BackboneUnavailable", "check_chosen_id", "parse_stream_id",
    "REDIS_URL_SCHEMES",
    "Decision", "matches",
    "encode_event", "encode_comment", "encode_retry", "MISSED_EVENT", "close_connection_after", "parse_retry_after",
    "CommandError", "add_client_options", "call", "fail", "print_json", "print_table",
    "Stats",
    "event_published", "event_rejected", "client_connected", "client_disconnected", "source_state_changed",
    "delivery_failed",
]


class Relay(Protocol):
    """The ``relay`` argument of the hooks: one per worker, built before any hook sees it."""

    config: Config
    """The validated configuration: ``relay.config.section("sinks.jsonl")`` is a plugin's table."""
    stats: Stats
    """This worker's counters: ``stats.incr(name, **labels)``, ``stats.set``, ``stats.observe``
    (``/healthz``; names registered in relay.metrics also on ``/metrics``)."""
    extensions: dict[str, Any]
    """Per-worker state of plugins, by plugin name (Flask's ``app.extensions`` idea)."""
    bus: Any
    """The in-process fan-out to SSE clients (:class:`relay.bus.Bus`): ``subscribe(channel,
    receiver)``, ``unsubscribe(receiver)``, ``send(event)`` to this worker's clients only."""
    history_size: int
    history_bytes: int
    history_total_bytes: int
    hook_timeout: float
    durable_sources: set[str]
    """Names of sources whose events durable sinks take through ``relay_deliver_durable``; a
    source running a consumer group adds its name (then ``relay_deliver`` skips those sinks)."""

    def publish(self, event: Event, broadcast: bool = False) -> Event | None:
        """Transforms, then the backbone: the event gets its id and reaches the subscribers and
        sinks. ``broadcast=True`` for an event that arrived in this worker only (HTTP)."""

    def publish_batch(self, events: list[Event]) -> list[Event | InvalidEvent | None]:
        """``publish`` (not broadcast) for each of a source's events, delivered together; per
        event, in order: the published event, ``None`` (dropped by a transform) or the
        :class:`InvalidEvent` the backbone refused it with. For sources that read many at once."""

    def deliver(self, event: Event) -> None:
        """For backbones: hand an event the backbone numbered to this worker's subscribers and sinks."""

    def deliver_batch(self, events: list[Event]) -> None:
        """For backbones: :meth:`deliver` for each of a source's events, all at once."""

    def transform(self, event: Event) -> Event | None:
        """Run the ``relay_transform_event`` chain; ``None`` when a plugin dropped the event."""

    def deliver_durable(self, event: Event, sinks: set[str] | None = None) -> set[str]:
        """Offer an event to the durable sinks (all, or those named in ``sinks``); the names of
        those that took it (the others raised or timed out)."""

    def deliver_durable_batch(self, events: list[Event], sink: str) -> int:
        """Offer events to one durable sink, in one call when it implements
        ``relay_deliver_durable_batch``; how many, from the first, it took."""

    def durable_sinks(self) -> list[str]:
        """Names of the plugins implementing ``relay_deliver_durable``."""

    def replay(self, channels: list[str], last_event_id: str) -> Replay:
        """What a client resuming after ``last_event_id`` on ``channels`` missed."""

    def authorize(self, request: Any, action: str, channels: list[str]) -> Decision:
        """Ask the ``relay_authorize`` plugins; allowed when none has an opinion."""

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` document."""
