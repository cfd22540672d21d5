"""The in-memory backbone: gives each event its place and keeps a bounded history for resume.

Ids the backbone assigns look like ``<boot>-<seq>``: ``boot`` changes with every process start,
so an id from before a restart is recognised as unknown instead of being confused with a new
event of the same number. They are positions in this process, valid for every channel.

Events that arrive with an id of their own (chosen by the publisher, or a broker position such
as a Redis Streams id) keep it, and are found through an index by ``(channel, id)``: an id
means something only on its own channel, so whoever may publish on one channel can never
move, hide or duplicate the events of another by reusing their ids.

The history keeps, per channel, what a replay sends (the SSE frame) rather than the parsed
event, and is bounded in events (``history_size``), in bytes per channel (``history_bytes``)
and in bytes per process (``history_total_bytes``).
"""

from __future__ import annotations

import heapq
import json
import logging
import re
import sys
import time
from bisect import bisect_right
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable

from relay.event import Event, InvalidEvent

log = logging.getLogger("relay.backbone")

HISTORY_BYTES = 1 << 20  # default of ``history_bytes``: per channel
HISTORY_TOTAL_BYTES = 256 << 20  # default of ``history_total_bytes``: per process
# What keeping one event costs beyond its frame, id and name (measured with tracemalloc, rounded
# up): the record, its slot in the deque and, for a publisher's id, its index entry.
ENTRY_OVERHEAD = 320
CHANNEL_OVERHEAD = 1024  # a channel's deque, dict entries and name, beyond its events

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

    :param events: the events after the client's last id, oldest first: :class:`relay.event.Event`
        or, from the in-memory history, :class:`Kept` (both have ``channel``, ``id`` and ``frame``).
    :param complete: ``False`` when some events after that id can no longer be replayed.
    :param reason: why not complete: ``"unknown-id"`` or ``"evicted"``.
    :param follow: for a source whose cursors differ between workers (Kafka): called with each
        live event the stream receives after the replay; returns the event to send (or a copy
        whose cursor also covers what the replay sent) or ``None`` to skip one the replay already
        sent. Once its ``done`` attribute is true it is no longer called.
    """

    events: list[Event] = field(default_factory=list)
    complete: bool = True
    reason: str = ""
    follow: Callable[[Event], Event | None] | None = None


@dataclass(slots=True, eq=False)
class Kept:
    """What the history keeps of an event: enough to replay it, not its parsed ``data``.

    A 64 KB body of ``[[],[],…]`` parses into 1.6 MB of Python lists; its frame is 64 KB. A
    replay only sends frames, so that is all the history holds. ``data`` and ``text`` are read
    back from the frame, as a client reads them, for the rare consumer that wants them.
    """

    channel: str
    event: str
    id: str  # the SSE id the client got: the event's cursor when it has one
    seq: int
    frame: bytes
    is_json: bool  # ``data`` was not a string: the frame's data lines hold JSON
    size: int = 0  # what keeping it costs, in bytes (frame, id, name and overhead)

    @property
    def sse_id(self) -> str:
        return self.id

    @property
    def text(self) -> str:
        """The data as a client reads it (line breaks become LF)."""
        lines = self.frame.decode("utf-8").split("\n")
        return "\n".join(line[6:] for line in lines if line.startswith("data: "))

    @property
    def data(self) -> Any:
        return json.loads(self.text) if self.is_json else self.text


def keep(event: Event, channel: str | None = None) -> Kept:
    """The history's record of ``event``; ``channel`` may be an equal string to share."""
    frame = event.frame
    sse_id = event.sse_id  # what a resuming client sends back: the history is looked up by it
    size = sys.getsizeof(frame) + sys.getsizeof(sse_id) + sys.getsizeof(event.event) + ENTRY_OVERHEAD
    return Kept(channel or event.channel, event.event, sse_id, event.seq, frame,
                not isinstance(event.data, str), size)


_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")  # what XADD generates: <milliseconds>-<sequence>


def parse_stream_id(text: str) -> tuple[int, int] | None:
    """``(milliseconds, sequence)`` of a Redis stream entry id, or ``None`` when ``text`` is not one.

    The one parser of ``<digits>-<digits>`` ids (the Redis backbone's, Redis Streams entries'):
    the whole text, ASCII digits only, tuples order as Redis orders the entries.
    """
    match = _STREAM_ID.fullmatch(text)
    return (int(match[1]), int(match[2])) if match else None
_RESERVED_ID = re.compile(r"^[0-9]+-[0-9]+$|^kafka:")


