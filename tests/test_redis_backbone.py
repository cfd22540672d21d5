"""The Redis backbone: several instances with several gevent workers each, one consistent stream."""

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from plugins.redis_backbone.keys import Layout
from redis_support import RedisServer, require_own_server
from relay.testing import RelayServer, http_request, wait_until


def backbone_config(redis_server, prefix):
    return {"backbone": redis_server.url, "backbones": {"redis": {"prefix": f"{prefix}:", "health_interval": 0.5}}}


@pytest.fixture
def prefix(redis_server):
    return f"bb{id(redis_server) % 100000}"


def open_on_every_worker(servers, path, per_instance=2, attempts=40, **kwargs):
    """Open streams until each instance's workers all serve at least one; returns them all."""
    streams = []
    for server in servers:
        pids = set()
        for _ in range(attempts):
            stream = server.sse(path, **kwargs)
            streams.append(stream)
            pids.add(stream.response_headers["x-relay-worker"])
            if len(pids) == per_instance:
                break
        assert len(pids) == per_instance, f"streams landed on {pids} only"
    return streams


def test_every_client_on_every_worker_sees_every_event_in_order(relay_server_factory, redis_server, prefix):
    config = backbone_config(redis_server, prefix)
    a = relay_server_factory(config, workers=2)
    b = relay_server_factory(config, workers=2)
    streams = open_on_every_worker([a, b], "/events?channel=x&channel=y")
    for stream in streams:
        stream.read_some(1)
    for stream in streams:  # every worker has subscribed: each got at least its retry line
        assert stream.retry == 3000
    # Every worker's subscription is up (each logs it once), not only the ones /healthz reached:
    # a worker still subscribing would miss the first events, with nothing stored to catch up from.
    wait_until(lambda: all(s.log().count("source redis-backbone is up") >= 2 for s in (a, b)), 15,
               message="the subscription of all four workers")
    sent = []
    for i in range(40):
        server, channel = (a, b)[i % 2], "xy"[i % 3 % 2]
        sent.append((channel, i, server.publish(channel, "n", {"i": i, "channel": channel})["id"]))
    for stream in streams:
        got = [(e.json()["channel"], e.json()["i"], e.id) for e in stream.events(40, 15)]
        assert got == sent  # same events, same ids, same order on all four workers
    for stream in streams:
        stream.close()


def test_a_client_moved_to_another_instance_resumes_without_gap(relay_server_factory, redis_server, prefix):
    config = backbone_config(redis_server, prefix)
    a = relay_server_factory(config, workers=2)
    b = relay_server_factory(config, workers=2)
    with a.sse("/events/move") as stream:
        stream.read_some(1)
        ids = [a.publish("move", "n", i)["id"] for i in range(5)]
        seen = stream.events(3, 10)
    assert [e.id for e in seen] == ids[:3]
    ids += [b.publish("move", "n", i)["id"] for i in range(5, 8)]
    with b.sse("/events/move", headers={"Last-Event-ID": seen[-1].id}) as moved:
        assert [e.json() for e in moved.events(5, 10)] == [3, 4, 5, 6, 7]


def test_resume_from_the_streams_after_every_relay_restarted(relay_server_factory, redis_server, prefix):
    server = relay_server_factory(backbone_config(redis_server, prefix), workers=2)
    ids = [server.publish("durable", "n", i)["id"] for i in range(6)]
    server.restart()
    with server.sse("/events/durable", headers={"Last-Event-ID": ids[2]}) as stream:
        events = stream.events(3, 10)
        assert [e.json() for e in events] == [3, 4, 5]
        assert [e.id for e in events] == ids[3:]  # the same ids as when they were published


def test_trimmed_history_is_reported(relay_server_factory, redis_server, prefix):
    config = backbone_config(redis_server, prefix)
    config["backbones"]["redis"]["maxlen"] = 5
    config["history_size"] = 3
    server = relay_server_factory(config)
    ids = [server.publish("trim", "n", i)["id"] for i in range(400)]
    server.restart()
    with server.sse("/events/trim", headers={"Last-Event-ID": ids[0]}) as stream:
        missed = stream.next_event(10)
        assert missed.event == "relay-missed" and missed.json()["reason"] == "evicted"
        rest = [stream.next_event(5).json()]
    assert rest[0] > 1  # the oldest events were trimmed; what is left follows


