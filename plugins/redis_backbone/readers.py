"""Channel-routed delivery: a worker hears only the channels its receivers want
(docs/design-redis-cluster.md, section 2).

The bus says when a channel gets its first receiver and loses its last (``channel_wanted``,
``channel_unwanted``). The :class:`Router` gives each wanted channel to the :class:`ShardReader`
of the master serving its slot: one connection and one greenlet per shard, never one per
channel, with one ``SSUBSCRIBE`` per slot (a multi-slot SSUBSCRIBE is CROSSSLOT). Unwanted
channels are unsubscribed after ``unsubscribe_delay`` (a reloading browser costs nothing);
a reader left without channels closes its connection.

Catch-up keeps delivery exact. Once a batch of subscriptions is confirmed, the reader reads
the streams of those channels, and of the channels it already hears in the same partitions,
from the last id delivered (or, for a channel just wanted, from the time its master gave when
it was wanted: :meth:`RedisBackbone.start_of`), merged by id: a partition's events then reach this worker in id order even across a
reconnect, which is what makes a per-partition position (the cursor) exact. On a connection
error, a ``sunsubscribe`` it did not ask for (the slot moved) or ``MOVED``, the reader
refreshes the slot map, hands channels that moved to their new shard's reader, reconnects and
catches up.
"""

from __future__ import annotations

import logging
import os
import time

import gevent
import gevent.event
import redis

from plugins.redis_common import CONNECTION_ERRORS, keep_connected, make_connection, read_subscribed

RECONNECT_MIN, RECONNECT_MAX = 0.5, 30.0
log = logging.getLogger("relay.backbone.redis")


class ShardReader:
    """The subscriptions of this worker on one master: one connection, one greenlet."""

    def __init__(self, router: Router, address: tuple[str, int]):
        self.router, self.address = router, address
        self.channels: set[str] = set()
        self.connection: redis.Connection | None = None
        self.ready = False  # connected: new channels are subscribed at once
        self.up = False  # every subscription sent on this connection was confirmed once
        self.down_since: float | None = None  # the connection failed and is not back yet
        # Per SSUBSCRIBE batch: (awaiting confirmation, all its channels, sent after a reconnect)
        self.batches: list[tuple[set[str], set[str], bool]] = []
        self.leaving: set[str] = set()  # SUNSUBSCRIBE sent: its confirmation is expected
        self.stopping = gevent.event.Event()
        self.greenlet = gevent.spawn(self.run)

    def add(self, channels: set[str]) -> None:
        new = channels - self.channels
        if not new:
            return
        self.channels |= new
        if self.ready:  # after a SUNSUBSCRIBE still in flight: Redis answers both, in order
            self._subscribe(new)

    def remove(self, channels: set[str], tell_redis: bool = True) -> None:
        gone = channels & self.channels
        self.channels -= gone  # a pending SSUBSCRIBE is still confirmed; its catch-up skips these
        if gone and self.ready and tell_redis:
            self.leaving |= gone
            self._send_by_slot("SUNSUBSCRIBE", gone)
        if not self.channels:
            self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self.router.forget(self)
        if gevent.getcurrent() is not self.greenlet:
            self.greenlet.kill(block=False)  # ends a read in progress; keep_connected closes the connection

    # -- the connection ---------------------------------------------------------------------------

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                keep_connected(name=f"cluster shard {self.address[0]}:{self.address[1]}", log=log,
                               stopping=self.stopping, connect=self._connect, serve=self._serve,
                               close=self._close, is_up=lambda: self.up, failed=self._failed,
                               reconnect_min=RECONNECT_MIN, reconnect_max=RECONNECT_MAX)
            except Exception as exc:
                log.exception("redis backbone: shard reader %s:%s failed", *self.address)
                self._failed(exc)
                self.stopping.wait(RECONNECT_MAX / 10)

    def _connect(self) -> None:
        if not self.channels:
            self.stop()
            return
        settings = self.router.backbone.settings
        self.connection = make_connection(
            self.router.topology.url(self.address), f"relay-backbone-sub-{os.getpid()}",
            connect_timeout=settings["connect_timeout"], read_timeout=settings["health_interval"] * 2)
        self.connection.connect()
        self.batches, self.leaving, self.up = [], set(), False
        self.ready = True  # then the snapshot, with no switch between: add() sends what comes later
        self._subscribe(set(self.channels), reconnected=True)

    def _subscribe(self, channels: set[str], reconnected: bool = False) -> None:
        self.batches.append((set(channels), set(channels), reconnected))
        self._send_by_slot("SSUBSCRIBE", channels)

    def _send_by_slot(self, command: str, channels: set[str]) -> None:
        by_slot: dict[int, list[str]] = {}
        layout = self.router.backbone.layout
        for channel in channels:
            keys = layout.of(channel)
            by_slot.setdefault(keys.slot, []).append(keys.announcement(channel))
        for names in by_slot.values():
            self.connection.send_command(command, *names)

    def _serve(self) -> None:
        if self.stopping.is_set():
            return
        read_subscribed(self.connection, self.stopping, self.router.backbone.settings["health_interval"],
                        self._handle)

    def _handle(self, reply) -> None:
        if not isinstance(reply, list) or not reply:
            return
        kind = reply[0]
        if kind == b"smessage":
            self.router.backbone.hear(reply[2], self.address)
        elif kind == b"ssubscribe":
            self._confirmed(self.router.backbone.layout.channel_of_announcement(reply[1].decode()))
        elif kind == b"sunsubscribe":
            channel = self.router.backbone.layout.channel_of_announcement(reply[1].decode())
            if channel in self.leaving:
                self.leaving.discard(channel)
            elif channel in self.channels:  # Redis dropped it: its slot moved (failover, resharding)
                raise redis.ConnectionError(f"the slot of {channel!r} moved away from {self.address}")

    def _confirmed(self, channel: str) -> None:
        for batch in self.batches:
            waiting, channels, reconnected = batch
            if channel in waiting:
                waiting.discard(channel)
                if not waiting:
                    self.batches.remove(batch)
                    self.router.backbone.catch_up(self, channels & self.channels, reconnected)
                break
        if not self.batches and not self.up:
            self.up, self.down_since = True, None
            self.router.status_changed()

    def _close(self) -> None:
        self.ready = False
        if self.connection is not None:
            self.connection.disconnect()
            self.connection = None

    def _failed(self, exc: BaseException) -> None:
        self.up = False
        self.down_since = self.down_since or time.monotonic()
        self.router.failed(self, exc)


