"""Durable sinks on the Redis Cluster backbone (issue 16, point 4) through real interfaces: a real
3-master/3-replica cluster (tests/redis_cluster.py), relays under gunicorn's gevent worker,
HTTP publishing, the webhook sink delivering to a local receiver, and no SSE client anywhere:
every event reaches the endpoint although no worker subscribes to any channel.

Guarantees checked: exactly once per endpoint while no worker dies; at least once, with
duplicates only after a worker was SIGKILLed (its unacknowledged entries are claimed by another
worker, maybe of the other instance, whose store has not seen them); nothing acknowledged lost
when a shard's master dies. ``pytest -s`` prints the measured facts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from redis_cluster import redis_cluster_fixture, shared_redis_cluster_fixture  # noqa: F401
from webhook_support import endpoint, webhook_config

from plugins.redis_backbone.keys import Layout
from plugins.redis_common import encode_event
from relay.api import Event
from relay.testing import http_request, wait_until

pytest_plugins = ["webhook_fixtures"]
PARTITIONS = 32
GROUP = "relay-sinks"


def start_relay(factory, cluster_url: str, prefix: str, receiver_url: str, workers: int = 1, **settings):
    config = {"backbone": cluster_url, "hook_timeout": 1.0, "backbones": {"redis": {
        "prefix": prefix, "health_interval": 0.5, "claim_idle": 1.5, "log_wait": 0.1, **settings}},
        **webhook_config([endpoint(receiver_url, channels=["*"])])}
    return factory(config, workers=workers)


def publish_many(servers, channels: list[str], count: int, start: int = 0) -> list[dict]:
    """``count`` events over HTTP, round robin over ``servers`` and ``channels``; their answers."""
    return [servers[i % len(servers)].publish(channels[i % len(channels)], "n", {"i": i})
            for i in range(start, start + count)]


def received_numbers(receiver) -> Counter:
    """How many requests the receiver got for each published number, signatures verified."""
    return Counter(request.verify()["data"]["i"] for request in receiver.for_path(None))


def logs_of(cluster, prefix: str) -> tuple[int, int]:
    """(entries in every partition's durable log, entries pending in the sinks' group)."""
    client, layout = cluster.client(), Layout(prefix, PARTITIONS)
    try:
        entries = pending = 0
        for p in range(PARTITIONS):
            key = layout.partition(p).log()
            entries += client.xlen(key)
            if client.exists(key):
                try:
                    pending += client.xpending(key, GROUP)["pending"]
                except redis.ResponseError:  # no group yet
                    pass
        return entries, pending
    finally:
        client.close()


def worker_pids(server) -> list[int]:
    """The gunicorn workers of a relay (children of its arbiter)."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children]


def pending_of(cluster, prefix: str, consumer: str) -> int:
    """Entries read by ``consumer`` and not acknowledged, over every partition's log."""
    client, layout = cluster.client(), Layout(prefix, PARTITIONS)
    try:
        total = 0
        for p in range(PARTITIONS):
            key = layout.partition(p).log()
            if client.exists(key):
                total += sum(c["pending"] for c in client.xinfo_consumers(key, GROUP) if c["name"] == consumer.encode())
        return total
    finally:
        client.close()


