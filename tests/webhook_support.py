"""Test helpers for the webhook sink: a scriptable HTTP receiver and admin API calls."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import standardwebhooks

from relay.testing import free_port, http_request, wait_until

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "test-admin-token-0123456789abcdef"  # admin_token needs 32 bytes or more


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def verify(self, secret: str = SECRET) -> Any:
        """Verify with the official package, as a receiver would; returns the parsed body."""
        return standardwebhooks.Webhook(secret).verify(self.body, self.headers)


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: float = 0.0  # seconds to wait before answering (a receiver that hangs)


class Receiver:
    """A threaded HTTP server on loopback that records every request and answers as scripted.

    ``script`` is a list of :class:`Reply` used in order (then ``default``), or a function
    ``(received) -> Reply``.
    """

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[Received] = []
        self.script: list[Reply] | Callable[[Received], Reply] = []
        self.default = Reply()
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                received = Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                    self.rfile.read(length), time.time())
                with receiver._lock:
                    receiver.requests.append(received)
                    receiver.active += 1
                    receiver.max_active = max(receiver.max_active, receiver.active)
                    if callable(receiver.script):
                        reply = receiver.script(received)
                    else:
                        reply = receiver.script.pop(0) if receiver.script else receiver.default
                try:
                    if reply.hang:
                        time.sleep(reply.hang)
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    pass  # the relay gave up (timeout) and closed the connection
                finally:
                    with receiver._lock:
                        receiver.active -= 1

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, count: int, timeout: float = 15.0, path: str | None = None) -> list[Received]:
        def enough():
            got = self.for_path(path)
            return got if len(got) >= count else None

        return wait_until(enough, timeout, message=f"{count} webhook request(s) on {self.url}{path or ''}")

    def for_path(self, path: str | None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]


def endpoint(url: str, channels=("demo",), **extra) -> dict:
    return {"url": url, "secret": SECRET, "channels": list(channels), **extra}


def webhook_config(endpoints: list[dict], **settings) -> dict:
    """A relay config with the webhook sink: loopback allow-listed, short retries by default."""
    section = {"retry_schedule": [0, 0.3, 0.3], "jitter": 0.0, "timeout": 2.0, "poll_interval": 0.05,
               "allow_networks": ["127.0.0.0/8"], "admin_token": TOKEN, "endpoints": endpoints}
    section.update(settings)
    return {"sinks": {"webhooks": section}}


def api(server, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    status, _, raw = http_request(f"{server.url}{path}", method, data, headers)
    return status, (json.loads(raw) if raw else None)


def config_endpoint_id(url: str) -> str:
    from plugins.webhooks.settings import config_endpoint_id as derive

    return derive({"url": url})
