"""Resume by id: read what a client missed from the Kafka log itself.

An id names one record: topic, partition, offset and timestamp (:mod:`.ids`). On resume

* the record's own partition restarts exactly after its offset: nothing lost, nothing repeated;
* every other partition of the relayed topics restarts at its first record whose timestamp is
  at least the resumed record's timestamp minus ``resume_skew_ms``: records on those partitions
  within that window before it may come again; a record written more than ``resume_skew_ms``
  before it that this worker had not yet relayed when the client left is not replayed.

At most ``limit`` (``history_size``) events are replayed, the most recent ones; the reader looks
at no more than ``limit`` records per partition. When older events are cut off, when the log no
longer holds them, or when Kafka cannot be read within ``replay_timeout``, the replay says it is
incomplete, and the client gets a ``relay-missed`` event first.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent
import gevent.lock

from relay.backbone import Replay
from relay.envelope import BadMessage

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
        from kafka import KafkaConsumer, TopicPartition

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
        records: list[Any] = []
        complete, reason = True, ""
        resumed = TopicPartition(position.topic, position.partition)
        cutoff = position.timestamp - settings["resume_skew_ms"]
        starts: dict[Any, int] = {}
        begin: dict[Any, int] = {}
        try:
            with gevent.Timeout(settings["replay_timeout"], ReplayTimeout()):
                client.bootstrap(consumer)
                tps = client.partitions(consumer, settings["topics"])
                if resumed not in tps:
                    return Replay([], complete=False, reason="unknown-id")
                begin = client.beginning_offsets(consumer, tps)
                end = client.end_offsets(consumer, tps)
                for tp in tps:
                    window = max(begin[tp], end[tp] - limit)
                    if tp == resumed:
                        wanted = position.offset + 1
                        if wanted > end[tp]:  # the log is shorter than the id: a recreated topic
                            complete, reason, wanted = False, "unknown-id", window
                        elif wanted < window:  # retention removed them, or more than limit
                            complete, reason, wanted = False, "evicted", window
                        starts[tp] = wanted
                    else:
                        starts[tp] = window
                consumer.assign(tps)
                for tp in tps:
                    consumer.seek(tp, starts[tp])
                todo = {tp for tp in tps if starts[tp] < end[tp]}
                while todo:
                    for tp, batch in consumer.poll(timeout_ms=POLL_MS).items():
                        records.extend(r for r in batch if r.offset < end[tp])
                        if batch and batch[-1].offset + 1 >= end[tp]:
                            todo.discard(tp)
                    for tp in list(todo):  # gaps (compaction, transaction markers) end a partition too
                        if consumer.position(tp, timeout_ms=1000) >= end[tp]:
                            todo.discard(tp)
                    gevent.sleep(0)
        except (ReplayTimeout, client.BrokerUnavailable) as exc:
            relay.stats.incr("kafka_replay_failed", reason="unavailable")
            log.warning("resume from Kafka incomplete: %s", exc or "replay_timeout reached")
            complete, reason = False, "unavailable"
        finally:
            client.close(consumer, log)
        return self._events(relay, records, channels, resumed, cutoff, starts, begin, limit, complete, reason)

    def _events(self, relay, records, channels, resumed, cutoff, starts, begin, limit, complete, reason) -> Replay:
        from kafka import TopicPartition

        kept = []
        first_seen: set[Any] = set()
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            if tp != resumed:
                if record.timestamp < cutoff:
                    continue
                if tp not in first_seen and record.offset == starts.get(tp) and starts[tp] > begin.get(tp, 0):
                    complete, reason = False, reason or "evicted"  # the window may have cut some off
                first_seen.add(tp)
            try:
                event = to_event(record, self.settings)
            except BadMessage:
                continue  # counted and logged when it was read live
            if event.channel not in channels:
                continue
            event = relay.transform(event)
            if event is not None and event.channel in channels:
                kept.append((record.timestamp, record.topic, record.partition, record.offset, event))
        kept.sort(key=lambda item: item[:4])
        if len(kept) > limit:
            kept, complete, reason = kept[-limit:], False, reason or "evicted"
        return Replay([item[4] for item in kept], complete, reason)

