"""Which worker reads which partition's durable log: shares by rendezvous hashing over the live
readers (docs/design-redis-cluster.md, section 4).

Every worker with a durable sink lists itself, every second, in one sorted set scored by when
its listing runs out on Redis' clock (``<prefix>{durable}:<group>:readers``; the presence
plugin's registry, :data:`plugins.redis_common.REGISTER_SCRIPT`), and reads the live ones back.
Partition ``p`` belongs to the reader with the highest ``crc32("<p>/<reader>")``: every worker
computes the same owner from the same list, a reader that joins or leaves moves only its own
share, and the logs are read by at most about one worker each, so the idle cost is bounded by
the partitions, not the workers.

The shares are only about cost. Correctness is the consumer group's: while two workers' lists
differ (for up to a second) both may read a partition, and Redis still gives each entry to one
of them; entries a departed reader left unacknowledged are claimed by the partition's new owner
(``claim_idle``). Should the list be unreadable, a worker keeps its last shares (or, having
never read one, takes every partition).
"""

from __future__ import annotations

import logging
import zlib

import redis

from plugins.redis_common import CONNECTION_ERRORS, REGISTER_SCRIPT

LISTING_TTL = 5.0  # seconds a worker stays listed without renewing (it renews every second)
log = logging.getLogger("relay.backbone.redis")


def owner(partition: int, readers: list[str]) -> str:
    """The reader of ``partition`` among ``readers`` (rendezvous hashing)."""
    return max(readers, key=lambda reader: (zlib.crc32(f"{partition}/{reader}".encode()), reader))


class Shares:
    def __init__(self, backbone, group: str):
        self.backbone = backbone
        self.key = f"{backbone.prefix}{{durable}}:{group}:readers"
        self.readers: list[str] = []  # the live readers as last read
        self._script = None

    def renew(self, consumer: str) -> None:
        """List ``consumer`` again and read the others (called every second)."""
        try:
            client = self.backbone.shared_redis(self.key)
            if self._script is None:
                self._script = client.register_script(REGISTER_SCRIPT)
            listed = self._script(keys=[self.key], args=[consumer, int(LISTING_TTL * 1000)], client=client)
        except CONNECTION_ERRORS as exc:
            log.debug("redis backbone: durable log readers' list: %s", exc)
            return
        readers = sorted(reader.decode("utf-8", "replace") for reader in listed)
        if readers != self.readers:
            log.info("redis backbone: %d durable log reader(s) share the partitions", len(readers))
        self.readers = readers

    def owned(self, consumer: str, partitions: int) -> set[int]:
        """The partitions ``consumer`` reads: its share of the list, or all before a list was read."""
        readers = self.readers if consumer in self.readers else [*self.readers, consumer]
        return {p for p in range(partitions) if owner(p, readers) == consumer}

    def leave(self, consumer: str) -> None:
        """Stopping: out of the list now, so the others take its share at once."""
        try:
            self.backbone.shared_redis(self.key).zrem(self.key, consumer)
        except (OSError, redis.RedisError) as exc:
            log.debug("redis backbone: leaving the durable log readers' list: %s", exc)
