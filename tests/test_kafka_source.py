"""The Kafka source against a real Kafka-protocol broker (Tansu), through gunicorn's gevent worker.

Broker fixtures are in tests/kafka_support.py; the durable test sink in tests/kafka_durable_sink.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from kafka_support import Producer, create_topic, produce_in_processes, topic_name

from relay.testing import http_request, wait_until


TESTS = str(Path(__file__).parent)
# A short session makes group joins (about half of it on Tansu) and evictions of killed members quick.
FAST_GROUP = {"session_timeout_ms": 4000, "heartbeat_interval_ms": 400, "max_poll_interval_ms": 20000,
              "reconnect_backoff_max_ms": 1000, "request_timeout_ms": 5000}


def kafka_config(bootstrap: str, topics: list[str], **options) -> dict:
    section = {"bootstrap_servers": [bootstrap], "topics": topics, "probe_interval": 0.5}
    section.update(options)
    return {"sources": {"kafka": section}}


def envelope(event: str, data, channel: str | None = None) -> str:
    message = {"event": event, "data": data}
    if channel is not None:
        message["channel"] = channel
    return json.dumps(message)


def source_state(server, name: str = "kafka") -> dict:
    return server.health()["components"].get(f"source:{name}", {})


def wait_assigned(server, partitions: int, timeout: float = 15.0) -> None:
    wait_until(lambda: source_state(server).get("state") == "up"
               and f"{partitions} partition(s)" in source_state(server).get("detail", ""),
               timeout, message=f"the source to read {partitions} partition(s)")


def wait_group(server, timeout: float = 20.0) -> None:
    wait_until(lambda: re.search(r"[1-9]\d* partition\(s\) assigned", source_state(server, "kafka-group")
                                 .get("detail", "")), timeout, message="the group consumer to get partitions")


def counter(server, name: str, **labels) -> int:
    rows = server.health()["counters"].get(name, [])
    return sum(r.get("count", 0) for r in rows if all(r.get(k) == v for k, v in labels.items()))


def sink_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sink_env(tmp_path: Path, **extra) -> dict:
    env = {"RELAY_PLUGINS": "kafka_durable_sink", "KAFKA_TEST_SINK_FILE": str(tmp_path / "durable.jsonl"),
           "KAFKA_TEST_SINK_PLAIN_FILE": str(tmp_path / "plain.jsonl"),
           "PYTHONPATH": os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))}
    env.update(extra)
    return env


def worker_pids(server) -> list[int]:
    return [int(p) for p in re.findall(r"Booting worker with pid: (\d+)", server.log())]


def kill_everything(server) -> None:
    """kill -9 the workers and the arbiter: nothing gets to clean up."""
    for pid in worker_pids(server):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.kill()


# -- 1. live delivery, under the issue's own command line ------------------------------------------

@pytest.mark.kafka_brokers("apache", "tansu")
def test_envelope_record_reaches_sse_within_two_seconds(kafka_broker, producer, relay_server_factory):
    topic = create_topic(kafka_broker, topic_name("emotes"))
    server = relay_server_factory(env={"RELAY_KAFKA_BOOTSTRAP_SERVERS": kafka_broker, "RELAY_KAFKA_TOPICS": topic,
                                       "RELAY_SSE_HEARTBEAT": "0.5"})
    wait_assigned(server, 1)
    with server.sse("/events/demo") as stream:
        stream.read_some(0.2)
        sent = time.monotonic()
        producer().send(topic, '{"event":"emote","data":{"emote":"dolphin"},"channel":"demo"}')
        event = stream.next_event(2)
        latency = time.monotonic() - sent
    assert (event.event, event.data) == ("emote", '{"emote":"dolphin"}')
    assert event.id == f"kafka:{topic}:0:0~{topic}=1"  # the record, then the next offset to read
    assert latency < 2.0
    print(f"produce -> SSE latency: {latency * 1000:.0f} ms")


def arrival_bursts(kafka_broker, producer, server, topic: str, records: int = 20, every: float = 0.025) -> tuple:
    """Produce ``records`` one by one, ``every`` seconds apart, while reading the stream; returns
    (how many bursts they arrived in, the seconds from the last send to the last arrival, the data)."""
    wait_assigned(server, 1)
    send = producer()
    with server.sse("/events/trickle") as stream:
        stream.read_some(0.2)
        sent_last = []

        def trickle():
            for n in range(records):
                send.send(topic, envelope("tick", n, "trickle"))
                time.sleep(every)
            sent_last.append(time.monotonic())

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        arrivals, data = [], []
        for _ in range(records):
            data.append(int(stream.next_event(5).data))
            arrivals.append(time.monotonic())
        thread.join(10)
    bursts = 1 + sum(1 for a, b in zip(arrivals, arrivals[1:]) if b - a > 0.010)
    return bursts, arrivals[-1] - sent_last[0], data


@pytest.mark.timeout(90)
@pytest.mark.kafka_brokers("apache")
def test_a_trickle_of_records_is_read_in_batches_within_batch_wait(kafka_broker, producer, relay_server_factory):
    """``batch_wait_ms``: after a poll that brought a few records, the source waits before the
    next, so a trickle arrives in a few bursts (fewer wake-ups: the CPU figures are in
    benchmarks/kafka.py) and no record waits longer than about that."""
    topic = create_topic(kafka_broker, topic_name("trickle"))
    env = {"RELAY_KAFKA_BOOTSTRAP_SERVERS": kafka_broker, "RELAY_KAFKA_TOPICS": topic, "RELAY_KAFKA_START": "latest"}
    eager = relay_server_factory(env=env | {"RELAY_KAFKA_BATCH_WAIT_MS": "0"})
    eager_bursts, _, eager_data = arrival_bursts(kafka_broker, producer, eager, topic)
    eager.stop()
    batching = relay_server_factory(env=env | {"RELAY_KAFKA_BATCH_WAIT_MS": "400"})
    bursts, tail, data = arrival_bursts(kafka_broker, producer, batching, topic)
    assert eager_data == data == list(range(20))  # each in order, none lost or repeated
    print(f"20 records 25 ms apart arrived in {eager_bursts} bursts with batch_wait_ms 0, {bursts} with 400")
    assert eager_bursts >= 8
    assert bursts <= 6
    assert tail < 0.4 * 2 + 1.0  # the last waited at most one batch wait (plus a fetch already in flight)


@pytest.mark.kafka_brokers("tansu")
def test_batch_wait_above_a_second_stops_start_up_with_its_name(kafka_broker, relay_server_factory):
    with pytest.raises(RuntimeError) as failure:
        relay_server_factory(kafka_config(kafka_broker, ["x"], batch_wait_ms=5000))
    assert "batch_wait_ms" in str(failure.value) and "at most 1000" in str(failure.value)


@pytest.mark.kafka_brokers("apache")
def test_raw_format_uses_event_name_and_channel_map(kafka_broker, producer, relay_server_factory):
    topic = create_topic(kafka_broker, topic_name("raw"))
    server = relay_server_factory(kafka_config(kafka_broker, [topic], format="raw", event_name="line",
                                               channel_map={topic: "lines"}))
    wait_assigned(server, 1)
    with server.sse("/events/lines") as stream:
        stream.read_some(0.2)
        p = producer()
        p.send(topic, "plain text, not JSON")
        p.send(topic, '{"event":"x","data":1}')
        first, second = stream.events(2, 5)
    assert (first.event, first.data) == ("line", "plain text, not JSON")
    assert (second.event, second.data) == ("line", '{"event":"x","data":1}')  # raw: the whole value


@pytest.mark.kafka_brokers("apache", "tansu")
def test_every_worker_reads_every_partition_and_names_records_alike(kafka_broker, producer, relay_server_factory):
    # Two relays of one worker each: the in-memory backbone serves one worker, and a worker of a
    # multi-worker relay reads Kafka exactly as a separate relay does (its own consumer, no group).
    topic = create_topic(kafka_broker, topic_name("parts"), partitions=3)
    servers = [relay_server_factory(kafka_config(kafka_broker, [topic])) for _ in range(2)]
    for server in servers:
        wait_assigned(server, 3)
    streams = [server.sse("/events/many") for server in servers for _ in range(2)]
    try:
        for s in streams:
            s.read_some(0.1)
        p = producer()
        sent = [p.send(topic, envelope("n", i, "many"), partition=i % 3) for i in range(30)]
        received = [s.events(30, 15) for s in streams]
    finally:
        for s in streams:
            s.close()
    expected = {f"kafka:{topic}:{m.partition}:{m.offset}" for m in sent}
    for events in received:
        # every event, naming the same record everywhere (the cursor after "~" is the worker's own)
        assert {e.id.split("~")[0] for e in events} == expected
        for partition in range(3):  # each partition in order
            values = [e.json() for e in events if e.id.split(":")[2] == str(partition)]
            assert values == sorted(values) and len(values) == 10


# -- 3. resume by id from Kafka -----------------------------------------------------------------------

@pytest.mark.kafka_brokers("apache", "tansu")
def test_resume_by_id_reads_kafka_after_a_restart(kafka_broker, producer, relay_server_factory):
    topic = create_topic(kafka_broker, topic_name("resume"), partitions=3)
    server = relay_server_factory(kafka_config(kafka_broker, [topic]))
    wait_assigned(server, 3)
    base = int(time.time() * 1000) - 60_000
    p = producer()
    with server.sse("/events/r") as stream:
        stream.read_some(0.2)
        for i in range(12):  # round robin; partition 2's clock runs a minute behind the others
            p.send(topic, envelope("n", i, "r"), partition=i % 3, timestamp_ms=base + i * 100 - 60_000 * (i % 3 == 2))
        received = stream.events(12, 10)
    server.restart()  # the in-memory history is gone: only Kafka knows these ids now
    wait_assigned(server, 3)
    assert server.health()["backbone"]["events"] == 0

    # From any event: exactly what came after it, whatever the timestamps.
    for k in (0, 5, 11):
        with server.sse("/events/r", headers={"Last-Event-ID": received[k].id}) as stream:
            replayed = stream.events(11 - k, 10) if k < 11 else []
            assert stream.no_event_within(0.5), "an event was repeated"
        assert sorted(e.json() for e in replayed) == sorted(e.json() for e in received[k + 1:])
    p.send(topic, envelope("n", 12, "r"), partition=0)

    # The polyfill query parameter works the same way, and live events follow the replay.
    with server.sse(f"/events/r?lastEventId={received[10].id}") as stream:
        assert [e.json() for e in stream.events(2, 10)] == [received[11].json(), 12]


@pytest.mark.kafka_brokers("apache", "tansu")
def test_resume_beyond_the_limit_says_what_was_missed(kafka_broker, producer, relay_server_factory):
    topic = create_topic(kafka_broker, topic_name("limit"))
    server = relay_server_factory(kafka_config(kafka_broker, [topic]), env={"RELAY_HISTORY_SIZE": "3"})
    wait_assigned(server, 1)
    p = producer()
    with server.sse("/events/l") as stream:
        stream.read_some(0.2)
        for i in range(8):
            p.send(topic, envelope("n", i, "l"))
        ids = [e.id for e in stream.events(8, 10)]
    with server.sse("/events/l", headers={"Last-Event-ID": ids[0]}) as stream:
        missed, *events = stream.events(4, 10)
    assert missed.event == "relay-missed" and missed.json()["reason"] == "evicted"
    assert [e.json() for e in events] == [5, 6, 7]
    with server.sse("/events/l", headers={"Last-Event-ID": f"kafka:{topic}:0:99999~{topic}=186a0"}) as stream:
        assert stream.next_event(10).json()["reason"] == "unknown-id"  # beyond the log end


# -- 5. bad messages ---------------------------------------------------------------------------------

@pytest.mark.kafka_brokers("apache", "tansu")
def test_bad_messages_between_good_ones_are_counted_logged_and_dead_lettered(kafka_broker, producer,
                                                                             relay_server_factory):
    topic = create_topic(kafka_broker, topic_name("bad"))
    dead = create_topic(kafka_broker, topic_name("dead"))
    server = relay_server_factory(kafka_config(kafka_broker, [topic], max_size=200, dead_letter_topic=dead))
    wait_assigned(server, 1)
    p = producer()
    bad = [(b"not json {", None, "not_json"), (b"[1,2]", None, "wrong_shape"),
           (envelope("big", "x" * 300).encode(), None, "too_large"), (envelope("k", 1).encode(), b"\xff\xfe", "bad_key"),
           (b"\xff\xfe{}", None, "not_utf8"), (None, b"gone", "no_value"),
           (b'{"event":"e","data":1,"extra":2}', None, "wrong_shape"), (b'{"event":"a\\nb"}', None, "invalid_field")]
    with server.sse("/events/good") as stream:
        stream.read_some(0.2)
        offsets = {}
        for i, (value, key, reason) in enumerate(bad):
            p.send(topic, envelope("ok", i, "good"))
            offsets[p.send(topic, value, key=key).offset] = reason
        p.send(topic, envelope("ok", len(bad), "good"))
        events = stream.events(len(bad) + 1, 10)
    assert [e.json() for e in events] == list(range(len(bad) + 1))  # nothing lost, nothing stalled

    wait_until(lambda: counter(server, "rejected", source="kafka") == len(bad), 5, message="rejected counters")
    for reason in set(offsets.values()):
        assert counter(server, "rejected", source="kafka", reason=reason) == list(offsets.values()).count(reason)
    log = server.log()
    for offset in offsets:
        assert f"topic {topic} partition 0 offset {offset}" in log
    copies = read_topic(kafka_broker, dead, len(bad))
    assert [dict(c.headers)["relay-offset"].decode() for c in copies] == [str(o) for o in offsets]
    assert [dict(c.headers)["relay-reason"].decode() for c in copies] == list(offsets.values())
    assert copies[0].value == b"not json {" and copies[3].key == b"\xff\xfe"


# -- 4. durable delivery through a consumer group ---------------------------------------------------

def group_config(bootstrap: str, topics: list[str], group: str, **options) -> dict:
    return kafka_config(bootstrap, topics, group_id=group, start="earliest", consumer=FAST_GROUP, **options)


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 10.0) -> list:
    """Every record of partition 0 of ``topic``: waits up to ``timeout`` for ``expected`` of them."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    records = []
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for batch in consumer.poll(300).values():
                records.extend(batch)
            if len(records) >= expected:
                for batch in consumer.poll(500).values():  # and nothing more
                    records.extend(batch)
                break
    finally:
        consumer.close()
    return records


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close(autocommit=False)


