"""Presence: how many open streams watch each channel, summed over every worker and instance.

* ``GET /channels/<channel>`` answers ``{"channel", "subscribers"}``; ``GET /channels`` lists the
  channels that have subscribers, sorted by name, keeping only those the caller may subscribe
  to. Both honour subscribe authorisation like the stream endpoint.
* A stream opened with ``presence=1`` also gets named ``relay-presence`` events,
  ``{"channel", "subscribers"}``: one per channel right after connecting, then one whenever the
  count changes, at most one per channel per second. They carry no ``id:`` line, so they never
  move a browser's ``Last-Event-ID``.

How it stays cheap with 10 000 streams: the SSE hub counts streams per channel as they open and
close (``Hub.counts``, O(channels of the stream) per connect); nothing ever scans the clients.
One source per worker (``presence``) wakes every :data:`TICK` seconds and

1. with a backbone that shares its Redis (the Redis backbone, one Redis or a cluster), writes
   what changed in this worker's counts to the hash ``<prefix>{presence}:w:<worker id>``
   (HSET/HDEL of the changed channels only) and renews its TTL (``presence.ttl``); registers the
   worker in the sorted set ``<prefix>{presence}:workers`` (one hash tag: one node), scored
   by when it expires on Redis' clock, dropping workers whose time has passed; then reads the
   other live workers' hashes and keeps their sum in memory;
2. sends ``relay-presence`` frames to the streams that asked, for channels whose count changed.

A request answers from that in-memory sum plus this worker's own live counts: it never touches
Redis and never scans clients. ``GET /channels`` costs one authorisation check per channel with
subscribers when the caller may not see them all (one in all when it may).

Limits: counts of other workers are up to about one second old (half a second until the writer's
tick, half a second until the reader's). A worker killed without a shutdown keeps its counts
until its hash's TTL runs out (``ttl``, 5 s; its streams' browsers reconnect elsewhere and are
counted there meanwhile, so a channel may be over-counted for those seconds); a worker that stops
normally deletes its hash at once. Every worker reads every other worker's hash every tick: Redis
work per tick grows with workers × channels with subscribers (fine for dozens of workers and
thousands of channels). While Redis cannot be reached the source reports ``down``, retries each
tick, and other workers' counts are dropped once they are ``ttl`` seconds old, leaving this
worker's own. With the in-memory backbone (one worker) the local counts are the whole answer.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid

import redis
from flask import Blueprint, jsonify, request

from plugins.redis_common import REGISTER_SCRIPT
from relay.api import InvalidEvent, Option, Section, Source, check_name, encode_event, hookimpl

SECTION = "presence"
PRESENCE_EVENT = "relay-presence"
TICK = 0.5  # seconds between exchanges with Redis and presence frames
FRAME_INTERVAL = 1.0  # at most one relay-presence frame per channel per this many seconds

log = logging.getLogger("relay.presence")


@hookimpl
def relay_config_sections():
    return [Section(SECTION, (
        Option("ttl", float, 5.0, "seconds a worker's subscriber counts outlive it in Redis when it is killed "
               "(Redis backbone only)", env="RELAY_PRESENCE_TTL", min=2.0),
    ), "Presence: subscriber counts per channel (GET /channels, the presence=1 stream option).")]


class PresenceFrame:
    """A ``relay-presence`` frame queued for one client like an event (see ``Client.offer``),
    with no id: the stream's resume logic skips it, and the browser's last event id stays."""

    __slots__ = ("channel", "frame", "timestamp")
    id = None

    def __init__(self, channel: str, frame: bytes):
        # No timestamp: relay_delivery_latency measures events from their acceptance, and the SSE
        # hub skips a sample whose timestamp is not a number.
        self.channel, self.frame, self.timestamp = channel, frame, None


def presence_frame(channel: str, subscribers: int) -> bytes:
    data = json.dumps({"channel": channel, "subscribers": subscribers}, separators=(",", ":"), ensure_ascii=False)
    return encode_event(data, PRESENCE_EVENT)


class Presence:
    """Subscriber counts for one app: this worker's (the SSE hub's) plus the other workers'."""

    def __init__(self, hub, settings: dict):
        self.hub = hub
        self.ttl = settings["ttl"]
        self.remote: dict[str, int] = {}  # the other workers' counts, summed
        self.remote_at = 0.0  # time.monotonic() of the last successful read of them
        self.fresh: set[str] = set()  # channels a presence stream joined since the last announcement

    def count(self, channel: str) -> int:
        return self.hub.counts.get(channel, 0) + self._remote().get(channel, 0)

    def totals(self) -> dict[str, int]:
        """Every channel with at least one subscriber, anywhere."""
        totals = dict(self._remote())
        for channel, count in self.hub.counts.items():
            totals[channel] = totals.get(channel, 0) + count
        return {channel: count for channel, count in totals.items() if count > 0}

    def _remote(self) -> dict[str, int]:
        # Counts that could not be refreshed for ttl seconds (Redis is away) are no longer trusted.
        return self.remote if time.monotonic() - self.remote_at <= self.ttl else {}

    def first_frames(self, client) -> bytes:
        """The ``relay-presence`` frames a ``presence=1`` stream starts with (one per channel)."""
        frames = []
        for channel in client.channels:
            client.presence[channel] = count = self.count(channel)
            self.fresh.add(channel)
            frames.append(presence_frame(channel, count))
        return b"".join(frames)


