"""The queue between the SSE fan-out and the ``relay_deliver`` sinks.

Browsers get an event the moment the backbone delivers it; sinks may wait (a webhook store
behind another worker's write lock, a slow disk). If they ran in the greenlet that delivers,
a waiting sink would hold back every later event of that greenlet: the Redis backbone's one
reader, a broker source. So sinks run in one greenlet per worker, fed by this queue, in
delivery order. A publisher that must know its event was taken (an HTTP publish answering
202) waits for that one event with :meth:`SinkQueue.wait_for`; nobody else waits.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import gevent
import gevent.event
import gevent.queue

log = logging.getLogger("relay")
_BATCH = object()  # marks a queue item holding several events (put_batch)


class SinkQueue:
    """Runs ``run(event)`` for every queued event, in order, in one greenlet of its own.

    :param run: what to do with each event (``Relay.run_sinks``); it must not raise.
    :param run_batch: what to do with the events of one :meth:`put_batch`, in order
        (``Relay.run_sinks_batch``); by default ``run`` for each.
    :param size: events that may wait; past it :meth:`put` blocks its caller (backpressure on a
        source rather than unbounded memory).
    """

    def __init__(self, run: Callable[[Any], None], size: int = 10_000,
                 run_batch: Callable[[list], None] | None = None):
        self._run = run
        self._run_batch = run_batch
        self._queue: gevent.queue.Queue = gevent.queue.Queue(size)
        self._waiting: dict[int, list] = {}  # id(event) -> [event, done flag or None]
        self._greenlet: gevent.Greenlet | None = None
        self._stopped = False

    def put(self, event: Any) -> None:
        if self._stopped:
            self._run(event)  # after shutdown began: no greenlet will take it, run it here
            return
        item = [event, None]
        self._waiting[id(event)] = item
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._loop)
        self._queue.put(item)

    def put_batch(self, events: list) -> None:
        """:meth:`put` for each of ``events``, as one item of the queue; nobody waits for them."""
        if self._stopped:
            self._run_events(events)  # after shutdown began: no greenlet will take them
            return
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._loop)
        self._queue.put([events, _BATCH])

    def wait_for(self, event: Any, timeout: float) -> bool:
        """Wait until the sinks have had ``event``; ``True`` at once if it is not queued."""
        item = self._waiting.get(id(event))
        if item is None or item[0] is not event:
            return True
        if item[1] is None:
            item[1] = gevent.event.Event()
        return item[1].wait(timeout)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if item[1] is _BATCH:
                self._run_events(item[0])
                continue
            event, _ = item
            try:
                self._run_one(event)
            finally:
                self._waiting.pop(id(event), None)
                if item[1] is not None:
                    item[1].set()

    def _run_events(self, events: list) -> None:
        if self._run_batch is None:
            for event in events:
                self._run_one(event)
            return
        try:
            self._run_batch(events)
        except Exception:  # noqa: BLE001 - the loop must outlive any bug in a sink runner
            log.exception("delivering %d event(s) to the sinks failed", len(events))

    def _run_one(self, event: Any) -> None:
        try:
            self._run(event)
        except Exception:  # noqa: BLE001 - the loop must outlive any bug in a sink runner
            log.exception("delivering event %s to the sinks failed", getattr(event, "id", "?"))

    def stop(self, timeout: float) -> None:
        """Let the sinks have what is queued, for at most ``timeout`` seconds, then stop."""
        self._stopped = True
        if self._greenlet is None or self._greenlet.dead:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except gevent.queue.Full:
            pass
        self._greenlet.join(timeout)
        if not self._greenlet.dead:
            log.warning("stopping with %d event(s) not yet given to the sinks", self._queue.qsize())
            self._greenlet.kill(block=True, timeout=1)
