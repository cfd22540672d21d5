"""Server-Sent Events sink: ``GET /events/<channel>`` and ``GET /events?channel=a&channel=b``.

Each connection is one :class:`Client`: a bounded queue subscribed on ``relay.bus`` to its
channels, drained by the streaming generator. The bus only ever does a non-blocking put, so a
slow browser cannot hold up the others; when its queue overflows the client is disconnected and
resumes with ``Last-Event-ID`` when it reconnects.

On connect the stream sends ``retry:``, then, for a client that gives ``Last-Event-ID`` (header,
or ``lastEventId`` query parameter for polyfills), the events it missed. When those cannot all
be replayed, a ``relay-missed`` event comes first. Idle streams get a comment every
``heartbeat`` seconds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

import gevent
from flask import Blueprint, Response, jsonify, request
from gevent.hub import Waiter, get_hub

from relay import hookimpl
from relay.backbone import Replay
from relay.config import Option, Section
from relay.event import InvalidEvent, check_name
from relay.metrics import DELIVERY_LATENCY
from relay.sse import encode_comment, encode_event, encode_retry

SECTION = "sinks.sse"
MISSED_EVENT = "relay-missed"
MAX_LAST_EVENT_ID = 256
HEARTBEAT = encode_comment("heartbeat")

log = logging.getLogger("relay.sse")


@hookimpl
def relay_config_sections():
    return [Section(SECTION, (
        Option("heartbeat", float, 15.0, "seconds between heartbeat comments on an idle stream",
               env="RELAY_SSE_HEARTBEAT", min=0.05),
        Option("retry", int, 3000, "milliseconds a browser waits before reconnecting (the retry: field)",
               env="RELAY_SSE_RETRY", min=0),
        Option("queue_size", int, 500, "events a client may fall behind before it is disconnected",
               env="RELAY_SSE_QUEUE_SIZE", min=1),
        Option("max_channels", int, 32, "channels one connection may subscribe to", min=1),
        Option("max_connections", int, 10000, "open streams per worker; beyond it 503 with Retry-After",
               env="RELAY_SSE_MAX_CONNECTIONS", min=1),
        Option("refused_retry_after", int, 5, "seconds in the Retry-After of a refused stream", min=1),
    ), "The Server-Sent Events sink.")]


class Client:
    """One open stream: the events waiting to be written, and the socket they are written to.

    The bus appends to ``pending`` (a plain list, bounded by ``limit``) and wakes the stream at
    most once per batch; the stream takes the whole list and writes it in one write. Waking goes
    through the hub (``loop.run_callback``), as gevent requires, with one reusable heartbeat timer
    per client instead of a ``Timeout`` object per wait.
    """

    __slots__ = ("pending", "limit", "channels", "sock", "closed", "_watcher", "next_sample", "_waiter",
                 "_timer", "_hub", "__weakref__")

    def __init__(self, channels: list[str], queue_size: int, sock: socket.socket | None):
        self.pending: list = []  # events not written yet, oldest first
        self.limit = queue_size
        self.channels = channels
        self.sock = sock
        self.closed: str | None = None  # why: "slow", "left", "shutdown"
        self._watcher = None
        self._waiter: Waiter | None = None  # set while the stream waits for events
        self._timer = None
        self._hub = get_hub()
        self.next_sample = 0.0  # when this client next reports a delivery latency

    def offer(self, channel: str, event) -> None:
        """Bus receiver: never blocks. A full queue means the client cannot keep up."""
        pending = self.pending
        if len(pending) >= self.limit:
            self.close("slow")
            return
        pending.append(event)
        if self._waiter is not None:
            self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._hub.loop.run_callback(waiter.switch, True)

    def wait(self, timeout: float) -> bool:
        """Wait for an event or a close; ``False`` when ``timeout`` seconds passed without one."""
        if self.pending or self.closed:
            return True
        waiter = self._waiter = Waiter(self._hub)
        timer = self._timer
        if timer is None:
            # A repeating timer armed with ``again``: every wait gets the full ``timeout``. (``start``
            # would resume from what the last wait left, shorter each time, until it fired at once.)
            timer = self._timer = self._hub.loop.timer(timeout, timeout)
        timer.again(waiter.switch, False)
        try:
            return waiter.get()
        finally:
            timer.stop()
            self._waiter = None

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = reason
        self._wake()  # a waiting stream sees ``closed`` at once
        if reason == "slow" and self.sock is not None:
            # The stream may be blocked writing to a client that does not read: unblock it.
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone

    def watch_for_hangup(self) -> None:
        """Notice a client that closed its connection at once, not at the next write."""
        if self.sock is None:
            return
        try:
            self._watcher = gevent.get_hub().loop.io(self.sock.fileno(), 1)
            self._watcher.start(self._on_readable)
        except (OSError, ValueError):
            self._watcher = None

    def _on_readable(self) -> None:
        raw = getattr(self.sock, "_sock", self.sock)  # the OS socket, not tied to the hub
        try:
            data = raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:  # the client sent more bytes; only end-of-stream interests us
            self._watcher.stop()
            return
        self.close("left")

    def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None
        if self._timer is not None:
            self._timer.close()
            self._timer = None


class Hub:
    """The SSE clients of one app."""

    def __init__(self, relay, settings: dict):
        self.relay = relay
        self.settings = settings
        self.clients: set[Client] = set()
        self.retry_frame = encode_retry(settings["retry"])

    def stream(self, client: Client, last_event_id: str | None):
        relay, bus = self.relay, self.relay.bus
        self.clients.add(client)
        relay.stats.set("sse_clients", len(self.clients))
        try:
            # Subscribe before reading the history, so nothing falls between the two.
            for channel in client.channels:
                bus.subscribe(channel, client.offer)
            client.watch_for_hangup()
            yield self.retry_frame
            replayed: set[str] = set()
            if last_event_id is not None:
                if len(last_event_id) > MAX_LAST_EVENT_ID:  # untrusted input: never look it up
                    replay = Replay([], complete=False, reason="unknown-id")
                    last_event_id = last_event_id[:MAX_LAST_EVENT_ID]
                else:
                    replay = relay.replay(client.channels, last_event_id)
                head = []
                if not replay.complete:
                    relay.stats.incr("sse_missed", reason=replay.reason)
                    head.append(encode_event(json.dumps(
                        {"last_event_id": last_event_id, "reason": replay.reason, "channels": client.channels},
                        separators=(",", ":")), MISSED_EVENT))
                head.extend(event.frame for event in replay.events)
                replayed = {event.id for event in replay.events}
                if head:
                    yield b"".join(head)
            yield from self._live(client, replayed)
        finally:
            bus.unsubscribe(client.offer)
            client.stop_watching()
            self.clients.discard(client)
            relay.stats.set("sse_clients", len(self.clients))
            if client.closed == "slow":
                relay.stats.incr("sse_disconnected_slow")
                log.info("disconnected a client that fell %d events behind on %s",
                         self.settings["queue_size"], ",".join(client.channels))

    def _live(self, client: Client, replayed: set[str]):
        heartbeat = self.settings["heartbeat"]
        while True:
            if not client.wait(heartbeat):
                yield HEARTBEAT
                continue
            if client.closed:
                if client.closed == "shutdown":
                    yield self.retry_frame
                return
            events, client.pending = client.pending, []  # everything queued goes out in one write
            if not events:
                continue
            if replayed:
                while events and events[0].id in replayed:  # already sent as part of the replay
                    del events[0]
                if events:
                    replayed = set()  # live events are in order: no more overlap
                else:
                    continue
            if len(events) == 1:
                yield events[0].frame
            else:
                yield b"".join([event.frame for event in events])
            self._sample_latency(client, events[0])

    @staticmethod
    def _sample_latency(client: Client, event) -> None:
        # One observation per client per second keeps the histogram off the hot path.
        now = time.time()
        if now >= client.next_sample:
            client.next_sample = now + 1.0
            DELIVERY_LATENCY.observe(max(0.0, now - event.timestamp))

    def close_all(self, reason: str) -> None:
        for client in list(self.clients):
            client.close(reason)


def _error(status: int, message: str):
    return jsonify({"error": "invalid_request", "message": message}), status


@hookimpl
def relay_init_app(app, relay):
    hub = relay.extensions["sse"] = Hub(relay, relay.config.section(SECTION))
    blueprint = Blueprint("sse", __name__)

    def open_stream(channels: list[str]):
        if not channels:
            return _error(400, "name at least one channel: /events/<channel> or /events?channel=a&channel=b")
        if len(channels) > hub.settings["max_channels"]:
            return _error(400, f"{len(channels)} channels requested; the limit is {hub.settings['max_channels']}")
        try:
            for channel in channels:
                check_name("channel", channel)
        except InvalidEvent as exc:
            return _error(400, str(exc))
        decision = relay.authorize(request, "subscribe", channels)
        if not decision.allowed:  # 401/403 also tell EventSource to stop reconnecting
            return jsonify({"error": "unauthorized" if decision.status == 401 else "forbidden",
                            "message": decision.message}), decision.status
        if len(hub.clients) >= hub.settings["max_connections"]:
            relay.stats.incr("sse_refused")
            log.warning("refused a stream: %d connections is this worker's limit (sinks.sse.max_connections)",
                        hub.settings["max_connections"])
            response = jsonify({"error": "too_many_connections",
                                "message": "this worker has reached its stream limit; retry later"})
            response.status_code = 503
            response.headers["Retry-After"] = str(hub.settings["refused_retry_after"])
            return response
        last_event_id = request.headers.get("Last-Event-ID", request.args.get("lastEventId"))
        if last_event_id == "":
            last_event_id = None  # an empty id resets the client: it starts fresh
        client = Client(list(dict.fromkeys(channels)), hub.settings["queue_size"],
                        request.environ.get("gunicorn.socket"))
        # direct_passthrough: the generator's bytes go to gunicorn as they are, without werkzeug's
        # encoding and closing wrappers (two calls per write, and stack every idle stream keeps).
        response = Response(hub.stream(client, last_event_id), content_type="text/event-stream; charset=utf-8",
                            direct_passthrough=True)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        response.headers["X-Relay-Worker"] = str(os.getpid())  # which worker serves it, for operators
        return response

    @blueprint.get("/events/<channel>")
    def stream_channel(channel: str):
        return open_stream([channel])

    @blueprint.get("/events")
    def stream_channels():
        return open_stream(request.args.getlist("channel"))

    app.register_blueprint(blueprint)


@hookimpl
def relay_health(relay):
    hub = relay.extensions.get("sse")
    return {"sse": {"state": "up", "clients": len(hub.clients)}} if hub else None


@hookimpl
def relay_shutdown(relay):
    hub = relay.extensions.get("sse")
    if hub:
        hub.close_all("shutdown")
