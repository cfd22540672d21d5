"""Property-based tests for every ingress (issue 13, Deliver 8), with hypothesis.

Generated channels, event names, ids and data (lone surrogates, control characters, NUL, CR, LF,
U+2028/U+2029, U+0085, a BOM, deep nesting, large strings) go through HTTP publish, a Redis
pub/sub envelope and a Kafka envelope, each into one relay for the module. Every case is either

* refused with its documented error: HTTP 4xx with a JSON error whose message names the field
  (``channel: …``, ``event: …``, ``id: …``, ``data: …``), 413 over ``max_body_size``, 400 for a
  URL that is not UTF-8; a broker message counted under ``relay_rejected_total{source, reason}``
  with the reason an independent oracle here predicts; or
* delivered exactly as a WHATWG parser reads it back: the event name and id as sent, the data as
  sent (JSON values compact, strings as they are) with CR LF and CR read back as LF, the only
  change the SSE format makes.

After each case, a stream opened before it (one per case, and one opened before every case of
the module) still receives the next good event. The first test checks that the WHATWG reader
used here (``relay.testing.SSEClient``) is itself right, against a reference parser.

Seeded (``derandomize``), bounded (``max_examples``), no hypothesis database: the same cases on
every run.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kafka_support import Producer, create_topic, topic_name
from redis_support import EXTERNAL_URL, start_redis

from relay.testing import RelayServer, SSEClient, http_request, wait_until

JSON = {"Content-Type": "application/json"}
MAX_NAME = 256  # channel, event, id: documented limit
MAX_DEPTH = 32  # nesting of data: documented limit
MAX_SIZE = 65536  # max_body_size (HTTP) and max_size (Redis, Kafka) defaults
WATCH = "watch"  # where the good event after each case goes


def fixed(examples: int):
    return settings(derandomize=True, database=None, deadline=None, max_examples=examples,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

# Characters that have broken SSE servers: line breaks SSE does and does not know, NUL, controls,
# a BOM, the field separator, lone surrogates (high and low), astral and combining characters.
HOSTILE = "\x00\r\n\u2028\u2029\u0085\x0b\x0c\x1b\x7f\ufeff\t :\ud800\udbff\udc00\udfff\U0001F600e\u0301é%?&#+"
chars = st.one_of(st.sampled_from(HOSTILE), st.sampled_from("\ud800\udfff"), st.characters(codec="utf-8"),
                  st.characters())
hostile_text = st.text(chars, max_size=12)
clean_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), min_size=1, max_size=10)
lone_surrogate = st.builds(lambda a, s, b: a + s + b, st.text(max_size=3), st.sampled_from("\ud800\udbff\udc00\udfff"),
                           st.text(max_size=3))  # (JSON's "\ud800": text that cannot be encoded)
short_text = st.one_of(clean_text, clean_text, hostile_text, lone_surrogate)  # about half are fine
long_name = st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "\u2028"]), st.integers(250, 262))
LARGE = ["x", "é", "\u2028", "\r\n", "\x00"]  # repeated up to over the 64 KiB limits
large_fine_text = st.builds(lambda c, n: c * n, st.sampled_from(LARGE), st.integers(20_000, 70_000))
large_text = st.builds(lambda c, n: c * n, st.sampled_from(LARGE + ["\ud800"]), st.integers(20_000, 70_000))


@dataclass(frozen=True)
class Deep:
    """Data nested ``depth`` arrays deep, written out by hand (json.dumps would recurse)."""

    depth: int


PLACEHOLDER = "\u0001deep\u0001"


def to_json(value: Any, ascii_only: bool = True, compact: bool = False) -> str:
    """json.dumps, with a :class:`Deep` written in place."""
    deep = None

    def swap(v):
        nonlocal deep
        if isinstance(v, Deep):
            deep = v
            return PLACEHOLDER
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        if isinstance(v, list):
            return [swap(x) for x in v]
        return v

    separators = (",", ":") if compact else None
    text = json.dumps(swap(value), ensure_ascii=ascii_only, separators=separators)
    if deep is not None:
        text = text.replace(json.dumps(PLACEHOLDER, ensure_ascii=ascii_only),
                            "[" * deep.depth + "1" + "]" * deep.depth)
    return text


def json_values(text):
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63),
                        st.floats(allow_nan=False, allow_infinity=False), text)
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(text, inner, max_size=3)), max_leaves=8)


deep = st.one_of(st.integers(MAX_DEPTH - 2, MAX_DEPTH + 3).map(Deep), st.sampled_from([Deep(200), Deep(5000)]))
# Data may hold any character that can be encoded (NUL, CR, U+2028…): all delivered.
fine_data_text = st.text(st.one_of(st.sampled_from(HOSTILE.encode("utf-8", "ignore").decode()),  # (no surrogates)
                                   st.characters(codec="utf-8")), max_size=16)
fine_data = st.one_of(json_values(fine_data_text), json_values(fine_data_text), fine_data_text, large_fine_text, deep)
any_data = st.one_of(json_values(short_text), json_values(short_text), short_text, large_text, deep)
names = st.one_of(clean_text, clean_text, clean_text, hostile_text, lone_surrogate, long_name)
# None: no id in the message; the sampled ones have the forms of ids relay assigns itself.
ids = st.one_of(st.none(), names, st.integers(0, 9),
                st.sampled_from(["1-2", "1733000000000-0", "kafka:t:0:5:1733000000000", "2026-12-01"]))


@dataclass
class Case:
    channel: Any
    event: Any
    data: Any
    id: Any

    def message(self, with_channel: bool) -> dict:
        message = {"event": self.event, "data": self.data}
        if with_channel:
            message["channel"] = self.channel
        if self.id is not None:
            message["id"] = self.id
        return message


counter_ = itertools.count()


def cases(slash: bool = True):
    # Channels get a unique suffix: each case has a channel of its own, whatever was generated.
    base = st.one_of(clean_text, clean_text, clean_text, hostile_text, lone_surrogate, long_name)
    if not slash:  # a / cannot be in /events/<channel> (%2F is decoded before routing)
        base = base.map(lambda text: text.replace("/", "|"))
    channel = st.builds(lambda text: f"{text}~{next(counter_)}", base)
    fine_channel = st.builds(lambda text: f"{text}~{next(counter_)}", clean_text.map(lambda t: t.replace("/", "|")))
    fine = st.builds(Case, fine_channel, clean_text, fine_data, st.one_of(st.none(), clean_text))
    anything = st.builds(Case, channel, st.one_of(names, st.integers(0, 9)), any_data, ids)
    return st.one_of(fine, anything)


# --------------------------------------------------------------------------------------------
# The oracle: what relay must do with a case, worked out independently of relay's code
# --------------------------------------------------------------------------------------------

def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def name_ok(value: Any) -> bool:
    return (isinstance(value, str) and 0 < len(value) <= MAX_NAME and not any(c in value for c in "\r\n\0")
            and encodable(value))


def reserved_id(value: str) -> bool:
    """Ids in the forms relay gives itself (a stream entry, a Kafka record): refused from publishers."""
    return re.fullmatch(r"[0-9]+-[0-9]+", value) is not None or value.startswith("kafka:")


def depth(value: Any) -> int:
    if isinstance(value, Deep):
        return value.depth
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def data_ok(value: Any) -> bool:
    """Every string in it (keys included) encodable as UTF-8."""
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, dict):
        return all(encodable(k) and data_ok(v) for k, v in value.items())
    if isinstance(value, list):
        return all(map(data_ok, value))
    return True


def bad_fields(case: Case, reserved_ids: bool = True) -> list[str]:
    """The fields relay must refuse; ``reserved_ids``: this ingress keeps publisher-chosen ids
    (HTTP, Redis pub/sub), so ids in relay's own forms are refused too (Kafka replaces them)."""
    bad = [field for field, value in (("channel", case.channel), ("event", case.event)) if not name_ok(value)]
    if case.id is not None and (not name_ok(case.id) or (reserved_ids and reserved_id(case.id))):
        bad.append("id")
    if not data_ok(case.data):
        bad.append("data")
    return bad


