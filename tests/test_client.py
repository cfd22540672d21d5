"""Issue 17 point 5: ``relay.client`` and the Flask extension ``relay.flask``, against a real relay
under gunicorn's gevent worker (and, for the retry timing, a tiny scripted HTTP server)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import flask
import jwt
import pytest
from redis_support import require_own_server

import relay.client
from relay.client import (
    ConnectionFailed,
    Forbidden,
    PublishRejected,
    RateLimited,
    RelayClient,
    RelayError,
    Unauthorized,
    Unavailable,
)
from relay.flask import Relay
from relay.testing import free_port

pytestmark = pytest.mark.timeout(60)

KEY = "client-test-key-0123456789abcdef0123"  # auth.jwt_key needs 32 bytes or more


def token(publish=("demo",), key=KEY) -> str:
    return jwt.encode({"relay": {"publish": list(publish), "subscribe": ["*"]}, "exp": int(time.time()) + 600},
                      key, algorithm="HS256")


@pytest.fixture(scope="module")
def auth_relay(tmp_path_factory):
    from relay.testing import RelayServer

    server = RelayServer({"auth": {"jwt_key": KEY}}, directory=tmp_path_factory.mktemp("auth")).start()
    yield server
    server.stop()


class Scripted:
    """A loopback HTTP server answering POSTs from a script of (status, headers, body, hang)."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                scripted.requests.append((time.monotonic(), self.path, dict(self.headers), body))
                status, headers, answer, hang = scripted.script.pop(0) if scripted.script else (500, {}, b"", 0)
                time.sleep(hang)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the client gave up

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    servers = []

    def start(*script):
        servers.append(Scripted(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def answer(status, error=None, retry_after=None, hang=0.0, body=None):
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if body is None:
        body = json.dumps({"id": "mwxp52c9-7", "channel": "demo"} if status == 202 else
                          {"error": error or "oops", "message": f"answered {status}"}).encode()
    return status, headers, body, hang


# -- against a real relay -----------------------------------------------------------------------

def test_publish_arrives_on_the_stream_with_the_returned_id(shared_relay_server):
    client = RelayClient(shared_relay_server.url)
    channel = "room: ü-1"  # quoted in the URL
    with shared_relay_server.sse("/events/" + "room:%20%C3%BC-1") as stream:
        assert stream.status == 200
        published = client.publish(channel, "emote", {"emote": "dolphin 🐬"})
        chosen = client.publish(channel, "order", "paid", id="order-42")
        first, second = stream.events(2, timeout=10)
    assert published.channel == channel and published.id and not published.dropped
    assert (first.id, first.event, first.json()) == (published.id, "emote", {"emote": "dolphin 🐬"})
    assert (second.id, second.data, chosen.id) == ("order-42", "paid", "order-42")


def test_module_level_publish_reads_relay_url(shared_relay_server, monkeypatch):
    monkeypatch.setenv("RELAY_URL", shared_relay_server.url)
    with shared_relay_server.sse("/events/module") as stream:
        published = relay.client.publish("module", "ping")
        assert stream.next_event(10).id == published.id


def test_each_error_answer_maps_to_its_exception(auth_relay):
    url = auth_relay.url
    with pytest.raises(Unauthorized) as missing:
        RelayClient(url).publish("demo", "emote")
    assert (missing.value.status, missing.value.error, missing.value.attempts) == (401, "unauthorized", 1)
    assert missing.value.message and "401 unauthorized" in str(missing.value)
    with pytest.raises(Unauthorized):
        RelayClient(url, token=token(key="another-key-0123456789abcdef0123456")).publish("demo", "emote")
    with pytest.raises(Forbidden) as forbidden:
        RelayClient(url, token=token(["other"])).publish("demo", "emote")
    assert (forbidden.value.status, forbidden.value.error) == (403, "forbidden")

    client = RelayClient(url, token=token())  # sent as Authorization: Bearer
    assert client.publish("demo", "emote", {"ok": 1}).id
    with pytest.raises(PublishRejected) as invalid:
        client.publish("demo", "bad\nname")
    assert (invalid.value.status, invalid.value.error) == (422, "invalid_event")
    assert invalid.value.message.startswith("event:"), "relay's message names the field"
    with pytest.raises(PublishRejected) as reserved:
        client.publish("demo", "emote", id="1-2")
    assert reserved.value.status == 422 and "id" in reserved.value.message
    with pytest.raises(PublishRejected) as surrogate:
        client.publish("demo", "emote", {"text": "\ud800"})  # sent escaped: relay names the field
    assert surrogate.value.status == 422 and surrogate.value.message.startswith("data:")
    with pytest.raises(PublishRejected) as large:
        client.publish("demo", "emote", "x" * 70_000)
    assert (large.value.status, large.value.error) == (413, "request_entity_too_large")
    with pytest.raises(PublishRejected) as deep:
        client.publish("demo", "emote", json.loads("[" * 40 + "]" * 40))
    assert (deep.value.status, deep.value.error) == (400, "invalid_json")
    assert all(e.value.attempts == 1 for e in (invalid, large, deep)), "rejections are never retried"


def test_a_503_from_the_relay_is_retried_after_its_retry_after(relay_server_factory, redis_server):
    """The Redis backbone with Redis down answers 503 with Retry-After: 1: the client waits that
    long between attempts, then raises Unavailable with relay's error."""
    require_own_server(redis_server)
    server = relay_server_factory({"backbone": redis_server.url})
    redis_server.kill()
    started = time.monotonic()
    with pytest.raises(Unavailable) as unavailable:
        RelayClient(server.url, retries=2).publish("down", "emote")
    elapsed = time.monotonic() - started
    assert (unavailable.value.status, unavailable.value.error) == (503, "backbone_unavailable")
    assert unavailable.value.attempts == 3 and unavailable.value.retry_after == 1
    assert 2.0 <= elapsed < 10, f"two waits of Retry-After: 1, took {elapsed:.2f}s"


def test_a_publish_retried_through_a_redis_outage_succeeds(relay_server_factory, redis_server):
    """Redis comes back while the client waits out Retry-After: the retry publishes the event."""
    require_own_server(redis_server)
    server = relay_server_factory({"backbone": redis_server.url})
    redis_server.kill()
    restarter = threading.Timer(1.5, redis_server.start)
    restarter.start()
    try:
        published = RelayClient(server.url, retries=20).publish("outage", "emote", {"n": 1})
    finally:
        restarter.join()
    assert published.id
    with server.sse("/events/outage", headers={"Last-Event-ID": "0-0"}) as stream:
        got = stream.next_event(10)
    assert (got.id, got.json()) == (published.id, {"n": 1})


# -- retry logic against a scripted server ------------------------------------------------------

def test_503_twice_then_202_is_retried_honouring_retry_after(scripted):
    server = scripted(answer(503, "backbone_unavailable", 1), answer(503, "backbone_unavailable", 1), answer(202))
    published = RelayClient(server.url, token="tok", retries=3).publish("demo", "emote", {"emote": "dolphin"})
    assert (published.id, published.channel) == ("mwxp52c9-7", "demo")
    times = [r[0] for r in server.requests]
    assert len(times) == 3 and all(b - a >= 0.95 for a, b in itertools.pairwise(times)), "Retry-After: 1 honoured"
    for _, path, headers, body in server.requests:
        assert path == "/events/demo" and headers["Content-Type"] == "application/json"
        assert headers["Authorization"] == "Bearer tok"
        assert json.loads(body) == {"event": "emote", "data": {"emote": "dolphin"}}


def test_429_is_retried_and_raised_once_retries_are_spent(scripted):
    server = scripted(answer(429, "rate_limited", 1), answer(202))
    assert RelayClient(server.url).publish("demo", "e").id == "mwxp52c9-7"
    server = scripted(answer(429, "rate_limited", 0), answer(429, "rate_limited", 0))
    with pytest.raises(RateLimited) as limited:
        RelayClient(server.url, retries=1).publish("demo", "e")
    assert (limited.value.status, limited.value.attempts, len(server.requests)) == (429, 2, 2)


def test_a_retry_after_beyond_the_bound_is_not_waited_for(scripted):
    server = scripted(answer(503, "backbone_unavailable", 3600))
    started = time.monotonic()
    with pytest.raises(Unavailable) as unavailable:
        RelayClient(server.url, retries=3, max_retry_after=5).publish("demo", "e")
    assert time.monotonic() - started < 2 and len(server.requests) == 1
    assert unavailable.value.retry_after == 3600


def test_module_level_publish_reads_relay_token_and_keeps_a_path_prefix(scripted, monkeypatch):
    """Behind a proxy at /relay/: the prefix is kept; RELAY_TOKEN is sent as a Bearer token."""
    server = scripted(answer(202))
    monkeypatch.setenv("RELAY_URL", f"{server.url}/relay/")
    monkeypatch.setenv("RELAY_TOKEN", "from-env")
    assert relay.client.publish("a b", "e", [1]).id == "mwxp52c9-7"
    (_, path, headers, body), = server.requests
    assert (path, headers["Authorization"], json.loads(body)) == ("/relay/events/a%20b", "Bearer from-env",
                                                                  {"event": "e", "data": [1]})


def test_other_errors_are_not_retried(scripted):
    server = scripted((502, {"Content-Type": "text/html"}, b"<html>Bad Gateway</html>", 0))
    with pytest.raises(RelayError) as bad_gateway:
        RelayClient(server.url).publish("demo", "e")
    assert type(bad_gateway.value) is RelayError and len(server.requests) == 1
    assert (bad_gateway.value.status, bad_gateway.value.error) == (502, "http_502")
    assert "Bad Gateway" in bad_gateway.value.message


def test_connection_refused_is_retried_but_a_timeout_after_sending_is_not(scripted):
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as refused:
        RelayClient(f"http://127.0.0.1:{free_port()}", retries=2).publish("demo", "e")
    assert refused.value.attempts == 3 and not refused.value.maybe_published and refused.value.status is None
    assert time.monotonic() - started >= 1.4, "backoff 0.5 s then 1 s between attempts"
    server = scripted(answer(202, hang=2))
    with pytest.raises(ConnectionFailed) as timed_out:
        RelayClient(server.url, timeout=0.3, retries=3).publish("demo", "e")
    assert timed_out.value.maybe_published and timed_out.value.attempts == 1, "it may be published: no retry"
    assert "may have been published" in str(timed_out.value)


# -- the Flask extension ------------------------------------------------------------------------

def test_flask_extension_publishes_from_a_view(shared_relay_server):
    app = flask.Flask("shop")
    app.config["RELAY_URL"] = shared_relay_server.url
    relay_ext = Relay(app)

    @app.post("/react")
    def react():
        published = relay_ext.publish("flask-demo", "emote", {"emote": "dolphin"})
        return {"id": published.id}

    with shared_relay_server.sse("/events/flask-demo") as stream:
        response = app.test_client().post("/react")
        assert response.status_code == 200
        got = stream.next_event(10)
    assert (got.id, got.event, got.json()) == (response.get_json()["id"], "emote", {"emote": "dolphin"})
    with app.app_context():
        assert relay_ext.client.timeout == 5.0 and relay_ext.client.retries == 3  # the defaults


def test_flask_init_app_reads_the_token_from_each_apps_config(auth_relay):
    relay_ext = Relay()  # the factory pattern: one extension, several apps

    def make_app(**config):
        app = flask.Flask("shop")
        app.config.update(RELAY_URL=auth_relay.url, RELAY_TIMEOUT=2, **config)
        relay_ext.init_app(app)

        @app.post("/react")
        def react():
            try:
                return {"id": relay_ext.publish("demo", "emote", {"emote": "dolphin"}).id}
            except RelayError as exc:
                return {"error": exc.error, "type": type(exc).__name__}, exc.status or 502

        return app

    with auth_relay.sse("/events/demo", headers={"Authorization": f"Bearer {token()}"}) as stream:
        allowed = make_app(RELAY_TOKEN=token()).test_client().post("/react")
        assert allowed.status_code == 200, allowed.get_json()
        assert stream.next_event(10).id == allowed.get_json()["id"]
    refused = make_app().test_client().post("/react")
    assert (refused.status_code, refused.get_json()) == (401, {"error": "unauthorized", "type": "Unauthorized"})
    with pytest.raises(RuntimeError, match="app context"):
        relay_ext.publish("demo", "emote")  # no app bound and no app context


def test_importing_the_client_does_not_import_gevent_or_the_app():
    code = ("import sys, relay.client, relay.flask; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('gevent', 'plugins') or m == 'relay.app']; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
