"""A real Redis Cluster (tests/redis_cluster.py) and the facts the sharded backbone rests on
(docs/design-redis-cluster.md): hash-tagged scripts, sharded pub/sub through redis-py, routing,
and what a subscriber and a publisher see when a shard's master dies.

Every test prints what it measured (``pytest -s`` shows it); the design note quotes these.
The gevent facts come from child processes that apply ``monkey.patch_all()`` first (the test
process itself is not patched, as relay's workers are). About 40 s in all: 2 s per cluster.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import redis
import redis.backoff
import redis.cluster
import redis.exceptions
import redis.retry
from redis_cluster import SLOTS, redis_cluster_fixture, shared_redis_cluster_fixture  # noqa: F401

# A publish reduced to its cluster facts: every key and the announcement channel carry one hash
# tag, so it runs in one slot (the design's full script: PARTITION_PUBLISH below).
# KEYS: 1 counter, 2 stream; ARGV: 1 announcement channel, 2 body.
PUBLISH = """
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 1000, '0-' .. seq, 'e', ARGV[2])
local heard = redis.call('SPUBLISH', ARGV[1], seq .. '\\n' .. ARGV[2])
return {seq, heard}
"""


def tagged(tag: str) -> tuple[str, str, str]:
    """Counter, stream and announcement channel sharing the hash tag ``tag``."""
    return f"relay:{{{tag}}}:seq", f"relay:{{{tag}}}:stream", f"relay:{{{tag}}}:ann"


def one_tag_per_master(cluster, client, prefix: str = "ch") -> dict[int, str]:
    """A tag whose slot each master serves: master port -> tag."""
    found: dict[int, str] = {}
    for i in range(10_000):
        tag = f"{prefix}{i}"
        port = cluster.master_of(client.keyslot(tagged(tag)[0]))
        found.setdefault(port, tag)
        if len(found) == len(cluster.masters()):
            return found
    raise AssertionError("no tag found for every master")


def shard_subscribers(port: int) -> list[dict]:
    """Connections of node ``port`` holding shard-channel subscriptions (CLIENT LIST ``ssub``)."""
    with redis.Redis(port=port, socket_timeout=2) as node:
        return [c for c in node.client_list() if int(c.get("ssub", 0)) > 0]


def read_until(pubsub, want: int, timeout: float, kinds=("smessage",)) -> list[dict]:
    """Messages of ``kinds`` read from a (Cluster)PubSub until ``want`` arrived or ``timeout``."""
    got, deadline = [], time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        message = pubsub.get_sharded_message(timeout=0.2)
        if message and message["type"] in kinds:
            got.append(message)
    return got


# -- the fixture itself ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_cluster_has_three_masters_with_a_synced_replica_each_and_covers_every_slot(shared_redis_cluster):
    cluster = shared_redis_cluster
    print(f"\nFACT cluster created in {cluster.created_in:.2f}s: {cluster.url}")
    assert cluster.url.startswith("redis+cluster://") and cluster.url.count(",") == 5
    nodes = cluster.topology()
    masters = [n for n in nodes if "master" in n["flags"]]
    assert len(masters) == 3 and len(cluster.replicas()) == 3
    assert sum(b - a + 1 for m in masters for a, b in m["slots"]) == SLOTS
    for master in masters:
        assert len(cluster.replica_of(master["port"])) == 1
    for port in cluster.replicas():
        with redis.Redis(port=port) as node:
            info = node.info("replication")
            assert info["role"] == "slave" and info["master_link_status"] == "up"
        with redis.Redis(port=port) as node:
            assert node.execute_command("CLUSTER", "INFO").decode().startswith("cluster_state:ok")


@pytest.mark.timeout(60)
def test_run_by_hand_it_prints_its_url_and_ctrl_c_stops_every_node_and_removes_its_files():
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed", pytrace=False)
    script = Path(__file__).parent / "redis_cluster.py"
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("redis+cluster://"), url
        process.stdout.readline()  # "(created in …)"
        client = redis.cluster.RedisCluster(host="127.0.0.1", port=int(url.split(",")[0].rsplit(":", 1)[1]))
        assert client.set("by-hand", "1") and len(client.get_primaries()) == 3
        nodes = client.get_nodes()
        directories = {Path(redis.Redis(port=n.port).config_get("dir")["dir"]).parent for n in nodes}
        client.close()
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0
        assert process.stdout.read().strip() == "stopped"
        for node in nodes:
            with pytest.raises(redis.ConnectionError):
                redis.Redis(port=node.port, socket_connect_timeout=1,
                            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0)).ping()
        assert len(directories) == 1 and not directories.pop().exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


# -- scripts and hash tags ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_script_over_one_tag_runs_and_two_tags_are_crossslot(shared_redis_cluster):
    client = shared_redis_cluster.client()
    try:
        seq, stream, channel = tagged("orders")
        script = client.register_script(PUBLISH)
        assert script(keys=[seq, stream], args=[channel, "a"])[0] >= 1  # routed by the keys' slot
        assert client.keyslot(seq) == client.keyslot(stream) == client.keyslot(channel)

        other_seq, _, _ = tagged("invoices")
        assert client.keyslot(other_seq) != client.keyslot(seq)
        # redis-py refuses before sending ...
        with pytest.raises(redis.exceptions.RedisClusterException, match="same key slot|slot"):
            client.eval("return 1", 2, seq, other_seq)
        # ... and Redis itself answers CROSSSLOT, even when both slots are on the node asked.
        node = client.get_node_from_key(seq)
        with redis.Redis(node.host, node.port) as raw:
            local = next(f"x{{{i}}}" for i in range(10_000) if client.keyslot(f"x{{{i}}}") != client.keyslot(seq)
                         and client.get_node_from_key(f"x{{{i}}}").name == node.name)
            with pytest.raises(redis.exceptions.ClusterCrossSlotError):  # Redis's CROSSSLOT error
                raw.eval("redis.call('INCR', KEYS[1]); return redis.call('INCR', KEYS[2])", 2, seq, local)
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_spublish_in_a_script_to_a_channel_of_another_node_fails_and_of_the_same_node_is_not_checked(
        shared_redis_cluster):
    """Redis 7.0 checks a script's SPUBLISH only against the node: the design must tag the
    announcement channel itself (a channel of another slot on the same node would pass and then
    be lost at the next resharding or failover)."""
    client = shared_redis_cluster.client()
    try:
        seq, _, channel = tagged("orders")
        node = client.get_node_from_key(seq)
        script = "redis.call('INCR', KEYS[1]); return redis.call('SPUBLISH', ARGV[1], 'x')"
        elsewhere = next(f"a{{{i}}}" for i in range(10_000) if client.get_node_from_key(f"a{{{i}}}").name != node.name)
        same_node = next(f"b{{{i}}}" for i in range(10_000) if client.keyslot(f"b{{{i}}}") != client.keyslot(seq)
                         and client.get_node_from_key(f"b{{{i}}}").name == node.name)
        with redis.Redis(node.host, node.port) as raw:
            assert raw.eval(script, 1, seq, channel) == 0  # no subscriber: 0 receivers
            with pytest.raises(redis.ResponseError, match="non local key"):
                raw.eval(script, 1, seq, elsewhere)
            assert raw.eval(script, 1, seq, same_node) == 0  # accepted: another slot, not checked
            # One SSUBSCRIBE over two slots of the same node is refused, though.
            pubsub = raw.pubsub()
            pubsub.execute_command("SSUBSCRIBE", channel, same_node)
            with pytest.raises(redis.exceptions.ClusterCrossSlotError):
                pubsub.parse_response(timeout=2)
            pubsub.close()
            # ... while one SSUBSCRIBE for many channels of one slot (one hash tag) is one command.
            pubsub = raw.pubsub()
            many = [f"relay:{{orders}}:ann:{i}" for i in range(20)]
            pubsub.execute_command("SSUBSCRIBE", *many)
            confirmed = [pubsub.parse_response(timeout=2) for _ in many]
            assert [reply[0] for reply in confirmed] == [b"ssubscribe"] * 20 and confirmed[-1][2] == 20
            pubsub.close()
    finally:
        client.close()


# The design's publish script (docs/design-redis-cluster.md, section 1), reduced: the partition's
# clock and counter number the event, the channel's stream and the partition's durable log keep
# it, the channel's sharded announcement carries it. KEYS: clock, counter, channel stream,
# partition log (all tagged {p<k>}); ARGV: body, channel, announcement channel (tagged too).
PARTITION_PUBLISH = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if ms < last then ms = last end
redis.call('SET', KEYS[1], ms)
local id = ms .. '-' .. redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], id, 'e', ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', 10000, id, 'c', ARGV[2], 'e', ARGV[1])
redis.call('SPUBLISH', ARGV[3], id .. '\\n' .. ARGV[1])
return id
"""
PARTITIONS = 8


