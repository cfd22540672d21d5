"""Webhook sink: every event on a matching channel POSTed to each endpoint, signed per Standard
Webhooks, stored before it is acknowledged, retried on a schedule, dead-lettered at the end.

Modules, one job each: :mod:`~plugins.webhooks.settings` (configuration keys),
:mod:`~plugins.webhooks.signing` (body and signature), :mod:`~plugins.webhooks.ssrf` and
:mod:`~plugins.webhooks.client` (guarded HTTP), :mod:`~plugins.webhooks.store` (the durable
queue's interface) with :mod:`~plugins.webhooks.store_sqlite` and :mod:`~plugins.webhooks.store_redis`
(its two implementations), :mod:`~plugins.webhooks.delivery` (accepting and retrying),
:mod:`~plugins.webhooks.api` (admin HTTP API; its routes in :mod:`~plugins.webhooks.routes`,
their shared parts in :mod:`~plugins.webhooks.admin`). See docs/webhooks.md.

The sink is idle (no store file, no greenlet) unless endpoints are configured or the admin API
is on (``admin_token``).
"""

from __future__ import annotations

import logging

from plugins.webhooks.delivery import Dispatcher, Sink
from plugins.webhooks.settings import SECTION, SECTIONS
from relay.api import hookimpl

log = logging.getLogger("relay.webhooks")


def _sink(relay) -> Sink | None:
    return relay.extensions.get("webhooks")


@hookimpl
def relay_config_sections():
    return SECTIONS


@hookimpl
def relay_cli_commands(commands):
    from plugins.webhooks.cli import add_command  # only the relay command needs it

    add_command(commands)


@hookimpl
def relay_init_app(app, relay):
    settings = relay.config.section(SECTION)
    if not settings["endpoints"] and not settings["admin_token"]:
        return  # nothing to deliver to and no way to add an endpoint: stay idle
    # The store itself connects lazily, in the worker (never before gunicorn forks).
    sink = relay.extensions["webhooks"] = Sink(relay, settings, relay.config.section("")["data_dir"])
    if settings["admin_token"]:
        from plugins.webhooks.api import create_blueprint

        app.register_blueprint(create_blueprint(sink))


@hookimpl
def relay_sources(relay):
    sink = _sink(relay)
    if sink is None:
        return []
    sink.dispatcher = Dispatcher(sink)
    return [sink.dispatcher]


@hookimpl
def relay_deliver(relay, event):
    """Every event in every worker that sees it (HTTP, Redis, the Redis backbone's broadcast):
    stored before returning; the same event from several workers is stored once (same channel
    and id). The SQLite store works in a thread of its own: only this greenlet waits for it."""
    sink = _sink(relay)
    if sink is not None:
        sink.accept(event)


@hookimpl
def relay_deliver_durable(relay, event):
    """Events of at-least-once sources (Kafka with a consumer group): the source commits its
    position only after this returns, and it returns only once the deliveries are committed to
    the store. A store failure raises, so the source offers the event again."""
    sink = _sink(relay)
    if sink is not None:
        sink.accept(event)


@hookimpl
def relay_deliver_durable_batch(relay, events):
    """Several events of an at-least-once source: their deliveries stored in one transaction."""
    sink = _sink(relay)
    if sink is not None:
        sink.accept_batch(events)


@hookimpl
def relay_health(relay):
    sink = _sink(relay)
    return {"webhooks": sink.health()} if sink is not None else None


@hookimpl
def relay_shutdown(relay):
    # The dispatcher is a source: the supervisor stops it (and it drains) right after this hook.
    # Wake it now so it starts draining while the other plugins shut down.
    sink = _sink(relay)
    if sink is not None and sink.dispatcher is not None:
        sink.dispatcher.stop()
