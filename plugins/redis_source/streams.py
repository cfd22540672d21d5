"""The Streams link: one connection per worker that XREADs every configured stream.

The same connection answers resumes (see :mod:`.replay`): a resuming SSE request hands its work
to this link with :meth:`StreamsLink.call`, and the link runs it between two XREADs. So however
many browsers reconnect at once, the worker still holds one Streams connection; a resume waits at
most ``stream_block`` seconds for the XREAD in progress to return.

Positions (the last entry id read per stream) survive reconnects, so entries added while the
connection was down are read when it is back: Streams lose nothing. A worker that starts reads
from the end of each stream; what came before is served by resumes.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import gevent
import gevent.event
import gevent.queue
import redis

from .link import Link, make_pool
from .messages import from_stream

log = logging.getLogger("relay.source.redis")


class Unavailable(RuntimeError):
    """The Streams connection cannot answer now (Redis is down, or it took too long)."""


class StreamsLink(Link):
    name = "streams"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.client: redis.Redis | None = None
        self.positions: dict[str, str] = {}  # stream -> last entry id read
        self._requests: gevent.queue.Queue = gevent.queue.Queue()

    # -- work from other greenlets --------------------------------------------------------------

    def call(self, work: Callable[[redis.Redis], Any], timeout: float) -> Any:
        """Run ``work(client)`` on this link's connection and return its result.

        :raises Unavailable: when the link is down or does not answer within ``timeout``.
        """
        if self.state == "down" or self.stopping.is_set():
            raise Unavailable(f"the Redis Streams connection is down: {self.detail}")
        result = gevent.event.AsyncResult()
        self._requests.put((work, result))
        try:
            return result.get(timeout=timeout)
        except gevent.Timeout:
            raise Unavailable(f"the Redis Streams connection did not answer within {timeout:g}s") from None

    def _serve_requests(self) -> None:
        while not self._requests.empty():
            work, result = self._requests.get_nowait()
            try:
                result.set(work(self.client))
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                result.set_exception(Unavailable(f"{type(exc).__name__}: {exc}"))
                raise  # the connection is broken: reconnect
            except Exception as exc:  # noqa: BLE001 - the caller gets the error and logs it
                result.set_exception(exc)

    def _fail_requests(self, why: str) -> None:
        while not self._requests.empty():
            _, result = self._requests.get_nowait()
            result.set_exception(Unavailable(why))

    # -- the link -------------------------------------------------------------------------------

    def connect(self) -> None:
        self.client = redis.Redis(connection_pool=make_pool(self.settings, self.name))
        for stream in self.settings.streams:
            if stream not in self.positions:  # first connection: start after the newest entry
                newest = self.client.xrevrange(stream, "+", "-", count=1)
                self.positions[stream] = newest[0][0].decode() if newest else "0-0"
        self.set_state("up", f"{len(self.settings.streams)} stream(s)")

    def close(self) -> None:
        # Nothing serves queued requests until a new connection is up: answer them now.
        self._fail_requests(f"the Redis Streams connection closed ({self.state}: {self.detail})")
        if self.client is not None:
            self.client.connection_pool.disconnect()
            self.client = None

    def serve(self) -> None:
        block_ms = max(1, int(self.settings.stream_block * 1000))
        while not self.stopping.is_set():
            self._serve_requests()
            reply = self.client.xread(self.positions, count=self.settings.stream_batch, block=block_ms)
            for name, entries in reply or ():
                stream = name.decode("utf-8")
                for entry_id, fields in entries:
                    self.positions[stream] = entry_id.decode()
                    self.deliver(stream, entry_id, fields)
            if reply:
                gevent.sleep(0)  # a busy stream must not keep SSE writers from running

    def deliver(self, stream: str, entry_id: bytes, fields: dict) -> None:
        payload = fields.get(self.settings.stream_field.encode("utf-8"), repr(fields))
        self.emit(f"stream {stream!r} entry {entry_id.decode()}", payload,
                  lambda: from_stream(self.settings, stream, entry_id, fields))
