"""The webhook sink's parts on their own: signing (checked with ``standardwebhooks``), the SSRF
policy, retry timing, configuration checks. The two stores under the same contract are in
tests/test_webhook_store.py."""

from __future__ import annotations

import ipaddress
import time
from datetime import UTC

import pytest
import standardwebhooks
from webhook_support import SECRET, Receiver

from plugins.webhooks import client, signing
from plugins.webhooks.delivery import Sink, parse_retry_after
from plugins.webhooks.model import PENDING, Endpoint
from plugins.webhooks.ssrf import AddressPolicy, RefusedAddress, why_blocked
from plugins.webhooks.store_sqlite import SQLiteStore
from relay.config import ConfigError

pytestmark = pytest.mark.timeout(120)


# -- signing ------------------------------------------------------------------------------------

def test_signature_is_verified_by_standardwebhooks():
    body = signing.build_body("order.paid", 1764170537.25, "demo", "order-42", {"text": "dolphin 🐬", "n": [1, 2]})
    headers = signing.headers("msg_1", body, [SECRET])
    assert standardwebhooks.Webhook(SECRET).verify(body, headers) == {
        "type": "order.paid", "timestamp": "2025-11-26T15:22:17.250Z", "channel": "demo", "id": "order-42",
        "data": {"text": "dolphin 🐬", "n": [1, 2]}}
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body + b" ", headers)  # one byte changed


def test_signature_matches_the_reference_implementation_and_rotation_signs_twice():
    old, new = SECRET, signing.new_secret()
    body = b'{"type":"x","timestamp":"2026-01-01T00:00:00.000Z","channel":"c","data":null}'
    headers = signing.headers("msg_2", body, [new, old], now=time.time())
    first, second = headers["webhook-signature"].split(" ")
    from datetime import datetime

    moment = datetime.fromtimestamp(int(headers["webhook-timestamp"]), tz=UTC)
    assert first == standardwebhooks.Webhook(new).sign("msg_2", moment, body.decode())
    assert second == standardwebhooks.Webhook(old).sign("msg_2", moment, body.decode())
    for secret in (old, new):
        standardwebhooks.Webhook(secret).verify(body, headers)


def test_webhook_id_is_stable_per_endpoint_channel_and_event():
    assert signing.webhook_id("ep_a", "c", "order-1") == signing.webhook_id("ep_a", "c", "order-1")
    assert signing.webhook_id("ep_a", "c", "order-1") != signing.webhook_id("ep_b", "c", "order-1")
    assert signing.webhook_id("ep_a", "c", "order-1") != signing.webhook_id("ep_a", "c", "order-2")
    assert signing.webhook_id("ep_a", "a", "order-1") != signing.webhook_id("ep_a", "b", "order-1")
    assert signing.webhook_id("ep_a", "c", "x").startswith("msg_")


def test_rotation_grace_ends():
    endpoint = Endpoint("ep", "http://x", SECRET, ["*"], previous_secrets=[["whsec_old", 100.0], ["whsec_cfg", None]])
    assert endpoint.signing_secrets(now=50) == [SECRET, "whsec_old", "whsec_cfg"]
    assert endpoint.signing_secrets(now=150) == [SECRET, "whsec_cfg"]


def test_channel_and_event_filters():
    endpoint = Endpoint("ep", "http://x", SECRET, ["orders.*", "demo"], events=["paid", "refund.*"])
    assert endpoint.matches("orders.eu", "paid") and endpoint.matches("demo", "refund.partial")
    assert not endpoint.matches("orders.eu", "created") and not endpoint.matches("other", "paid")
    assert Endpoint("ep", "http://x", SECRET, ["*"]).matches("anything", "any")


# -- SSRF ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "169.254.1.1", "100.64.0.1", "fd00:ec2::254", "fc00::1", "fe80::1", "224.0.0.1", "ff02::1", "240.0.0.1",
    "0.0.0.0", "::", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "192.0.0.192", "198.18.0.1", "2001:db8::1",
    "255.255.255.255", "64:ff9b::a00:1",
])
def test_blocked_addresses(address):
    assert why_blocked(ipaddress.ip_address(address)), address
    with pytest.raises(RefusedAddress):
        AddressPolicy().check(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "93.184.216.34"])
def test_public_addresses_pass(address):
    assert why_blocked(ipaddress.ip_address(address)) is None
    AddressPolicy().check(ipaddress.ip_address(address))


def test_allow_list():
    policy = AddressPolicy(["127.0.0.0/8", "10.9.0.0/16"])
    policy.check(ipaddress.ip_address("127.0.0.1"))
    policy.check(ipaddress.ip_address("::ffff:127.0.0.1"))
    policy.check(ipaddress.ip_address("10.9.3.4"))
    for blocked in ("10.8.0.1", "169.254.169.254", "::1"):
        with pytest.raises(RefusedAddress):
            policy.check(ipaddress.ip_address(blocked))


