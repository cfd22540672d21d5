"""Server-Sent Events sink: ``GET /events/<channel>`` and ``GET /events?channel=a&channel=b``.

Each connection is one :class:`Client`: a bounded queue subscribed on ``relay.bus`` to its
channels, drained by the streaming generator. The bus only ever does a non-blocking put, so a
slow browser cannot hold up the others; when its queue overflows the client is disconnected and
resumes with ``Last-Event-ID`` when it reconnects.

On connect the stream sends ``retry:``, then, for a client that gives ``Last-Event-ID`` (header,
or ``lastEventId`` query parameter for polyfills), the events it missed. When those cannot all
be replayed, a ``relay-missed`` event comes first. Idle streams get a comment every
``heartbeat`` seconds.

Under gunicorn, once a stream is live its events are written to the socket from the hub, once per
loop iteration, without waking the stream's greenlet (plugins.sse_writer); the greenlet takes
over whenever the client's socket cannot take a write whole.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import time

import gevent
from flask import Blueprint, Response, jsonify, request
from gevent.hub import Waiter, get_hub

from plugins.sse_latency import LatencySampler
from plugins.sse_writer import DirectWriter, direct_socket
from relay.api import (
    MAX_CURSOR_LENGTH, MISSED_EVENT, ConfigError, InvalidEvent, Option, Replay, Section, check_name, check_networks,
    client_connected, client_disconnected, close_connection_after, encode_comment, encode_event, encode_retry,
    hookimpl,
)

SECTION = "sinks.sse"
MAX_LAST_EVENT_ID = MAX_CURSOR_LENGTH  # the longest id relay gives (a Kafka cursor)
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
        Option("max_connections", int, 0, "open streams per worker, beyond it 503 with Retry-After; 0: as many "
               "as worker_connections less reserved_connections allows", env="RELAY_SSE_MAX_CONNECTIONS", min=0),
        Option("reserved_connections", int, 100, "connections per worker kept free of streams, for /healthz, "
               "/metrics and publishing", env="RELAY_SSE_RESERVED_CONNECTIONS", min=1),
        Option("max_connections_per_address", int, 100, "open streams per client address per worker, beyond it "
               "429 with Retry-After; 0 turns the limit off", env="RELAY_SSE_MAX_CONNECTIONS_PER_ADDRESS", min=0),
        Option("trusted_proxies", list, [], "addresses or networks of reverse proxies whose X-Forwarded-For "
               "names the client address (otherwise it is ignored)", env="RELAY_SSE_TRUSTED_PROXIES",
               check=check_networks),
        Option("refused_retry_after", int, 5, "seconds in the Retry-After of a refused stream", min=1),
    ), "The Server-Sent Events sink.")]


class Client:
    """One open stream: the events waiting to be written, and the socket they are written to.

    The bus appends to ``pending`` (a plain list, bounded by ``limit``) and wakes the stream at
    most once per batch; the stream takes the whole list and writes it in one write. Waking goes
    through the hub (``loop.run_callback``), as gevent requires, with one reusable heartbeat timer
    per client instead of a ``Timeout`` object per wait.

    While ``direct`` (the stream is parked in :meth:`wait`, live, under gunicorn), the bus only
    marks the client for the hub's :class:`plugins.sse_writer.DirectWriter`, which writes the
    list to ``raw`` itself; what the socket did not take is left in ``unsent`` for the stream.
    """

    __slots__ = ("pending", "batch", "limit", "channels", "sock", "closed", "_watcher", "_waiter",
                 "_timer", "_interval", "_hub", "presence", "address", "server_response", "raw", "chunked",
                 "direct", "unsent", "written_at", "_writer", "__weakref__")

    def __init__(self, channels: list[str], queue_size: int, sock: socket.socket | None, address: str = ""):
        self.pending: list = []  # events not written yet, oldest first
        self.batch: list | None = None  # the bus's batch when ``pending`` holds exactly it (see Hub.batch_frames)
        self.limit = queue_size
        self.channels = channels
        self.sock = sock
        self.address = address  # the client's address, for max_connections_per_address
        self.closed: str | None = None  # why: "slow", "left", "shutdown"
        self._watcher = None
        self._waiter: Waiter | None = None  # set while the stream waits for events
        self._timer = None
        self._hub = get_hub()
        # With ?presence=1: the subscriber count last sent per channel (see plugins.presence), else None.
        self.presence: dict[str, int] | None = None
        # Direct writes (plugins.sse_writer): the server's response object (kept while direct
        # writes are used: they add to its count of body bytes, for the access log), the OS
        # socket and its framing.
        self.server_response = None
        self.raw: socket.socket | None = None
        self.chunked = False
        self.direct = False  # the writer may write to ``raw`` now (only while the stream waits)
        self.unsent = b""  # framed bytes a direct write left: the stream writes them first
        self.written_at = 0.0  # time.time() of the last direct write, for the heartbeat
        self._writer: DirectWriter | None = None
        self._interval = 0.0  # the heartbeat timer's interval

    def offer(self, channel: str, event) -> None:
        """Bus receiver: never blocks. A full queue means the client cannot keep up."""
        pending = self.pending
        if len(pending) >= self.limit:
            self.close("slow")
            return
        pending.append(event)
        self.batch = None
        if self.direct:
            if len(pending) == 1:  # the first since the last flush
                self._writer.mark(self)
        elif self._waiter is not None:
            self.wake()

    def offer_batch(self, channel: str, events: list) -> None:
        """:meth:`offer` for each of ``events``, in one step (``Bus.send_batch``)."""
        pending = self.pending
        if len(pending) + len(events) > self.limit:
            self.close("slow")
            return
        if pending:
            pending += events
            self.batch = None
        else:  # the usual case: every client's write is the same bytes, joined once (Hub.batch_frames)
            self.pending = list(events)
            self.batch = events
            if self.direct:
                self._writer.mark(self)
                return
        if self._waiter is not None and not self.direct:
            self.wake()

    def wake(self) -> None:
        """Resume the waiting stream (from the hub, as gevent requires)."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._hub.loop.run_callback(waiter.switch, True)

    def wait(self, timeout: float, direct: bool = False) -> bool:
        """Wait for an event or a close; ``False`` when ``timeout`` seconds passed without one.

        :param direct: let the hub's writer write events to the socket meanwhile (the stream is
            not writing while it waits: one owner of the socket at any moment).
        """
        if self.pending or self.closed:
            return True
        waiter = self._waiter = Waiter(self._hub)
        timer = self._timer
        if timer is None:
            # A repeating timer armed with ``again``: every wait gets the full ``timeout``. (``start``
            # would resume from what the last wait left, shorter each time, until it fired at once.)
            timer = self._timer = self._hub.loop.timer(timeout, timeout)
            self._interval = timeout
        once = timeout != self._interval  # the rest of a heartbeat interval (see Hub._live)
        if once:
            timer = self._hub.loop.timer(timeout, timeout)
        timer.again(waiter.switch, False)
        self.direct = direct
        try:
            return waiter.get()
        finally:
            self.direct = False  # before anything else runs in this greenlet: it may write now
            timer.stop()
            if once:
                timer.close()
            self._waiter = None

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = reason
        self.direct = False  # nothing more is written from the hub
        self.wake()  # a waiting stream sees ``closed`` at once
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
        # Presence: open streams per channel in this worker, and the streams that asked for
        # relay-presence events, by channel; kept as streams open and close (never a scan).
        self.counts: dict[str, int] = {}
        self.watchers: dict[str, set[Client]] = {}
        self.by_address: dict[str, int] = {}  # open streams per client address, for its limit
        self.presence_frames = None  # set by the presence plugin: client -> its first relay-presence frames
        self._joined: tuple[list | None, bytes] = (None, b"")  # the last batch written, and its frames
        self.writer: DirectWriter | None = None  # made with the first stream that can use it
        self.latency = LatencySampler(lambda seconds: relay.stats.observe("delivery_latency", seconds))

    def _count(self, client: Client, step: int) -> None:
        """Add (``step`` 1) or remove (-1) ``client`` in ``counts``, ``watchers`` and ``by_address``."""
        streams = self.by_address.get(client.address, 0) + step
        if streams > 0:
            self.by_address[client.address] = streams
        else:
            self.by_address.pop(client.address, None)
        counts, watchers = self.counts, self.watchers
        for channel in client.channels:
            left = counts.get(channel, 0) + step
            if left > 0:
                counts[channel] = left
            else:
                counts.pop(channel, None)
            if client.presence is None:
                continue
            if step > 0:
                watchers.setdefault(channel, set()).add(client)
            elif channel in watchers:
                watchers[channel].discard(client)
                if not watchers[channel]:
                    del watchers[channel]

    def stream(self, client: Client, last_event_id: str | None):
        relay, bus = self.relay, self.relay.bus
        self.clients.add(client)
        self._count(client, 1)
        client_connected.send(relay, channels=client.channels, address=client.address, clients=len(self.clients))
        try:
            # Subscribe before reading the history, so nothing falls between the two.
            for channel in client.channels:
                bus.subscribe(channel, client.offer, batch=client.offer_batch)
            client.watch_for_hangup()
            if client.presence is not None and self.presence_frames is not None:
                yield self.retry_frame + self.presence_frames(client)  # relay-presence, no id: not resumable
            else:
                yield self.retry_frame
            self._use_direct_writes(client)  # the headers are out: the server's framing is known
            replayed: set[str] = set()
            follow = None
            if last_event_id is not None:
                replay = self._replay(client, last_event_id)
                head = []
                if not replay.complete:
                    relay.stats.incr("sse_missed", reason=replay.reason)
                    # ensure_ascii: whatever the client sent is echoed as encodable text
                    head.append(encode_event(json.dumps(
                        {"last_event_id": last_event_id[:MAX_LAST_EVENT_ID], "reason": replay.reason,
                         "channels": client.channels}, separators=(",", ":")), MISSED_EVENT))
                head.append(self._frames(replay.events))  # skips any that cannot be framed
                replayed = {(event.channel, event.sse_id) for event in replay.events}  # ids are per channel
                follow = replay.follow
                if any(head):
                    yield b"".join(head)
            yield from self._live(client, replayed, follow)
        finally:
            client.direct = False
            bus.unsubscribe(client.offer)
            client.stop_watching()
            self._count(client, -1)
            self.clients.discard(client)
            client_disconnected.send(relay, channels=client.channels, address=client.address,
                                     reason=client.closed or "", clients=len(self.clients))

    def _use_direct_writes(self, client: Client) -> None:
        target = direct_socket(client.server_response, client.sock) if client.server_response is not None else None
        if target is None:
            client.server_response = None
            return
        if self.writer is None:
            self.writer = DirectWriter(self._frames_of, self.latency)
        client.raw, client.chunked = target
        client._writer = self.writer

    def _live(self, client: Client, replayed: set[str], follow=None):
        heartbeat = timeout = self.settings["heartbeat"]
        while True:
            if client.unsent and not self._write_unsent(client):
                return
            # Direct writes only once the replay's overlap and its follow function are done with:
            # the hub's writer sends the queue as it is.
            direct = client.raw is not None and not replayed and follow is None
            if not client.wait(timeout, direct):
                # Direct writes do not re-arm the heartbeat timer: count the silence from the last.
                silence = time.time() - client.written_at
                if silence < heartbeat:
                    timeout = heartbeat - silence
                    continue
                timeout = heartbeat
                yield HEARTBEAT
                continue
            timeout = heartbeat
            if client.unsent and not self._write_unsent(client):
                return  # (a shutdown's retry frame must follow whole frames)
            if client.closed:
                if client.closed == "shutdown":
                    yield self.retry_frame
                return
            events, client.pending = client.pending, []  # everything queued goes out in one write
            batch, client.batch = client.batch, None
            if not events:
                continue
            taken = events
            if replayed:
                # Drop the leading live events already sent in the replay; frames without an id
                # (relay-presence) are kept and do not end the overlap.
                kept, overlap = [], True
                for event in events:
                    if overlap and event.id is not None:
                        if (event.channel, event.sse_id) in replayed:
                            continue
                        overlap = False
                    kept.append(event)
                events = kept
                if not overlap:
                    replayed = set()  # live events are in order: no more overlap
                if not events:
                    continue
            if follow is not None:
                # A source's replay asked to see what follows it (see relay.backbone.Replay).
                events = [e for e in map(follow, events) if e is not None]
                if getattr(follow, "done", False):
                    follow = None
                if not events:
                    continue
            data = self._frames_of(events, batch if events is taken else None)
            if data:  # empty when every event was skipped (gunicorn would end the body on b"")
                yield data
            self.latency.delivered(events[0])

    @staticmethod
    def _write_unsent(client: Client) -> bool:
        """Write what a direct write left, from the stream's greenlet; ``False`` if the client is gone."""
        data, client.unsent = client.unsent, b""
        try:
            client.sock.sendall(data)  # gevent's: waits, cooperatively, until the client reads
        except OSError:
            client.close("left")
            return False
        return True

    def _frames_of(self, events: list, batch: list | None) -> bytes:
        """The bytes of a client's queued ``events``; ``batch``: the bus's batch when they are it."""
        if batch is not None:
            return self.batch_frames(batch)
        try:
            return events[0].frame if len(events) == 1 else b"".join([event.frame for event in events])
        except Exception:  # noqa: BLE001 - one event that cannot be framed must not end the stream
            return self._frames(events)

    def batch_frames(self, batch: list) -> bytes:
        """The frames of a batch the bus handed to every client, joined by the first client that
        writes it and shared with the others (a Kafka poll: 200 events, 100 clients)."""
        if self._joined[0] is not batch:
            self._joined = (batch, self._frames(batch))
        return self._joined[1]

    def _replay(self, client: Client, last_event_id: str) -> Replay:
        """What a client resuming after ``last_event_id`` missed; never raises.

        The id is untrusted input: one that relay can never have given (over 1024 characters, CR,
        LF or NUL, text that is not UTF-8) is never looked up and counts as unknown, so the client
        gets ``relay-missed`` and goes live; an EventSource answered with an error instead would
        stop reconnecting for good.
        """
        try:
            check_name("Last-Event-ID", last_event_id, limit=MAX_LAST_EVENT_ID)
        except InvalidEvent:
            return Replay([], complete=False, reason="unknown-id")
        try:
            return self.relay.replay(client.channels, last_event_id)
        except Exception:  # noqa: BLE001 - a broken lookup must not cost the client its stream
            log.exception("resuming %s from %r failed", ",".join(client.channels), last_event_id)
            self.relay.stats.incr("sse_replay_errors")
            return Replay([], complete=False, reason="unavailable")

    def _frames(self, events: list) -> bytes:
        """The frames of ``events`` in one block, skipping any whose frame cannot be built."""
        frames = []
        for event in events:
            try:
                frames.append(event.frame)
            except Exception as exc:  # noqa: BLE001 - e.g. a plugin changed a field after validation
                self._unframeable(event, exc)
        return b"".join(frames)

    def _unframeable(self, event, exc: Exception) -> None:
        # An empty frame marks the event as skipped: every other client, and every resume whose
        # replay holds it, then skips it without trying again, and it is counted and logged once.
        try:
            event._frame = b""
        except AttributeError:
            pass  # not a relay.event.Event at all: this client skips it, the others try it again
        self.relay.stats.incr("sse_unframeable")
        log.error("skipped event %r on channel %r: its SSE frame cannot be built (%s: %s)",
                  getattr(event, "id", None), getattr(event, "channel", None), type(exc).__name__, exc)

    @staticmethod
    def last_event_id(request) -> str | None:
        """The client's ``Last-Event-ID`` header, else its ``lastEventId`` query parameter (for
        polyfills); ``None`` when absent or empty (an empty id resets the client: it starts fresh).

        WSGI hands headers over as latin-1-decoded text; browsers send the id as UTF-8, so the
        header is decoded again as UTF-8 (so an id such as ``café`` resumes). Bytes that are not
        UTF-8 become lone surrogates (``surrogateescape``): an id no event can have, answered with
        ``relay-missed`` without a lookup.
        """
        value = request.headers.get("Last-Event-ID")
        if value is None:
            return request.args.get("lastEventId") or None
        try:
            value = value.encode("latin-1").decode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            pass  # a server that did not follow WSGI and decoded it already
        return value or None

    def close_all(self, reason: str) -> None:
        for client in list(self.clients):
            client.close(reason)


