"""Kafka records to events, and rejected records to the dead-letter topic."""

from __future__ import annotations

import logging
from typing import Any

from relay.api import BadMessage, Event, decode, reject

from .ids import make_id
from .settings import channel_for, producer_config

log = logging.getLogger("relay.source.kafka")


def where(record: Any) -> str:
    return f"topic {record.topic} partition {record.partition} offset {record.offset}"


def to_event(record: Any, settings: dict) -> Event:
    """The event of one record, with its position as id.

    :raises BadMessage: for an undecodable key (``bad_key``), a record without value
        (``no_value``), and every reason of :func:`relay.envelope.decode`.
    """
    if record.key is not None:
        try:
            record.key.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadMessage("bad_key", f"the key is not UTF-8: {exc}") from None
    if record.value is None:
        raise BadMessage("no_value", "the record has no value (a tombstone)")
    event = decode(record.value, channel=channel_for(settings, record.topic), source="kafka",
                   format=settings["format"], event_name=settings["event_name"], max_size=settings["max_size"])
    # The record's position is the id: the same on every worker. An ``id`` in the envelope was
    # validated but is not used. The broadcast reader and the replay add cursors.
    event.id = make_id(record.topic, record.partition, record.offset)
    return event


class DeadLetters:
    """Copies rejected records to ``dead_letter_topic`` with headers saying where and why."""

    def __init__(self, relay: Any, settings: dict):
        self.relay = relay
        self.settings = settings
        self.topic = settings["dead_letter_topic"]
        self._producer = None

    def send(self, record: Any, error: BadMessage, timeout: float = 10.0) -> bool:
        """Copy ``record``; waits for the broker's acknowledgement. Never raises."""
        if not self.topic:
            return False
        headers = list(record.headers or []) + [
            ("relay-error", str(error)[:1000].encode()), ("relay-reason", error.reason.encode()),
            ("relay-topic", record.topic.encode()), ("relay-partition", str(record.partition).encode()),
            ("relay-offset", str(record.offset).encode())]
        try:
            if self._producer is None:
                from kafka import KafkaProducer

                self._producer = KafkaProducer(**producer_config(self.settings))
            self._producer.send(self.topic, key=record.key, value=record.value, headers=headers).get(timeout)
        except Exception as exc:  # noqa: BLE001 - a dead-letter failure must not stall the partition
            self.relay.stats.incr("kafka_dead_letter_failed")
            log.error("could not copy the rejected record at %s to dead-letter topic %s: %s: %s",
                      where(record), self.topic, type(exc).__name__, exc)
            return False
        self.relay.stats.incr("kafka_dead_lettered")
        return True

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=2)
            except Exception:  # noqa: BLE001 - closing on the way out
                log.warning("closing the dead-letter producer failed", exc_info=True)
            self._producer = None


def handle_bad(relay: Any, label: str, record: Any, error: BadMessage, dead_letters: DeadLetters | None) -> None:
    """Count and log a rejected record with its position; copy it to the dead-letter topic."""
    payload = record.value if record.value is not None else b""
    reject(relay, label, where(record), payload, error)
    if dead_letters is not None:
        dead_letters.send(record, error)