def sse_data(data: Any) -> str:
    """The data as a WHATWG parser reads it back: strings as they are, else compact JSON; the SSE
    format turns CR LF and CR into LF (it has no way to carry them)."""
    text = data if isinstance(data, str) else to_json(data, ascii_only=False, compact=True)
    return re.sub(r"\r\n|\r", "\n", text)


def broker_reason(case: Case, payload: bytes, reserved_ids: bool) -> str | None:
    """The rejection reason a broker envelope must get, in the order relay checks; None: delivered."""
    if len(payload) > MAX_SIZE:
        return "too_large"
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8"
    if depth(case.data) > MAX_DEPTH:
        return "too_deep"
    if bad_fields(case, reserved_ids):
        return "invalid_field"
    return None


def quote(text: str) -> str:
    return urllib.parse.quote(text, safe="", errors="surrogatepass")  # a surrogate: bytes that are not UTF-8


def counts(server: RelayServer, source: str) -> dict[str, int]:
    rows = server.health()["counters"].get("rejected", [])
    return {row["reason"]: row["count"] for row in rows if row.get("source") == source}


def check_delivery(stream: SSEClient, sentinel: SSEClient, case: Case, delivered: bool, good: int,
                   event_id=None) -> None:
    """The case's event (when delivered) then the good event on the case's stream; the good event on
    the stream opened before every case."""
    events = stream.events(2 if delivered else 1, 10)
    if delivered:
        got = events[0]
        assert (got.event, got.data) == (case.event, sse_data(case.data)), case
        if event_id is not None:
            assert event_id(got.id), (got.id, case)
    assert (events[-1].event, events[-1].data) == ("good", str(good)), (events, case)
    assert stream.no_event_within(0.01)
    # (events of earlier cases may wait there when one failed: hypothesis then runs more)
    while sentinel.next_event(10).data != str(good):
        pass