def check_chosen_id(event_id: str, boot: str = "") -> None:
    """Refuse a publisher-chosen id that has the form of an id relay assigns itself.

    ``<digits>-<digits>`` is a Redis stream entry id (the Redis backbone's ids, Redis Streams
    entries), ``kafka:…`` a Kafka record, ``<boot>-<n>`` this process's own numbering: a resume
    from such an id would be read as a position in that log, for every channel of the stream.

    :raises InvalidEvent: naming ``id``.
    """
    number = event_id[len(boot) + 1:]
    boot_form = bool(boot) and event_id.startswith(boot + "-") and number.isascii() and number.isdigit()
    if _RESERVED_ID.match(event_id) or boot_form:
        raise InvalidEvent("id", f"{event_id!r} has the form of an id relay assigns itself "
                                 "('<digits>-<digits>', 'kafka:…' or this relay's '<boot>-<n>'); choose another")


def merge_replays(replays: list[Replay], limit: int) -> Replay:
    """One replay out of several answers for the same id (a source's log and the backbone's).

    Duplicates (the same id on the same channel) are dropped; when every id is a Redis stream id
    (``<ms>-<seq>``) the events are put in time order, else the answers follow one another.
    Complete only if all are.
    """
    seen: set[tuple[str, str]] = set()
    events = []
    for replay in replays:
        for event in replay.events:
            key = (event.channel, event.id)  # an id means something on its own channel only
            if key not in seen:
                seen.add(key)
                events.append(event)
    keys = [parse_stream_id(e.id or "") for e in events]
    if all(keys):
        order = {id(e): key for e, key in zip(events, keys)}
        events.sort(key=lambda e: order[id(e)])
    complete = all(r.complete for r in replays)
    if len(events) > limit:
        events, complete = events[-limit:], False
    reasons = [r.reason for r in replays if not r.complete]
    # relay_replay stops at the first answer and the backbone's storage has no follow: at most one.
    follow = next((r.follow for r in replays if r.follow is not None), None)
    return Replay(events, complete, reasons[0] if reasons else ("" if complete else "evicted"), follow)


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

    def publish_batch(self, events: list[Event]) -> list[Event | InvalidEvent]:
        """``publish(event, broadcast=False)`` for each of a source's events, in order; what each
        gave: the event, or the :class:`InvalidEvent` that refused it. A backbone may deliver the
        batch at once (``Relay.deliver_batch``), as the built-in ones do."""
        results: list[Event | InvalidEvent] = []
        for event in events:
            try:
                results.append(self.publish(event, False))
            except InvalidEvent as exc:
                results.append(exc)
        return results

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

    #: The prefix of the deployment's keys when the backbone offers its Redis to plugins that
    #: share state between workers (:meth:`shared_redis`); ``None`` when it has no Redis.
    key_prefix: str | None = None

    def shared_redis(self, key: str):
        """A redis-py client of the Redis node that holds ``key`` (a name starting with
        :attr:`key_prefix`). Keys with the same ``{tag}`` are on the same node, so one
        transaction may span them (Redis Cluster). Commands are bounded by the backbone's
        timeouts; errors are ``redis.RedisError`` or ``OSError``."""
        raise NotImplementedError

    def stats(self) -> dict:
        return {}


class _History:
    """One channel's kept events, oldest first, and what they cost."""

    __slots__ = ("channel", "entries", "bytes", "floor")

    def __init__(self, channel: str):
        self.channel = channel
        self.entries: deque[Kept] = deque()
        self.bytes = 0
        self.floor = 0  # the highest seq dropped: a resume from before it has missed something


