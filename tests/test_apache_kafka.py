"""The Apache Kafka test harness itself (tests/apache_kafka.py): a broker that stops and starts
again on the same port with its data, and a start that fails says why instead of hanging."""

from __future__ import annotations

import socket

import pytest
from apache_kafka import ApacheKafka
from kafka_support import Producer, create_topic, topic_name

pytestmark = pytest.mark.timeout(90)


def read_all(bootstrap: str, topic: str) -> list[bytes]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=3000)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        return [record.value for record in consumer]
    finally:
        consumer.close()


def test_a_stopped_broker_starts_again_on_its_port_with_its_data(tmp_path):
    broker = ApacheKafka(tmp_path).start()
    try:
        topic = create_topic(broker.bootstrap, topic_name("kept"))
        producer = Producer(broker.bootstrap, acks="all")
        producer.send(topic, b"before")
        producer.close()
        broker.stop()
        with pytest.raises(OSError):  # really down
            socket.create_connection(("127.0.0.1", broker.port), timeout=1).close()
        broker.start()
        assert read_all(broker.bootstrap, topic) == [b"before"]
        print(f"Apache Kafka restart: {broker.start_seconds:.1f}s")
    finally:
        broker.stop()


def test_a_broker_that_cannot_start_fails_with_its_log(tmp_path):
    with socket.socket() as taken:  # its controller's port is taken: Kafka exits
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = ApacheKafka(tmp_path)
        broker.controller_port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="Apache Kafka exited") as failure:
            broker.start(timeout=60)
    assert "Address already in use" in str(failure.value)  # the log tail says why
    assert broker.process is None
