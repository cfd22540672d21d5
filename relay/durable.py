"""Offering a message to the durable sinks until all of them took it: one policy for every
source that reads through a consumer group (Kafka, Redis Streams).

A source reads messages in *lanes* (a Kafka partition, a Redis stream) that must stay in order.
For each message it calls :meth:`DurableOffers.offer` (or, for several messages of one lane,
:meth:`DurableOffers.offer_batch`); a sink that refuses (raises, times out) is offered the
message again after a backoff, per lane, while the sinks that took it are not asked again. The
lane waits; the others go on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Hashable

if TYPE_CHECKING:  # pragma: no cover
    from relay.event import Event
    from relay.runtime import Relay

RETRY_FIRST = 0.5  # seconds before a refused message is offered again; doubles up to RETRY_MAX
RETRY_MAX = 10.0


class DurableOffers:
    """Which sinks took each refused message, and each waiting lane's backoff."""

    def __init__(self, relay: Relay):
        self.relay = relay
        self.taken: dict[Hashable, set[str]] = {}  # message key -> durable sinks that took it
        self.delays: dict[Hashable, float] = {}  # lane -> its last backoff, until a message passes
        self.refused: list[str] = []  # the sinks that refused the last refused message, for logs

    def offer(self, event: Event, key: Hashable, lane: Hashable) -> float | None:
        """Offer ``event`` (message ``key`` of ``lane``) to each durable sink that has not taken
        it yet. ``None`` when every sink has it: the source may acknowledge or commit it. Else
        the seconds to wait before offering it again (0.5, 1, 2 … up to 10 per lane)."""
        wanted = set(self.relay.durable_sinks()) - self.taken.get(key, set())
        taken = self.relay.deliver_durable(event, wanted)
        if taken >= wanted:
            self.taken.pop(key, None)
            self.delays.pop(lane, None)
            return None
        self.taken.setdefault(key, set()).update(taken)
        self.refused = sorted(wanted - taken)
        delay = self.delays[lane] = min(self.delays.get(lane, RETRY_FIRST / 2) * 2, RETRY_MAX)
        return delay

    def offer_batch(self, events: list[Event], keys: list[Hashable], lane: Hashable) -> tuple[int, float | None]:
        """:meth:`offer` for several messages of one lane, in order, each sink taking them in
        one call where it can (``relay_deliver_durable_batch``).

        Returns ``(n, None)`` when every sink has every message, else ``(n, delay)``: the first
        ``n`` messages are taken by every sink (the source may commit them), the others are to
        be offered again after ``delay`` seconds.
        """
        done, refused = len(events), []
        for sink in self.relay.durable_sinks():
            todo = [i for i, key in enumerate(keys) if sink not in self.taken.get(key, ())]
            if not todo:
                continue
            taken = self.relay.deliver_durable_batch([events[i] for i in todo], sink)
            if taken < len(todo):
                refused.append(sink)
                done = min(done, todo[taken])
            for i in todo[:taken]:
                self.taken.setdefault(keys[i], set()).add(sink)
        for key in keys[:done]:
            self.taken.pop(key, None)
        if not refused:
            self.delays.pop(lane, None)
            return done, None
        self.refused = sorted(refused)
        delay = self.delays[lane] = min(self.delays.get(lane, RETRY_FIRST / 2) * 2, RETRY_MAX)
        return done, delay

    def forget(self, lane: Any) -> None:
        """The lane is gone (a partition revoked): its backoff no longer applies here."""
        self.delays.pop(lane, None)
