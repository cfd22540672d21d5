"""One Redis connection kept alive: connect, serve, and on failure reconnect with capped backoff.

A :class:`Link` owns exactly one connection at a time and closes it before opening the next, so a
worker never holds more than one connection per link, whatever happens. Subclasses implement
:meth:`Link.connect` (open and prepare the connection), :meth:`Link.serve` (loop until the source
stops; raise when the connection fails) and :meth:`Link.close`.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Callable

import gevent.event
import redis
import redis.backoff
import redis.connection
import redis.retry

from relay.envelope import BadMessage, reject
from relay.event import Event, InvalidEvent

from .messages import SOURCE
from .settings import RedisSettings

if TYPE_CHECKING:  # pragma: no cover
    from relay.runtime import Relay

log = logging.getLogger("relay.source.redis")


class LinkDead(redis.ConnectionError):
    """The connection looks open but Redis stopped answering (a half-open TCP connection)."""


# What a broken or refused connection raises: redis-py wraps most socket errors in ConnectionError
# or TimeoutError, a few OSErrors escape; a ResponseError (WRONGTYPE, NOPERM) is retried too,
# since an operator may fix it while relay runs.
CONNECTION_ERRORS = (redis.RedisError, OSError)


def make_pool(settings: RedisSettings, link: str) -> redis.ConnectionPool:
    """A connection pool for one link: one named connection, TCP keepalive, bounded waits.

    relay speaks RESP2 on its own connections whatever the URL asks (it needs nothing from RESP3,
    and redis-py turns on RESP3-only features by itself), and turns redis-py's own retries off:
    the link decides when and how fast to reconnect.
    """
    options = redis.connection.parse_url(settings.url)  # host, port, db, password, TLS, unix socket
    options.update(
        protocol=2,
        client_name=settings.connection_name(link),
        socket_connect_timeout=settings.connect_timeout,
        # A bound on every read that is not an explicit wait, so a silent server cannot hang a
        # link: a reply that started arriving, the hello on connect, an XREAD BLOCK.
        socket_timeout=settings.health_interval + (settings.stream_block if link in ("streams", "group") else 0),
        health_check_interval=0,  # the pub/sub link PINGs and waits for the answer (redis-py does not)
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
        max_connections=1,
    )
    if options.get("connection_class") is not redis.UnixDomainSocketConnection:
        options["socket_keepalive"] = True  # the kernel notices a peer that vanished
    return redis.ConnectionPool(**options)


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
        failures = 0
        while not self.stopping.is_set():
            try:
                self.connect()
                self.serve()
            except CONNECTION_ERRORS as exc:
                if self.stopping.is_set():
                    break
                failures = 0 if self.state == "up" else failures
                self.set_state("down", f"{type(exc).__name__}: {exc}")
                self.relay.stats.incr("source_connection_failures", source="redis", link=self.name)
            finally:
                self.close()
            if self.stopping.is_set():
                break
            delay = self.backoff(failures)
            failures += 1
            log.info("redis %s: reconnecting in %.2fs", self.name, delay)
            self.stopping.wait(delay)

    def backoff(self, failures: int) -> float:
        """Capped exponential delay with jitter, so many workers do not reconnect in step."""
        low, cap = self.settings.reconnect_min, max(self.settings.reconnect_min, self.settings.reconnect_max)
        return min(cap, low * 2 ** min(failures, 30)) * random.uniform(0.75, 1.0)

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
