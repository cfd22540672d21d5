"""Scale-out: two relay instances with two gevent workers each, on one Redis and one Kafka broker.

Kafka events reach every client on every worker in order; webhooks go through one consumer group
shared by all four workers and a shared Redis store; SIGKILL of a whole instance mid-stream
loses no webhook. Duplicates are allowed by the at-least-once contract: the test counts them.
"""

import json
import threading
import time
from collections import Counter

import pytest

from kafka_support import Producer, create_topic, topic_name
from relay.testing import wait_until
from webhook_support import Receiver, endpoint, webhook_config


FAST_GROUP = {"session_timeout_ms": 4000, "heartbeat_interval_ms": 400, "max_poll_interval_ms": 20000,
              "reconnect_backoff_max_ms": 1000, "request_timeout_ms": 5000}
EVENTS = 90
CHANNELS = ("room-a", "room-b", "room-c")


@pytest.fixture
def receiver():
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def scale_config(redis_server, kafka_broker, topic, receiver):
    config = webhook_config([endpoint(f"{receiver.url}/hook", channels=["room-*"])],
                            store=redis_server.url, key_prefix="scale-wh")
    config.update({
        "backbone": redis_server.url,
        "backbones": {"redis": {"prefix": "scale:", "health_interval": 0.5}},
        "sinks": {**config["sinks"], "sse": {"retry": 200}},
        "sources": {"kafka": {"bootstrap_servers": [kafka_broker], "topics": [topic], "group_id": f"g-{topic}",
                              "start": "earliest", "probe_interval": 0.5, "consumer": FAST_GROUP}},
    })
    return config


def open_streams(server, count=12):
    """Streams on both of the instance's workers (X-Relay-Worker tells which)."""
    streams, pids = [], set()
    while len(streams) < count or len(pids) < 2:
        stream = server.sse("/events?" + "&".join(f"channel={c}" for c in CHANNELS))
        streams.append(stream)
        pids.add(stream.response_headers["x-relay-worker"])
        assert len(streams) <= 60, f"streams landed on {pids} only"
    return streams, pids


@pytest.mark.kafka_brokers("apache")
def test_two_instances_four_workers_one_stream_and_no_webhook_lost(relay_server_factory, redis_server,
                                                                  kafka_broker, receiver):
    topic = create_topic(kafka_broker, topic_name("scale"), partitions=3)
    config = scale_config(redis_server, kafka_broker, topic, receiver)
    a = relay_server_factory(config, workers=2)
    b = relay_server_factory(config, workers=2)
    streams_a, pids_a = open_streams(a)
    streams_b, pids_b = open_streams(b)
    assert len(pids_a | pids_b) == 4
    for server in (a, b):
        wait_until(lambda: server.health()["components"]["source:kafka"]["state"] == "up", 30)

    producer = Producer(kafka_broker)
    sent: list[tuple[str, int]] = []

    def produce():
        for n in range(EVENTS):
            channel = CHANNELS[n % 3]  # one channel per partition: Kafka keeps each in order
            producer.send(topic, json.dumps({"event": "n", "data": n, "channel": channel}),
                          partition=CHANNELS.index(channel))
            sent.append((channel, n))
            time.sleep(0.03)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    # Every stream on instance B, on both its workers, sees every event once, in order per channel.
    seen = {id(stream): [e.json() for e in stream.events(30, 20)] for stream in streams_b}
    time.sleep(0.3)
    a.kill()  # SIGKILL arbiter and both workers, mid-stream: its group members vanish
    thread.join(30)
    producer.close()
    assert len(sent) == EVENTS
    for stream in streams_b:
        numbers = seen[id(stream)] + [e.json() for e in stream.events(EVENTS - 30, 30)]
        stream.close()
        assert sorted(numbers) == list(range(EVENTS))
        for channel in CHANNELS:
            in_channel = [n for n in numbers if CHANNELS[n % 3] == channel]
            assert in_channel == sorted(in_channel), f"{channel} out of order"
    for stream in streams_a:
        stream.close()

    # Webhooks: the group rebalances to instance B, which delivers what A had not committed.
    received = receiver.wait_for(EVENTS, timeout=60, path="/hook")
    time.sleep(2)
    received = receiver.for_path("/hook")
    numbers = [r.verify()["data"] for r in received]
    duplicates = len(numbers) - len(set(numbers))
    assert set(numbers) == set(range(EVENTS)), f"lost: {sorted(set(range(EVENTS)) - set(numbers))}"
    ids = {}
    for r in received:  # a duplicate is the same event again: same webhook-id, same data
        assert ids.setdefault(r.id, r.verify()["data"]) == r.verify()["data"]
    print(f"\nscale-out: {EVENTS} events, {len(received)} webhook deliveries, {duplicates} duplicates "
          f"after SIGKILL of one of two instances")
    # At-least-once, bounded: the shared store keeps one delivery per webhook-id, so what Kafka
    # hands B again is not delivered again; only attempts in flight on A's two workers when it
    # died (claimed and not finished: at most 2 × max_concurrency, 20, per endpoint per worker)
    # can reach the receiver twice.
    counts = Counter(numbers)
    assert max(counts.values()) <= 2, f"delivered more than twice: {counts.most_common(3)}"
    assert duplicates <= 2 * 20, f"{duplicates} duplicates: more than A's workers had in flight"


def test_a_delivery_in_flight_on_a_killed_instance_is_finished_by_the_other(relay_server_factory, redis_server,
                                                                           receiver):
    """The instance that claimed a delivery dies mid-attempt: its lease runs out and the other
    instance delivers it, with the same webhook-id."""
    from webhook_support import Reply

    receiver.script = [Reply(hang=30)]  # the first attempt never gets an answer
    config = webhook_config([endpoint(f"{receiver.url}/hook", channels=["jobs"])], store=redis_server.url,
                            key_prefix="pickup-wh", timeout=1.0)  # lease: 2 x timeout + 5 s
    config.update({"backbone": redis_server.url, "backbones": {"redis": {"prefix": "pickup:"}}})
    a = relay_server_factory(config)
    a.publish("jobs", "job", {"n": 1})
    first = receiver.wait_for(1, timeout=15, path="/hook")[0]
    b = relay_server_factory(config)  # joins while A's attempt hangs
    a.kill()
    killed_at = time.monotonic()
    second = receiver.wait_for(2, timeout=30, path="/hook")[1]
    assert second.id == first.id and second.verify()["data"] == {"n": 1}
    assert time.monotonic() - killed_at < 20
    time.sleep(1.5)
    assert len(receiver.for_path("/hook")) == 2  # delivered once more, not once per instance
    assert b.health()["components"]["webhooks"]["queue"] == 0
