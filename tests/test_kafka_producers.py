"""Producers as users run them, on Apache Kafka (issue 14, point 2).

Every Kafka test elsewhere also runs on Tansu, whose producers must send one record per batch.
Here real producers batch (kafka-python's defaults, ``linger_ms``), compress (gzip, lz4, zstd),
are idempotent or transactional (aborted transactions and their markers leave offset gaps), and a
compacted topic has gaps. Through a real relay and a real SSE client (or webhook receiver), every
committed, surviving record arrives exactly once and in order within its partition.

SSE ids are opaque here: a resume reconnects with the exact id a client received.
"""

from __future__ import annotations

import json
import time

import pytest
from kafka_support import create_topic, topic_name
from webhook_support import Receiver, endpoint, webhook_config

from relay.testing import wait_until

pytestmark = [pytest.mark.kafka_brokers("apache"), pytest.mark.timeout(90)]

CHANNEL = "prod"
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500, "max_poll_interval_ms": 20000,
              "request_timeout_ms": 5000}


def relay_config(bootstrap: str, topic: str, **options) -> dict:
    section = {"bootstrap_servers": [bootstrap], "topics": [topic], "probe_interval": 0.5}
    section.update(options)
    return {"sources": {"kafka": section}}


def wait_assigned(server, partitions: int) -> None:
    def reading():
        state = server.health()["components"].get("source:kafka", {})
        return state.get("state") == "up" and f"{partitions} partition(s)" in state.get("detail", "")

    wait_until(reading, 20, message=f"the Kafka source to read {partitions} partition(s)")


def envelope(i: int, tag: str = "") -> bytes:
    return json.dumps({"event": "n", "data": {"i": i, "tag": tag}, "channel": CHANNEL}).encode()


def kafka_producer(bootstrap: str, **options):
    """A kafka-python producer with the user's settings (none: kafka-python's defaults)."""
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, **options)


def send_all(producer, topic: str, values: list[bytes], keys: list[bytes | None] | None = None) -> list:
    """Send without waiting between records (so they batch), then wait for every ack; the
    records' metadata (partition, offset) in send order."""
    keys = keys or [None] * len(values)
    futures = [producer.send(topic, value=v, key=k) for v, k in zip(values, keys)]
    producer.flush(30)
    return [f.get(10) for f in futures]


def numbers(events) -> list:
    """Each event's ``i``, or its name when it is not a record's (``relay-missed``)."""
    return [e.json()["i"] if e.event == "n" else e.event for e in events]


def assert_exactly_once_in_partition_order(events, sent: dict[int, tuple[int, int]]) -> None:
    """``events`` carry ``{"i": n}``; ``sent`` maps n to its record's (partition, offset). Every
    record came exactly once, and each partition's records came in offset order."""
    got = numbers(events)
    assert sorted(got, key=str) == sorted(sent, key=str), f"missing {set(sent) - set(got)}, repeated or unknown: " \
                                        f"{sorted(n for n in got if got.count(n) > 1 or n not in sent)}"
    for partition in {p for p, _ in sent.values()}:
        offsets = [sent[n][1] for n in got if sent[n][0] == partition]
        assert offsets == sorted(offsets), f"partition {partition} out of order: {offsets}"


