"""The HTTP edge under hostile clients (issue 13), over real HTTP to gunicorn's gevent worker:
stream limits that keep the worker answering, slow and oversized bodies, deep JSON, cross-site
publishing, short JWT keys."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import jwt
import pytest

from relay.testing import RelayServer, http_request, wait_until

KEY = "a-long-random-secret-for-tests-only-0123456789"


# -- raw HTTP: what urllib would not send ---------------------------------------------------------

def connect(server, source="127.0.0.1", timeout=5.0):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request_head(server, method, path, headers=None):
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(sock, timeout=5.0):
    """(status, headers, body) of one answer with a Content-Length, read within ``timeout``."""
    sock.settimeout(timeout)
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {raw!r}")
        raw += chunk
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock, within=3.0) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass  # reset: closed too
    return True


def open_stream(server, path, source="127.0.0.1", headers=None):
    """A raw SSE request from ``source``: (socket, status, headers); the stream stays open."""
    sock = connect(server, source)
    sock.sendall(request_head(server, "GET", path, {"Accept": "text/event-stream", **(headers or {})}))
    sock.settimeout(5)
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before answering")
        raw += chunk
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
    return sock, int(head[0].split()[1]), headers


def timed_health(server, timeout=5.0):
    started = time.monotonic()
    status, _, _ = http_request(f"{server.url}/healthz", timeout=timeout)
    return status, time.monotonic() - started


def post(server, channel, body, headers=None):
    status, headers, raw = http_request(f"{server.url}/events/{channel}", "POST", body,
                                        {"Content-Type": "application/json", **(headers or {})})
    return status, json.loads(raw)


# -- streams cannot take the whole worker ---------------------------------------------------------

def test_streams_leave_connections_for_healthz_and_publishing(relay_server_factory):
    """gunicorn stops accepting at worker_connections: streams must never take them all."""
    server = relay_server_factory({"sinks": {"sse": {"reserved_connections": 10, "refused_retry_after": 4}}},
                                  env={"RELAY_WORKER_CONNECTIONS": "40"})
    opened, refused = [], []
    try:
        for i in range(45):  # more than worker_connections: before, the last ones were never accepted
            sock, status, headers = open_stream(server, f"/events/s{i % 3}")
            (opened if status == 200 else refused).append((sock, status, headers))
        assert len(opened) == 30  # 40 connections less the 10 reserved
        assert {status for _, status, _ in refused} == {503}
        assert all(headers["retry-after"] == "4" for _, _, headers in refused)
        assert all(closed_by_server(sock) for sock, _, _ in refused)  # no idle keep-alive left holding a slot
        status, took = timed_health(server)
        assert status == 200 and took < 1.0
        started = time.monotonic()
        with server.sse("/events/s0") as extra:
            assert extra.status == 503 and json.loads(extra.body())["error"] == "too_many_connections"
        assert server.publish("s0", "e", "still answering")["id"] and time.monotonic() - started < 1.0
        body = b""
        opened[0][0].settimeout(5)
        while b"still answering" not in body:
            body += opened[0][0].recv(65536)
    finally:
        for sock, _, _ in opened + refused:
            sock.close()
    assert "sinks.sse.max_connections" in server.log()


def test_one_address_gets_429_past_its_limit_while_another_still_streams(relay_server_factory):
    server = relay_server_factory({"sinks": {"sse": {"max_connections_per_address": 3, "refused_retry_after": 6}}})
    mine = [open_stream(server, "/events/a") for _ in range(3)]
    try:
        assert [status for _, status, _ in mine] == [200, 200, 200]
        with server.sse("/events/a") as fourth:
            assert fourth.status == 429 and fourth.response_headers["retry-after"] == "6"
            answer = json.loads(fourth.body())
        assert answer["error"] == "too_many_connections_from_address"
        assert "sinks.sse.max_connections_per_address" in answer["message"]
        other, status, _ = open_stream(server, "/events/a", source="127.0.0.2")
        assert status == 200
        other.close()
        mine.pop()[0].close()  # a stream that ends gives its address's place back
        wait_until(lambda: server.health()["components"]["sse"]["clients"] == 2, 5)
        again, status, _ = open_stream(server, "/events/a")
        assert status == 200
        mine.append((again, status, {}))
    finally:
        for sock, _, _ in mine:
            sock.close()


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(relay_server_factory):
    server = relay_server_factory({"sinks": {"sse": {"max_connections_per_address": 2,
                                                     "trusted_proxies": ["127.0.0.2"]}}})
    socks = []
    try:
        # 127.0.0.2 is a trusted proxy: the address it forwards for is what counts.
        for client in ("198.51.100.7", "198.51.100.7", "198.51.100.8"):
            sock, status, _ = open_stream(server, "/events/p", "127.0.0.2", {"X-Forwarded-For": f"10.9.9.9, {client}"})
            socks.append(sock)
            assert status == 200
        sock, status, _ = open_stream(server, "/events/p", "127.0.0.2", {"X-Forwarded-For": "198.51.100.7"})
        socks.append(sock)
        assert status == 429
        # 127.0.0.1 is not trusted: a forged X-Forwarded-For changes nothing.
        for i in range(3):
            sock, status, _ = open_stream(server, "/events/p", headers={"X-Forwarded-For": f"203.0.113.{i}"})
            socks.append(sock)
            assert status == (200 if i < 2 else 429)
    finally:
        for sock in socks:
            sock.close()


def test_max_connections_that_fills_the_worker_is_refused_at_start(tmp_path):
    server = RelayServer({"sinks": {"sse": {"max_connections": 40, "reserved_connections": 10}}},
                         env={"RELAY_WORKER_CONNECTIONS": "40"}, directory=tmp_path)
    try:
        with pytest.raises(RuntimeError, match=r"sinks\.sse\.max_connections: 40 streams would leave fewer than "
                                               r"reserved_connections \(10\) .* set it to 30 or less"):
            server.start()
    finally:
        server.stop()  # had it started, it must not outlive the test


# -- request bodies: slow, chunked, deep ----------------------------------------------------------

def slow_post(server, stop: threading.Event, answers: list, path="/events/slow", length=1000):
    """POST one byte a second; appends (status, body, seconds) once relay answers."""
    sock = connect(server, timeout=10)
    started = time.monotonic()
    sock.sendall(request_head(server, "POST", path, {"Content-Type": "application/json",
                                                     "Content-Length": str(length)}))

    def trickle():
        try:
            while not stop.is_set():
                sock.sendall(b" ")
                stop.wait(1)
        except OSError:
            pass  # relay closed it

    threading.Thread(target=trickle, daemon=True).start()
    try:
        status, _, body = read_answer(sock, timeout=15)
        answers.append((status, json.loads(body), time.monotonic() - started, closed_by_server(sock)))
    except OSError as exc:
        answers.append((None, repr(exc), time.monotonic() - started, None))
    finally:
        stop.set()
        sock.close()


def test_slow_bodies_get_408_and_cannot_fill_the_worker(relay_server_factory):
    server = relay_server_factory({"body_timeout": 2, "sinks": {"sse": {"reserved_connections": 2}}},
                                  env={"RELAY_WORKER_CONNECTIONS": "12"})
    stops, answers, threads = [], [], []
    for _ in range(12):  # every connection of the worker: before, /healthz then waited for ever
        stop = threading.Event()
        stops.append(stop)
        threads.append(threading.Thread(target=slow_post, args=(server, stop, answers), daemon=True))
        threads[-1].start()
    time.sleep(0.5)
    try:
        status, took = timed_health(server, timeout=8)
        assert status == 200 and took < 5.0  # answered once the 2 s body timeout freed connections
        for thread in threads:
            thread.join(10)
    finally:
        for stop in stops:
            stop.set()
    assert len(answers) == 12
    for status, body, seconds, closed in answers:
        assert status == 408, body
        assert body["error"] == "request_timeout" and "body_timeout (2 s)" in body["message"]
        assert seconds < 4.0 and closed  # and the connection is not left open for the rest
    assert server.health()["backbone"]["last_seq"] == 0
    status, took = timed_health(server)
    assert status == 200 and took < 1.0


def chunked_post(server, body: bytes, chunk=4096, headers=None):
    sock = connect(server)
    try:
        sock.sendall(request_head(server, "POST", "/events/chunky", {
            "Content-Type": "application/json", "Transfer-Encoding": "chunked", **(headers or {})}))
        for start in range(0, len(body), chunk):
            part = body[start:start + chunk]
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            except OSError:
                break  # relay answered and closed before the end: fine
        else:
            sock.sendall(b"0\r\n\r\n")
        return read_answer(sock)
    finally:
        sock.close()


def test_chunked_body_over_max_body_size_is_413_not_cut(relay_server_factory):
    server = relay_server_factory({"max_body_size": 4096})
    # Its first 4096 bytes are valid JSON on their own (an object, then spaces): cut there, it
    # used to be published.
    body = b'{"event":"e","data":"cut"}' + b" " * 10_000
    status, _, answer = chunked_post(server, body)
    assert status == 413, answer
    assert "max_body_size (4096 bytes)" in json.loads(answer)["message"]
    assert server.health()["backbone"]["last_seq"] == 0
    status, _, answer = chunked_post(server, b'{"event":"e","data":"' + b"x" * 3000 + b'"}', chunk=1000)
    assert status == 202, answer  # a chunked body within the limit is read whole


@pytest.mark.parametrize("depth", [33, 5000])
def test_too_deep_json_is_400_naming_the_limit(shared_relay_server, depth):
    before = shared_relay_server.health()["backbone"]["last_seq"]
    body = b'{"event":"e","data":' + b"[" * depth + b"]" * depth + b"}"
    status, answer = post(shared_relay_server, "deep", body)
    assert status == 400 and answer["error"] == "invalid_json", answer
    assert "deeper than 32 levels" in answer["message"]
    assert shared_relay_server.health()["backbone"]["last_seq"] == before
    assert post(shared_relay_server, "deep", b'{"event":"e","data":' + b"[" * 32 + b"]" * 32 + b"}")[0] == 202


def test_too_deep_vote_is_400(shared_relay_server):
    status, _, answer = http_request(f"{shared_relay_server.url}/demo/api/rooms/r/polls/main/votes", "POST",
                                     b"[" * 5000 + b"]" * 5000, {"Content-Type": "application/json"})
    assert status == 400 and "deeper than 32 levels" in json.loads(answer)["message"]


# -- no cross-site publishing ---------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
def test_publish_needs_content_type_application_json(shared_relay_server, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    status, _, raw = http_request(f"{shared_relay_server.url}/events/ct", "POST", b'{"event":"e"}', headers)
    answer = json.loads(raw)
    assert status == 415 and answer["error"] == "unsupported_media_type"
    assert "application/json" in answer["message"]


def test_publish_accepts_a_charset_parameter(shared_relay_server):
    status, _ = post(shared_relay_server, "ct", b'{"event":"e"}', {"Content-Type": "application/json; charset=utf-8"})
    assert status == 202


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    server = RelayServer({"auth": {"jwt_key": KEY}, "cors_origins": ["https://app.example"]},
                         directory=tmp_path_factory.mktemp("csrf")).start()
    yield server
    server.stop()


def publisher_token():
    return jwt.encode({"relay": {"publish": ["demo"]}, "exp": int(time.time()) + 300}, KEY, algorithm="HS256")


def test_cross_site_form_post_with_the_cookie_is_refused(secured):
    cookie = {"Cookie": f"relay_token={publisher_token()}"}
    # What a form on evil.example sends: text/plain, the cookie, its Origin.
    status, _, raw = http_request(f"{secured.url}/events/demo", "POST", b'{"event":"e","data":1}',
                                  {"Content-Type": "text/plain", "Origin": "https://evil.example", **cookie})
    assert status == 415, raw
    # Even as JSON (a browser would preflight it first): the cookie is not accepted from there.
    status, answer = post(secured, "demo", b'{"event":"e"}', {"Origin": "https://evil.example", **cookie})
    assert status == 403 and answer["error"] == "forbidden"
    assert "own origin" in answer["message"] and "'https://evil.example'" in answer["message"]
    for origin in ("null", None):
        status, answer = post(secured, "demo", b'{"event":"e"}', {**cookie, **({"Origin": origin} if origin else {})})
        assert status == 403, (origin, answer)
    assert secured.health()["backbone"]["last_seq"] == 0


@pytest.mark.parametrize("headers", [
    {"Origin": "OWN"},                           # the relay's own page
    {"Origin": "https://app.example"},           # listed in cors_origins
    {"Sec-Fetch-Site": "same-origin"},           # a browser that sends no Origin says so instead
])
def test_the_cookie_publishes_from_the_relays_own_or_a_cors_origin(secured, headers):
    headers = {k: (secured.url if v == "OWN" else v) for k, v in headers.items()}
    status, answer = post(secured, "demo", b'{"event":"e"}', {"Cookie": f"relay_token={publisher_token()}", **headers})
    assert status == 202, answer


def test_bearer_tokens_are_not_bound_to_an_origin(secured):
    status, answer = post(secured, "demo", b'{"event":"e"}', {"Authorization": f"Bearer {publisher_token()}",
                                                              "Origin": "https://evil.example"})
    assert status == 202, answer


# -- secrets --------------------------------------------------------------------------------------

def check_config(env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return subprocess.run([sys.executable, "-m", "relay", "check-config"], env={**base, **env},
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("key,ok", [("x", False), ("k" * 31, False), ("é" * 16, True), ("k" * 32, True)])
def test_hs_jwt_key_needs_32_bytes(key, ok):
    result = check_config({"RELAY_JWT_KEY": key})
    assert (result.returncode == 0) == ok, result.stdout + result.stderr
    if not ok:
        assert f"auth.jwt_key: is {len(key)} bytes long" in result.stdout + result.stderr
        assert len(key) < 8 or key not in result.stdout + result.stderr  # the key itself is never printed


def test_short_jwt_key_stops_start_up(tmp_path):
    server = RelayServer({"auth": {"jwt_key": "x"}}, directory=tmp_path)
    try:
        with pytest.raises(RuntimeError, match="auth.jwt_key: is 1 bytes long; an HS256 key needs at least 32"):
            server.start()
    finally:
        server.stop()  # had it started, it must not outlive the test
