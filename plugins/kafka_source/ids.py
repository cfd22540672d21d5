"""Event ids of Kafka records: ``kafka:<topic>:<partition>:<offset>:<timestamp ms>``.

An id is a function of the record alone, so every worker gives a record the same id. The
timestamp lets a resume place the partitions it has no offset for (see :mod:`.replay`). Topic
names never hold ``:``; a topic name too long for the 256-character id limit is replaced by
``#`` and 16 hex digits of its SHA-256, resolved against the configured topics.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PREFIX = "kafka:"
LONG_TOPIC = 180  # longer names are hashed: the id stays under 256 characters


@dataclass(frozen=True)
class Position:
    topic: str
    partition: int
    offset: int
    timestamp: int


def topic_token(topic: str) -> str:
    if len(topic) <= LONG_TOPIC:
        return topic
    return "#" + hashlib.sha256(topic.encode()).hexdigest()[:16]


def make_id(topic: str, partition: int, offset: int, timestamp: int) -> str:
    return f"{PREFIX}{topic_token(topic)}:{partition}:{offset}:{max(timestamp, -1)}"


def is_ours(event_id: str) -> bool:
    return event_id.startswith(PREFIX)


def parse(event_id: str, topics: list[str]) -> Position | None:
    """The position an id names, or ``None`` if it is malformed or names a topic not relayed."""
    if not event_id.startswith(PREFIX):
        return None
    token, sep, rest = event_id[len(PREFIX):].partition(":")
    parts = rest.split(":")
    if not sep or len(parts) != 3:
        return None
    partition, offset, timestamp = parts
    if not (partition.isdigit() and offset.isdigit() and (timestamp.isdigit() or timestamp == "-1")):
        return None
    topic = next((t for t in topics if topic_token(t) == token), None)
    if topic is None:
        return None
    return Position(topic, int(partition), int(offset), int(timestamp))
