"""The delivery-latency sampler: a bounded number of observations a second, spread evenly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from plugins.sse_latency import LatencySampler


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def deliver(sampler: LatencySampler, clock: Clock, rate: int, seconds: float, fanout: int = 1) -> None:
    """``rate`` deliveries a second, in fan-outs of ``fanout`` clients; an event's latency to its
    i-th client is i ms, so the observed values say which clients were sampled."""
    step = 1.0 / rate
    for n in range(int(rate * seconds)):
        i = n % fanout
        event = SimpleNamespace(timestamp=clock.now - i / 1000)  # latency i ms at now
        clock.now += step
        sampler.delivered(event, clock.now - step)


@pytest.mark.timeout(30)
def test_busy_fanouts_are_observed_about_per_second_times_a_second_and_evenly_over_clients():
    clock, values = Clock(), []
    sampler = LatencySampler(values.append, per_second=200, clock=clock)
    deliver(sampler, clock, rate=100_000, seconds=2, fanout=17_000)  # learns the rate
    values.clear()
    deliver(sampler, clock, rate=100_000, seconds=5, fanout=17_000)
    assert 150 * 5 <= len(values) <= 260 * 5, len(values)
    # Clients 0..16,999 have latencies 0..17 s: an even spread averages ~8.5 s, the first ones ~0.
    mean = sum(values) / len(values)
    assert 7.0 < mean < 10.0, mean


@pytest.mark.timeout(30)
def test_a_quiet_worker_observes_every_delivery_even_after_a_busy_spell():
    clock, values = Clock(), []
    sampler = LatencySampler(values.append, per_second=200, clock=clock)
    deliver(sampler, clock, rate=50_000, seconds=3)
    assert sampler.every > 100
    deliver(sampler, clock, rate=50, seconds=10)  # adapts at the next observation after the drop
    values.clear()
    deliver(sampler, clock, rate=50, seconds=4)
    assert len(values) == 200


@pytest.mark.timeout(30)
def test_a_burst_after_a_quiet_spell_is_not_observed_whole():
    clock, values = Clock(), []
    sampler = LatencySampler(values.append, per_second=200, clock=clock)
    deliver(sampler, clock, rate=1, seconds=60)  # clients connected, events rare: every one observed
    values.clear()
    deliver(sampler, clock, rate=50_000, seconds=1, fanout=1000)
    assert len(values) <= 2 * 200, len(values)


@pytest.mark.timeout(30)
def test_a_timestamp_that_is_not_a_number_is_not_observed_and_does_not_raise():
    values = []
    sampler = LatencySampler(values.append, clock=Clock())
    sampler.delivered(SimpleNamespace(timestamp="soon"))
    sampler.delivered(SimpleNamespace(timestamp=0.0), now=2.5)
    assert values == [2.5]