def partition_keys(channel: str) -> tuple[int, list[str], str]:
    k = zlib.crc32(channel.encode()) % PARTITIONS
    tag = f"relay:{{p{k}}}"
    return k, [f"{tag}:clock", f"{tag}:seq", f"{tag}:s:{channel}", f"{tag}:log"], f"{tag}:a:{channel}"


def stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


@pytest.mark.timeout(60)
def test_partition_layout_one_script_per_publish_and_per_partition_positions_resume_exactly(shared_redis_cluster):
    """Design sections 1-3 on the real cluster: each publish is one script in its partition's
    slot; a worker subscribed per channel (one connection per shard) hears each partition in id
    order; a client's position per partition resumes with nothing lost and nothing repeated."""
    cluster = shared_redis_cluster
    client = cluster.client(decode_responses=True)
    readers: dict[str, redis.client.PubSub] = {}
    try:
        channels = [f"proto-{i}" for i in range(12)]
        assert len({partition_keys(c)[0] for c in channels}) >= 4
        script = client.register_script(PARTITION_PUBLISH)
        for channel in channels:  # a worker: one SSUBSCRIBE connection per shard
            _, keys, announce = partition_keys(channel)
            node = client.get_node_from_key(keys[0])
            if node.name not in readers:
                readers[node.name] = redis.Redis(node.host, node.port, decode_responses=True).pubsub()
            readers[node.name].ssubscribe(announce)
        assert 2 <= len(readers) <= 3
        for pubsub in readers.values():
            while pubsub.get_message(timeout=0.2):
                pass  # the confirmations
        published = []
        for i in range(240):
            channel = channels[(i * 7) % len(channels)]
            _, keys, announce = partition_keys(channel)
            published.append((channel, script(keys=keys, args=[f"body {i}", channel, announce])))
        heard: list[tuple[str, str]] = []  # (channel, id) in the order each shard's connection gave them
        deadline = time.monotonic() + 15
        while len(heard) < len(published) and time.monotonic() < deadline:
            for pubsub in readers.values():
                message = pubsub.get_message(timeout=0.005)
                if message and message["type"] == "smessage":
                    heard.append((message["channel"].rsplit(":a:", 1)[1], message["data"].split("\n", 1)[0]))
        assert sorted(heard) == sorted(published)
        for k in range(PARTITIONS):  # heard in id order within each partition
            ids = [stream_id(i) for c, i in heard if partition_keys(c)[0] == k]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)

        # A client watching 5 channels got the first 40 of its events (in heard order), then left.
        watched = set(channels[:5])
        mine = [(c, i) for c, i in heard if c in watched]
        got, rest = mine[:40], mine[40:]
        positions: dict[int, tuple[int, int]] = {}
        for channel, event_id in got:
            positions[partition_keys(channel)[0]] = stream_id(event_id)
        cursor = ",".join(f"{k:x}={ms:x}.{seq:x}" for k, (ms, seq) in sorted(positions.items()))
        assert len(cursor) < 20 * len(positions)
        replayed = []
        for channel in sorted(watched):  # resume: XRANGE each channel from its partition's position
            k, keys, _ = partition_keys(channel)
            start = "-" if k not in positions else "({}-{}".format(*positions[k])
            replayed += [(channel, entry_id) for entry_id, _ in client.xrange(keys[2], start, "+")]
        assert sorted(replayed) == sorted(rest), "lost or repeated events"
        print(f"\nFACT partition cursor for {len(watched)} channels in {len(positions)} partitions: "
              f"{len(cursor)} characters ({cursor[:60]}...)")
    finally:
        for pubsub in readers.values():
            pubsub.close()
        client.close()