@pytest.mark.kafka_brokers("apache", "tansu")
def test_group_commits_what_the_durable_sink_took_and_restarts_without_loss(kafka_broker, producer,
                                                                             relay_server_factory, tmp_path):
    topic = create_topic(kafka_broker, topic_name("group"), partitions=2)
    dead = create_topic(kafka_broker, topic_name("dead"))
    group = topic_name("g")
    server = relay_server_factory(group_config(kafka_broker, [topic], group, dead_letter_topic=dead),
                                  env=sink_env(tmp_path))
    wait_group(server)
    p = producer()
    for i in range(20):
        p.send(topic, envelope("n", i, "g"), partition=i % 2)
    p.send(topic, "not json", partition=0)  # skipped, dead-lettered once (by the group), committed past
    durable = tmp_path / "durable.jsonl"
    wait_until(lambda: len(sink_lines(durable)) >= 20, 15, message="20 events in the durable sink")
    wait_until(lambda: committed(kafka_broker, group, topic, 2) == {0: 11, 1: 10}, 10, message="commits")
    assert len(read_topic(kafka_broker, dead, 1)) == 1

    stopping = time.monotonic()
    assert server.stop() == 0
    stop_took = time.monotonic() - stopping
    assert stop_took < 5, f"graceful stop took {stop_took:.1f}s"  # sources stop promptly
    assert "source kafka-group is stopped" in server.log()
    for i in range(20, 40):  # produced while relay is down
        p.send(topic, envelope("n", i, "g"), partition=i % 2)
    server.start()
    wait_until(lambda: len(sink_lines(durable)) >= 40, 20, message="40 events in the durable sink")
    wait_until(lambda: committed(kafka_broker, group, topic, 2) == {0: 21, 1: 20}, 10, message="commits")
    lines = sink_lines(durable)
    assert sorted(line["data"] for line in lines) == list(range(40))  # a clean stop repeats nothing
    # The sink also implements relay_deliver: relay kept Kafka events off that path (no double delivery).
    plain = sink_lines(tmp_path / "plain.jsonl")
    assert not [line for line in plain if line["source"] == "kafka"]
    server.publish("g", "from-http", 1)
    wait_until(lambda: [x for x in sink_lines(tmp_path / "plain.jsonl") if x["source"] == "http"], 5,
               message="HTTP events still on relay_deliver")


