"""The Redis backbone: ``backbone = "redis://…"``, for many workers on many hosts.

An event published over HTTP on any worker is added, by one Lua script, to the Redis Stream of
its channel (``relay:stream:<channel>``, trimmed to ``maxlen`` entries and, optionally,
``max_age`` seconds) and announced on one pub/sub channel (``relay:events``). Every worker holds
one subscription to that channel and delivers what it hears to its own clients, so every client
sees every event, in the same order everywhere. The event id is the stream entry id, given
from one Redis-wide counter, so ids are comparable across channels and ``Last-Event-ID`` resumes
on whichever worker a browser reconnects to: from this worker's memory when the event is recent,
else from the streams themselves (XRANGE), even after every relay restarted. After a worker
loses its subscription it reads what it missed from the streams before going live again.

Events from sources (Redis pub/sub, Kafka) do not go through the streams: every worker reads the
broker itself, so they are delivered where they arrive.

Redis may lose what it acknowledged (a restart without persistence, an AOF or RDB that ends
before the last events, a failover to a replica that lagged). Redis comes back with a consistent
but shorter history, and nothing in it says so. The first script to run on a new Redis process
(its ``run_id`` differs from the one stored with the data) therefore writes down a *restart*:
``S0``, the counter it found (the last event that survived), and ``R``, a time after every id
that survived, where new ids begin (see :data:`NOTE_RESTART`). An id issued before the restart
(``ms < R``) whose counter is above ``S0`` was lost. A worker that had heard such events finds
out when its subscription comes back: it records the loss (so that resumes from before it are
told too, on every worker), and tells its live streams. A resume that crosses a loss gets
``Replay(reason="lost")``: a ``relay-missed`` event, then what is left.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict

import gevent.lock
import redis

from plugins.redis_common import (
    CHECK_SCRIPT, CONNECTION_ERRORS, NOTE_RESTART, RESTARTS_KEPT, decode_event, encode_event, keep_connected,
    make_connection, make_pool, read_subscribed,
)
from relay.api import (
    MISSED_EVENT, REDIS_URL_SCHEMES, Backbone, BackboneUnavailable, Event, InvalidEvent, MemoryBackbone, Option,
    Replay, Section, Source, event_rejected, hookimpl, parse_stream_id,
)

SECTION = "backbones.redis"
RECONNECT_MIN, RECONNECT_MAX = 0.5, 30.0  # seconds: the subscription's capped exponential reconnect delay

log = logging.getLogger("relay.backbone.redis")


# Numbers the event from one counter (so ids order across channels), keeps it in its channel's
# stream and announces it, atomically: every worker hears events in the order they were stored.
# KEYS 5: the stream, 6: the announcement channel.
PUBLISH_SCRIPT = NOTE_RESTART + """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if ms < last then ms = last end
redis.call('SET', KEYS[1], ms)
local id = ms .. '-' .. redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[1], id, 'e', ARGV[3])
if tonumber(ARGV[2]) > 0 then
  redis.call('XTRIM', KEYS[5], 'MINID', '~', (ms - tonumber(ARGV[2])) .. '-0')
