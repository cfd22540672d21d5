"""Durable delivery: a consumer group hands each record to the durable sinks, then commits.

One member of the group (one worker somewhere) reads each partition. It offers the events of a
partition's records, in order, to every plugin implementing ``relay_deliver_durable``, a poll's
records of one partition as one batch (one call of ``relay_deliver_durable_batch`` for a sink
that has it: one store transaction, not one per record); the partition's offset is committed past a record only once every durable sink has taken it and
every record before it. A sink that refuses (raises) gets the record again after a backoff; the
partition waits for it, the others go on. After a crash or a rebalance, the records after the
last commit are read again: at-least-once.
"""

from __future__ import annotations

import time
from typing import Any

import gevent

from relay.api import BadMessage, DurableOffers, Source

from . import client
from .records import DeadLetters, handle_bad, to_event
from .settings import consumer_config

POLL_MS = 200
OFFER_EVERY = 200  # records offered to the durable sinks as one batch (one store transaction)
GROUP_POLL_RECORDS = 200  # records per poll; each may wait on a durable sink (max_poll_interval_ms)
COMMIT_EVERY = 1.0  # seconds: within a long batch, commit at least this often
COMMIT_TIMEOUT_MS = 10_000


class GroupSource(Source):
    name = "kafka-group"

    def __init__(self, settings: dict):
        super().__init__()
        self.settings = settings

    def run(self, relay) -> None:
        from kafka import KafkaConsumer

        settings = self.settings
        dead_letters = DeadLetters(relay, settings) if settings["dead_letter_topic"] else None
        client.reachable(settings["bootstrap_servers"])
        consumer = client.build(KafkaConsumer, consumer_config(settings, "group", settings["group_id"]), self)
        if consumer is None:
            return  # stopped while connecting
        # A new member reads from the last commit: what refused records had is forgotten too.
        self.offers = DurableOffers(relay)
        self.retry: dict[Any, float] = {}  # paused tp -> when to resume it
        try:
            client.bootstrap(consumer)
            consumer.subscribe(settings["topics"])
            next_probe = 0.0
            poll_records = settings["consumer"].get("max_poll_records", GROUP_POLL_RECORDS)
            batch_wait = settings["batch_wait_ms"] / 1000
            while not self.stopping.is_set():
                if time.monotonic() >= next_probe:
                    next_probe = time.monotonic() + settings["probe_interval"]
                    self._probe(consumer)
                self._resume_due(consumer)
                batch = consumer.poll(timeout_ms=POLL_MS, max_records=poll_records)
                done: dict[Any, int] = {}
                last_commit = time.monotonic()
                for tp, records in batch.items():
                    if self.stopping.is_set():
                        break
                    if tp in consumer.paused() or tp not in consumer.assignment():
                        continue  # paused meanwhile (its records come again), or revoked
                    for start in range(0, len(records), OFFER_EVERY):
                        chunk = records[start:start + OFFER_EVERY]
                        upto, refused = self._handle(relay, consumer, tp, chunk, dead_letters)
                        if upto > chunk[0].offset:
                            done[tp] = upto  # the sinks took (or skipped) everything before it
                        gevent.sleep(0)
                        if refused:
                            break  # the partition waits (paused) from the first record not taken
                        if time.monotonic() - last_commit >= COMMIT_EVERY:  # slow sinks: fewer repeats
                            self._commit(relay, consumer, done)
                            done, last_commit = {}, time.monotonic()
                if done:
                    self._commit(relay, consumer, done)
                if 0 < sum(map(len, batch.values())) < poll_records and batch_wait:
                    self.stopping.wait(batch_wait)  # see ``batch_wait_ms``: fewer, fuller polls
        finally:
            client.close(consumer, self.log)
            if dead_letters is not None:
                dead_letters.close()

    @staticmethod
    def _commit(relay, consumer: Any, done: dict[Any, int]) -> None:
        """Commit synchronously. A failure (rebalance, broker lost) raises: the supervisor
        rebuilds the consumer and the group reads again from the last commit."""
        from kafka.structs import OffsetAndMetadata

        # Bounded: without a timeout kafka-python retries a commit forever while the broker is away.
        offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in done.items()}
        with gevent.Timeout(COMMIT_TIMEOUT_MS / 1000 + 5, client.BrokerUnavailable("the commit got no answer")):
            consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
        relay.stats.incr("kafka_commits")

    def _handle(self, relay, consumer: Any, tp: Any, records: list,
                dead_letters: DeadLetters | None) -> tuple[int, bool]:
        """Offer consecutive records of one partition to the durable sinks, as one batch.

        Returns the offset to commit up to and whether a sink refused: after the last record
        when the sinks took them all, else the first record not taken (the partition is then
        paused and sought back to it, and the records from there come again after a backoff). Bad records are handled (counted,
        dead-lettered) once, when the sinks have taken everything before them.
        """
        events, keys, bad = [], [], []
        for record in records:
            try:
                event = relay.transform(to_event(record, self.settings))
            except BadMessage as error:
                bad.append((record, error))
                continue
            if event is not None:  # None: dropped by a transform, nothing to deliver
                events.append(event)
                keys.append((tp, record.offset))
        taken, delay = self.offers.offer_batch(events, keys, lane=tp) if events else (0, None)
        upto = records[-1].offset + 1 if delay is None else keys[taken][1]
        for record, error in bad:
            if record.offset < upto:
                handle_bad(relay, "kafka-group", record, error, dead_letters)
        if delay is None:
            self.retry.pop(tp, None)
            return upto, False
        self.retry[tp] = time.monotonic() + delay
        consumer.seek(tp, upto)
        consumer.pause(tp)
        relay.stats.incr("kafka_redeliveries")
        self.log.warning("durable sink(s) %s refused the record at topic %s partition %d offset %d; offering it "
                         "again in %.1fs", ", ".join(self.offers.refused), tp.topic, tp.partition, upto, delay)
        return upto, True

    def _resume_due(self, consumer: Any) -> None:
        now = time.monotonic()
        for tp, due in list(self.retry.items()):
            if tp not in consumer.assignment():
                del self.retry[tp]
                self.offers.forget(tp)
            elif now >= due and tp in consumer.paused():
                consumer.resume(tp)
                self.retry[tp] = float("inf")  # waiting until the record is taken

    def _probe(self, consumer: Any) -> None:
        assigned = consumer.assignment()
        try:
            client.end_offsets(consumer, client.partitions(consumer, self.settings["topics"]))
        except client.BrokerUnavailable as exc:
            self.set_status("down", str(exc))
            return
        detail = f"group {self.settings['group_id']}: {len(assigned)} partition(s) assigned"
        if self.retry:
            detail += f", {len(self.retry)} waiting for a durable sink"
        self.set_status("up", detail)
