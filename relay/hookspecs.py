"""Hook specifications: the whole contract between relay and its plugins.

Read top to bottom, this module walks relay's lifecycle: configuration, start-up, every event,
health and shutdown. Implement a hook with ``@relay.hookimpl`` on a function of the same name;
an implementation may accept any subset of the arguments listed. Three hooks stop at the
first implementation that answers something other than ``None`` (pluggy's ``firstresult``):
``relay_backbone``, ``relay_authorize`` and ``relay_replay``. Every other hook calls every
implementation; collection hooks (``relay_config_sections``, ``relay_sources``) return lists
that relay merges.

All hooks but ``relay_cli_commands`` run in the worker process (after gunicorn forks), inside
gevent greenlets, and they run in *every* worker: with N workers (``RELAY_WORKERS``) each calls
``relay_sources`` and runs each source, and each worker calls ``relay_deliver`` for every event
it sees, so a sink that writes each event somewhere writes it N times. Work that must happen
once per event belongs in ``relay_deliver_durable`` (fed by a durable source: a Kafka or Redis
Streams consumer group), or must deduplicate by ``(event.channel, event.id)`` as the webhook
sink does. Per-event hooks run in the greenlet that published the event
(``relay_transform_event``) or in the worker's one sink greenlet, after the SSE fan-out
(``relay_deliver``, see ``relay/sink_queue.py``): they must not block the hub. Hand slow work to
a greenlet, queue or thread of your own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    from flask import Flask

    from relay.auth import Decision
    from relay.backbone import Backbone, Replay
    from relay.config import Section
    from relay.event import Event
    from relay.runtime import Relay
    from relay.source import Source

hookspec = pluggy.HookspecMarker("relay")


# --------------------------------------------------------------------------------------------
# Configuration: before anything else is built
# --------------------------------------------------------------------------------------------

@hookspec
def relay_config_sections() -> list[Section]:
    """Declare the configuration sections and keys this plugin reads.

    Called once per ``create_app``, before the configuration is validated. Keys nobody declares
    are errors, so a plugin must declare every key it reads, with its type, default and, where
    useful, the ``RELAY_*`` environment variable that overrides it. Sources use paths like
    ``"sources.redis"``, sinks ``"sinks.webhooks"``.

    :return: a list of :class:`relay.config.Section`.
    """


# --------------------------------------------------------------------------------------------
# Start-up: once per worker process
# --------------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def relay_backbone(relay: Relay, url: str) -> Backbone | None:
    """Provide the backbone named by the ``backbone`` setting, when it is not ``"memory"``.

    Called once per ``create_app``, in the process that will serve requests, when the runtime is
    built (before ``relay_init_app``), with every attribute of ``relay`` set but ``backbone``.
    Return ``None`` for URLs that are not yours. The backbone
    gives every event its id and delivers it to every worker that should see it by calling
    ``relay.deliver(event)`` once per event in each; its readers are returned by
    :meth:`relay.backbone.Backbone.sources` and supervised like sources. A backbone that routes
    channels (delivers to a worker only the channels it wants) watches
    ``relay.bus.channel_wanted`` and ``channel_unwanted``; one with a Redis may lend it to plugins
    that share state between workers (``Backbone.key_prefix``, ``Backbone.shared_redis``: the
    presence plugin sums its counts there). Do not connect here. Stops at first non-None result.

    :param url: the ``backbone`` setting, e.g. ``"redis://127.0.0.1:6379/0"``.
    :return: a :class:`relay.backbone.Backbone`, or ``None``.
    """


@hookspec
def relay_init_app(app: Flask, relay: Relay) -> None:
    """Add HTTP routes (a Flask blueprint) and per-app state.

    Called once by ``create_app`` after the configuration is validated. Keep state in
    ``relay.extensions["<your plugin>"]``, never in module globals: tests build several apps in
    one process. Do not open broker connections here; sources connect in :meth:`Source.run`.

    :param app: the Flask application being built.
    :param relay: the runtime: ``relay.config``, ``relay.bus``, ``relay.publish``, ``relay.stats``.
    """


@hookspec
def relay_openapi_paths(relay: Relay) -> dict[str, dict[str, Any]] | None:
    """Describe the HTTP routes this plugin adds, for the OpenAPI document at ``/openapi.json``.

    Called once per app, on the first request for the document (after every ``relay_init_app``).
    Keys are Flask rules as registered (``"/my-plugin/<name>"``), values OpenAPI 3.1 path items
    (``{"get": {"responses": {...}}}``); an operation is listed only if the app serves that rule
    and method. Answers may use ``{"$ref": "#/components/schemas/Error"}`` for relay's JSON error
    body. A schemathesis run against a relay (as in ``tests/test_openapi.py``) keeps it true.

    :return: ``{rule: path item}``, or ``None`` when the plugin adds no routes.
    """


@hookspec
def relay_sources(relay: Relay) -> list[Source]:
    """Return the sources to run with the current configuration.

    Called once when each worker starts (after fork): with several workers, every worker runs
    its own instance of each source, so each reads the broker (or file) on its own and publishes
    with ``relay.publish(event)`` to its own clients. Return an empty list when your section is
    not configured. relay runs each :class:`relay.source.Source` in its own greenlet, restarts it
    with capped exponential backoff when ``run`` raises, reports its status in ``/healthz`` and
    stops it on shutdown.

    :param relay: the runtime; sources publish with ``relay.publish(event)``.
    :return: a list of :class:`relay.source.Source` instances.
    """


# --------------------------------------------------------------------------------------------
# Every request: who may publish and subscribe
# --------------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def relay_authorize(relay: Relay, request: Any, action: str, channels: list[str]) -> Decision | None:
    """Decide whether a request may publish to, or subscribe to, some channels.

    Called for every ``POST /events/<channel>`` (``action="publish"``) and every stream
    (``action="subscribe"``, with all its channels), in the request's greenlet, before anything
    is published or subscribed. Stops at first non-None result; when no plugin answers, the
    request is allowed (the embedded default is open). The built-in ``jwt_auth`` plugin answers
    whenever ``[auth]`` has a key.

    :param request: the Flask request: headers, cookies, query arguments, remote address.
    :param action: ``"publish"`` or ``"subscribe"``.
    :param channels: the channel names asked for.
    :return: a :class:`relay.auth.Decision` (``Decision.allow(subject)`` or
        ``Decision.deny(401 | 403, message)``), or ``None`` for no opinion.
    """


# --------------------------------------------------------------------------------------------
# Every event: in the publishing greenlet or the sink greenlet, must not block the hub
# --------------------------------------------------------------------------------------------

@hookspec
def relay_transform_event(relay: Relay, event: Event) -> Event | bool | None:
    """Filter or rewrite an event before it gets its id and reaches any sink.

    Called for every published event, before it enters the backbone. Implementations are chained:
    each one sees the result of the previous one.

    :param event: the event so far.
    :return: ``None`` to keep it as it is, a new :class:`relay.event.Event` to replace it, or
        ``False`` to drop it (it is counted as ``dropped``; the publisher still gets an answer).
        An implementation that raises is logged with its plugin's name and skipped.
    """


@hookspec
def relay_deliver(relay: Relay, event: Event) -> None:
    """Receive every event that entered the backbone: the hook for sinks.

    Called once per event in each worker that sees it, in delivery order, after the event has
    its id and has been handed to the SSE clients, in one greenlet per worker that runs the
    sinks (``relay/sink_queue.py``; a sink that waits on a disk or a lock never holds back a
    stream or a source). Which workers see an event: every worker runs its own copy of every
    source, so each sees the sources' events; events published to the backbone (HTTP) reach a
    worker of the Redis backbone only when that worker *wants* their channel: an SSE client of it
    watches the channel, or a plugin asked for it with ``relay.bus.want(channel)`` (and
    ``relay.bus.unwant(channel)`` when done). A sink that needs every event of the deployment,
    once, implements ``relay_deliver_durable``; a sink that appends each event it sees to a file
    writes it once per worker that wanted it, so deduplicate by ``(event.channel, event.id)``. An HTTP publish
    (``relay.publish(event, broadcast=True)``) answers after every implementation has returned
    for its event when the backbone delivers in the publishing worker (the in-memory backbone),
    so a sink that stores the event before returning has taken responsibility for it when the
    publisher hears back; a source's ``relay.publish`` does not wait. One implementation that
    raises, or runs longer than ``hook_timeout`` (interrupted at its next I/O), is logged with
    its plugin's name and counted; the others still receive the event. Keep it short: put slow
    work (network calls) on a queue of your own and deliver from another greenlet. (The SSE sink
    does not use this hook: each browser subscribes to its channels on ``relay.bus`` directly.)

    :param event: the event, with ``id`` and ``channel`` set.
    """


@hookspec
def relay_deliver_durable(relay: Relay, event: Event) -> None:
    """Take responsibility for an event from a source that delivers at least once.

    Implement this in sinks that must not lose events (webhooks). A durable source (Kafka with a
    ``group_id``, Redis Streams with a ``group``, the Redis backbone's partition logs for
    events published to relay) reads each broker message once per cluster,
    through a consumer group, and calls this hook for it in its own greenlet, after the transforms
    and with the same ``id`` the SSE clients see. It commits its broker position past the event only
    once every implementation has returned for it and for every event before it. So: return only
    after the event is stored where a crash cannot lose it, and raise to refuse it; an
    implementation that raises or runs longer than ``hook_timeout`` is logged and counted, and the
    source offers it the same event again after a backoff (the sinks that took it are not asked
    again by that worker). After a crash or rebalance, events after the last commit come again:
    deduplicate by ``(event.channel, event.id)`` when that matters (ids are scoped to their
    channel).

    For the sources listed in ``relay.durable_sources``, relay does not call
    :func:`relay_deliver` of a plugin that implements this hook: it gets those events here, once,
    instead of once per worker. Events from other sources (HTTP with the in-memory backbone, or with the
    Redis backbone's ``durable_log = false``, the Redis sources without a group) still come
    through ``relay_deliver``. May block on storage I/O, but never on the hub.

    :param event: the event, with ``id`` and ``channel`` set.
    """


@hookspec
def relay_deliver_durable_batch(relay: Relay, events: list[Event]) -> None:
    """Optional, beside :func:`relay_deliver_durable`: take responsibility for several events at once.

    A durable source that reads many messages at once (the Kafka consumer group: the records of
    one partition in one poll) offers them here, in order, to each plugin that implements both
    hooks; a plugin implementing only ``relay_deliver_durable`` gets them one by one. The
    contract is the same as for one event, for all of them: return only once every event is
    stored where a crash cannot lose it (one transaction for the batch is the point), and raise
    to refuse the batch; the source offers the refused events again after a backoff. Bounded by
    ``hook_timeout`` for the whole batch (at most a few hundred events).

    :param events: events with ``id`` and ``channel`` set, in the order the source read them.
    """


@hookspec(firstresult=True)
def relay_replay(relay: Relay, channels: list[str], last_event_id: str, limit: int) -> Replay | None:
    """Replay events after ``last_event_id`` that the in-memory history cannot.

    Called when a client resumes with an id the backbone's history does not know (older than
    the history, or from before a restart). A source that can read its broker's log (Redis
    Streams, Kafka) recognises its own ids and answers. Stops at first non-None result.

    A source whose events' SSE ids must say more than which event it is (Kafka: a position on
    every partition) sets ``Event.cursor``; the client sends the cursor back, and a
    ``Replay.follow`` function can then adjust the live events that follow the replay.

    :param channels: the channels the client subscribes to.
    :param last_event_id: the client's ``Last-Event-ID``, untrusted, at most 1024 characters.
    :param limit: the most events to return.
    :return: a :class:`relay.backbone.Replay`, or ``None`` when the id is not yours.
    """


# --------------------------------------------------------------------------------------------
# Health and shutdown
# --------------------------------------------------------------------------------------------

@hookspec
def relay_health(relay: Relay) -> dict[str, dict[str, Any]] | None:
    """Report the state of components this plugin owns, for ``/healthz``.

    Sources need not implement this: relay reports every source's status itself (``"starting"``,
    ``"up"``, ``"down"``, or ``"stopped"`` during shutdown). States: ``"up"``; ``"degraded"``
    (serving, but part of it is off, e.g. a disabled webhook endpoint); ``"starting"`` and
    ``"down"``. Any component ``"down"`` makes ``/healthz`` say ``"status": "degraded"``;
    ``/readyz`` answers 503 while any component is ``"down"`` or ``"starting"``.

    :return: ``{"<component>": {"state": "up" | "degraded" | "starting" | "down", ...details}}``
        or ``None``.
    """


@hookspec
def relay_shutdown(relay: Relay) -> None:
    """Release what this plugin holds: the worker is stopping.

    Called once, before sources are stopped. End streams, flush queues, close connections.
    Keep it short; relay waits a bounded time.
    """


# --------------------------------------------------------------------------------------------
# Command line: in the `relay` command's process, not in a worker
# --------------------------------------------------------------------------------------------

@hookspec
def relay_cli_commands(commands: Any) -> None:
    """Add sub-commands to the ``relay`` command (the webhook sink adds ``relay webhooks``).

    Called once per ``relay`` run with the plugins the configuration loads (``plugins``,
    ``disable_plugins``), outside any worker: no app, no ``Relay``, no gevent. ``commands`` is the
    argparse sub-parsers object: call ``commands.add_parser(name, help=…)``, give every
    option a help text, and ``set_defaults(func=…)`` to a function that takes the parsed
    arguments and returns the exit status. ``relay.cli_support.add_client_options`` adds the
    shared ``--url``/``--token``/``--json``/``--timeout`` options so they work before or after
    the sub-command.
    """