def test_a_name_resolving_to_loopback_is_refused_before_connecting():
    """The check is on the resolved address at connect time; nothing reaches the server."""
    receiver = Receiver().start()
    try:
        result = client.post(f"http://localhost:{receiver.port}/x", b"{}", {}, timeout=2, policy=AddressPolicy(),
                             max_response=100)
        assert result.refused and result.status is None and "loopback" in result.error
        time.sleep(0.2)
        assert receiver.requests == []
        allowed = client.post(f"http://localhost:{receiver.port}/x", b"{}", {}, timeout=2,
                              policy=AddressPolicy(["127.0.0.0/8", "::1/128"]), max_response=100)
        assert allowed.status == 200 and len(receiver.requests) == 1
        assert receiver.requests[0].headers["host"] == f"localhost:{receiver.port}", "the original Host header"
    finally:
        receiver.stop()


def test_resolve_checks_every_answer(monkeypatch):
    import socket

    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80)),
               (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", 80))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)  # a DNS answer, no traffic
    with pytest.raises(RefusedAddress, match="10.0.0.5"):
        AddressPolicy().resolve("rebind.example", 80)
    answers.pop()
    assert AddressPolicy().resolve("rebind.example", 80) == [(socket.AF_INET, "93.184.216.34")]


# -- retry timing -------------------------------------------------------------------------------

def test_retry_after_parsing():
    now = time.time()
    assert parse_retry_after("120", now) == 120
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert 28 <= parse_retry_after(date, now) <= 31
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None


class _Stats:
    def incr(self, *args, **kwargs):
        pass


class _Relay:
    stats = _Stats()


def _sink(tmp_path, **settings):
    from plugins.webhooks.settings import SECTIONS
    from relay.config import load_config

    config = load_config({"sinks": {"webhooks": settings}}, SECTIONS, environ={})
    return Sink(_Relay(), config.section("sinks.webhooks"), str(tmp_path))


def test_default_schedule_jitter_and_bounded_retry_after(tmp_path):
    sink = _sink(tmp_path)
    assert sink.schedule == [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    assert sink.settings["timeout"] == 15 and sink.settings["disable_after"] == 5 * 86400
    delays = [sink.retry_delay(2, None, 0) for _ in range(200)]
    assert 240 <= min(delays) < max(delays) <= 360, "300 s ± 20 %"
    assert sink.retry_delay(8, None, 0) is None, "no attempt after the eighth"
    assert 3600 == sink.retry_delay(1, str(10 ** 9), 0), "Retry-After capped at max_retry_after"
    assert 100 <= sink.retry_delay(1, "100", 0) <= 100, "Retry-After longer than the schedule wins"


@pytest.mark.parametrize("settings, key", [
    ({"endpoints": [{"url": "http://x/", "secret": "nope", "channels": ["a"]}]}, "sinks.webhooks.endpoints"),
    ({"endpoints": [{"url": "ftp://x/", "secret": SECRET, "channels": ["a"]}]}, "sinks.webhooks.endpoints"),
    ({"endpoints": [{"url": "http://x/", "secret": SECRET, "channels": []}]}, "sinks.webhooks.endpoints"),
    ({"endpoints": [{"url": "http://x/", "secret": SECRET, "channels": ["a"], "colour": 1}]}, "colour"),
    ({"allow_networks": ["127.0.0.0/33"]}, "sinks.webhooks.allow_networks"),
    ({"retry_schedule": []}, "sinks.webhooks.retry_schedule"),
    ({"retry_schedule": [0, -1]}, "sinks.webhooks.retry_schedule"),
    ({"store": "mysql://x"}, "sinks.webhooks.store"),
    ({"retries": 3}, "retries"),
])
def test_configuration_errors_name_the_key(tmp_path, settings, key):
    with pytest.raises(ConfigError) as error:
        _sink(tmp_path, **settings)
    assert key in str(error.value)


def test_the_delivery_is_stored_when_an_http_publish_returns_and_soon_after_a_source_publish(tmp_path, monkeypatch):
    """An HTTP publish (broadcast) returns only after the delivery is committed: the 202 means the
    webhook is stored. A source's publish does not wait for the sinks (a locked store must not
    hold back its reader, issue 13): the sinks' greenlet stores it right after, in order.
    (No worker runs here: nothing but the publish and the sink greenlet could have stored it.)"""
    from webhook_support import endpoint, webhook_config

    from relay import Event, create_app

    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    app = create_app(webhook_config([endpoint("http://127.0.0.1:9/hook")]))
    relay = app.extensions["relay"]
    sink = relay.extensions["webhooks"]
    endpoint_id = sink.config_endpoints[0].id
    store = SQLiteStore(str(tmp_path / "data" / "webhooks.sqlite3"))

    def stored(event):
        return store.get_delivery(signing.webhook_id(endpoint_id, event.channel, event.id))

    event = relay.publish(Event("demo", "order", {"n": 0}), broadcast=True)
    assert stored(event) is not None, "an HTTP publish returns once the delivery is stored"
    event = relay.publish(Event("demo", "order", {"n": 1}, id="1764170537000-0", source="redis"))
    assert relay.sinks.wait_for(event, 10)
    delivery = stored(event)
    assert delivery is not None and delivery.status == PENDING and delivery.event_id == "1764170537000-0"
    assert standardwebhooks.Webhook(SECRET).verify(delivery.body, signing.headers(delivery.id, delivery.body, [SECRET]))
    relay.sinks.wait_for(relay.publish(Event("elsewhere", "order", 1), broadcast=True), 10)
    assert len(sink.store.deliveries()) == 2, "only matching channels are stored"


def test_the_sink_is_idle_without_endpoints_or_token(tmp_path, monkeypatch):
    from relay import Event, create_app

    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    app = create_app({})
    relay = app.extensions["relay"]
    relay.publish(Event("demo", "order", 1))
    assert "webhooks" not in relay.extensions and not (tmp_path / "data").exists()


@pytest.fixture
def tls_receiver(tmp_path):
    """An HTTPS receiver on 127.0.0.1 with a self-signed certificate for 'localhost'."""
    import shutil
    import ssl
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append((self.headers["Host"], self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], cert, seen
    server.shutdown()
    server.server_close()


def test_https_is_pinned_and_checks_the_certificate_of_the_url_host(tls_receiver, monkeypatch):
    import ssl

    port, cert, seen = tls_receiver
    policy = AddressPolicy(["127.0.0.0/8", "::1/128"])
    untrusted = client.post(f"https://localhost:{port}/hook", b"{}", {}, timeout=3, policy=policy, max_response=10)
    assert untrusted.status is None and "CERTIFICATE_VERIFY_FAILED" in untrusted.error and seen == []

    original = ssl.create_default_context

    def trusting_our_ca():
        return original(cafile=str(cert))

    monkeypatch.setattr(client.ssl, "create_default_context", trusting_our_ca)
    trusted = client.post(f"https://localhost:{port}/hook", b'{"a":1}', {}, timeout=3, policy=policy, max_response=10)
    assert trusted.status == 204 and seen == [(f"localhost:{port}", b'{"a":1}')]
    wrong_name = client.post(f"https://127.0.0.1:{port}/hook", b"{}", {}, timeout=3, policy=policy, max_response=10)
    assert wrong_name.status is None and "CERTIFICATE_VERIFY_FAILED" in wrong_name.error, "the URL's host is checked"


# -- kept-alive connections ---------------------------------------------------------------------------

@pytest.fixture
def counting_receiver():
    """An HTTP/1.1 receiver that counts connections and requests; ``mode["close"]`` makes it
    close each connection after answering without saying so (as an idle timeout would), and
    ``mode["body"]`` is the size of its answers."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = {"connections": 0, "requests": []}
    mode = {"close": False, "body": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            seen["connections"] += 1
            super().setup()

        def do_POST(self):
            close = mode["close"]  # as when the request came: the test changes it once answered
            seen["requests"].append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", str(mode["body"]))
            self.end_headers()
            self.wfile.write(b"x" * mode["body"])
            self.close_connection = close

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", seen, mode
    server.shutdown()
    server.server_close()


def test_connections_are_kept_alive_and_a_stale_one_is_replaced_without_losing_the_post(counting_receiver):
    url, seen, mode = counting_receiver
    policy, pool = AddressPolicy(["127.0.0.0/8"]), client.Connections()
    results = [client.post(url, b'{"n":%d}' % n, {}, timeout=3, policy=policy, max_response=100, connections=pool)
               for n in range(5)]
    assert [r.status for r in results] == [200] * 5
    assert seen["connections"] == 1, "one connection for five POSTs"
    mode["close"] = True  # the next answer closes the connection behind the pool's back
    assert client.post(url, b'{"n":5}', {}, timeout=3, policy=policy, max_response=100, connections=pool).status == 200
    time.sleep(0.1)
    after = client.post(url, b'{"n":6}', {}, timeout=3, policy=policy, max_response=100, connections=pool)
    assert after.status == 200 and after.error == ""
    assert seen["requests"] == [b'{"n":%d}' % n for n in range(7)], "each POST arrived once, in order"
    assert seen["connections"] == 2, "the closed connection was replaced"
    pool.close()


def test_a_connection_whose_answer_was_not_read_to_the_end_is_not_reused(counting_receiver):
    url, seen, mode = counting_receiver
    mode["body"] = 500  # more than max_response: the rest is never read
    policy, pool = AddressPolicy(["127.0.0.0/8"]), client.Connections()
    for n in range(3):
        result = client.post(url, b"{}", {}, timeout=3, policy=policy, max_response=100, connections=pool)
        assert result.status == 200 and len(result.response) == 100
    assert seen["connections"] == 3
    pool.close()