class PresenceSource(Source):
    """Shares this worker's counts through Redis (Redis backbone) and sends presence frames."""

    name = "presence"

    def __init__(self, presence: Presence, backbone=None):
        super().__init__()
        self.presence = presence
        self.backbone = backbone  # one that shares its Redis, or None: this worker's counts are all there is
        self.worker_id = ""
        self.published: dict[str, int] = {}  # this worker's counts as the hash in Redis holds them
        self.sent: dict[str, int] = {}  # per watched channel: the count last announced
        self.next_frame: dict[str, float] = {}  # per watched channel: when it may be announced again
        self._register = None

    @property
    def key(self) -> str:
        return f"{self.hash_prefix}{self.worker_id}"

    @property
    def workers_key(self) -> str:
        return f"{self.backbone.key_prefix}{{presence}}:workers"

    @property
    def hash_prefix(self) -> str:
        """Of each worker's hash: the workers' list's hash tag, so a transaction spans both."""
        return f"{self.backbone.key_prefix}{{presence}}:w:"

    def run(self, relay) -> None:
        # Made here, after gunicorn forked: one id per worker process and start.
        self.worker_id = self.worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        if self.backbone is None:
            self.set_status("up", "this worker's streams")
        try:
            while not self.stopping.is_set():
                if self.backbone is not None:
                    self._exchange()
                self._announce()
                self.stopping.wait(TICK)
        finally:
            if self.backbone is not None:
                self._withdraw()

    def _exchange(self) -> None:
        """Write this worker's changed counts, renew their TTL, read the other live workers'."""
        counts = dict(self.presence.hub.counts)
        ttl_ms = int(self.presence.ttl * 1000)
        try:
            client = self.backbone.shared_redis(self.workers_key)
            if self._register is None:
                self._register = client.register_script(REGISTER_SCRIPT)
            pipe = client.pipeline(transaction=True)
            pipe.exists(self.key)
            changed = {channel: n for channel, n in counts.items() if self.published.get(channel) != n}
            gone = [channel for channel in self.published if channel not in counts]
            if changed:
                pipe.hset(self.key, mapping=changed)
            if gone:
                pipe.hdel(self.key, *gone)
            pipe.pexpire(self.key, ttl_ms)  # after the writes: a hash HSET creates gets its TTL too
            self._register(keys=[self.workers_key], args=[self.worker_id, ttl_ms], client=pipe)
            results = pipe.execute()
            existed, workers = results[0], results[-1]
            # The hash had expired (a stall longer than ttl, a Redis restart): only the changes were
            # written into an empty one, so write everything at the next tick.
            self.published = counts if existed or not self.published else {}
            others = [w for w in workers if w.decode("utf-8", "replace") != self.worker_id]
            pipe = client.pipeline(transaction=False)
            for worker in others:
                pipe.hgetall(self.hash_prefix.encode() + worker)
            remote: dict[str, int] = {}
            for fields in pipe.execute() if others else []:
                for channel, count in fields.items():
                    channel = channel.decode("utf-8", "replace")
                    remote[channel] = remote.get(channel, 0) + int(count)
        except (OSError, ValueError, redis.RedisError) as exc:
            self.set_status("down", f"cannot share counts through Redis: {type(exc).__name__}: {exc}")
            return
        self.presence.remote, self.presence.remote_at = remote, time.monotonic()
        self.set_status("up", f"{len(others) + 1} worker(s)")

    def _announce(self) -> None:
        """A relay-presence frame to every presence stream whose channel's count changed."""
        hub, presence, now = self.presence.hub, self.presence, time.monotonic()
        for channel in [c for c in self.sent if c not in hub.watchers]:  # nobody asks any more
            del self.sent[channel]
            self.next_frame.pop(channel, None)
        # A newcomer got the count of when it joined, which may differ from what the others got.
        fresh, presence.fresh = presence.fresh, set()
        for channel, clients in list(hub.watchers.items()):
            count = presence.count(channel)
            if self.sent.get(channel) == count and channel not in fresh:
                continue
            if now < self.next_frame.get(channel, 0.0):
                if channel in fresh:
                    presence.fresh.add(channel)  # look again at the next tick
                continue
            frame = PresenceFrame(channel, presence_frame(channel, count))
            for client in list(clients):
                if client.presence.get(channel) != count:  # a newcomer may have it already
                    client.presence[channel] = count
                    client.offer(channel, frame)
            self.sent[channel], self.next_frame[channel] = count, now + FRAME_INTERVAL

    def _withdraw(self) -> None:
        """Stopping: take this worker's counts out of Redis now rather than at the TTL."""
        try:
            pipe = self.backbone.shared_redis(self.workers_key).pipeline(transaction=True)
            pipe.delete(self.key)
            pipe.zrem(self.workers_key, self.worker_id)
            pipe.execute()
        except (OSError, ValueError, redis.RedisError) as exc:
            log.warning("presence: could not remove this worker's counts from Redis (they expire in %gs): %s",
                        self.presence.ttl, exc)
        self.published = {}


