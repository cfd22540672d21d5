"""The pub/sub link: one SUBSCRIBE/PSUBSCRIBE connection per worker, fanned out in memory.

It reads the connection itself (redis-py's ``Connection``, not ``PubSub``) so that it alone
decides when to reconnect, and so it can tell a live connection from a half-open one: after
``health_interval`` seconds of silence it sends a PING and, unlike redis-py's health check, waits
for the answer; no answer within another ``health_interval`` means the connection is dead (the
reading is :func:`plugins.redis_common.read_subscribed`, shared with the Redis backbone).
"""

from __future__ import annotations

import logging

import redis

from plugins.redis_common import read_subscribed

from .link import Link, make_pool
from .messages import from_pubsub

log = logging.getLogger("relay.source.redis")


class PubSubLink(Link):
    name = "pubsub"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.connection: redis.Connection | None = None

    def connect(self) -> None:
        settings = self.settings
        self.connection = make_pool(settings, self.name).make_connection()
        self.connection.connect()
        # Subscribing is part of connecting: after a reconnect the subscriptions are made again.
        if settings.channels:
            self.connection.send_command("SUBSCRIBE", *settings.channels)
        if settings.patterns:
            self.connection.send_command("PSUBSCRIBE", *settings.patterns)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.disconnect()
            self.connection = None

    def serve(self) -> None:
        expected = len(self.settings.channels) + len(self.settings.patterns)
        confirmed = 0

        def handle(reply) -> None:
            nonlocal confirmed
            if self.handle(reply):
                confirmed += 1
                if confirmed == expected:
                    self.set_state("up", f"{len(self.settings.channels)} channel(s), "
                                         f"{len(self.settings.patterns)} pattern(s)")

        read_subscribed(self.connection, self.stopping, self.settings.health_interval, handle)

    def handle(self, reply) -> bool:
        """Deliver a message; returns True for a subscription confirmation."""
        if not isinstance(reply, list) or not reply:
            return False  # a PONG: it proved the connection alive, nothing else to do
        kind = reply[0]
        if kind == b"message":
            self.deliver(reply[1], None, reply[2])
        elif kind == b"pmessage":
            self.deliver(reply[2], reply[1], reply[3])
        elif kind in (b"subscribe", b"psubscribe"):
            return True
        elif kind != b"pong":
            log.debug("redis pubsub: ignored a %r reply", kind)
        return False

    def deliver(self, channel: bytes, pattern: bytes | None, payload: bytes) -> None:
        self.emit(f"channel {channel.decode('utf-8', 'replace')!r}", payload,
                  lambda: from_pubsub(self.settings, channel, pattern, payload))
