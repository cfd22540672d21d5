"""The Redis source against a real redis-server, with relay under gunicorn's gevent worker.

Messages are published with redis-py and read back as Server-Sent Events over HTTP. The numbers
in the section titles are the points of the Redis source issue each test proves.
"""

from __future__ import annotations

import json
import time

import gevent.event
import pytest
from redis_support import require_own_server

from plugins.redis_source.link import Link
from plugins.redis_source.settings import SECTION, SECTION_SCHEMA, RedisSettings
from relay import create_app
from relay.config import ConfigError
from relay.testing import free_port, wait_until

FAST = {"reconnect_min": 0.05, "reconnect_max": 0.5, "health_interval": 1.0}


def envelope(event, data=None, **extra) -> str:
    return json.dumps({"event": event, "data": data, **extra})


def source_state(server) -> dict:
    return server.health()["components"].get("source:redis", {})


def wait_state(server, state: str, timeout: float = 10.0) -> dict:
    return wait_until(lambda: source_state(server).get("state") == state and source_state(server),
                      timeout, message=f"source:redis {state}")


def start_relay(factory, redis_server, env=None, workers=1, core=None, **settings):
    """A relay whose Redis source reads ``settings`` (``core``: top-level keys); returns once it is up."""
    config = {**(core or {}), "sources": {"redis": {"url": redis_server.url, **FAST, **settings}}}
    server = factory(config, env=env, workers=workers)
    wait_state(server, "up")
    return server


def redis_backbone(redis_server, names) -> dict:
    """Top-level settings for the Redis backbone, its keys under this test's prefix."""
    return {"backbone": redis_server.url, "backbones": {"redis": {"prefix": f"{names}relay:"}}}


def counters(server, name: str) -> dict:
    """A counter's values from /healthz, keyed by their reason label (else their link label)."""
    rows = server.health()["counters"].get(name, [])
    return {row.get("reason", row.get("link")): row["count"] for row in rows}


# --------------------------------------------------------------------------------------------
# 1, 2. Configuration, envelope and raw formats
# --------------------------------------------------------------------------------------------

def test_done_when_env_configured_relay_delivers_within_a_second(relay_server_factory, redis_server, names):
    emotes = f"{names}emotes"
    server = relay_server_factory(env={"RELAY_REDIS_URL": redis_server.url, "RELAY_REDIS_CHANNELS": emotes})
    wait_state(server, "up")
    with server.sse("/events/demo") as stream:
        stream.read_some(1)  # the retry frame: the stream is subscribed
        started = time.monotonic()
        receivers = redis_server.client().publish(
            emotes, '{"event":"emote","data":{"emote":"dolphin"},"channel":"demo"}')
        event = stream.next_event(1.0)
        latency = time.monotonic() - started
    assert receivers == 1  # one worker, one subscription
    assert (event.event, event.json()) == ("emote", {"emote": "dolphin"})
    assert latency < 1.0, f"took {latency:.3f}s"


def test_envelope_channel_else_redis_channel_else_mapping_and_envelope_id(relay_server_factory, redis_server,
                                                                          names):
    plain, mapped = f"{names}plain", f"{names}mapped"
    server = start_relay(relay_server_factory, redis_server, channels=[plain, mapped],
                         channel_map={mapped: f"{names}-room"})
    r = redis_server.client()
    with server.sse(f"/events?channel={plain}&channel={names}-room&channel={names}-named") as stream:
        stream.read_some(1)
        r.publish(plain, envelope("a", 1))
        r.publish(mapped, envelope("b", 2))
        r.publish(mapped, envelope("c", 3, channel=f"{names}-named", id="order-7"))
        events = stream.events(3, 5)
    assert [(e.event, e.data) for e in events] == [("a", "1"), ("b", "2"), ("c", "3")]
    assert events[2].id == "order-7"  # an envelope's own id is kept
    history = server.health()["backbone"]
    assert history["channels"] == 3  # plain, the mapped room and the envelope's channel


