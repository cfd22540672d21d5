"""Live delivery: every worker reads every partition of the topics, without a group.

Each worker assigns itself all partitions and publishes every record with ``relay.publish``, so
every SSE client on every worker sees every event, under the same id. Each event's cursor (its
SSE id) holds this worker's position on every partition just after it (:mod:`.ids`). The source
remembers its position per partition: when its client is rebuilt (a failure, a long outage) it
goes on from there instead of from ``start``.

A partition whose log ends before the worker's position was recreated or truncated, or the
broker misreports its end: the worker reads it again from its beginning once, logs and counts
it (``kafka_offset_regressions``), and does not read it again until the log end has caught up
with its position and fallen behind once more, no sooner than :data:`REREAD_BACKOFF` later
(doubling to :data:`REREAD_BACKOFF_MAX`): never an endless re-read loop.
"""

from __future__ import annotations

import time
from typing import Any

import gevent

from relay.api import BadMessage, InvalidEvent, Source

from . import client
from .ids import Positions
from .records import DeadLetters, handle_bad, to_event
from .settings import consumer_config

POLL_MS = 200  # the longest a poll waits: shutdown and probes are never late by more
POLL_RECORDS = 200  # records per poll: kafka-python parses them without yielding (max_poll_records overrides it)
# Records published as one batch, between yields to the hub: each SSE stream takes the batch in
# one step and writes it in one write, and the hub is held for a few milliseconds at most.
PUBLISH_EVERY = 200
REREAD_BACKOFF = 30.0  # seconds before a partition may be read from its beginning again
REREAD_BACKOFF_MAX = 600.0


