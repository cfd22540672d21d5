"""Start and stop each system under test, and the private redis-server they share.

Every process is started here with its own log file in the run's temporary directory, bound to
127.0.0.1 only, and stopped (SIGTERM, then SIGKILL) by its process id when the scenario ends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from benchmarks import procstat
from benchmarks.loadgen import HTTPTarget, free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHANNEL = "bench"  # the Redis channel every system subscribes to; also the relay channel


# ``--pin``: the system under test gets CPU 0 to itself; the load client, the publisher and Redis
# share the others. Set by run.py before anything starts; None leaves scheduling to the kernel.
PIN: dict[str, set[int] | None] = {"server": None, "load": None}


def pin(role: str) -> None:
    cpus = PIN.get(role)
    if cpus:
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            pass


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the benchmark process dies, however it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _server_child() -> None:
    die_with_parent()
    pin("server")


def _load_child() -> None:
    die_with_parent()
    pin("load")


def _wait_port(port: int, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}; log {log}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s; log {log}:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        for pid in reversed(procstat.tree(proc.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(5)


class RedisServer:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.log = workdir / "redis.log"
        self.proc: subprocess.Popen | None = None
        self.client = None

    def start(self) -> RedisServer:
        import redis

        exe = shutil.which("redis-server")
        if not exe:
            raise RuntimeError("redis-server is not on PATH (Debian: apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--maxclients", "15000", "--dir", str(self.workdir), "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=_load_child)
        _wait_port(self.port, 10, self.proc, self.log)
        self.client = redis.Redis(host="127.0.0.1", port=self.port, client_name="bench-control")
        self.client.ping()
        return self

    def server_connections(self) -> int:
        """Connections that are not the benchmark's own (named ``bench-…``)."""
        return sum(1 for c in self.client.client_list() if not c.get("name", "").startswith("bench-"))

    def subscribers(self, channel: str) -> int:
        return dict(self.client.pubsub_numsub(channel)).get(channel.encode(), 0)

    def cpu_seconds(self) -> float:
        return procstat.cpu_seconds([self.proc.pid]) if self.proc else 0.0

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        _stop(self.proc)


class System:
    """One system under test; subclasses say how to start it and where its stream is."""

    name = ""
    stream_path = ""
    headers_with_first_event = False  # Flask-SSE answers a stream only when its first event comes
    subscribes_per_client = False  # Flask-SSE opens one Redis connection per client
    chunked = False  # the load client must undo HTTP chunking (events may straddle chunks)
    gunicorn = False  # an arbiter with worker processes (worker_pids leaves the arbiter out)

    def http_api(self) -> HTTPTarget | None:
        """Where to POST messages when they are published through the system's HTTP API, not Redis."""
        return None

    def __init__(self, workdir: Path, redis_port: int):
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis_port = redis_port
        self.port = free_port()
        self.log = self.workdir / "server.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        raise NotImplementedError

    def start(self, redis: RedisServer, timeout: float = 30.0) -> System:
        cmd, env, cwd = self.command()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_server_child)
        _wait_port(self.port, timeout, self.proc, self.log)
        self.wait_ready(redis, timeout)
        return self

    def wait_ready(self, redis: RedisServer, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while redis.subscribers(CHANNEL) < 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} never subscribed to Redis; log {self.log}")
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; log {self.log}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def pids(self) -> list[int]:
        return procstat.tree(self.proc.pid) if self.proc else []

    def worker_pids(self) -> list[int]:
        """The processes that serve clients: gunicorn's workers without their arbiter."""
        pids = self.pids()
        return pids[1:] if self.gunicorn and len(pids) > 1 else pids

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


