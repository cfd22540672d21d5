"""Live delivery: every worker reads every partition of the topics, without a group.

Each worker assigns itself all partitions and publishes every record with ``relay.publish``, so
every SSE client on every worker sees every event, under the same id. The source remembers its
position per partition: when its client is rebuilt (a failure, a long outage) it goes on from
there instead of from ``start``.
"""

from __future__ import annotations

import time
from typing import Any

import gevent

from relay.envelope import BadMessage
from relay.event import InvalidEvent
from relay.source import Source

from . import client
from .records import DeadLetters, handle_bad, to_event
from .settings import consumer_config

POLL_MS = 200  # the longest a poll waits: shutdown and probes are never late by more
POLL_RECORDS = 200  # records parsed per poll: kafka-python parses them without yielding
YIELD_EVERY = 50  # records published between yields to the hub


class BroadcastSource(Source):
    name = "kafka"

    def __init__(self, settings: dict, dead_letters: bool):
        super().__init__()
        self.settings = settings
        self.dead_letters_here = dead_letters  # False when the group consumer copies them instead
        self.positions: dict[Any, int] = {}  # TopicPartition -> next offset to read
        self.started = False  # ``start`` applies to partitions found by the first run only

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
            while not self.stopping.is_set():
                if time.monotonic() >= next_probe:
                    next_probe = time.monotonic() + settings["probe_interval"]
                    assigned = self._refresh(consumer, assigned)
                if not assigned:
                    self.stopping.wait(settings["probe_interval"])
                    continue
                batch = consumer.poll(timeout_ms=POLL_MS, max_records=POLL_RECORDS)
                for tp, records in batch.items():
                    for n, record in enumerate(records, 1):
                        self._publish(relay, record, dead_letters)
                        self.positions[tp] = record.offset + 1
                        if n % YIELD_EVERY == 0:
                            gevent.sleep(0)  # let SSE streams and requests run
                    gevent.sleep(0)
        finally:
            client.close(consumer, self.log)
            if dead_letters is not None:
                dead_letters.close()

    def _publish(self, relay, record: Any, dead_letters: DeadLetters | None) -> None:
        try:
            event = to_event(record, self.settings)
        except BadMessage as error:
            handle_bad(relay, "kafka", record, error, dead_letters)
            return
        try:
            relay.publish(event)
        except InvalidEvent as exc:  # the backbone refused it: skip it like a bad record
            handle_bad(relay, "kafka", record, BadMessage("invalid_field", str(exc)), dead_letters)

    def _refresh(self, consumer: Any, assigned: list[Any]) -> list[Any]:
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
            if self.positions.get(tp, 0) > end:  # the log is shorter than what we read: recreated
                self.log.warning("%s ends at offset %d, before this worker's position %d: the topic was "
                                 "recreated or truncated; reading it from its beginning", tp, end, self.positions[tp])
                consumer.seek_to_beginning(tp)
                self.positions[tp] = 0
        missing = [t for t in self.settings["topics"] if not any(tp.topic == t for tp in assigned)]
        lag = sum(max(0, end - self.positions.get(tp, end)) for tp, end in ends.items())
        detail = f"{len(assigned)} partition(s), lag {lag}"
        if missing:
            detail += f"; waiting for topic(s) {', '.join(missing)}"
        self.set_status("up", detail)
        self.started = True
        return assigned

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
