"""Test helpers for relay and its plugins: a pytest plugin (entry point ``pytest11``).

Fixtures (everything else is a class or a function):

``relay_server``
    a relay on the embedded default, running under gunicorn's gevent worker on a free port.
``shared_relay_server``
    the same, shared by the tests of one module (faster; for tests that do not restart it).
``relay_server_factory``
    ``relay_server_factory(config={...}, env={...}, workers=1)`` starts more; all are stopped
    after the test.
``app`` and ``client``
    in process, Flask style: ``create_app`` with a temporary ``data_dir`` (no gunicorn, no
    gevent worker) and its ``test_client()``, for route-level checks.

The first three give a :class:`RelayServer`, whose methods do the work: ``server.publish(channel, event,
data)`` (HTTP publish), ``server.sse(path)`` (an :class:`SSEClient`, a WHATWG-conformant
``text/event-stream`` reader over real HTTP), ``server.health()``, ``server.log()``,
``stop()``, ``restart()``, ``kill()``.

Functions: :func:`follow` (reads like EventSource, reconnecting with ``Last-Event-ID``),
:func:`publish` (the same as the method, given a base URL), :func:`free_port`,
:func:`wait_until`, :func:`http_request`; :class:`TcpProxy` breaks connections on purpose.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def http_request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
                 timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request: ``(status, headers, body)``, also for 4xx and 5xx answers."""
    request = urllib.request.Request(url, body, headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def publish(base_url: str, channel: str, event: str, data: Any = None, id: str | None = None,
            timeout: float = 10.0) -> dict:
    """Publish over HTTP; returns the JSON answer and fails unless relay answered 202."""
    message: dict[str, Any] = {"event": event, "data": data}
    if id is not None:
        message["id"] = id
    status, _, body = http_request(f"{base_url}/events/{urllib.request.quote(channel, safe='')}", "POST",
                                   json.dumps(message).encode(), {"Content-Type": "application/json"}, timeout)
    assert status == 202, f"publish to {channel!r} answered {status}: {body!r}"
    return json.loads(body)


@dataclass
class SSEEvent:
    """One dispatched event: ``event`` (``"message"`` when unnamed), ``data`` as text, ``id``."""

    event: str
    data: str
    id: str | None  # the last event id after this event, as a browser would keep it

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SSEClient:
    """Reads a ``text/event-stream`` over real HTTP, parsing it as a browser's EventSource does."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 10.0
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    last_event_id: str | None = None

    def __post_init__(self) -> None:
        # A raw socket, not http.client: its reader is unusable after one read times out.
        parsed = urllib.parse.urlsplit(self.url)
        self._sock = socket.create_connection((parsed.hostname, parsed.port), timeout=self.timeout)
        path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        headers = {"Host": f"{parsed.hostname}:{parsed.port}", "Accept": "text/event-stream", **self.headers}
        request = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self._sock.sendall(request.encode("utf-8"))
        self._raw = b""
        while b"\r\n\r\n" not in self._raw:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"{self.url} closed the connection before answering")
            self._raw += chunk
        head, self._raw = self._raw.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            self.response_headers[name.strip().lower()] = value.strip()
        self._chunked = self.response_headers.get("transfer-encoding", "").lower() == "chunked"
        self._chunk_left = 0  # bytes left in the current chunk; -1 after the last chunk
        length = self.response_headers.get("content-length")
        self._length = int(length) if length is not None and not self._chunked else None
        self._buffer = ""
        # WHATWG: UTF-8 decode with replacement characters, one leading BOM ignored.
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._pending_cr = False
        self._data: list[str] = []
        self._event = ""
        self._ready: list[SSEEvent] = []
        self.closed = False

    def body(self, timeout: float = 5.0) -> bytes:
        """The body of a response that ends (an error answer), read for at most ``timeout``."""
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while self.read_body_bytes_into(out, 0.1) and time.monotonic() < deadline:
            pass
        return b"".join(out)

    def _take_body(self) -> bytes:
        """Decode what is buffered of the (chunked) body; sets ``closed`` at its end."""
        if not self._chunked:
            data, self._raw = self._raw, b""
            if self._length is not None:  # a plain answer (an error): it ends after Content-Length
                self._length -= len(data)
                self.closed = self._length <= 0
            return data
        out = []
        while self._raw and self._chunk_left >= 0:
            if self._chunk_left == 0:
                line_end = self._raw.find(b"\r\n")
                if line_end < 0:
                    break
                size = int(self._raw[:line_end].split(b";")[0], 16)
                if size == 0:
                    self._chunk_left = -1
                    self.closed = True
                    break
                if len(self._raw) < line_end + 2 + size + 2:
                    break  # wait for the whole chunk and its CRLF
                out.append(self._raw[line_end + 2: line_end + 2 + size])
                self._raw = self._raw[line_end + 2 + size + 2:]
        return b"".join(out)

    def read_body_bytes_into(self, out: list[bytes], timeout: float | None = None) -> bool:
        """Append body bytes that arrive within ``timeout``; False once the body has ended."""
        data = self._take_body()
        if data:
            out.append(data)
            return not self.closed
        if self.closed:
            return False
        self._sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            chunk = self._sock.recv(1 << 20)
        except (TimeoutError, socket.timeout):
            return True
        except OSError:
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self._raw += chunk
        data = self._take_body()
        if data:
            out.append(data)
        return not self.closed or bool(data)

    def _lines(self, chunk: str) -> list[str]:
        # Lines end with CRLF, LF or CR; a CR that ends a read may be the first half of a CRLF.
        text = self._buffer + chunk
        if self._pending_cr and text:  # (a read may decode to nothing: half of a character)
            self._pending_cr = False
            if text.startswith("\n"):
                text = text[1:]
        end = max(text.rfind("\r"), text.rfind("\n"))
        if end < 0:
            self._buffer = text
            return []
        complete, self._buffer = text[: end + 1], text[end + 1:]
        self._pending_cr = complete.endswith("\r")
        return _LINE_BREAK.split(complete)[:-1]

    def _feed(self, line: str) -> None:
        if line == "":
            if self._data:
                self._ready.append(SSEEvent(self._event or "message", "\n".join(self._data), self.last_event_id))
            self._data, self._event = [], ""
            return
        if line.startswith(":"):
            self.comments.append(line[1:].lstrip(" "))
            return
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():  # ASCII digits only
            self.retry = int(value)

    def read_some(self, timeout: float | None = None) -> bool:
        """Read and parse what arrives within ``timeout``; False when the stream has ended."""
        chunks: list[bytes] = []
        alive = self.read_body_bytes_into(chunks, timeout)
        for chunk in chunks:
            for line in self._lines(self._decoder.decode(chunk)):
                self._feed(line)
        return alive

    def next_event(self, timeout: float | None = None) -> SSEEvent:
        """The next event; fails when none comes within ``timeout`` or the stream ends."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while not self._ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no event on {self.url} within the timeout")
            if not self.read_some(remaining) and not self._ready:  # the end may come in one read with the last event
                raise AssertionError(f"the stream {self.url} ended while waiting for an event")
        return self._ready.pop(0)

    def events(self, count: int, timeout: float | None = None) -> list[SSEEvent]:
        """The next ``count`` events, all within ``timeout``; fails if they do not come."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        return [self.next_event(max(0.01, deadline - time.monotonic())) for _ in range(count)]

    def no_event_within(self, seconds: float) -> bool:
        """True when no event arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        while not self._ready and time.monotonic() < deadline:
            if not self.read_some(max(0.01, deadline - time.monotonic())):
                break
        return not self._ready

    def wait_closed(self, timeout: float = 10.0) -> bool:
        """True once the server ends the stream, False if it is still open after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.read_some(max(0.01, deadline - time.monotonic())):
                return True
        return False

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SSEClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def follow(url: str, count: int, timeout: float = 30.0, headers: dict[str, str] | None = None,
           on_reconnect: Callable[[int], None] | None = None) -> list[SSEEvent]:
    """Read ``count`` events like a browser's EventSource: when the stream ends or the server is
    gone, wait the ``retry`` time and reconnect with ``Last-Event-ID``. Fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    events: list[SSEEvent] = []
    last_id, retry, reconnects = None, 0.2, 0
    while len(events) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(events)} of {count} events within {timeout}s "
                                 f"({reconnects} reconnects)")
        try:
            extra = {"Last-Event-ID": last_id} if last_id else {}
            stream = SSEClient(url, {**(headers or {}), **extra}, timeout=5)
        except OSError:
            time.sleep(retry)
            continue
        try:
            if stream.status != 200:
                time.sleep(retry)
                continue
            while len(events) < count and time.monotonic() < deadline:
                try:
                    event = stream.next_event(min(5.0, max(0.01, deadline - time.monotonic())))
                except (AssertionError, OSError):
                    break  # the stream ended (shutdown) or stalled: reconnect
                events.append(event)
                last_id = event.id or last_id
            retry = (stream.retry or 200) / 1000
        finally:
            stream.close()
        if len(events) < count:
            reconnects += 1
            if on_reconnect:
                on_reconnect(reconnects)
            time.sleep(retry)
    return events


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target_port``, to break connections on purpose:
    :meth:`cut` drops every connection and refuses new ones until :meth:`restore` (same port).
    Start it with ``TcpProxy(target).restore()``. Threads, in the test process (no gevent there)."""

    def __init__(self, target_port: int, port: int | None = None):
        self.target_port = target_port
        self.port = port or free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def restore(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                downstream, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                self._conns += [downstream, upstream]
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass  # the other side or cut() closed it
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        if self._listener is not None:
            try:  # wakes the thread blocked in accept(), so the port is free for restore()
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not listening any more
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def _write_toml(config: dict, path: Path) -> None:
    import tomli_w

    path.write_bytes(tomli_w.dumps(config).encode())


class RelayServer:
    """A relay under gunicorn's gevent worker, as operators run it, on a free port."""

    def __init__(self, config: dict | None = None, env: dict[str, str] | None = None, workers: int = 1,
                 directory: str | os.PathLike | None = None, port: int | None = None,
                 gunicorn_args: list[str] | None = None):
        self.directory = Path(directory or tempfile.mkdtemp(prefix="relay-test-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.directory / f"relay-{self.port}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        self.env.update({"RELAY_BIND": f"127.0.0.1:{self.port}", "RELAY_WORKERS": str(workers),
                         "RELAY_DATA_DIR": str(self.directory / "data"), "RELAY_GRACEFUL_TIMEOUT": "5"})
        if config is not None:
            config_path = self.directory / "relay.toml"
            _write_toml(config, config_path)
            self.env["RELAY_CONFIG"] = str(config_path)
        self.env.update(env or {})
        self.process: subprocess.Popen | None = None
        self.workers = workers
        self.gunicorn_args = list(gunicorn_args or [])  # gunicorn's own options (-b ...), over the settings

    def start(self, timeout: float = 20.0) -> RelayServer:
        self.started_before = self.log().count("relay started")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "python:relay.gunicorn_config", *self.gunicorn_args,
             "relay.wsgi_app:app"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
            start_new_session=True)  # its own process group, so kill() takes the workers too
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"relay exited with {self.process.returncode}:\n{self.log()}")
            try:
                status, _, _ = http_request(f"{self.url}/healthz", timeout=1)
                # Every worker logs "relay started" once its sources run: wait for all of them.
                if status == 200 and self.log().count("relay started") >= self.started_before + self.workers:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"relay did not answer on {self.url} within {timeout}s:\n{self.log()}")

    def health(self) -> dict:
        """``GET /healthz`` as a dict: ``status``, ``components`` (each with its ``state``), ``counters``."""
        status, _, body = http_request(f"{self.url}/healthz", timeout=5)
        return json.loads(body)

    def log(self) -> str:
        """Everything gunicorn and the workers logged so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Stop gunicorn (SIGTERM: graceful) and wait; kills it if it does not stop in time."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def kill(self) -> None:
        """SIGKILL the arbiter and its workers at once, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def restart(self) -> RelayServer:
        """Stop gracefully and start again on the same port and with the same data directory."""
        self.stop()
        return self.start()

    def sse(self, path: str, **kwargs: Any) -> SSEClient:
        """Open a stream (``"/events/demo"``): an :class:`SSEClient`; use it in a ``with`` block.
        ``kwargs`` go to :class:`SSEClient` (``headers={"Last-Event-ID": …}``, ``timeout``)."""
        return SSEClient(f"{self.url}{path}", **kwargs)

    def publish(self, channel: str, event: str, data: Any = None, id: str | None = None) -> dict:
        """Publish over HTTP to this relay; the JSON answer (``{"id": …}``); fails unless 202."""
        return publish(self.url, channel, event, data, id)