# --------------------------------------------------------------------------------------------
# The reader itself: SSEClient against a reference WHATWG parser
# --------------------------------------------------------------------------------------------

def reference_parse(text: str) -> tuple[list[tuple[str, str, str]], int | None]:
    """WHATWG HTML 9.2.6, on the whole stream at once: (type, data, last event id) per event, and
    the reconnection time."""
    if text.startswith("\ufeff"):
        text = text[1:]
    events, data, kind, last_id, retry = [], "", "", "", None
    for line in re.split(r"\r\n|\r|\n", text)[:-1]:  # the last piece has no line end: discarded
        if line == "":
            if data:
                events.append((kind or "message", data[:-1] if data.endswith("\n") else data, last_id))
            data, kind = "", ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            kind = value
        elif name == "data":
            data += value + "\n"
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            retry = int(value)
    return events, retry


field_lines = st.one_of(
    st.builds(lambda n, v: f"{n}:{v}", st.sampled_from(["data", "event", "id", "retry", "dat", "Data", ""]),
              st.text(st.sampled_from(" :é\u2028\u2029\u0085\x00\x0b\ufeff\U0001F600ab1"), max_size=6)),
    st.sampled_from(["data", "data:", "data: ", "event", "id", "id:", ": comment", "retry: 10", "retry: \u0661\u0662"]),
    st.just(""), st.just(""))
line_ends = st.sampled_from(["\n", "\r", "\r\n"])


@fixed(150)
@given(lines=st.lists(st.tuples(field_lines, line_ends), max_size=12), bom=st.booleans(),
       cuts=st.lists(st.integers(0, 400), max_size=6))
def test_the_sse_reader_parses_like_whatwg_whatever_the_line_ends_and_read_boundaries(lines, bom, cuts):
    text = ("\ufeff" if bom else "") + "".join(line + end for line, end in lines)
    body = text.encode("utf-8")
    pieces = [body[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(body)])]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def serve():
            conn, _ = listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while b"\r\n\r\n" not in conn.recv(4096):
                    pass
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                for piece in pieces:  # one read each, as far as TCP lets us: splits CR LF and characters
                    if piece:
                        conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                        time.sleep(0.001)
                conn.sendall(b"0\r\n\r\n")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with SSEClient(f"http://127.0.0.1:{port}/", timeout=5) as client:
            got = []
            while True:
                try:
                    event = client.next_event(5)
                except AssertionError:  # the stream ended
                    break
                got.append((event.event, event.data, event.id or ""))
            retry = client.retry
        thread.join(5)
    assert (got, retry) == reference_parse(text)


# --------------------------------------------------------------------------------------------
# HTTP publish
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def http_relay(tmp_path_factory):
    server = RelayServer(directory=tmp_path_factory.mktemp("relay-http")).start()
    sentinel = server.sse(f"/events/{WATCH}", timeout=10)
    sentinel.read_some(0.2)
    yield server, sentinel
    sentinel.close()
    server.stop()


