"""The sharded backbone: publish per partition, hear only wanted channels, resume by cursor.

* **Publish** (:meth:`RedisBackbone.publish`): one script in the channel's partition's slot,
  sent to that slot's master through a client without retries; ``WAIT ack_replicas`` on the
  same connection when asked. Any connection error, ``MOVED``, ``CLUSTERDOWN`` or ``TRYAGAIN``
  refreshes the slot map in the background and refuses with :class:`BackboneUnavailable` (503).
* **Delivery** (:meth:`hear`): an announcement heard by a shard reader is delivered once per
  channel (the last id delivered per channel drops what a catch-up already gave), and gets a
  cursor: its id and this worker's last delivered id on every partition it heard.
* **Resume**: from this worker's memory when it gave the cursor, else from the streams
  (:meth:`replay_stored`): each channel from its partition's position, merged by id, then a
  :class:`Follow` keeps the cursors of the live events that come next exact for that client.
"""

from __future__ import annotations

import hashlib
import logging
import time

import redis
from redis.crc import key_slot

from plugins.redis_backbone.cursor import Id, Positions, cursor_text, parse_cursor
from plugins.redis_backbone.durable_log import DurableLog, log_mode
from plugins.redis_backbone.keys import Layout, PartitionKeys
from plugins.redis_backbone.publisher import ScriptPublisher
from plugins.redis_backbone.readers import Router, ShardReader
from plugins.redis_backbone.scripts import CHECK_SCRIPT, PUBLISH_SCRIPT, RESTARTS_KEPT
from plugins.redis_backbone.topology import SCHEME, Topology
from plugins.redis_common import CONNECTION_ERRORS, decode_event, encode_event
from relay.api import (
    MISSED_EVENT,
    Backbone,
    BackboneUnavailable,
    Event,
    MemoryBackbone,
    Replay,
    Source,
    check_chosen_id,
    event_rejected,
    parse_stream_id,
)

log = logging.getLogger("relay.backbone.redis")
FOLLOW_AT_LEAST = 5.0  # seconds a resumed stream's live cursors are checked, whatever they say


class Script:
    """A Lua script sent by its SHA1, loaded on the node that does not know it yet."""

    def __init__(self, text: str):
        self.text, self.sha = text, hashlib.sha1(text.encode()).hexdigest()

    def run(self, client: redis.Redis, keys: list[str], args: list, then: tuple = ()) -> list:
        """The script's answer, then those of the ``then`` commands, on one connection."""
        for attempt in (0, 1):
            pipe = client.pipeline(transaction=False)
            pipe.evalsha(self.sha, len(keys), *keys, *args)
            for command in then:
                pipe.execute_command(*command)
            try:
                return pipe.execute()
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                client.script_load(self.text)
        raise AssertionError("unreachable")


PUBLISH = Script(PUBLISH_SCRIPT)
CHECK = Script(CHECK_SCRIPT)


