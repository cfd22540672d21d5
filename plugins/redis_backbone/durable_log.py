"""Durable sinks on the sharded backbone: the partitions' logs read through one consumer group
(docs/design-redis-cluster.md, section 4).

The publish script appends every event to its partition's log (``relay:{p}:log``, same slot,
same script). Every worker that has a durable sink (a plugin implementing
``relay_deliver_durable``, such as webhooks) reads its share of the partitions' logs
(:mod:`.shares`: about one reader per partition, whatever the number of workers) through one
consumer group (``durable_group``): Redis gives each entry to one member of the whole
deployment, which offers it to the durable sinks (:class:`relay.api.DurableOffers`) and
acknowledges it (XACK) only once every sink took it; a refused entry stays pending and is
offered again after a backoff (its partition waits, the others go on). Entries a dead worker
read but never acknowledged are claimed (XAUTOCLAIM) by the partition's reader once idle for
``claim_idle`` seconds: at least once, duplicates only after such a claim.

One greenlet per shard (the master serving the partitions' slots) that serves a partition of
this worker's share, not one per partition. A multi-stream XREADGROUP would be CROSSSLOT, so a
sweep sends one non-blocking XREADGROUP per partition in one pipeline; when every partition
was empty it waits on one of them (in turn) with ``BLOCK log_wait``, so a new entry there ends
the wait at once, one elsewhere after at most ``log_wait``. A shard that fails waits (backoff)
and resumes on whichever master serves its partitions after the slot map is refreshed; nothing
unacknowledged is lost (it stays pending).
"""

from __future__ import annotations

import logging
import os
import socket
import time

import gevent
import gevent.event
import redis

from plugins.redis_backbone.shares import Shares
from plugins.redis_common import CONNECTION_ERRORS, decode_event
from relay.api import DurableOffers, event_rejected

Address = tuple[str, int]
RETRY_MIN, RETRY_MAX = 0.5, 5.0  # seconds a failed shard reader waits before its next attempt
log = logging.getLogger("relay.backbone.redis")


def log_mode(relay, settings: dict) -> tuple[int, bool]:
    """``(log argument of the publish script, read here)``.

    The argument: ``log_maxlen`` (append), ``-log_maxlen`` (append when the log exists, that is
    once a durable sink anywhere in the deployment created it with its consumer group) or 0
    (never). A durable sink counts when it is *set up* in this app: a plugin implementing
    ``relay_deliver_durable`` that keeps state in ``relay.extensions`` under its name (the
    webhooks sink does once it has endpoints or an admin token; loaded but idle, it would take
    and drop the deployment's events). ``durable_log = "auto"`` appends where one is set up,
    and elsewhere once the log exists: an instance without sinks publishing into a deployment
    whose other instances have them needs no setting. ``"true"``: always; ``"false"``: never.
    A worker reads when it has a sink set up and the log is not off."""
    has_sinks = any(name in relay.extensions for name in relay.durable_sinks())
    mode, maxlen = settings["durable_log"], settings["log_maxlen"]
    if mode == "false":
        return 0, False
    return (maxlen if mode == "true" or has_sinks else -maxlen), has_sinks


