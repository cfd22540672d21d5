"""Kafka throughput of one relay worker (issue 14, point 5): drain, live, webhooks.

    python -m benchmarks.kafka                      # the three scenarios (~4 minutes on 2 cores)
    python -m benchmarks.kafka --quick              # small sizes (~1 minute)
    python -m benchmarks.kafka --scenarios drain --profile /tmp/prof   # py-spy the worker

The broker: ``KAFKA_BOOTSTRAP_SERVERS`` (an existing cluster), else Apache Kafka from
``tests/apache_kafka.py`` when present, else Tansu (``tests/kafka_support.py``; its producers
must send one record per batch, so they are slower and the figures say ``tansu``).

Scenarios, each on a fresh relay (gunicorn, ONE gevent worker):

* **drain**: ``--records`` (200,000) already in a 3-partition topic (produced beforehand from
  ``--producers`` processes), relay started with ``RELAY_KAFKA_START=earliest`` and 100 SSE
  clients: records/s until every client has every record. 10 clients check every sequence
  number (none lost, none twice); the other 90 count frames, which a Python parser could not do
  at this rate on the same 2 cores without taking them from relay.
  relay's bootstrap address is a TCP proxy opened only once the clients are connected, so
  reading starts with everyone listening.
* **live**: paced producers at ``--rate`` (10,000) records/s for ``--seconds`` (20) to 100
  clients: end-to-end latency (send time is in the record) and loss; then a short ladder of
  higher rates for the most relay keeps up with.
* **webhooks**: a consumer group feeding the webhook sink (SQLite store) and a local receiver
  that verifies every signature: signed deliveries/s.

Figures are printed next to their targets with the CPU (% of one core) of each process, which
says what limits them. Results: ``benchmarks/results/kafka-<time>.json`` (and
``kafka-latest.json``). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import procstat, servers
from benchmarks.loadgen import BODY, free_port, percentile

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TESTS = REPO / "tests"
CHANNEL = "bench"
PARTITIONS = 3
SECRET = "whsec_" + base64.b64encode(b"relay-kafka-benchmark-secret-32b").decode()
SEQ = re.compile(rb'"seq":(\d+),"ts":([0-9.]+)')  # relay sends data as compact JSON
FRAME_MARK = b"event: bench\n"  # one per frame of a benchmark record
LATENCY_EVERY = 10  # the live scenario keeps the latency of one record in 10 (all clients)

GC_PAUSE = re.compile(r"\bPause\b.*?([0-9.]+)ms$", re.MULTILINE)  # -Xlog:gc lines of stop-the-world pauses
TARGETS = {"drain": 20_000, "live_p99_ms": 100, "webhooks": 1_000}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the broker -----------------------------------------------------------------------------------

class Broker:
    """The Kafka cluster under the benchmark: external, Apache Kafka, or Tansu (the fallback)."""

    def __init__(self, workdir: Path, jvm: str = "production"):
        self.kind, self.impl, self.bootstrap = "", None, os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        self.gc_log = workdir / "kafka" / "gc.log"
        if self.bootstrap:
            self.kind = "external"
            return
        sys.path.insert(0, str(TESTS))
        try:
            from apache_kafka import JVM_FLAGS, PRODUCTION_JVM_FLAGS, ApacheKafka  # the harness's real broker

            flags = PRODUCTION_JVM_FLAGS if jvm == "production" else JVM_FLAGS
            self.gc_log.parent.mkdir(parents=True, exist_ok=True)
            self.kind, self.impl = "apache", ApacheKafka(
                workdir / "kafka", jvm_flags=[*flags, f"-Xlog:gc:file={self.gc_log}:uptimemillis"])
        except ImportError:
            from kafka_support import TansuBroker

            self.kind, self.impl = "tansu", TansuBroker(workdir)
        self.impl.start()
        self.bootstrap = self.impl.bootstrap

    @property
    def batching(self) -> bool:
        """Tansu gets offsets wrong for several records in one batch: its producers send one each."""
        return self.kind != "tansu"

    def pids(self) -> list[int]:
        proc = getattr(self.impl, "process", None) or getattr(self.impl, "proc", None)
        return procstat.tree(proc.pid) if proc is not None and hasattr(proc, "pid") else []

    def create_topic(self, name: str, partitions: int = PARTITIONS) -> str:
        from kafka_support import create_topic

        return create_topic(self.bootstrap, name, partitions)

    def gc_mark(self) -> int:
        """Where the broker's GC log ends now: :meth:`gc_pauses` counts from there."""
        return self.gc_log.stat().st_size if self.gc_log.exists() else 0

    def gc_pauses(self, since: int) -> dict | None:
        """The broker JVM's stop-the-world pauses logged after ``since`` (count, longest, total ms):
        a pause holds every record in the broker, so it lands in the clients' latency whole."""
        if self.kind != "apache" or not self.gc_log.exists():
            return None
        with self.gc_log.open("rb") as f:
            f.seek(since)
            pauses = [float(m.group(1)) for m in GC_PAUSE.finditer(f.read().decode("utf-8", "replace"))]
        return {"count": len(pauses), "max_ms": round(max(pauses, default=0.0), 1),
                "total_ms": round(sum(pauses), 1)}

    def stop(self) -> None:
        if self.impl is not None:
            self.impl.stop()