class RedisBackbone(Backbone):
    def __init__(self, relay, url: str, settings: dict):
        self.relay, self.url, self.settings = relay, url, settings
        # One Redis: one partition, so one counter orders every event (and ids stay '<ms>-<seq>').
        partitions = settings["partitions"] or (32 if url.startswith(SCHEME) else 1)
        self.layout = Layout(settings["prefix"], partitions)
        self.prefix = settings["prefix"]
        self.topology = Topology(url, settings["connect_timeout"], settings["command_timeout"])
        # Recent events for fast resume, by the cursor this worker gave them.
        self.memory = MemoryBackbone(relay.history_size, history_bytes=relay.history_bytes,
                                     total_bytes=relay.history_total_bytes)
        self.positions = Positions()  # partition -> last id this worker delivered
        self.last_ids: dict[str, Id] = {}  # wanted channel -> last id delivered
        # Partition -> the last id this worker had delivered when it found that Redis lost events
        # of that partition: a resume from there or before crossed the loss.
        self.lost_up_to: dict[int, Id] = {}
        self.heard_messages = self.heard_bytes = 0
        self.router = Router(self)
        self.publisher = ScriptPublisher(self, PUBLISH.sha)
        # Durable sinks read every event from the partitions' logs (durable_log.py), not here;
        # decided once the plugins have set up their state (relay_init_app): durable_mode().
        self._mode: tuple[int, bool] | None = None
        self.durable: DurableLog | None = None
        self.source = BackboneSource(self)
        relay.bus.channel_wanted.connect(self._wanted, weak=False)
        relay.bus.channel_unwanted.connect(self._unwanted, weak=False)

    def durable_mode(self) -> tuple[int, bool]:
        """(the publish script's log argument, read the log here): see :func:`.durable_log.log_mode`."""
        if self._mode is None:
            self._mode = log_mode(self.relay, self.settings)
            if self._mode[1]:
                self.durable = DurableLog(self)
        return self._mode

    def _wanted(self, channel: str) -> None:
        self.router.want(channel)

    def _unwanted(self, channel: str) -> None:
        self.router.unwant(channel)

    # -- publishing -------------------------------------------------------------------------------

    def publish(self, event: Event, broadcast: bool = False) -> Event:
        if not broadcast:  # every worker got it from its own source: deliver it here only
            return self.memory.publish_local(event, self.relay.deliver)
        if event.id is not None:  # kept beside the position, which is what a resume reads
            check_chosen_id(event.id)
        keys = self.layout.of(event.channel)
        replicas = self.settings["ack_replicas"]
        try:
            address = self.topology.node_for(keys.slot)
            if not replicas:
                answers = [self.publisher.publish(address, keys, event.channel, encode_event(event),
                                                  self.durable_mode()[0]).encode()]
            else:  # the script and WAIT on one connection: redis-py's pipeline
                answers = PUBLISH.run(
                    self.topology.client(address),
                    [*keys.dataset(), keys.stream(event.channel), keys.announcement(event.channel), keys.log()],
                    [self.settings["maxlen"], int(self.settings["max_age"] * 1000), encode_event(event),
                     self.durable_mode()[0], RESTARTS_KEPT],
                    then=(("WAIT", replicas, int(self.settings["ack_timeout"] * 1000)),))
        except CONNECTION_ERRORS as exc:
            self.topology.refresh_soon()  # MOVED, a dead master: the next publish goes where it should
            raise BackboneUnavailable(f"redis backbone: {type(exc).__name__}: {exc}") from exc
        if event.id is None:
            event.id = answers[0].decode()
        if replicas and answers[1] < replicas:
            self.relay.stats.incr("backbone_not_replicated")
            raise BackboneUnavailable(f"not_replicated: event {event.id} is stored and announced, but only "
                                      f"{answers[1]} of {replicas} replica(s) acknowledged it within "
                                      f"{self.settings['ack_timeout']:g}s; a failover now could lose it")
        return event  # delivered when the announcement comes back, on every worker that wants it

    def publish_batch(self, events: list[Event]) -> list[Event]:
        return self.memory.publish_local_batch(events, self.relay.deliver_batch)

    # -- delivery ---------------------------------------------------------------------------------

    def hear(self, payload: bytes, address) -> None:
        """An announcement heard by a shard reader."""
        self.heard_messages += 1
        self.heard_bytes += len(payload)
        entry_id, _, body = payload.decode("utf-8", "replace").partition("\n")
        try:
            self.deliver(decode_event(entry_id, body), entry_id)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not written by a relay
            event_rejected.send(self.relay, source="backbone", reason="bad_announcement", error=str(exc),
                                where=f"shard {address[0]}:{address[1]}", payload=payload[:200])

    def deliver(self, event: Event, entry_id: str) -> None:
        key = parse_stream_id(entry_id)
        if key is None:
            raise ValueError(f"{entry_id!r} is not a stream entry id")
        if self.last_ids.get(event.channel, (-1, -1)) >= key:
            return  # already delivered (heard during a catch-up)
        self.last_ids[event.channel] = key
        if self.durable_mode()[1]:  # the durable sinks take it from the log: relay_deliver skips them for it
            self.relay.durable_sources.add(event.source)
        self.positions.advance(self.layout.of(event.channel).number, key)
        event.cursor = cursor_text(event.id, entry_id, self.positions, self.layout.partitions)
        self.memory.publish_local(event, self.relay.deliver)

    def catch_up(self, reader: ShardReader, channels: set[str], reconnected: bool = False) -> None:
        """After ``channels`` were (re)subscribed on ``reader``'s shard: deliver what the streams
        hold that this worker did not, for them and for the channels it already hears in the
        same partitions, merged by id (see :mod:`plugins.redis_backbone.readers`).
        After a reconnect, first ask whether the shard lost what this worker heard."""
        partitions = {self.layout.of(c).number for c in channels}
        neighbours = {c for c in reader.channels if self.layout.of(c).number in partitions and c in self.last_ids}
        client = self.topology.client(reader.address)
        if reconnected:
            self._check_for_loss(client, partitions, reader.channels)
        events = []
        for channel in channels | neighbours:
            last = self.last_ids.get(channel)
            since = self.router.since.get(channel)
            if last is not None:
                start = f"({last[0]}-{last[1]}"
            elif since is not None:
                start = f"{since}-0"
            else:
                continue
            for entry_id, fields in self._read_stream(client, self.layout.of(channel).stream(channel), start):
                try:
                    events.append((parse_stream_id(entry_id.decode()), decode_event(entry_id.decode(), fields[b"e"])))
                except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not written by a relay
                    event_rejected.send(self.relay, source="backbone", reason="bad_announcement", error=str(exc),
                                        where=f"stream of {channel!r}", payload=repr(fields)[:200])
        events.sort(key=lambda pair: pair[0])
        for key, event in events:
            self.deliver(event, f"{key[0]}-{key[1]}")
        if events:
            log.info("redis backbone: delivered %d event(s) of shard %s:%s %s", len(events), *reader.address,
                     "stored while its subscription was down" if reconnected else "published while subscribing")

    @staticmethod
    def _read_stream(client: redis.Redis, key: str, start: str, page: int = 1000):
        """Every entry of ``key`` from ``start`` on, read in pages (nothing is skipped silently:
        the stream's own trimming is what bounds it)."""
        while True:
            entries = client.xrange(key, start, "+", count=page)
            yield from entries
            if len(entries) < page:
                return
            start = "(" + entries[-1][0].decode()

    def _check_for_loss(self, client: redis.Redis, partitions: set[int], channels: set[str]) -> None:
        """Did the shard come back (restart, failover to a replica that lagged) without events
        this worker heard? Then record it (so resumes from before are told, on every worker)
        and tell this worker's live streams of those partitions, as the Redis backbone does."""
        for number in partitions:
            heard = self.positions.get(number)
            if heard is None or heard <= self.lost_up_to.get(number, (-1, -1)):
                continue
            keys = self.layout.partition(number)
            if CHECK.run(client, keys.dataset(), [heard[0], heard[1], 1, RESTARTS_KEPT])[0] != 1:
                continue
            self.lost_up_to[number] = heard
            self.relay.stats.incr("backbone_lost")
            log.warning("redis backbone: Redis lost events it had acknowledged (partition %d): this worker heard "
                        "up to %d-%d, Redis came back with less; live streams here and resumes from before get "
                        "relay-missed (reason 'lost'). See Redis persistence in docs/deployment.md.", number, *heard)
            for channel in channels:
                if self.layout.of(channel).number == number:
                    notice = {"last_event_id": f"{heard[0]}-{heard[1]}", "reason": "lost", "channels": [channel]}
                    self.relay.bus.send(Event(channel, MISSED_EVENT, notice, source="redis-backbone"))

    def start_of(self, channel: str) -> int:
        """Where the catch-up of a channel wanted now starts (ms): the clock of its partition's
        master, which gives the ids, read now (an event stored before this read has an id at or
        before it, one stored after it, after), so a new stream gets what is published while it
        subscribes and nothing from before. Without an answer: this worker's clock less
        ``catch_up_margin`` (host clocks may differ; a new stream may then get some earlier events)."""
        try:
            seconds, micros = self.topology.client(self.topology.node_for(self.layout.of(channel).slot)).time()
            return seconds * 1000 + micros // 1000
        except CONNECTION_ERRORS:
            return max(0, int((time.time() - self.settings["catch_up_margin"]) * 1000))

    def forget_channel(self, channel: str) -> None:
        """No longer heard here: a later want catches up from when it is wanted again."""
        self.last_ids.pop(channel, None)

    # -- resume -----------------------------------------------------------------------------------

    def replay(self, channels: list[str], last_event_id: str, limit: int) -> Replay | None:
        replay = self.memory.replay(channels, last_event_id, limit)
        if replay is None or not self.lost_up_to:
            return replay
        parsed = parse_cursor(last_event_id, self.layout.partitions)
        mine = {self.layout.of(channel).number for channel in channels}
        if parsed and any(at <= self.lost_up_to.get(p, (-1, -1)) for p, at in parsed[1].items() if p in mine):
            return Replay(replay.events, complete=False, reason="lost")
        return replay

    def replay_stored(self, channels: list[str], last_event_id: str, limit: int) -> Replay | None:
        parsed = parse_cursor(last_event_id, self.layout.partitions)
        if parsed is None:
            return None
        try:
            return self._replay_from_streams(channels, parsed[0], parsed[1], limit)
        except CONNECTION_ERRORS as exc:
            self.topology.refresh_soon()
            log.warning("cannot replay from the redis backbone: %s", exc)
            return Replay([], complete=False, reason="unavailable")

    def _replay_from_streams(self, channels: list[str], last: Id, start: Positions, limit: int) -> Replay:
        # A partition the cursor does not name: the client got nothing of it on that worker, which
        # heard nothing of it; read from a little before its last event (announcements of other
        # shards may still have been on their way).
        floor = f"{max(0, last[0] - int(self.settings['catch_up_margin'] * 1000))}-0"
        events, complete, lost = [], True, False
        checked: set[int] = set()
        for channel in channels:
            keys = self.layout.of(channel)
            client = self.topology.client(self.topology.node_for(keys.slot))
            after = start.get(keys.number)
            if after is not None and keys.number not in checked:
                checked.add(keys.number)
                lost = lost or self._lost_after(client, keys, after)
            stream = keys.stream(channel)
            first = f"({after[0]}-{after[1]}" if after else floor
            for entry, fields in client.xrange(stream, first, "+", count=limit):
                entry_id = entry.decode()
                events.append((parse_stream_id(entry_id), entry_id, decode_event(entry_id, fields[b"e"])))
            try:
                info = client.xinfo_stream(stream)
            except redis.ResponseError:
                continue  # no such stream: nothing was ever published there
            oldest = info.get("first-entry")
            if after and info["entries-added"] > info["length"] and oldest and parse_stream_id(oldest[0].decode()) > after:
                complete = False  # trimmed past the client's position
        events.sort(key=lambda item: item[0])
        if len(events) > limit:
            events, complete = events[-limit:], False
        positions = Positions(dict(start))
        for key, entry_id, event in events:
            positions.advance(self.layout.of(event.channel).number, key)
            event.cursor = cursor_text(event.id, entry_id, positions, self.layout.partitions)
        follow = Follow(self.layout, positions)
        replayed = [event for _, _, event in events]
        if lost:
            return Replay(replayed, complete=False, reason="lost", follow=follow)
        return Replay(replayed, complete, "" if complete else "evicted", follow=follow)

    def _lost_after(self, client: redis.Redis, keys: PartitionKeys, after: Id) -> bool:
        """Did the partition's Redis lose events it acknowledged after ``after`` (a restart or
        failover to a replica that lagged)? See the restart records in plugins/redis_common.py."""
        return CHECK.run(client, keys.dataset(), [after[0], after[1], 0, RESTARTS_KEPT])[0] == 1

    # -- the rest ---------------------------------------------------------------------------------

    def sources(self) -> list[Source]:
        return [self.source]

    @property
    def key_prefix(self) -> str:
        return self.prefix

    def shared_redis(self, key: str) -> redis.Redis:
        return self.topology.client(self.topology.node_for(key_slot(key.encode())))

    def stats(self) -> dict:
        readers = self.router.readers.values()
        log_argument = self.durable_mode()[0]
        durable = (self.durable.stats() if self.durable else
                   "write" if log_argument > 0 else "write if it exists" if log_argument else "off")
        return {**self.memory.stats(), "kind": "redis", "partitions": self.layout.partitions,
                "shards": len(readers), "shards_subscribed": sum(r.up for r in readers),
                "subscribed": len(self.router.reader_of),
                "awaiting_confirmation": sum(len(batch[0]) for r in readers for batch in r.batches),
                "heard_messages": self.heard_messages, "heard_bytes": self.heard_bytes,
                "slot_map_refreshes": self.topology.refreshes, "durable_log": durable}


