"""Which node serves which slot, read with ``CLUSTER SLOTS`` and refreshed by relay itself.

redis-py's ``RedisCluster`` keeps dialling a dead master until its slot map is refreshed, and
cannot even be built while a listed master is down (docs/design-redis-cluster.md): relay keeps
its own map, asks any node that answers, and refreshes on every connection error. A plain
Redis (``cluster support disabled``) is a map where one node serves every slot.

Clients to the nodes have no redis-py retries and short timeouts: a request greenlet that
publishes gets an answer (or an error, a 503) within ``command_timeout``, never a hang.
"""

from __future__ import annotations

import logging
import os
import time
from urllib.parse import urlsplit

import gevent
import gevent.lock
import redis

from plugins.redis_common import CONNECTION_ERRORS, make_pool

Address = tuple[str, int]
SCHEME = "redis+cluster://"
SLOTS = 16384
log = logging.getLogger("relay.backbone.redis")


def parse_seeds(url: str) -> list[Address]:
    """``redis+cluster://h:p[,h:p…][/…]`` -> ``[(h, p), …]``; any other URL (``redis://``,
    ``rediss://``, ``unix://``) names one node: :func:`node_address`."""
    if not url.startswith(SCHEME):
        return [node_address(url)]
    text = url.removeprefix(SCHEME).split("/", 1)[0].split("?", 1)[0]
    seeds = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        host, _, port = part.rpartition(":")
        seeds.append((host or "127.0.0.1", int(port)))
    if not seeds:
        raise ValueError(f"{url!r} names no node: redis+cluster://host:port[,host:port…]")
    return seeds


def node_address(url: str) -> Address:
    """The address of the one Redis a ``redis://``, ``rediss://`` or ``unix://`` URL names
    (``(socket path, 0)`` for a socket): the key of its pool and shard reader."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return (parts.path, 0)
    return (parts.hostname or "127.0.0.1", parts.port or 6379)


class Topology:
    """The slot map and one small connection pool per node."""

    def __init__(self, url: str, connect_timeout: float, command_timeout: float):
        self.seeds = parse_seeds(url)
        # A node named by a redis:// URL is reached with that URL (its database, password, TLS);
        # the nodes CLUSTER SLOTS names, with redis://host:port.
        self.urls = {} if url.startswith(SCHEME) else {self.seeds[0]: url}
        self.connect_timeout, self.command_timeout = connect_timeout, command_timeout
        self.slots: list[Address] | None = None  # slot -> address of its master
        self.standalone = False
        self._pools: dict[Address, redis.ConnectionPool] = {}
        self._refreshing = gevent.lock.Semaphore()
        self.refreshes = 0

    def url(self, address: Address) -> str:
        return self.urls.get(address) or f"redis://{address[0]}:{address[1]}"

    def client(self, address: Address) -> redis.Redis:
        """A client of one node: no redis-py retries, every command bounded by ``command_timeout``."""
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = make_pool(
                self.url(address), f"relay-backbone-{os.getpid()}", connect_timeout=self.connect_timeout,
                read_timeout=self.command_timeout, max_connections=8, wait=self.command_timeout)
        return redis.Redis(connection_pool=pool)

    def node_for(self, slot: int) -> Address:
        if self.slots is None:
            self.refresh()
        if self.slots is None:
            raise redis.ConnectionError(f"no node of {self.seeds} answers CLUSTER SLOTS")
        return self.slots[slot]

    def refresh(self) -> bool:
        """Read the slot map from the first node that answers (known masters first, then the
        seeds). One refresh at a time: a caller arriving during one waits for it instead of
        starting another. False when no node answered (the old map is kept)."""
        if self._refreshing.locked():
            self._refreshing.wait(self.connect_timeout + self.command_timeout)
            return self.slots is not None
        with self._refreshing:
            known = list(dict.fromkeys(self.slots)) if self.slots else []
            give_up = time.monotonic() + self.connect_timeout + self.command_timeout
            for address in dict.fromkeys([*known, *self.seeds]):
                if time.monotonic() > give_up:  # unreachable nodes: a publish waiting here answers 503
                    break
                try:
                    self.slots = self._read_map(address)
                    self.refreshes += 1
                    return True
                except CONNECTION_ERRORS as exc:
                    log.debug("slot map from %s:%s: %s", *address, exc)
            log.warning("redis backbone: no node of %s answered for the slot map", self.seeds)
            return False

    def refresh_soon(self) -> None:
        """Refresh in the background (a publish that failed answers 503 now, not after it)."""
        if not self._refreshing.locked():
            gevent.spawn(self.refresh)

    def _read_map(self, address: Address) -> list[Address]:
        client = self.client(address)
        version = str(client.info("server").get("redis_version", "0"))
        if int(version.split(".")[0]) < 7:  # no sharded pub/sub: nothing would ever be heard
            log.error("redis backbone: %s:%s runs Redis %s; the Redis backbone needs Redis 7.0 or later "
                      "(sharded pub/sub)", *address, version)
            raise redis.ConnectionError(f"Redis {version} at {address[0]}:{address[1]}: 7.0 or later needed")
        try:
            ranges = client.execute_command("CLUSTER", "SLOTS")
        except redis.ResponseError as exc:
            if "cluster support disabled" not in str(exc):
                raise
            self.standalone = True
            return [address] * SLOTS
        slots: list[Address | None] = [None] * SLOTS
        for first, last, master, *_replicas in ranges:
            host = master[0].decode() if isinstance(master[0], bytes) else master[0]
            owner = (host or address[0], int(master[1]))
            for slot in range(int(first), int(last) + 1):
                slots[slot] = owner
        missing = slots.count(None)
        if missing == SLOTS:
            raise redis.ConnectionError(f"{address[0]}:{address[1]} knows no master yet")
        if missing:  # a shard without a master yet: the node asked answers CLUSTERDOWN (a 503)
            slots = [owner or address for owner in slots]
        return slots  # type: ignore[return-value]

    def masters(self) -> set[Address]:
        return set(self.slots or ())

    def close(self) -> None:
        for pool in self._pools.values():
            pool.disconnect()
        self._pools.clear()