# -- producers ------------------------------------------------------------------------------------

def record_value(seq: int) -> bytes:
    """relay's envelope; ``ts`` is the send time, so a client can measure end-to-end latency."""
    return json.dumps({"event": "bench", "channel": CHANNEL,
                       "data": {"seq": seq, "ts": time.time(), "body": BODY}}, separators=(",", ":")).encode()


def _produce(pipe, bootstrap: str, topic: str, first: int, step: int, count: int, rate: float,
             batching: bool, client: str) -> None:
    """Produce every ``step``-th sequence number from ``first`` to ``count``, to partition seq % 3,
    paced at ``rate`` records/s when > 0; reports (seconds, worst lag behind schedule, errors)."""
    send, flush = (_librdkafka if client == "librdkafka" else _kafka_python)(bootstrap, topic, batching)
    errors = []
    pipe.send(("ready",))
    pipe.recv()
    started, cpu0 = time.perf_counter(), time.process_time()  # CPU from "go": not the start-up
    behind = 0.0
    for n, seq in enumerate(range(first, count, step)):
        if rate > 0:
            late = time.perf_counter() - (started + n / rate)
            if late < -0.001:  # more than 1 ms early: wait (finer sleeps cost more than they pace)
                time.sleep(-late)
            behind = max(behind, late)
        send(seq, errors)
    flush(errors)
    elapsed = time.perf_counter() - started
    pipe.send(("done", elapsed, behind, errors[:5], len(errors), time.process_time() - cpu0))


def _kafka_python(bootstrap: str, topic: str, batching: bool):
    """kafka-python's producer: pure Python, so it costs ~30 µs of CPU per record."""
    from kafka import KafkaProducer

    options = {} if batching else {"batch_size": 0, "linger_ms": 0}  # else kafka-python's defaults
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, **options)

    def send(seq: int, errors: list) -> None:
        producer.send(topic, value=record_value(seq), partition=seq % PARTITIONS).add_errback(
            lambda exc: errors.append(repr(exc)))

    def flush(errors: list) -> None:
        producer.flush(120)
        producer.close(10)

    return send, flush


def _librdkafka(bootstrap: str, topic: str, batching: bool):
    """librdkafka's producer (confluent-kafka), the one most production producers run on: its
    defaults batch (``linger.ms`` 5), and sending costs a few µs of CPU, which leaves this
    2-core machine's cores to relay and the broker."""
    from confluent_kafka import Producer

    options = {} if batching else {"linger.ms": 0, "batch.num.messages": 1}  # Tansu: one record per batch
    producer = Producer({"bootstrap.servers": bootstrap, "acks": 1, **options})
    failed: list = []

    def delivered(err, _msg) -> None:
        if err is not None:
            failed.append(str(err))

    def send(seq: int, errors: list) -> None:
        while True:
            try:
                producer.produce(topic, record_value(seq), partition=seq % PARTITIONS, on_delivery=delivered)
                break
            except BufferError:  # its queue is full: serve delivery reports, then try again
                producer.poll(0.05)
        producer.poll(0)
        if failed:
            errors.extend(failed)
            failed.clear()

    def flush(errors: list) -> None:
        left = producer.flush(120)
        errors.extend(failed)
        if left:
            errors.append(f"{left} records not delivered in 120 s")

    return send, flush


class Producers:
    """``processes`` producer processes sharing ``count`` records, ready to go on :meth:`go`."""

    def __init__(self, broker: Broker, topic: str, count: int, processes: int, rate: float = 0.0, lo: int = 0,
                 client: str = "librdkafka"):
        ctx = multiprocessing.get_context("fork")
        self.pipes, self.procs = [], []
        for first in range(processes):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_produce, daemon=True, args=(
                theirs, broker.bootstrap, topic, lo + first, processes, lo + count, rate / processes,
                broker.batching, client))
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)
        for pipe in self.pipes:
            if not pipe.poll(30):
                raise TimeoutError("a producer did not start")
            pipe.recv()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def go(self) -> None:
        for pipe in self.pipes:
            pipe.send(("go",))

    def wait(self, timeout: float) -> dict:
        out = {"seconds": 0.0, "worst_lag_ms": 0.0, "errors": 0, "error_samples": [], "cpu_s": 0.0}
        for pipe, proc in zip(self.pipes, self.procs):
            if not pipe.poll(timeout):
                raise TimeoutError("a producer did not finish in time")
            _, elapsed, behind, samples, errors, cpu = pipe.recv()
            out["cpu_s"] = round(out["cpu_s"] + cpu, 2)  # their own count: they have exited when measured
            out["seconds"] = round(max(out["seconds"], elapsed), 2)
            out["worst_lag_ms"] = round(max(out["worst_lag_ms"], behind * 1000), 1)
            out["errors"] += errors
            out["error_samples"] += samples
            proc.join(5)
        return out


