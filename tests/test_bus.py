"""relay.bus.Bus on its own: subscription per channel, isolation of a failing receiver."""

from relay.bus import Bus
from relay.event import Event


def event(channel, name="e", data=None):
    return Event(channel, name, data)


def test_a_receiver_gets_only_its_channels_events_until_unsubscribed():
    bus = Bus()
    got = []

    def receiver(channel, event):
        got.append((channel, event.event))

    bus.subscribe("a", receiver)
    assert bus.receiver_count == 1
    assert bus.send(event("a", "one")) == 1
    assert bus.send(event("b", "other")) == 0
    assert got == [("a", "one")]

    bus.unsubscribe(receiver)
    assert bus.receiver_count == 0
    assert bus.send(event("a", "two")) == 0   # the cached receiver list was dropped too
    assert got == [("a", "one")]


def test_unsubscribe_removes_a_receiver_from_every_channel():
    bus = Bus()
    got = []

    def receiver(channel, event):
        got.append(channel)

    bus.subscribe("a", receiver)
    bus.subscribe("b", receiver)
    bus.send(event("a"))
    bus.send(event("b"))
    bus.unsubscribe(receiver)
    assert bus.send(event("a")) == 0 and bus.send(event("b")) == 0
    assert got == ["a", "b"] and bus.receiver_count == 0


def test_a_raising_receiver_is_counted_and_does_not_stop_the_others():
    errors = []
    bus = Bus(on_error=lambda receiver, exc: errors.append((receiver, exc)))
    got = []

    def before(channel, event):
        got.append("before")

    def broken(channel, event):
        raise RuntimeError("boom")

    def after(channel, event):
        got.append("after")

    for receiver in (before, broken, after):
        bus.subscribe("c", receiver)
    assert bus.send(event("c")) == 2          # two took it; the broken one is not counted
    assert sorted(got) == ["after", "before"]
    assert len(errors) == 1 and errors[0][0] is broken and str(errors[0][1]) == "boom"


def test_every_receiver_of_a_channel_gets_the_same_event():
    bus = Bus()
    seen = []
    receivers = [lambda channel, event, i=i: seen.append((i, event.id)) for i in range(3)]
    for receiver in receivers:
        bus.subscribe("d", receiver)
    sent = event("d")
    assert bus.send(sent) == 3
    assert sorted(seen) == [(0, sent.id), (1, sent.id), (2, sent.id)]
    bus.unsubscribe(receivers[1])
    assert bus.send(event("d")) == 2 and bus.receiver_count == 2