class StreamResponse(Response):
    """The stream's response: tells its client which server response object carries it (the
    ``start_response`` it is called with), for plugins.sse_writer.direct_socket."""

    def __init__(self, client: Client, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stream_client = client

    def __call__(self, environ, start_response):
        self.stream_client.server_response = getattr(start_response, "__self__", None)
        return super().__call__(environ, start_response)


def _error(status: int, message: str):
    return jsonify({"error": "invalid_request", "message": message}), status


def stream_limit(settings: dict, total: int) -> int:
    """The most streams one worker may hold.

    gunicorn's gevent worker stops accepting connections once it holds ``worker_connections``
    (``server.worker_connections``, ``RELAY_WORKER_CONNECTIONS``; under gunicorn its own value): if
    streams could take them all, ``/healthz``, ``/metrics`` and publishing would hang. So
    ``reserved_connections`` stay free of streams; ``max_connections`` defaults to the rest.

    :raises ConfigError: naming the key, when the settings would let streams take every connection.
    """
    reserved, wanted = settings["reserved_connections"], settings["max_connections"]
    room = total - reserved
    if room < 1:
        raise ConfigError([f"{SECTION}.reserved_connections: {reserved} leaves no room for streams in a worker's "
                           f"{total} connections (RELAY_WORKER_CONNECTIONS); lower it or raise "
                           "RELAY_WORKER_CONNECTIONS"])
    if wanted > room:
        raise ConfigError([f"{SECTION}.max_connections: {wanted} streams would leave fewer than reserved_connections "
                           f"({reserved}) of a worker's {total} connections (RELAY_WORKER_CONNECTIONS) for /healthz, "
                           f"/metrics and publishing; set it to {room} or less (0 does that), or raise "
                           "RELAY_WORKER_CONNECTIONS"])
    return wanted or room


class ClientAddress:
    """Where a request comes from, for ``max_connections_per_address``.

    The peer's address; but when the peer is one of ``trusted_proxies``, the address that
    ``X-Forwarded-For`` gives just before the trusted proxies: its rightmost untrusted entry, as
    anything to the left of that the client may have written itself.
    """

    def __init__(self, trusted: list[str]):
        self.trusted = [ipaddress.ip_network(value, strict=False) for value in trusted]

    def __call__(self, request) -> str:
        address = request.remote_addr or "unknown"
        if not self.trusted or not self._trusted(address):
            return address
        forwarded = ",".join(request.headers.getlist("X-Forwarded-For")).split(",")
        for hop in reversed([hop.strip() for hop in forwarded if hop.strip()]):
            address = hop
            if not self._trusted(hop):
                break
        return address

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)


