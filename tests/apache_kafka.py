"""A single-node Apache Kafka broker (KRaft) for the tests, from Maven Central jars.

The jars are fetched once with Maven (``mvn dependency:copy-dependencies`` on a generated
``pom.xml``) into ``~/.cache/relay/kafka-<version>/lib`` (``RELAY_KAFKA_CACHE`` overrides the
``~/.cache/relay`` part), outside the checkout, under a lock so that two processes never fetch
at once. :class:`ApacheKafka` formats a data directory of its own once and runs one JVM that is
both broker and controller on two free ports of 127.0.0.1.

By hand::

    python tests/apache_kafka.py           # fetch if needed, start, print KAFKA_BOOTSTRAP_SERVERS=…, Ctrl-C stops
    python tests/apache_kafka.py --fetch   # only fetch the jars (what .ci/run does)

Only the standard library and kafka-python (for the readiness check) are used, so the module
works outside pytest too.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

VERSION = os.environ.get("RELAY_KAFKA_VERSION", "4.1.1")
# Kafka's jars log through slf4j 1.x; without a binding the broker writes nothing at all.
LOG4J_VERSION = "2.24.3"

# A quick-starting JVM: the C1 compiler only and the serial collector suit a short test broker.
JVM_FLAGS = ["-Xmx512m", "-Xms256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
             "-Djava.awt.headless=true"]
# What Kafka's own start scripts run a broker with (kafka-server-start.sh's heap, kafka-run-class.sh's
# collector): for measurements, where the test flags' serial collector and C1 code would be the
# broker's pauses, not the client's.
PRODUCTION_JVM_FLAGS = ["-Xmx1G", "-Xms1G", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                        "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
                        "-Djava.awt.headless=true"]

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>relay.tests</groupId>
  <artifactId>apache-kafka-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

# Warnings and errors, plus the lines that say the broker started or stopped.
_LOG4J = """status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = info
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = info
"""


def cache_root() -> Path:
    """Where fetched jars live: ``$RELAY_KAFKA_CACHE`` or ``~/.cache/relay``."""
    return Path(os.environ.get("RELAY_KAFKA_CACHE") or Path.home() / ".cache" / "relay")


def lib_dir(version: str = VERSION) -> Path:
    return cache_root() / f"kafka-{version}" / "lib"


def fetch(version: str = VERSION) -> Path:
    """The directory of Apache Kafka ``version``'s jars, fetched with Maven on first use.

    A ``.complete`` marker is written only after Maven succeeded, so a fetch cut short is
    done again; an exclusive lock makes a second process wait for the first one's fetch."""
    lib = lib_dir(version)
    done = lib / ".complete"
    if done.exists():
        return lib
    home = lib.parent
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():  # another process fetched while this one waited
            return lib
        _maven_copy(version, home, lib)
        done.write_text(version)
    return lib


