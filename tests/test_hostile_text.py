"""Hostile text (issue 13, "one event kills a channel"): text is checked where it comes in, and the
SSE writer never raises inside a stream.

Before: ``{"event":"x","data":"\\ud800"}`` (a JSON lone surrogate) got 202, then its frame failed to
encode inside every stream of the channel, closing them, and every resume from an earlier id; the
same through the event name, the id, nested data and Redis ``PUBLISH``. A deep-nested Redis or Kafka
message was a source error (RecursionError), not a rejected message. Now each ingress refuses such
text (422 naming the field over HTTP, ``relay_rejected_total{reason=…}`` for brokers), and an event
that still cannot be framed (a plugin changed it after validation) is skipped and counted.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.parse

import pytest
from kafka_support import create_topic, topic_name

from relay.testing import http_request, wait_until

JSON = {"Content-Type": "application/json"}

# (field named in the error, body): each holds text that cannot be encoded as UTF-8.
HOSTILE_BODIES = [
    ("data", {"event": "x", "data": "\ud800"}),
    ("event", {"event": "x\ud800", "data": 1}),
    ("id", {"event": "x", "data": 1, "id": "\udfff-1"}),
    ("data", {"event": "x", "data": {"list": [1, {"deep": "a\udc80b"}]}}),  # nested value
    ("data", {"event": "x", "data": {"k\ud800": 1}}),  # nested key
]


def post(server, channel: str, body: dict | bytes) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()  # ASCII: \ud800 escapes
    status, _, answer = http_request(f"{server.url}/events/{urllib.parse.quote(channel, safe='')}", "POST",
                                     raw, JSON)
    return status, json.loads(answer)


def counter(server, name: str, **labels) -> int:
    rows = server.health()["counters"].get(name, [])
    return sum(r.get("count", 0) for r in rows if all(r.get(k) == v for k, v in labels.items()))


def nested(depth: int, leaf=1):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def deep_json(depth: int) -> str:
    """An envelope whose data nests ``depth`` arrays (written out: json.dumps would recurse too)."""
    return '{"event": "x", "channel": "k", "data": ' + "[" * depth + "1" + "]" * depth + "}"


# --------------------------------------------------------------------------------------------
# HTTP publish
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,body", HOSTILE_BODIES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(HOSTILE_BODIES)])
def test_http_hostile_text_is_422_naming_the_field_and_streams_and_resumes_go_on(shared_relay_server, field, body):
    server = shared_relay_server
    channel, other = f"c-{field}-{time.monotonic_ns()}", f"o-{time.monotonic_ns()}"
    before = server.publish(channel, "good", 0)["id"]
    with server.sse(f"/events/{channel}") as one, server.sse(f"/events?channel={other}&channel={channel}") as two:
        one.read_some(0.2), two.read_some(0.2)
        server.publish(channel, "good", 1)
        status, answer = post(server, channel, body)
        server.publish(channel, "good", 2)
        server.publish(other, "good", 3)  # the stream that watches another channel with it too
        assert [e.data for e in one.events(2, 5)] == ["1", "2"]
        assert [e.data for e in two.events(3, 5)] == ["1", "2", "3"]
    assert status == 422, answer
    assert answer["error"] == "invalid_event" and answer["message"].startswith(f"{field}: ")
    assert "cannot be encoded as UTF-8" in answer["message"]
    with server.sse(f"/events/{channel}", headers={"Last-Event-ID": before}) as resumed:
        assert [(e.event, e.data) for e in resumed.events(2, 5)] == [("good", "1"), ("good", "2")]


def test_url_that_is_not_utf8_or_holds_forbidden_characters_is_refused_cleanly(shared_relay_server):
    server = shared_relay_server
    for path in ("/events/%FF", "/events/%ED%A0%80", "/events?channel=%FF", "/events?channel=a&channel=%C3",
                 "/events/%00", "/events/a%0Ab", "/events?channel=a%0D"):
        with server.sse(path) as stream:
            status, body = stream.status, stream.body(2)
        assert status == 400, (path, status, body)
        assert json.loads(body)["error"] == "invalid_request", path
    status, answer = post(server, "\ufffd", {"event": "x"})  # the channel %FF used to become
    assert status == 202
    for path in ("/events/%FF", "/events/%ED%A0%80"):  # before: 202 on channel "\ufffd"
        status, _, body = http_request(f"{server.url}{path}", "POST", b'{"event":"x"}', JSON)
        assert status == 400 and b"not UTF-8" in body, (path, status, body)
    status, answer = post(server, "a\0b", {"event": "x"})
    assert status == 422 and answer["message"].startswith("channel: ")


# --------------------------------------------------------------------------------------------
# Last-Event-ID
# --------------------------------------------------------------------------------------------

def test_a_non_ascii_last_event_id_resumes(shared_relay_server):
    """WSGI gives headers as latin-1 text; browsers send the id as UTF-8 (before: relay-missed)."""
    server = shared_relay_server
    channel = f"cafe-{time.monotonic_ns()}"
    server.publish(channel, "e", 1, id=f"café-☕-{channel}")
    server.publish(channel, "e", 2)
    server.publish(channel, "e", 3)
    with server.sse(f"/events/{channel}", headers={"Last-Event-ID": f"café-☕-{channel}"}) as stream:
        assert [(e.event, e.data) for e in stream.events(2, 5)] == [("e", "2"), ("e", "3")]
    query = urllib.parse.quote(f"café-☕-{channel}")
    with server.sse(f"/events/{channel}?lastEventId={query}") as stream:  # polyfills
        assert [(e.event, e.data) for e in stream.events(2, 5)] == [("e", "2"), ("e", "3")]


@pytest.mark.parametrize("query", ["%00", "a%0Aevent%3A%20injected", "a%0D", "x" * 300, "%EF%BF%BD"])
def test_an_impossible_last_event_id_in_the_query_is_an_unknown_id_and_the_stream_goes_live(shared_relay_server,
                                                                                          query):
    server = shared_relay_server
    channel = f"q-{time.monotonic_ns()}"
    with server.sse(f"/events/{channel}?lastEventId={query}") as stream:
        assert stream.status == 200
        missed = stream.next_event(5)
        server.publish(channel, "live", 1)
        live = stream.next_event(5)
    assert missed.event == "relay-missed" and missed.json()["reason"] == "unknown-id"
    assert (live.event, live.data) == ("live", "1")


def raw_stream_request(server, path: str, header: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: relay\r\nAccept: text/event-stream\r\n"
                 b"Last-Event-ID: " + header + b"\r\n\r\n")
    return sock


def read_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    data, deadline = b"", time.monotonic() + timeout
    while marker not in data:
        assert time.monotonic() < deadline, f"{marker!r} not in {data!r}"
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {data!r}"
        data += chunk
    return data


def test_a_last_event_id_header_that_is_not_utf8_is_an_unknown_id_and_the_stream_goes_live(shared_relay_server):
    server = shared_relay_server
    channel = f"h-{time.monotonic_ns()}"
    with raw_stream_request(server, f"/events/{channel}", b"\xff\xfe\xed\xa0\x80") as sock:
        head = read_until(sock, b"event: relay-missed")
        assert head.startswith(b"HTTP/1.1 200")
        server.publish(channel, "live", "after")
        body = read_until(sock, b"data: after")
    assert b'"reason":"unknown-id"' in head + body


# --------------------------------------------------------------------------------------------
# An event that cannot be framed (changed after validation) never breaks a stream or a resume
# --------------------------------------------------------------------------------------------

SPOILING_PLUGIN = '''
from relay import hookimpl

@hookimpl
def relay_transform_event(event):
    # Valid when built; spoiled afterwards, as a careless plugin could.
    if event.event == "spoil-name":
        event.event = "name\\ud800"
    elif event.event == "spoil-id":
        event.id = "x\\nevent: injected"
    elif event.event == "spoil-text":
        event.data = event.text = "text\\udfff"
'''


def test_an_event_that_cannot_be_framed_is_skipped_counted_and_logged_and_streams_and_resumes_go_on(
        relay_server_factory, tmp_path):
    (tmp_path / "spoiling_plugin.py").write_text(SPOILING_PLUGIN)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    server = relay_server_factory({"plugins": ["spoiling_plugin"]}, env={"PYTHONPATH": path})
    before = server.publish("c", "good", 0)["id"]
    with server.sse("/events/c") as one, server.sse("/events?channel=c&channel=d") as two:
        one.read_some(0.2), two.read_some(0.2)
        server.publish("c", "good", 1)
        for name in ("spoil-name", "spoil-id", "spoil-text"):
            server.publish("c", name, "bad")
        server.publish("c", "good", 2)
        assert [(e.event, e.data) for e in one.events(2, 5)] == [("good", "1"), ("good", "2")]
        assert [(e.event, e.data) for e in two.events(2, 5)] == [("good", "1"), ("good", "2")]
        server.publish("c", "good", 3)
        assert one.next_event(5).data == "3" and two.next_event(5).data == "3"
    with server.sse("/events/c", headers={"Last-Event-ID": before}) as resumed:  # the history holds them
        assert [e.data for e in resumed.events(3, 5)] == ["1", "2", "3"]
        server.publish("c", "good", 4)
        assert resumed.next_event(5).data == "4"
        assert resumed.no_event_within(0.2)
    assert counter(server, "sse_unframeable") == 3  # once per event, however many clients
    log = server.log()
    assert log.count("its SSE frame cannot be built") == 3
    assert "skipped event 'x\\nevent: injected' on channel 'c'" in log


# --------------------------------------------------------------------------------------------
# Redis: pub/sub (envelope and raw), Streams
# --------------------------------------------------------------------------------------------

def redis_relay(factory, redis_server, **settings):
    config = {"sources": {"redis": {"url": redis_server.url, "reconnect_min": 0.05, "health_interval": 1.0,
                                    **settings}}}
    server = factory(config)
    wait_until(lambda: server.health()["components"].get("source:redis", {}).get("state") == "up", 10,
               message="source:redis up")
    return server


REDIS_HOSTILE = [  # (payload, reason)
    (json.dumps({"event": "x", "data": "\ud800"}), "invalid_field"),
    (json.dumps({"event": "x\ud800"}), "invalid_field"),
    (json.dumps({"event": "x", "id": "\udfff"}), "invalid_field"),
    (json.dumps({"event": "x", "channel": "c\ud800"}), "invalid_field"),
    (json.dumps({"event": "x", "data": {"a": ["\udc80"]}}), "invalid_field"),
    (json.dumps({"event": "x", "data": nested(33)}), "too_deep"),
    (deep_json(5000), "too_deep"),  # before: RecursionError, a source error
    (b'{"event": "x", "data": "\xed\xa0\x80"}', "not_utf8"),  # a surrogate encoded as bytes
]


def test_redis_publish_of_hostile_text_is_a_rejected_message_and_streams_and_resumes_go_on(
        relay_server_factory, redis_server, names):
    channel, matched = f"{names}in", f"{names}room.1"  # SUBSCRIBE and PSUBSCRIBE
    server = redis_relay(relay_server_factory, redis_server, channels=[channel], patterns=[f"{names}room.*"])
    r = redis_server.client()
    with server.sse(f"/events?channel={channel}&channel={matched}") as stream:
        stream.read_some(0.2)
        r.publish(channel, json.dumps({"event": "good", "data": 1}))
        first = stream.next_event(5)
        for payload, _ in REDIS_HOSTILE:
            r.publish(channel, payload)
            r.publish(matched, payload)
        r.publish(matched, json.dumps({"event": "good", "data": 2}))
        r.publish(channel, json.dumps({"event": "good", "data": 3}))
        assert [e.data for e in stream.events(2, 5)] == ["2", "3"]
    expected: dict[str, int] = {}
    for _, reason in REDIS_HOSTILE:
        expected[reason] = expected.get(reason, 0) + 2
    for reason, count in expected.items():
        assert counter(server, "rejected", source="redis", reason=reason) == count, reason
    assert counter(server, "source_errors") == 0
    assert counter(server, "source_connection_failures") == 0
    log = server.log()
    assert f"rejected message from redis channel '{channel}': too_deep" in log
    assert f"rejected message from redis channel '{matched}': invalid_field: data: holds '\\ud800'" in log
    with server.sse(f"/events?channel={channel}&channel={matched}", headers={"Last-Event-ID": first.id}) as resumed:
        assert [(e.event, e.data) for e in resumed.events(2, 5)] == [("good", "2"), ("good", "3")]
        assert resumed.no_event_within(0.2)


def test_redis_raw_format_refuses_bytes_that_are_not_utf8_and_relays_escapes_as_text(
        relay_server_factory, redis_server, names):
    channel = f"{names}raw"
    server = redis_relay(relay_server_factory, redis_server, channels=[channel], format="raw", event_name="line")
    r = redis_server.client()
    with server.sse(f"/events/{channel}") as stream:
        stream.read_some(0.2)
        r.publish(channel, b"lone \xed\xa0\x80 surrogate")  # WTF-8/CESU bytes: not UTF-8
        r.publish(channel, b"bad \xff byte")
        r.publish(channel, b'{"data": "\\ud800"}')  # raw: an escape is six characters of text
        r.publish(channel, "a\r\nb\rc\u2028".encode())
        events = stream.events(2, 5)
    assert [(e.event, e.data) for e in events] == [("line", '{"data": "\\ud800"}'), ("line", "a\nb\nc\u2028")]
    assert counter(server, "rejected", source="redis", reason="not_utf8") == 2


def test_redis_stream_entries_with_hostile_text_are_rejected_and_the_stream_goes_on(
        relay_server_factory, redis_server, names):
    key = f"{names}feed"
    server = redis_relay(relay_server_factory, redis_server, streams=[key])
    r = redis_server.client()
    with server.sse(f"/events/{key}") as stream:
        stream.read_some(0.2)
        first = r.xadd(key, {"payload": json.dumps({"event": "good", "data": 1})}).decode()
        r.xadd(key, {"payload": json.dumps({"event": "x", "data": "\ud800"})})
        r.xadd(key, {"payload": deep_json(2000)})
        r.xadd(key, {"payload": b'{"event": "x", "data": "\xed\xb0\x80"}'})
        r.xadd(key, {"payload": json.dumps({"event": "good", "data": 2})})
        assert [e.data for e in stream.events(2, 5)] == ["1", "2"]
    assert counter(server, "rejected", source="redis") == 3
    for reason in ("invalid_field", "too_deep", "not_utf8"):
        assert counter(server, "rejected", source="redis", reason=reason) == 1, reason
    assert counter(server, "source_errors") == 0
    with server.sse(f"/events/{key}", headers={"Last-Event-ID": first}) as resumed:  # read back from Redis
        assert [e.data for e in resumed.events(1, 5)] == ["2"]


def test_redis_stream_group_rejects_hostile_entries_acknowledges_them_and_delivers_the_rest(
        relay_server_factory, redis_server, names):
    """The consumer group (durable sinks): a bad entry is rejected and acknowledged, never retried
    forever and never holding back the entries after it (before: a deep entry raised out of the
    group link)."""
    from webhook_support import Receiver, endpoint, webhook_config

    receiver = Receiver().start()
    try:
        key, r = f"{names}orders", redis_server.client()
        config = webhook_config([endpoint(f"{receiver.url}/hook", channels=[key])])
        config["sources"] = {"redis": {"url": redis_server.url, "streams": [key], "group": "hooks",
                                       "stream_block": 0.1, "reconnect_max": 0.5}}
        server = relay_server_factory(config)
        wait_until(lambda: server.health()["components"]["source:redis"]["state"] == "up", 10)
        r.xadd(key, {"payload": json.dumps({"event": "order", "data": 1})})
        r.xadd(key, {"payload": deep_json(3000)})
        r.xadd(key, {"payload": json.dumps({"event": "order", "data": {"note": "\udc80"}})})
        r.xadd(key, {"payload": json.dumps({"event": "order", "data": 2})})
        receiver.wait_for(2, path="/hook")
        assert sorted(hook.verify()["data"] for hook in receiver.for_path("/hook")) == [1, 2]
        wait_until(lambda: r.xpending(key, "hooks")["pending"] == 0, 10, message="every entry acknowledged")
        assert counter(server, "rejected", source="redis", reason="too_deep") == 2  # the Streams link and the group
        assert counter(server, "source_errors") == 0 and counter(server, "source_failures") == 0
    finally:
        receiver.stop()


# --------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------

@pytest.mark.kafka_brokers("tansu")
def test_kafka_records_with_hostile_text_or_deep_nesting_are_rejected_and_the_partition_goes_on(
        kafka_broker, producer, relay_server_factory):
    topic = create_topic(kafka_broker, topic_name("hostile"))
    server = relay_server_factory({"sources": {"kafka": {"bootstrap_servers": [kafka_broker], "topics": [topic],
                                                         "probe_interval": 0.5}}})
    wait_until(lambda: "1 partition(s)" in server.health()["components"].get("source:kafka", {}).get("detail", ""),
               15, message="the Kafka source to read its partition")
    p = producer()
    bad = [(deep_json(5000), "too_deep"),  # before: RecursionError, the source failed
           (json.dumps({"event": "x", "channel": "k", "data": nested(33)}), "too_deep"),
           (json.dumps({"event": "x\ud800", "channel": "k"}), "invalid_field"),
           (b'{"event": "x", "channel": "k", "data": "\xed\xa0\x80"}', "not_utf8")]
    with server.sse("/events/k") as stream:
        stream.read_some(0.2)
        p.send(topic, json.dumps({"event": "good", "channel": "k", "data": 1}))
        for value, _ in bad:
            p.send(topic, value)
        p.send(topic, json.dumps({"event": "good", "channel": "k", "data": 2}))
        assert [e.data for e in stream.events(2, 10)] == ["1", "2"]
    for reason in ("too_deep", "invalid_field", "not_utf8"):
        assert counter(server, "rejected", source="kafka", reason=reason) == [r for _, r in bad].count(reason)
    assert counter(server, "source_failures") == 0


# --------------------------------------------------------------------------------------------
# relay.envelope.decode, for source plugins that hand it text
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("format", ["envelope", "raw"])
def test_decode_refuses_text_decoded_with_surrogateescape_as_not_utf8(format):
    from relay.envelope import BadMessage, decode

    payload = b'{"event": "x", "data": "caf\xe9"}'.decode("utf-8", "surrogateescape")  # latin-1 bytes
    with pytest.raises(BadMessage) as refused:
        decode(payload, channel="c", source="plugin", format=format)
    assert refused.value.reason == "not_utf8" and "'\\udce9' at character" in str(refused.value)
    with pytest.raises(BadMessage) as refused:  # the size limit counts bytes, not characters
        decode(json.dumps({"event": "x", "data": "é" * 40}, ensure_ascii=False), channel="c", source="plugin",
               format=format, max_size=60)
    assert refused.value.reason == "too_large"