# -- sharded pub/sub ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_clusterpubsub_receives_spublish_from_every_shard_over_one_connection_per_shard(shared_redis_cluster):
    cluster = shared_redis_cluster
    client = cluster.client()
    pubsub = client.pubsub()
    try:
        tags = one_tag_per_master(cluster, client)
        # Two channels per shard: still one connection per shard.
        channels = [tagged(t)[2] for t in tags.values()] + [tagged(t + "-b")[2] for t in tags.values()]
        for channel in channels:
            pubsub.ssubscribe(channel)
        confirmed = read_until(pubsub, len(channels), 10, kinds=("ssubscribe",))
        assert len(confirmed) == len(channels)
        per_node = {port: len(shard_subscribers(port)) for port in cluster.masters()}
        print(f"\nFACT ClusterPubSub with {len(channels)} channels on 3 shards: node pubsubs "
              f"{len(pubsub.node_pubsub_mapping)}, subscribed connections per master {per_node}")
        assert len(pubsub.node_pubsub_mapping) == 3
        assert all(count == 1 for count in per_node.values())
        for channel in channels:
            assert client.spublish(channel, f"to {channel}") == 1
        got = read_until(pubsub, len(channels), 10)
        assert sorted(m["channel"].decode() for m in got) == sorted(channels)
    finally:
        pubsub.close()
        client.close()


@pytest.mark.timeout(60)
def test_a_subscriber_receives_only_the_channels_it_subscribed(shared_redis_cluster):
    cluster = shared_redis_cluster
    client = cluster.client()
    mine, theirs = client.pubsub(), client.pubsub()
    try:
        wanted, unwanted = tagged("routed-mine")[2], tagged("routed-theirs")[2]
        mine.ssubscribe(wanted)
        theirs.ssubscribe(unwanted)
        assert read_until(mine, 1, 5, kinds=("ssubscribe",)) and read_until(theirs, 1, 5, kinds=("ssubscribe",))
        for i in range(50):
            assert client.spublish(unwanted, f"n{i}") == 1  # exactly one receiver: the other subscriber
        client.spublish(wanted, "yours")
        got = read_until(mine, 2, 2)
        assert [(m["channel"], m["data"]) for m in got] == [(wanted.encode(), b"yours")]
        assert len(read_until(theirs, 50, 5)) == 50
        # Redis counts it the same way: one subscriber per channel.
        node = client.get_node_from_key(unwanted)
        with redis.Redis(node.host, node.port) as raw:
            assert raw.execute_command("PUBSUB", "SHARDNUMSUB", unwanted) == [unwanted.encode(), 1]
    finally:
        mine.close()
        theirs.close()
        client.close()