@pytest.mark.kafka_brokers("apache", "tansu")
def test_kill_9_mid_stream_then_restart_loses_nothing(kafka_broker, producer, relay_server_factory, tmp_path):
    topic = create_topic(kafka_broker, topic_name("kill"), partitions=2)
    group = topic_name("g")
    server = relay_server_factory(group_config(kafka_broker, [topic], group),
                                  env=sink_env(tmp_path, KAFKA_TEST_SINK_DELAY="0.05"))
    wait_group(server)
    p = producer()
    for i in range(60):
        p.send(topic, envelope("n", i, "k"), partition=i % 2)
    durable = tmp_path / "durable.jsonl"
    wait_until(lambda: len(sink_lines(durable)) >= 15, 15, message="the sink to be mid-stream")
    kill_everything(server)
    seen_before = len(sink_lines(durable))
    assert seen_before < 60
    server.start()
    wait_until(lambda: {x["data"] for x in sink_lines(durable)} >= set(range(60)), 30,
               message="every produced event in the durable sink")
    lines = sink_lines(durable)
    print(f"kill -9 after {seen_before} of 60: {len(lines) - 60} duplicate(s) after restart")


@pytest.mark.kafka_brokers("apache", "tansu")
def test_member_killed_mid_stream_group_rebalances_without_loss(kafka_broker, producer, relay_server_factory,
                                                                tmp_path):
    # Two relays (one worker each) in one group, sharing the durable sink's file: kill -9 the one
    # that is delivering; the group hands its partitions to the other, from the last commit.
    topic = create_topic(kafka_broker, topic_name("rebal"), partitions=4)
    group = topic_name("g")
    env = sink_env(tmp_path, KAFKA_TEST_SINK_DELAY="0.05")
    servers = [relay_server_factory(group_config(kafka_broker, [topic], group), env=env) for _ in range(2)]
    for server in servers:
        wait_group(server)
    p = producer()
    for i in range(80):
        p.send(topic, envelope("n", i, "w"), partition=i % 4)
    durable = tmp_path / "durable.jsonl"
    wait_until(lambda: len({x["pid"] for x in sink_lines(durable)}) == 2 and len(sink_lines(durable)) >= 20, 20,
               message="both members delivering")
    victim_pid = sink_lines(durable)[-1]["pid"]  # a worker that is delivering right now
    victim = next(s for s in servers if victim_pid in worker_pids(s))
    kill_everything(victim)
    killed_at = len(sink_lines(durable))
    started = time.monotonic()
    wait_until(lambda: {x["data"] for x in sink_lines(durable)} >= set(range(80)), 45,
               message="every produced event in the durable sink after the rebalance")
    lines = sink_lines(durable)
    assert len({x["data"] for x in lines if x["pid"] != victim_pid}) > 80 - killed_at
    print(f"member {victim_pid} killed after {killed_at} of 80; all 80 delivered {time.monotonic() - started:.1f}s "
          f"later; {len(lines) - 80} duplicate(s)")


