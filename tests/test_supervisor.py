"""relay.supervisor.Supervisor on its own: restart with backoff, status, bounded stop."""

import itertools
import time

import gevent
import pytest

from relay import supervisor as supervisor_module
from relay.source import Source
from relay.supervisor import Supervisor


class FakeStats:
    def __init__(self):
        self.counts = {}

    def incr(self, name, amount=1, **labels):
        key = (name, tuple(sorted(labels.items())))
        self.counts[key] = self.counts.get(key, 0) + amount


class FakeRelay:
    def __init__(self):
        self.stats = FakeStats()


class Dying(Source):
    name = "dying"

    def __init__(self):
        super().__init__()
        self.starts = []

    def run(self, relay):
        self.starts.append(time.monotonic())
        self.set_status("up")
        raise ConnectionError(f"lost it (run {len(self.starts)})")


class Stubborn(Source):
    """Ignores stop(): only the supervisor's kill ends it."""
    name = "stubborn"

    def run(self, relay):
        self.set_status("up")
        while True:
            gevent.sleep(0.05)


class Polite(Source):
    name = "polite"

    def run(self, relay):
        self.set_status("up")
        self.stopping.wait()


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(supervisor_module, "FIRST_DELAY", 0.05)
    monkeypatch.setattr(supervisor_module, "MAX_DELAY", 0.2)


def test_a_dying_source_is_restarted_with_growing_delays_and_reported(fast_backoff):
    relay, source = FakeRelay(), Dying()
    supervisor = Supervisor(relay)
    supervisor.start([("plugin_x", source)])
    deadline = time.monotonic() + 5
    while len(source.starts) < 5 and time.monotonic() < deadline:
        gevent.sleep(0.01)
    supervisor.stop(timeout=1)
    starts = source.starts
    assert len(starts) >= 5, "the source was not restarted"
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # 0.05, 0.1, 0.2, then capped at 0.2: each wait at least the backoff, and the backoff grows
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095 and gaps[2] >= 0.19 and gaps[3] >= 0.19
    assert gaps[3] < 1.0, "backoff not capped at MAX_DELAY"
    failures = relay.stats.counts[("source_failures", (("source", "dying"),))]
    assert failures >= 5
    assert source.status == "stopped"


def test_a_failure_marks_the_source_down_with_the_error(fast_backoff, monkeypatch):
    monkeypatch.setattr(supervisor_module, "FIRST_DELAY", 5.0)   # stays down between runs
    source = Dying()
    supervisor = Supervisor(FakeRelay())
    supervisor.start([("plugin_x", source)])
    deadline = time.monotonic() + 5
    while source.status != "down" and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert source.status == "down" and source.detail == "ConnectionError: lost it (run 1)"
    started = time.monotonic()
    supervisor.stop(timeout=1)
    assert time.monotonic() - started < 1, "stop() waited out the backoff"
    assert source.status == "stopped" and len(source.starts) == 1


def test_stop_stops_every_source_within_its_bound():
    polite, stubborn = Polite(), Stubborn()
    supervisor = Supervisor(FakeRelay())
    supervisor.start([("a", polite), ("b", stubborn)])
    gevent.sleep(0.1)
    assert polite.status == stubborn.status == "up"
    greenlets = list(supervisor._greenlets)
    started = time.monotonic()
    supervisor.stop(timeout=0.5)
    elapsed = time.monotonic() - started
    assert all(g.dead for g in greenlets), "a source greenlet outlived stop()"
    assert 0.4 < elapsed < 2.0   # the stubborn one is killed after the bound, not waited for
    assert polite.stopping.is_set() and stubborn.stopping.is_set()
    assert polite.status == "stopped"