class BroadcastSource(Source):
    name = "kafka"

    def __init__(self, settings: dict, dead_letters: bool):
        super().__init__()
        self.settings = settings
        self.dead_letters_here = dead_letters  # False when the group consumer copies them instead
        self.positions = Positions(settings["topics"])  # TopicPartition -> next offset to read
        self.started = False  # ``start`` applies to partitions found by the first run only
        self.regressed: set[Any] = set()  # partitions whose log now ends before our position
        self.reread_pending: set[Any] = set()  # of those, the ones not read again yet
        self.reread_after: dict[Any, tuple[float, float]] = {}  # tp -> (earliest re-read, backoff)

    def run(self, relay) -> None:
        from kafka import KafkaConsumer

        settings = self.settings
        dead_letters = DeadLetters(relay, settings) if self.dead_letters_here and settings["dead_letter_topic"] else None
        client.reachable(settings["bootstrap_servers"])
        consumer = client.build(KafkaConsumer, consumer_config(settings, "broadcast"), self)
        if consumer is None:
            return  # stopped while connecting
        try:
            client.bootstrap(consumer)
            assigned: list[Any] = []
            next_probe = 0.0
            poll_records = settings["consumer"].get("max_poll_records", POLL_RECORDS)
            # Off by default: it halves the CPU of a trickle (a few records per fetch, as fast as
            # round trips go) but adds ~10 ms to p50 at 10,000 records/s (docs/kafka.md).
            batch_wait = settings["batch_wait_ms"] / 1000
            while not self.stopping.is_set():
                if time.monotonic() >= next_probe:
                    next_probe = time.monotonic() + settings["probe_interval"]
                    assigned = self._refresh(relay, consumer, assigned)
                if not assigned:
                    self.stopping.wait(settings["probe_interval"])
                    continue
                # Every partition's records of one poll in one batch: each stream then writes once
                # per poll, not once per partition.
                records = [(tp, record) for tp, part in consumer.poll(timeout_ms=POLL_MS,
                                                                      max_records=poll_records).items()
                           for record in part]
                for start in range(0, len(records), PUBLISH_EVERY):
                    self._publish(relay, records[start:start + PUBLISH_EVERY], dead_letters)
                    gevent.sleep(0)  # let SSE streams and requests run
                if 0 < len(records) < poll_records and batch_wait:
                    self.stopping.wait(batch_wait)  # see ``batch_wait_ms``
        finally:
            client.close(consumer, self.log)
            if dead_letters is not None:
                dead_letters.close()

    def _publish(self, relay, records: list[tuple[Any, Any]], dead_letters: DeadLetters | None) -> None:
        """Publish ``(partition, record)`` pairs as one batch; each event's cursor covers itself."""
        events, sources = [], []
        for tp, record in records:
            self.positions[tp] = record.offset + 1
            try:
                event = to_event(record, self.settings)
            except BadMessage as error:
                handle_bad(relay, "kafka", record, error, dead_letters)
                continue
            event.cursor = self.positions.cursor(event.id)
            events.append(event)
            sources.append(record)
        for record, result in zip(sources, relay.publish_batch(events)):
            if isinstance(result, InvalidEvent):  # the backbone refused it: skip it like a bad record
                handle_bad(relay, "kafka", record, BadMessage("invalid_field", str(result)), dead_letters)

    def _refresh(self, relay, consumer: Any, assigned: list[Any]) -> list[Any]:
        """Assign partitions that appeared, and probe the broker: the health of this source."""
        try:
            found = client.partitions(consumer, self.settings["topics"])
            new = [tp for tp in found if tp not in assigned]
            if new:
                assigned = assigned + new
                consumer.assign(assigned)
                self._seek(consumer, new)
            ends = client.end_offsets(consumer, assigned)
        except client.BrokerUnavailable as exc:
            self.set_status("down", str(exc))
            return assigned
        for tp, end in ends.items():
            self._check_end(relay, consumer, tp, end)
        missing = [t for t in self.settings["topics"] if not any(tp.topic == t for tp in assigned)]
        lag = sum(max(0, end - self.positions.get(tp, end)) for tp, end in ends.items())
        detail = f"{len(assigned)} partition(s), lag {lag}"
        if missing:
            detail += f"; waiting for topic(s) {', '.join(missing)}"
        self.set_status("up", detail)
        self.started = True
        return assigned

    def _check_end(self, relay, consumer: Any, tp: Any, end: int) -> None:
        """React once to a log that ends before this worker's position (see the module's text)."""
        position = self.positions.get(tp, 0)
        if position <= end:
            if tp in self.regressed:
                self.regressed.discard(tp)
                self.reread_pending.discard(tp)
                self.log.info("%s: the log end (%d) has caught up with this worker's position again", tp, end)
            return
        now = time.monotonic()
        earliest, backoff = self.reread_after.get(tp, (0.0, REREAD_BACKOFF / 2))
        if tp not in self.regressed:  # a new regression: logged and counted once
            self.regressed.add(tp)
            self.reread_pending.add(tp)
            relay.stats.incr("kafka_offset_regressions", topic=tp.topic)
            self.log.warning("%s ends at offset %d, before this worker's position %d: the topic was recreated "
                             "or truncated, or the broker misreports its end; reading it again from its "
                             "beginning %s", tp, end, position,
                             "now" if now >= earliest else f"in {earliest - now:.0f}s (backoff)")
        if tp in self.reread_pending and now >= earliest:
            self.reread_pending.discard(tp)
            self.regressed.discard(tp)  # handled: reading past the end again is a new regression
            backoff = min(backoff * 2, REREAD_BACKOFF_MAX)
            self.reread_after[tp] = (now + backoff, backoff)
            consumer.seek_to_beginning(tp)
            self.positions[tp] = 0

    def _seek(self, consumer: Any, tps: list[Any]) -> None:
        fresh = []
        for tp in tps:
            if tp in self.positions:
                consumer.seek(tp, self.positions[tp])  # a rebuilt client goes on where it was
            else:
                fresh.append(tp)
        if not fresh:
            return
        if self.started or self.settings["start"] == "earliest":
            # Partitions that appear after start-up hold only new records: read them whole.
            consumer.seek_to_beginning(*fresh)
        else:
            consumer.seek_to_end(*fresh)
        for tp in fresh:  # pin the position now, so a rebuilt client does not re-apply ``start``
            try:
                self.positions[tp] = consumer.position(tp, timeout_ms=int(client.CALL_TIMEOUT * 1000))
            except Exception as exc:  # noqa: BLE001 - resolved again on the next refresh
                self.log.warning("no position yet for %s: %s", tp, exc)
