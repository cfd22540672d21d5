"""Many concurrent SSE connections on one host (issue 18, point 3): ``python -m benchmarks.connections``.

One run, every process private and stopped at the end (Ctrl-C and timeouts included):

1. a ``redis-server`` and relay on gunicorn's gevent worker on the Redis backbone, with the
   connection settings the load needs (``worker_connections``, gunicorn's ``backlog``, no
   per-address stream limit, heartbeats every ``--heartbeat`` seconds);
2. ``--clients`` SSE connections to ``/events/bench`` from the Go load client
   (``benchmarks/connections/``, built once into ``~/.cache/relay``), spread over the loopback
   source addresses ``--sources`` and over several processes (each holds at most its open-file
   limit); then ``--idle`` seconds with only heartbeats: connect rate, RSS per connection (the
   workers' growth / connections), kernel memory, CPU of every process while idle, heartbeats
   received;
3. ``--rate`` events/s (1) for ``--seconds`` (30) published with ``POST /events/bench`` (a bearer
   JWT: the relay runs with ``auth.jwt_key``, the channel is public to subscribe) so every event
   crosses Redis to every worker: delivery latency p50/p99 (the payload carries its send time),
   loss and duplicates per stream, CPU of every process.

Before starting it reads the limits that cap connections (open files per process, the kernel's
backlog, ephemeral ports per source address, conntrack, file-max), raises the soft open-file
limit and any kernel setting that is too low and writable, and reports what it could not.

The load client is Go, standard library only, one epoll loop per process (see its ``loop``): ~5 µs
of CPU per delivery, so it takes a small share of the two cores relay needs (its CPU is
reported). Figures: ``benchmarks/results/connections-<time>.json``; ``--report FILE…`` prints
them as a Markdown table.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import math
import os
import queue
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks import procstat
from benchmarks.servers import RedisServer, die_with_parent

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLIENT_SOURCE = HERE / "connections"
CHANNEL = "bench"
RESERVED = 100  # sinks.sse.reserved_connections: kept free for /healthz and publishing
WORKER_SPARE_FDS = 300  # a worker's own files: listening socket, Redis, logs, metrics, Python
CLIENT_SPARE_FDS = 200


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- limits -------------------------------------------------------------------------------------

SYSCTLS = {  # what caps connections, and the least each must be for this run (filled in by needs())
    "net.core.somaxconn": "listen backlog cap (gunicorn's backlog is cut to it)",
    "net.ipv4.tcp_max_syn_backlog": "half-open connections queued per listener",
    "net.ipv4.ip_local_port_range": "ephemeral ports per (source address, destination)",
    "net.netfilter.nf_conntrack_max": "tracked connections (when conntrack is loaded)",
    "fs.file-max": "open files on the whole host",
    "fs.nr_open": "the highest open-file limit a process may be given",
}


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str | None:
    try:
        return " ".join(_sysctl_path(name).read_text().split())
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> str | None:
    """Write a kernel setting; ``None`` when done, else why not."""
    try:
        _sysctl_path(name).write_text(value)
        return None
    except OSError as exc:
        return exc.strerror or str(exc)


def raise_soft_fd_limit() -> tuple[int, int]:
    """Soft open-file limit up to the hard one (children inherit it); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def check_limits(clients: int, sources: list[str], backlog: int, tune: bool) -> dict:
    """What each limit is, what this run needs, and what was raised or could not be."""
    soft_before = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    soft, hard = raise_soft_fd_limit()
    try:  # only a process with CAP_SYS_RESOURCE may raise its hard limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard + 1))
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        hard_raisable = True
    except (ValueError, OSError):
        hard_raisable = False
    ports = read_sysctl("net.ipv4.ip_local_port_range")
    low, high = (int(x) for x in ports.split()) if ports else (32768, 60999)
    conntrack_loaded = Path("/proc/sys/net/netfilter/nf_conntrack_max").exists()
    needs = {
        "net.core.somaxconn": backlog,
        "net.ipv4.tcp_max_syn_backlog": backlog,
        "net.ipv4.ip_local_port_range": math.ceil(clients / max(1, len(sources))),
        "net.netfilter.nf_conntrack_max": clients + 10000 if conntrack_loaded else 0,  # one entry a connection
        "fs.file-max": clients * 2 + 10000,
        "fs.nr_open": 0,
    }
    report = {"nofile": {"soft_before": soft_before, "soft": soft, "hard": hard,
                         "hard_raisable": hard_raisable},
              "sysctl": {}}
    for name, need in needs.items():
        value = read_sysctl(name)
        entry = {"value": value, "needs": need, "what": SYSCTLS[name]}
        if value is None:
            entry["note"] = "absent"
        else:
            have = (high - low + 1) if name == "net.ipv4.ip_local_port_range" else int(value.split()[0])
            entry["have"] = have
            if need and have < need:
                if not tune:
                    entry["note"] = "too low (--no-tune: left as it is)"
                elif name == "net.ipv4.ip_local_port_range":
                    entry["note"] = "too low: use more --sources"
                else:
                    error = write_sysctl(name, str(need))
                    entry["note"] = f"raised from {value}" if error is None else f"too low, not writable: {error}"
                    entry["value"] = read_sysctl(name)
        report["sysctl"][name] = entry
    report["writable"] = {name: os.access(_sysctl_path(name), os.W_OK) for name in needs if read_sysctl(name)}
    return report


