"""Resume from a cursor: read what a client missed from the Kafka log itself.

A cursor holds the client's position on every partition (:mod:`.ids`). On resume each partition
restarts exactly there: nothing lost, nothing repeated, whatever the records' timestamps. The
records read are sent in timestamp order across partitions, each partition in its own order,
each with a cursor of its own; :class:`Follow` then joins the stream to this worker's live
records without a repeat.

At most ``limit`` (``history_size``) events are replayed, the most recent ones; the reader looks
at no more than ``limit`` records per partition. When older events are cut off, when the log no
longer holds them, or when Kafka cannot be read within ``replay_timeout``, the replay says it is
incomplete, and the client gets a ``relay-missed`` event first.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import time
from typing import Any

import gevent
import gevent.lock

from relay.api import BadMessage, Replay

from . import client, ids
from .records import to_event
from .settings import consumer_config

POLL_MS = 100

log = logging.getLogger("relay.source.kafka")


class ReplayTimeout(Exception):
    pass


class Replayer:
    def __init__(self, settings: dict):
        self.settings = settings
        self.slots = gevent.lock.BoundedSemaphore(settings["replay_concurrency"])

    def replay(self, relay, channels: list[str], last_event_id: str, limit: int) -> Replay | None:
        if not ids.is_ours(last_event_id):
            return None
        position = ids.parse(last_event_id, self.settings["topics"])
        if position is None or limit <= 0:
            return Replay([], complete=False, reason="unknown-id")
        if not self.slots.acquire(timeout=self.settings["replay_timeout"]):
            relay.stats.incr("kafka_replay_failed", reason="busy")
            return Replay([], complete=False, reason="unavailable")
        try:
            started = time.monotonic()
            replay = self._replay(relay, set(channels), position, limit)
            relay.stats.incr("kafka_replays")
            log.info("resumed %s from Kafka: %d event(s), complete=%s, %.0f ms", last_event_id,
                          len(replay.events), replay.complete, (time.monotonic() - started) * 1000)
            return replay
        finally:
            self.slots.release()

    def _replay(self, relay, channels: set[str], position: ids.Position, limit: int) -> Replay:
        from kafka import KafkaConsumer

        settings = self.settings
        try:
            client.reachable(settings["bootstrap_servers"], timeout=min(2.0, settings["replay_timeout"]))
        except client.BrokerUnavailable as exc:
            relay.stats.incr("kafka_replay_failed", reason="unavailable")
            log.warning("resume from Kafka impossible: %s", exc)
            return Replay([], complete=False, reason="unavailable")
        config = consumer_config(settings, "replay")
        config["bootstrap_timeout_ms"] = int(settings["replay_timeout"] * 1000)
        try:
            consumer = client.build(KafkaConsumer, config, grace=0)
        except client.BrokerUnavailable as exc:
            relay.stats.incr("kafka_replay_failed", reason="unavailable")
            log.warning("resume from Kafka impossible: %s", exc)
            return Replay([], complete=False, reason="unavailable")
        by_partition: dict[Any, list[Any]] = {}
        starts: dict[Any, int] = {}
        complete, reason = True, ""
        reached = dict(position.next)  # where the client stands, then where the replay leaves it
        try:
            with gevent.Timeout(settings["replay_timeout"], ReplayTimeout()):
                client.bootstrap(consumer)
                tps = client.partitions(consumer, settings["topics"])
                begin = client.beginning_offsets(consumer, tps)
                end = client.end_offsets(consumer, tps)
                for tp in tps:
                    start, problem = _start(reached.get(tp), begin[tp], end[tp], limit)
                    if problem:
                        complete, reason = False, reason or problem
                        log.info("resume of %s from %s: %s", tp, position, problem)
                    starts[tp] = reached[tp] = start
                consumer.assign(tps)
                for tp in tps:
                    consumer.seek(tp, starts[tp])
                todo = {tp for tp in tps if starts[tp] < end[tp]}
                while todo:
                    for tp, batch in consumer.poll(timeout_ms=POLL_MS).items():
                        by_partition.setdefault(tp, []).extend(r for r in batch if r.offset < end[tp])
                        if batch and batch[-1].offset + 1 >= end[tp]:
                            todo.discard(tp)
                    for tp in list(todo):  # gaps (compaction, transaction markers) end a partition too
                        if consumer.position(tp, timeout_ms=1000) >= end[tp]:
                            todo.discard(tp)
                    gevent.sleep(0)
                for tp in tps:
                    reached[tp] = max(reached[tp], end[tp])  # read to the end, markers and gaps included
        except (ReplayTimeout, client.BrokerUnavailable) as exc:
            relay.stats.incr("kafka_replay_failed", reason="unavailable")
            log.warning("resume from Kafka incomplete: %s", exc or "replay_timeout reached")
            complete, reason = False, "unavailable"
            for tp, records in by_partition.items():  # what was read counts; the rest follows live
                if records:
                    reached[tp] = records[-1].offset + 1
        finally:
            client.close(consumer, log)
        return self._events(relay, by_partition, starts, channels, position, reached, limit, complete, reason)

    def _events(self, relay, by_partition, starts, channels, position, reached, limit, complete, reason) -> Replay:
        """The replayed events in one order that keeps each partition's, each with the cursor
        that places the client just after it."""
        topics = self.settings["topics"]
        at = dict(position.next)
        at.update(((tp.topic, tp.partition), start) for tp, start in starts.items())  # where reads began
        kept = []
        # Partitions interleaved by timestamp; heapq.merge keeps each partition's own order even
        # where its timestamps go backwards (producers' clocks).
        for record in heapq.merge(*by_partition.values(), key=lambda r: (r.timestamp, r.partition)):
            at[(record.topic, record.partition)] = record.offset + 1
            try:
                event = to_event(record, self.settings)
            except BadMessage:
                continue  # counted and logged when it was read live
            if event.channel not in channels:
                continue
            event = relay.transform(event)
            if event is not None and event.channel in channels:
                event.cursor = ids.cursor_of(event.id, at, topics)
                kept.append(event)
        if len(kept) > limit:
            kept, complete, reason = kept[-limit:], False, reason or "evicted"
        return Replay(kept, complete, reason, follow=Follow(reached, topics))


def _start(wanted: int | None, begin: int, end: int, limit: int) -> tuple[int, str]:
    """Where to start reading a partition for a client at ``wanted``, and what it misses.

    A partition the cursor does not name (created since) is read from its beginning. At most
    ``limit`` records are read per partition.
    """
    window = max(begin, end - limit)
    if wanted is None:
        return window, ("evicted" if window > begin else "")
    if wanted > end:  # the log is shorter than the client's position: the topic was recreated
        return window, "unknown-id"
    if wanted < window:  # retention removed them, or more than ``limit`` to read
        return window, "evicted"
    return wanted, ""


class Follow:
    """What a stream does with live Kafka events after a replay from the log (``Replay.follow``).

    The replay read every partition to its end; this worker's live reader may be behind or ahead
    of that. A live record the replay sent already is skipped. Until this worker's positions
    have passed the replay's on every partition, the events sent carry a cursor that covers
    both, so the client's next resume repeats nothing; then ``done`` is set and the worker's
    own events (and cursors) go out unchanged.
    """

    def __init__(self, reached: dict, topics: list[str]):
        self.reached = {(tp[0], tp[1]): offset for tp, offset in reached.items()}
        self.topics = topics
        self.done = False

    def __call__(self, event):
        if event.source != "kafka" or not event.cursor:
            return event
        position = ids.parse(event.cursor, self.topics)
        if position is None:
            return event
        reached = self.reached
        if position.offset < reached.get((position.topic, position.partition), 0):
            return None  # the replay sent it
        behind = False
        for tp, offset in position.next.items():
            if offset >= reached.get(tp, 0):
                reached[tp] = offset
            else:
                behind = True
        if not behind and reached.keys() <= position.next.keys():
            self.done = True
            return event
        return dataclasses.replace(event, cursor=ids.cursor_of(event.id, reached, self.topics))
