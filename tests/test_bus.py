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


def test_send_batch_hands_each_channels_run_to_batch_receivers_at_once_and_to_others_per_event():
    bus = Bus()
    batched, single = [], []

    def plain(channel, event):
        single.append((channel, event.data))

    def batch(channel, events):
        batched.append((channel, [e.data for e in events]))

    bus.subscribe("a", plain, batch=batch)  # a receiver with a batch form
    bus.subscribe("b", plain, batch=batch)
    other = []
    bus.subscribe("a", lambda channel, event: other.append(event.data))  # one without
    events = [event("a", data=1), event("a", data=2), event("b", data=3), event("a", data=4)]
    assert bus.send_batch(events) == 4 + 3, "deliveries: 4 to the batch receiver, 3 to the other"
    assert batched == [("a", [1, 2]), ("b", [3]), ("a", [4])], "runs of one channel, in order"
    assert single == [], "the batch form replaces the per-event call"
    assert other == [1, 2, 4]
    bus.unsubscribe(plain)
    assert bus.send_batch(events) == 3 and batched[3:] == [], "unsubscribed: the batch form is gone too"


def test_a_raising_batch_receiver_is_counted_and_does_not_stop_the_others():
    errors = []
    bus = Bus(on_error=lambda receiver, exc: errors.append(str(exc)))
    got = []

    def broken(channel, events):
        raise RuntimeError("boom")

    bus.subscribe("a", lambda channel, event: None, batch=broken)
    bus.subscribe("a", lambda channel, event: got.append(event.data))
    assert bus.send_batch([event("a", data=1), event("a", data=2)]) == 2
    assert got == [1, 2] and errors == ["boom"]