def http_expectation(case: Case, body: bytes) -> tuple[set[int], set[str]]:
    """The statuses allowed, and the words one of which the error message must start with."""
    if not encodable(case.channel):
        return {400}, {"the URL is not UTF-8"}  # its %-escapes cannot encode a surrogate
    if len(body) > MAX_SIZE:
        return {413}, {""}
    fields = {f"{field}: " for field in bad_fields(case)}
    statuses = {422} if fields else set()
    # HTTP refuses depth while parsing the body (400 "the body: nesting is deeper…"), before the
    # fields; data nested exactly MAX_DEPTH is accepted, as by Event and the broker envelopes.
    if depth(case.data) > MAX_DEPTH:
        statuses |= {400}
        fields |= {"the body: nesting is deeper"}
    return statuses, fields


@fixed(200)
@given(case=cases(slash=False))
def test_http_publish_is_refused_with_its_error_or_delivered_as_sent(http_relay, case):
    server, sentinel = http_relay
    good = next(counter_)
    body = to_json(case.message(with_channel=False)).encode()
    statuses, words = http_expectation(case, body)
    channels = f"channel={quote(case.channel)}&" if name_ok(case.channel) else ""
    with server.sse(f"/events?{channels}channel={WATCH}") as stream:
        assert stream.status == 200
        stream.read_some(0.05)
        status, _, answer = http_request(f"{server.url}/events/{quote(case.channel)}", "POST", body, JSON)
        delivered = status == 202
        event(f"HTTP {status}")
        if not statuses:
            assert status == 202, (status, answer, case)
        elif not delivered:
            assert status in statuses, (status, answer, case)
            error = json.loads(answer)
            assert error["error"] and any(error["message"].startswith(w) for w in words), (error, case)
        published = json.loads(answer).get("id") if delivered else None
        server.publish(WATCH, "good", good)
        check_delivery(stream, sentinel, case, delivered, good, lambda got: got == published)
    if not name_ok(case.channel) and encodable(case.channel):
        with server.sse(f"/events?channel={quote(case.channel)}") as refused:  # nor can anyone subscribe
            assert refused.status == 400, case
            assert json.loads(refused.body(2))["message"].startswith("channel: ")


# --------------------------------------------------------------------------------------------
# Last-Event-ID: header bytes and the lastEventId query parameter
# --------------------------------------------------------------------------------------------

