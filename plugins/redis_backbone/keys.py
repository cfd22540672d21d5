"""Partitions and the Redis keys of a channel: every key of a channel carries its partition's
hash tag, so a publish touches one slot (docs/design-redis-cluster.md, section 1).

A channel's partition is ``crc32(channel) mod P``. Partition ``k``'s tag is the first of
``p<k>``, ``p<k>.1``, ``p<k>.2``, … whose slot falls in the ``k``-th ``1/P`` of the slot range,
so the even slot ranges ``redis-cli --cluster create`` gives the masters hold equal numbers of
partitions. The table depends on ``P`` only: every worker computes the same one.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

from redis.crc import key_slot

SLOTS = 16384


@lru_cache(maxsize=8)
def partition_tags(partitions: int) -> tuple[str, ...]:
    """The hash tag of each partition (without braces), for ``partitions`` partitions."""
    tags = []
    for k in range(partitions):
        low, high = k * SLOTS // partitions, (k + 1) * SLOTS // partitions
        candidate, n = f"p{k}", 0
        while not low <= key_slot(candidate.encode()) < high:
            n += 1
            candidate = f"p{k}.{n}"
        tags.append(candidate)
    return tuple(tags)


def partition_of(channel: str, partitions: int) -> int:
    return zlib.crc32(channel.encode("utf-8")) % partitions


@dataclass(frozen=True)
class PartitionKeys:
    """The keys of one partition (``prefix`` e.g. ``relay:``), all in the partition's slot."""

    prefix: str
    number: int
    tag: str

    @property
    def slot(self) -> int:
        return key_slot(self.tag.encode())

    def key(self, name: str) -> str:
        return f"{self.prefix}{{{self.tag}}}:{name}"

    def dataset(self) -> list[str]:
        """What NOTE_RESTART and CHECK_SCRIPT take: clock, counter, run id, restart records."""
        return [self.key("clock"), self.key("seq"), self.key("run"), self.key("restarts")]

    def stream(self, channel: str) -> str:
        return self.key(f"s:{channel}")

    def log(self) -> str:
        """The partition's durable log: every event of its channels, read by the durable sinks
        through one consumer group (:mod:`plugins.redis_backbone.durable_log`)."""
        return self.key("log")

    def announcement(self, channel: str) -> str:
        """The channel's sharded pub/sub channel; tagged too, so it stays with the streams when
        slots move (Redis does not check a script's SPUBLISH against the slot)."""
        return self.key(f"a:{channel}")


class Layout:
    """The partitions of one deployment: ``P`` and the key prefix."""

    def __init__(self, prefix: str, partitions: int):
        self.prefix, self.partitions = prefix, partitions
        self._keys = [PartitionKeys(prefix, k, tag) for k, tag in enumerate(partition_tags(partitions))]
        self._announcement_prefix = len(prefix) + 1  # "relay:" then "{"

    def of(self, channel: str) -> PartitionKeys:
        return self._keys[partition_of(channel, self.partitions)]

    def partition(self, number: int) -> PartitionKeys:
        return self._keys[number]

    def channel_of_announcement(self, name: str) -> str:
        """The relay channel an announcement channel (``relay:{p3}:a:<channel>``) carries."""
        return name.split("}:a:", 1)[1]