class DurableLog:
    """This worker's membership in the durable sinks' consumer group: one reader per shard."""

    def __init__(self, backbone):
        self.backbone, self.relay = backbone, backbone.relay
        settings = backbone.settings
        self.group = settings["durable_group"]
        self.batch = settings["log_batch"]
        self.claim_idle = settings["claim_idle"]
        # A blocking read must end well within the client's read timeout.
        self.wait = min(settings["log_wait"], settings["command_timeout"] / 2)
        self.consumer = ""
        self.offers = DurableOffers(self.relay)
        self.readers: dict[Address, gevent.Greenlet] = {}
        self.waiting: dict[int, float] = {}  # partition -> when to offer its refused entries again
        self.down: dict[Address, str] = {}  # shard -> last error, while its reader fails
        self.stopping = gevent.event.Event()
        self.counts = {"offered": 0, "acknowledged": 0, "claimed": 0, "redelivered": 0}
        self.shares = Shares(backbone, self.group)
        self.owned: set[int] = set()  # the partitions this worker reads (its share)

    def ensure_readers(self) -> None:
        """Renew this worker's share of the partitions, and run one reader per master serving a
        partition of it (called every second by the backbone's source): starts the missing ones,
        e.g. on a promoted replica after a failover, or for a share that grew."""
        if self.stopping.is_set() or self.backbone.topology.slots is None:
            return
        if not self.consumer:  # after fork: one member per worker
            self.consumer = f"{socket.gethostname()}:{os.getpid()}"
        self.shares.renew(self.consumer)
        self.owned = self.shares.owned(self.consumer, self.backbone.layout.partitions)
        for partition in [p for p in self.waiting if p not in self.owned]:
            del self.waiting[partition]  # its new owner claims what this worker left pending
        for address in {self._master_of(p) for p in self.owned}:
            reader = self.readers.get(address)
            if reader is None or reader.dead:
                self.readers[address] = gevent.spawn(self._read_shard, address)

    def stop(self) -> None:
        self.stopping.set()
        readers = list(self.readers.values())
        gevent.joinall(readers, timeout=self.wait + 1)  # a read in flight ends within log_wait
        gevent.killall([r for r in readers if not r.dead], block=False)
        if self.consumer:
            self.shares.leave(self.consumer)

    def stats(self) -> dict:
        return {**self.counts, "group": self.group, "consumer": self.consumer,
                "readers": sum(not r.dead for r in self.readers.values()), "waiting_partitions": len(self.waiting),
                "partitions": sorted(self.owned), "sharing_with": len(self.shares.readers),
                "shards_down": sorted(f"{h}:{p}" for h, p in self.down)}

    # -- one shard --------------------------------------------------------------------------------

    def _master_of(self, partition: int) -> Address:
        return self.backbone.topology.node_for(self.backbone.layout.partition(partition).slot)

    def _partitions_of(self, address: Address) -> list[int]:
        """This worker's partitions that ``address`` serves."""
        return [p for p in sorted(self.owned) if self._master_of(p) == address]

    def _read_shard(self, address: Address) -> None:
        """Read the logs of this worker's partitions that ``address`` serves until it serves none
        (the slot map or the shares moved them: another reader takes them) or the worker stops."""
        topology, retry, created, turn, next_claim = self.backbone.topology, RETRY_MIN, set(), 0, 0.0
        while not self.stopping.is_set():
            partitions = self._partitions_of(address)
            if not partitions:
                return
            try:
                client = topology.client(address)
                for p in set(partitions) - created:
                    self._create_group(client, p)
                    created.add(p)
                now = time.monotonic()
                if now >= next_claim:
                    next_claim = now + self.claim_idle / 2
                    for p in partitions:
                        self._claim(client, p)
                got = self._sweep(client, partitions, now)
                fresh = [p for p in partitions if p not in self.waiting]
                if not got and fresh:  # all empty: a bounded wait on one partition, in turn
                    p, turn = fresh[turn % len(fresh)], turn + 1
                    reply = client.xreadgroup(self.group, self.consumer, {self._log(p): ">"}, count=self.batch,
                                              block=max(1, int(self.wait * 1000)))
                    self._take(client, p, self._entries(reply), pending=False)
                elif not got:  # every partition waits for a refusing sink
                    self.stopping.wait(max(0.01, min(self.waiting.values()) - time.monotonic()))
                self.down.pop(address, None)
                retry = RETRY_MIN
            except CONNECTION_ERRORS as exc:
                if self.stopping.is_set():
                    return
                if address not in self.down:
                    log.warning("redis backbone: durable log reader of %s:%s: %s: %s (its partitions "
                                "wait; unacknowledged entries stay pending)", *address, type(exc).__name__, exc)
                self.down[address] = f"{type(exc).__name__}: {exc}"
                created.clear()  # a promoted replica has the group, but a restarted empty master has not
                topology.refresh_soon()
                self.stopping.wait(retry)
                retry = min(retry * 2, RETRY_MAX)

    def _log(self, partition: int) -> str:
        return self.backbone.layout.partition(partition).log()

    def _create_group(self, client: redis.Redis, partition: int) -> None:
        """The group starts at the log's beginning: everything in the log is for the sinks."""
        try:
            client.xgroup_create(self._log(partition), self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _sweep(self, client: redis.Redis, partitions: list[int], now: float) -> int:
        """One pipelined read of every partition: our own refused entries where their backoff is
        over, new entries elsewhere. How many entries were offered."""
        due = [p for p in partitions if p in self.waiting and now >= self.waiting[p]]
        fresh = [p for p in partitions if p not in self.waiting]
        pipe = client.pipeline(transaction=False)
        for p in due:
            pipe.xreadgroup(self.group, self.consumer, {self._log(p): "0"}, count=self.batch)
        for p in fresh:
            pipe.xreadgroup(self.group, self.consumer, {self._log(p): ">"}, count=self.batch)
        got = 0
        for i, (p, reply) in enumerate(zip(due + fresh, pipe.execute() if due or fresh else ())):
            got += self._take(client, p, self._entries(reply), pending=i < len(due))
            gevent.sleep(0)  # a long sweep must not keep SSE writers from running
        return got

    def _claim(self, client: redis.Redis, partition: int) -> None:
        """Take over entries a vanished member read but never acknowledged (its lease ran out)."""
        reply = client.xautoclaim(self._log(partition), self.group, self.consumer,
                                  int(self.claim_idle * 1000), start_id="0-0", count=self.batch)
        entries, deleted = reply[1], (reply[2] if len(reply) > 2 else [])
        if deleted:  # trimmed from the log while pending: Redis dropped them from the group
            log.warning("redis backbone: %d pending entr(ies) of partition %d were trimmed from its "
                        "log before the durable sinks took them (raise log_maxlen)", len(deleted), partition)
        if entries:
            self.counts["claimed"] += len(entries)
            log.info("redis backbone: claimed %d durable log entr(ies) of partition %d left by "
                     "another worker", len(entries), partition)
            self._take(client, partition, entries, pending=True)

    @staticmethod
    def _entries(reply) -> list:
        return reply[0][1] if reply else []

    def _take(self, client: redis.Redis, partition: int, entries: list, pending: bool) -> int:
        """Offer entries of one partition to the durable sinks, in order; acknowledge those every
        sink took. A refusal leaves the rest pending, offered again after the backoff."""
        if not entries:
            if pending:
                self.waiting.pop(partition, None)  # nothing of ours left (claimed by another worker)
            return 0
        log_key, events, keys, skip = self._log(partition), [], [], []
        for entry_id, fields in entries:
            entry = entry_id.decode()
            try:
                events.append(decode_event(entry, fields[b"e"]))
                keys.append((partition, entry))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:  # deleted, or not a relay's
                skip.append(entry)
                if fields:
                    event_rejected.send(self.relay, source="backbone", reason="bad_announcement", error=str(exc),
                                        where=f"durable log of partition {partition}", payload=repr(fields)[:200])
        if skip:
            client.xack(log_key, self.group, *skip)
        if not events:
            return len(entries)
        self.counts["offered"] += len(events)
        if pending:
            self.counts["redelivered"] += len(events)
        done, delay = self.offers.offer_batch(events, keys, lane=partition)
        if done:
            client.xack(log_key, self.group, *(entry for _, entry in keys[:done]))
            self.counts["acknowledged"] += done
        if delay is None:
            self.waiting.pop(partition, None)
        else:
            self.waiting[partition] = time.monotonic() + delay
            log.warning("durable sink(s) %s refused event %s of partition %d; offering it again in %.1fs",
                        ", ".join(self.offers.refused), events[done].id, partition, delay)
        return len(entries)
