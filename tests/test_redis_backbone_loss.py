"""Redis losing what it acknowledged is never a silent gap (issue 13, "Deliver" point 6).

Each test publishes through a relay on the Redis backbone, makes Redis lose data in a real way,
and resumes on a *fresh* relay (a new gunicorn: nothing in any worker's memory), so the answer
comes from Redis alone; where the first relay lives through the loss, its live stream and a
resume from its memory are checked too. Losses:

* an empty restart: ``RedisServer.restart()`` without persistence (SIGKILL, start again empty);
* a partial loss: ``SAVE`` a snapshot, publish more, SIGKILL, start again: Redis loads the older
  snapshot, exactly as it would come back from an AOF that lost its last second, or from an
  RDB taken before the last events: a consistent history that ends early.

And one restart that loses nothing (``appendonly yes`` + ``appendfsync always``), which must not
be reported.
"""

import uuid

import pytest

from plugins.redis_backbone.keys import Layout
from redis_support import RedisServer, require_own_server
from relay.testing import wait_until

LOST_LOG = "Redis lost events it had acknowledged"


def backbone_config(url: str) -> dict:
    prefix = f"loss{uuid.uuid4().hex[:6]}:"
    return {"backbone": url, "backbones": {"redis": {"prefix": prefix, "health_interval": 0.5}}}


def expect_lost(stream, last_event_id: str) -> None:
    missed = stream.next_event(10)
    assert missed.event == "relay-missed", f"expected relay-missed first, got {missed.event}: {missed.data}"
    assert missed.json()["reason"] == "lost" and missed.json()["last_event_id"] == last_event_id


def subscribed(redis_server, config, channel: str) -> bool:
    """A worker holds the (sharded) subscription of ``channel``."""
    announcement = Layout(config["backbones"]["redis"]["prefix"], 1).of(channel).announcement(channel)
    with redis_server.client() as client:
        return client.execute_command("PUBSUB", "SHARDNUMSUB", announcement)[1] > 0


def counter(server, name: str) -> int:
    return sum(row["count"] for row in server.health()["counters"].get(name, []))


@pytest.mark.parametrize("published_since", [0, 8], ids=["nothing-since", "new-ids-pass-the-old"])
def test_resume_after_redis_restarted_empty_is_told_lost(relay_server_factory, redis_server, published_since):
    require_own_server(redis_server)
    config = backbone_config(redis_server.url)
    old = relay_server_factory(config)
    with old.sse("/events/room") as stream:
        stream.read_some(1)
        for i in range(5):
            old.publish("room", "n", i)
        last = stream.events(5, 10)[-1].id
    old.stop()  # nothing of the lost events stays in any relay's memory
    redis_server.restart()  # no persistence: Redis comes back empty

    fresh = relay_server_factory(config)
    # With 8 new events the new counter (1..8) passes the old id's (5): the new ids are all
    # above the old one, and XRANGE after it returns them as if nothing had happened.
    for i in range(published_since):
        fresh.publish("room", "n", 100 + i)
    with fresh.sse("/events/room", headers={"Last-Event-ID": last}) as resumed:
        expect_lost(resumed, last)
        assert [e.json() for e in resumed.events(published_since, 10)] == [100 + i for i in range(published_since)]
        fresh.publish("room", "n", "after")
        assert resumed.next_event(10).data == "after"