GEVENT_PROBE = r"""
from gevent import monkey; monkey.patch_all()
import json, sys, threading, time
import gevent, redis, redis.cluster
sys.path.insert(0, sys.argv[2])
from redis_cluster import parse_seeds

seeds = [redis.cluster.ClusterNode(h, p) for h, p in parse_seeds(sys.argv[1])]
channels = json.loads(sys.argv[3])
client = redis.cluster.RedisCluster(startup_nodes=seeds, socket_timeout=5, socket_connect_timeout=2)
pubsub = client.pubsub()
for channel in channels:
    pubsub.ssubscribe(channel)
received, latencies, confirmed = [], [], 0
poll_timeout = float(sys.argv[4])
stop = time.monotonic() + 15

def reader():
    global confirmed
    while time.monotonic() < stop and len(received) < len(channels):
        message = pubsub.get_sharded_message(timeout=poll_timeout)
        if message is None:
            continue
        if message["type"] == "ssubscribe":
            confirmed += 1
        elif message["type"] == "smessage":
            sent = float(message["data"])
            latencies.append(time.time() - sent)
            received.append(message["channel"].decode())

ticks = [0]
def ticker():  # proves the reader never blocks the hub
    while time.monotonic() < stop and len(received) < len(channels):
        gevent.sleep(0.01); ticks[0] += 1

greenlets = [gevent.spawn(reader), gevent.spawn(ticker)]
while confirmed < len(channels) and time.monotonic() < stop:
    gevent.sleep(0.05)
began = time.monotonic()
# One at a time, in the reverse of the order the reader goes round the shards (it polls them in
# subscription order): each message then arrives on a shard the reader is not waiting on.
for channel in reversed(channels):
    gevent.sleep(0.3)
    client.spublish(channel, repr(time.time()))
gevent.joinall(greenlets, timeout=20)
print(json.dumps({"received": received, "latencies": latencies, "node_pubsubs": len(pubsub.node_pubsub_mapping),
                  "ticks_per_s": ticks[0] / max(0.001, time.monotonic() - began),
                  "threads": threading.active_count(), "patched": monkey.is_module_patched("socket")}))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("poll_timeout", [0.05, 1.0])
def test_clusterpubsub_under_gevent_round_robins_the_shards_with_the_poll_timeout_as_latency(
        shared_redis_cluster, poll_timeout):
    """Under ``monkey.patch_all()`` ClusterPubSub works and never blocks the hub, but
    ``get_sharded_message(timeout=t)`` waits up to ``t`` on ONE shard's connection at a time:
    a message on another shard waits for its turn (latency up to (shards-1)·t). A relay reader
    should therefore read each shard's connection in a greenlet of its own. (``timeout=0`` is
    worse: the loop never yields and starves the hub; seen while writing this test.)"""
    cluster = shared_redis_cluster
    client = cluster.client()
    tags = one_tag_per_master(cluster, client, f"gevent-{poll_timeout}-")
    client.close()
    channels = [tagged(t)[2] for t in tags.values()]
    probe = subprocess.run([sys.executable, "-c", GEVENT_PROBE, cluster.url, str(Path(__file__).parent),
                            json.dumps(channels), str(poll_timeout)],
                           capture_output=True, text=True, timeout=45, check=False)
    assert probe.returncode == 0, probe.stderr[-3000:]
    facts = json.loads(probe.stdout.strip().splitlines()[-1])
    print(f"\nFACT gevent ClusterPubSub poll timeout {poll_timeout}s: latencies "
          f"{[round(x * 1000, 1) for x in facts['latencies']]} ms, node pubsubs {facts['node_pubsubs']}, "
          f"hub ticks/s {facts['ticks_per_s']:.0f}, threads {facts['threads']}")
    assert facts["patched"] and sorted(facts["received"]) == sorted(channels)
    assert facts["node_pubsubs"] == len(tags) == 3
    assert facts["ticks_per_s"] > 20  # the hub kept running: 100/s when nothing blocks it
    if poll_timeout < 0.1:
        assert max(facts["latencies"]) < 0.25
    else:
        assert max(facts["latencies"]) > 0.25, "a message waited for the reader to finish another shard's poll"


SHARD_READER_PROBE = r"""
from gevent import monkey; monkey.patch_all()
import json, sys, time
import gevent, gevent.event, redis, redis.cluster
sys.path.insert(0, sys.argv[2])
from redis_cluster import parse_seeds
from plugins.redis_common import make_connection, read_subscribed

