"""One HTTP POST to an endpoint: pinned to SSRF-checked addresses, bounded in time and size.

Plain ``http.client`` (cooperative under gevent's monkey-patching); no redirects are followed
(a 3xx is an answer like any other, and fails the attempt), and only the first
``response_max_bytes`` of the answer are read.

Connections are kept alive between attempts (:class:`Connections`, one per worker): a new TCP
connection, with its address check and handshake, cost more CPU than the POST itself. One goes
back to the pool only when its answer was read to the end and the server did not ask to close;
it is dropped after ``IDLE_MAX`` seconds unused, so a changed DNS answer is seen again. A POST
on a reused connection that the server had closed meanwhile (no answer at all) is sent once
more on a new one; an answer of any kind is never sent again.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass

import gevent

from plugins.webhooks.ssrf import AddressPolicy, RefusedAddress

IDLE_MAX = 30.0  # seconds a kept-alive connection may wait unused
IDLE_PER_ORIGIN = 32  # idle connections kept per scheme, host and port
# The server closed a kept-alive connection before this request reached it: send it again.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


@dataclass
class Result:
    """What one attempt produced. ``status`` is ``None`` when no HTTP answer came."""

    status: int | None = None
    latency_ms: float = 0.0
    error: str = ""
    response: bytes = b""
    retry_after: str | None = None
    refused: bool = False  # the SSRF guard refused the address: retrying cannot help


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address the policy accepted, whatever the Host header says."""

    def __init__(self, host: str, port: int | None, timeout: float, policy: AddressPolicy):
        super().__init__(host, port, timeout=timeout)
        self._policy = policy

    def _connect_pinned(self) -> socket.socket:
        last_error: OSError | None = None
        for family, address in self._policy.resolve(self.host, self.port):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect((address, self.port))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            except OSError as exc:
                sock.close()
                last_error = exc
        raise last_error or OSError(f"could not connect to {self.host}")

    def connect(self) -> None:
        self.sock = self._connect_pinned()


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = 443

    def __init__(self, host: str, port: int | None, timeout: float, policy: AddressPolicy):
        super().__init__(host, port, timeout, policy)
        self._context = ssl.create_default_context()

    def connect(self) -> None:
        # TLS to the pinned address, with SNI and certificate checks against the URL's host name.
        self.sock = self._context.wrap_socket(self._connect_pinned(), server_hostname=self.host)


class Connections:
    """Idle kept-alive connections of one worker, by scheme, host and port."""

    def __init__(self) -> None:
        self._idle: dict[tuple, list[tuple[float, http.client.HTTPConnection]]] = defaultdict(list)

    def take(self, key: tuple) -> http.client.HTTPConnection | None:
        idle, now = self._idle.get(key), time.monotonic()
        while idle:
            since, connection = idle.pop()
            if now - since < IDLE_MAX:
                return connection
            connection.close()
        return None

    def give(self, key: tuple, connection: http.client.HTTPConnection) -> None:
        idle = self._idle[key]
        if len(idle) >= IDLE_PER_ORIGIN:
            connection.close()
            return
        idle.append((time.monotonic(), connection))

    def close(self) -> None:
        for idle in self._idle.values():
            for _, connection in idle:
                connection.close()
        self._idle.clear()


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float, policy: AddressPolicy,
         max_response: int, connections: Connections | None = None) -> Result:
    """POST ``body`` to ``url``; never raises for network problems, returns them in the result.

    :param connections: where to take a kept-alive connection from and give it back to; without
        it, a connection of its own, closed afterwards.
    """
    parts = urllib.parse.urlsplit(url)
    kind = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    key = (parts.scheme, parts.hostname, parts.port)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    result = Result()
    started = time.monotonic()
    connection = connections.take(key) if connections is not None else None
    reused = connection is not None
    keep = False
    try:
        # The socket timeout bounds each read; this bounds the whole attempt (a receiver that
        # trickles one byte at a time would otherwise hold it forever).
        with gevent.Timeout(timeout, TimeoutError(f"no complete answer within {timeout:g}s")):
            while True:
                if connection is None:
                    connection = kind(parts.hostname, parts.port, timeout, policy)
                try:
                    connection.request("POST", path, body, {"Content-Type": "application/json", **headers})
                    response = connection.getresponse()
                except _STALE:
                    if not reused:
                        raise
                    connection.close()  # closed by the server while idle: once more, on a new one
                    connection, reused = None, False
                    continue
                break
            result.status = response.status
            result.retry_after = response.getheader("Retry-After")
            result.response = response.read(max_response) if max_response else b""
            keep = connections is not None and response.isclosed() and not response.will_close
    except RefusedAddress as exc:
        result.error, result.refused = f"refused by the SSRF guard: {exc}", True
    except TimeoutError as exc:
        result.error = f"timeout: {exc or 'timed out'}"
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if connection is not None:
            if keep:
                connections.give(key, connection)
            else:
                connection.close()
        result.latency_ms = round((time.monotonic() - started) * 1000, 1)
    return result
