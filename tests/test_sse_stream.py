"""GET /events over real HTTP against gunicorn's gevent worker."""

import json
import signal
import socket
import time

import pytest

from relay.testing import http_request, wait_until


def test_stream_headers_and_retry_on_connect(shared_relay_server):
    with shared_relay_server.sse("/events/headers") as stream:
        assert stream.status == 200
        assert stream.response_headers["content-type"] == "text/event-stream; charset=utf-8"
        assert stream.response_headers["cache-control"] == "no-cache"
        assert stream.response_headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in stream.response_headers
        stream.read_some(2)
        assert stream.retry == 3000


def test_event_arrives_with_name_id_and_compact_json(shared_relay_server):
    with shared_relay_server.sse("/events/demo") as stream:
        answer = shared_relay_server.publish("demo", "emote", {"emote": "dolphin", "n": 1})
        event = stream.next_event(5)
    assert (event.event, event.id, event.data) == ("emote", answer["id"], '{"emote":"dolphin","n":1}')


def test_multiline_and_unicode_data_survive_the_wire(shared_relay_server):
    text = "first line\nsecond\r\nthird\rfourth ü 🐬 \u2028 same line"
    with shared_relay_server.sse("/events/text") as stream:
        shared_relay_server.publish("text", "note", text)
        shared_relay_server.publish("text", "note", {"emoji": "🐬", "quote": "a\nb"})
        first, second = stream.events(2, 5)
    # A browser joins data lines with LF: line breaks come back as LF, nothing else is split.
    assert first.data == "first line\nsecond\nthird\nfourth ü 🐬 \u2028 same line"
    assert second.json() == {"emoji": "🐬", "quote": "a\nb"}


def test_empty_string_data_is_still_dispatched(shared_relay_server):
    with shared_relay_server.sse("/events/empty") as stream:
        shared_relay_server.publish("empty", "ping", "")
        assert stream.next_event(5).data == ""


def test_resume_with_a_known_id_replays_what_came_after(shared_relay_server):
    ids = [shared_relay_server.publish("resume", "n", i)["id"] for i in range(5)]
    with shared_relay_server.sse("/events/resume", headers={"Last-Event-ID": ids[1]}) as stream:
        replayed = stream.events(3, 5)
        shared_relay_server.publish("resume", "n", 5)
        live = stream.next_event(5)
    assert [e.json() for e in replayed] == [2, 3, 4] and live.json() == 5
    assert [e.event for e in replayed] == ["n"] * 3


def test_resume_by_query_parameter_for_polyfills(shared_relay_server):
    ids = [shared_relay_server.publish("poly", "n", i)["id"] for i in range(3)]
    with shared_relay_server.sse(f"/events/poly?lastEventId={ids[0]}") as stream:
        assert [e.json() for e in stream.events(2, 5)] == [1, 2]


def test_unknown_id_sends_missed_event_then_continues_live(shared_relay_server):
    shared_relay_server.publish("unknown", "n", 0)
    with shared_relay_server.sse("/events/unknown", headers={"Last-Event-ID": "not-an-id-we-gave"}) as stream:
        missed = stream.next_event(5)
        shared_relay_server.publish("unknown", "n", 1)
        live = stream.next_event(5)
    assert missed.event == "relay-missed"
    assert missed.json() == {"last_event_id": "not-an-id-we-gave", "reason": "unknown-id", "channels": ["unknown"]}
    assert live.json() == 1


def test_overlong_last_event_id_is_treated_as_unknown(shared_relay_server):
    with shared_relay_server.sse("/events/long", headers={"Last-Event-ID": "x" * 5000}) as stream:
        missed = stream.next_event(5)
    assert missed.event == "relay-missed" and len(missed.json()["last_event_id"]) == 1024  # echoed, cut


def test_id_older_than_history_sends_missed_event_then_what_is_left(relay_server_factory):
    server = relay_server_factory({"history_size": 3})
    ids = [server.publish("small", "n", i)["id"] for i in range(6)]
    with server.sse("/events/small", headers={"Last-Event-ID": ids[0]}) as stream:
        missed, *rest = stream.events(4, 5)
    assert missed.event == "relay-missed" and missed.json()["reason"] == "evicted"
    assert [e.json() for e in rest] == [3, 4, 5]


def test_several_channels_on_one_connection_and_resume_across_them(shared_relay_server):
    with shared_relay_server.sse("/events?channel=room-a&channel=room-b") as stream:
        first = shared_relay_server.publish("room-a", "emote", "a1")
        shared_relay_server.publish("room-c", "emote", "not subscribed")
        shared_relay_server.publish("room-b", "votes", "b1")
        shared_relay_server.publish("room-a", "emote", "a2")
        events = stream.events(3, 5)
        assert stream.no_event_within(0.3)
    assert [(e.event, e.json() if e.data[0] == "{" else e.data) for e in events] == [
        ("emote", "a1"), ("votes", "b1"), ("emote", "a2")]
    with shared_relay_server.sse("/events?channel=room-b&channel=room-a",
                                 headers={"Last-Event-ID": first["id"]}) as stream:
        assert [e.data for e in stream.events(2, 5)] == ["b1", "a2"]