def _shared_backbone(relay):
    """The backbone when it shares a Redis with plugins (``key_prefix``), else ``None``."""
    return relay.backbone if relay.backbone.key_prefix is not None else None


def _answer(body: dict):
    response = jsonify(body)
    response.headers["X-Relay-Worker"] = str(os.getpid())  # which worker answered, as on streams
    response.headers["Cache-Control"] = "no-cache"  # a count is stale after a second
    return response


def _deny(decision):
    return jsonify({"error": "unauthorized" if decision.status == 401 else "forbidden",
                    "message": decision.message}), decision.status


@hookimpl(trylast=True)  # after the SSE plugin made its hub
def relay_init_app(app, relay):
    hub = relay.extensions.get("sse")
    if hub is None:
        log.info("presence: the sse plugin is not loaded, so there are no streams to count; presence is off")
        return
    presence = relay.extensions["presence"] = Presence(hub, relay.config.section(SECTION))
    hub.presence_frames = presence.first_frames
    blueprint = Blueprint("presence", __name__)

    @blueprint.get("/channels/<channel>")
    def channel_presence(channel: str):
        try:
            check_name("channel", channel)
        except InvalidEvent as exc:
            return jsonify({"error": "invalid_request", "message": str(exc)}), 400
        decision = relay.authorize(request, "subscribe", [channel])
        if not decision.allowed:
            return _deny(decision)
        return _answer({"channel": channel, "subscribers": presence.count(channel)})

    @blueprint.get("/channels")
    def channels_presence():
        totals = presence.totals()
        names = sorted(totals)
        # One check for all first (an open relay, a token that covers everything), else one each.
        if names and not relay.authorize(request, "subscribe", names).allowed:
            names = [name for name in names if relay.authorize(request, "subscribe", [name]).allowed]
        return _answer({"channels": [{"channel": name, "subscribers": totals[name]} for name in names]})

    app.register_blueprint(blueprint)


@hookimpl
def relay_sources(relay):
    presence = relay.extensions.get("presence")
    return [PresenceSource(presence, _shared_backbone(relay))] if presence else []