def produce(broker: Broker, topic: str, count: int, processes: int, client: str) -> dict:
    """Fill ``topic`` with ``count`` records as fast as the producers go; returns their figures."""
    producers = Producers(broker, topic, count, processes, client=client)
    producers.go()
    result = producers.wait(600)
    result["records_per_s"] = round(count / max(1e-9, result["seconds"]))
    return result


# -- SSE clients ----------------------------------------------------------------------------------

def _client_worker(pipe, port: int, clients: int, lo: int, hi: int, latency_every: int, checked: int) -> None:
    """``clients`` SSE connections to /events/bench. The first ``checked`` keep a bitmap of the
    sequence numbers ``lo``…``hi - 1`` seen (exact loss and duplicate counts, latencies); the
    others count the frames of the benchmark's events (loss, at C speed: 2 million deliveries/s
    parsed in Python would take two cores of this machine from relay). Each notes when it had all."""
    total = hi - lo
    import asyncio

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    request = (f"GET /events/{CHANNEL} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n").encode()
    conns: list = []
    latencies, sent_times = array("d"), array("d")

    class Conn(asyncio.Protocol):
        def __init__(self, check: bool):
            self.check = check
            self.seen = bytearray(total) if check else None  # counting clients keep no bitmap
            self.buf, self.head = b"", b""
            self.received = self.unique = 0
            self.first = self.done = 0.0
            self.closed = False

        def connection_made(self, transport):
            transport.write(request)

        def data_received(self, data):
            if self.head is not None:  # the response head, then the stream
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                data, self.head = self.head[end + 4:], None
            buf = self.buf + data if self.buf else data
            cut = buf.rfind(b"\n\n")
            if cut < 0:
                self.buf = buf
                return
            self.buf = buf[cut + 2:]
            now = time.time()
            if not self.check:
                new = buf.count(FRAME_MARK, 0, cut)
                self.received += new
                self.unique += new
                if new and not self.first:
                    self.first = now
                if new and self.unique >= total and not self.done:
                    self.done = now
                return
            seen, new = self.seen, 0
            matches = SEQ.findall(buf, 0, cut)
            for s, ts in matches:
                s = int(s) - lo
                if 0 <= s < total and not seen[s]:
                    seen[s] = 1
                    new += 1
                    if latency_every and s % latency_every == 0:
                        latencies.append(now - float(ts))
                        sent_times.append(float(ts))
            self.received += len(matches)
            self.unique += new
            if matches and not self.first:
                self.first = now
            if new and self.unique >= total:
                self.done = now

        def connection_lost(self, exc):
            self.closed = True

    async def connect():
        for i in range(clients):
            conn = Conn(i < checked)
            await loop.create_connection(lambda c=conn: c, "127.0.0.1", port)
            conns.append(conn)

    def on_command():
        cmd = pipe.recv()
        if cmd == "connect":
            task = loop.create_task(connect())
            task.add_done_callback(lambda t: pipe.send(("connected", len(conns), repr(t.exception()) if t.exception() else "")))
        elif cmd == "progress":
            pipe.send((sum(c.unique for c in conns), sum(1 for c in conns if c.done)))
        elif cmd == "collect":
            pipe.send({"received": sum(c.received for c in conns), "unique": sum(c.unique for c in conns),
                       "complete": sum(1 for c in conns if c.done), "closed": sum(c.closed for c in conns),
                       "first": min((c.first for c in conns if c.first), default=0.0),
                       "done": max((c.done for c in conns), default=0.0),
                       "latencies": latencies.tobytes(), "sent_times": sent_times.tobytes()})
        elif cmd == "quit":
            loop.stop()

    loop.add_reader(pipe.fileno(), on_command)
    loop.run_forever()