@pytest.mark.kafka_brokers("apache", "tansu")
def test_a_refusing_durable_sink_gets_the_record_again(kafka_broker, producer, relay_server_factory, tmp_path):
    topic = create_topic(kafka_broker, topic_name("refuse"))
    group = topic_name("g")
    switch = tmp_path / "refuse"
    switch.touch()
    server = relay_server_factory(group_config(kafka_broker, [topic], group),
                                  env=sink_env(tmp_path, KAFKA_TEST_SINK_REFUSE=str(switch)))
    wait_group(server)
    p = producer()
    with server.sse("/events/x") as stream:
        stream.read_some(0.2)
        for i in range(3):
            p.send(topic, envelope("n", i, "x"))
        assert [e.json() for e in stream.events(3, 5)] == [0, 1, 2]  # live delivery does not wait
    wait_until(lambda: counter(server, "kafka_redeliveries") >= 2, 10, message="redeliveries")
    assert committed(kafka_broker, group, topic, 1) == {0: None}
    assert "waiting for a durable sink" in source_state(server, "kafka-group")["detail"]
    switch.unlink()
    durable = tmp_path / "durable.jsonl"
    wait_until(lambda: len(sink_lines(durable)) >= 3, 20, message="the records once the sink takes them")
    assert [x["data"] for x in sink_lines(durable)] == [0, 1, 2]
    wait_until(lambda: committed(kafka_broker, group, topic, 1) == {0: 3}, 10, message="the commit")