# -- relay --------------------------------------------------------------------------------------

def _jwt_hs256(claims: dict, key: str) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


class Relay:
    """gunicorn with ``workers`` gevent workers on the Redis backbone, set up for many streams."""

    def __init__(self, workdir: Path, redis_port: int, workers: int, worker_connections: int, backlog: int,
                 heartbeat: float, code: Path = REPO):
        self.port = free_port()
        self.workdir = workdir
        self.log = workdir / "relay.log"
        self.workers = workers
        self.jwt_key = secrets.token_urlsafe(32)
        self.token = _jwt_hs256({"sub": "bench", "relay": {"publish": [CHANNEL]}, "exp": int(time.time()) + 86400},
                                self.jwt_key)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        self.env.update({
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(code) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "RELAY_BIND": f"127.0.0.1:{self.port}",
            "RELAY_WORKERS": str(workers),
            "RELAY_BACKBONE": f"redis://127.0.0.1:{redis_port}/0",
            "RELAY_WORKER_CONNECTIONS": str(worker_connections),
            "RELAY_SSE_MAX_CONNECTIONS_PER_ADDRESS": "0",  # a few source addresses hold every stream
            "RELAY_SSE_HEARTBEAT": str(heartbeat),
            "RELAY_JWT_KEY": self.jwt_key,  # publishing needs a token, as in production
            "RELAY_PUBLIC_CHANNELS": CHANNEL,  # streams of it do not
            "RELAY_DATA_DIR": str(workdir / "data"),
            "RELAY_GRACEFUL_TIMEOUT": "5",
        })
        # The repository's gunicorn settings; --backlog (gunicorn's default 2048) for the connect burst.
        self.cmd = [sys.executable, "-m", "gunicorn", "--config", str(code / "gunicorn.conf.py"),
                    "--backlog", str(backlog), "relay.wsgi_app:app"]
        self.code = code
        self.proc: subprocess.Popen | None = None

    def start(self, redis: RedisServer, timeout: float = 60.0) -> Relay:
        with open(self.log, "ab") as out:
            # preexec_fn: started before any thread of this process (the fleet's readers come later)
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.code, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=die_with_parent)  # noqa: PLW1509
        deadline = time.monotonic() + timeout
        while True:  # every worker subscribed to the backbone, and the relay ready
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}; log {self.log}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            # Workers subscribe to a channel when their first client wants it (the catch-up covers
            # what is published meanwhile): ready means every worker up and its backbone source up.
            workers = len(self.worker_pids())
            if workers >= self.workers and self._ready():
                return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"relay not ready after {timeout}s ({workers} of {self.workers} workers); "
                                   f"log {self.log}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def sse_metrics(self) -> dict[str, float]:
        """relay's own ``relay_sse_*`` figures from ``/metrics`` (summed over the workers)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as answer:
                text = answer.read().decode()
        except OSError as exc:
            return {"error": str(exc)}
        figures = {}
        for line in text.splitlines():
            if line.startswith("relay_sse_") and " " in line:
                name, value = line.rsplit(" ", 1)
                figures[name] = float(value)
        return figures

    def worker_pids(self) -> list[int]:
        return [pid for pid in procstat.tree(self.proc.pid) if pid != self.proc.pid] if self.proc else []

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pids = procstat.tree(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            for pid in reversed(pids):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(5)


def open_sockets(pid: int) -> int:
    """Sockets a process holds (its streams, for a worker)."""
    count = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            except OSError:
                pass
    except OSError:
        pass
    return count


# -- the Go load client -------------------------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "relay"


def build_client() -> Path:
    """``go build`` the load client into the cache (outside the checkout) when its source changed."""
    binary = cache_dir() / "connections-client"
    sources = [CLIENT_SOURCE / "main.go", CLIENT_SOURCE / "go.mod"]
    if binary.exists() and binary.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        return binary
    go = shutil.which("go")
    if not go:
        raise RuntimeError("Go is not installed: the load client (benchmarks/connections/main.go) cannot be built")
    binary.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the load client into {binary}")
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=CLIENT_SOURCE, check=True, timeout=300,
                   env={**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"})
    return binary


class ClientFleet:
    """Several Go load-client processes, driven together over their stdin/stdout."""

    def __init__(self, binary: Path, port: int, sources: list[str], shares: list[int], concurrency: int,
                 retries: int, connect_timeout: float):
        self.shares = shares
        self.procs: list[subprocess.Popen] = []
        self.answers: list[queue.Queue] = []
        env = {**os.environ, "GOMAXPROCS": "2"}  # the epoll loop holds one P, the commands use the other
        first = 0
        for share in shares:
            proc = subprocess.Popen(
                [str(binary), "-target", f"127.0.0.1:{port}", "-path", f"/events/{CHANNEL}",
                 "-sources", ",".join(sources), "-first", str(first), "-concurrency", str(concurrency),
                 "-retries", str(retries), "-connect-timeout", f"{connect_timeout:g}s"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)  # exits when stdin closes
            first += share
            answers: queue.Queue = queue.Queue()
            threading.Thread(target=self._read, args=(proc, answers), daemon=True).start()
            self.procs.append(proc)
            self.answers.append(answers)

    @staticmethod
    def _read(proc: subprocess.Popen, answers: queue.Queue) -> None:
        for line in proc.stdout:
            answers.put(json.loads(line))
        answers.put(None)

    def ask(self, commands: list[str] | str, timeout: float) -> list[dict]:
        """Send each process its command (one for all, or one each); wait for every answer."""
        if isinstance(commands, str):
            commands = [commands] * len(self.procs)
        for proc, command in zip(self.procs, commands):
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        deadline = time.monotonic() + timeout
        answers = []
        for proc, box in zip(self.procs, self.answers):
            try:
                answer = box.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"load client {proc.pid} did not answer {commands[0]!r} in {timeout}s") from None
            if answer is None:
                raise RuntimeError(f"load client {proc.pid} exited with {proc.poll()}")
            answers.append(answer)
        return answers

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.stdin.write("quit\n")
                    proc.stdin.flush()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# -- the publisher ------------------------------------------------------------------------------

class Publisher:
    """``POST /events/bench`` at a steady rate, open loop: each request on its own connection
    and thread, so a relay that answers late makes deliveries late (which the latency shows)
    instead of slowing the publisher (which nothing would show)."""

    def __init__(self, port: int, token: str):
        self.port, self.token = port, token
        self.statuses: dict[int, int] = {}
        self.answer_ms: list[float] = []
        self.connect_ms: list[float] = []  # of answer_ms, the TCP handshake: waiting to be accepted
        self.lag_ms = 0.0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _post(self, seq: int) -> None:
        body = json.dumps({"event": CHANNEL, "data": {"seq": seq, "ts": time.time(), "body": "x" * 64}})
        start = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            conn.connect()
            connected = time.monotonic()
            conn.request("POST", f"/events/{CHANNEL}", body=body,
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"})
            status = conn.getresponse().status
            conn.close()
        except OSError:
            status, connected = 0, None
        with self._lock:
            self.statuses[seq] = status
            self.answer_ms.append((time.monotonic() - start) * 1000)
            if connected is not None:
                self.connect_ms.append((connected - start) * 1000)

    def run(self, first: int, count: int, rate: float) -> None:
        start = time.monotonic()
        for i in range(count):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.lag_ms = max(self.lag_ms, (time.monotonic() - due) * 1000)
            thread = threading.Thread(target=self._post, args=(first + i,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def finish(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def accepted(self) -> list[int]:
        return sorted(seq for seq, status in self.statuses.items() if status == 202)


# -- figures ------------------------------------------------------------------------------------

def merge_counts(dicts: list[dict], int_keys: bool = True) -> dict:
    """Add up the load processes' {key: count} answers (JSON keys are text: numbers unless int_keys=False)."""
    total: dict = {}
    for d in dicts:
        for key, n in d.items():
            key = int(key) if int_keys else key
            total[key] = total.get(key, 0) + n
    return total


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values) or [0.0]
    return {str(q): ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)] for q in (50, 99, 100)}