class Router:
    """Wanted channels -> the reader of the shard that serves each."""

    def __init__(self, backbone):
        self.backbone, self.topology = backbone, backbone.topology
        self.readers: dict[tuple[str, int], ShardReader] = {}
        self.reader_of: dict[str, ShardReader] = {}
        self.unassigned: set[str] = set()  # wanted while no node answered: retried every second
        self.since: dict[str, int] = {}  # channel -> where its catch-up starts, when it was just wanted
        self._leaving: dict[str, gevent.Greenlet] = {}  # debounced unsubscriptions
        self.errors = 0

    def want(self, channel: str) -> None:
        timer = self._leaving.pop(channel, None)
        if timer is not None:
            timer.kill(block=False)
        if channel in self.reader_of or channel in self.unassigned:
            return
        self.since[channel] = self.backbone.start_of(channel)
        self.assign({channel})

    def unwant(self, channel: str) -> None:
        if channel in self._leaving:
            return
        delay = self.backbone.settings["unsubscribe_delay"]
        self._leaving[channel] = gevent.spawn_later(delay, self._drop, channel)

    def _drop(self, channel: str) -> None:
        log.info("redis backbone: unsubscribing %r", channel)
        self._leaving.pop(channel, None)
        self.unassigned.discard(channel)
        self.since.pop(channel, None)
        self.backbone.forget_channel(channel)
        reader = self.reader_of.pop(channel, None)
        if reader is not None:
            reader.remove({channel})

    def assign(self, channels: set[str]) -> None:
        """Give each channel to the reader of its master (starting readers as needed)."""
        by_node: dict[tuple[str, int], set[str]] = {}
        for channel in channels:
            try:
                address = self.topology.node_for(self.backbone.layout.of(channel).slot)
            except CONNECTION_ERRORS:
                self.unassigned.add(channel)
                continue
            self.unassigned.discard(channel)
            by_node.setdefault(address, set()).add(channel)
        for address, group in by_node.items():
            reader = self.readers.get(address)
            if reader is None or reader.stopping.is_set():
                reader = self.readers[address] = ShardReader(self, address)
            for channel in group:
                self.reader_of[channel] = reader
            reader.add(group)

    def rebalance(self) -> None:
        """After a slot-map refresh: move the channels whose slot now lives elsewhere."""
        moved: set[str] = set(self.unassigned)
        for channel, reader in list(self.reader_of.items()):
            try:
                address = self.topology.node_for(self.backbone.layout.of(channel).slot)
            except CONNECTION_ERRORS:
                return
            if address != reader.address:
                moved.add(channel)
                del self.reader_of[channel]
                reader.remove({channel}, tell_redis=False)
        if moved:
            self.assign(moved)

    def failed(self, reader: ShardReader, exc: BaseException) -> None:
        self.errors += 1
        self.backbone.relay.stats.incr("source_failures", source="redis-backbone")
        log.warning("redis backbone: shard %s:%s: %s: %s", *reader.address, type(exc).__name__, exc)
        self.status_changed()
        if self.topology.refresh():
            self.rebalance()

    def forget(self, reader: ShardReader) -> None:
        if self.readers.get(reader.address) is reader:
            del self.readers[reader.address]

    def status_changed(self) -> None:
        self.backbone.source.update_status()

    def all_up(self) -> bool:
        """No channel waits for a node, and no reader is failing (one still subscribing is fine)."""
        return not self.unassigned and not any(r.down_since for r in self.readers.values())

    def stop(self) -> None:
        for timer in self._leaving.values():
            timer.kill(block=False)
        for reader in list(self.readers.values()):
            reader.stop()
        gevent.joinall([r.greenlet for r in self.readers.values()], timeout=2)