# -- 6. faults ---------------------------------------------------------------------------------------

def test_broker_unreachable_at_start_then_up(private_broker, relay_server_factory):
    server = relay_server_factory(kafka_config(private_broker.bootstrap, ["late"]))
    wait_until(lambda: source_state(server).get("state") == "down", 15, message="the source to be down")
    assert server.health()["status"] == "degraded"
    private_broker.start()
    create_topic(private_broker.bootstrap, "late")
    wait_assigned(server, 1, timeout=30)
    p = Producer(private_broker.bootstrap)
    try:
        with server.sse("/events/late") as stream:
            stream.read_some(0.2)
            p.send("late", envelope("hello", 1))
            assert stream.next_event(5).event == "hello"
    finally:
        p.close()


def test_broker_lost_mid_stream_and_back(private_broker, relay_server_factory):
    private_broker.start()
    create_topic(private_broker.bootstrap, "flaky")
    server = relay_server_factory(kafka_config(private_broker.bootstrap, ["flaky"], consumer=FAST_GROUP))
    wait_assigned(server, 1)
    p = Producer(private_broker.bootstrap)
    with server.sse("/events/flaky") as stream:
        stream.read_some(0.2)
        for i in range(3):
            p.send("flaky", envelope("n", i))
        assert [e.json() for e in stream.events(3, 5)] == [0, 1, 2]
        p.close()
        private_broker.stop()
        lost = time.monotonic()
        wait_until(lambda: source_state(server).get("state") == "down", 20, message="the source to be down")
        print(f"source down {time.monotonic() - lost:.1f}s after the broker was killed")
        private_broker.start()  # in-memory storage: an empty broker, the topic made again
        create_topic(private_broker.bootstrap, "flaky")
        back = time.monotonic()
        wait_until(lambda: source_state(server).get("state") == "up", 30, message="the source to be up again")
        p = Producer(private_broker.bootstrap)
        try:
            p.send("flaky", envelope("n", 3))
            assert stream.next_event(15).json() == 3  # the same stream: the browser never noticed
        finally:
            p.close()
        print(f"source up and relaying {time.monotonic() - back:.1f}s after the broker came back")


