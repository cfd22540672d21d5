"""One Redis connection kept alive: connect, serve, and on failure reconnect with capped backoff.

A :class:`Link` owns exactly one connection at a time and closes it before opening the next, so a
worker never holds more than one connection per link, whatever happens. Subclasses implement
:meth:`Link.connect` (open and prepare the connection), :meth:`Link.serve` (loop until the source
stops; raise when the connection fails) and :meth:`Link.close`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

import gevent.event
import redis

from plugins.redis_common import backoff, keep_connected
from plugins.redis_common import make_pool as make_redis_pool
from relay.api import BadMessage, Event, InvalidEvent, reject

from .messages import SOURCE
from .settings import RedisSettings

if TYPE_CHECKING:  # pragma: no cover
    from relay.api import Relay

log = logging.getLogger("relay.source.redis")


def make_pool(settings: RedisSettings, link: str) -> redis.ConnectionPool:
    """A connection pool for one link: one named connection (see :mod:`plugins.redis_common`)."""
    return make_redis_pool(
        settings.url, settings.connection_name(link), connect_timeout=settings.connect_timeout,
        read_timeout=settings.health_interval + (settings.stream_block if link in ("streams", "group") else 0))


class Link:
    """One connection of the source; ``state`` is ``starting``, ``up`` or ``down`` (``detail`` says why)."""

    name = "link"

    def __init__(self, relay: Relay, settings: RedisSettings, stopping: gevent.event.Event,
                 on_state: Callable[[], None]):
        self.relay = relay
        self.settings = settings
        self.stopping = stopping  # the source's: set when the worker stops
        self.on_state = on_state  # tells the source to recompute its status
        self.state = "starting"
        self.detail = ""

    # -- to implement -------------------------------------------------------------------------

    def connect(self) -> None:
        raise NotImplementedError

    def serve(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Keep the connection up until :meth:`stop`; never raises for connection failures."""
        keep_connected(name=self.name, log=log, stopping=self.stopping, connect=self.connect, serve=self.serve,
                       close=self.close, is_up=lambda: self.state == "up", failed=self._failed,
                       reconnect_min=self.settings.reconnect_min, reconnect_max=self.settings.reconnect_max)

    def _failed(self, exc: BaseException) -> None:
        self.set_state("down", f"{type(exc).__name__}: {exc}")
        self.relay.stats.incr("source_connection_failures", source="redis", link=self.name)

    def backoff(self, failures: int) -> float:
        """Capped exponential delay with jitter, so many workers do not reconnect in step."""
        return backoff(failures, self.settings.reconnect_min, self.settings.reconnect_max)

    def emit(self, where: str, payload: bytes | str, build: Callable[[], Event]) -> None:
        """Build one event and publish it; a bad message is counted, logged and skipped.

        :param where: where the message came from, for the log (``"channel 'emotes'"``).
        :param payload: the message as received, for the log's bounded excerpt.
        """
        try:
            self.relay.publish(build())
        except BadMessage as exc:
            reject(self.relay, SOURCE, where, payload, exc)
        except InvalidEvent as exc:  # the backbone refused it, e.g. an id it cannot take
            reject(self.relay, SOURCE, where, payload, BadMessage("invalid_field", str(exc)))
        except Exception:  # noqa: BLE001 - one message must never cost the connection
            log.exception("redis %s: publishing a message from %s failed", self.name, where)
            self.relay.stats.incr("source_errors", source=SOURCE)

    def set_state(self, state: str, detail: str = "") -> None:
        if (state, detail) != (self.state, self.detail):
            if state == "down":
                log.warning("redis %s connection is down: %s", self.name, detail)
            elif state == "up":
                log.info("redis %s connection is up%s", self.name, f": {detail}" if detail else "")
            self.state, self.detail = state, detail
            self.on_state()