def impossible_id(raw: bytes) -> bool:
    """An id no event can have, so relay must answer relay-missed without looking it up."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return len(text) > MAX_NAME or "\0" in text


def read_stream_until(sock: socket.socket, marker: bytes, data: bytes = b"", timeout: float = 10.0) -> bytes:
    """``data`` and what arrives, until ``marker`` is in it."""
    deadline = time.monotonic() + timeout
    while marker not in data:
        assert time.monotonic() < deadline, f"{marker!r} never came: {data[-300:]!r}"
        chunk = sock.recv(65536)
        assert chunk, f"the stream ended before {marker!r}: {data[-300:]!r}"
        data += chunk
    return data


@fixed(100)
@given(raw=st.one_of(st.binary(max_size=300), st.text(chars, max_size=300).map(
    lambda text: text.encode("utf-8", "surrogatepass"))), in_query=st.booleans())
def test_any_last_event_id_gets_a_stream_that_goes_live(http_relay, raw, in_query):
    """Never a dead or stuck stream: an impossible id is answered with relay-missed, then live events."""
    server, _ = http_relay
    channel, live = f"resume-{next(counter_)}", f"live-{next(counter_)}"
    raw = raw.replace(b"\r", b"").replace(b"\n", b"").strip(b" \t")  # what a header line can hold
    if in_query:
        path, header = f"/events/{channel}?lastEventId={urllib.parse.quote_from_bytes(raw, safe='')}", b""
    else:
        path, header = f"/events/{channel}", b"Last-Event-ID: " + raw + b"\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: relay\r\n" + header + b"\r\n")
        head = read_stream_until(sock, b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        event(f"Last-Event-ID {'query' if in_query else 'header'}: {status}")
        if status != 200:
            # Only a URL that is not UTF-8 (JSON 400 from relay) or a header gunicorn will not
            # parse (its own 400, e.g. a NUL or control byte) is refused.
            assert status == 400, head
            if in_query:
                with pytest.raises(UnicodeDecodeError):
                    raw.decode("utf-8")
            return
        server.publish(channel, "live", live)
        body = read_stream_until(sock, f"data: {live}".encode(), head)  # (head may hold the first frames)
    missed = re.search(rb"event: relay-missed\ndata: (.*)\n", body)
    if raw and impossible_id(raw):
        assert missed, body
    if missed:
        assert json.loads(missed[1])["reason"] == "unknown-id"


# --------------------------------------------------------------------------------------------
# Brokers: a Redis pub/sub envelope, a Kafka envelope
# --------------------------------------------------------------------------------------------

def broker_payload(case: Case, utf8: bool) -> bytes:
    """The envelope as bytes: JSON escapes for every character, or UTF-8 text where a surrogate is
    written as the bytes a careless encoder produces (not UTF-8)."""
    return to_json(case.message(with_channel=True), ascii_only=not utf8).encode("utf-8", "surrogatepass")


def broker_case(server: RelayServer, sentinel: SSEClient, source: str, case: Case, utf8: bool,
                send, event_id) -> None:
    payload = broker_payload(case, utf8)
    good = next(counter_)
    reason = broker_reason(case, payload, reserved_ids=source != "kafka")
    event(f"{source}: {reason or 'delivered'}{' (UTF-8)' if utf8 else ''}")
    before = counts(server, source)
    channels = f"channel={quote(case.channel)}&" if name_ok(case.channel) else ""
    with server.sse(f"/events?{channels}channel={WATCH}") as stream:
        assert stream.status == 200
        stream.read_some(0.05)
        send(payload)
        send(json.dumps({"event": "good", "data": good, "channel": WATCH}).encode())
        check_delivery(stream, sentinel, case, reason is None, good, event_id)
    after = counts(server, source)
    expected = dict(before)
    if reason is not None:
        expected[reason] = expected.get(reason, 0) + 1
    assert after == expected, (reason, case)


@pytest.fixture(scope="module")
def redis_relay(tmp_path_factory):
    redis = None if EXTERNAL_URL else start_redis()
    url = EXTERNAL_URL or redis.url
    channel = f"ingress-{time.monotonic_ns()}"
    server = RelayServer({"sources": {"redis": {"url": url, "channels": [channel]}}},
                         directory=tmp_path_factory.mktemp("relay-redis")).start()
    wait_until(lambda: server.health()["components"].get("source:redis", {}).get("state") == "up", 10)
    sentinel = server.sse(f"/events/{WATCH}", timeout=10)
    sentinel.read_some(0.2)
    import redis as redis_py

    client = redis_py.Redis.from_url(url, socket_timeout=5)
    yield server, sentinel, lambda payload: client.publish(channel, payload)
    sentinel.close()
    client.close()
    server.stop()
    if redis is not None:
        redis.kill()


@fixed(150)
@given(case=cases(), utf8=st.booleans())
def test_redis_envelope_is_rejected_with_its_reason_or_delivered_as_sent(redis_relay, case, utf8):
    server, sentinel, send = redis_relay
    broker_case(server, sentinel, "redis", case, utf8, send,
                lambda got: got == case.id if case.id is not None else bool(got))
    assert server.health()["counters"].get("source_errors") is None


@pytest.fixture(scope="module")
def kafka_relay(kafka_broker, tmp_path_factory):
    topic = create_topic(kafka_broker, topic_name("props"))
    server = RelayServer({"sources": {"kafka": {"bootstrap_servers": [kafka_broker], "topics": [topic],
                                                "probe_interval": 0.5}}},
                         directory=tmp_path_factory.mktemp("relay-kafka")).start()
    wait_until(lambda: "1 partition(s)" in server.health()["components"].get("source:kafka", {}).get("detail", ""),
               15)
    sentinel = server.sse(f"/events/{WATCH}", timeout=10)
    sentinel.read_some(0.2)
    producer = Producer(kafka_broker)  # batch_size=0, linger_ms=0: one record per batch (Tansu)
    yield server, sentinel, lambda payload: producer.send(topic, payload), topic
    producer.close()
    sentinel.close()
    server.stop()


@pytest.mark.kafka_brokers("tansu")
@fixed(60)
@given(case=cases(), utf8=st.booleans())
def test_kafka_envelope_is_rejected_with_its_reason_or_delivered_as_sent(kafka_relay, case, utf8):
    server, sentinel, send, topic = kafka_relay
    broker_case(server, sentinel, "kafka", case, utf8, send,
                lambda got: got.startswith(f"kafka:{topic}:0:"))
    assert server.health()["counters"].get("source_failures") is None
