"""Cursors: where a client stands on every partition, sent as the SSE ``id``.

``<ms>-<seq>~<p>=<ms>.<seq>[,<p>=<ms>.<seq>…]``: the event's stream id, then, per partition,
the last id delivered (partition number and both numbers in base 36, partitions in increasing
order). Ids of one partition come from one counter, so "every event of my channels in
partition ``p`` up to this id" is one number pair; a resume reads each channel from its
partition's position. The head is the event's id, which is an id its publisher chose when it has
one (such an id means something on its own channel only: the positions are what a resume reads).
With one partition (one Redis, by default) the cursor of an event with a stream id is that id
alone: ``<ms>-<seq>``. One position is at most ~19 characters (``1f=lxxxxxxx.xxxxxx,``), so a
cursor holds at most ``P`` of them, whatever the number of channels.
"""

from __future__ import annotations

import bisect

from relay.api import parse_stream_id

Id = tuple[int, int]
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


# Two digits per division: a cursor formats two or three numbers per event it gives.
_PAIRS = [a + b for a in _DIGITS for b in _DIGITS]


def base36(number: int) -> str:
    out = ""
    while number >= 1296:
        number, rest = divmod(number, 1296)
        out = _PAIRS[rest] + out
    return (_PAIRS[number].lstrip("0") or "0") + out  # the leading pair without its leading zero


class Positions(dict):
    """Partition -> last id delivered, with its cursor text rebuilt per change of one partition."""

    def __init__(self, items: dict[int, Id] | None = None):
        super().__init__()
        # Partitions in increasing order and their text, side by side: a change formats one
        # partition and joins, with no sort per event.
        self._order: list[int] = []
        self._parts: list[str] = []
        self._text: str | None = None
        for partition, at in (items or {}).items():
            self.advance(partition, at)

    def advance(self, partition: int, at: Id) -> bool:
        """Move ``partition`` to ``at`` unless it is already there or later; True when it moved."""
        before = self.get(partition)
        if before is not None and before >= at:
            return False
        self[partition] = at
        part = f"{base36(partition)}={base36(at[0])}.{base36(at[1])}"
        index = bisect.bisect_left(self._order, partition)
        if before is None:
            self._order.insert(index, partition)
            self._parts.insert(index, part)
        else:
            self._parts[index] = part
        self._text = None
        return True

    def text(self) -> str:
        if self._text is None:
            self._text = ",".join(self._parts)
        return self._text

    def cursor(self, event_id: str) -> str:
        return f"{event_id}~{self.text()}"

    def covers(self, other: dict[int, Id]) -> bool:
        """At or after ``other`` on every partition ``other`` names."""
        return all(self.get(p, (-1, -1)) >= at for p, at in other.items())


def parse_cursor(text: str, partitions: int) -> tuple[Id, Positions] | None:
    """``(reference id, positions)`` of a cursor this backbone gave, or ``None`` for any other text.

    The head is the event's id: its stream id, or an id its publisher chose (then the reference
    is the latest position). With one partition a stream id alone is a cursor: the worker's
    position is the event it last delivered (:func:`cursor_text`)."""
    head, sep, tail = text.rpartition("~")  # a chosen id may hold a "~"; the positions never do
    if not sep:
        head = tail
    event_id = parse_stream_id(head)
    if not sep:
        return (event_id, Positions({0: event_id})) if partitions == 1 and event_id is not None else None
    if not head or not tail:
        return None
    positions = Positions()
    try:
        for part in tail.split(","):
            number, _, at = part.partition("=")
            ms, _, seq = at.partition(".")
            partition = int(number, 36)
            if not 0 <= partition < partitions or not ms or not seq:
                return None
            positions.advance(partition, (int(ms, 36), int(seq, 36)))
    except ValueError:
        return None
    return event_id or max(positions.values()), positions


def cursor_text(event_id: str, entry_id: str, positions: Positions, partitions: int) -> str | None:
    """The SSE id of an event (stream entry ``entry_id``) delivered at ``positions``: ``None``
    (its id as it is) when there is one partition and the event's id is its entry id, which then
    says all the positions do."""
    if partitions == 1 and event_id == entry_id:
        return None
    return positions.cursor(event_id)
