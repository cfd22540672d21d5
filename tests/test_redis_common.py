"""What the Redis backbone and the Redis source share: the stream-id parser, the Redis URL schemes,
and plugins.redis_common (connections, the reconnect policy, reading a subscription)."""

from __future__ import annotations

import logging
import re
import time

import gevent
import gevent.event
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

import plugins.demo
import plugins.redis_backbone
import plugins.redis_backbone.backbone
import plugins.redis_backbone.cursor
import plugins.redis_source
import plugins.redis_source.replay
import plugins.redis_source.settings
import plugins.webhooks.settings
import relay.api
import relay.backbone
import relay.config
from plugins import redis_common
from plugins.redis_common import (
    LinkDead, backoff, connection_options, keep_connected, make_connection, make_pool, read_subscribed,
)
from relay.api import REDIS_URL_SCHEMES, Event, Replay, parse_stream_id

log = logging.getLogger("test.redis_common")


def wait_until(predicate, timeout, message):
    """relay.testing.wait_until, sleeping with gevent so the greenlet under test runs meanwhile."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {message}"
        gevent.sleep(0.02)

# -- one stream-id parser --------------------------------------------------------------------------

ORACLE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # Redis entry ids as the parser must take them
ids = st.tuples(st.integers(0, 10**20 - 1), st.integers(0, 10**20 - 1))


@given(ids)
def test_a_stream_id_parses_to_its_two_numbers(pair):
    assert parse_stream_id(f"{pair[0]}-{pair[1]}") == pair


@given(ids, ids)
def test_parsed_ids_order_as_redis_orders_entries(a, b):
    # Redis orders entries by milliseconds, then sequence: exactly the tuples' order.
    assert (parse_stream_id(f"{a[0]}-{a[1]}") < parse_stream_id(f"{b[0]}-{b[1]}")) == (a < b)


@given(st.text(alphabet=st.sampled_from("0123456789-\n \t+٣x:"), max_size=45) | st.text(max_size=45))
def test_anything_else_is_not_a_stream_id(text):
    parsed = parse_stream_id(text)
    if ORACLE.fullmatch(text):
        ms, _, seq = text.partition("-")
        assert parsed == (int(ms), int(seq))
    else:
        assert parsed is None  # a trailing newline, a sign, spaces, non-ASCII digits, 21 digits: None


def test_the_backbone_the_source_and_the_core_use_the_one_parser():
    assert relay.api.parse_stream_id is relay.backbone.parse_stream_id
    assert plugins.redis_backbone.backbone.parse_stream_id is parse_stream_id
    assert plugins.redis_backbone.cursor.parse_stream_id is parse_stream_id
    assert plugins.redis_source.parse_stream_id is parse_stream_id
    assert plugins.redis_source.replay.parse_stream_id is parse_stream_id
    for module in (plugins.redis_backbone.backbone, plugins.redis_backbone.cursor, plugins.redis_source.messages):
        assert not hasattr(module, "STREAM_ID") and not hasattr(module, "id_key")


def test_merge_replays_orders_stream_ids_numerically():
    events = [Event("c", "e", i, id=event_id) for i, event_id in enumerate(["10-0", "9-5", "9-10"])]
    merged = relay.backbone.merge_replays([Replay(events[:1]), Replay(events[1:])], 10)
    assert [e.id for e in merged.events] == ["9-5", "9-10", "10-0"]


# -- one list of Redis URL schemes -----------------------------------------------------------------

def test_every_redis_url_check_takes_the_one_list_of_schemes():
    assert relay.api.REDIS_URL_SCHEMES is relay.config.REDIS_URL_SCHEMES == ("redis://", "rediss://", "unix://")
    checks = [relay.config._check_backbone, plugins.redis_source.settings._check_url,
              plugins.demo._check_tallies, plugins.webhooks.settings._check_store]
    for scheme in REDIS_URL_SCHEMES:
        for check in checks:
            assert check(f"{scheme}somewhere") is None, (check, scheme)
    for check in checks:
        assert check("http://somewhere") is not None, check


def test_the_redis_backbone_plugin_takes_every_redis_url_and_nothing_else():
    assert plugins.redis_backbone.relay_backbone(None, "memory") is None
    assert plugins.redis_backbone.relay_backbone(None, "kafka://x") is None


# -- connections -----------------------------------------------------------------------------------

def test_a_tcp_connection_speaks_resp2_has_a_name_bounded_waits_keepalive_and_no_redis_py_retries():
    options = connection_options("redis://h:7000/3", "me", connect_timeout=2.0, read_timeout=7.0)
    assert (options["host"], options["port"], options["db"]) == ("h", 7000, 3)
    assert options["protocol"] == 2 and options["client_name"] == "me"
    assert (options["socket_connect_timeout"], options["socket_timeout"]) == (2.0, 7.0)
    assert options["socket_keepalive"] is True
    assert options["retry"].get_retries() == 0
    assert "retry" not in connection_options("redis://h", "me", connect_timeout=1, read_timeout=1,
                                             redis_retries=True)


def test_a_unix_socket_connection_has_no_keepalive_and_can_be_built():
    options = connection_options("unix:///tmp/redis.sock", "me", connect_timeout=1, read_timeout=1)
    assert "socket_keepalive" not in options  # a Unix socket has none; redis-py refuses the option
    connection = make_connection("unix:///tmp/redis.sock", "me", connect_timeout=1, read_timeout=1)
    assert isinstance(connection, redis.UnixDomainSocketConnection)
    pool = make_pool("unix:///tmp/redis.sock", "me", connect_timeout=1, read_timeout=1, max_connections=4, wait=2)
    assert isinstance(pool, redis.BlockingConnectionPool) and pool.max_connections == 4 and pool.timeout == 2
    assert not isinstance(make_pool("redis://h", "me", connect_timeout=1, read_timeout=1), redis.BlockingConnectionPool)


# -- the reconnect policy --------------------------------------------------------------------------

def test_backoff_doubles_from_the_first_delay_up_to_the_cap_with_jitter_that_only_shortens():
    for failures in range(40):
        nominal = min(10.0, 0.5 * 2 ** failures)
        assert 0.75 * nominal <= backoff(failures, 0.5, 10.0) <= nominal
    assert backoff(0, 5.0, 1.0) >= 0.75 * 5.0  # a cap below the first delay: the first delay


class Fake:
    """connect/serve/close for keep_connected, failing as scripted."""

    def __init__(self, stopping, script):
        self.stopping, self.script = stopping, list(script)
        self.calls, self.up, self.failures_seen = [], False, []

    def connect(self):
        self.calls.append("connect")
        step = self.script.pop(0)
        if step == "refused":
            raise redis.ConnectionError("refused")
        if step == "bug":
            raise ValueError("a bug")
        self.up = True

    def serve(self):
        self.calls.append("serve")
        if not self.script or self.script[0] == "stop":
            self.stopping.set()
            return
        raise redis.TimeoutError("lost")

    def close(self):
        self.calls.append("close")

    def failed(self, exc):
        self.failures_seen.append(type(exc).__name__)


def run(fake):
    keep_connected(name="test", log=log, stopping=fake.stopping, connect=fake.connect, serve=fake.serve,
                   close=fake.close, is_up=lambda: fake.up, failed=fake.failed, reconnect_min=0.5, reconnect_max=10)


def test_keep_connected_reconnects_with_growing_delays_reset_once_the_connection_was_up(monkeypatch):
    delays = []
    monkeypatch.setattr(redis_common, "backoff", lambda failures, low, cap: delays.append(failures) or 0.0)
    fake = Fake(gevent.event.Event(), ["refused", "refused", "refused", "ok", "refused", "ok", "stop"])

    def is_up_then_down():  # "up" only until the next failure is reported
        up, fake.up = fake.up, False
        return up

    keep_connected(name="test", log=log, stopping=fake.stopping, connect=fake.connect, serve=fake.serve,
                   close=fake.close, is_up=is_up_then_down, failed=fake.failed, reconnect_min=0.5, reconnect_max=10)
    assert fake.failures_seen == ["ConnectionError"] * 3 + ["TimeoutError", "ConnectionError"]
    assert delays == [0, 1, 2, 0, 1]  # the failure after being up starts over
    assert fake.calls.count("close") == fake.calls.count("connect") == 6  # one connection at a time


def test_keep_connected_lets_a_bug_through_after_closing(monkeypatch):
    monkeypatch.setattr(redis_common, "backoff", lambda *args: 0.0)
    fake = Fake(gevent.event.Event(), ["refused", "bug"])
    with pytest.raises(ValueError):
        run(fake)
    assert fake.calls == ["connect", "close", "connect", "close"]


def test_keep_connected_returns_at_once_when_stopped_during_a_failure():
    stopping = gevent.event.Event()
    fake = Fake(stopping, ["refused"])
    fake.failed = lambda exc: pytest.fail("a failure while stopping is not reported")
    original = fake.connect

    def connect():
        stopping.set()
        original()

    fake.connect = connect
    run(fake)
    assert fake.calls == ["connect", "close"]


# -- reading a subscription ------------------------------------------------------------------------

class FakeSubscription:
    """A subscribed connection: replies queued in advance; answers PINGs when ``answers``."""

    def __init__(self, replies=(), answers=True):
        self.replies, self.answers, self.sent = list(replies), answers, []

    def can_read(self, timeout):
        if not self.replies:
            gevent.sleep(min(timeout, 0.01))
        return bool(self.replies)

    def read_response(self, push_request=False):
        return self.replies.pop(0)

    def send_command(self, *args):
        self.sent.append(args)
        if self.answers:
            self.replies.append([b"pong", b"relay-health"])


def test_read_subscribed_hands_over_every_reply_and_pings_when_silent():
    stopping, got = gevent.event.Event(), []
    conn = FakeSubscription([[b"subscribe", b"c", 1], [b"message", b"c", b"hello"]])
    reader = gevent.spawn(read_subscribed, conn, stopping, 0.05, got.append)
    wait_until(lambda: len(conn.sent) >= 3, 5, message="PINGs on a silent connection")
    stopping.set()
    reader.get(timeout=5)  # returns without raising: every PING was answered
    assert got[:2] == [[b"subscribe", b"c", 1], [b"message", b"c", b"hello"]]
    assert set(map(tuple, got[2:])) == {(b"pong", b"relay-health")}
    assert set(conn.sent) == {("PING", "relay-health")}


def test_read_subscribed_calls_a_connection_dead_when_a_ping_is_unanswered():
    conn = FakeSubscription(answers=False)
    started = time.monotonic()
    with pytest.raises(LinkDead, match="no answer to PING within 0.05s"):
        read_subscribed(conn, gevent.event.Event(), 0.05, lambda reply: None)
    assert conn.sent == [("PING", "relay-health")] and time.monotonic() - started < 2


def test_read_subscribed_on_a_real_redis(redis_server, names):
    conn = make_connection(redis_server.url, f"{names}-sub", connect_timeout=2, read_timeout=2)
    conn.connect()
    conn.send_command("SUBSCRIBE", f"{names}:c")
    stopping, got, publisher = gevent.event.Event(), [], redis_server.client()
    started = time.monotonic()

    def handle(reply):  # runs in this thread: the test process is not monkey-patched
        got.append(reply)
        if reply[0] == b"subscribe":
            assert any(c["name"] == f"{names}-sub" for c in publisher.client_list())
            publisher.publish(f"{names}:c", b"hi")
        if [b"pong", b"relay-health"] in got or time.monotonic() - started > 5:
            stopping.set()

    try:
        read_subscribed(conn, stopping, 0.1, handle)  # silence after the message: a PING, answered
    finally:
        conn.disconnect()
    assert got[:2] == [[b"subscribe", f"{names}:c".encode(), 1], [b"message", f"{names}:c".encode(), b"hi"]]
    assert got[2] == [b"pong", b"relay-health"]