def _wait_http_ok(system: System, path: str, timeout: float) -> None:
    """Until ``GET path`` on the system answers 200; fails early when its process exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{system.port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if system.proc is not None and system.proc.poll() is not None:
            raise RuntimeError(f"{system.name} exited; log {system.log}:\n{system.log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{system.name} not ready; log {system.log}")
        time.sleep(0.1)


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Relay(System):
    name = "relay"
    stream_path = f"/events/{CHANNEL}"
    gunicorn = True

    def command(self):
        env = _base_env()
        env.update({
            "RELAY_BIND": f"127.0.0.1:{self.port}",
            "RELAY_WORKERS": "1",
            "RELAY_DATA_DIR": str(self.workdir / "data"),
            "RELAY_GRACEFUL_TIMEOUT": "3",
            "RELAY_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}",
            "RELAY_REDIS_CHANNELS": CHANNEL,
            "RELAY_SSE_MAX_CONNECTIONS_PER_ADDRESS": "0",  # every load client connects from 127.0.0.1
            "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        })
        # The repository's gunicorn.conf.py: one gevent worker, 10,000 connections, fd limit raised.
        cmd = [sys.executable, "-m", "gunicorn", "--config", str(REPO / "gunicorn.conf.py"), "relay.wsgi_app:app"]
        return cmd, env, REPO


class FlaskSSE(System):
    name = "flask-sse"
    gunicorn = True
    stream_path = f"/stream?channel={CHANNEL}"
    headers_with_first_event = True
    subscribes_per_client = True

    def command(self):
        env = _base_env()
        env["REDIS_URL"] = f"redis://127.0.0.1:{self.redis_port}"
        env["PYTHONPATH"] = str(HERE)
        # Flask-SSE's documented deployment: gunicorn's gevent worker, everything else default
        # (so worker_connections = 1000). No control socket: several gunicorns share this host.
        cmd = [sys.executable, "-m", "gunicorn", "flask_sse_app:app", "--worker-class", "gevent",
               "--bind", f"127.0.0.1:{self.port}", "--no-control-socket"]
        return cmd, env, self.workdir

    def wait_ready(self, redis, timeout):
        # Flask-SSE subscribes per client: ready when it answers HTTP.
        _wait_http_ok(self, "/ready", timeout)


class Node(System):
    name = "node"
    stream_path = f"/events/{CHANNEL}"

    def command(self):
        node_dir = HERE / "node"
        if not (node_dir / "node_modules").is_dir():
            npm = shutil.which("npm")
            if not npm:
                raise RuntimeError("npm is not installed: the Node peer cannot be set up")
            subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=node_dir, check=True,
                           timeout=300)
        env = _base_env()
        env.update({"PORT": str(self.port), "HOST": "127.0.0.1", "CHANNELS": CHANNEL,
                    "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}"})
        return [shutil.which("node") or "node", str(node_dir / "server.js")], env, node_dir


class RelayAllCores(Relay):
    """relay's counterpart of ``centrifugo-allcores``: one gevent worker per CPU. More than one
    worker needs the shared Redis backbone (docs/deployment.md); each worker still reads the
    benchmark's pub/sub channel itself and delivers what it hears to its own clients."""

    name = "relay-allcores"

    def command(self):
        cmd, env, cwd = super().command()
        env["RELAY_WORKERS"] = str(len(os.sched_getaffinity(0)))
        env["RELAY_BACKBONE"] = f"redis://127.0.0.1:{self.redis_port}/0"
        return cmd, env, cwd

    def wait_ready(self, redis: RedisServer, timeout: float) -> None:
        workers = len(os.sched_getaffinity(0))
        deadline = time.monotonic() + timeout
        while redis.subscribers(CHANNEL) < workers:  # one subscription per worker
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {redis.subscribers(CHANNEL)} of {workers} workers subscribed; "
                                   f"log {self.log}")
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; log {self.log}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)


# -- relay's two backbones, events published over HTTP ------------------------------------------

BENCH_JWT_KEY = "relay-benchmark-key-not-a-secret-0123456789"  # HS256 wants 32 bytes or more


class RelayMemoryBackbone(Relay):
    """relay with its in-memory backbone, every event published over HTTP (``POST /events/bench``),
    which is the path through the backbone; no Redis source. Authorisation is on, as a relay
    reachable by other hosts must have it: streams of ``bench`` are public, the publisher sends a
    ``Authorization: Bearer`` token, so each publish pays for checking it, as in production."""

    name = "relay-memory"
    backbone = "memory"

    def command(self):
        cmd, env, cwd = super().command()
        del env["RELAY_REDIS_URL"], env["RELAY_REDIS_CHANNELS"]
        env.update({"RELAY_BACKBONE": self.backbone, "RELAY_JWT_KEY": BENCH_JWT_KEY,
                    "RELAY_PUBLIC_CHANNELS": CHANNEL})
        return cmd, env, cwd

    def http_api(self):
        token = _jwt_hs256({"sub": "bench-publisher", "exp": int(time.time()) + 86400,
                            "relay": {"publish": [CHANNEL]}}, BENCH_JWT_KEY)
        return HTTPTarget(self.port, f"/events/{CHANNEL}", (("Authorization", f"Bearer {token}"),), form="relay",
                          status=202)

    def wait_ready(self, redis, timeout):
        _wait_http_ok(self, "/healthz", timeout)


