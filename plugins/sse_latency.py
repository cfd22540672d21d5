"""Sampling delivery latencies for ``relay_delivery_latency_seconds``, at a bounded rate.

Observing a Prometheus histogram costs a few microseconds in multiprocess mode (a pid check,
a lock, three writes to a shared file), as much as writing the event itself. Observing every
delivery, or one per client per second, made it a fifth of a worker's CPU at 17,000 streams
getting one event a second each. The sampler observes every ``every``-th delivery, and after each
second (or sooner, once ``per_second`` were observed) picks ``every`` so that about
``per_second`` deliveries a second are observed, whatever the number of clients: at low rates
that is every delivery. A countdown, not a per-client clock, so the cost of a delivery that is
not observed is one decrement, and the observed ones are spread evenly over a fan-out's
clients, not taken from its first ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

PER_SECOND = 200  # observations a second per worker: enough for a p99 a minute, ~1 ms of CPU


class LatencySampler:
    """Feeds ``observe(seconds)`` one delivery in ``every``.

    :param observe: the histogram's ``observe`` (``Stats.observe`` bound to its name).
    :param per_second: about how many observations a second to make.
    :param clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, observe: Callable[[float], None], per_second: int = PER_SECOND,
                 clock: Callable[[], float] = time.monotonic):
        self._observe = observe
        self.per_second = per_second
        self._clock = clock
        self.every = 1  # deliveries per observation
        self.countdown = 1  # deliveries until the next observation (callers may keep it in a local)
        self._window_start = clock()
        self._observed = 0

    def delivered(self, event: Any, now: float | None = None) -> None:
        """One delivery of ``event`` (at ``now``, epoch seconds)."""
        self.countdown -= 1
        if self.countdown <= 0:
            self.countdown = self.sample(event, now)

    def sample(self, event: Any, now: float | None = None) -> int:
        """Observe this delivery of ``event``; returns how many deliveries to the next observation."""
        try:
            self._observe(max(0.0, (time.time() if now is None else now) - event.timestamp))
        except TypeError:
            pass  # a plugin replaced the timestamp with something that is not a number
        self._observed += 1
        clock = self._clock()
        elapsed = clock - self._window_start
        # Re-chosen each second, or as soon as a window has its fill (a burst after a quiet spell
        # must not be observed whole). Deliveries in the window = observations x every.
        if elapsed >= 1.0 or self._observed >= self.per_second:
            rate = self._observed * self.every / max(elapsed, 0.001)
            self.every = max(1, round(rate / self.per_second))
            self._window_start, self._observed = clock, 0
        return self.every
