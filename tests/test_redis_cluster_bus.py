"""The bus's channel-wanted / channel-unwanted signals, which the Redis Cluster backbone routes
by (relay.bus.Bus.want, unwant, wanted; docs/design-redis-cluster.md, section 2)."""

from __future__ import annotations

import pytest

from relay.bus import Bus
from relay.event import Event


def watched(bus: Bus) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    bus.channel_wanted.connect(lambda channel: seen.append(("wanted", channel)), weak=False)
    bus.channel_unwanted.connect(lambda channel: seen.append(("unwanted", channel)), weak=False)
    return seen


@pytest.mark.timeout(10)
def test_the_first_receiver_of_a_channel_wants_it_and_the_last_to_leave_unwants_it():
    bus = Bus()
    seen = watched(bus)
    first, second = (lambda channel, event: None), (lambda channel, event: None)
    bus.subscribe("a", first)
    bus.subscribe("a", second)
    bus.subscribe("b", second)
    assert seen == [("wanted", "a"), ("wanted", "b")]
    assert sorted(bus.wanted()) == ["a", "b"]
    bus.unsubscribe(second)  # leaves a (first still there) and b (its last receiver)
    assert seen[2:] == [("unwanted", "b")]
    bus.unsubscribe(first)
    assert seen[3:] == [("unwanted", "a")] and bus.wanted() == []
    bus.unsubscribe(first)  # twice: nothing more
    assert len(seen) == 4


@pytest.mark.timeout(10)
def test_subscribing_one_receiver_twice_to_a_channel_holds_it_once():
    bus = Bus()
    seen = watched(bus)
    receiver = lambda channel, event: None
    bus.subscribe("a", receiver)
    bus.subscribe("a", receiver)
    bus.unsubscribe(receiver)
    assert seen == [("wanted", "a"), ("unwanted", "a")]


@pytest.mark.timeout(10)
def test_want_holds_a_channel_without_a_receiver_and_counts_with_the_receivers():
    bus = Bus()
    seen = watched(bus)
    got = []
    bus.want("sink")
    bus.want("sink")
    receiver = lambda channel, event: got.append(event.data)
    bus.subscribe("sink", receiver)
    assert seen == [("wanted", "sink")]
    bus.unsubscribe(receiver)
    bus.unwant("sink")
    assert seen == [("wanted", "sink")]  # one want still holds it
    bus.unwant("sink")
    bus.unwant("sink")  # more unwants than wants: ignored
    assert seen == [("wanted", "sink"), ("unwanted", "sink")]
    assert bus.send(Event("sink", "n", 1)) == 0 and got == []


@pytest.mark.timeout(10)
def test_a_failing_routing_receiver_never_costs_the_subscriber_its_subscription():
    bus = Bus()

    def broken(channel):
        raise RuntimeError("no route")

    bus.channel_wanted.connect(broken, weak=False)
    got = []
    bus.subscribe("a", lambda channel, event: got.append(event.data))
    assert bus.send(Event("a", "n", 7)) == 1 and got == [7]