def test_group_connection_lost_mid_stream_resumes_without_loss(proxied_broker, relay_server_factory, tmp_path):
    broker, proxy = proxied_broker
    create_topic(broker.bootstrap, "durable", partitions=2)
    server = relay_server_factory(group_config(broker.bootstrap, ["durable"], "gproxy"),
                                  env=sink_env(tmp_path, KAFKA_TEST_SINK_DELAY="0.05"))
    wait_group(server)
    p = Producer(broker.bootstrap)
    for i in range(40):
        p.send("durable", envelope("n", i, "d"), partition=i % 2)
    p.close()
    durable = tmp_path / "durable.jsonl"
    wait_until(lambda: len(sink_lines(durable)) >= 10, 15, message="the sink to be mid-stream")
    proxy.cut()
    wait_until(lambda: source_state(server, "kafka-group").get("state") == "down"
               or source_state(server, "kafka").get("state") == "down", 20, message="a Kafka source down")
    time.sleep(2)
    proxy.restore()
    p = Producer(broker.bootstrap)
    try:
        for i in range(40, 50):
            p.send("durable", envelope("n", i, "d"), partition=i % 2)
    finally:
        p.close()
    wait_until(lambda: {x["data"] for x in sink_lines(durable)} >= set(range(50)), 45,
               message="every event in the durable sink after the outage")
    wait_until(lambda: source_state(server, "kafka-group").get("state") == "up", 15, message="group source up")


# -- 1. the hub stays responsive while the consumer is busy -----------------------------------------

