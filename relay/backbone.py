"""The in-memory backbone: gives each event its place and keeps a bounded history for resume.

Ids the backbone assigns look like ``<boot>-<seq>``: ``boot`` changes with every process start,
so an id from before a restart is recognised as unknown instead of being confused with a new
event of the same number. Events that arrive with an id of their own (set by the publisher, or
a broker position such as a Redis Streams id) keep it and are found through an index.
"""

from __future__ import annotations

import heapq
import re
import time
from bisect import bisect_right
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from itertools import islice

from relay.event import Event

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int) -> str:
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = _DIGITS[rest] + out
        if not number:
            return out


@dataclass
class Replay:
    """What a resuming client gets before it goes live.

    :param events: the events after the client's last id, oldest first.
    :param complete: ``False`` when some events after that id can no longer be replayed.
    :param reason: why not complete: ``"unknown-id"`` or ``"evicted"``.
    """

    events: list[Event] = field(default_factory=list)
    complete: bool = True
    reason: str = ""


_STREAM_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")


def merge_replays(replays: list[Replay], limit: int) -> Replay:
    """One replay out of several answers for the same id (a source's log and the backbone's).

    Duplicate ids are dropped; when every id is a Redis stream id (``<ms>-<seq>``) the events
    are put in time order, else the answers follow one another. Complete only if all are.
    """
    seen: set[str] = set()
    events = []
    for replay in replays:
        for event in replay.events:
            if event.id not in seen:
                seen.add(event.id)
                events.append(event)
    matches = [_STREAM_ID.match(e.id or "") for e in events]
    if all(matches):
        order = {id(e): (int(m.group(1)), int(m.group(2))) for e, m in zip(events, matches)}
        events.sort(key=lambda e: order[id(e)])
    complete = all(r.complete for r in replays)
    if len(events) > limit:
        events, complete = events[-limit:], False
    reasons = [r.reason for r in replays if not r.complete]
    return Replay(events, complete, reasons[0] if reasons else ("" if complete else "evicted"))


class BackboneUnavailable(RuntimeError):
    """The shared backbone cannot take events right now (e.g. Redis is down): retry later."""


class Backbone:
    """Where events meet: gives each its id and delivers it to the workers that should see it.

    A backbone plugin (``relay_backbone``) subclasses this. ``publish`` must end, in every
    worker that should see the event, in exactly one call of the ``deliver`` function it was
    given (``Relay.deliver``).
    """

    def publish(self, event: Event, broadcast: bool) -> Event:
        raise NotImplementedError

    def replay(self, channels: list[str], last_event_id: str, limit: int) -> Replay | None:
        """Events after ``last_event_id`` on ``channels``; ``None`` when the id is unknown here."""
        raise NotImplementedError

    def replay_stored(self, channels: list[str], last_event_id: str, limit: int) -> Replay | None:
        """Like :meth:`replay`, from durable storage; asked after the ``relay_replay`` plugins,
        so a source whose ids look alike (Redis Streams) answers for its own ids first."""
        return None

    def sources(self) -> list:
        """Greenlets the backbone needs (readers), as :class:`relay.source.Source` objects."""
        return []

    def stats(self) -> dict:
        return {}


class MemoryBackbone(Backbone):
    """Bounded per-channel history in this process; the default backbone, for one worker."""

    def __init__(self, history_size: int, max_channels: int = 10_000, deliver=None):
        self.deliver = deliver
        self.history_size = history_size
        self.max_channels = max_channels
        self.boot = _base36(time.time_ns() // 1_000_000)
        self._seq = 0
        self._history: OrderedDict[str, deque[Event]] = OrderedDict()  # least recently used first
        self._evicted: dict[str, int] = {}  # per channel: the highest seq dropped from its history
        self._forgotten = 0  # the highest seq of any channel whose whole history was dropped
        self._by_id: dict[str, int] = {}  # ids not assigned here -> seq

    def publish(self, event: Event, broadcast: bool = False) -> Event:
        """Number, remember and deliver at once: in one process every event is local."""
        return self.publish_local(event, self.deliver)

    def publish_local(self, event: Event, deliver) -> Event:
        self.append(event)
        if deliver is not None:
            deliver(event)
        return event

    def append(self, event: Event) -> Event:
        """Number the event, give it an id if it has none, and keep it in its channel's history."""
        self._seq += 1
        event.seq = self._seq
        if event.id is None:
            event.id = f"{self.boot}-{self._seq}"
        else:
            self._by_id[event.id] = self._seq
        if self.history_size:
            self._remember(event)
        return event

    def _remember(self, event: Event) -> None:
        history = self._history.get(event.channel)
        if history is None:
            if len(self._history) >= self.max_channels:
                self._forget_oldest_channel()
            history = self._history[event.channel] = deque()
        else:
            self._history.move_to_end(event.channel)
        history.append(event)
        if len(history) > self.history_size:
            self._drop(history.popleft())

    def _drop(self, old: Event) -> None:
        self._evicted[old.channel] = old.seq
        if self._by_id.get(old.id) == old.seq:
            del self._by_id[old.id]

    def _forget_oldest_channel(self) -> None:
        channel, history = self._history.popitem(last=False)
        for old in history:
            self._drop(old)
        self._forgotten = max(self._forgotten, self._evicted.pop(channel, 0))

    def position(self, event_id: str) -> int | None:
        """The seq of ``event_id``, or ``None`` when this process never saw it or forgot it."""
        boot, _, number = event_id.rpartition("-")
        if boot == self.boot and number.isdigit():
            return int(number)
        return self._by_id.get(event_id)

    def replay(self, channels: list[str], last_event_id: str, limit: int) -> Replay | None:
        after = self.position(last_event_id)
        if after is None:
            return None
        complete = True
        streams = []
        for channel in channels:
            history = self._history.get(channel)
            floor = self._evicted.get(channel, 0) if history is not None else self._forgotten
            if after < floor:
                complete = False
            if history:
                start = bisect_right(history, after, key=lambda e: e.seq)
                streams.append(islice(history, start, None))
        events = list(heapq.merge(*streams, key=lambda e: e.seq))
        if len(events) > limit:
            events, complete = events[-limit:], False
        return Replay(events, complete, "" if complete else "evicted")

    def stats(self) -> dict[str, int]:
        return {"channels": len(self._history), "events": sum(len(h) for h in self._history.values()),
                "last_seq": self._seq}
