"""Issue 16 point 6: the sharded backbone (``redis+cluster://``) measured.

``python -m benchmarks.cluster`` (about 70 s on 2 cores) prints three things:

* **routed** — a real cluster of 3 masters with one replica each (``tests/redis_cluster.py``), two
  relay instances of one gevent worker each on it. Worker A's SSE clients watch 1 of 100
  channels, worker B's watch all 100. ``--events`` events, spread evenly over the 100 channels,
  are published straight into the cluster with the backbone's own publish script (the exact
  command relay's ``POST /events/<channel>`` sends, without relay's HTTP cost, so the
  publisher's CPU cannot disturb the two workers). Per worker: the announcements and bytes it
  heard from Redis (its ``/healthz`` ``backbone`` counters), its CPU, and the ratio A/B.
* **capacity** — the same publish script, unpaced, from ``--publishers`` processes, for
  ``--seconds`` each against a 1-master cluster and a 3-master cluster (no replicas, so the
  figure is the shards'): events/s, the ratio, and every process's CPU; then the 1-master
  cluster again with one script per round trip on each connection (relay's own pattern: one
  publish request, one ``EVALSHA``), which costs Redis more per event. Published straight with
  the script, not through relay's HTTP API: a relay worker spends ~1 ms of CPU per HTTP publish
  (benchmarks/README.md), Redis 20–30 µs per script, so on 2 cores HTTP publishers saturate the
  workers long before Redis and measure relay, not the backbone. Each publisher sends the
  commands packed once and counts the answers without parsing them (~1–2 µs per event), and
  sends every master its share of ``--batch`` scripts before reading any answer, so each master
  always has work queued. The durable log is off, as in a deployment without webhook endpoints.
* **model inputs** — events/s per shard (from Redis CPU per event), bytes per event on the wire
  (publish, replication, one announcement to one subscribed worker), connections per worker.

Every process started here (redis-server nodes, gunicorn, load clients, publishers) is stopped
by its process id before the command returns, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks import procstat
from benchmarks.loadgen import BODY, LoadClient, free_port
from benchmarks.servers import REPO, _base_env, _server_child, _stop, _wait_port

sys.path.insert(0, str(REPO))  # tests/redis_cluster.py: the tests' cluster, reused as it is

import redis

from plugins.redis_backbone.backbone import PUBLISH
from plugins.redis_backbone.keys import Layout
from plugins.redis_backbone.scripts import RESTARTS_KEPT
from plugins.redis_common import encode_event
from relay.api import Event
from tests.redis_cluster import RedisCluster

CHANNELS = [f"ch{n:02d}" for n in range(100)]
PREFIX, PARTITIONS, MAXLEN = "relay:", 32, 10000  # the backbone's defaults
IDLE_SECONDS = 3.0  # measured before publishing: the CPU the processes spend doing nothing
RESULTS = Path(__file__).resolve().parent / "results"


# -- clusters -------------------------------------------------------------------------------------

def slot_owners(cluster: RedisCluster) -> dict[int, int]:
    """slot -> port of the master serving it."""
    owners = {}
    for entry in cluster.topology():
        if "master" in entry["flags"]:
            for first, last in entry["slots"]:
                owners.update(dict.fromkeys(range(first, last + 1), entry["port"]))
    return owners


def node_stats(cluster: RedisCluster) -> dict[int, dict]:
    """Per live node: CPU seconds, bytes in and out, replication offset, memory."""
    out = {}
    for node in cluster.nodes:
        if not node.alive:
            continue
        with node.client() as client:
            info = client.info()
        out[node.port] = {"cpu": procstat.cpu_seconds([node.process.pid]), "in": info["total_net_input_bytes"],
                          "out": info["total_net_output_bytes"], "repl": info.get("master_repl_offset", 0),
                          "memory": info["used_memory"], "role": info["role"]}
    return out


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


# -- the publisher: the backbone's publish script, straight to each slot's master ------------------

def _body(channel: str, seq: int) -> str:
    now = time.time()
    return encode_event(Event(channel, "bench", {"seq": seq, "ts": now, "body": BODY}, source="http", timestamp=now))


def _script_args(layout: Layout, channel: str, body: str) -> tuple:
    keys = layout.of(channel)
    key_list = [*keys.dataset(), keys.stream(channel), keys.announcement(channel), keys.log()]
    return ("EVALSHA", PUBLISH.sha, len(key_list), *key_list, MAXLEN, 0, body, 0, RESTARTS_KEPT)


def _publisher(pipe, owners: dict[int, int], first: int, step: int, count: int, seconds: float, rate: float,
               batch: int) -> None:
    """Publish events ``first, first + step, …`` (event n on channel n % 100) until ``count`` were
    sent or ``seconds`` passed, paced at ``rate``/s when ``rate`` > 0, ``batch`` per round. Each
    round sends every master its share before reading any answer. Reports (sent, errors)."""
    layout = Layout(PREFIX, PARTITIONS)
    clients = {port: redis.Redis("127.0.0.1", port, socket_timeout=10) for port in set(owners.values())}
    for client in clients.values():
        client.script_load(PUBLISH.text)
    connections = {port: client.connection_pool.get_connection() for port, client in clients.items()}
    pipe.send("ready")
    pipe.recv()  # go
    began = time.monotonic()
    sent = errors = 0
    seq = first
    while sent < count and time.monotonic() - began < seconds:
        rounds: dict[int, list] = {}
        for _ in range(min(batch, count - sent)):
            channel = CHANNELS[seq % len(CHANNELS)]
            port = owners[layout.of(channel).slot]
            rounds.setdefault(port, []).append(_script_args(layout, channel, _body(channel, seq)))
            seq += step
            sent += 1
        for port, commands in rounds.items():
            connection = connections[port]
            connection.send_packed_command(connection.pack_commands(commands))
        for port, commands in rounds.items():
            for _ in commands:
                try:
                    connections[port].read_response()
                except redis.ResponseError:
                    errors += 1
        if rate > 0:
            ahead = began + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    pipe.send((sent, errors, time.monotonic() - began))
    for port, connection in connections.items():
        clients[port].connection_pool.release(connection)
        clients[port].close()


def _flood(pipe, owners: dict[int, int], seconds: float, batch: int) -> None:
    """Publish as fast as the masters answer, for ``seconds``: ``batch`` scripts per round, sent
    to every master before reading any answer. The commands are packed once (one per channel,
    100 channels) and sent again and again, and answers are counted, not parsed, so the
    publisher spends ~1 µs per event and the masters, not this process, set the pace. Reports
    (sent, errors, seconds)."""
    import socket

    layout = Layout(PREFIX, PARTITIONS)
    packer = redis.Connection()
    by_port: dict[int, list[bytes]] = {}
    for channel in CHANNELS:
        command = b"".join(packer.pack_command(*_script_args(layout, channel, _body(channel, 0))))
        by_port.setdefault(owners[layout.of(channel).slot], []).append(command)
    sockets, rounds = {}, {}
    for port, commands in by_port.items():
        with redis.Redis("127.0.0.1", port) as client:
            client.script_load(PUBLISH.text)
        share = max(1, round(batch * len(commands) / len(CHANNELS)))  # this master's part of a round
        rounds[port] = (b"".join(commands[i % len(commands)] for i in range(share)), share)
        sockets[port] = socket.create_connection(("127.0.0.1", port))
    pipe.send("ready")
    pipe.recv()  # go
    began = time.monotonic()
    sent = errors = 0
    while time.monotonic() - began < seconds:
        for port, (data, _) in rounds.items():
            sockets[port].sendall(data)
        for port, (_, share) in rounds.items():
            buffer, replies = b"", 0
            while replies < share:
                buffer += sockets[port].recv(65536)
                lines = buffer.split(b"\r\n")
                buffer = lines.pop()  # an unfinished line
                for line in lines:  # a bulk string answer is two lines ($len, the id), an error one
                    if line.startswith(b"-"):
                        errors += 1
                        replies += 1
                    elif line.startswith(b"$"):
                        replies += 1
            sent += share
    pipe.send((sent, errors, time.monotonic() - began))
    for sock in sockets.values():
        sock.close()


class Publishers:
    """``processes`` publisher processes sharing ``count`` events (event n on channel n % 100)."""

    def __init__(self, owners: dict[int, int], processes: int, count: int, seconds: float, rate: float, batch: int,
                 flood: bool = False):
        """``flood``: as fast as the masters answer (:func:`_flood`), ``count`` and ``rate`` unused."""
        ctx = multiprocessing.get_context("fork")
        self.pipes, self.procs = [], []
        for index in range(processes):
            ours, theirs = ctx.Pipe()
            share = count // processes + (1 if index < count % processes else 0)
            work = (_flood, (theirs, owners, seconds, batch)) if flood else (
                _publisher, (theirs, owners, index, processes, share, seconds, rate / processes, batch))
            proc = ctx.Process(target=work[0], args=work[1], daemon=True)
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)
        for pipe in self.pipes:
            if not pipe.poll(30) or pipe.recv() != "ready":
                raise TimeoutError("a publisher did not get ready")

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def go(self) -> None:
        for pipe in self.pipes:
            pipe.send("go")

    def wait(self, timeout: float) -> tuple[int, int]:
        sent = errors = 0
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise TimeoutError("a publisher did not finish")
            s, e, _ = pipe.recv()
            sent, errors = sent + s, errors + e
        return sent, errors

    def stop(self) -> None:
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(2)


# -- relay instances --------------------------------------------------------------------------------

class RelayInstance:
    """``gunicorn`` with one gevent worker on the cluster backbone (the repository's settings)."""

    def __init__(self, name: str, workdir: Path, backbone: str):
        self.name, self.port = name, free_port()
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "server.log"
        config = self.workdir / "relay.toml"
        config.write_text("[sinks.sse]\nmax_channels = 100\n")  # B's streams watch all 100 channels
        self.env = _base_env()
        self.env.update({"RELAY_BIND": f"127.0.0.1:{self.port}", "RELAY_WORKERS": "1", "RELAY_BACKBONE": backbone,
                         "RELAY_CONFIG": str(config), "RELAY_DATA_DIR": str(self.workdir / "data"),
                         "RELAY_GRACEFUL_TIMEOUT": "3", "RELAY_SSE_MAX_CONNECTIONS_PER_ADDRESS": "0",
                         "PYTHONPATH": str(REPO) + os.pathsep + self.env.get("PYTHONPATH", "")})
        self.proc = None

    def start(self) -> RelayInstance:
        cmd = [sys.executable, "-m", "gunicorn", "--config", str(REPO / "gunicorn.conf.py"), "relay.wsgi_app:app"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_server_child)
        _wait_port(self.port, 30, self.proc, self.log)
        return self

    def backbone(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as answer:
            return json.load(answer)["backbone"]

    def worker_pids(self) -> list[int]:
        return procstat.tree(self.proc.pid)[1:]  # gunicorn's arbiter left out

    def wait_subscribed(self, channels: int, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = self.backbone()
                if state.get("subscribed") == channels and state.get("shards_subscribed") == state.get("shards"):
                    return state
            except OSError:
                state = None
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: not subscribed to {channels} channel(s): {state}; log {self.log}")
            time.sleep(0.2)

    def stop(self) -> None:
        _stop(self.proc)


def announcement_wire_bytes(channel: str, payload: float) -> float:
    """Bytes of one ``smessage`` push (RESP2) carrying ``payload`` bytes on ``channel``'s
    announcement channel: what Redis writes to each subscribed worker per event."""
    name = Layout(PREFIX, PARTITIONS).of(channel).announcement(channel)
    return (len("*3\r\n$8\r\nsmessage\r\n") + len(f"${len(name)}\r\n{name}\r\n")
            + len(f"${round(payload)}\r\n") + payload + 2)


def publish_wire_bytes() -> float:
    """Bytes of one EVALSHA of the publish script as a client sends it (mean over the channels)."""
    layout = Layout(PREFIX, PARTITIONS)
    connection = redis.Connection()
    sizes = [sum(map(len, connection.pack_command(*_script_args(layout, c, _body(c, 12345)))))
             for c in CHANNELS]
    return sum(sizes) / len(sizes)


# -- (a) routed traffic ----------------------------------------------------------------------------

def routed(workdir: Path, args) -> dict:
    """Part (a): what each of two workers hears from a 3-master/3-replica cluster when A's
    clients watch 1 of the 100 channels and B's all of them (see the module docstring)."""
    cluster = RedisCluster(workdir / "cluster-3x1", masters=3, replicas=1)
    relays, loads, publishers = [], [], None
    try:
        cluster.start()
        a = RelayInstance("A", workdir, cluster.url).start()
        relays.append(a)
        b = RelayInstance("B", workdir, cluster.url).start()
        relays.append(b)
        every = "&".join(f"channel={c}" for c in CHANNELS)
        load_a = LoadClient("127.0.0.1", a.port, f"/events/{CHANNELS[0]}", processes=1)
        loads.append(load_a)
        load_b = LoadClient("127.0.0.1", b.port, f"/events?{every}", processes=1)
        loads.append(load_b)
        for load in loads:
            load.connect(args.clients)
            load.record(0, args.events)
        a.wait_subscribed(1)
        b.wait_subscribed(len(CHANNELS))
        owners = slot_owners(cluster)
        # one script per round trip, paced: events reach the workers one at a time, as HTTP publishes do
        publishers = Publishers(owners, 1, args.events, 120.0, args.rate, 1)
        time.sleep(1.0)  # the workers settle after subscribing (catch-up reads)
        # What the workers and the masters spend doing nothing (heartbeats, health checks, the
        # cluster bus), so that the CPU per event can be given without it.
        idle_workers = {r.name: procstat.cpu_seconds(r.worker_pids()) for r in relays}
        idle_nodes, idle_began = node_stats(cluster), time.monotonic()
        time.sleep(IDLE_SECONDS)
        idle_seconds = time.monotonic() - idle_began
        before = {r.name: (r.backbone(), procstat.cpu_seconds(r.worker_pids())) for r in relays}
        nodes_before, publisher_cpu = node_stats(cluster), procstat.cpu_seconds(publishers.pids())
        idle_rate = {r.name: (before[r.name][1] - idle_workers[r.name]) / idle_seconds for r in relays}
        idle_rate.update({port: (nodes_before[port]["cpu"] - idle_nodes[port]["cpu"]) / idle_seconds
                          for port in nodes_before})
        began = time.monotonic()
        publishers.go()
        sent, errors = publishers.wait(120)
        expected = {"A": args.clients * (args.events // len(CHANNELS)), "B": args.clients * args.events}
        received = {}
        for name, load in (("A", load_a), ("B", load_b)):
            deadline, last, still = time.monotonic() + 15, -1, time.monotonic()
            while True:
                got = load.progress()[0]
                if got >= expected[name] or time.monotonic() > deadline or time.monotonic() - still > 3:
                    break
                if got != last:
                    last, still = got, time.monotonic()
                time.sleep(0.1)
            received[name] = got
        time.sleep(0.5)
        after = {r.name: (r.backbone(), procstat.cpu_seconds(r.worker_pids())) for r in relays}
        nodes_after = node_stats(cluster)
        elapsed = time.monotonic() - began
        publisher_cpu = procstat.cpu_seconds(publishers.pids()) - publisher_cpu
        workers = {}
        for r in relays:
            (b0, c0), (b1, c1) = before[r.name], after[r.name]
            messages = b1["heard_messages"] - b0["heard_messages"]
            payload = b1["heard_bytes"] - b0["heard_bytes"]
            mean_payload = payload / messages if messages else 0.0
            channels = [CHANNELS[0]] if r.name == "A" else CHANNELS
            wire = messages * sum(announcement_wire_bytes(c, mean_payload) for c in channels) / len(channels)
            workers[r.name] = {"heard_messages": messages, "heard_payload_bytes": payload, "heard_wire_bytes": round(wire),
                               "cpu_s": round(c1 - c0, 3), "idle_cpu_s": round(idle_rate[r.name] * elapsed, 3),
                               "shard_connections": b1["shards"],
                               "subscribed_channels": b1["subscribed"], "deliveries": received[r.name],
                               "deliveries_expected": expected[r.name]}
        masters = [p for p, s in nodes_after.items() if s["role"] == "master"]
        replicas = [p for p, s in nodes_after.items() if s["role"] != "master"]

        def delta(ports, field):
            return sum(nodes_after[p][field] - nodes_before[p][field] for p in ports)

        def idle(ports):
            return sum(idle_rate[p] for p in ports) * elapsed

        return {"published": sent, "publish_errors": errors, "seconds": round(elapsed, 2), "rate": args.rate,
                "clients_per_worker": args.clients, "workers": workers,
                "ratio_messages": workers["A"]["heard_messages"] / max(1, workers["B"]["heard_messages"]),
                "ratio_bytes": workers["A"]["heard_wire_bytes"] / max(1, workers["B"]["heard_wire_bytes"]),
                "ratio_cpu": workers["A"]["cpu_s"] / max(1e-9, workers["B"]["cpu_s"]),
                "redis_masters_cpu_s": round(delta(masters, "cpu"), 3),
                "redis_replicas_cpu_s": round(delta(replicas, "cpu"), 3),
                "redis_masters_idle_cpu_s": round(idle(masters), 3), "redis_replicas_idle_cpu_s": round(idle(replicas), 3),
                "redis_in_bytes": delta(masters, "in"), "redis_out_bytes": delta(masters, "out"),
                "replication_bytes": delta(masters, "repl"), "publisher_cpu_s": round(publisher_cpu, 3),
                "redis_memory_bytes": delta(masters, "memory")}
    finally:
        if publishers:
            publishers.stop()
        for load in loads:
            load.close()
        for r in relays:
            r.stop()
        cluster.stop()


# -- (b) publish capacity, 1 shard vs 3 -----------------------------------------------------------

def capacity(workdir: Path, masters: int, args, batch: int | None = None, replicas: int = 0) -> dict:
    """``batch`` scripts per round and master share (default ``--batch``); 1 is relay's own
    pattern, one script per round trip on each connection. ``replicas`` per master: 3 masters
    or more only (one master gets every slot by hand: ``redis-cli --cluster create`` wants 3)."""
    batch = batch or args.batch
    cluster = RedisCluster(workdir / f"cluster-{masters}x{replicas}-{batch}", masters=masters, replicas=replicas)
    publishers = None
    try:
        cluster.start()
        publishers = Publishers(slot_owners(cluster), args.publishers, 0, args.seconds, 0, batch, flood=True)
        before, busy0 = node_stats(cluster), machine_jiffies()
        pub0 = {pid: procstat.cpu_seconds([pid]) for pid in publishers.pids()}
        began = time.monotonic()
        publishers.go()
        sent, errors = publishers.wait(args.seconds + 30)
        elapsed = time.monotonic() - began
        after, busy1 = node_stats(cluster), machine_jiffies()
        pub_cpu = [procstat.cpu_seconds([pid]) - pub0[pid] for pid in publishers.pids()]
        redis_cpu = {port: after[port]["cpu"] - before[port]["cpu"] for port in after}
        return {"masters": masters, "replicas": replicas, "events": sent, "errors": errors, "seconds": round(elapsed, 2),
                "events_per_s": round(sent / elapsed), "publishers": args.publishers, "batch": batch,
                "events_per_redis_cpu_s": round(sent / max(1e-9, sum(redis_cpu.values()))),
                "redis_cpu_s": {str(p): round(c, 2) for p, c in redis_cpu.items()},
                "redis_cpu_share": {str(p): round(c / elapsed, 2) for p, c in redis_cpu.items()},
                "publisher_cpu_share": [round(c / elapsed, 2) for c in pub_cpu],
                "redis_us_per_event": round(sum(redis_cpu.values()) / max(1, sent) * 1e6, 1),
                "redis_master_us_per_event": round(sum(c for p, c in redis_cpu.items() if after[p]["role"] == "master")
                                                   / max(1, sent) * 1e6, 1),
                "publisher_us_per_event": round(sum(pub_cpu) / max(1, sent) * 1e6, 1),
                "machine_busy": round((busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 3),
                "load_average": procstat.load_average()[0]}
    finally:
        if publishers:
            publishers.stop()
        cluster.stop()


# -- report ------------------------------------------------------------------------------------------

def report(result: dict) -> str:
    lines = [f"started {result['started']}, load average {result['load_average_before']}"]
    r = result.get("routed")
    if r:
        lines += ["", (f"(a) routed traffic: {r['published']} events published with the backbone's script "
                       f"({r['publish_errors']} errors) over {len(CHANNELS)} channels at {r['rate']:g}/s; "
                       f"3 masters + 3 replicas; {r['clients_per_worker']} SSE clients per worker"),
                  (f"{'worker':<7}{'channels':>9}{'shards':>7}{'heard msgs':>11}{'payload B':>11}{'wire B':>10}"
                   f"{'CPU s':>7}{'idle s':>7}{'µs/msg net':>11}{'deliveries':>16}")]
        for name, w in r["workers"].items():
            # CPU clock ticks are 10 ms: below a few ticks above idle, the net figure is noise
            net = max(0.0, w["cpu_s"] - w["idle_cpu_s"]) / w["heard_messages"] * 1e6 if w["heard_messages"] else 0.0
            lines.append(f"{name:<7}{w['subscribed_channels']:>9}{w['shard_connections']:>7}{w['heard_messages']:>11}"
                         f"{w['heard_payload_bytes']:>11}{w['heard_wire_bytes']:>10}{w['cpu_s']:>7.2f}"
                         f"{w['idle_cpu_s']:>7.2f}{net:>11.0f}{w['deliveries']:>9}/{w['deliveries_expected']}")
        lines.append(f"A/B: messages {r['ratio_messages']:.4f}, wire bytes {r['ratio_bytes']:.4f} (expected ~0.01); "
                     f"CPU {r['ratio_cpu']:.3f} (A's is mostly what it spends idle)")
        lines.append(f"redis CPU: masters {r['redis_masters_cpu_s']:.2f} s (idle share {r['redis_masters_idle_cpu_s']:.2f}), "
                     f"replicas {r['redis_replicas_cpu_s']:.2f} s (idle share {r['redis_replicas_idle_cpu_s']:.2f}); "
                     f"publisher {r['publisher_cpu_s']:.2f} s")
    caps = result.get("capacity", [])
    if caps:
        lines += ["", (f"(b) publish capacity: the backbone's script straight to each slot's master from "
                       f"{caps[0]['publishers']} publisher processes, unpaced, no replicas unless said")]
        for c in caps:
            shape = f"{c['masters']} master(s)" + (f" + {c['replicas']} replica(s) each" if c.get("replicas") else "")
            lines.append(f"{shape}, {c['batch']:>2} per round: {c['events_per_s']:>6} events/s "
                         f"({c['events']} in {c['seconds']} s, {c['errors']} errors); redis-server CPU "
                         f"{c['redis_cpu_share']} of a core, {c['redis_us_per_event']} µs/event "
                         f"({c['events_per_redis_cpu_s']} events per redis CPU-second); publishers "
                         f"{c['publisher_cpu_share']}; machine busy {c['machine_busy']:.0%}, load {c['load_average']}")
        if len(caps) >= 2:
            lines.append(f"3 masters / 1 master: {caps[1]['events_per_s'] / max(1, caps[0]['events_per_s']):.2f} "
                         f"(events/s, {caps[0]['batch']} per round)")
    m = result.get("model")
    if m:
        lines += ["", "(c) capacity model inputs"]
        lines += [f"  {key}: {value}" for key, value in m.items()]
    return "\n".join(lines)


def model(result: dict) -> dict:
    out = {}
    for c in result.get("capacity", []):
        if c.get("replicas"):
            out[f"redis_us_per_event, 3 masters + {c['replicas']} replica(s) each, {c['batch']} per round: "
                f"master, replica"] = (c["redis_master_us_per_event"],
                                       round((c["redis_us_per_event"] - c["redis_master_us_per_event"]) / c["replicas"], 1))
        if c["masters"] == 1:
            out[f"redis_us_per_event, 1 master, {c['batch']} per round"] = c["redis_us_per_event"]
            out[f"events_per_s_per_shard, one core, {c['batch']} per round"] = round(1e6 / max(1e-9, c["redis_us_per_event"]))
    r = result.get("routed")
    if r:
        n = max(1, r["published"])
        out["redis_us_per_event, 3 masters + replicas, 2 subscribed workers, paced: masters (idle included)"] = round(
            r["redis_masters_cpu_s"] / n * 1e6, 1)
        out["redis_us_per_event: replicas (idle included)"] = round(r["redis_replicas_cpu_s"] / n * 1e6, 1)
        b = r["workers"]["B"]
        out["publish_bytes_per_event (EVALSHA sent)"] = round(publish_wire_bytes())
        out["announcement_bytes_per_event_per_subscribed_worker"] = round(b["heard_wire_bytes"] / max(1, b["heard_messages"]))
        out["replication_bytes_per_event_per_replica"] = round(r["replication_bytes"] / n)
        out["redis_in_bytes_per_event (all masters)"] = round(r["redis_in_bytes"] / n)
        out["redis_out_bytes_per_event (all masters: 2 workers' announcements, replicas, answers)"] = round(r["redis_out_bytes"] / n)
        out["redis_memory_bytes_per_event (stream entry, maxlen 10000 per channel)"] = round(r["redis_memory_bytes"] / n)
        out["worker_us_per_heard_event, net of idle (B: 100 channels, 5 clients)"] = round(
            max(0.0, b["cpu_s"] - b["idle_cpu_s"]) / max(1, b["heard_messages"]) * 1e6)
        out["shard_connections_per_worker (A, B)"] = (r["workers"]["A"]["shard_connections"], b["shard_connections"])
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="routed,capacity", help="routed, capacity or both (default)")
    parser.add_argument("--events", type=int, default=10000, help="events published in the routed part")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s in the routed part")
    parser.add_argument("--clients", type=int, default=5, help="SSE clients per worker in the routed part")
    parser.add_argument("--publishers", type=int, default=4, help="publisher processes in the capacity part")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per cluster in the capacity part")
    parser.add_argument("--batch", type=int, default=64, help="scripts per round per publisher")
    parser.add_argument("--replicas", type=int, default=0,
                        help="capacity part: also 3 masters with this many replicas each (one per round trip, then --batch)")
    parser.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/cluster-<time>.json, "
                        "and cluster-latest.json)")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    # Ctrl-C and SIGTERM unwind through every ``finally`` that stops a process, also when this
    # runs in the background of a shell (which would have it ignore SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    "load_average_before": procstat.load_average()}
    with tempfile.TemporaryDirectory(prefix="relay-cluster-bench-") as tmp:
        workdir = Path(tmp)
        if "routed" in parts:
            result["routed"] = routed(workdir, args)
        if "capacity" in parts:
            result["capacity"] = [capacity(workdir, 1, args), capacity(workdir, 3, args),
                                  capacity(workdir, 1, args, batch=1)]
            if args.replicas:
                result["capacity"] += [capacity(workdir, 3, args, batch=1, replicas=args.replicas),
                                       capacity(workdir, 3, args, replicas=args.replicas)]
    result["model"] = model(result)
    print(report(result), flush=True)
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        args.out.write_text(text)
    else:
        RESULTS.mkdir(exist_ok=True)
        for path in (RESULTS / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json", RESULTS / "cluster-latest.json"):
            path.write_text(text)
    return result


if __name__ == "__main__":
    main()