class RelayRedisBackbone(RelayMemoryBackbone):
    """The same with the Redis backbone on the benchmark's redis-server: each publish is a Lua
    script (stream entry + announcement), and the worker delivers what it hears announced (it
    subscribes to the channel when its first client wants it)."""

    name = "relay-redis"

    @property
    def backbone(self):
        return f"redis://127.0.0.1:{self.redis_port}/0"


# -- Centrifugo ---------------------------------------------------------------------------------

CENTRIFUGO_DIR = HERE / "centrifugo"
CENTRIFUGO_VERSION = "v6.9.1"


def centrifugo_binary() -> str | None:
    """``CENTRIFUGO_BIN``, else ``$(go env GOPATH)/bin/centrifugo``, else ``centrifugo`` on PATH."""
    explicit = os.environ.get("CENTRIFUGO_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    candidates = []
    go = shutil.which("go")
    if go:
        try:
            gopath = subprocess.run([go, "env", "GOPATH"], capture_output=True, text=True, timeout=30,
                                    check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            gopath = ""
        candidates += [Path(p) / "bin" / "centrifugo" for p in gopath.split(os.pathsep) if p]
    candidates.append(Path.home() / "go" / "bin" / "centrifugo")
    for path in candidates:
        if os.access(path, os.X_OK):
            return str(path)
    return shutil.which("centrifugo")


def centrifugo_missing() -> str:
    return (f"Centrifugo is not installed: run benchmarks/centrifugo/install.sh (go install "
            f"github.com/centrifugal/centrifugo/v6@{CENTRIFUGO_VERSION}) or set CENTRIFUGO_BIN")


def _jwt_hs256(claims: dict, key: str) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


class Centrifugo(System):
    """Centrifugo v6 the way its docs set it up for browsers that only listen: the unidirectional
    SSE transport (``/connection/uni_sse``, the connect request in the ``cf_connect`` parameter),
    a connection JWT whose ``channels`` claim subscribes the connection to the benchmark channel
    on the server side, the Redis engine on the benchmark's redis-server, and messages published
    through its server HTTP API (``POST /api/publish`` with the API key), which hands them to Redis
    PUB/SUB. Configuration: ``benchmarks/centrifugo/config.json`` with this run's ports.
    ``GOMAXPROCS=1``: one core, against one relay worker."""

    name = "centrifugo"
    gomaxprocs: str | None = "1"
    chunked = True  # Go's net/http chunks its 2 KB buffer wherever it fills, mid-event included

    def __init__(self, workdir: Path, redis_port: int):
        super().__init__(workdir, redis_port)
        self.config = json.loads((CENTRIFUGO_DIR / "config.json").read_text())
        self.config["http_server"].update(address="127.0.0.1", port=self.port)
        self.config["engine"]["redis"]["address"] = f"redis://127.0.0.1:{redis_port}"
        token = _jwt_hs256({"sub": "bench", "channels": [CHANNEL]}, self.config["client"]["token"]["hmac_secret_key"])
        connect = json.dumps({"token": token}, separators=(",", ":"))
        self.stream_path = "/connection/uni_sse?" + urllib.parse.urlencode({"cf_connect": connect})

    def http_api(self):
        return HTTPTarget(self.port, "/api/publish", (("X-API-Key", self.config["http_api"]["key"]),))

    def command(self):
        exe = centrifugo_binary()
        if not exe:
            raise RuntimeError(centrifugo_missing())
        config = self.workdir / "config.json"
        config.write_text(json.dumps(self.config, indent=1))
        env = _base_env()
        env.pop("GOMAXPROCS", None)
        if self.gomaxprocs:
            env["GOMAXPROCS"] = self.gomaxprocs
        return [exe, "--config", str(config)], env, self.workdir

    def wait_ready(self, redis, timeout):
        # Its Redis broker subscribes to a channel when the first client of the channel connects:
        # ready when /health answers.
        _wait_http_ok(self, "/health", timeout)


class CentrifugoAllCores(Centrifugo):
    """The same, with Go's default GOMAXPROCS (every CPU): relay's counterpart is relay-allcores."""

    name = "centrifugo-allcores"
    gomaxprocs = None


SYSTEMS = {cls.name: cls for cls in (Relay, FlaskSSE, Node, RelayAllCores, Centrifugo, CentrifugoAllCores,
                                     RelayMemoryBackbone, RelayRedisBackbone)}