def kill_while_holding_entries(cluster, prefix: str, server, pid: int) -> int:
    """SIGKILL worker ``pid`` of ``server`` while it holds log entries it read and has not
    acknowledged: its instance's webhook store is write-locked from outside (its sink waits,
    then refuses: the entries stay pending with their reader) until it holds some. How many."""
    consumer = f"{socket.gethostname()}:{pid}"
    lock = sqlite3.connect(server.directory / "data" / "webhooks.sqlite3", timeout=10, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        held = wait_until(lambda: pending_of(cluster, prefix, consumer), 20,
                          message=f"worker {pid} holding unacknowledged entries")
        os.kill(pid, signal.SIGKILL)
        lock.execute("ROLLBACK")
    finally:
        lock.close()
    return held


def durable_stats(server) -> dict:
    return server.health()["backbone"]["durable_log"]


@pytest.mark.timeout(120)
def test_every_event_of_every_channel_reaches_the_webhook_exactly_once_with_no_channel_subscribed(
        shared_redis_cluster, relay_server_factory, receiver):
    cluster = shared_redis_cluster
    a = start_relay(relay_server_factory, cluster.url, "d1:", receiver.url, workers=2)
    b = start_relay(relay_server_factory, cluster.url, "d1:", receiver.url)
    channels = [f"orders-{n}" for n in range(40)]  # over most partitions, so every shard
    sent = publish_many([a, b], channels, 160)
    receiver.wait_for(160, 30)
    time.sleep(1.0)  # a duplicate would come within this
    counts = received_numbers(receiver)
    assert sorted(counts) == list(range(160)) and set(counts.values()) == {1}, \
        f"not exactly once: {[(i, n) for i, n in counts.items() if n != 1][:10]}"
    ids = {r.verify()["data"]["i"]: r for r in receiver.for_path(None)}
    assert all(json.loads(ids[i].body)["data"] == {"i": i} for i in range(160))
    assert len({r.id for r in receiver.for_path(None)}) == 160
    # The webhook body names the event's channel and the id its publisher was answered.
    assert {(r.verify()["channel"], r.verify()["id"]) for r in receiver.for_path(None)} == {
        (channels[i % len(channels)], s["id"]) for i, s in enumerate(sent)}
    # No worker heard any announcement: nothing subscribed, the log carried everything.
    for server in (a, b):
        backbone = server.health()["backbone"]
        assert backbone["heard_messages"] == 0 and backbone["subscribed"] == 0
    assert logs_of(cluster, "d1:")[0] == 160
    wait_until(lambda: logs_of(cluster, "d1:")[1] == 0, 5, message="every log entry acknowledged")
    client = cluster.client()
    try:
        readers = Counter()
        for p in range(PARTITIONS):
            key = Layout("d1:", PARTITIONS).partition(p).log()
            if client.exists(key):
                for consumer in client.xinfo_consumers(key, GROUP):
                    readers[consumer["name"]] += 1
    finally:
        client.close()
    print(f"\nFACT 160 events on 40 channels, 3 workers of 2 relays, no SSE client: 160 webhook requests, "
          f"each once; {len(readers)} group member(s) read the logs; announcements heard: 0")
    assert len(readers) == 3  # each worker of both instances is a member: the work is shared
    shares = shares_of([a, b], workers=3)
    print(f"FACT the 32 partitions' logs shared by the 3 workers: {sorted(len(s) for s in shares.values())}")
    assert sorted(p for share in shares.values() for p in share) == list(range(PARTITIONS))  # each read once


def shares_of(servers, workers: int) -> dict[str, list[int]]:
    """Each worker's share of the partitions (``GET /healthz`` answered by each of ``workers``),
    once every worker lists them all as readers."""
    shares: dict[str, list[int]] = {}

    def collect() -> bool:
        for server in servers:
            durable = durable_stats(server)
            if durable["sharing_with"] == workers:
                shares[durable["consumer"]] = durable["partitions"]
        return len(shares) == workers

    wait_until(collect, 15, message=f"the shares of {workers} workers")
    return shares


@pytest.mark.timeout(120)
def test_a_worker_sigkilled_mid_stream_loses_nothing_its_pending_entries_are_claimed(
        shared_redis_cluster, relay_server_factory, receiver):
    cluster = shared_redis_cluster
    a = start_relay(relay_server_factory, cluster.url, "d2:", receiver.url, workers=2)
    b = start_relay(relay_server_factory, cluster.url, "d2:", receiver.url)
    channels = [f"stream-{n}" for n in range(24)]
    total, acked, stop = 300, [], threading.Event()

    def publisher():  # through b, whose one worker is not killed
        for i in range(total):
            if stop.is_set():
                return
            acked.append(b.publish(channels[i % len(channels)], "n", {"i": i})["id"])
            time.sleep(0.01)

    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        wait_until(lambda: len(acked) >= 100, 30, message="100 events published")
        held = kill_while_holding_entries(cluster, "d2:", a, worker_pids(a)[0])
        thread.join(60)
    finally:
        stop.set()
        thread.join(10)
    assert len(acked) == total
    wait_until(lambda: len(received_numbers(receiver)) == total, 30,
               message=f"{total} distinct events at the webhook receiver")
    wait_until(lambda: logs_of(cluster, "d2:")[1] == 0, 10, message="every log entry acknowledged (claimed)")
    counts = received_numbers(receiver)
    duplicates = sum(n - 1 for n in counts.values())
    print(f"\nFACT worker SIGKILLed holding {held} unacknowledged entr(ies) after 100 of {total} events: all "
          f"{total} delivered, {duplicates} duplicate request(s) (claimed by a worker of the other instance, "
          f"whose store had not seen them)")
    assert sorted(counts) == list(range(total))


@pytest.mark.timeout(90)
def test_entries_a_dead_member_read_but_never_acknowledged_are_claimed_after_the_lease(
        shared_redis_cluster, relay_server_factory, receiver):
    """A member that read entries and died (the group knows it; nobody else reads them) is
    simulated with a raw XREADGROUP; a relay claims them once idle for claim_idle and delivers."""
    cluster, layout = shared_redis_cluster, Layout("d3:", PARTITIONS)
    client = cluster.client()
    try:
        for i in range(12):
            keys = layout.of(f"ghost-{i}")
            client.xgroup_create(keys.log(), GROUP, id="0", mkstream=True) if not client.exists(keys.log()) else None
            client.xadd(keys.log(), {"e": encode_event(Event(f"ghost-{i}", "n", {"i": i}, source="http",
                                                       timestamp=time.time()))})
        for p in range(PARTITIONS):
            if client.exists(layout.partition(p).log()):
                client.xreadgroup(GROUP, "dead-worker", {layout.partition(p).log(): ">"})
        assert logs_of(cluster, "d3:")[1] == 12  # all pending with the dead member
        start_relay(relay_server_factory, cluster.url, "d3:", receiver.url)
        receiver.wait_for(12, 20)
        time.sleep(0.5)
        assert sorted(received_numbers(receiver).elements()) == list(range(12))
        wait_until(lambda: logs_of(cluster, "d3:")[1] == 0, 5, message="claimed entries acknowledged")
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_durable_log_false_writes_no_log(shared_redis_cluster, relay_server_factory, receiver):
    cluster = shared_redis_cluster
    a = start_relay(relay_server_factory, cluster.url, "d4:", receiver.url, durable_log="false")
    publish_many([a], ["x", "y", "z"], 6)
    assert logs_of(cluster, "d4:") == (0, 0)
    assert durable_stats(a) == "off"
    # auto without a durable sink set up (webhooks loaded, no endpoint): no log either
    idle = relay_server_factory({"backbone": cluster.url, "backbones": {"redis": {"prefix": "d8:"}}})
    publish_many([idle], ["x", "y", "z"], 6)
    assert logs_of(cluster, "d8:") == (0, 0) and durable_stats(idle) == "write if it exists"
    # auto with a durable sink set up (webhooks with an endpoint): written and read
    b = start_relay(relay_server_factory, cluster.url, "d5:", receiver.url)
    publish_many([b], ["x", "y", "z"], 6)
    assert logs_of(cluster, "d5:")[0] == 6 and durable_stats(b)["readers"] == 3
    # ... and an instance without sinks (auto) publishing into that deployment writes it too,
    # now that the logs exist: its events reach the other instance's webhook
    sinkless = relay_server_factory({"backbone": cluster.url, "backbones": {"redis": {"prefix": "d5:"}}})
    publish_many([sinkless], ["x", "y", "z"], 6, start=6)
    receiver.wait_for(12, 20)
    assert sorted(received_numbers(receiver).elements()) == list(range(12)) and logs_of(cluster, "d5:")[0] == 12


@pytest.mark.timeout(120)
def test_a_shards_master_killed_under_load_loses_no_acknowledged_event_for_the_sinks(
        redis_cluster, relay_server_factory, receiver):
    """Publishes every few ms over every shard; one master is SIGKILLed: its partitions' logs
    wait and resume on the promoted replica; every 202 reaches the webhook receiver."""
    cluster = redis_cluster
    start_relay(relay_server_factory, cluster.url, "d6:", receiver.url)  # a second reader of the logs
    b = start_relay(relay_server_factory, cluster.url, "d6:", receiver.url)
    layout = Layout("d6:", PARTITIONS)
    channels = [f"load-{n}" for n in range(30)]
    acked, refused, stop = [], [], threading.Event()

    def publisher():
        i = 0
        while not stop.is_set():
            body = json.dumps({"event": "n", "data": {"i": i}}).encode()
            status, _, _ = http_request(f"{b.url}/events/{channels[i % len(channels)]}", "POST", body,
                                        {"Content-Type": "application/json"}, timeout=10)
            (acked if status == 202 else refused).append(i)
            i += 1
            time.sleep(0.005)

    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        time.sleep(0.5)
        cluster.kill_master(layout.of(channels[0]).slot)
        failover = cluster.wait_failover(20)
        wait_until(lambda: acked and acked[-1] > (refused[-1] if refused else 0) + 30, 20,
                   message="publishes accepted again on every shard")
    finally:
        stop.set()
        thread.join(15)
    wait_until(lambda: set(acked) <= set(received_numbers(receiver)), 30,
               message="every acknowledged event at the webhook receiver")
    counts = received_numbers(receiver)
    print(f"\nFACT master SIGKILLed under load: failover {failover:.2f}s, {len(acked)} acknowledged, "
          f"{len(refused)} refused (503), all acknowledged delivered to the webhook, "
          f"{sum(n - 1 for n in counts.values())} duplicate(s), "
          f"{len(set(counts) - set(acked))} refused-but-stored delivered too")
    assert refused


@pytest.mark.timeout(90)
def test_a_channel_watched_by_browsers_on_both_instances_still_reaches_the_webhook_once(
        shared_redis_cluster, relay_server_factory, receiver):
    """Workers that hear a channel for their SSE clients do not also hand its events to the
    webhook sink (relay_deliver): the log is its only path, or each instance's store would
    deliver its own copy."""
    cluster = shared_redis_cluster
    a = start_relay(relay_server_factory, cluster.url, "d7:", receiver.url)
    b = start_relay(relay_server_factory, cluster.url, "d7:", receiver.url)
    with a.sse("/events/watched") as on_a, b.sse("/events/watched") as on_b:
        on_a.read_some(1)
        on_b.read_some(1)
        wait_until(lambda: all(s.health()["backbone"]["subscribed"] == 1 for s in (a, b)), 15,
                   message="the channel subscribed on both relays")
        publish_many([a, b], ["watched"], 20)
        assert len(on_a.events(20, 10)) == 20 and len(on_b.events(20, 10)) == 20
    receiver.wait_for(20, 20)
    time.sleep(1.0)
    counts = received_numbers(receiver)
    assert sorted(counts) == list(range(20)) and set(counts.values()) == {1}, counts


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def xreadgroup_calls(cluster) -> int:
    total = 0
    for port in cluster.masters():
        with redis.Redis(port=port, socket_timeout=2) as node:
            total += node.info("commandstats").get("cmdstat_xreadgroup", {}).get("calls", 0)
    return total


@pytest.mark.timeout(120)
def test_what_reading_the_logs_costs_idle_and_per_event(shared_redis_cluster, relay_server_factory, receiver):
    """The price of the log readers: commands and CPU while nothing is published (the sweeps
    and bounded waits), and CPU per event delivered to the webhook sink."""
    cluster = shared_redis_cluster
    a = start_relay(relay_server_factory, cluster.url, "d9:", receiver.url, workers=2, log_wait=0.2)
    pids = worker_pids(a)
    shares_of([a], workers=2)  # both listed (the first to start read everything for a moment)
    time.sleep(1.5)  # groups created, readers in their steady state
    calls, cpu, began = xreadgroup_calls(cluster), sum(cpu_seconds(p) for p in pids), time.monotonic()
    time.sleep(5)
    idle_seconds = time.monotonic() - began
    idle_calls = (xreadgroup_calls(cluster) - calls) / idle_seconds / len(pids)
    idle_cpu = (sum(cpu_seconds(p) for p in pids) - cpu) / idle_seconds / len(pids)
    cpu = sum(cpu_seconds(p) for p in pids)
    channels = [f"cost-{n}" for n in range(64)]
    publish_many([a], channels, 500)
    receiver.wait_for(500, 60)
    per_event = (sum(cpu_seconds(p) for p in pids) - cpu) / 500
    print(f"\nFACT log readers, 32 partitions on 3 shards, log_wait 0.2 s: idle {idle_calls:.0f} XREADGROUP/s and "
          f"{idle_cpu * 100:.1f} % CPU per worker; {per_event * 1000:.2f} ms CPU per event, both workers together "
          f"(HTTP publish, log read, webhook stored and sent)")
    # Per log_wait, a sweep (one XREADGROUP per partition of the worker's share on the shard)
    # and one bounded wait per shard it has partitions on: the two workers together read each
    # partition about once (without shares, each read all: 2 x (32 + 3) / 0.2 = 350/s).
    assert idle_calls * len(pids) < 1.2 * (PARTITIONS + 2 * 3) / 0.2
    assert idle_cpu < 0.05


@pytest.mark.timeout(90)
def test_events_a_sink_refuses_stay_pending_and_come_again_after_the_backoff(
        shared_redis_cluster, relay_server_factory, receiver):
    """The webhook store write-locked from outside for longer than hook_timeout: the sink
    refuses, nothing is acknowledged, and once the lock is gone the same entries are offered
    again and delivered, each once."""
    cluster = shared_redis_cluster
    a = start_relay(relay_server_factory, cluster.url, "d10:", receiver.url)
    lock = sqlite3.connect(a.directory / "data" / "webhooks.sqlite3", timeout=10, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        publish_many([a], ["r1", "r2", "r3"], 9)
        wait_until(lambda: logs_of(cluster, "d10:")[1] > 0, 10, message="entries read and pending")
        time.sleep(2.5)  # longer than hook_timeout (1 s): the sink refused at least once
        assert not receiver.for_path(None)
        assert logs_of(cluster, "d10:")[1] > 0
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    receiver.wait_for(9, 30)
    time.sleep(0.5)
    assert sorted(received_numbers(receiver).elements()) == list(range(9))
    wait_until(lambda: logs_of(cluster, "d10:")[1] == 0, 10, message="every entry acknowledged")
    assert durable_stats(a)["redelivered"] > 0