def test_stream_without_channel_is_400(shared_relay_server):
    status, _, body = http_request(f"{shared_relay_server.url}/events")
    assert status == 400 and "at least one channel" in json.loads(body)["message"]


def test_idle_stream_gets_heartbeats(relay_server_factory):
    server = relay_server_factory({"sinks": {"sse": {"heartbeat": 0.2}}})
    with server.sse("/events/quiet") as stream:
        deadline = time.monotonic() + 5
        while len(stream.comments) < 3 and time.monotonic() < deadline:
            stream.read_some(0.5)
    assert stream.comments.count("heartbeat") >= 3


def test_heartbeats_keep_their_interval_across_events(relay_server_factory):
    # Every wait for events gets a full heartbeat interval, however many waits ended early.
    server = relay_server_factory({"sinks": {"sse": {"heartbeat": 0.3}}})
    with server.sse("/events/beat") as stream:
        for i in range(8):  # each event ends a wait after ~0.1 s: 0.8 s of waits in all
            server.publish("beat", "tick", i)
            assert stream.next_event(5).json() == i
            time.sleep(0.1)
        before = len(stream.comments)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            stream.read_some(0.1)
        beats = stream.comments[before:].count("heartbeat")
    assert 2 <= beats <= 7, f"{beats} heartbeats in 1.5 s at a 0.3 s interval"


def _raw_stream(server, path, rcvbuf=None):
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


def test_slow_client_is_disconnected_and_others_get_everything(relay_server_factory):
    server = relay_server_factory({"sinks": {"sse": {"queue_size": 8}}})
    slow = _raw_stream(server, "/events/firehose", rcvbuf=4096)  # never reads
    with server.sse("/events/firehose", timeout=30) as fast:
        wait_until(lambda: server.health()["components"]["sse"]["clients"] == 2, 5, message="two clients")
        blob = "x" * 50_000
        count = 150  # ~7.5 MB: more than the kernel buffers between relay and the slow reader
        received = []
        for i in range(count):
            server.publish("firehose", "blob", {"i": i, "blob": blob})
            while True:  # keep the fast client reading as it goes
                try:
                    received.append(fast.next_event(0.001).json()["i"])
                except AssertionError:
                    break
        while len(received) < count:
            received.append(fast.next_event(10).json()["i"])
    assert received == list(range(count))
    wait_until(lambda: server.health()["counters"].get("sse_disconnected_slow"), 10, message="slow client dropped")
    slow.settimeout(10)
    drained = b""
    while True:  # the slow client's connection was closed by relay: reading reaches the end
        chunk = slow.recv(1 << 20)
        if not chunk:
            break
        drained += chunk
    slow.close()
    assert 0 < drained.count(b"event: blob") < count


def test_clients_that_leave_take_their_subscriptions_with_them(relay_server_factory):
    server = relay_server_factory({"sinks": {"sse": {"max_connections_per_address": 0}}})  # 1000 from one address
    sockets = []
    try:
        for i in range(1000):
            sockets.append(_raw_stream(server, f"/events?channel=leave&channel=leave-{i % 10}"))
        for sock in sockets:  # every stream is open once its first bytes arrive
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        health = wait_until(lambda: (h := server.health())["components"]["sse"]["clients"] == 1000 and h,
                            10, message="1000 clients")
        assert health["bus"]["receivers"] == 1000
    finally:
        for sock in sockets:
            sock.close()
    # Nothing is published and the heartbeat is 15 s away: the hang-up alone must clean up.
    health = wait_until(lambda: (h := server.health())["components"]["sse"]["clients"] == 0 and h,
                        10, message="all clients gone")
    assert health["bus"]["receivers"] == 0
    with server.sse("/events/leave") as stream:  # and the relay still works
        server.publish("leave", "after", 1)
        assert stream.next_event(5).json() == 1


def test_cors_for_configured_origins(relay_server_factory):
    server = relay_server_factory({"cors_origins": ["https://app.example"]})
    with server.sse("/events/cors", headers={"Origin": "https://app.example"}) as stream:
        assert stream.response_headers["access-control-allow-origin"] == "https://app.example"
    with server.sse("/events/cors", headers={"Origin": "https://evil.example"}) as stream:
        assert "access-control-allow-origin" not in stream.response_headers
    status, headers, _ = http_request(f"{server.url}/events/cors", "OPTIONS", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in headers["Access-Control-Allow-Headers"]


def test_sigterm_ends_streams_with_a_retry_hint(relay_server_factory):
    server = relay_server_factory()
    with server.sse("/events/bye") as stream:
        stream.read_some(2)
        stream.retry = None
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert stream.wait_closed(8), "the stream did not end on SIGTERM"
        assert stream.retry == 3000
    assert server.process.wait(10) == 0
    assert time.monotonic() - started < 5  # streams ended, so no wait for the graceful timeout


@pytest.mark.parametrize("path", ["/events/a%0Ab", "/events?channel=ok&channel=a%00b"])
def test_bad_channel_on_stream_is_400(shared_relay_server, path):
    status, _, body = http_request(f"{shared_relay_server.url}{path}")
    assert status == 400 and "channel: must not contain CR, LF or NUL" in json.loads(body)["message"]