class Follow:
    """A resumed stream's live events, for ``Replay.follow``: drops those the client already got
    (at or before its position in their partition), and gives the others a cursor that is this
    worker's merged with the client's, until the worker's cursors cover the client's alone."""

    def __init__(self, layout: Layout, positions: Positions):
        self.layout, self.positions = layout, positions
        self.started = time.monotonic()
        self.done = False

    def __call__(self, event: Event) -> Event | None:
        parsed = parse_cursor(event.cursor or event.id or "", self.layout.partitions)
        if parsed is None:
            return event  # not a backbone event (a relay-missed notice)
        partition = self.layout.of(event.channel).number
        worker = parsed[1]
        key = worker.get(partition)  # the worker's position on the event's partition is the event
        if key is None or not self.positions.advance(partition, key):
            return None if key is not None else event  # the client has it (before it left, or replayed)
        if worker.covers(self.positions) and time.monotonic() - self.started > FOLLOW_AT_LEAST:
            self.done = True
            return event
        merged = Positions(dict(self.positions))
        for number, at in worker.items():
            merged.advance(number, at)
        cursor = cursor_text(event.id, f"{key[0]}-{key[1]}", merged, self.layout.partitions)
        return Event(event.channel, event.event, event.data, id=event.id, source=event.source,
                     timestamp=event.timestamp, cursor=cursor)