def test_lost_subscription_catches_up_from_the_streams(relay_server_factory, redis_server, prefix):
    require_own_server(redis_server)
    server = relay_server_factory(backbone_config(redis_server, prefix))
    with server.sse("/events/gap") as stream:
        stream.read_some(1)
        server.publish("gap", "n", 0)
        assert stream.next_event(10).json() == 0
        client = redis_server.client()
        client.client_kill_filter(_type="pubsub")  # the worker's subscription drops
        client.xadd(Layout(f"{prefix}:", 1).of("gap").stream("gap"), {"e": json.dumps({"channel": "gap", "event": "n", "data": 1})},
                    id="*")  # stored while nobody listens (as a relay elsewhere would)
        got = stream.next_event(15)
    assert got.json() == 1
    assert "stored while its subscription was down" in server.log()


def test_redis_down_means_503_and_not_ready_then_recovers(relay_server_factory, redis_server, prefix):
    require_own_server(redis_server)
    server = relay_server_factory(backbone_config(redis_server, prefix))
    redis_server.kill()
    status, headers, body = http_request(f"{server.url}/events/down", "POST", b'{"event":"e"}',
                                         {"Content-Type": "application/json"})
    assert status == 503 and "not published" in json.loads(body)["message"]
    wait_until(lambda: http_request(f"{server.url}/readyz")[0] == 503, 10, message="not ready")
    redis_server.start()
    wait_until(lambda: http_request(f"{server.url}/readyz")[0] == 200, 20, message="ready again")
    with server.sse("/events/down") as stream:
        server.publish("down", "e", "back")
        assert stream.next_event(10).data == "back"


def test_the_backbone_over_a_unix_socket(relay_server_factory):
    # Connections are built by plugins.redis_common, which leaves TCP keepalive off a Unix socket
    # (redis-py refuses the option there).
    # It starts a redis-server of its own (CI installs it) whatever REDIS_URL names.
    directory = Path(tempfile.mkdtemp(prefix="relay-unix-"))  # short: a socket path has a length limit
    socket = directory / "redis.sock"
    server = RedisServer(directory, persistence=("--appendonly", "no", "--unixsocket", str(socket),
                                                 "--unixsocketperm", "700")).start()
    try:
        relay = relay_server_factory({"backbone": f"unix://{socket}",
                                      "backbones": {"redis": {"prefix": "unix:", "health_interval": 0.5}}})
        with relay.sse("/events/unix") as stream:
            stream.read_some(1)
            wait_until(lambda: "source redis-backbone is up" in relay.log(), 15, message="the subscription")
            sent = relay.publish("unix", "n", 1)["id"]
            got = stream.next_event(10)
        assert (got.id, got.json()) == (sent, 1)
        names = {c["name"] for c in server.client().client_list()}
        assert any(name.startswith("relay-backbone-sub-") for name in names)
    finally:
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_publisher_chosen_id_is_kept_and_scoped_to_its_channel(relay_server_factory, redis_server, prefix):
    """The chosen id is the event's id (webhooks, SSE); the SSE id adds the position after ``~``,
    so a resume from it, on another instance, reads the streams from there: the same id chosen
    on another channel neither hides nor moves that channel's events."""
    config = backbone_config(redis_server, prefix)
    a, b = relay_server_factory(config), relay_server_factory(config)
    with a.sse("/events?channel=orders&channel=audit") as stream:
        stream.read_some(1)
        a.publish("orders", "paid", 1, id="order-42")
        a.publish("audit", "seen", 2, id="order-42")  # the same id, another channel
        a.publish("orders", "paid", 3)
        got = [stream.next_event(10) for _ in range(3)]
    assert [(e.event, e.json()) for e in got] == [("paid", 1), ("seen", 2), ("paid", 3)]
    assert got[0].id.startswith("order-42~") and got[1].id.startswith("order-42~") and got[0].id != got[1].id
    assert "~" not in got[2].id
    a.publish("orders", "paid", 4, id="order-43")
    with b.sse("/events?channel=orders&channel=audit", headers={"Last-Event-ID": got[0].id}) as stream:
        resumed = [stream.next_event(10) for _ in range(3)]
    assert [e.json() for e in resumed] == [2, 3, 4]  # after order-42 of orders: its position, not its name
    assert resumed[2].id.startswith("order-43~")
    for reserved in ("1764170537000-0", "kafka:orders:0:5"):
        status, _, body = http_request(f"{a.url}/events/orders", "POST",
                                       json.dumps({"event": "e", "id": reserved}).encode(),
                                       {"Content-Type": "application/json"})
        assert status == 422 and "form of an id relay assigns" in json.loads(body)["message"], reserved


def test_memory_backbone_refuses_several_workers(tmp_path):
    server = RelayServer(workers=2, directory=tmp_path)
    with pytest.raises(RuntimeError, match="'memory' serves a single worker, and 2 workers"):
        server.start()