def log_of(bootstrap: str, topic: str, isolation: str = "read_committed") -> list:
    """Every record of ``topic`` as a consumer reading from the start sees it."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(parts)
        records = []
        deadline = time.monotonic() + 15
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            assert time.monotonic() < deadline, "could not read the topic to its end"
            for batch in consumer.poll(200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def events_within(stream, quiet: float) -> list:
    """Every event the stream sends until it is quiet for ``quiet`` seconds (for a replay whose
    length is what is being checked: a shortfall or a surplus shows in the comparison)."""
    events = []
    while not stream.no_event_within(quiet):
        events.append(stream.next_event(0))
    return events


def stream_all(server, count: int, produce) -> list:
    """Open a stream, call ``produce()``, and return its ``count`` events once nothing more comes."""
    with server.sse(f"/events/{CHANNEL}") as stream:
        stream.read_some(0.2)
        produce()
        events = stream.events(count, 30)
        assert stream.no_event_within(1.0), "more events than records"
    return events


# -- batching ------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [{}, {"linger_ms": 50, "batch_size": 65536}], ids=["defaults", "linger50"])
def test_batched_keyed_and_unkeyed_records_arrive_once_in_partition_order(kafka_broker, relay_server_factory,
                                                                          settings):
    topic = create_topic(kafka_broker, topic_name("batch"), partitions=3)
    server = relay_server_factory(relay_config(kafka_broker, topic))
    wait_assigned(server, 3)
    producer = kafka_producer(kafka_broker, **settings)
    # 300 unkeyed (the sticky partitioner fills one batch at a time) and 300 over 7 keys.
    values = [envelope(i) for i in range(600)]
    keys = [None] * 300 + [f"key-{i % 7}".encode() for i in range(300)]
    sent = {}

    def produce():
        metadata = send_all(producer, topic, values, keys)
        sent.update({i: (m.partition, m.offset) for i, m in enumerate(metadata)})

    try:
        events = stream_all(server, 600, produce)
    finally:
        producer.close(5)
    assert len({p for p, _ in sent.values()}) == 3, "the records did not spread over the partitions"
    assert_exactly_once_in_partition_order(events, sent)


# -- compression ---------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["gzip", "lz4", "zstd"])
def test_compressed_batches_arrive_once_in_partition_order(kafka_broker, relay_server_factory, codec):
    topic = create_topic(kafka_broker, topic_name(codec), partitions=3)
    server = relay_server_factory(relay_config(kafka_broker, topic))
    wait_assigned(server, 3)
    producer = kafka_producer(kafka_broker, compression_type=codec, linger_ms=20)
    values = [envelope(i, "x" * 200) for i in range(300)]  # compressible: a batch holds many
    sent = {}

    def produce():
        metadata = send_all(producer, topic, values, [f"k{i % 5}".encode() for i in range(300)])
        sent.update({i: (m.partition, m.offset) for i, m in enumerate(metadata)})

    try:
        events = stream_all(server, 300, produce)
    finally:
        producer.close(5)
    assert_exactly_once_in_partition_order(events, sent)
    assert all(e.json()["tag"] == "x" * 200 for e in events)


# -- idempotent producer ---------------------------------------------------------------------------

def test_idempotent_producer_records_arrive_once_in_partition_order(kafka_broker, relay_server_factory):
    topic = create_topic(kafka_broker, topic_name("idem"), partitions=3)
    server = relay_server_factory(relay_config(kafka_broker, topic))
    wait_assigned(server, 3)
    producer = kafka_producer(kafka_broker, enable_idempotence=True, acks="all", linger_ms=5)
    sent = {}

    def produce():
        metadata = send_all(producer, topic, [envelope(i) for i in range(300)])
        sent.update({i: (m.partition, m.offset) for i, m in enumerate(metadata)})

    try:
        events = stream_all(server, 300, produce)
    finally:
        producer.close(5)
    assert_exactly_once_in_partition_order(events, sent)


# -- transactions ----------------------------------------------------------------------------------

def transactions(bootstrap: str, topic: str, plan: list[tuple[str, int]]) -> dict[int, tuple[int, int]]:
    """Run ``plan`` ([("commit" | "abort", records), …]) with one transactional producer, the
    records of each transaction spread over the partitions; numbers count on across
    transactions. Returns (partition, offset) of each committed record."""
    producer = kafka_producer(bootstrap, transactional_id=topic_name("tx"), enable_idempotence=True, linger_ms=5)
    producer.init_transactions()
    committed, n = {}, 0
    try:
        for outcome, count in plan:
            producer.begin_transaction()
            futures = {n + k: producer.send(topic, envelope(n + k, outcome), partition=(n + k) % 3)
                       for k in range(count)}
            producer.flush(10)  # the records are in the log before the abort: the abort leaves gaps
            metadata = {i: f.get(10) for i, f in futures.items()}
            if outcome == "commit":
                producer.commit_transaction()
                committed.update({i: (m.partition, m.offset) for i, m in metadata.items()})
            else:
                producer.abort_transaction()
            n += count
    finally:
        producer.close(5)
    return committed


PLAN = [("commit", 6), ("abort", 6), ("commit", 6), ("abort", 3), ("abort", 3), ("commit", 6)]


def test_aborted_transactions_never_reach_sse_and_a_resume_skips_their_gaps(kafka_broker, relay_server_factory):
    topic = create_topic(kafka_broker, topic_name("txn"), partitions=3)
    server = relay_server_factory(relay_config(kafka_broker, topic))
    wait_assigned(server, 3)
    sent = {}
    events = stream_all(server, 18, lambda: sent.update(transactions(kafka_broker, topic, PLAN)))
    assert_exactly_once_in_partition_order(events, sent)
    assert all(e.json()["tag"] == "commit" for e in events)
    # The premise: the aborted records are in the log (read_uncommitted sees them), between
    # committed ones, and each transaction left a marker (an offset no consumer gets).
    everything = log_of(kafka_broker, topic, "read_uncommitted")
    assert sum(json.loads(r.value)["data"]["tag"] == "abort" for r in everything) == 12
    for partition in range(3):
        offsets = [r.offset for r in everything if r.partition == partition]
        assert offsets[-1] - offsets[0] + 1 > len(offsets), f"no marker gap on partition {partition}"

    # Resume after a restart (only Kafka knows the ids then) from the last event before the first
    # aborted transaction and from later ones: exactly the committed records after it.
    server.restart()
    wait_assigned(server, 3)
    for k in (5, 6, 11, 16):
        with server.sse(f"/events/{CHANNEL}", headers={"Last-Event-ID": events[k].id}) as stream:
            replayed = stream.events(17 - k, 15)
            assert stream.no_event_within(1.0), "a resume repeated an event or replayed an aborted record"
        after = {n: sent[n] for n in numbers(events[k + 1:])}
        assert_exactly_once_in_partition_order(replayed, after)


def test_aborted_transactions_never_reach_a_webhook_in_group_mode(kafka_broker, relay_server_factory):
    topic = create_topic(kafka_broker, topic_name("txwh"), partitions=3)
    receiver = Receiver().start()
    config = webhook_config([endpoint(f"{receiver.url}/hook", channels=[CHANNEL])])
    config.update(relay_config(kafka_broker, topic, group_id=topic_name("g"), start="earliest",
                               consumer=FAST_GROUP))
    server = relay_server_factory(config)
    try:
        sent = transactions(kafka_broker, topic, PLAN)
        got = receiver.wait_for(18, timeout=30)
        time.sleep(1.5)  # anything more (an aborted record, a duplicate) would come by now
        bodies = [r.verify() for r in receiver.requests]
        numbers = [b["data"]["i"] for b in bodies]
        assert len(got) == len(receiver.requests) == 18
        assert sorted(numbers) == sorted(sent), f"aborted or repeated: {sorted(set(numbers) - set(sent))}"
        assert all(b["data"]["tag"] == "commit" for b in bodies)
    finally:
        server.stop()
        receiver.stop()


# -- compaction ------------------------------------------------------------------------------------

COMPACT = {"cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.01",
           "delete.retention.ms": "100", "min.compaction.lag.ms": "0"}


def create_compacted_topic(bootstrap: str, name: str) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(name, 1, 1, topic_configs=COMPACT)])
    finally:
        admin.close()
    return name


def test_compacted_topic_with_gaps_is_delivered_and_resumed_exactly(kafka_broker, relay_server_factory, tmp_path):
    topic = create_compacted_topic(kafka_broker, topic_name("compact"))
    server = relay_server_factory(relay_config(kafka_broker, topic))
    wait_assigned(server, 1)
    producer = kafka_producer(kafka_broker, linger_ms=5)
    # Rounds over the same keys, each in a segment of its own (segment.ms): compaction keeps
    # the last value of each key. "keep" is written once, first, and survives.
    rounds = [[(b"keep", 0)]] + [[(f"k{j}".encode(), 1 + r * 5 + j) for j in range(5)] for r in range(4)]
    try:
        with server.sse(f"/events/{CHANNEL}") as stream:
            stream.read_some(0.2)
            for batch in rounds:
                send_all(producer, topic, [envelope(i) for _, i in batch], [k for k, _ in batch])
                time.sleep(0.25)  # the next round rolls a new segment
            live = stream.events(21, 15)
        # Roll the last round's segment too: only then can the cleaner compact it.
        time.sleep(0.25)
        send_all(producer, topic, [envelope(1000)], [b"roll"])
    finally:
        producer.close(5)
    assert numbers(live) == list(range(21))

    # Compaction keeps "keep", the last round and "roll" (the active segment is never cleaned):
    # wait for exactly that, so the cleaner has nothing left to change while the relay reads.
    expected = [0, 16, 17, 18, 19, 20, 1000]

    def compacted():
        records = log_of(kafka_broker, topic)
        return records if [json.loads(r.value)["data"]["i"] for r in records] == expected else None

    surviving = wait_until(compacted, 40, interval=0.5, message="the log cleaner to compact the topic")
    assert [r.offset for r in surviving] == [0, 16, 17, 18, 19, 20, 21]  # gaps: offsets 1-15

    # A restarted relay (nothing in memory) resumes across the gaps, from the first record's id
    # and from the id of a record the cleaner removed: exactly the surviving records after it.
    server.restart()
    wait_assigned(server, 1)
    for k, after in ((0, expected[1:]), (7, expected[1:]), (17, expected[3:])):
        with server.sse(f"/events/{CHANNEL}", headers={"Last-Event-ID": live[k].id}) as stream:
            replayed = events_within(stream, 3.0)
        assert numbers(replayed) == after, f"resumed from #{k}"

    # A consumer group reading the compacted log from its start (the durable path): the same.
    group_server = relay_server_factory(
        relay_config(kafka_broker, topic, group_id=topic_name("g"), start="earliest", consumer=FAST_GROUP),
        env=durable_sink_env(tmp_path))
    sink = tmp_path / "durable.jsonl"
    wait_until(lambda: sink.exists() and len(sink.read_text().splitlines()) >= len(expected), 30,
               message="the durable sink to get the surviving records")
    time.sleep(1)
    assert [json.loads(line)["data"]["i"] for line in sink.read_text().splitlines()] == expected
    group_server.stop()


def durable_sink_env(tmp_path) -> dict:
    import os
    from pathlib import Path

    tests = str(Path(__file__).parent)
    return {"RELAY_PLUGINS": "kafka_durable_sink", "KAFKA_TEST_SINK_FILE": str(tmp_path / "durable.jsonl"),
            "KAFKA_TEST_SINK_PLAIN_FILE": str(tmp_path / "plain.jsonl"),
            "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
