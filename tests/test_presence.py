"""Presence: subscriber counts per channel (``GET /channels/<channel>``, ``GET /channels``) and the
``presence=1`` stream option, on one worker and across instances sharing a Redis backbone."""

import itertools
import json
import socket
import struct
import time
import uuid

import jwt
import pytest
from redis_support import require_own_server

from relay.testing import SSEClient, http_request, wait_until

KEY = "presence-test-key-of-at-least-32-bytes!"


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def get(server_or_url, path: str, headers: dict | None = None) -> tuple[int, dict, object]:
    url = server_or_url if isinstance(server_or_url, str) else server_or_url.url
    status, response_headers, body = http_request(url + path, headers=headers)
    return status, response_headers, json.loads(body)


def subscribers(server, channel: str) -> int:
    status, _, body = get(server, f"/channels/{channel}")
    assert status == 200, body
    assert body["channel"] == channel
    return body["subscribers"]


def listed(server, prefix: str, headers: dict | None = None) -> dict[str, int]:
    status, _, body = get(server, "/channels", headers)
    assert status == 200, body
    names = [row["channel"] for row in body["channels"]]
    assert names == sorted(names), "GET /channels is sorted by name"
    return {row["channel"]: row["subscribers"] for row in body["channels"] if row["channel"].startswith(prefix)}


def hang_up_abruptly(stream: SSEClient) -> None:
    """Close with a TCP reset, without a FIN: a client that just disappears."""
    stream._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.close()