seeds = [redis.cluster.ClusterNode(h, p) for h, p in parse_seeds(sys.argv[1])]
channels = json.loads(sys.argv[3])
client = redis.cluster.RedisCluster(startup_nodes=seeds, socket_timeout=5, socket_connect_timeout=2)
by_shard = {}
for channel in channels:  # the slot map says which master holds each channel
    node = client.get_node_from_key(channel)
    by_shard.setdefault((node.host, node.port), []).append(channel)
stopping = gevent.event.Event()
received, latencies, confirmed = [], [], []

def handle(reply):
    if reply[0] == b"ssubscribe":
        confirmed.append(reply[1])
    elif reply[0] == b"smessage":
        latencies.append(time.time() - float(reply[2]))
        received.append(reply[1].decode())
        if len(received) == len(channels):
            stopping.set()

def reader(host, port, wanted):  # one connection, one greenlet per shard
    conn = make_connection(f"redis://{host}:{port}", "probe", connect_timeout=2, read_timeout=5)
    conn.connect()
    for channel in wanted:  # one SSUBSCRIBE per slot (here: one channel per slot)
        conn.send_command("SSUBSCRIBE", channel)
    try:
        read_subscribed(conn, stopping, 1.0, handle)
    finally:
        conn.disconnect()

ticks = [0]
def ticker():
    while not stopping.is_set():
        gevent.sleep(0.01); ticks[0] += 1

greenlets = [gevent.spawn(reader, h, p, w) for (h, p), w in by_shard.items()] + [gevent.spawn(ticker)]
deadline = time.monotonic() + 10
while len(confirmed) < len(channels) and time.monotonic() < deadline:
    gevent.sleep(0.05)
began = time.monotonic()
for channel in reversed(channels):
    gevent.sleep(0.3)
    client.spublish(channel, repr(time.time()))
stopping.wait(10)
stopping.set()
gevent.joinall(greenlets, timeout=10)
print(json.dumps({"received": received, "latencies": latencies, "shards": len(by_shard),
                  "ticks_per_s": ticks[0] / max(0.001, time.monotonic() - began)}))