@pytest.mark.kafka_brokers("apache")
def test_heartbeats_and_requests_stay_on_time_while_the_consumer_is_busy(kafka_broker, relay_server_factory):
    # A backlog read at full speed: the consumer is as busy as it gets, and no producer competes
    # with the relay for the machine's CPUs while it is measured.
    topic = create_topic(kafka_broker, topic_name("busy"), partitions=4)
    count = 16000
    for process in produce_in_processes(kafka_broker, topic, count, 4, pad=1000, processes=4):
        assert process.wait(60) == 0
    server = relay_server_factory(kafka_config(kafka_broker, [topic], start="earliest"),
                                  env={"RELAY_SSE_HEARTBEAT": "0.2"})
    gaps, latencies = [], []
    with server.sse("/events/idle") as idle, server.sse("/events/busy") as busy:
        begin = time.monotonic()
        idle.read_some(0.01)
        last_beat, beats = time.monotonic(), len(idle.comments)
        relayed, received, next_health = 0, 0, 0.0
        while relayed < count and time.monotonic() - begin < 45:
            busy.read_some(0.01)
            received += len(busy._ready)
            busy._ready.clear()
            idle.read_some(0.01)
            now = time.monotonic()
            if len(idle.comments) > beats:
                gaps.append(now - last_beat)
                last_beat, beats = now, len(idle.comments)
            if now >= next_health:
                _, _, body = http_request(f"{server.url}/healthz", timeout=5)
                latencies.append(time.monotonic() - now)
                relayed = sum(r["count"] for r in json.loads(body)["counters"].get("events_in", [])
                              if r.get("source") == "kafka")
                next_health = time.monotonic() + 0.1
        took = time.monotonic() - begin
    assert relayed == count and received > 0
    print(f"relayed a backlog of {count} records (1 KB) in {took:.1f}s ({received} to one stream while "
          f"measuring); heartbeat gaps max {max(gaps):.3f}s (n={len(gaps)}); /healthz max "
          f"{max(latencies) * 1000:.0f} ms (n={len(latencies)})")
    assert len(gaps) >= 3
    assert max(gaps) < 0.5  # heartbeat every 0.2 s; measured about 0.28 s on 2 busy cores
    assert max(latencies) < 0.4  # measured about 0.1 s


# -- 2. configuration: security pass-through ---------------------------------------------------------

class FirstBytes:
    """A TCP listener posing as a broker: records the first bytes of each connection, never answers."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.first: list[bytes] = []
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)
            connection.settimeout(5)
            try:
                self.first.append(connection.recv(5))
            except OSError:
                pass

    def close(self):
        self.listener.close()
        for connection in self.connections:
            connection.close()


@pytest.mark.parametrize("protocol", ["SSL", "PLAINTEXT"])
def test_security_options_are_passed_to_kafka_python(relay_server_factory, protocol):
    # What the client sends first says which protocol kafka-python was given: a TLS ClientHello
    # (record type 0x16, version 3.x) for SSL, a Kafka request (a 4-byte size) for PLAINTEXT.
    broker = FirstBytes()
    try:
        server = relay_server_factory(kafka_config(broker.address, ["ssl"], security={
            "security_protocol": protocol, "ssl_check_hostname": False}, consumer={"bootstrap_timeout_ms": 1500}))
        wait_until(lambda: any(broker.first), 20, message="the client to send its first bytes")
        first = next(b for b in broker.first if b)
        is_tls = first[0] == 0x16 and first[1] == 0x03
        assert is_tls == (protocol == "SSL"), f"{protocol} client sent {first!r} first"
        wait_until(lambda: source_state(server).get("state") == "down", 20, message="the client to give up")
        if protocol == "SSL":  # the handshake hangs: the detail names security settings as a cause
            assert "security settings" in source_state(server)["detail"]
    finally:
        broker.close()


@pytest.mark.kafka_brokers("tansu")
def test_unknown_security_keys_stop_start_up_with_their_name(kafka_broker, relay_server_factory):
    with pytest.raises(RuntimeError) as failure:
        relay_server_factory(kafka_config(kafka_broker, ["x"], security={"sasl_password": "p"}))
    message = str(failure.value)
    assert "sources.kafka.security" in message and "'sasl_password' is not passed through" in message
    assert "sasl_plain_password" in message  # the allowed keys are listed