def _refuse(relay, status: int, error: str, message: str, retry_after: int):
    relay.stats.incr("sse_refused", reason=error)
    log.warning("refused a stream: %s", message)
    response = jsonify({"error": error, "message": message})
    response.status_code = status
    response.headers["Retry-After"] = str(retry_after)
    close_connection_after(response)  # an idle kept-alive connection would hold what the limit frees
    return response


@hookimpl
def relay_init_app(app, relay):
    hub = relay.extensions["sse"] = Hub(relay, relay.config.section(SECTION))
    blueprint = Blueprint("sse", __name__)
    limit = stream_limit(hub.settings, relay.config.section("server")["worker_connections"])
    per_address = hub.settings["max_connections_per_address"]
    client_address = ClientAddress(hub.settings["trusted_proxies"])

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
        retry_after = hub.settings["refused_retry_after"]
        if len(hub.clients) >= limit:
            return _refuse(relay, 503, "too_many_connections", f"this worker holds {limit} streams, its limit "
                           f"({SECTION}.max_connections); retry later", retry_after)
        address = client_address(request)
        # Counted by the hub as the stream starts, with no switch of greenlet between this check
        # and that count (like the total just above), so a burst cannot slip past either limit.
        if per_address and hub.by_address.get(address, 0) >= per_address:
            return _refuse(relay, 429, "too_many_connections_from_address",
                           f"{address} already holds {per_address} streams on this worker, the limit per "
                           f"client address ({SECTION}.max_connections_per_address); close one or retry later",
                           retry_after)
        presence = request.args.get("presence", "0")
        if presence not in ("0", "1") or (presence == "1" and hub.presence_frames is None):
            return _error(400, f"presence: {presence!r} is not 0 or 1" if presence not in ("0", "1")
                          else "presence=1: the presence plugin is not loaded")
        last_event_id = hub.last_event_id(request)
        client = Client(list(dict.fromkeys(channels)), hub.settings["queue_size"],
                        request.environ.get("gunicorn.socket"), address)
        if presence == "1":
            client.presence = {}
        # direct_passthrough: the generator's bytes go to gunicorn as they are, without werkzeug's
        # encoding and closing wrappers (two calls per write, and stack every idle stream keeps).
        response = StreamResponse(client, hub.stream(client, last_event_id),
                                  content_type="text/event-stream; charset=utf-8", direct_passthrough=True)
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
    if not hub:
        return None
    writer = hub.writer  # direct writes (plugins.sse_writer), and those the streams had to finish
    return {"sse": {"state": "up", "clients": len(hub.clients), "direct_writes": writer.writes if writer else 0,
                    "direct_writes_handed_over": writer.handed_over if writer else 0}}


@hookimpl
def relay_shutdown(relay):
    hub = relay.extensions.get("sse")
    if hub:
        hub.close_all("shutdown")