"""


@pytest.mark.timeout(60)
def test_a_greenlet_per_shard_with_relays_own_subscription_reader_hears_every_shard_at_once(shared_redis_cluster):
    """The reader the design proposes: relay's ``read_subscribed`` on one plain connection per
    shard, each in its own greenlet, the slot map from ``RedisCluster``: no shard waits for
    another (compare the ClusterPubSub test above, with the same publishing pattern)."""
    cluster = shared_redis_cluster
    client = cluster.client()
    tags = one_tag_per_master(cluster, client, "reader-")
    client.close()
    channels = [tagged(t)[2] for t in tags.values()]
    probe = subprocess.run([sys.executable, "-c", SHARD_READER_PROBE, cluster.url, str(Path(__file__).parent),
                            json.dumps(channels)], capture_output=True, text=True, timeout=45,
                           cwd=Path(__file__).parent.parent, check=False)
    assert probe.returncode == 0, probe.stderr[-3000:]
    facts = json.loads(probe.stdout.strip().splitlines()[-1])
    print(f"\nFACT greenlet per shard (read_subscribed): latencies {[round(x * 1000, 1) for x in facts['latencies']]} ms, "
          f"shards {facts['shards']}, hub ticks/s {facts['ticks_per_s']:.0f}")
    assert sorted(facts["received"]) == sorted(channels) and facts["shards"] == 3
    assert max(facts["latencies"]) < 0.1
    assert facts["ticks_per_s"] > 20


# -- failover ----------------------------------------------------------------------------------


def no_retry_client(cluster) -> redis.cluster.RedisCluster:
    """A cluster client that fails fast instead of redis-py's default retries (what a publish
    that must answer 503 rather than hang would use)."""
    return cluster.client(retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0), socket_timeout=1,
                          socket_connect_timeout=0.5)


@pytest.mark.timeout(90)
def test_killing_a_shards_master(redis_cluster):
    cluster = redis_cluster
    client = cluster.client()
    facts: dict = {}
    try:
        seq, _, channel = tagged("orders")
        slot = client.keyslot(channel)
        master = cluster.master_of(slot)
        replica = cluster.replica_of(master)[0]
        other_tag = next(t for t in one_tag_per_master(cluster, client).values()
                         if cluster.master_of(client.keyslot(tagged(t)[0])) != master)

        # A write acknowledged by the replica: WAIT answers how many replicas have it.
        with redis.Redis(port=master, socket_timeout=5) as raw:
            raw.incr(seq)
            assert raw.execute_command("WAIT", 1, 1000) == 1

        # Subscribers: one on the master (plain connection, no retries), one on its replica.
        on_master = redis.Redis(port=master, socket_timeout=5, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0)).pubsub()
        on_replica = redis.Redis(port=replica, socket_timeout=5).pubsub()
        for pubsub in (on_master, on_replica):
            pubsub.ssubscribe(channel)
            assert pubsub.get_message(timeout=2)["type"] == "ssubscribe"
        # SPUBLISH counts the master's own subscribers only; the replica's hears it all the same.
        assert client.spublish(channel, "before") == 1
        assert [m["data"] for m in read_until(on_replica, 1, 2)] == [b"before"]
        assert [m["data"] for m in read_until(on_master, 1, 2)] == [b"before"]

        # Made before the kill: RedisCluster() runs COMMAND on one node at construction, and
        # without retries fails when that node is the dead master (seen while writing this test).
        fast = no_retry_client(cluster)
        assert fast.spublish(channel, "fast client ready") == 1
        assert [m["data"] for m in read_until(on_master, 1, 2)] == [b"fast client ready"]
        assert read_until(on_replica, 1, 2)

        killed_at = time.monotonic()
        cluster.kill_master(slot)
        facts["master_subscriber"] = "nothing within 3s"
        try:
            while time.monotonic() - killed_at < 3:
                message = on_master.get_message(timeout=0.5)
                assert message is None, f"a dead master's subscriber got {message}"
        except redis.ConnectionError as exc:
            facts["master_subscriber"] = f"{type(exc).__name__} after {time.monotonic() - killed_at:.3f}s"
        assert facts["master_subscriber"].startswith("ConnectionError")

        # Publishing during the failover window: the slot's own shard refuses fast, others serve.
        began = time.monotonic()
        with pytest.raises((redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError)) as refused:
            fast.spublish(channel, "during")
        facts["publish_to_dead_shard"] = f"{type(refused.value).__name__} in {time.monotonic() - began:.3f}s"
        assert time.monotonic() - began < 3
        assert fast.spublish(tagged(other_tag)[2], "other shard") == 0  # served: no subscriber there

        facts["failover_s"] = round(cluster.wait_failover(20), 2)
        assert replica in cluster.masters()
        facts["failover_seen_by_replica_subscriber"] = [m["type"] for m in read_until(on_replica, 1, 0.5, ("ssubscribe", "sunsubscribe", "smessage"))]

        # After failover: the same client finds the new master (slot map refreshed on the error).
        began = time.monotonic()
        for attempt in range(50):
            try:
                heard = client.spublish(channel, "after")
                break
            except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError):
                time.sleep(0.1)
        facts["spublish_after_failover"] = f"{heard} receiver(s), {attempt} failed attempt(s), {time.monotonic() - began:.3f}s"
        assert heard == 1  # the replica's subscriber kept its subscription through the promotion
        assert [m["data"] for m in read_until(on_replica, 1, 2)] == [b"after"]
        # Re-subscribing from scratch works too (a worker whose shard connection died).
        fresh = client.pubsub()
        fresh.ssubscribe(channel)
        assert read_until(fresh, 1, 5, kinds=("ssubscribe",))
        assert client.spublish(channel, "again") == 2
        assert [m["data"] for m in read_until(fresh, 1, 2)] == [b"again"]
        fresh.close()

        # The promoted replica has no replica of its own: WAIT 1 answers 0 after its timeout.
        with redis.Redis(port=replica, socket_timeout=5) as raw:
            raw.incr(seq)
            began = time.monotonic()
            assert raw.execute_command("WAIT", 1, 200) == 0
            facts["wait_without_replica"] = f"0 after {time.monotonic() - began:.3f}s"
            assert int(raw.get(seq)) >= 2  # the write acknowledged by WAIT before the kill survived
        began = time.monotonic()
        cluster.restart(master)
        facts["old_master_rejoins_as_replica_s"] = round(time.monotonic() - began, 2)
        assert master in cluster.replica_of(replica)
        with redis.Redis(port=replica, socket_timeout=5) as raw:
            raw.incr(seq)
            assert raw.execute_command("WAIT", 1, 2000) == 1
        on_master.close()
        on_replica.close()
        fast.close()
    finally:
        client.close()
        print(f"\nFACT master killed: {json.dumps(facts)}")


@pytest.mark.timeout(90)
def test_a_manual_failover_sends_sunsubscribe_to_the_old_masters_subscribers(redis_cluster):
    cluster = redis_cluster
    client = cluster.client()
    try:
        channel = tagged("moving")[2]
        master = cluster.master_of(client.keyslot(channel))
        replica = cluster.replica_of(master)[0]
        pubsub = redis.Redis(port=master, socket_timeout=5).pubsub()
        pubsub.ssubscribe(channel)
        assert pubsub.get_message(timeout=2)["type"] == "ssubscribe"
        began = time.monotonic()
        with redis.Redis(port=replica) as raw:
            raw.execute_command("CLUSTER", "FAILOVER")
        seen = None
        while seen is None and time.monotonic() - began < 15:
            seen = pubsub.get_message(timeout=0.5)
        print(f"\nFACT manual failover: old master's subscriber got {seen and seen['type']} "
              f"after {time.monotonic() - began:.2f}s")
        assert seen is not None and seen["type"] == "sunsubscribe" and seen["channel"] == channel.encode()
        # A trap: redis-py's PubSub still counts the channel as subscribed (it forgets only the
        # channels it asked to leave), so it would never resubscribe; the relay's reader must
        # treat a sunsubscribe it did not ask for as "this slot moved: subscribe again".
        assert pubsub.subscribed and channel.encode() in pubsub.shard_channels
        assert client.spublish(channel, "after the move") == 0  # no subscriber left on the new master
        assert pubsub.get_message(timeout=0.5) is None
        pubsub.close()
    finally:
        client.close()


@pytest.mark.timeout(90)
def test_clusterpubsub_keeps_dialling_a_dead_master_until_its_client_refreshes_the_slot_map(redis_cluster):
    """redis-py's ClusterPubSub reconnects to the node it subscribed on, and only moves its
    subscriptions when the RedisCluster's slot map is refreshed (a command on the same client
    that meets the error, or ``nodes_manager.initialize()``): a relay reader must refresh the
    map itself when its shard connection fails, not wait for a publish to do it."""
    cluster = redis_cluster
    client = cluster.client()
    pubsub = client.pubsub()
    try:
        channel = tagged("orders")[2]
        pubsub.ssubscribe(channel)
        assert read_until(pubsub, 1, 5, kinds=("ssubscribe",))
        dead = cluster.kill_master(client.keyslot(channel))
        cluster.wait_failover(20)
        errors, began = 0, time.monotonic()
        while time.monotonic() - began < 2:  # well after the failover: still the dead node
            try:
                assert pubsub.get_sharded_message(timeout=0.2) is None
            except redis.ConnectionError as exc:
                errors += 1
                assert str(dead) in str(exc)
                time.sleep(0.1)
        print(f"\nFACT ClusterPubSub after failover, without a slot-map refresh: {errors} ConnectionError(s) "
              f"to the dead master in 2s, nothing received")
        assert errors > 0
        refreshed = time.monotonic()
        client.nodes_manager.initialize()  # the refresh: ClusterPubSub moves its subscription (in a thread)
        moved = None
        while moved is None and time.monotonic() - refreshed < 5:
            try:
                message = pubsub.get_sharded_message(timeout=0.2)
            except redis.ConnectionError:  # the dead node's pubsub, until the move is done
                time.sleep(0.05)
                continue
            if message and message["type"] == "ssubscribe":
                moved = time.monotonic() - refreshed
        print(f"FACT ClusterPubSub resubscribed {moved}s after nodes_manager.initialize()")
        assert moved is not None
        assert client.spublish(channel, "moved") == 1
        assert [m["data"] for m in read_until(pubsub, 1, 2)] == [b"moved"]
    finally:
        pubsub.close()
        client.close()


FAILOVER_PROBE = r"""
from gevent import monkey; monkey.patch_all()
import json, sys, time
import gevent, gevent.event, redis, redis.cluster, redis.retry, redis.backoff
sys.path.insert(0, sys.argv[2])
from redis_cluster import parse_seeds
from plugins.redis_common import make_connection, read_subscribed

