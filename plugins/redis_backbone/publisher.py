"""The publish script, sent from request greenlets by hand on connections of its own.

redis-py's general path (a pool that checks each connection for unread data before lending
it, every argument through its encoder, its retry wrapper, a pipeline object per call) cost a
worker ~200 µs of CPU more per event published: the largest part of what the Redis backbone
adds to the in-memory one's cost (benchmarks/README.md, the backbone scenarios). So the command
is packed from parts packed once per partition, and sent on up to
:data:`PUBLISH_CONNECTIONS` connections per worker, one command in flight on each. The script,
its keys and its arguments are those of :data:`.scripts.PUBLISH_SCRIPT`. With ``ack_replicas``
the backbone sends the script and ``WAIT`` through redis-py instead (a pipeline).
"""

from __future__ import annotations

import os

import gevent.lock
import redis

from plugins.redis_backbone.keys import PartitionKeys
from plugins.redis_backbone.scripts import PUBLISH_SCRIPT, RESTARTS_KEPT
from plugins.redis_common import make_connection

PUBLISH_CONNECTIONS = 4  # a worker's publishes in flight at once (each on a connection of its own)
Address = tuple[str, int]


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


class ScriptPublisher:
    def __init__(self, backbone, sha: str):
        self.backbone = backbone
        self.sha = sha.encode()
        self.idle: dict[Address, list[redis.Connection]] = {}
        self.slots = gevent.lock.BoundedSemaphore(PUBLISH_CONNECTIONS)
        self._heads: dict[int, bytes] = {}
        settings = backbone.settings
        self.limits = bulk(str(settings["maxlen"]).encode()) + bulk(str(int(settings["max_age"] * 1000)).encode())
        self.kept = bulk(str(RESTARTS_KEPT).encode())

    def _head(self, keys: PartitionKeys) -> bytes:
        """``EVALSHA sha 7`` and the partition's dataset keys and log, packed once."""
        head = self._heads.get(keys.number)
        if head is None:
            parts = [b"EVALSHA", self.sha, b"7", *(key.encode() for key in keys.dataset())]
            head = self._heads[keys.number] = b"*15\r\n" + b"".join(bulk(part) for part in parts)
        return head

    def publish(self, address: Address, keys: PartitionKeys, channel: str, body: str, log: int) -> str:
        """The new event's entry id. Raises ``redis.RedisError`` (``MOVED`` and ``CLUSTERDOWN``
        included) or ``OSError`` when the node cannot take it."""
        packed = b"".join((self._head(keys), bulk(keys.stream(channel).encode()),
                           bulk(keys.announcement(channel).encode()), bulk(keys.log().encode()), self.limits,
                           bulk(body.encode()), bulk(str(log).encode()), self.kept))
        wait = self.backbone.settings["command_timeout"]
        if not self.slots.acquire(timeout=wait):
            raise redis.ConnectionError(f"all {PUBLISH_CONNECTIONS} publish connections stayed busy for {wait:g}s")
        try:
            idle = self.idle.setdefault(address, [])
            connection = idle.pop() if idle else None
            retried = connection is None  # a connection that waited may have died with Redis: one retry
            load = False
            while True:
                try:
                    if connection is None:
                        connection = self._connect(address)
                    if load:  # a new, restarted or flushed node does not know the script yet
                        connection.send_command("SCRIPT", "LOAD", PUBLISH_SCRIPT)
                        connection.read_response()
                    connection.send_packed_command([packed], check_health=False)
                    entry_id = connection.read_response().decode()
                except redis.exceptions.NoScriptError:
                    if load:
                        idle.append(connection)
                        raise
                    load = True
                    continue
                except redis.ResponseError:  # refused (MOVED, CLUSTERDOWN, OOM): the connection is fine
                    idle.append(connection)
                    raise
                except redis.TimeoutError:  # slow, not gone: the script may still run
                    if connection is not None:
                        connection.disconnect()
                    raise
                except (redis.ConnectionError, OSError):
                    if connection is not None:
                        connection.disconnect()
                        connection = None
                    if retried:
                        raise
                    # At once, on a new connection: the usual cause is a Redis that restarted
                    # while this one sat idle. Should the answer alone have been lost, after the
                    # script ran, the event is stored twice: at least once, as a publisher
                    # retrying a 503 would have it, never lost.
                    retried = True
                    continue
                idle.append(connection)
                return entry_id
        finally:
            self.slots.release()

    def _connect(self, address: Address) -> redis.Connection:
        settings, topology = self.backbone.settings, self.backbone.topology
        connection = make_connection(topology.url(address), f"relay-backbone-pub-{os.getpid()}",
                                     connect_timeout=settings["connect_timeout"],
                                     read_timeout=settings["command_timeout"])
        connection.connect()
        return connection

    def close(self) -> None:
        for connections in self.idle.values():
            for connection in connections:
                connection.disconnect()
        self.idle.clear()