def raw_body(stream: SSEClient, until: bytes, timeout: float = 5.0) -> bytes:
    """The stream's body bytes, as sent, up to and including ``until``."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while until not in b"".join(out):
        assert time.monotonic() < deadline, f"no {until!r} in {b''.join(out)!r}"
        stream.read_body_bytes_into(out, 0.2)
    return b"".join(out)


def next_presence(stream: SSEClient, timeout: float = 5.0) -> dict:
    while True:
        event = stream.next_event(timeout)
        if event.event == "relay-presence":
            return event.json()


# --------------------------------------------------------------------------------------------
# One worker (in-memory backbone)
# --------------------------------------------------------------------------------------------

def test_counts_go_up_and_down_as_streams_open_and_close(shared_relay_server):
    server = shared_relay_server
    room, other = unique("room"), unique("other")
    prefix = room.split("-")[0]
    assert subscribers(server, room) == 0
    assert room not in listed(server, prefix)

    streams = [server.sse(f"/events/{room}") for _ in range(3)]
    both = server.sse(f"/events?channel={room}&channel={other}")
    assert subscribers(server, room) == 4
    assert subscribers(server, other) == 1
    assert listed(server, prefix) == {room: 4}
    assert listed(server, "other").get(other) == 1

    streams[0].close()  # an orderly close
    hang_up_abruptly(streams[1])  # a client that just goes away
    wait_until(lambda: subscribers(server, room) == 2, 5, message="two streams left")
    both.close()
    wait_until(lambda: subscribers(server, other) == 0, 5, message="the two-channel stream gone")
    assert subscribers(server, room) == 1
    streams[2].close()
    wait_until(lambda: subscribers(server, room) == 0, 5, message="no streams left")
    assert room not in listed(server, prefix), "channels without subscribers are not listed"
    assert other not in listed(server, "other")


def test_bad_channel_names_and_presence_values_are_refused(shared_relay_server):
    status, _, body = get(shared_relay_server, "/channels/a%0Ab")
    assert status == 400 and body["error"] == "invalid_request" and "channel" in body["message"]
    stream = shared_relay_server.sse("/events/x?presence=yes")
    try:
        assert stream.status == 400
        assert "presence" in json.loads(stream.body())["message"]
    finally:
        stream.close()


def test_presence_stream_gets_the_count_then_its_changes_without_ids(shared_relay_server):
    server = shared_relay_server
    room = unique("lobby")
    first = server.sse(f"/events/{room}?presence=1")
    try:
        # Sent as the stream opens, straight after retry:, with no id: line.
        body = raw_body(first, b"}\n\n", 5)
        assert body == b'retry: 3000\n\nevent: relay-presence\ndata: {"channel":"%s","subscribers":1}\n\n' % (
            room.encode())
    finally:
        first.close()
    wait_until(lambda: subscribers(server, room) == 0, 5, message="the first stream gone")

    watcher = server.sse(f"/events/{room}?presence=1")
    try:
        assert next_presence(watcher) == {"channel": room, "subscribers": 1}
        joined = server.sse(f"/events?channel={room}&channel={unique('x')}")
        assert next_presence(watcher, 3) == {"channel": room, "subscribers": 2}
        joined.close()
        assert next_presence(watcher, 3) == {"channel": room, "subscribers": 1}
        assert watcher.last_event_id is None, "relay-presence events carry no id"
        assert watcher.no_event_within(1.5), "nothing more while the count stays the same"
    finally:
        watcher.close()


def test_presence_events_name_each_channel_and_come_at_most_once_a_second(shared_relay_server):
    server = shared_relay_server
    one, two = unique("one"), unique("two")
    watcher = server.sse(f"/events?channel={one}&channel={two}&presence=1")
    try:
        assert [e.json() for e in watcher.events(2)] == [{"channel": one, "subscribers": 1},
                                                         {"channel": two, "subscribers": 1}]
        # A stream joins the first channel every 0.15 s for 3 s: its count changes 20 times.
        arrivals, joined = [], []
        deadline = time.monotonic() + 3.0
        try:
            while time.monotonic() < deadline:
                joined.append(server.sse(f"/events/{one}"))
                watcher.read_some(0.15)
                while watcher._ready:
                    event = watcher._ready.pop(0)
                    assert event.event == "relay-presence" and event.json()["channel"] == one, event
                    arrivals.append((time.monotonic(), event.json()["subscribers"]))
        finally:
            for stream in joined:
                stream.close()
        assert 2 <= len(arrivals) <= 4, arrivals
        counts = [count for _, count in arrivals]
        assert counts == sorted(counts) and len(set(counts)) == len(counts), counts
        gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(arrivals)]
        assert all(gap > 0.8 for gap in gaps), f"relay-presence events {gaps} s apart"
    finally:
        watcher.close()


def test_presence_events_do_not_disturb_resume(shared_relay_server):
    server = shared_relay_server
    room = unique("resume")
    ids = [server.publish(room, "n", n)["id"] for n in range(3)]
    stream = server.sse(f"/events/{room}?presence=1", headers={"Last-Event-ID": ids[0]})
    try:
        events = stream.events(3)
        assert [(e.event, e.data) for e in events] == [
            ("relay-presence", json.dumps({"channel": room, "subscribers": 1}, separators=(",", ":"))),
            ("n", "1"), ("n", "2")]
        assert stream.last_event_id == ids[2]
        other = server.sse(f"/events/{room}")  # a count change: a relay-presence event after event 2
        assert next_presence(stream) == {"channel": room, "subscribers": 2}
        assert stream.last_event_id == ids[2], "a relay-presence event must not move Last-Event-ID"
        other.close()
        last = stream.last_event_id
    finally:
        stream.close()
    later = server.publish(room, "n", 3)["id"]
    resumed = server.sse(f"/events/{room}?presence=1", headers={"Last-Event-ID": last})
    try:
        presence, event = resumed.events(2)
        assert presence.event == "relay-presence"
        assert (event.event, event.data, event.id) == ("n", "3", later), "resumed after the last real event"
        assert resumed.no_event_within(0.5), "nothing twice"
    finally:
        resumed.close()


# --------------------------------------------------------------------------------------------
# Authorisation
# --------------------------------------------------------------------------------------------

def token(subscribe: list[str]) -> str:
    return jwt.encode({"relay": {"subscribe": subscribe}, "exp": int(time.time()) + 600}, KEY, algorithm="HS256")


def test_channels_honour_subscribe_authorisation(relay_server_factory):
    server = relay_server_factory({"auth": {"jwt_key": KEY}})
    everything = {"Authorization": f"Bearer {token(['*'])}"}
    only_a = {"Authorization": f"Bearer {token(['a*'])}"}
    streams = [server.sse(f"/events/{channel}", headers=everything) for channel in ("a1", "a2", "a2", "b1")]
    try:
        assert all(stream.status == 200 for stream in streams)
        assert listed(server, "", everything) == {"a1": 1, "a2": 2, "b1": 1}
        assert listed(server, "", only_a) == {"a1": 1, "a2": 2}, "only the channels the token may subscribe to"
        assert listed(server, "") == {}, "no token: no channel"
        assert get(server, "/channels/a2", only_a)[2] == {"channel": "a2", "subscribers": 2}
        status, _, body = get(server, "/channels/b1", only_a)
        assert status == 403 and body["error"] == "forbidden"
        status, _, body = get(server, "/channels/a1")
        assert status == 401 and body["error"] == "unauthorized"
        status, _, body = get(server, "/channels/a1", {"Authorization": "Bearer not-a-token"})
        assert status == 401
        refused = server.sse("/events/b1?presence=1", headers=only_a)
        assert refused.status == 403, "presence=1 streams are authorised like any stream"
        refused.close()
    finally:
        for stream in streams:
            stream.close()


# --------------------------------------------------------------------------------------------
# Many workers, many instances (Redis backbone)
# --------------------------------------------------------------------------------------------

def redis_config(redis_server, prefix: str) -> dict:
    return {"backbone": redis_server.url, "backbones": {"redis": {"prefix": f"{prefix}:"}},
            "presence": {"ttl": 3.0}}


def streams_on_both_workers(server, channel: str, at_least: int = 2) -> tuple[list[SSEClient], set[str]]:
    streams, pids = [], set()
    while len(streams) < at_least or len(pids) < 2:
        stream = server.sse(f"/events/{channel}")
        assert stream.status == 200
        streams.append(stream)
        pids.add(stream.response_headers["x-relay-worker"])
        assert len(streams) <= 40, f"streams landed on worker(s) {pids} only"
    return streams, pids


def every_worker_says(server, channel: str, expected: int, pids: set[str], timeout: float) -> None:
    """Ask until each of ``pids`` (the instance's workers) has answered ``expected``."""
    agreed: set[str] = set()

    def check():
        status, headers, body = get(server, f"/channels/{channel}")
        assert status == 200, body
        pid = headers["X-Relay-Worker"]
        if body["subscribers"] == expected:
            agreed.add(pid)
        else:
            agreed.discard(pid)
        return agreed >= pids

    wait_until(check, timeout, 0.02, message=f"every worker of {server.url} to count {expected} on {channel}")


@pytest.mark.timeout(90)
def test_two_instances_of_two_workers_count_every_stream(relay_server_factory, redis_server, names):
    config = redis_config(redis_server, names)
    a = relay_server_factory(config, workers=2)
    b = relay_server_factory(config, workers=2)
    room = unique("room")
    streams = []
    try:
        on_a, pids_a = streams_on_both_workers(a, room)
        on_b, pids_b = streams_on_both_workers(b, room)
        streams = on_a + on_b
        total = len(streams)
        every_worker_says(a, room, total, pids_a, 5)
        every_worker_says(b, room, total, pids_b, 5)
        assert listed(a, "room").get(room) == total

        # A presence stream on a hears of a stream that joins on b, and of it leaving.
        watcher = a.sse(f"/events/{room}?presence=1")
        streams.append(watcher)
        assert next_presence(watcher)["subscribers"] in (total, total + 1)  # itself: at once or within a tick
        joined = b.sse(f"/events/{room}")
        wait_until(lambda: next_presence(watcher)["subscribers"] == total + 2, 6, message="the join on b")
        joined.close()
        wait_until(lambda: next_presence(watcher)["subscribers"] == total + 1, 6, message="the leave on b")

        # A killed instance's counts go when their TTL (3 s) runs out; no worker stops to remove them.
        for stream in on_b:
            stream.close()  # (the test's sockets; b never notices, it is killed first)
        b.kill()
        killed = time.monotonic()
        every_worker_says(a, room, len(on_a) + 1, pids_a, 8)
        assert time.monotonic() - killed < 3.0 + 3.0, "gone within the TTL and a tick or two"
        assert time.monotonic() - killed > 1.0, "the killed workers' counts outlived them until their TTL"
    finally:
        for stream in streams:
            stream.close()


def test_a_worker_that_stops_withdraws_its_counts_at_once(relay_server_factory, redis_server, names):
    config = redis_config(redis_server, names)
    config["presence"]["ttl"] = 30.0  # so only the withdrawal can explain a prompt drop
    a = relay_server_factory(config)
    b = relay_server_factory(config)
    room = unique("room")
    stream = b.sse(f"/events/{room}")
    try:
        wait_until(lambda: subscribers(a, room) == 1, 5, message="a counts b's stream")
        client = redis_server.client()
        assert client.zcard(f"{names}:{{presence}}:workers") == 2
        b.stop()
        wait_until(lambda: subscribers(a, room) == 0, 5, message="b's count withdrawn when it stopped")
        assert client.zcard(f"{names}:{{presence}}:workers") == 1
    finally:
        stream.close()


def test_counts_come_back_after_redis_lost_them(relay_server_factory, redis_server, names):
    require_own_server(redis_server)
    config = redis_config(redis_server, names)
    a = relay_server_factory(config)
    b = relay_server_factory(config)
    room = unique("room")
    stream = a.sse(f"/events/{room}")
    try:
        wait_until(lambda: subscribers(b, room) == 1, 5, message="b counts a's stream")
        redis_server.restart()  # an empty Redis: a's hash is gone, and a's count did not change
        time.sleep(3.0 + 1.0)  # past the TTL: b no longer trusts what it read before
        wait_until(lambda: subscribers(b, room) == 1, 8, message="a wrote its whole count again")
        for _ in range(10):  # and it stays
            assert subscribers(b, room) == 1
            time.sleep(0.1)
    finally:
        stream.close()
