"""A real Redis Cluster for tests: 3 masters with one replica each, on free ports.

Six ``redis-server --cluster-enabled yes`` in temporary directories of their own, joined by
``redis-cli --cluster create … --cluster-replicas 1 --cluster-yes``, ready once every node says
``cluster_state:ok`` and sees all 16384 slots served by a master that is not failing.

``cluster-node-timeout`` is low (1000 ms by default) so that a failover takes about two
seconds rather than the default 15+, and ``cluster-replica-validity-factor 0`` lets a replica
take over however long its master was gone. ``cluster-require-full-coverage no`` (the default
here, a parameter) keeps the other shards serving while one shard has no master: only the
channels of that shard's slots are refused.

Fixtures: ``redis_cluster`` (a fresh cluster for one test: failover tests change it) and
``shared_redis_cluster`` (one per module, for tests that leave it as they found it). A test
module imports them (``from redis_cluster import redis_cluster_fixture``) or a conftest lists
``redis_cluster`` in ``pytest_plugins``. Creation takes about 2 s on a 2-core machine
(measured, with replicas synced: see docs/design-redis-cluster.md).

The tests always start clusters of their own (they kill and restart nodes), so nothing here
is skipped for want of one.

By hand: ``python tests/redis_cluster.py`` starts one, prints its URL and stops it on Ctrl-C.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

import pytest
import redis
import redis.cluster

try:
    from relay.testing import free_port
except ImportError:  # run by hand outside the venv's editable install: same idea, no relay needed
    import socket

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

SLOTS = 16384
SCHEME = "redis+cluster://"


def parse_seeds(url: str) -> list[tuple[str, int]]:
    """``redis+cluster://h:p,h:p`` (or a bare ``h:p,h:p``) -> ``[(h, p), …]``."""
    text = url.removeprefix(SCHEME)
    text = text.split("/", 1)[0]
    seeds = []
    for part in text.split(","):
        host, _, port = part.strip().rpartition(":")
        seeds.append((host or "127.0.0.1", int(port)))
    return seeds


def cluster_nodes(client: redis.Redis) -> list[dict]:
    """``CLUSTER NODES`` of one node, parsed: id, port, flags (set), master (id or None),
    slots (list of (first, last)), link ("connected"/"disconnected")."""
    # "CLUSTER", "NODES" as two words: redis-py keeps its reply raw (it parses "CLUSTER NODES").
    text = client.execute_command("CLUSTER", "NODES")
    if isinstance(text, bytes):
        text = text.decode()
    nodes = []
    for line in text.strip().splitlines():
        fields = line.split()
        address = fields[1].split("@")[0]
        host, _, port = address.rpartition(":")
        slots = []
        for part in fields[8:]:
            if part.startswith("["):
                continue  # a slot being migrated or imported
            first, _, last = part.partition("-")
            slots.append((int(first), int(last or first)))
        nodes.append({"id": fields[0], "host": host, "port": int(port) if port else 0,
                      "flags": set(fields[2].split(",")), "master": None if fields[3] == "-" else fields[3],
                      "link": fields[7], "slots": slots})
    return nodes


def cluster_info(client: redis.Redis) -> dict[str, str]:
    text = client.execute_command("CLUSTER", "INFO")
    if isinstance(text, bytes):
        text = text.decode()
    return dict(line.split(":", 1) for line in text.strip().splitlines() if ":" in line)