def test_raw_format_takes_the_payload_as_data_under_the_configured_event_name(relay_server_factory,
                                                                             redis_server, names):
    server = start_relay(relay_server_factory, redis_server, channels=[f"{names}raw"], format="raw",
                         event_name="tick")
    r = redis_server.client()
    with server.sse(f"/events/{names}raw") as stream:
        stream.read_some(1)
        r.publish(f"{names}raw", '{"event": "not parsed"}')
        r.publish(f"{names}raw", "two\nlines ü")
        first, second = stream.events(2, 5)
    assert (first.event, first.data) == ("tick", '{"event": "not parsed"}')
    assert (second.event, second.data) == ("tick", "two\nlines ü")


def test_patterns_from_env_and_config_with_a_mapping_by_pattern(relay_server_factory, redis_server, names):
    env = {"RELAY_REDIS_CHANNELS": f"{names}exact,{names}room:*"}
    server = start_relay(relay_server_factory, redis_server, env=env, patterns=[f"{names}user.?"],
                         channel_map={f"{names}room:*": f"{names}-rooms"})
    r = redis_server.client()
    info = [c for c in r.client_list() if c["name"].endswith(":pubsub")]
    assert [(c["sub"], c["psub"]) for c in info] == [("1", "2")]  # one SUBSCRIBE, two PSUBSCRIBEs
    with server.sse(f"/events?channel={names}-rooms&channel={names}user.1&channel={names}exact") as stream:
        stream.read_some(1)
        r.publish(f"{names}room:1", envelope("in-room", 1))
        r.publish(f"{names}room", envelope("no-match", 0))  # the pattern needs the colon
        r.publish(f"{names}user.1", envelope("user", 2))
        r.publish(f"{names}user.12", envelope("no-match", 0))  # ? is exactly one character
        r.publish(f"{names}room:".encode() + b"\xff", envelope("bad-channel-name", 0))  # matched, not UTF-8
        r.publish(f"{names}exact", envelope("exact", 3))
        events = stream.events(3, 5)
        assert stream.no_event_within(0.3)
    assert [(e.event, e.data) for e in events] == [("in-room", "1"), ("user", "2"), ("exact", "3")]
    assert counters(server, "rejected") == {"not_utf8": 1}


# --------------------------------------------------------------------------------------------
# 3. Bad messages: counted, logged with channel and excerpt, skipped
# --------------------------------------------------------------------------------------------

def test_bad_messages_between_good_ones_are_counted_logged_and_skipped(relay_server_factory, redis_server, names):
    channel = f"{names}mixed"
    server = start_relay(relay_server_factory, redis_server, channels=[channel], max_size=1024)
    r = redis_server.client()
    oversized = envelope("x", "y" * 5000).encode()
    bad = [
        b"not json at all",                                   # not_json
        b"[1, 2, 3]",                                         # wrong_shape: not an object
        envelope("x", 1, extra="field").encode(),             # wrong_shape: unknown field
        json.dumps({"data": 1}).encode(),                     # wrong_shape: no event
        oversized,                                            # too_large
        b'{"event": "x", "data": "\xff\xfe"}',                # not_utf8
        envelope("bad\nname", 1).encode(),                    # invalid_field: CR/LF in event
        b'{"event": "x", "data": NaN}',                       # not_json: NaN is not JSON
    ]
    with server.sse(f"/events/{channel}") as stream:
        stream.read_some(1)
        r.publish(channel, envelope("good", 1))
        for payload in bad:
            r.publish(channel, payload)
        r.publish(channel, envelope("good", 2))
        events = stream.events(2, 5)
        assert stream.no_event_within(0.3)
    assert [e.data for e in events] == ["1", "2"]
    assert counters(server, "rejected") == {"not_json": 2, "wrong_shape": 3, "too_large": 1, "not_utf8": 1,
                                            "invalid_field": 1}
    assert source_state(server)["state"] == "up"  # nothing reconnected
    log = server.log()
    assert f"rejected message from redis channel '{channel}': not_json" in log
    assert "'not json at all'" in log  # the excerpt
    too_large = next(line for line in log.splitlines() if "too_large" in line)
    assert f"… ({len(oversized)} characters)" in too_large and len(too_large) < 600  # bounded excerpt


# --------------------------------------------------------------------------------------------
# 4. Streams: entry ids are event ids; resume from Redis across restarts, on any worker
# --------------------------------------------------------------------------------------------