def test_partial_loss_is_told_to_resumes_from_after_and_from_before_it(relay_server_factory, redis_server):
    require_own_server(redis_server)
    config = backbone_config(redis_server.url)
    old = relay_server_factory(config)
    live = old.sse("/events/p")
    live.read_some(1)
    ids = [old.publish("p", "n", i)["id"] for i in range(4)]
    with redis_server.client() as client:
        client.save()  # what Redis will come back with: events 0..3
    ids += [old.publish("p", "n", i)["id"] for i in range(4, 8)]  # acknowledged (202), then lost
    assert [e.json() for e in live.events(8, 10)] == list(range(8))
    redis_server.restart()  # loads the snapshot: 4..7 are gone, the counter is back at 4

    # The old relay heard 4..7: when its subscription is back it says so and records the loss.
    wait_until(lambda: LOST_LOG in old.log(), 15, message="the worker reports the loss")
    assert counter(old, "backbone_lost") == 1
    fresh = relay_server_factory(config)
    with fresh.sse("/events/p", headers={"Last-Event-ID": ids[5]}) as from_lost, \
            fresh.sse("/events/p", headers={"Last-Event-ID": ids[1]}) as from_before:
        expect_lost(from_lost, ids[5])  # its own id is gone
        expect_lost(from_before, ids[1])  # it never got 4..7, and never will
        assert [e.json() for e in from_before.events(2, 10)] == [2, 3]  # what survived
        new_id = fresh.publish("p", "n", 8)["id"]
        assert from_lost.next_event(10).json() == 8
        assert from_before.next_event(10).json() == 8
    assert new_id not in ids
    # A live stream on the old relay is told too (it may have missed lost events whose
    # announcement never reached it), then goes on with the ids given after the loss.
    notice = live.next_event(10)
    assert notice.event == "relay-missed" and notice.json() == {"last_event_id": ids[7], "reason": "lost",
                                                                "channels": ["p"]}
    assert live.next_event(10).json() == 8
    live.close()
    # A resume from before the loss on the old relay is replayed from its memory, which still
    # holds 4..7, and is told too (it may lack lost events whose announcement it never got).
    with old.sse("/events/p", headers={"Last-Event-ID": ids[1]}) as from_memory:
        expect_lost(from_memory, ids[1])
        assert [e.json() for e in from_memory.events(7, 10)] == [2, 3, 4, 5, 6, 7, 8]


# What was acknowledged is on disk and survives SIGKILL.
DURABLE = ("--appendonly", "yes", "--appendfsync", "always")


def test_a_restart_that_lost_nothing_is_not_reported(relay_server_factory, tmp_path):
    # Its own redis-server whatever REDIS_URL says: it kills and restarts it.
    server = RedisServer(tmp_path / "aof", persistence=DURABLE).start()
    try:
        config = backbone_config(server.url)
        old = relay_server_factory(config)
        live = old.sse("/events/kept")
        live.read_some(1)
        ids = [old.publish("kept", "n", i)["id"] for i in range(6)]
        assert [e.json() for e in live.events(6, 10)] == list(range(6))
        server.restart()  # SIGKILL, start again: the AOF has every event
        wait_until(lambda: subscribed(server, config, "kept"), 15, message="the old relay resubscribed")

        fresh = relay_server_factory(config)
        with fresh.sse("/events/kept", headers={"Last-Event-ID": ids[2]}) as middle, \
                fresh.sse("/events/kept", headers={"Last-Event-ID": ids[5]}) as newest:
            assert [(e.event, e.json()) for e in middle.events(3, 10)] == [("n", 3), ("n", 4), ("n", 5)]
            fresh.publish("kept", "n", 6)
            assert (middle.next_event(10).json(), newest.next_event(10).json()) == (6, 6)
        assert live.next_event(10).json() == 6
        live.close()
        with old.sse("/events/kept", headers={"Last-Event-ID": ids[2]}) as from_memory:
            assert [(e.event, e.json()) for e in from_memory.events(4, 10)] == [("n", 3), ("n", 4), ("n", 5), ("n", 6)]
        assert LOST_LOG not in old.log() and counter(old, "backbone_lost") == 0
    finally:
        server.kill()


def test_a_resume_from_an_id_the_data_does_not_know_is_told_lost(relay_server_factory, redis_server):
    """An id from before the keys' history began (a relay before the upgrade that renamed them,
    or a Redis whose data is gone): the new keys start with a restart record, so the resume gets
    relay-missed "lost", then the events published since."""
    server = relay_server_factory(backbone_config(redis_server.url))  # a fresh prefix: keys nobody wrote
    old_id = "1700000000000-5"
    with server.sse("/events/room", headers={"Last-Event-ID": old_id}) as resumed:
        expect_lost(resumed, old_id)
        server.publish("room", "n", "new")
        assert resumed.next_event(10).data == "new"