class Clients:
    """``clients`` SSE connections over ``processes`` processes, each expecting the records
    numbered ``lo``…``hi - 1``."""

    def __init__(self, port: int, clients: int, lo: int, hi: int, processes: int = 3, latency_every: int = 0,
                 checked: int = 10):
        ctx = multiprocessing.get_context("fork")
        self.clients = clients
        self.checked = min(checked, clients)
        self.pipes, self.procs = [], []
        for i in range(processes):
            ours, theirs = ctx.Pipe()
            share = clients // processes + (1 if i < clients % processes else 0)
            mine = self.checked // processes + (1 if i < self.checked % processes else 0)
            proc = ctx.Process(target=_client_worker, args=(theirs, port, share, lo, hi, latency_every, mine),
                               daemon=True)
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)
        for pipe in self.pipes:
            pipe.send("connect")
        for pipe in self.pipes:
            if not pipe.poll(30):
                raise TimeoutError("the SSE clients did not connect")
            _, _connected, error = pipe.recv()
            if error:
                raise RuntimeError(f"connecting SSE clients failed: {error}")

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _ask(self, cmd: str) -> list:
        for pipe in self.pipes:
            pipe.send(cmd)
        return [pipe.recv() for pipe in self.pipes if pipe.poll(60)]

    def progress(self) -> tuple[int, int]:
        """(unique deliveries so far, clients that have every record)."""
        answers = self._ask("progress")
        return sum(a[0] for a in answers), sum(a[1] for a in answers)

    def wait(self, expected_unique: int, limit: float, stall: float = 10.0) -> None:
        """Until every delivery arrived, nothing new came for ``stall`` seconds, or ``limit``."""
        deadline, last, changed = time.time() + limit, -1, time.time()
        while time.time() < deadline:
            unique, _ = self.progress()
            if unique >= expected_unique:
                return
            if unique != last:
                last, changed = unique, time.time()
            elif time.time() - changed > stall:
                return
            time.sleep(0.2)

    def collect(self) -> dict:
        answers = self._ask("collect")
        out = {k: sum(a[k] for a in answers) for k in ("received", "unique", "complete", "closed")}
        out["first"] = min((a["first"] for a in answers if a["first"]), default=0.0)
        out["done"] = max((a["done"] for a in answers), default=0.0)
        lat, sent = array("d"), array("d")
        for a in answers:
            lat.frombytes(a["latencies"])
            sent.frombytes(a["sent_times"])
        out["latencies"] = sorted(lat)
        out["slowest_moments"] = slowest_moments(sent, lat)
        return out

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send("quit")
            except OSError:
                pass
        for proc in self.procs:
            proc.join(3)
            if proc.is_alive():
                proc.kill()


# -- relay ----------------------------------------------------------------------------------------