end
redis.call('PUBLISH', KEYS[6], id .. '\\n' .. ARGV[3])
return id
"""


PUBLISH_CONNECTIONS = 4  # a worker's publishes in flight at once (each on a connection of its own)


def stream_key(prefix: str, channel: str) -> str:
    return f"{prefix}stream:{channel}"


@hookimpl
def relay_config_sections():
    return [Section(SECTION, (
        Option("maxlen", int, 10000, "entries kept per channel stream (approximate trim)",
               env="RELAY_BACKBONE_MAXLEN", min=1),
        Option("max_age", float, 0.0, "seconds after which entries are trimmed (approximately); 0: trim by maxlen only",
               env="RELAY_BACKBONE_MAX_AGE", min=0),
        Option("prefix", str, "relay:", "prefix of every Redis key relay uses"),
        Option("health_interval", float, 5.0, "seconds of silence before the subscription is checked with PING",
               min=0.1),
        Option("connect_timeout", float, 5.0, "seconds to wait for a connection", min=0.1),
    ), "The Redis backbone (used when backbone = 'redis://…').")]


@hookimpl
def relay_backbone(relay, url):
    if not url.startswith(REDIS_URL_SCHEMES):
        return None
    return RedisBackbone(relay, url, relay.config.section(SECTION))


class RedisBackbone(Backbone):
    def __init__(self, relay, url: str, settings: dict):
        self.relay, self.url, self.settings = relay, url, settings
        self.prefix = settings["prefix"]
        self.notify_channel = f"{self.prefix}events"
        # Recent events, local and shared, for fast resume; it numbers events for this worker.
        self.memory = MemoryBackbone(relay.history_size, history_bytes=relay.history_bytes,
                                     total_bytes=relay.history_total_bytes)
        self.reader = StreamReader(self)
        self.publisher = ScriptPublisher(self)
        self._pool: redis.BlockingConnectionPool | None = None
        self._check = None
        # Set when this worker finds that Redis lost events: the last id it had heard then.
        # A resume from it or before crossed the loss, even when this memory can replay it.
        self.lost_up_to: tuple[int, int] | None = None

    # Connections are made on first use, in the worker (after fork), never at import.
    def client(self) -> redis.Redis:
        if self._pool is None:
            # Commands from request greenlets, which no reconnect loop watches: redis-py retries them.
            timeout = self.settings["connect_timeout"]
            self._pool = make_pool(self.url, f"relay-backbone-{os.getpid()}", connect_timeout=timeout,
                                   read_timeout=timeout + 5, max_connections=4, wait=timeout, redis_retries=True)
        return redis.Redis(connection_pool=self._pool)

    def publish(self, event: Event, broadcast: bool = False) -> Event:
        if not broadcast:  # every worker got it from its own source: deliver it here only
            return self.memory.publish_local(event, self.relay.deliver)
        if event.id is not None:
            raise InvalidEvent("id", "publisher-chosen ids are not supported with the redis backbone: "
                                     "ids are Redis stream ids, assigned in order")
        try:
            event.id = self.publisher.publish(event.channel, encode_event(event))
        except CONNECTION_ERRORS as exc:
            raise BackboneUnavailable(f"redis backbone: {type(exc).__name__}: {exc}") from exc
        return event  # delivered when the announcement comes back, here as on every worker

    def publish_batch(self, events: list[Event]) -> list[Event]:
        # A source's events: every worker reads the broker itself, so they stay in this worker.
        return self.memory.publish_local_batch(events, self.relay.deliver_batch)

    def _dataset_keys(self) -> list[str]:
        return [f"{self.prefix}clock", f"{self.prefix}seq", f"{self.prefix}run", f"{self.prefix}restarts"]

    def lost_after(self, event_id: tuple[int, int], heard: bool = False) -> bool:
        """Did Redis lose events it had acknowledged after ``event_id``?

        :param heard: ``True`` when this worker heard ``event_id`` announced (so it did exist):
            the loss is then recorded for every later resume from before it.
        """
        if self._check is None:
            self._check = self.client().register_script(CHECK_SCRIPT)
        ms, seq = event_id
        return self._check(keys=self._dataset_keys(), args=[ms, seq, int(heard), RESTARTS_KEPT]) == 1

    def replay(self, channels: list[str], last_event_id: str, limit: int) -> Replay | None:
        replay = self.memory.replay(channels, last_event_id, limit)
        key = parse_stream_id(last_event_id)
        if replay is not None and self.lost_up_to and key is not None and key <= self.lost_up_to:
            return Replay(replay.events, complete=False, reason="lost")
        return replay

    def replay_stored(self, channels: list[str], last_event_id: str, limit: int) -> Replay | None:
        after = parse_stream_id(last_event_id)
        if after is None:
            return None
        try:
            return self._replay_from_streams(channels, last_event_id, after, limit)
        except CONNECTION_ERRORS as exc:
            log.warning("cannot replay from the redis backbone: %s", exc)
            return Replay([], complete=False, reason="unavailable")

    def _replay_from_streams(self, channels, last_event_id, after, limit) -> Replay:
        client = self.client()
        # Asked first: a restart of Redis is recorded before the streams are read. Ids given after
        # a restart are above every id given before it, so XRANGE finds the new events either way.
        lost = self.lost_after(after)
        events, complete = [], True
        for channel in channels:
            key = stream_key(self.prefix, channel)
            for entry_id, fields in client.xrange(key, f"({last_event_id}", "+", count=limit):
                events.append(decode_event(entry_id.decode(), fields[b"e"]))
            try:
                info = client.xinfo_stream(key)
            except redis.ResponseError:
                continue  # no such stream: nothing was ever published there
            # Trimming drops the oldest entries. When some were dropped and the oldest left is
            # newer than the client's id, entries after that id may be gone (say so, to be safe).
            first = info.get("first-entry")
            if info["entries-added"] > info["length"] and first and parse_stream_id(first[0].decode()) > after:
                complete = False
        events.sort(key=lambda e: parse_stream_id(e.id))
        if len(events) > limit:
            events, complete = events[-limit:], False
        if lost:
            return Replay(events, complete=False, reason="lost")
        return Replay(events, complete, "" if complete else "evicted")

    def sources(self) -> list[Source]:
        return [self.reader]

    def stats(self) -> dict:
        return {"kind": "redis", **self.memory.stats()}


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


class ScriptPublisher:
    """Runs the publish script for this worker's request greenlets, with the command packed by
    hand from parts packed once, on up to :data:`PUBLISH_CONNECTIONS` connections of its own
    (one command in flight on each: several publishers at once still share Redis's fsync with
    ``appendfsync always``).

    redis-py's general path (a pool that checks each connection for unread data before lending
    it, every argument through its encoder, its metrics recorder, its retry wrapper) cost the
    worker ~200 µs of CPU more per event published, the largest part of what the Redis backbone
    added to the in-memory one's cost (benchmarks/README.md, the backbone scenarios). The
    script, its keys and its arguments are the same.
    """

    def __init__(self, backbone: RedisBackbone):
        self.backbone = backbone
        self.idle: list[redis.Connection] = []
        self.slots = gevent.lock.BoundedSemaphore(PUBLISH_CONNECTIONS)
        settings, sha = backbone.settings, hashlib.sha1(PUBLISH_SCRIPT.encode()).hexdigest().encode()
        keys = [key.encode() for key in backbone._dataset_keys()]
        # EVALSHA sha 6 <4 dataset keys> <stream> <announcements> maxlen max_age_ms <body> kept
        self.head = b"*13\r\n" + b"".join(_bulk(part) for part in [b"EVALSHA", sha, b"6", *keys])
        self.middle = b"".join(_bulk(str(part).encode()) for part in (
            backbone.notify_channel, settings["maxlen"], int(settings["max_age"] * 1000)))
        self.tail = _bulk(str(RESTARTS_KEPT).encode())

    def publish(self, channel: str, body: str) -> str:
        """The new event's id. Raises what :data:`CONNECTION_ERRORS` names when Redis cannot take it."""
        stream = stream_key(self.backbone.prefix, channel).encode()
        packed = b"".join((self.head, _bulk(stream), self.middle, _bulk(body.encode()), self.tail))
        wait = self.backbone.settings["connect_timeout"]
        if not self.slots.acquire(timeout=wait):
            raise redis.ConnectionError(f"all {PUBLISH_CONNECTIONS} publish connections stayed busy for {wait:g}s")
        try:
            connection = self.idle.pop() if self.idle else None
            retried = connection is None  # a connection that waited may have died with Redis: one retry
            load = False
            while True:
                try:
                    if connection is None:
                        connection = self._connect()
                    if load:  # a new or flushed Redis does not know the script yet
                        connection.send_command("SCRIPT", "LOAD", PUBLISH_SCRIPT)
                        connection.read_response()
                    connection.send_packed_command([packed], check_health=False)
                    event_id = connection.read_response().decode()
                except redis.exceptions.NoScriptError:
                    if load:
                        self.idle.append(connection)
                        raise
                    load = True
                    continue
                except redis.ResponseError:  # the script refused: the connection is fine
                    self.idle.append(connection)
                    raise
                except redis.TimeoutError:  # Redis is slow, not gone: the script may still run
                    if connection is not None:
                        connection.disconnect()
                    raise
                except (redis.ConnectionError, OSError):
                    if connection is not None:
                        connection.disconnect()
                        connection = None
                    if retried:
                        raise
                    # At once, on a new connection: the usual cause is a Redis that restarted
                    # while this one sat idle (redis-py's pool checked each connection with a read
                    # before lending it instead: a system call per publish). Should the answer
                    # alone have been lost, after the script ran, the event is stored twice: at
                    # least once, as a publisher retrying a 503 would have it, never lost.
                    retried = True
                    continue
                self.idle.append(connection)
                return event_id
        finally:
            self.slots.release()

    def _connect(self) -> redis.Connection:
        settings = self.backbone.settings
        connection = make_connection(self.backbone.url, f"relay-backbone-pub-{os.getpid()}",
                                     connect_timeout=settings["connect_timeout"],
                                     read_timeout=settings["connect_timeout"] + 5)
        connection.connect()
        return connection