def histogram_percentile(histogram: dict[int, int], q: float) -> float | None:
    """The q-th percentile (0-100) of a histogram {value: count}."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = math.ceil(q / 100 * total)
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    return max(histogram)


class CPU:
    """CPU seconds of named groups of processes between two moments."""

    def __init__(self, groups: dict[str, list[int]]):
        self.groups = groups
        self.start = {name: procstat.cpu_seconds(pids) for name, pids in groups.items()}
        self.t0 = time.monotonic()

    def seconds(self) -> dict[str, float]:
        return {name: procstat.cpu_seconds(pids) - self.start[name] for name, pids in self.groups.items()}

    def percent(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        return {name: round(100 * used / wall, 1) for name, used in self.seconds().items()}


def meminfo_kb(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# -- the run ------------------------------------------------------------------------------------

def plan(args, hard: int) -> tuple[int, int, list[int]]:
    """Workers, their worker_connections, and the load-client processes' shares."""
    per_worker = hard - WORKER_SPARE_FDS  # connections one worker can hold under the open-file limit
    streams_per_worker = per_worker - RESERVED
    workers = args.workers or max(2, math.ceil(args.clients / (0.9 * streams_per_worker)))  # 10 % for imbalance
    if workers * streams_per_worker < args.clients:
        log(f"warning: {workers} workers hold at most {workers * streams_per_worker} streams under the open-file "
            f"limit of {hard} per process; the rest will be refused (or wait)")
    per_process = min(args.per_process, hard - CLIENT_SPARE_FDS)
    processes = max(2, math.ceil(args.clients / per_process))
    shares = [args.clients // processes + (1 if i < args.clients % processes else 0) for i in range(processes)]
    return workers, per_worker, shares


def connect_phase(args, shares: list[int], relay: Relay, redis: RedisServer, fleet: ClientFleet) -> dict:
    """Open every stream at once from every load process: connect rate, memory per connection."""
    workers = relay.worker_pids()
    rss_before, slab_before = procstat.rss_bytes(workers), meminfo_kb("Slab")
    log(f"connecting {args.clients} streams")
    cpu = CPU({"workers": workers, "redis": [redis.proc.pid], "load_client": fleet.pids()})
    t0 = time.monotonic()
    answers = fleet.ask([f"connect {n}" for n in shares], timeout=args.connect_timeout + 60)
    seconds = time.monotonic() - t0
    ok = sum(a["ok"] for a in answers)
    connect = {"ok": ok, "failed": sum(a["failed"] for a in answers), "seconds": round(seconds, 2),
               "per_second": round(ok / seconds), "retries": sum(a["retries"] for a in answers),
               "errors": merge_counts([a["errors"] for a in answers], int_keys=False),
               "cpu_percent": cpu.percent()}
    log(f"  {ok} open in {seconds:.1f}s ({ok / seconds:.0f}/s), {connect['failed']} failed "
        f"{connect['errors'] or ''}, {connect['retries']} retries; CPU %: {fmt_cpu(connect['cpu_percent'])}")
    time.sleep(2)  # the last handshakes' garbage settles before memory is read
    rss_after = procstat.rss_bytes(workers)
    memory = {
        "workers_rss_before_mb": round(rss_before / 2**20, 1),
        "workers_rss_after_mb": round(rss_after / 2**20, 1),
        "rss_per_connection_kb": round((rss_after - rss_before) / max(ok, 1) / 1024, 2),
        "per_worker_rss_mb": [round(procstat.rss_bytes([pid]) / 2**20, 1) for pid in workers],
        "load_client_rss_mb": round(procstat.rss_bytes(fleet.pids()) / 2**20, 1),
        # the whole host's: both ends of each connection, and whatever else ran meanwhile
        "kernel_slab_per_connection_kb": round((meminfo_kb("Slab") - slab_before) / max(ok, 1), 2),
    }
    sockets = [open_sockets(pid) for pid in workers]
    memory["conntrack_entries"] = read_sysctl("net.netfilter.nf_conntrack_count")  # 0: nothing tracked
    log(f"  workers' RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MB: {memory['rss_per_connection_kb']} KB "
        f"per connection; sockets held per worker {sockets}; kernel slab {memory['kernel_slab_per_connection_kb']} "
        f"KB per connection (both ends)")
    return {"connect": connect, "memory": memory, "streams_per_worker": sockets}


def idle_phase(args, fleet: ClientFleet, groups: dict[str, list[int]]) -> dict:
    """Heartbeats only: CPU of every process, heartbeats each stream received."""
    fleet.ask("mark", 30)
    cpu = CPU(groups)
    log(f"idle for {args.idle:.0f}s (heartbeat every {args.heartbeat:g}s)")
    time.sleep(args.idle)
    idle_cpu = cpu.percent()
    reports = fleet.ask("report", 60)
    beats = merge_counts([r["heartbeats_per_stream"] for r in reports])
    idle = {"seconds": args.idle, "cpu_percent": idle_cpu, "open": sum(r["open"] for r in reports),
            "closed": sum(r["closed"] for r in reports), "heartbeats": sum(r["heartbeats"] for r in reports),
            "heartbeats_per_stream": {str(k): v for k, v in sorted(beats.items())},
            "streams_without_heartbeat": beats.get(0, 0)}
    log(f"  CPU % of one core while idle: {fmt_cpu(idle_cpu)}; heartbeats {idle['heartbeats']} "
        f"(per stream: {idle['heartbeats_per_stream']}); open {idle['open']}")
    return idle


def publish_phase(args, relay: Relay, fleet: ClientFleet, groups: dict[str, list[int]], streams: int) -> dict:
    """``--rate`` events/s to every stream: latency, loss and duplicates per stream, CPU."""
    count = max(1, round(args.rate * args.seconds))
    fleet.ask(f"record 1 {count + 1}", 60)
    publisher = Publisher(relay.port, relay.token)
    cpu = CPU({**groups, "publisher": [os.getpid()]})
    log(f"publishing {count} events at {args.rate:g}/s")
    publisher.run(1, count, args.rate)
    publisher.finish(30)
    accepted = len(publisher.accepted())
    expected = accepted * streams
    drained_s = wait_for_deliveries(fleet, expected, args.drain)
    used_percent, used_s = cpu.percent(), cpu.seconds()
    reports = fleet.ask("report", 60)
    latency = merge_counts([r["latency_ms"] for r in reports])
    per_stream = merge_counts([r["received_per_stream"] for r in reports])
    short = {got: n for got, n in per_stream.items() if got < accepted}
    received = sum(r["received"] for r in reports)
    publish = {
        "events": count, "accepted": accepted, "statuses": count_statuses(publisher.statuses),
        # how long relay took to answer each POST: latency includes it (the send time is taken before)
        "publish_answer_ms": {q: round(value, 1) for q, value in percentiles(publisher.answer_ms).items()},
        "publish_connect_ms": {q: round(value, 1) for q, value in percentiles(publisher.connect_ms).items()},
        "publisher_lag_ms": round(publisher.lag_ms, 1),
        "streams": sum(per_stream.values()), "expected": expected, "received": received,
        "missing": sum((accepted - got) * n for got, n in short.items()),
        "streams_missing_some": sum(short.values()),
        "duplicates": sum(r["duplicates"] for r in reports),
        "out_of_order": sum(r["out_of_order"] for r in reports),
        "closed_by_server": sum(r["closed"] for r in reports),
        "latency_ms": {q: histogram_percentile(latency, q) for q in (50, 90, 99, 99.9, 100)},
        "last_delivery_after_last_publish_s": round(drained_s, 1),
        "cpu_percent": used_percent,
        "worker_cpu_us_per_delivery": round(used_s["workers"] / max(received, 1) * 1e6, 1),
        "load_client_cpu_us_per_delivery": round(used_s["load_client"] / max(received, 1) * 1e6, 1),
        "errors": merge_counts([r["errors"] for r in reports], int_keys=False),
    }
    log(f"  received {received}/{expected}, missing {publish['missing']} on {publish['streams_missing_some']} "
        f"streams, {publish['duplicates']} duplicates; latency ms p50 {publish['latency_ms'][50]} p99 "
        f"{publish['latency_ms'][99]} max {publish['latency_ms'][100]}; CPU %: {fmt_cpu(used_percent)}; "
        f"worker CPU {publish['worker_cpu_us_per_delivery']} µs per delivery")
    return publish


def wait_for_deliveries(fleet: ClientFleet, expected: int, drain: float) -> float:
    """Until every stream has every event, ``drain`` seconds, or 10 s without progress; the seconds waited."""
    start = time.monotonic()
    last, last_change = -1, start
    while time.monotonic() - start < drain:
        received = sum(p["received"] for p in fleet.ask("progress", 30))
        if received >= expected:
            break
        if received != last:
            last, last_change = received, time.monotonic()
        elif time.monotonic() - last_change > 10:
            break
        time.sleep(0.5)
    return time.monotonic() - start


def targets(args, result: dict) -> dict:
    """Issue 18's: every stream connected; then p99 <= 2 s with no loss and no duplicate."""
    publish, reached = result["publish"], result["connect"]["ok"]
    p99 = publish["latency_ms"][99]
    return {
        "connections": {"target": args.clients, "reached": reached, "met": reached >= args.clients},
        "p99_le_2s": {"p99_ms": p99, "met": p99 is not None and p99 <= 2000},
        "no_loss": {"missing": publish["missing"], "duplicates": publish["duplicates"],
                    "met": publish["missing"] == 0 and publish["duplicates"] == 0
                    and publish["accepted"] == publish["events"]},
    }


def run(args) -> dict:
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    limits = check_limits(args.clients, sources, args.backlog, tune=not args.no_tune)
    hard = limits["nofile"]["hard"]
    workers, worker_connections, shares = plan(args, hard)
    result: dict = {"clients": args.clients, "workers": workers, "worker_connections": worker_connections,
                    "backlog": args.backlog, "heartbeat_s": args.heartbeat, "sources": sources,
                    "load_processes": len(shares), "limits": limits, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                              time.gmtime())}
    log(f"{args.clients} streams on {workers} workers (worker_connections {worker_connections}), "
        f"{len(shares)} load-client processes, sources {sources[0]}..{sources[-1]}; open files: soft "
        f"{limits['nofile']['soft']}, hard {hard} (hard limit raisable: {limits['nofile']['hard_raisable']})")
    for name, entry in limits["sysctl"].items():
        if entry.get("note"):
            log(f"  {name} = {entry['value']}: {entry['note']}")
    binary = build_client()
    workdir = Path(tempfile.mkdtemp(prefix="relay-connections-"))
    redis = relay = fleet = None
    try:
        redis = RedisServer(workdir).start()
        relay = Relay(workdir, redis.port, workers, worker_connections, args.backlog, args.heartbeat,
                      args.relay_dir.resolve()).start(redis)
        fleet = ClientFleet(binary, relay.port, sources, shares, args.concurrency, args.retries,
                            args.connect_timeout)
        result.update(connect_phase(args, shares, relay, redis, fleet))
        groups = {"workers": relay.worker_pids(), "master": [relay.proc.pid], "redis": [redis.proc.pid],
                  "load_client": fleet.pids()}
        groups.update({f"worker-{i}": [pid] for i, pid in enumerate(relay.worker_pids())})
        result["idle"] = idle_phase(args, fleet, groups)
        result["publish"] = publish_phase(args, relay, fleet, groups, result["idle"]["open"])
        result["relay_metrics"] = relay.sse_metrics()
        result["targets"] = targets(args, result)
        return result
    finally:
        if fleet is not None:
            fleet.stop()
        if relay is not None:
            relay.stop()
        if redis is not None:
            redis.stop()
        if args.keep_logs:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def count_statuses(statuses: dict[int, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for status in statuses.values():
        out[str(status)] = out.get(str(status), 0) + 1
    return out


def fmt_cpu(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in cpu.items())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.connections", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100_000, help="SSE connections to open (100000)")
    parser.add_argument("--workers", type=int, default=0,
                        help="gevent workers (0: 2, or as many as the open-file limit needs for --clients)")
    parser.add_argument("--sources", default=",".join(f"127.0.0.{i}" for i in range(1, 9)),
                        help="loopback addresses to connect from (127.0.0.1-127.0.0.8)")
    parser.add_argument("--backlog", type=int, default=4096, help="gunicorn's listen backlog (4096)")
    parser.add_argument("--heartbeat", type=float, default=15.0, help="sinks.sse.heartbeat seconds (15)")
    parser.add_argument("--idle", type=float, default=35.0, help="seconds idle after connecting (35)")
    parser.add_argument("--rate", type=float, default=1.0, help="events per second to every stream (1)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of publishing (30)")
    parser.add_argument("--drain", type=float, default=120.0,
                        help="seconds to wait for the last deliveries (120; stops after 10 s without progress)")
    parser.add_argument("--concurrency", type=int, default=64, help="handshakes in flight per load process (64)")
    parser.add_argument("--per-process", type=int, default=17_000, help="most streams per load-client process")
    parser.add_argument("--retries", type=int, default=30,
                        help="attempts per connection when refused (503/429, reset, timeout), 0.5-1.5 s apart (30)")
    parser.add_argument("--connect-timeout", type=float, default=300.0, help="the connect phase gives up after it")
    parser.add_argument("--no-tune", action="store_true", help="report kernel settings that are too low, do not raise them")
    parser.add_argument("--relay-dir", type=Path, default=REPO,
                        help="the relay checkout to run (this one); its gunicorn.conf.py and code come first")
    parser.add_argument("--keep-logs", action="store_true", help="keep the run's directory (relay and Redis logs)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes")
    parser.add_argument("--report", nargs="+", metavar="JSON",
                        help="print a Markdown table of earlier results (first option only) and exit")
    return parser.parse_args(argv)


REPORT_ROWS = (  # (label, how to read it from a result)
    ("streams open / asked", lambda r: f"{r['connect']['ok']:,} / {r['clients']:,}"),
    ("gevent workers (worker_connections)", lambda r: f"{r['workers']} ({r['worker_connections']:,})"),
    ("streams per worker (sockets held)", lambda r: ", ".join(f"{n:,}" for n in r["streams_per_worker"])),
    ("connect rate, streams/s (refused, retried)",
     lambda r: f"{r['connect']['per_second']:,} ({r['connect']['failed']}, {r['connect']['retries']})"),
    ("workers' RSS growth per stream, KB", lambda r: r["memory"]["rss_per_connection_kb"]),
    ("workers' RSS, MB (before → after)",
     lambda r: f"{r['memory']['workers_rss_before_mb']:,} → {r['memory']['workers_rss_after_mb']:,}"),
    ("kernel slab per connection (both ends), KB", lambda r: r["memory"]["kernel_slab_per_connection_kb"]),
    ("load client RSS, MB", lambda r: r["memory"]["load_client_rss_mb"]),
    ("idle CPU, % of a core: workers / load client / Redis",
     lambda r: "{workers} / {load_client} / {redis}".format(**r["idle"]["cpu_percent"])),
    ("heartbeats per stream while idle (streams)",
     lambda r: ", ".join(f"{k}: {v:,}" for k, v in r["idle"]["heartbeats_per_stream"].items())),
    ("events published (202)", lambda r: f"{r['publish']['accepted']} of {r['publish']['events']}"),
    ("deliveries received / expected", lambda r: f"{r['publish']['received']:,} / {r['publish']['expected']:,}"),
    ("missing, duplicates, out of order",
     lambda r: f"{r['publish']['missing']}, {r['publish']['duplicates']}, {r['publish']['out_of_order']}"),
    ("latency p50 / p90 / p99 / max, ms", lambda r: " / ".join(str(r["publish"]["latency_ms"][q])
                                                             for q in ("50", "90", "99", "100"))),
    ("relay's answer to each publish POST p50 / p99 / max, ms",
     lambda r: " / ".join(str(r["publish"]["publish_answer_ms"][q]) for q in ("50", "99", "100"))),
    ("publishing CPU, % of a core: workers / load client / Redis",
     lambda r: "{workers} / {load_client} / {redis}".format(**r["publish"]["cpu_percent"])),
    ("CPU per delivery, µs: workers / load client", lambda r: f"{r['publish']['worker_cpu_us_per_delivery']} / "
                                                              f"{r['publish']['load_client_cpu_us_per_delivery']}"),
)


def report(paths: list[Path]) -> str:
    """A Markdown table of one or more results, side by side."""
    results = [json.loads(path.read_text()) for path in paths]
    lines = ["| figure | " + " | ".join(f"{r['clients']:,} streams ({r['started']})" for r in results) + " |",
             "|---|" + "---|" * len(results)]
    for label, read in REPORT_ROWS:
        cells = []
        for r in results:
            try:
                cells.append(str(read(r)))
            except (KeyError, TypeError):
                cells.append("-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--report"]:
        print(report([Path(p) for p in argv[1:]]))
        return 0
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up, as Ctrl-C does
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"connections-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    log(f"figures: {path}")
    for name, target in result["targets"].items():
        log(f"target {name}: {'met' if target['met'] else 'MISSED'} {target}")
    return 0 if all(t["met"] for t in result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
