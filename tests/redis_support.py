"""A real redis-server for tests: started on a free port, stoppable and restartable mid-test.

Set ``REDIS_URL`` to use an external Redis instead; tests that stop, pause or restart the server
are then skipped (they would disturb a server they do not own). Tests keep to their own channel
and stream names (the ``names`` fixture) so they never flush a shared server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import redis

from relay.testing import free_port

EXTERNAL_URL = os.environ.get("REDIS_URL")


class RedisServer:
    """A ``redis-server`` of our own, in a temporary directory, without persistence unless
    ``persistence`` gives other options (e.g. ``("--appendonly", "yes", "--appendfsync", "always")``)."""

    controllable = True

    def __init__(self, directory: Path, port: int | None = None,
                 persistence: tuple[str, ...] = ("--appendonly", "no")):
        self.persistence = persistence
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install redis-server (.ci/run does), "
                        "or set REDIS_URL to use an external Redis", pytrace=False)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *self.persistence,
             "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self.log()}")
            try:
                with redis.Redis.from_url(self.url, socket_timeout=1) as client:
                    if client.ping():
                        return self
            except (redis.ConnectionError, redis.BusyLoadingError):  # BusyLoading: reading its AOF
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash; pub/sub messages in flight are lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> RedisServer:
        """Kill, then start again on the same port (an empty server: no persistence)."""
        self.kill()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (like a half-open connection)."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def client(self, decode_responses: bool = False) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5, decode_responses=decode_responses)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


class ExternalRedis:
    """The server named by ``REDIS_URL``: used as it is, never stopped."""

    controllable = False

    def __init__(self, url: str):
        self.url = url
        self.port = None

    def client(self, decode_responses: bool = False) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5, decode_responses=decode_responses)

    def _cannot(self, *args, **kwargs):
        pytest.skip("REDIS_URL names an external Redis: this test stops and restarts redis-server")

    start = kill = stop = restart = pause = resume = _cannot


def start_redis(port: int | None = None) -> RedisServer:
    """A redis-server of our own in a fresh temporary directory (for tests outside fixtures)."""
    return RedisServer(Path(tempfile.mkdtemp(prefix="relay-redis-")), port).start()


def require_own_server(server) -> None:
    """Skip a test that kills, pauses or restarts Redis when it is not ours to do so."""
    if not server.controllable:
        pytest.skip("REDIS_URL names an external Redis: this test stops, pauses or restarts redis-server")


@pytest.fixture
def redis_server(tmp_path):
    """A running Redis: our own redis-server on a free port, or the one ``REDIS_URL`` names."""
    if EXTERNAL_URL:
        yield ExternalRedis(EXTERNAL_URL)
        return
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()  # SIGKILL ends a paused server too


@pytest.fixture
def redis_factory(tmp_path):
    """``redis_factory(port=None)`` starts more servers of our own (e.g. on a port chosen earlier)."""
    servers: list[RedisServer] = []

    def start(port: int | None = None, started: bool = True) -> RedisServer:
        if EXTERNAL_URL:
            pytest.skip("REDIS_URL names an external Redis: this test starts its own redis-server")
        server = RedisServer(tmp_path / f"redis-{len(servers)}", port)
        servers.append(server)
        return server.start() if started else server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def names(redis_server):
    """A unique prefix for this test's channels and streams; its stream keys are deleted after."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    yield prefix
    client = redis_server.client()
    try:
        keys = list(client.scan_iter(f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.ConnectionError:
        pass  # the test left Redis stopped: nothing to clean
    finally:
        client.close()
