"""relay.durable.DurableOffers: the one offer-until-taken policy of the consumer-group sources."""

from relay.api import DurableOffers, Event


class Sinks:
    """Two durable sinks: ``a`` always takes; ``b`` refuses ``refusals`` times first."""

    def __init__(self, refusals: int):
        self.refusals = refusals
        self.asked: list[tuple[str, str]] = []

    def durable_sinks(self):
        return ["a", "b"]

    def deliver_durable(self, event, sinks=None):
        taken = set()
        for name in sorted(sinks if sinks is not None else self.durable_sinks()):
            self.asked.append((name, event.id))
            if name == "b" and self.refusals:
                self.refusals -= 1
                continue
            taken.add(name)
        return taken


def test_a_refused_message_is_offered_again_with_backoff_only_to_the_sinks_that_refused():
    sinks = Sinks(refusals=3)
    offers = DurableOffers(sinks)
    event = Event("c", "e", id="m1")
    assert [offers.offer(event, "m1", "lane") for _ in range(3)] == [0.5, 1.0, 2.0]
    assert offers.refused == ["b"]
    assert offers.offer(event, "m1", "lane") is None
    assert sinks.asked == [("a", "m1"), ("b", "m1"), ("b", "m1"), ("b", "m1"), ("b", "m1")]  # a once
    sinks.refusals = 1
    assert offers.offer(Event("c", "e", id="m2"), "m2", "lane") == 0.5  # a message that passed resets the lane


def test_lanes_back_off_separately_and_the_delay_is_capped():
    sinks = Sinks(refusals=100)
    offers = DurableOffers(sinks)
    delays = [offers.offer(Event("c", "e", id="x"), "x", "one") for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert offers.offer(Event("c", "e", id="y"), "y", "two") == 0.5
    offers.forget("one")
    assert offers.offer(Event("c", "e", id="x"), "x", "one") == 0.5


class BatchSinks(Sinks):
    """``a`` takes batches whole; ``b`` takes events one by one and refuses the ``refuse_at``-th."""

    def __init__(self, refuse_at: int):
        super().__init__(refusals=0)
        self.refuse_at = refuse_at

    def deliver_durable_batch(self, events, sink):
        self.asked.append((sink, [e.id for e in events]))
        if sink == "b" and self.refuse_at is not None and self.refuse_at < len(events):
            taken, self.refuse_at = self.refuse_at, None
            return taken
        return len(events)


def test_a_batch_is_taken_up_to_the_first_refusal_and_only_the_rest_is_offered_again():
    sinks = BatchSinks(refuse_at=1)
    offers = DurableOffers(sinks)
    events = [Event("c", "e", id=f"m{i}") for i in range(3)]
    keys = ["k0", "k1", "k2"]
    assert offers.offer_batch(events, keys, "lane") == (1, 0.5), "m0 taken by both; from m1 offered again"
    assert offers.refused == ["b"]
    assert offers.offer_batch(events[1:], keys[1:], "lane") == (2, None)
    assert sinks.asked == [("a", ["m0", "m1", "m2"]), ("b", ["m0", "m1", "m2"]), ("b", ["m1", "m2"])], \
        "a took the batch once and is not asked again"
    assert offers.taken == {} and offers.delays == {}