def test_stream_entries_arrive_with_their_entry_id_and_bad_entries_are_skipped(relay_server_factory,
                                                                               redis_server, names):
    stream_key = f"{names}orders"
    server = start_relay(relay_server_factory, redis_server, streams=[stream_key])
    r = redis_server.client()
    with server.sse(f"/events?channel={stream_key}&channel={names}-shop") as stream:
        stream.read_some(1)
        first = r.xadd(stream_key, {"payload": envelope("order", {"n": 1})}).decode()
        r.xadd(stream_key, {"other": "field"})  # no payload field
        r.xadd(stream_key, {"payload": "{oops"})  # not JSON
        second = r.xadd(stream_key, {"payload": envelope("order", {"n": 2}, channel=f"{names}-shop", id="x")})
        events = stream.events(2, 5)
    assert [(e.id, e.json()) for e in events] == [(first, {"n": 1}), (second.decode(), {"n": 2})]
    assert counters(server, "rejected") == {"wrong_shape": 1, "not_json": 1}
    assert f"rejected message from redis stream '{stream_key}' entry" in server.log()


def test_streams_resume_from_redis_across_a_relay_restart(relay_server_factory, redis_server, names):
    key = f"{names}feed"
    server = start_relay(relay_server_factory, redis_server, streams=[key])
    r = redis_server.client()
    with server.sse(f"/events/{key}") as stream:
        stream.read_some(1)
        for n in (1, 2):
            r.xadd(key, {"payload": envelope("n", n)})
        seen = stream.events(2, 5)
    server.stop()
    added_while_down = [r.xadd(key, {"payload": envelope("n", n)}).decode() for n in (3, 4)]
    server.start()
    # The new process has an empty history: the resume is answered from Redis (XREVRANGE).
    with server.sse(f"/events/{key}", headers={"Last-Event-ID": seen[1].id}) as stream:
        replayed = stream.events(2, 5)
        wait_state(server, "up")
        live_id = r.xadd(key, {"payload": envelope("n", 5)}).decode()
        live = stream.next_event(5)
        assert stream.no_event_within(0.3)  # nothing twice
    assert [(e.id, e.data) for e in replayed] == list(zip(added_while_down, ["3", "4"]))
    assert (live.id, live.data) == (live_id, "5")
    with server.sse(f"/events/{key}", headers={"Last-Event-ID": seen[0].id}) as stream:
        assert [e.data for e in stream.events(4, 5)] == ["2", "3", "4", "5"]


def test_streams_resume_on_another_relay_that_never_saw_the_entries(relay_server_factory, redis_server, names):
    # "Any worker": a browser may come back to a worker (here a whole relay) other than the one
    # it left, started after the entries were read, whose history does not know its id.
    key = f"{names}feed"
    first = start_relay(relay_server_factory, redis_server, streams=[key])
    r = redis_server.client()
    with first.sse(f"/events/{key}") as stream:
        stream.read_some(1)
        ids = [r.xadd(key, {"payload": envelope("n", n)}).decode() for n in range(6)]
        assert [e.id for e in stream.events(6, 5)] == ids
    second = start_relay(relay_server_factory, redis_server, streams=[key])
    with second.sse(f"/events/{key}", headers={"Last-Event-ID": ids[2]}) as stream:
        assert [(e.id, e.data) for e in stream.events(3, 5)] == list(zip(ids[3:], ["3", "4", "5"]))
        live = r.xadd(key, {"payload": envelope("n", 6)}).decode()
        assert stream.next_event(5).id == live
        assert stream.no_event_within(0.2)
    assert counters(second, "sse_missed") == {}


def test_streams_resume_across_a_relay_restart_with_the_redis_backbone(relay_server_factory, redis_server, names):
    key = f"{names}feed"
    server = start_relay(relay_server_factory, redis_server, streams=[key], core=redis_backbone(redis_server, names))
    r = redis_server.client()
    with server.sse(f"/events/{key}") as stream:
        stream.read_some(1)
        last = r.xadd(key, {"payload": envelope("n", 1)}).decode()
        assert stream.next_event(5).id == last
    server.stop()
    r.xadd(key, {"payload": envelope("n", 2)})
    server.start()
    with server.sse(f"/events/{key}", headers={"Last-Event-ID": last}) as stream:
        assert stream.next_event(5).data == "2"