class BackboneSource(Source):
    """The backbone's health and its retries: the slot map, and channels wanted while no node
    answered. The shard readers are greenlets of their own (:class:`Router`)."""

    name = "redis-backbone"

    def __init__(self, backbone: RedisBackbone):
        super().__init__()
        self.backbone = backbone

    def run(self, relay) -> None:
        router, topology = self.backbone.router, self.backbone.topology
        topology.refresh()
        router.assign(set(relay.bus.wanted()) - set(router.reader_of))
        self.update_status()
        self.backbone.durable_mode()
        durable = self.backbone.durable
        while True:
            if durable is not None:
                durable.ensure_readers()
            if self.stopping.wait(1.0):
                break
            if router.unassigned and topology.refresh():
                router.assign(set(router.unassigned))
            elif not router.all_up() and topology.refresh():
                router.rebalance()  # a shard reader waiting out its backoff: its slots may have moved
            self.update_status()

    def update_status(self) -> None:
        router, topology = self.backbone.router, self.backbone.topology
        if topology.slots is None:
            self.set_status("down", f"no node of {topology.seeds} answered")
        elif router.all_up():
            self.set_status("up", f"{len(router.readers)} shard reader(s), {len(router.reader_of)} channel(s)")
        else:
            down = [f"{h}:{p}" for (h, p), r in router.readers.items() if r.down_since]
            self.set_status("down", f"shard readers not subscribed: {down}; unassigned: {len(router.unassigned)}")

    def stop(self) -> None:
        super().stop()
        if self.backbone.durable is not None:
            self.backbone.durable.stop()
        self.backbone.router.stop()
        self.backbone.publisher.close()
        self.backbone.topology.close()