@pytest.fixture
def relay_server_factory(tmp_path):
    """Fixture: a function ``(config=None, env=None, workers=1, port=None)`` that starts a relay
    (``config`` is written as TOML; ``env`` adds ``RELAY_*`` variables) and returns its
    :class:`RelayServer` once every worker has started. All are stopped after the test."""
    servers: list[RelayServer] = []

    def start(config: dict | None = None, env: dict[str, str] | None = None, workers: int = 1,
              **kwargs: Any) -> RelayServer:
        server = RelayServer(config, env, workers, directory=tmp_path / f"relay{len(servers)}", **kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def relay_server(relay_server_factory) -> RelayServer:
    """Fixture: a running relay with the default configuration, stopped after the test."""
    return relay_server_factory()


@pytest.fixture(scope="module")
def shared_relay_server(tmp_path_factory) -> RelayServer:
    """One embedded relay for a whole test module, for tests that only add events."""
    server = RelayServer(directory=tmp_path_factory.mktemp("relay")).start()
    yield server
    server.stop()


@pytest.fixture
def app(tmp_path, monkeypatch):
    """An in-process relay app, Flask style: ``create_app`` with the embedded backbone and a
    data directory under ``tmp_path``. ``RELAY_*`` environment variables are cleared first so
    the test's configuration is the one used. Stopped at the end of the test."""
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)
    from relay.app import create_app

    application = create_app({"data_dir": str(tmp_path / "data")})
    yield application
    application.extensions["relay"].stop()


@pytest.fixture
def client(app):
    """Flask's ``test_client()`` for the in-process ``app``: route-level checks without gunicorn."""
    return app.test_client()