def test_http_events_resume_across_a_restart_with_the_redis_backbone_and_streams(relay_server_factory,
                                                                                 redis_server, names):
    # Both the backbone and this source use stream entry ids, so an HTTP event's id looks like ours.
    server = start_relay(relay_server_factory, redis_server, streams=[f"{names}feed"],
                         core=redis_backbone(redis_server, names))
    news = f"{names}news"
    with server.sse(f"/events/{news}") as stream:
        stream.read_some(1)
        last = server.publish(news, "n", 1)["id"]
        assert stream.next_event(5).id == last
    server.restart()
    wait_state(server, "up")
    server.publish(news, "n", 2)  # after the restart, before the browser is back
    with server.sse(f"/events/{news}", headers={"Last-Event-ID": last}) as stream:
        assert stream.next_event(2).data == "2"


def test_resume_after_a_trim_says_what_was_missed(relay_server_factory, redis_server, names):
    key, other = f"{names}feed", f"{names}other"
    r = redis_server.client()
    ids = [r.xadd(key, {"payload": envelope("n", n)}).decode() for n in range(6)]
    r.xadd(other, {"payload": envelope("n", "other")})  # another stream, another channel
    assert r.xtrim(key, maxlen=2, approximate=False) == 4  # ids[0..3] are gone
    server = start_relay(relay_server_factory, redis_server, streams=[key, other], core={"history_size": 10})
    with server.sse(f"/events/{key}", headers={"Last-Event-ID": ids[1]}) as stream:
        missed, *rest = stream.events(3, 5)
    assert missed.event == "relay-missed" and missed.json()["reason"] == "evicted"
    assert [e.data for e in rest] == ["4", "5"]
    # An id after the trim point resumes completely, without a relay-missed event.
    with server.sse(f"/events/{key}", headers={"Last-Event-ID": ids[4]}) as stream:
        assert stream.next_event(5).data == "5"
        assert stream.no_event_within(0.2)


def test_resume_keeps_the_newest_events_when_more_than_the_history_size_match(relay_server_factory,
                                                                              redis_server, names):
    key = f"{names}feed"
    r = redis_server.client()
    ids = [r.xadd(key, {"payload": envelope("n", n)}).decode() for n in range(8)]
    server = start_relay(relay_server_factory, redis_server, streams=[key], core={"history_size": 3})
    with server.sse(f"/events/{key}", headers={"Last-Event-ID": ids[0]}) as stream:
        missed, *rest = stream.events(4, 5)
    assert missed.event == "relay-missed" and missed.json()["reason"] == "evicted"
    assert [e.data for e in rest] == ["5", "6", "7"]


# --------------------------------------------------------------------------------------------
# 5. One connection per worker
# --------------------------------------------------------------------------------------------

def test_one_pubsub_and_one_streams_connection_for_200_sse_clients(relay_server_factory, redis_server, names):
    channel, key = f"{names}many", f"{names}manyfeed"
    client_name = f"relay{names}"
    server = start_relay(relay_server_factory, redis_server, channels=[channel], streams=[key],
                         client_name=client_name, env={"RELAY_SSE_MAX_CONNECTIONS_PER_ADDRESS": "0"})
    r = redis_server.client()
    streams = [server.sse(f"/events?channel={channel}&channel={key}") for _ in range(200)]
    try:
        wait_until(lambda: server.health()["components"]["sse"]["clients"] == 200, 10, message="200 clients")
        clients = r.client_list()
        relay_connections = sorted(c["name"].rsplit(":", 1)[1] for c in clients
                                   if c["name"].startswith(f"{client_name}:"))
        assert relay_connections == ["pubsub", "streams"]
        if redis_server.controllable:  # our own server: nobody else is connected
            assert len(clients) == 2 + 1  # relay's two and this test's own
        r.publish(channel, envelope("hello", 1))
        entry = r.xadd(key, {"payload": envelope("entry", 2)}).decode()
        for stream in streams:  # (pub/sub and Streams are two connections: no order between them)
            events = {e.event: e for e in stream.events(2, 5)}
            assert sorted(events) == ["entry", "hello"] and events["entry"].id == entry
        assert len(r.client_list()) == len(clients)  # delivering opened nothing new
    finally:
        for stream in streams:
            stream.close()


# --------------------------------------------------------------------------------------------
# 6. Faults: Redis restarts, dropped and half-open connections, Redis absent at start-up
# --------------------------------------------------------------------------------------------

