"""Ids and cursors of Kafka events.

* The **id** names the record: ``kafka:<topic>:<partition>:<offset>``. It is the same on every
  worker and after restarts; webhooks and dedupe use it.
* The **cursor**, sent as the SSE ``id``, says where the client stands on every partition:
  ``<id>~<topic>=<next>.<next>…[,<topic>=…]``, one group per relayed topic, with the offset of the
  next record to read of partitions 0, 1, 2 … in hexadecimal (empty for a partition the worker
  had not reached). A worker's cursors follow the order in which it published the records, so
  two workers may give the same record different cursors; each is exact for the client that got
  it: resuming from it replays every partition from its own position, nothing lost, nothing
  repeated, whatever the records' timestamps.

Topic names never hold ``:``, ``~``, ``=`` or ``,``; one longer than 180 characters is written as
``#`` and 16 hex digits of its SHA-256, resolved against the configured topics. A cursor longer
than :data:`relay.event.MAX_CURSOR_LENGTH` (1024: about 100 partitions with offsets below
4 billion) is not sent; such events carry their id only and cannot be resumed from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from relay.api import MAX_CURSOR_LENGTH

PREFIX = "kafka:"
LONG_TOPIC = 180  # longer names are hashed: the id stays under 256 characters


@dataclass(frozen=True)
class Position:
    """Where a client stands: the record it got last, and the next offset per partition."""

    topic: str
    partition: int
    offset: int
    next: dict[tuple[str, int], int]  # (topic, partition) -> next offset to read


def topic_token(topic: str) -> str:
    if len(topic) <= LONG_TOPIC:
        return topic
    return "#" + hashlib.sha256(topic.encode()).hexdigest()[:16]


def make_id(topic: str, partition: int, offset: int) -> str:
    return f"{PREFIX}{topic_token(topic)}:{partition}:{offset}"


def is_ours(event_id: str) -> bool:
    return event_id.startswith(PREFIX)


class Positions(dict):
    """Next offset to read per ``(topic, partition)``, with its cursor text kept up to date.

    Setting one partition rewrites one hex number and its topic's group: cheap enough for every
    record of the live path.
    """

    def __init__(self, topics: list[str]):
        super().__init__()
        self._groups: dict[str, list[str]] = {topic: [] for topic in topics}
        self._tokens = {topic: topic_token(topic) + "=" for topic in topics}
        self._texts: dict[str, str] = {}  # topic -> "<token>=<next>.<next>…", in ``topics`` order
        self._text = ""

    def __setitem__(self, tp: tuple[str, int], offset: int) -> None:
        super().__setitem__(tp, offset)
        topic, partition = tp
        group = self._groups.get(topic)
        if group is None:  # not a relayed topic: kept, but not part of cursors
            return
        if len(group) <= partition:
            group.extend([""] * (partition + 1 - len(group)))
            self._texts = {t: self._texts.get(t, "") for t in self._groups if self._groups[t]}  # keep the order
        group[partition] = format(offset, "x")
        self._texts[topic] = self._tokens[topic] + ".".join(group)
        self._text = ",".join(self._texts.values()) if len(self._texts) > 1 else self._texts[topic]

    def text(self) -> str:
        return self._text

    def cursor(self, event_id: str) -> str | None:
        """The cursor of the event ``event_id`` published at these positions, or ``None`` if too long."""
        cursor = event_id + "~" + self._text
        return cursor if len(cursor) <= MAX_CURSOR_LENGTH else None


def parse(cursor: str, topics: list[str]) -> Position | None:
    """The position a cursor names, or ``None`` if it is malformed, names a topic not relayed,
    or is an id without positions (a webhook's id, or an id from before cursors)."""
    if not cursor.startswith(PREFIX) or len(cursor) > MAX_CURSOR_LENGTH:
        return None
    event_id, sep, groups = cursor.partition("~")
    token, _, rest = event_id[len(PREFIX):].partition(":")
    parts = rest.split(":")
    if not sep or len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    by_token = {topic_token(t): t for t in topics}
    topic = by_token.get(token)
    if topic is None:
        return None
    positions: dict[tuple[str, int], int] = {}
    for group in groups.split(","):
        name, eq, offsets = group.partition("=")
        if not eq or name not in by_token:
            return None
        for partition, offset in enumerate(offsets.split(".")):
            if not offset:
                continue
            try:
                positions[(by_token[name], partition)] = int(offset, 16)
            except ValueError:
                return None
    partition, offset = int(parts[0]), int(parts[1])
    if positions.get((topic, partition)) != offset + 1:
        return None  # the cursor must place the client just after its own record
    return Position(topic, partition, offset, positions)


def cursor_of(event_id: str, positions: dict, topics: list[str]) -> str | None:
    """The cursor of ``event_id`` at ``positions`` (``(topic, partition)`` -> next offset)."""
    built = Positions(topics)
    for tp, offset in sorted(positions.items()):
        built[tp] = offset
    return built.cursor(event_id)