class StreamReader(Source):
    """The worker's one subscription to the announcements, and catch-up after it was lost."""

    name = "redis-backbone"

    def __init__(self, backbone: RedisBackbone):
        super().__init__()
        self.backbone = backbone
        self.last_ids: OrderedDict[str, tuple[int, int]] = OrderedDict()  # per channel: last delivered
        self.connection: redis.Connection | None = None

    def run(self, relay) -> None:
        """Keep the subscription up until stopped (see :func:`plugins.redis_common.keep_connected`)."""
        keep_connected(name="backbone", log=log, stopping=self.stopping, connect=self._subscribe,
                       serve=lambda: self._serve(relay), close=self._close, is_up=lambda: self.status == "up",
                       failed=lambda exc: self._lost(relay, exc),
                       reconnect_min=RECONNECT_MIN, reconnect_max=RECONNECT_MAX)

    def _subscribe(self) -> None:
        settings = self.backbone.settings
        self.connection = make_connection(self.backbone.url, f"relay-backbone-sub-{os.getpid()}",
                                          connect_timeout=settings["connect_timeout"],
                                          read_timeout=settings["health_interval"] * 2)
        self.connection.connect()
        self.connection.send_command("SUBSCRIBE", self.backbone.notify_channel)

    def _serve(self, relay) -> None:
        def handle(reply) -> None:
            if isinstance(reply, list) and reply[0] == b"subscribe":
                self._catch_up(relay)  # subscribed first, so nothing falls in between
                self.set_status("up", self.backbone.notify_channel)
            elif isinstance(reply, list) and reply[0] == b"message":
                self._hear(relay, reply[2])

        read_subscribed(self.connection, self.stopping, self.backbone.settings["health_interval"], handle)

    def _close(self) -> None:
        if self.connection is not None:
            self.connection.disconnect()
            self.connection = None

    def _lost(self, relay, exc: BaseException) -> None:
        relay.stats.incr("source_failures", source=self.name)
        self.set_status("down", f"redis backbone subscription lost: {type(exc).__name__}: {exc}")

    def _hear(self, relay, payload: bytes) -> None:
        event_id, _, body = payload.decode("utf-8", "replace").partition("\n")
        try:
            self._deliver(relay, decode_event(event_id, body))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not written by a relay
            event_rejected.send(relay, source="backbone", reason="bad_announcement", error=str(exc),
                                where=f"announcement channel {self.backbone.notify_channel}", payload=payload[:200])

    def _deliver(self, relay, event: Event) -> None:
        key = parse_stream_id(event.id)
        if key is None:
            raise ValueError(f"{event.id!r} is not a stream entry id")
        if self.last_ids.get(event.channel, (-1, -1)) >= key:
            return  # already delivered (heard during catch-up)
        self.last_ids[event.channel] = key
        self.last_ids.move_to_end(event.channel)
        if len(self.last_ids) > 10_000:
            self.last_ids.popitem(last=False)
        self.backbone.memory.publish_local(event, relay.deliver)

    def _catch_up(self, relay) -> None:
        """Deliver what was stored while this worker was not subscribed."""
        if not self.last_ids:
            return
        client, caught = self.backbone.client(), 0
        self._check_for_loss(relay)
        for channel, (ms, seq) in list(self.last_ids.items()):
            for entry_id, fields in client.xrange(stream_key(self.backbone.prefix, channel), f"({ms}-{seq}", "+"):
                self._deliver(relay, decode_event(entry_id.decode(), fields[b"e"]))
                caught += 1
        if caught:
            log.info("redis backbone: delivered %d event(s) stored while the subscription was down", caught)

    def _check_for_loss(self, relay) -> None:
        """After Redis restarted: did it lose events this worker heard? Then record it (resumes
        from before are told) and say so, to the operator and to the live streams."""
        heard = max(self.last_ids.values())
        if self.backbone.lost_up_to and heard <= self.backbone.lost_up_to:
            return  # already reported, and nothing heard since
        if not self.backbone.lost_after(heard, heard=True):
            return
        relay.stats.incr("backbone_lost")
        self.backbone.lost_up_to = max(heard, self.backbone.lost_up_to or heard)
        log.warning("redis backbone: Redis lost events it had acknowledged: this worker heard up to %d-%d, "
                    "Redis came back with less. Resumes from before the loss and live streams here get "
                    "relay-missed (reason 'lost'). See Redis persistence in docs/deployment.md.", *heard)
        for channel, last in self.last_ids.items():
            self._tell_live_clients(relay, channel, last)

    def _tell_live_clients(self, relay, channel: str, last: tuple[int, int]) -> None:
        """Live streams of ``channel`` may have missed lost events this worker never heard (their
        announcement was in flight when Redis died): say so, as a resume would. Through the bus
        only, to the browsers of this worker: it is not an event for the sinks (webhooks)."""
        notice = {"last_event_id": f"{last[0]}-{last[1]}", "reason": "lost", "channels": [channel]}
        relay.bus.send(Event(channel, MISSED_EVENT, notice, source=self.name))

    def stop(self) -> None:
        super().stop()