def test_redis_killed_and_restarted_mid_stream_then_later_messages_arrive(relay_server_factory, redis_server,
                                                                        names):
    require_own_server(redis_server)
    channel, key = f"{names}live", f"{names}livefeed"
    server = start_relay(relay_server_factory, redis_server, channels=[channel], streams=[key])
    with server.sse(f"/events?channel={channel}&channel={key}") as stream:
        stream.read_some(1)
        r = redis_server.client()
        r.publish(channel, envelope("before", 1))
        r.xadd(key, {"payload": envelope("before", 2)})
        assert sorted(e.data for e in stream.events(2, 5)) == ["1", "2"]

        redis_server.kill()
        wait_state(server, "down", 5)
        wait_until(lambda: "pubsub: ConnectionError" in source_state(server)["detail"]
                   and "streams: ConnectionError" in source_state(server)["detail"], 5, message="both down")
        assert server.health()["status"] == "degraded"
        started = time.monotonic()  # a resume now cannot read Redis: it says so at once
        with server.sse(f"/events/{key}", headers={"Last-Event-ID": "1-0"}) as resuming:
            missed = resuming.next_event(2)
        assert (missed.event, missed.json()["reason"]) == ("relay-missed", "unavailable")
        assert time.monotonic() - started < 1
        redis_server.start()
        wait_state(server, "up", 5)

        r = redis_server.client()
        assert r.publish(channel, envelope("after", 3)) == 1  # resubscribed
        r.xadd(key, {"payload": envelope("after", 4)})
        # Pub/sub and Streams are two connections: their relative order is not defined.
        assert sorted((e.event, e.data) for e in stream.events(2, 5)) == [("after", "3"), ("after", "4")]
    assert counters(server, "source_connection_failures")["pubsub"] >= 1


def test_dropped_connections_reconnect_and_streams_lose_nothing(relay_server_factory, redis_server, names):
    channel, key = f"{names}drop", f"{names}dropfeed"
    client_name = f"relay{names}"
    # A slow first reconnect, so entries surely arrive while the Streams connection is gone.
    server = start_relay(relay_server_factory, redis_server, channels=[channel], streams=[key],
                         client_name=client_name, reconnect_min=1.0, reconnect_max=2.0)
    r = redis_server.client()
    with server.sse(f"/events?channel={channel}&channel={key}") as stream:
        stream.read_some(1)
        for c in r.client_list():
            if c["name"].startswith(f"{client_name}:"):
                r.client_kill_filter(_id=c["id"])
        ids = [r.xadd(key, {"payload": envelope("while-away", n)}).decode() for n in range(3)]
        assert r.publish(channel, envelope("lost", 0)) == 0  # nobody subscribed: pub/sub drops it
        wait_state(server, "down", 0.7)
        wait_state(server, "up", 5)
        events = stream.events(3, 5)
        assert [(e.id, e.data) for e in events] == list(zip(ids, ["0", "1", "2"]))
        r.publish(channel, envelope("back", 1))
        assert stream.next_event(5).event == "back"


def test_start_up_with_redis_unreachable_keeps_retrying_then_connects(relay_server_factory, redis_factory, names):
    port = free_port()
    later = redis_factory(port, started=False)  # skips when REDIS_URL names an external server
    config = {"sources": {"redis": {"url": later.url, "channels": [f"{names}c"], "streams": [f"{names}s"],
                                    **FAST}}}
    server = relay_server_factory(config)  # answers /healthz although Redis is absent
    down = wait_state(server, "down", 5)
    assert "Connection refused" in down["detail"] or "Error 111" in down["detail"]
    time.sleep(1.0)  # several failed attempts later, the worker is still the same one, still serving
    assert server.process.poll() is None and source_state(server)["state"] == "down"
    assert counters(server, "source_connection_failures")["pubsub"] >= 2
    later.start()
    wait_state(server, "up", 5)
    with server.sse(f"/events?channel={names}c&channel={names}s") as stream:
        stream.read_some(1)
        r = later.client()
        r.publish(f"{names}c", envelope("hello", 1))
        r.xadd(f"{names}s", {"payload": envelope("entry", 2)})
        assert sorted(e.event for e in stream.events(2, 5)) == ["entry", "hello"]
    assert "Traceback" not in server.log()


