"""Redis Streams to durable sinks (webhooks) through a consumer group: nothing lost, acknowledged
only once stored, entries of a dead worker claimed by another."""

import json
import time

import pytest

from redis_support import require_own_server
from relay.testing import wait_until
from webhook_support import Receiver, endpoint, webhook_config


@pytest.fixture
def receiver():
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def config(redis_url, stream, receiver, store=None, claim_idle=30.0):
    settings = {"store": store, "key_prefix": f"{stream}-wh"} if store else {}
    cfg = webhook_config([endpoint(f"{receiver.url}/hook", channels=[stream])], **settings)
    cfg["sources"] = {"redis": {"url": redis_url, "streams": [stream], "group": "hooks", "claim_idle": claim_idle,
                                "stream_block": 0.1, "reconnect_max": 0.5}}
    return cfg


def add(client, stream, n):
    return client.xadd(stream, {"payload": json.dumps({"event": "order", "data": n})}).decode()


def pending(client, stream):
    return client.xpending(stream, "hooks")["pending"]


def delivered(receiver):
    return sorted(r.verify()["data"] for r in receiver.for_path("/hook"))


def test_entries_added_while_relay_was_down_reach_the_webhook_once(relay_server_factory, redis_server, names,
                                                                   receiver):
    stream, client = f"{names}orders", redis_server.client()
    server = relay_server_factory(config(redis_server.url, stream, receiver))
    wait_until(lambda: server.health()["components"]["source:redis"]["state"] == "up", 10)
    for n in range(3):
        add(client, stream, n)
    receiver.wait_for(3, path="/hook")
    server.stop()
    for n in range(3, 6):  # nobody reads: the group's position stays in Redis
        add(client, stream, n)
    server.start()
    receiver.wait_for(6, path="/hook")
    time.sleep(1)
    assert delivered(receiver) == list(range(6))  # once each
    wait_until(lambda: pending(client, stream) == 0, 10, message="every entry acknowledged")


def test_entries_stay_pending_while_the_store_refuses_them(relay_server_factory, redis_server, redis_factory,
                                                           names, receiver):
    require_own_server(redis_server)
    store = redis_factory(started=False)  # the webhook store: down at first
    stream, client = f"{names}orders", redis_server.client()
    server = relay_server_factory(config(redis_server.url, stream, receiver, store=store.url))
    wait_until(lambda: server.health()["components"]["source:redis"]["state"] == "up", 10)
    for n in range(3):
        add(client, stream, n)
    wait_until(lambda: pending(client, stream) >= 1, 10, message="an entry read but not acknowledged")
    time.sleep(1)
    assert receiver.for_path("/hook") == [] and pending(client, stream) >= 1
    assert "refused" in server.log()
    store.start()
    receiver.wait_for(3, path="/hook", timeout=30)
    time.sleep(1)
    assert delivered(receiver) == [0, 1, 2]
    wait_until(lambda: pending(client, stream) == 0, 15, message="every entry acknowledged")


def test_entries_of_a_killed_worker_are_claimed_by_another(relay_server_factory, redis_server, redis_factory,
                                                           names, receiver):
    require_own_server(redis_server)
    store = redis_factory(started=False)
    stream, client = f"{names}orders", redis_server.client()
    cfg = config(redis_server.url, stream, receiver, store=store.url, claim_idle=1.0)
    a = relay_server_factory(cfg)
    wait_until(lambda: a.health()["components"]["source:redis"]["state"] == "up", 10)
    for n in range(3):
        add(client, stream, n)
    wait_until(lambda: pending(client, stream) >= 1, 10, message="A read an entry it could not store")
    a.kill()  # its pending entries are orphaned
    store.start()
    b = relay_server_factory(cfg)
    receiver.wait_for(3, path="/hook", timeout=30)
    time.sleep(1)
    assert delivered(receiver) == [0, 1, 2]
    wait_until(lambda: pending(client, stream) == 0, 15, message="B acknowledged them")
    assert "left by another worker" in b.log()
