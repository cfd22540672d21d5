"""The Redis backbone's publish path (plugins.redis_backbone.ScriptPublisher): its own connections
and a hand-packed EVALSHA. Each 202 names the event its own request stored, however many publish
at once; a Redis that forgot the script, or dropped the connections, still takes the next publish."""

import threading

import pytest

from redis_support import require_own_server
from relay.testing import wait_until


def backbone_config(redis_server, prefix):
    return {"backbone": redis_server.url, "backbones": {"redis": {"prefix": f"{prefix}:", "health_interval": 0.5}}}


def publish_connections(redis_server):
    """The worker's publish connections in ``CLIENT LIST`` (named ``relay-backbone-pub-<pid>``)."""
    return [c for c in redis_server.client().client_list() if c["name"].startswith("relay-backbone-pub-")]


def subscribed(server):
    wait_until(lambda: "source redis-backbone is up" in server.log(), 15, message="the backbone subscription")


@pytest.mark.timeout(60)
def test_concurrent_publishes_each_get_their_own_id_in_stream_order(relay_server_factory, redis_server):
    server = relay_server_factory(backbone_config(redis_server, "pubconc"))
    subscribed(server)
    answers, errors = {}, []

    def publisher(n):
        try:
            for i in range(8):
                key = f"{n}-{i}"
                answers[key] = server.publish("conc", "n", {"key": key})["id"]
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    with server.sse("/events/conc") as stream:
        stream.read_some(1)
        threads = [threading.Thread(target=publisher, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors, errors
        got = stream.events(128, 20)
    # The id each publisher was answered is the id its own event was stored and delivered with.
    assert {e.json()["key"]: e.id for e in got} == answers
    keys = [tuple(int(part) for part in e.id.split("-")) for e in got]
    assert keys == sorted(keys) and len(set(keys)) == 128  # delivered once each, in id order
    assert 1 <= len(publish_connections(redis_server)) <= 4  # PUBLISH_CONNECTIONS


@pytest.mark.timeout(60)
def test_publish_survives_a_flushed_script_cache_and_dropped_connections(relay_server_factory, redis_server):
    require_own_server(redis_server)
    server = relay_server_factory(backbone_config(redis_server, "pubdrop"))
    subscribed(server)
    client = redis_server.client()
    with server.sse("/events/drop") as stream:
        stream.read_some(1)
        first = server.publish("drop", "n", 1)["id"]
        client.script_flush()  # NOSCRIPT next: the script is loaded again
        second = server.publish("drop", "n", 2)["id"]
        for connection in publish_connections(redis_server):  # stale next: one retry, on a new one
            client.client_kill_filter(_id=connection["id"])
        third = server.publish("drop", "n", 3)["id"]
        got = stream.events(3, 15)
    assert [(e.id, e.json()) for e in got] == [(first, 1), (second, 2), (third, 3)]