def test_half_open_connection_is_noticed_by_an_unanswered_ping(relay_server_factory, redis_server, names):
    require_own_server(redis_server)
    channel = f"{names}quiet"
    server = start_relay(relay_server_factory, redis_server, channels=[channel], streams=[f"{names}s"],
                         health_interval=0.3)
    redis_server.pause()  # connections stay open, nothing answers
    try:
        wait_state(server, "down", 5)
        wait_until(lambda: "streams connection is down: TimeoutError" in server.log(), 5, message="streams timeout")
    finally:
        redis_server.resume()
    assert "pubsub connection is down: LinkDead: no answer to PING within 0.3s" in server.log()
    wait_state(server, "up", 5)
    with server.sse(f"/events/{channel}") as stream:
        stream.read_some(1)
        redis_server.client().publish(channel, envelope("alive", 1))
        assert stream.next_event(5).event == "alive"


def test_shutdown_is_prompt_when_connected_and_while_retrying(relay_server_factory, redis_server, names):
    require_own_server(redis_server)
    server = start_relay(relay_server_factory, redis_server, channels=[f"{names}c"], streams=[f"{names}s"],
                         reconnect_min=5.0, reconnect_max=5.0)
    # (No SSE client stays connected: a client that keeps its connection open holds gunicorn's
    # graceful shutdown for RELAY_GRACEFUL_TIMEOUT whatever the sources do.)
    started = time.monotonic()
    assert server.stop() == 0
    connected = time.monotonic() - started
    server.start()
    wait_state(server, "up")
    redis_server.kill()
    wait_state(server, "down", 5)  # now waiting 5 s before the next attempt
    started = time.monotonic()
    assert server.stop() == 0
    retrying = time.monotonic() - started
    assert connected < 2 and retrying < 2, (connected, retrying)
    assert server.log().count("source redis is stopped") == 2 and "Traceback" not in server.log()


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

def test_env_channels_with_glob_characters_become_patterns(monkeypatch):
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    monkeypatch.setenv("RELAY_REDIS_URL", "redis://127.0.0.1:1")
    monkeypatch.setenv("RELAY_REDIS_CHANNELS", "emotes, room:*,user.?,[ab]c,emotes")
    monkeypatch.setenv("RELAY_REDIS_STREAMS", "orders")
    config = create_app({"sources": {"redis": {"patterns": ["x*"]}}}).extensions["relay"].config
    settings = RedisSettings.from_section(config.section(SECTION))
    assert settings.channels == ("emotes",)
    assert settings.patterns == ("room:*", "user.?", "[ab]c", "x*")
    assert settings.streams == ("orders",)


@pytest.mark.parametrize("table, expected", [
    ({"format": "json"}, "sources.redis.format: 'json' is not allowed"),
    ({"url": "http://x"}, "is not a Redis URL"),
    ({"chanels": ["x"]}, "sources.redis.chanels: unknown key (did you mean 'channels'?)"),
    ({"channel_map": {"a": "bad\nname"}}, "sources.redis.channel_map: ['a'] = 'bad\\nname'"),
    ({"event_name": ""}, "sources.redis.event_name: event: must not be empty"),
    ({"client_name": "has space"}, "sources.redis.client_name"),
])
def test_bad_settings_stop_start_up_naming_the_key(monkeypatch, table, expected):
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    with pytest.raises(ConfigError) as info:
        create_app({"sources": {"redis": table}})
    assert expected in str(info.value)


def test_without_a_url_there_is_no_redis_source(relay_server_factory):
    server = relay_server_factory({"sources": {"redis": {"channels": ["emotes"]}}})
    assert "source:redis" not in server.health()["components"]
    assert "names channels or streams but no url" in server.log()


def test_reconnect_delay_doubles_from_reconnect_min_up_to_reconnect_max():
    defaults = {option.name: option.default for option in SECTION_SCHEMA.options}
    settings = RedisSettings.from_section({**defaults, "reconnect_min": 0.5, "reconnect_max": 10.0})
    link = Link(None, settings, gevent.event.Event(), lambda: None)
    for failures in range(10):
        nominal = min(10.0, 0.5 * 2 ** failures)  # 0.5, 1, 2, 4, 8, 10, 10, …
        assert 0.75 * nominal <= link.backoff(failures) <= nominal  # jitter only shortens it