class KafkaRelay(servers.System):
    """relay on one gevent worker, reading ``topic`` from ``bootstrap`` (plus ``config``, TOML)."""

    name = "relay"

    def __init__(self, workdir: Path, bootstrap: str, topic: str, start: str, config: dict | None = None):
        super().__init__(workdir, 0)
        self.bootstrap, self.topic, self.start_at, self.config = bootstrap, topic, start, config or {}

    def command(self):
        env = servers._base_env()
        env.update({
            "RELAY_BIND": f"127.0.0.1:{self.port}", "RELAY_WORKERS": "1", "RELAY_GRACEFUL_TIMEOUT": "3",
            "RELAY_DATA_DIR": str(self.workdir / "data"),
            "RELAY_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "RELAY_KAFKA_TOPICS": self.topic,
            "RELAY_KAFKA_START": self.start_at,
            "RELAY_SSE_MAX_CONNECTIONS_PER_ADDRESS": "0",  # every client connects from 127.0.0.1
            "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        })
        if self.config:
            import tomli_w

            path = self.workdir / "relay.toml"
            path.write_bytes(tomli_w.dumps(self.config).encode())
            env["RELAY_CONFIG"] = str(path)
        cmd = [sys.executable, "-m", "gunicorn", "--config", str(REPO / "gunicorn.conf.py"), "relay.wsgi_app:app"]
        return cmd, env, REPO

    def start(self, redis=None, timeout: float = 30.0) -> KafkaRelay:
        cmd, env, cwd = self.command()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=servers._server_child)
        servers._wait_port(self.port, timeout, self.proc, self.log)
        return self

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as r:
            return json.loads(r.read())

    def wait_partitions(self, component: str = "source:kafka", timeout: float = 60.0) -> None:
        """Until ``component`` reads every partition of the topic."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                detail = self.health()["components"].get(component, {}).get("detail", "")
            except OSError:
                detail = ""
            if re.search(rf"\b{PARTITIONS} partition\(s\)", detail):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{component} never read {PARTITIONS} partitions; log {self.log}")

    def worker_pids(self) -> list[int]:
        return self.pids()[1:]  # gunicorn's arbiter first, then its one worker


# -- measuring ------------------------------------------------------------------------------------

def slowest_moments(sent: array, latencies: array, window: float = 0.1, keep: int = 5) -> list[dict]:
    """The ``keep`` windows of send time whose records waited longest (seconds from the first
    send, records sampled, worst latency): whether the tail is a few stalls or spread out."""
    if not sent:
        return []
    start, worst, counts = min(sent), {}, {}
    for t, lat in zip(sent, latencies):
        w = int((t - start) / window)
        worst[w], counts[w] = max(worst.get(w, 0.0), lat), counts.get(w, 0) + 1
    top = sorted(worst, key=worst.get, reverse=True)[:keep]
    return [{"at_s": round(w * window, 1), "epoch": round(start + w * window, 1), "samples": counts[w],
             "worst_ms": round(worst[w] * 1000, 1)} for w in top]


class CpuWatch:
    """CPU seconds of named process groups over a measured interval, as % of one core, and how
    busy the whole machine was (other work on it included): a figure measured on a machine busy
    at ~100 % is limited by the machine, whatever process is busiest."""

    def __init__(self, groups: dict):
        self.groups = groups  # name -> callable returning pids
        self.t0 = time.time()
        self.cpu0 = {name: procstat.cpu_seconds(pids()) for name, pids in groups.items()}
        self.machine0 = procstat.machine_ticks()

    def result(self, until: float | None = None, extra: dict | None = None) -> dict:
        """Per group: CPU seconds and % of a core; ``extra``: CPU seconds counted elsewhere."""
        wall = max(1e-9, (until or time.time()) - self.t0)
        used = {name: procstat.cpu_seconds(pids()) - self.cpu0[name] for name, pids in self.groups.items()}
        used.update(extra or {})
        out = {name: {"cpu_s": round(cpu, 2), "core_pct": round(100 * cpu / wall)} for name, cpu in used.items()}
        busy, total = (now - then for now, then in zip(procstat.machine_ticks(), self.machine0))
        out["machine"] = {"busy_pct": round(100 * busy / max(1, total)), "cpus": os.cpu_count()}
        return out


def per_unit(cpu: dict, units: int) -> float | None:
    """relay worker CPU µs per record (or delivery): the figure other load on the machine moves least."""
    return round(cpu["relay worker"]["cpu_s"] / units * 1e6, 1) if units else None


def limiter(cpu: dict) -> str:
    """The busiest process group: what most likely limits the figure (≥ 90 % of a core is
    saturated), and whether the whole machine was (≥ 90 % of every core, other work included)."""
    groups = {k: v for k, v in cpu.items() if k != "machine"}
    name, figures = max(groups.items(), key=lambda kv: kv[1]["core_pct"])
    saturated = " (saturated)" if figures["core_pct"] >= 90 else ""
    machine = cpu["machine"]
    busy = f"; machine {machine['busy_pct']} % busy on {machine['cpus']} CPUs"
    if machine["busy_pct"] >= 90:
        busy += " (saturated: the figure is the machine's, not relay's)"
    return f"{name} at {figures['core_pct']} % of a core{saturated}{busy}"


def start_profiler(directory: str | None, pid: int, seconds: float, name: str):
    if not directory:
        return None
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = Path(directory) / f"kafka-{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"  py-spy on worker {pid} for {seconds:.0f}s -> {out}")
    # --gil: only samples holding the GIL, so idle threads (gevent's thread pool) do not count.
    return subprocess.Popen([pyspy, "record", "--gil", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "200",
                             "-f", "raw", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Bench:
    def __init__(self, args, workdir: Path):
        self.args, self.workdir = args, workdir
        self.broker = Broker(workdir, args.broker_jvm)
        log(f"broker: {self.broker.kind} at {self.broker.bootstrap}")

    def consumer_config(self) -> dict:
        """``--consumer`` settings as relay's ``[sources.kafka.consumer]`` table (none: relay's defaults)."""
        return {"sources": {"kafka": {"consumer": self.args.consumer}}} if self.args.consumer else {}

    def topic(self, name: str) -> str:
        return self.broker.create_topic(f"bench-{name}-{os.getpid()}-{int(time.time())}")

    def drain(self) -> dict:
        a = self.args
        topic = self.topic("drain")
        log(f"drain: producing {a.records:,} records into {PARTITIONS} partitions from {a.producers} processes")
        produced = produce(self.broker, topic, a.records, a.producers, a.producer)
        log(f"  produced in {produced['seconds']} s ({produced['records_per_s']:,}/s, errors {produced['errors']})")
        # relay bootstraps through a proxy that opens once the clients are connected: a closed
        # bootstrap port makes the source wait (and retry within a second or two).
        from relay.testing import TcpProxy

        host_port = self.broker.bootstrap.split(",")[0]
        gate = TcpProxy(int(host_port.rpartition(":")[2]))
        relay = KafkaRelay(self.workdir / "drain", f"127.0.0.1:{gate.port}", topic, "earliest",
                           self.consumer_config()).start()
        clients = None
        try:
            clients = Clients(relay.port, a.clients, 0, a.records, a.processes, checked=a.checked)
            time.sleep(0.5)
            cpu = CpuWatch({"relay worker": relay.worker_pids, "SSE clients": clients.pids,
                            "broker": self.broker.pids})
            gc_mark = self.broker.gc_mark()
            gate.restore()
            opened = time.time()
            profiler = start_profiler(a.profile, relay.worker_pids()[0], a.profile_seconds, "drain")
            clients.wait(a.records * a.clients, limit=a.drain_limit)
            got = clients.collect()
            gc = self.broker.gc_pauses(gc_mark)
            cpu_figures = cpu.result(got["done"] or None)
            if profiler is not None:
                profiler.wait(a.profile_seconds + 30)
        finally:
            if clients is not None:
                clients.close()
            relay.stop()
            gate.cut()
        expected = a.records * a.clients
        span = (got["done"] or time.time()) - got["first"] if got["first"] else 0.0
        return {"records": a.records, "clients": a.clients, "checked_clients": clients.checked, "produced": produced,
                "complete_clients": got["complete"], "expected_deliveries": expected,
                "unique_deliveries": got["unique"], "lost": expected - got["unique"],
                "duplicates": got["received"] - got["unique"], "closed_by_server": got["closed"],
                "seconds_first_to_all": round(span, 2),
                "seconds_from_bootstrap_open": round((got["done"] or time.time()) - opened, 2),
                "records_per_s": round(a.records / span) if got["complete"] == a.clients else 0,
                "deliveries_per_s": round(got["unique"] / span) if span > 0 else 0,
                "worker_cpu_us_per_record": per_unit(cpu_figures, a.records),
                "broker_gc_pauses": gc, "cpu": cpu_figures, "limited_by": limiter(cpu_figures)}

    def live_run(self, relay: KafkaRelay, topic: str, rate: float, seconds: float, base: int,
                 profile: bool = False) -> dict:
        """One paced run; sequence numbers ``base``… so runs on one topic never mix."""
        a = self.args
        count = int(rate * seconds)
        clients = Clients(relay.port, a.clients, base, base + count, a.processes, latency_every=LATENCY_EVERY,
                          checked=a.checked)
        try:
            time.sleep(0.5)
            producers = Producers(self.broker, topic, count, a.producers, rate=rate, lo=base, client=a.producer)
            cpu = CpuWatch({"relay worker": relay.worker_pids, "SSE clients": clients.pids,
                            "broker": self.broker.pids})
            profiler = start_profiler(self.args.profile if profile else None, relay.worker_pids()[0],
                                      min(seconds, a.profile_seconds), "live")
            gc_mark = self.broker.gc_mark()
            producers.go()
            sent = producers.wait(seconds * 4 + 60)
            sent_at = time.time()
            clients.wait(count * a.clients, limit=15, stall=3)
            got = clients.collect()
            gc = self.broker.gc_pauses(gc_mark)
            cpu_figures = cpu.result(extra={"producers": sent["cpu_s"]})
            if profiler is not None:
                profiler.wait(a.profile_seconds + 30)
        finally:
            clients.close()
        lat = got["latencies"]
        expected = count * a.clients
        return {"rate": rate, "seconds": seconds, "records": count, "clients": a.clients, "producers": sent,
                "achieved_send_rate": round(count / max(1e-9, sent["seconds"])),
                "expected_deliveries": expected, "lost": expected - got["unique"],
                "duplicates": got["received"] - got["unique"], "closed_by_server": got["closed"],
                "latency_ms": {k: round(percentile(lat, q) * 1000, 1) if lat else None
                               for k, q in (("p50", .5), ("p99", .99))} | {
                                   "max": round(lat[-1] * 1000, 1) if lat else None},
                "last_delivery_after_last_send_s": round(max(0.0, got["done"] - sent_at), 2) if got["done"] else None,
                "worker_cpu_us_per_record": per_unit(cpu_figures, count),
                "slowest_moments": got["slowest_moments"], "broker_gc_pauses": gc,
                "cpu": cpu_figures, "limited_by": limiter(cpu_figures)}

    def live(self) -> dict:
        a = self.args
        topic = self.topic("live")
        relay = KafkaRelay(self.workdir / "live", self.broker.bootstrap, topic, "latest",
                           self.consumer_config()).start()
        try:
            relay.wait_partitions()
            time.sleep(1.0)  # the first probe pinned the positions at the end: nothing is skipped
            # The ladder first (rising rates, short runs, until relay falls behind), then the
            # measured run: one topic, so each run gets its own range of sequence numbers.
            ladder, best, base = [], None, 0
            for rate in a.ladder:
                run = self.live_run(relay, topic, rate, a.ladder_seconds, base)
                base += int(rate * a.ladder_seconds)
                ladder.append(run)
                self._log_live(run)
                if not keeps_up(run):
                    break
                best = run
                self.settle(relay)
            self.settle(relay)
            log(f"live: {a.rate:,.0f} records/s for {a.seconds:g}s to {a.clients} clients")
            main = self.live_run(relay, topic, a.rate, a.seconds, base, profile=True)
            self._log_live(main)
            if keeps_up(main) and (best is None or main["achieved_send_rate"] > best["achieved_send_rate"]):
                best = main
        finally:
            relay.stop()
        return {"run": main, "ladder": ladder,
                "max_kept_up_send_rate": best["achieved_send_rate"] if best else 0}

    @staticmethod
    def settle(relay: KafkaRelay, limit: float = 30.0) -> None:
        """Wait until the worker is idle (a backlog of one run must not weigh on the next)."""
        deadline = time.time() + limit
        while time.time() < deadline:
            before = procstat.cpu_seconds(relay.worker_pids())
            time.sleep(0.5)
            if procstat.cpu_seconds(relay.worker_pids()) - before < 0.05:
                return

    @staticmethod
    def _log_live(run: dict) -> None:
        log(f"  {run['rate']:,.0f}/s asked, {run['achieved_send_rate']:,}/s sent: p50 {run['latency_ms']['p50']} ms, "
            f"p99 {run['latency_ms']['p99']} ms, missing {run['lost']}, dup {run['duplicates']}; "
            f"{run['limited_by']} {'keeps up' if keeps_up(run) else 'FALLS BEHIND'}"
            + (f"; broker GC: {gc['count']} pauses, longest {gc['max_ms']} ms" if (gc := run["broker_gc_pauses"]) else ""))
        log("  slowest moments (s from the first send: worst ms): "
            + ", ".join(f"{m['at_s']}: {m['worst_ms']}" for m in run["slowest_moments"]))

    def webhooks(self) -> dict:
        a = self.args
        topic = self.topic("hooks")
        log(f"webhooks: producing {a.hooks:,} records")
        produced = produce(self.broker, topic, a.hooks, a.producers, a.producer)
        port = free_port()
        receiver = subprocess.Popen([sys.executable, "-m", "benchmarks.webhook_receiver", str(port), SECRET],
                                    cwd=REPO, preexec_fn=servers._load_child)
        config = {
            "sinks": {"webhooks": {"allow_networks": ["127.0.0.0/8"], "endpoints": [
                {"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET, "channels": [CHANNEL]}]}},
            "sources": {"kafka": {"group_id": f"bench-{os.getpid()}-{int(time.time())}", "consumer": {
                "session_timeout_ms": 6000, "heartbeat_interval_ms": 500} | self.args.consumer}},
        }
        relay = KafkaRelay(self.workdir / "hooks", self.broker.bootstrap, topic, "earliest", config)
        started = time.time()
        relay.start()
        try:
            cpu = CpuWatch({"relay worker": relay.worker_pids, "receiver": lambda: [receiver.pid],
                            "broker": self.broker.pids})
            profiler = start_profiler(a.profile, relay.worker_pids()[0], a.profile_seconds, "webhooks")
            deadline, last, changed, stats = time.time() + a.hooks_limit, -1, time.time(), {}
            while time.time() < deadline:
                stats = receiver_stats(port)
                if stats.get("unique", 0) >= a.hooks:
                    break
                if stats.get("verified", 0) != last:
                    last, changed = stats.get("verified", 0), time.time()
                elif stats.get("verified", 0) and time.time() - changed > 10:
                    break
                time.sleep(0.2)
            cpu_figures = cpu.result(stats.get("last") or None)
            if profiler is not None:
                profiler.wait(a.profile_seconds + 30)
        finally:
            relay.stop()
            receiver.terminate()
            receiver.wait(5)
        span = stats["last"] - stats["first"] if stats.get("first") else 0.0
        return {"records": a.hooks, "produced": produced, "verified": stats.get("verified", 0),
                "bad_signatures": stats.get("bad", 0), "unique": stats.get("unique", 0),
                "lost": a.hooks - stats.get("unique", 0),
                "first_delivery_after_start_s": round(stats["first"] - started, 2) if stats.get("first") else None,
                "seconds_first_to_last": round(span, 2),
                "deliveries_per_s": round(stats.get("unique", 0) / span) if span > 0 else 0,
                "worker_cpu_us_per_delivery": per_unit(cpu_figures, stats.get("unique", 0)),
                "cpu": cpu_figures, "limited_by": limiter(cpu_figures)}

    def close(self) -> None:
        self.broker.stop()


def receiver_stats(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return {}


def ladder_step(run: dict) -> str:
    return f"{run['achieved_send_rate']:,} {'ok' if keeps_up(run) else 'behind'} (p99 {run['latency_ms']['p99']} ms)"


def keeps_up(run: dict) -> bool:
    """No loss, p99 within a second, and the clients done within 2 s of the last send."""
    p99, tail = run["latency_ms"]["p99"], run["last_delivery_after_last_send_s"]
    return run["lost"] == 0 and p99 is not None and p99 <= 1000 and tail is not None and tail <= 2


# -- report ---------------------------------------------------------------------------------------

def report(result: dict) -> str:
    lines = [f"broker: {result['broker']}" + ("" if result["broker"] != "tansu" else
                                              " (producers send one record per batch: Tansu quirk)")
             + f"; producers: {result.get('producer', 'kafka-python')}"]
    s = result["scenarios"]

    def row(met, what, figure, target, why):
        lines.append(f"{'MET   ' if met else 'MISSED'} {what}: {figure} (target {target}); {why}")

    if "drain" in s:
        d = s["drain"]
        row(d["records_per_s"] >= TARGETS["drain"] and d["lost"] == 0 and d["duplicates"] == 0,
            f"drain {d['records']:,} records to {d['clients']} clients",
            f"{d['records_per_s']:,} records/s ({d['deliveries_per_s']:,} deliveries/s, "
            f"{d['complete_clients']}/{d['clients']} clients complete, lost {d['lost']}, dup {d['duplicates']}, "
            f"worker CPU {d['worker_cpu_us_per_record']} µs/record)",
            f">= {TARGETS['drain']:,} records/s", d["limited_by"])
    if "live" in s:
        r = s["live"]["run"]
        row(keeps_up(r) and (r["latency_ms"]["p99"] or 1e9) <= TARGETS["live_p99_ms"],
            f"live {r['rate']:,.0f} records/s to {r['clients']} clients",
            f"p50 {r['latency_ms']['p50']} ms, p99 {r['latency_ms']['p99']} ms, missing {r['lost']}, "
            f"sent {r['achieved_send_rate']:,}/s, worker CPU {r['worker_cpu_us_per_record']} µs/record",
            f"keeps up, p99 <= {TARGETS['live_p99_ms']} ms", r["limited_by"])
        lines.append(f"       most the producers pushed with relay keeping up: "
                     f"{s['live']['max_kept_up_send_rate']:,} records/s "
                     f"(ladder, sent/s: {', '.join(ladder_step(x) for x in s['live']['ladder']) or '-'})")
    if "webhooks" in s:
        w = s["webhooks"]
        row(w["deliveries_per_s"] >= TARGETS["webhooks"] and w["lost"] == 0 and w["bad_signatures"] == 0,
            f"webhooks {w['records']:,} records via the consumer group",
            f"{w['deliveries_per_s']:,} signed deliveries/s (verified {w['verified']:,}, unique {w['unique']:,}, "
            f"bad {w['bad_signatures']}, worker CPU {w['worker_cpu_us_per_delivery']} µs/delivery)", f">= {TARGETS['webhooks']:,}/s", w["limited_by"])
    return "\n".join(lines)


SCENARIOS = ("drain", "live", "webhooks")


def default_producer() -> str:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return "kafka-python"
    return "librdkafka"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke check")
    parser.add_argument("--records", type=int, default=200_000, help="drain: records in the topic")
    parser.add_argument("--clients", type=int, default=100, help="SSE clients (drain and live)")
    parser.add_argument("--checked", type=int, default=10,
                        help="of those, clients that check every sequence number (the others count frames)")
    parser.add_argument("--processes", type=int, default=3, help="SSE client processes")
    parser.add_argument("--producers", type=int, default=2, help="producer processes")
    parser.add_argument("--producer", choices=("librdkafka", "kafka-python"), default=default_producer(),
                        help="the producers' client: librdkafka (confluent-kafka, the default when installed) "
                        "or kafka-python (pure Python: ~30 µs of CPU per record, taken from relay's cores)")
    parser.add_argument("--rate", type=float, default=10_000, help="live: records/s")
    parser.add_argument("--seconds", type=float, default=20, help="live: seconds of producing")
    parser.add_argument("--ladder", default="1000,2000,3000,4000,5000,6000,8000,10000,15000,20000",
                        help="live: rates tried first, rising, comma-separated, until relay falls behind "
                        "(empty: none); the most it kept up with is reported")
    parser.add_argument("--broker-jvm", choices=("production", "test"), default="production",
                        help="Apache Kafka's JVM: production (Kafka's start scripts' 1 GB heap and G1 "
                        "collector) or test (the test suite's quick-starting C1 compiler and serial collector)")
    parser.add_argument("--ladder-seconds", type=float, default=5)
    parser.add_argument("--hooks", type=int, default=20_000, help="webhooks: records in the topic")
    parser.add_argument("--drain-limit", type=float, default=120, help="seconds a drain may take")
    parser.add_argument("--hooks-limit", type=float, default=120, help="seconds the webhook run may take")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the relay worker in each scenario into "
                        "DIR/kafka-<scenario>.txt (read with python -m benchmarks.profile_summary)")
    parser.add_argument("--profile-seconds", type=float, default=8)
    parser.add_argument("--consumer", action="append", default=[], metavar="KEY=INT",
                        help="a [sources.kafka.consumer] setting for relay, e.g. fetch_max_wait_ms=50 (repeatable)")
    parser.add_argument("--out", help="JSON results (default benchmarks/results/kafka-<time>.json)")
    args = parser.parse_args(argv)
    args.consumer = {k: int(v) for k, _, v in (item.partition("=") for item in args.consumer)}
    if args.quick:
        args.records, args.clients, args.seconds, args.hooks = 20_000, 20, 5, 2_000
        args.rate, args.ladder, args.ladder_seconds = min(args.rate, 2_000), "1000,2000", 3
    args.ladder = [float(x) for x in args.ladder.split(",") if x] if isinstance(args.ladder, str) else args.ladder
    scenarios = [x for x in args.scenarios.split(",") if x]
    for x in scenarios:
        if x not in SCENARIOS:
            parser.error(f"unknown scenario {x!r}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so every process is stopped
    result = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": args.quick,
              "load_average_before": procstat.load_average(), "scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="relay-kafka-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        result["broker"], result["producer"] = bench.broker.kind, args.producer
        try:
            for name in scenarios:
                log(f"{name} (load average {procstat.load_average()[0]:.2f})")
                result["scenarios"][name] = getattr(bench, name)()
                if name != "live":
                    log("  " + json.dumps({k: v for k, v in result["scenarios"][name].items() if k != "cpu"}))
        finally:
            bench.close()
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = report(result)
    out = Path(args.out) if args.out else HERE / "results" / time.strftime("kafka-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    if not args.out:
        (out.parent / "kafka-latest.json").write_text(json.dumps(result, indent=1))
    print("\n" + text + f"\n\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