def _maven_copy(version: str, home: Path, lib: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Apache Kafka for the tests needs Maven (`mvn`) and Java 17+: "
                           "apt-get install maven default-jre-headless")
    (home / "pom.xml").write_text(_POM.format(version=version, log4j=LOG4J_VERSION))
    if lib.exists():
        shutil.rmtree(lib)  # left by a fetch that did not finish
    command = [mvn, "-q", "-B", "-f", str(home / "pom.xml"), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={lib}"]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if result.returncode != 0 or not list(lib.glob(f"kafka_2.13-{version}.jar")):
        raise RuntimeError(f"fetching Apache Kafka {version} failed (exit {result.returncode}): "
                           f"{' '.join(command)}\n{result.stdout[-4000:]}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding, never starting
    with "-" (the storage tool would read it as an option; Kafka's own ids avoid it too)."""
    while True:
        made = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not made.startswith("-"):
            return made


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the forked child only calls it


def _die_with_parent() -> None:
    """In the child before exec: Linux kills it when the process that started it dies, so a
    test run that is killed outright never leaves a JVM behind (its own session keeps the
    terminal's Ctrl-C away from it: :meth:`ApacheKafka.stop` ends it)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ApacheKafka:
    """One Apache Kafka process, broker and controller at once, on 127.0.0.1.

    ``port`` is the broker's (clients connect there); the controller listens on a second free
    port. ``stop()`` then ``start()`` runs it again on the same ports with the same data."""

    def __init__(self, directory: Path, port: int | None = None, version: str = VERSION,
                 jvm_flags: list[str] | None = None):
        self.directory = Path(directory)
        self.jvm_flags = list(JVM_FLAGS if jvm_flags is None else jvm_flags)
        self.version = version
        self.port = port or free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.data_dir = self.directory / "data"
        self.config_path = self.directory / "server.properties"
        self.log_path = self.directory / "kafka.log"
        self.process: subprocess.Popen | None = None
        self.start_seconds: float | None = None  # how long the last start took

    def _properties(self) -> str:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            # One node: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "3",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Tests join groups often: no waiting for more members, and short sessions (kafka-python
            # clients with session_timeout_ms of a few seconds, so killed members leave quickly).
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "500",
            # Compaction tests: the cleaner looks for work every 100 ms, not every 15 s.
            "log.cleaner.backoff.ms": "100",
            "log.retention.check.interval.ms": "1000",
            "auto.create.topics.enable": "true",
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _java(self, main: str, *args: str) -> list[str]:
        lib = fetch(self.version)
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("Apache Kafka for the tests needs Java 17+: apt-get install default-jre-headless")
        return [java, *self.jvm_flags, f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
                "-cp", f"{lib}/*", main, *args]

    def _format(self) -> None:
        """Write the configuration and format the log directory (once: its meta file stays)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._properties())
        (self.directory / "log4j2.properties").write_text(_LOG4J)
        if (self.data_dir / "meta.properties").exists():
            return
        command = self._java("kafka.tools.StorageTool", "format", "-t", _cluster_id(),
                             "-c", str(self.config_path))
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"formatting Kafka storage failed: {' '.join(command)}\n{result.stdout[-4000:]}")

    def start(self, timeout: float = 60.0) -> ApacheKafka:
        """Start the broker and return once it answers a metadata request."""
        began = time.monotonic()
        self._format()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self._java("kafka.Kafka", str(self.config_path)),
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            # one foreign call between fork and exec, nothing that
                                            # takes a lock another thread may hold
                                            preexec_fn=_die_with_parent)  # noqa: PLW1509
        try:
            self._wait_ready(began + timeout)
        except BaseException:  # not ready, or interrupted: never leave a JVM behind
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def _wait_ready(self, deadline: float) -> None:
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"Apache Kafka exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Apache Kafka did not answer on {self.bootstrap} in time:\n{self.log_tail()}")
            time.sleep(0.2)

    def _answers(self) -> bool:
        """Whether the broker answers a metadata request (it lists topics)."""
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        try:
            consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
        except KafkaError:
            return False
        try:
            consumer.topics()
            return True
        except KafkaError:
            return False
        finally:
            consumer.close()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it has not ended within ``timeout``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fetch", action="store_true", help="only fetch the jars, then exit")
    parser.add_argument("--port", type=int, help="the broker's port (default: a free one)")
    parser.add_argument("--dir", type=Path, help="data directory (default: a temporary one, removed at exit)")
    args = parser.parse_args()
    if args.fetch:
        print(f"Apache Kafka {VERSION} jars in {fetch()}")
        return 0
    directory = args.dir or Path(tempfile.mkdtemp(prefix="relay-kafka-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the broker on SIGTERM too
    broker = ApacheKafka(directory, port=args.port)
    try:
        broker.start()
        print(f"# Apache Kafka {VERSION} started in {broker.start_seconds:.1f}s, data in {directory}", flush=True)
        print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}", flush=True)
        while broker.process is not None and broker.process.poll() is None:
            time.sleep(0.5)
        print(broker.log_tail(), file=sys.stderr)  # it ended by itself: say why
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)

if __name__ == "__main__":
    sys.exit(main())
