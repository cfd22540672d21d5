"""Point 4 with a durable broker source: the Kafka consumer group commits its position past an
event only after the webhook sink has stored the delivery (``relay_deliver_durable``).

Uses the Kafka test broker of tests/kafka_support.py (Tansu, from the test extras, which
fails loudly when it is missing).
"""

from __future__ import annotations

import json
import re
import time

import pytest
from kafka_support import create_topic, topic_name
from redis_support import start_redis
from webhook_support import Receiver, endpoint, webhook_config

from relay.testing import free_port, wait_until

pytestmark = pytest.mark.timeout(120)
FAST_GROUP = {"session_timeout_ms": 4000, "heartbeat_interval_ms": 400, "max_poll_interval_ms": 20000,
              "reconnect_backoff_max_ms": 1000, "request_timeout_ms": 5000}


def committed(bootstrap: str, group: str, topic: str) -> int | None:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, 0))
    finally:
        consumer.close(autocommit=False)


@pytest.mark.kafka_brokers("apache", "tansu")
def test_kafka_commits_only_after_the_webhook_store_has_the_delivery(kafka_broker, producer,  # noqa: F811
                                                                      relay_server_factory):
    topic = create_topic(kafka_broker, topic_name("wh"), partitions=1)
    group = topic_name("g")
    redis_port = free_port()  # the webhook store: down at first
    receiver = Receiver().start()
    config = webhook_config([endpoint(f"{receiver.url}/hook")], store=f"redis://127.0.0.1:{redis_port}/0")
    config["sources"] = {"kafka": {"bootstrap_servers": [kafka_broker], "topics": [topic], "group_id": group,
                                   "start": "earliest", "consumer": FAST_GROUP, "probe_interval": 0.5}}
    server = relay_server_factory(config)
    redis = None
    try:
        wait_until(lambda: re.search(r"[1-9]\d* partition\(s\) assigned",
                                     server.health()["components"].get("source:kafka-group", {}).get("detail", "")),
                   30, message="the group consumer to get its partition")
        p = producer()
        for n in range(5):
            p.send(topic, json.dumps({"event": "order", "data": n, "channel": "demo"}), partition=0)
        time.sleep(3)
        assert committed(kafka_broker, group, topic) in (None, 0), "nothing committed while the store is down"
        assert receiver.requests == []

        redis = start_redis(port=redis_port)  # the store comes back
        got = receiver.wait_for(5, timeout=60)
        wait_until(lambda: committed(kafka_broker, group, topic) == 5, 30, message="the commit past 5 records")
        time.sleep(1)
        assert len(receiver.requests) == 5 and len({r.id for r in got}) == 5
        assert sorted(r.verify()["data"] for r in got) == list(range(5))
    finally:
        server.stop()
        receiver.stop()
        if redis is not None:
            redis.stop()
