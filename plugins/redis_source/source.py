"""The Redis source: its links (pub/sub, Streams) in greenlets, and one status for ``/healthz``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import gevent

from relay.api import Replay, Source

from . import replay as replay_module
from .group import StreamGroupLink
from .link import Link
from .pubsub import PubSubLink
from .settings import RedisSettings
from .streams import StreamsLink, Unavailable

if TYPE_CHECKING:  # pragma: no cover
    from relay.api import Relay

log = logging.getLogger("relay.source.redis")

REPLAY_WAIT = 5.0  # seconds a resume waits for the Streams connection before giving up


class RedisSource(Source):
    """Up when every link is up; down (with each link's reason) while any link is down."""

    name = "redis"

    def __init__(self, relay: Relay, settings: RedisSettings):
        super().__init__()
        self.relay = relay
        self.settings = settings
        args = (relay, settings, self.stopping, self._refresh_status)  # one flag stops every link
        self.pubsub = PubSubLink(*args) if settings.has_pubsub else None
        self.streams = StreamsLink(*args) if settings.streams else None
        durable = bool(settings.streams and settings.group and relay.durable_sinks())
        self.group = StreamGroupLink(*args) if durable else None
        self.links: list[Link] = [link for link in (self.pubsub, self.streams, self.group) if link is not None]
        self._greenlets: list[gevent.Greenlet] = []

    def run(self, relay: Relay) -> None:
        self._greenlets = [gevent.spawn(link.run) for link in self.links]
        try:
            # Links handle connection failures themselves; one that raises has a bug: let the
            # supervisor log it and run the source again.
            gevent.joinall(self._greenlets, raise_error=True)
        finally:
            gevent.killall(self._greenlets, timeout=2)

    def stop(self) -> None:
        """Stop now: a link blocked on its socket is interrupted, and closes its connection."""
        super().stop()
        for greenlet in self._greenlets:
            greenlet.kill(block=False)

    def _refresh_status(self) -> None:
        states = {link.state for link in self.links}
        if "down" in states:
            status = "down"
        elif states == {"up"}:
            status = "up"
        else:
            status = "starting"
        self.set_status(status, "; ".join(f"{link.name}: {link.detail or link.state}" for link in self.links))

    def replay(self, channels: list[str], last_event_id: str, limit: int) -> Replay:
        """Events after a stream entry id, read back from Redis on the Streams connection."""
        try:
            return self.streams.call(
                lambda client: replay_module.replay(client, self.settings, channels, last_event_id, limit),
                REPLAY_WAIT)
        except Unavailable as exc:
            log.warning("cannot resume from %r: %s", last_event_id, exc)
            self.relay.stats.incr("source_replay_failures", source=self.name, reason="unavailable")
            return Replay([], complete=False, reason="unavailable")
