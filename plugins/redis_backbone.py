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
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import OrderedDict

import gevent
import redis

from relay import Event, Source, hookimpl
from relay.backbone import Backbone, BackboneUnavailable, MemoryBackbone, Replay
from relay.config import Option, Section
from relay.event import InvalidEvent

SECTION = "backbones.redis"
STREAM_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
CONNECTION_ERRORS = (redis.RedisError, OSError)

log = logging.getLogger("relay.backbone.redis")

# Numbers the event from one counter (so ids order across channels), keeps it in its channel's
# stream and announces it, atomically: every worker hears events in the order they were stored.
PUBLISH_SCRIPT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if ms < last then ms = last end
redis.call('SET', KEYS[2], ms)
local id = ms .. '-' .. redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id, 'e', ARGV[3])
if tonumber(ARGV[2]) > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', (ms - tonumber(ARGV[2])) .. '-0')
end
redis.call('PUBLISH', KEYS[4], id .. '\\n' .. ARGV[3])
return id
"""


def stream_key(prefix: str, channel: str) -> str:
    return f"{prefix}stream:{channel}"


def id_key(event_id: str) -> tuple[int, int]:
    ms, seq = STREAM_ID.match(event_id).groups()
    return int(ms), int(seq)


def encode(event: Event) -> str:
    return json.dumps({"channel": event.channel, "event": event.event, "data": event.data,
                       "source": event.source, "timestamp": event.timestamp},
                      separators=(",", ":"), ensure_ascii=False)


def decode(event_id: str, body: str | bytes) -> Event:
    fields = json.loads(body)
    return Event(fields["channel"], fields["event"], fields.get("data"), id=event_id,
                 source=fields.get("source", "http"), timestamp=fields.get("timestamp", time.time()))


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
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    return RedisBackbone(relay, url, relay.config.section(SECTION))


class RedisBackbone(Backbone):
    def __init__(self, relay, url: str, settings: dict):
        self.relay, self.url, self.settings = relay, url, settings
        self.prefix = settings["prefix"]
        self.notify_channel = f"{self.prefix}events"
        # Recent events, local and shared, for fast resume; it numbers events for this worker.
        self.memory = MemoryBackbone(relay.history_size)
        self.reader = StreamReader(self)
        self._pool: redis.BlockingConnectionPool | None = None
        self._script = None

    # Connections are made on first use, in the worker (after fork), never at import.
    def client(self) -> redis.Redis:
        if self._pool is None:
            options = redis.connection.parse_url(self.url)
            options.update(protocol=2, socket_connect_timeout=self.settings["connect_timeout"],
                           socket_timeout=self.settings["connect_timeout"] + 5, socket_keepalive=True,
                           client_name=f"relay-backbone-{os.getpid()}", max_connections=4,
                           timeout=self.settings["connect_timeout"])
            self._pool = redis.BlockingConnectionPool(**options)
        return redis.Redis(connection_pool=self._pool)

    def publish(self, event: Event, broadcast: bool = False) -> Event:
        if not broadcast:  # every worker got it from its own source: deliver it here only
            return self.memory.publish_local(event, self.relay.deliver)
        if event.id is not None:
            raise InvalidEvent("id", "publisher-chosen ids are not supported with the redis backbone: "
                                     "ids are Redis stream ids, assigned in order")
        if self._script is None:
            self._script = self.client().register_script(PUBLISH_SCRIPT)
        try:
            event.id = self._script(keys=[stream_key(self.prefix, event.channel), f"{self.prefix}clock",
                                          f"{self.prefix}seq", self.notify_channel],
                                    args=[self.settings["maxlen"], int(self.settings["max_age"] * 1000),
                                          encode(event)]).decode()
        except CONNECTION_ERRORS as exc:
            raise BackboneUnavailable(f"redis backbone: {type(exc).__name__}: {exc}") from exc
        return event  # delivered when the announcement comes back, here as on every worker

    def replay(self, channels: list[str], last_event_id: str, limit: int) -> Replay | None:
        return self.memory.replay(channels, last_event_id, limit)

    def replay_stored(self, channels: list[str], last_event_id: str, limit: int) -> Replay | None:
        if not STREAM_ID.match(last_event_id):
            return None
        try:
            return self._replay_from_streams(channels, last_event_id, limit)
        except CONNECTION_ERRORS as exc:
            log.warning("cannot replay from the redis backbone: %s", exc)
            return Replay([], complete=False, reason="unavailable")

    def _replay_from_streams(self, channels, last_event_id, limit) -> Replay:
        client, after = self.client(), id_key(last_event_id)
        events, complete = [], True
        for channel in channels:
            key = stream_key(self.prefix, channel)
            for entry_id, fields in client.xrange(key, f"({last_event_id}", "+", count=limit):
                events.append(decode(entry_id.decode(), fields[b"e"]))
            try:
                info = client.xinfo_stream(key)
            except redis.ResponseError:
                continue  # no such stream: nothing was ever published there
            # Trimming drops the oldest entries. When some were dropped and the oldest left is
            # newer than the client's id, entries after that id may be gone (say so, to be safe).
            first = info.get("first-entry")
            if info["entries-added"] > info["length"] and first and id_key(first[0].decode()) > after:
                complete = False
        events.sort(key=lambda e: id_key(e.id))
        if len(events) > limit:
            events, complete = events[-limit:], False
        return Replay(events, complete, "" if complete else "evicted")

    def sources(self) -> list[Source]:
        return [self.reader]

    def stats(self) -> dict:
        return {"kind": "redis", **self.memory.stats()}


class StreamReader(Source):
    """The worker's one subscription to the announcements, and catch-up after it was lost."""

    name = "redis-backbone"

    def __init__(self, backbone: RedisBackbone):
        super().__init__()
        self.backbone = backbone
        self.last_ids: OrderedDict[str, tuple[int, int]] = OrderedDict()  # per channel: last delivered
        self.connection: redis.Connection | None = None

    def run(self, relay) -> None:
        settings = self.backbone.settings
        options = redis.connection.parse_url(self.backbone.url)
        options.update(protocol=2, socket_connect_timeout=settings["connect_timeout"],
                       socket_timeout=settings["health_interval"] * 2, socket_keepalive=True,
                       client_name=f"relay-backbone-sub-{os.getpid()}")
        connection_class = options.pop("connection_class", redis.Connection)
        self.connection = connection_class(**options)
        try:
            self.connection.connect()
            self.connection.send_command("SUBSCRIBE", self.backbone.notify_channel)
            self._serve(relay, settings["health_interval"])
        except CONNECTION_ERRORS as exc:
            if not self.stopping.is_set():
                raise ConnectionError(f"redis backbone subscription lost: {type(exc).__name__}: {exc}") from exc
        finally:
            self.connection.disconnect()

    def _serve(self, relay, interval: float) -> None:
        conn, last_heard, ping_sent, in_a_row = self.connection, time.monotonic(), None, 0
        while not self.stopping.is_set():
            if conn.can_read(timeout=min(1.0, interval / 2)):  # may return early under gevent
                reply = conn.read_response()
                last_heard, ping_sent = time.monotonic(), None
                if isinstance(reply, list) and reply[0] == b"subscribe":
                    self._catch_up(relay)  # subscribed first, so nothing falls in between
                    self.set_status("up", self.backbone.notify_channel)
                elif isinstance(reply, list) and reply[0] == b"message":
                    self._hear(relay, reply[2])
                in_a_row += 1
                if in_a_row >= 100:  # let the SSE writers run during a burst
                    in_a_row = 0
                    gevent.sleep(0)
                continue
            in_a_row = 0
            now = time.monotonic()
            if ping_sent is not None and now - ping_sent > interval:
                raise ConnectionError(f"no answer to PING within {interval:g}s")
            if ping_sent is None and now - last_heard >= interval:
                conn.send_command("PING")
                ping_sent = now

    def _hear(self, relay, payload: bytes) -> None:
        event_id, _, body = payload.decode("utf-8", "replace").partition("\n")
        try:
            self._deliver(relay, decode(event_id, body))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not written by a relay
            relay.stats.incr("rejected", source="backbone", reason="bad_announcement")
            log.warning("ignored a malformed announcement on %s: %s", self.backbone.notify_channel, exc)

    def _deliver(self, relay, event: Event) -> None:
        key = id_key(event.id)
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
        for channel, (ms, seq) in list(self.last_ids.items()):
            for entry_id, fields in client.xrange(stream_key(self.backbone.prefix, channel), f"({ms}-{seq}", "+"):
                self._deliver(relay, decode(entry_id.decode(), fields[b"e"]))
                caught += 1
        if caught:
            log.info("redis backbone: delivered %d event(s) stored while the subscription was down", caught)

    def stop(self) -> None:
        super().stop()