class MemoryBackbone(Backbone):
    """Bounded per-channel history in this process; the default backbone, for one worker.

    :param history_size: events kept per channel (0: no history).
    :param max_channels: channels kept; the least recently published is forgotten beyond it.
    :param history_bytes: bytes one channel's history may hold; its oldest events go first.
    :param total_bytes: bytes every channel's history together may hold; the oldest events of
        the least recently published channels go first.
    :param deliver: called with each published event (``Relay.deliver``); ``deliver_batch``
        with each batch of a source's events (``Relay.deliver_batch``), else ``deliver`` per event.
    """

    def __init__(self, history_size: int, max_channels: int = 10_000, deliver=None,
                 history_bytes: int = HISTORY_BYTES, total_bytes: int = HISTORY_TOTAL_BYTES, deliver_batch=None):
        self.deliver = deliver
        self.deliver_batch = deliver_batch
        self.history_size = history_size
        self.max_channels = max_channels
        self.history_bytes = history_bytes
        self.total_bytes = total_bytes
        self.boot = _base36(time.time_ns() // 1_000_000)
        self._seq = 0
        self._history: OrderedDict[str, _History] = OrderedDict()  # least recently used first
        self._bytes = 0  # what all histories cost, channel overheads included
        self._forgotten = 0  # the highest seq of any channel whose whole history was dropped
        self._by_id: dict[tuple[str, str], int] = {}  # (channel, id not assigned here) -> seq

    def publish(self, event: Event, broadcast: bool = False) -> Event:
        """Number, remember and deliver at once: in one process every event is local."""
        if broadcast and event.id is not None:  # chosen by an HTTP publisher
            check_chosen_id(event.id, self.boot)
        return self.publish_local(event, self.deliver)

    def publish_local(self, event: Event, deliver) -> Event:
        self.append(event)
        if deliver is not None:
            deliver(event)
        return event

    def publish_batch(self, events: list[Event]) -> list[Event]:
        if self.deliver_batch is None:
            return [self.publish_local(event, self.deliver) for event in events]
        return self.publish_local_batch(events, self.deliver_batch)

    def publish_local_batch(self, events: list[Event], deliver_batch) -> list[Event]:
        """:meth:`publish_local` for each of ``events``, delivered together: ``deliver_batch(events)``."""
        for event in events:
            self.append(event)
        if deliver_batch is not None and events:
            deliver_batch(events)
        return events

    def append(self, event: Event) -> Event:
        """Number the event, give it an id if it has none, and keep it in its channel's history."""
        self._seq += 1
        event.seq = self._seq
        chosen = event.id is not None
        if not chosen:
            event.id = f"{self.boot}-{self._seq}"
        if self.history_size:
            self._remember(event, chosen)
        return event

    def _remember(self, event: Event, chosen: bool) -> None:
        history = self._history.get(event.channel)
        if history is None:
            if len(self._history) >= self.max_channels:
                self._forget(next(iter(self._history)))
            history = self._history[event.channel] = _History(event.channel)
            self._bytes += CHANNEL_OVERHEAD + sys.getsizeof(event.channel)
        else:
            self._history.move_to_end(event.channel)
        try:
            kept = keep(event, history.channel)
        except Exception:  # noqa: BLE001 - no client can receive it either; never break a publish
            log.exception("event %s on %r cannot be framed; not kept for resume", event.id, event.channel)
            return
        history.entries.append(kept)
        history.bytes += kept.size
        self._bytes += kept.size
        if chosen:  # the first event with this id on this channel: a resume from it loses nothing
            self._by_id.setdefault((history.channel, kept.id), kept.seq)
        while history.entries and (len(history.entries) > self.history_size or history.bytes > self.history_bytes):
            self._drop(history)
        while self._bytes > self.total_bytes and self._history:  # the least recently used pay first
            oldest = next(iter(self._history.values()))
            if oldest.entries:
                self._drop(oldest)
            else:
                self._forget(oldest.channel)

    def _drop(self, history: _History) -> None:
        """Drop the oldest event of ``history``; a resume from before it is told it missed some."""
        old = history.entries.popleft()
        history.bytes -= old.size
        self._bytes -= old.size
        history.floor = old.seq
        key = (history.channel, old.id)
        if self._by_id.get(key) == old.seq:
            del self._by_id[key]

    def _forget(self, channel: str) -> None:
        """Drop a whole channel's history (least recently used beyond a limit)."""
        history = self._history[channel]
        while history.entries:
            self._drop(history)
        del self._history[channel]
        self._bytes -= CHANNEL_OVERHEAD + sys.getsizeof(channel)
        self._forgotten = max(self._forgotten, history.floor)

    def position(self, event_id: str, channels: list[str] | tuple = ()) -> int | None:
        """The seq a client that last saw ``event_id`` on one of ``channels`` is at, or ``None``
        when this process never saw that id there or forgot it.

        ``<boot>-<seq>`` ids are positions valid on every channel. Any other id is looked up on
        the stream's own channels only. When the id could name several events (the same id on
        two of the channels, or a publisher's id that looks like one of ours), the earliest
        is taken: the client may get some events twice, but never misses one.
        """
        found = [self._by_id.get((channel, event_id)) for channel in channels]
        boot, _, number = event_id.rpartition("-")
        if boot == self.boot and number.isascii() and number.isdigit() and 0 < int(number) <= self._seq:
            found.append(int(number))
        found = [seq for seq in found if seq is not None]
        return min(found) if found else None

    def replay(self, channels: list[str], last_event_id: str, limit: int) -> Replay | None:
        after = self.position(last_event_id, channels)
        if after is None:
            return None
        complete = True
        streams = []
        for channel in channels:
            history = self._history.get(channel)
            floor = history.floor if history is not None else self._forgotten
            if after < floor:
                complete = False
            if history is not None and history.entries:
                start = bisect_right(history.entries, after, key=lambda e: e.seq)
                streams.append(islice(history.entries, start, None))
        events = list(heapq.merge(*streams, key=lambda e: e.seq))
        if len(events) > limit:
            events, complete = events[-limit:], False
        return Replay(events, complete, "" if complete else "evicted")

    def stats(self) -> dict[str, int]:
        return {"channels": len(self._history), "events": sum(len(h.entries) for h in self._history.values()),
                "bytes": self._bytes, "last_seq": self._seq}