SCRIPT = '''
local id = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], '0-' .. id, 'e', ARGV[2])
redis.call('SPUBLISH', ARGV[1], id)
return id
'''
seq_key, stream_key, channel = "relay:{p1}:seq", "relay:{p1}:s:orders", "relay:{p1}:a:orders"
seeds = [redis.cluster.ClusterNode(h, p) for h, p in parse_seeds(sys.argv[1])]
run_for = float(sys.argv[3])
no_retry = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
mapper = redis.cluster.RedisCluster(startup_nodes=seeds, socket_timeout=1, socket_connect_timeout=0.5)
stopping = gevent.event.Event()
t0 = time.monotonic()
log = []  # (t, what)
acked, refused, heard, durations = [], [], [], []
nodes = {}

def node_client(node):
    if node.name not in nodes:
        nodes[node.name] = redis.Redis(node.host, node.port, socket_timeout=1, socket_connect_timeout=0.5,
                                       retry=no_retry, single_connection_client=True)
    return nodes[node.name]

def refresh():
    try:
        mapper.nodes_manager.initialize()
    except redis.RedisError as exc:
        log.append((round(time.monotonic() - t0, 3), f"refresh failed {type(exc).__name__}"))

def publisher():
    i = 0
    while not stopping.is_set():
        i += 1
        began = time.monotonic()
        node = mapper.get_node_from_key(seq_key)
        try:
            client = node_client(node)
            number = client.eval(SCRIPT, 2, seq_key, stream_key, channel, f"e{i}")
            replicas = client.execute_command("WAIT", 1, 100)
            (acked if replicas >= 1 else refused).append((number, replicas))
            if replicas < 1:
                log.append((round(time.monotonic() - t0, 3), f"not replicated {number}"))
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            refused.append((None, type(exc).__name__))
            nodes.pop(node.name, None)
            refresh()
        durations.append(time.monotonic() - began)
        gevent.sleep(0.02)