class Node:
    """One ``redis-server --cluster-enabled yes`` of our own."""

    def __init__(self, directory: Path, port: int, bus_port: int, options: list[str]):
        self.directory, self.port, self.bus_port, self.options = directory, port, bus_port, options
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None

    def start(self) -> Node:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install redis-server", pytrace=False)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-port", str(self.bus_port), "--cluster-config-file", str(self.directory / "nodes.conf"),
             "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log"), *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis("127.0.0.1", self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def wait_answering(self, deadline: float) -> None:
        while True:
            if not self.alive:
                raise RuntimeError(f"redis-server on {self.port} exited: {self.log()}")
            try:
                with self.client(0.5) as client:
                    if client.ping():
                        return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not answer: {self.log()}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


class RedisCluster:
    """A Redis Cluster of our own: ``masters`` masters with ``replicas`` replicas each (one
    master alone, without replicas, takes every slot: what a benchmark compares 3 shards with).

    :param node_timeout: ``cluster-node-timeout`` in ms: a master unreachable that long is
        failed over (about 2× this in practice, measured).
    :param full_coverage: ``cluster-require-full-coverage``; ``False`` (default) keeps the
        other shards serving while one has no master.
    """


    def __init__(self, directory: Path | None = None, masters: int = 3, replicas: int = 1,
                 node_timeout: int = 1000, full_coverage: bool = False, extra: tuple[str, ...] = ()):
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="relay-cluster-"))
        self.count, self.replicas_per_master = masters, replicas
        options = ["--save", "", "--appendonly", "no", "--cluster-node-timeout", str(node_timeout),
                   "--cluster-replica-validity-factor", "0",
                   # a replica's first sync starts at once (Redis 7 waits 5 s for more replicas)
                   "--repl-diskless-sync-delay", "0",
                   "--cluster-require-full-coverage", "yes" if full_coverage else "no", *extra]
        self.nodes: list[Node] = []
        taken: set[int] = set()

        def pick() -> int:  # a free port not already given to another node of this cluster
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            return port

        for index in range(masters * (1 + replicas)):
            self.nodes.append(Node(self.directory / f"node-{index}", pick(), pick(), options))
        self.created_in: float | None = None  # seconds, from the first start to cluster_state:ok
        self.last_failover: float | None = None  # seconds from kill_master to wait_failover's success

    # -- life cycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> RedisCluster:
        began = time.monotonic()
        deadline = began + timeout
        try:
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                node.wait_answering(deadline)
            if len(self.nodes) == 1:  # redis-cli --cluster create refuses fewer than 3 masters
                with self.nodes[0].client() as client:
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, SLOTS - 1)
            else:
                self._create(deadline)
            self.wait_ready(max(0.1, deadline - time.monotonic()), replicas=True)
        except BaseException:
            self.stop()
            raise
        self.created_in = time.monotonic() - began
        return self

    def _create(self, deadline: float) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli is not installed: apt-get install redis-tools", pytrace=False)
        created = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"],
            capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()), check=False)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]} {created.stderr}")

    def stop(self) -> None:
        """Kill every node and remove its files (safe to call twice)."""
        for node in self.nodes:
            node.kill()
        for node in self.nodes:
            shutil.rmtree(node.directory, ignore_errors=True)
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start() if not any(n.alive for n in self.nodes) else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------------------------

    @property
    def seeds(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    @property
    def url(self) -> str:
        return SCHEME + self.seeds

    def node(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def client(self, **options) -> redis.cluster.RedisCluster:
        """A redis-py ``RedisCluster`` from the seeds (bounded timeouts)."""
        options.setdefault("socket_timeout", 5)
        options.setdefault("socket_connect_timeout", 2)
        return redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in parse_seeds(self.url)], **options)

    # -- topology -------------------------------------------------------------------------------

    def topology(self) -> list[dict]:
        """``CLUSTER NODES`` as seen by the first live node that answers."""
        for node in self.nodes:
            if not node.alive:
                continue
            try:
                with node.client(1.0) as client:
                    return cluster_nodes(client)
            except redis.RedisError:
                continue
        raise RuntimeError("no node of the cluster answers")

    def masters(self) -> list[int]:
        """Ports of the masters that are not failed, as the cluster sees them now."""
        return sorted(n["port"] for n in self.topology()
                      if "master" in n["flags"] and not n["flags"] & {"fail", "fail?"})

    def replicas(self) -> list[int]:
        return sorted(n["port"] for n in self.topology()
                      if "slave" in n["flags"] and not n["flags"] & {"fail", "fail?"})

    def master_of(self, slot: int) -> int:
        """The port of the master that serves ``slot`` (failed or not)."""
        for entry in self.topology():
            if "master" in entry["flags"] and any(a <= slot <= b for a, b in entry["slots"]):
                return entry["port"]
        raise LookupError(f"no master serves slot {slot}")

    def replica_of(self, master_port: int) -> list[int]:
        nodes = self.topology()
        master_id = next(n["id"] for n in nodes if n["port"] == master_port)
        return sorted(n["port"] for n in nodes if n["master"] == master_id)

    def _ready(self, replicas: bool) -> bool:
        live = [node for node in self.nodes if node.alive]
        for node in live:
            try:
                with node.client(1.0) as client:
                    if cluster_info(client).get("cluster_state") != "ok":
                        return False
                    nodes = cluster_nodes(client)
            except redis.RedisError:
                return False
            # slots served by masters that are up (the process lives) and not seen as failing
            live_ports = {other.port for other in live}
            covered = sum(b - a + 1 for n in nodes
                          if "master" in n["flags"] and not n["flags"] & {"fail", "fail?"} and n["port"] in live_ports
                          for a, b in n["slots"])
            if covered != SLOTS:
                return False
            # every live node must be known to this one, and no live node is seen as failing
            seen = {n["port"]: n for n in nodes}
            for other in live:
                entry = seen.get(other.port)
                if entry is None or entry["flags"] & {"fail", "fail?", "handshake", "noaddr"}:
                    return False
            if replicas and sum("slave" in n["flags"] for n in nodes) < self.count * self.replicas_per_master:
                return False
            if replicas and "slave" in seen.get(node.port, {}).get("flags", ()):
                try:  # a replica counts once it has synced (else WAIT answers 0 and failover loses data)
                    with node.client(1.0) as client:
                        if client.info("replication").get("master_link_status") != "up":
                            return False
                except redis.RedisError:
                    return False
        return True

    def wait_ready(self, timeout: float = 20.0, replicas: bool = False) -> float:
        """Wait until every live node says ``cluster_state:ok`` and sees all slots served by
        masters that are not failing; returns the seconds waited. ``replicas=True`` also waits
        for every replica to be known."""
        began = time.monotonic()
        while not self._ready(replicas):
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"cluster not ready within {timeout}s: {self.describe()}")
            time.sleep(0.05)
        return time.monotonic() - began

    def describe(self) -> str:
        try:
            return "; ".join(f"{n['port']} {','.join(sorted(n['flags']))} slots={n['slots']}" for n in self.topology())
        except RuntimeError as exc:
            return str(exc)

    # -- failures -------------------------------------------------------------------------------

    def kill_master(self, slot_or_port: int) -> int:
        """SIGKILL the master serving a slot (0–16383) or listening on a port; returns its port."""
        port = slot_or_port if any(n.port == slot_or_port for n in self.nodes) else self.master_of(slot_or_port)
        node = self.node(port)
        if not node.alive:
            raise RuntimeError(f"node {port} is already dead")
        self._killed_at = time.monotonic()
        node.kill()
        return port

    def wait_failover(self, timeout: float = 20.0) -> float:
        """Wait (bounded) until a replica was promoted for every master killed and the cluster is
        ok again on every live node; returns the seconds since the last kill_master."""
        self.wait_ready(timeout)
        began = getattr(self, "_killed_at", time.monotonic())
        self.last_failover = time.monotonic() - began
        return self.last_failover

    def restart(self, port: int, timeout: float = 20.0) -> Node:
        """Start a killed node again with its nodes.conf (empty data): it rejoins, as a replica
        of whoever took over its slots. Waits until the cluster sees it healthy again and every
        replica has synced."""
        node = self.node(port)
        node.kill()
        node.start()
        deadline = time.monotonic() + timeout
        node.wait_answering(deadline)
        self.wait_ready(max(0.1, deadline - time.monotonic()), replicas=True)
        return node


@pytest.fixture(name="redis_cluster")
def redis_cluster_fixture(tmp_path):
    """A fresh cluster for this test (3 masters, 1 replica each)."""
    cluster = RedisCluster(tmp_path / "cluster").start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(name="shared_redis_cluster", scope="module")
def shared_redis_cluster_fixture(tmp_path_factory):
    """One cluster for the tests of a module that leave it as they found it."""
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def main() -> None:
    cluster = RedisCluster().start()
    print(f"{cluster.url}\n(created in {cluster.created_in:.2f}s; masters {cluster.masters()}, "
          f"replicas {cluster.replicas()}; Ctrl-C stops it)", flush=True)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        cluster.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