def reader():
    last = 0
    while not stopping.is_set():
        node = mapper.get_node_from_key(channel)
        conn = make_connection(f"redis://{node.host}:{node.port}", "probe", connect_timeout=0.5, read_timeout=2)
        try:
            conn.connect()
            conn.send_command("SSUBSCRIBE", channel)
            def handle(reply):
                nonlocal last
                if reply[0] == b"ssubscribe":
                    log.append((round(time.monotonic() - t0, 3), f"subscribed on {node.port}"))
                    # catch up from the stream: what was stored while not subscribed
                    for entry_id, _ in mapper.xrange(stream_key, f"(0-{last}", "+"):
                        number = int(entry_id.split(b"-")[1])
                        if number > last:
                            heard.append((number, "caught up")); last = number
                elif reply[0] == b"smessage":
                    number = int(reply[2])
                    if number > last:
                        heard.append((number, "live")); last = number
            read_subscribed(conn, stopping, 0.5, handle)
        except (redis.ConnectionError, redis.TimeoutError, OSError, redis.ResponseError) as exc:
            log.append((round(time.monotonic() - t0, 3), f"reader lost {node.port}: {type(exc).__name__}"))
            refresh()
            gevent.sleep(0.5)  # relay's reconnect delay (RECONNECT_MIN): events stored meanwhile are caught up
        finally:
            conn.disconnect()

greenlets = [gevent.spawn(reader), gevent.spawn(publisher)]
gevent.sleep(0.5)
print(json.dumps({"ready": mapper.get_node_from_key(channel).port}), flush=True)
gevent.sleep(run_for)
stopping.set()
gevent.joinall(greenlets, timeout=5)
stored = sorted(int(e[0].split(b"-")[1]) for e in mapper.xrange(stream_key, "-", "+"))
print(json.dumps({"acked": [a[0] for a in acked], "refused": len(refused), "heard": heard, "stored": stored,
                  "max_publish_s": max(durations), "log": log}), flush=True)
"""


@pytest.mark.timeout(90)
def test_under_gevent_a_master_dies_publishes_refuse_fast_and_the_reader_resumes_without_loss(redis_cluster):
    """Design section 5, prototyped under gevent: a publisher (one script, then ``WAIT 1 100``
    on the same connection; fewer than 1 replica or an error = a 503) every 20 ms and a
    per-shard reader (``read_subscribed``; on error: refresh the slot map, reconnect, resubscribe,
    catch up from the stream) while the channel's master is SIGKILLed."""
    cluster = redis_cluster
    probe = subprocess.Popen([sys.executable, "-c", FAILOVER_PROBE, cluster.url, str(Path(__file__).parent), "7"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=Path(__file__).parent.parent)
    try:
        ready = json.loads(probe.stdout.readline() or "{}")
        assert "ready" in ready, probe.stderr.read()[-3000:]
        cluster.kill_master(ready["ready"])
        failover = cluster.wait_failover(20)
        out, err = probe.communicate(timeout=30)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait(10)
    assert probe.returncode == 0, err[-3000:]
    facts = json.loads(out.strip().splitlines()[-1])
    heard = [number for number, _ in facts["heard"]]
    acked, stored = set(facts["acked"]), set(facts["stored"])
    resubscribed = [t for t, what in facts["log"] if what.startswith("subscribed on") and str(ready["ready"]) not in what]
    not_replicated = sum(what.startswith("not replicated") for _, what in facts["log"])
    print(f"\nFACT gevent failover: failover {failover:.2f}s, reader resubscribed on the new master at "
          f"{resubscribed[0] if resubscribed else None}s after start (kill at ~0.5s); publishes acknowledged "
          f"{len(acked)}, refused {facts['refused']} ({not_replicated} of them stored but not replicated); "
          f"longest publish {facts['max_publish_s'] * 1000:.0f} ms; heard {len(heard)} "
          f"({sum(how == 'caught up' for _, how in facts['heard'])} caught up from the stream)")
    assert resubscribed, facts["log"]
    assert acked <= stored and acked <= set(heard), "an acknowledged publish was lost"
    assert set(heard) == stored, "stored events were not delivered (the catch-up after resubscribing)"
    assert any(how == "caught up" and number > 1 for number, how in facts["heard"]), "none read from the stream"
    assert heard == sorted(set(heard)), "duplicated or reordered"
    assert heard[-1] == max(stored), "delivery did not resume after the failover"
    assert facts["refused"] > 0 and facts["max_publish_s"] < 1.5  # refused, never hung
    assert not_replicated > 0  # the promoted master has no replica: WAIT 1 says so
