"""The resume history is bounded in bytes, per channel and per worker, not only in events
(issue 13: "a 64 KB body of [[],[],…] holds 1.63 MB in the history").

The history keeps each event's SSE frame, not its parsed data, and counts what that costs.
"""

import gc
import json
import tracemalloc

import pytest

from relay.backbone import CHANNEL_OVERHEAD, MemoryBackbone
from relay.config import CORE_SECTIONS, ConfigError, load_config
from relay.event import Event
from relay.testing import http_request

MIB = 1 << 20
EMPTY_LISTS = "[" + ",".join(["[]"] * 21844) + "]"  # 65,533 bytes: as much as a 64 KiB body holds


def parsed(body: str) -> Event:
    """The event a publish of ``body`` as data makes: its parsed data, and its text as sent.

    Built without Event's validation, which takes ~40 ms for this body and is tested elsewhere:
    the objects are the same (checked once in the test), and 1000 of them stay fast.
    """
    event = Event("big", "e", None)
    event.data, event.text = json.loads(body), body
    return event


def test_a_thousand_64kb_bodies_of_empty_lists_stay_within_history_bytes():
    assert Event("big", "e", json.loads(EMPTY_LISTS)).text == parsed(EMPTY_LISTS).text == EMPTY_LISTS
    backbone = MemoryBackbone(1000, history_bytes=MIB)
    for _ in range(900):  # fills the history many times over; all of these are evicted by now
        backbone.append(parsed(EMPTY_LISTS))
    gc.collect()
    tracemalloc.start()
    try:
        # What the history holds after the last 100 was all allocated while tracing.
        base = tracemalloc.get_traced_memory()[0]
        for n in range(1, 101):
            backbone.append(parsed(EMPTY_LISTS))
            if n % 10 == 0:
                held = tracemalloc.get_traced_memory()[0] - base
                assert held <= MIB + 16 * 1024, f"the history holds {held} bytes after {900 + n} events"
        held, peak = (value - base for value in tracemalloc.get_traced_memory())
        one = Event("one", "e", json.loads(EMPTY_LISTS))  # what keeping the event itself would cost
        parsed_cost = tracemalloc.get_traced_memory()[0] - base - held
        del one
    finally:
        tracemalloc.stop()
    stats = backbone.stats()
    print(f"\n1000 x 64 KB [[],[],...]: history holds {held:,} B in {stats['events']} events "
          f"(accounted {stats['bytes']:,} B, limit {MIB:,} B); peak while publishing {peak:,} B; "
          f"one parsed event would hold {parsed_cost:,} B")
    assert stats["events"] >= 14 and stats["bytes"] <= MIB + CHANNEL_OVERHEAD + 64
    assert held <= MIB + 16 * 1024
    assert parsed_cost > 20 * 65536  # the amplification the history no longer keeps


def test_an_event_larger_than_history_bytes_is_not_kept_and_a_resume_across_it_is_told():
    backbone = MemoryBackbone(100, history_bytes=4096)
    first = backbone.append(Event("c", "e", "small"))
    big = backbone.append(Event("c", "e", "x" * 5000))
    last = backbone.append(Event("c", "e", "small again"))
    replay = backbone.replay(["c"], first.id, 100)
    assert (replay.complete, replay.reason) == (False, "evicted")
    assert [e.id for e in replay.events] == [last.id]
    assert backbone.replay(["c"], big.id, 100).complete  # after it: nothing missed


def test_history_bytes_evicts_oldest_first_and_a_resume_from_before_says_evicted():
    backbone = MemoryBackbone(100, history_bytes=8192)
    events = [backbone.append(Event("c", "e", {"n": n, "pad": "x" * 1000})) for n in range(20)]
    kept = backbone.stats()["events"]
    assert 3 <= kept < 8
    replay = backbone.replay(["c"], events[0].id, 100)
    assert (replay.complete, replay.reason) == (False, "evicted")
    assert [e.data["n"] for e in replay.events] == list(range(20 - kept, 20))
    recent = backbone.replay(["c"], events[-3].id, 100)
    assert recent.complete and [e.id for e in recent.events] == [e.id for e in events[-2:]]


def test_publisher_ids_are_forgotten_with_the_events_evicted_by_bytes():
    backbone = MemoryBackbone(100, history_bytes=4096)
    for n in range(10):
        backbone.append(Event("c", "e", "x" * 1000, id=f"order-{n}"))
    assert backbone.replay(["c"], "order-0", 10) is None  # evicted: unknown here now
    assert [e.id for e in backbone.replay(["c"], "order-8", 10).events] == ["order-9"]
    assert len(backbone._by_id) == backbone.stats()["events"]  # the index does not grow


def test_history_total_bytes_takes_from_the_least_recently_used_channels():
    backbone = MemoryBackbone(100, history_bytes=MIB, total_bytes=64 * 1024)
    first = {}
    for n in range(30):
        first[n] = backbone.append(Event(f"room-{n}", "e", "x" * 4000))
        backbone.append(Event(f"room-{n}", "e", "y" * 4000))
    stats = backbone.stats()
    assert stats["bytes"] <= 64 * 1024 and stats["channels"] < 30
    old = backbone.replay(["room-0"], first[0].id, 100)
    assert (old.complete, old.reason) == (False, "evicted")
    recent = backbone.replay(["room-29"], first[29].id, 100)
    assert recent.complete and len(recent.events) == 1


def test_forgetting_channels_beyond_max_channels_returns_their_bytes():
    backbone = MemoryBackbone(100, max_channels=3)
    for n in range(10):
        backbone.append(Event(f"room-{n}", "e", "x" * 1000))
    few = backbone.stats()["bytes"]
    assert backbone.stats()["channels"] == 3 and few < 3 * (1000 + CHANNEL_OVERHEAD + 600)


def test_replayed_events_read_back_as_clients_read_them():
    backbone = MemoryBackbone(10)
    mark = backbone.append(Event("c", "e", 0))
    backbone.append(Event("c", "order", {"items": [1, 2], "note": "a\nb"}, id="order-1"))
    backbone.append(Event("c", "text", "line one\nline two"))
    backbone.append(Event("c", "text", '{"looks": "like json"}'))
    events = backbone.replay(["c"], mark.id, 10).events
    assert [(e.channel, e.event) for e in events] == [("c", "order"), ("c", "text"), ("c", "text")]
    assert events[0].id == "order-1" and events[0].data == {"items": [1, 2], "note": "a\nb"}
    assert events[1].data == events[1].text == "line one\nline two"
    assert events[2].data == '{"looks": "like json"}'  # a string stays a string
    assert events[0].frame.startswith(b"id: order-1\nevent: order\ndata: ")


def core(raw=None, environ=None):
    return load_config(raw or {}, list(CORE_SECTIONS), environ=environ or {}).section("")


def test_history_byte_limits_are_validated_settings_with_env_overrides():
    assert (core()["history_bytes"], core()["history_total_bytes"]) == (MIB, 256 * MIB)
    env = core(environ={"RELAY_HISTORY_BYTES": "65536", "RELAY_HISTORY_TOTAL_BYTES": "1048576"})
    assert (env["history_bytes"], env["history_total_bytes"]) == (65536, MIB)
    with pytest.raises(ConfigError) as error:
        core({"history_bytes": 10, "history_total_bytes": "lots"})
    assert "history_bytes: 10 is too small" in str(error.value)
    assert "history_total_bytes: expected an integer" in str(error.value)


def test_a_resume_from_before_an_eviction_by_bytes_gets_relay_missed(relay_server_factory):
    server = relay_server_factory({"history_bytes": 8192})
    ids = [server.publish("sized", "n", {"n": n, "pad": "x" * 1500})["id"] for n in range(12)]
    with server.sse("/events/sized", headers={"Last-Event-ID": ids[0]}) as stream:
        missed = stream.next_event(5)
        rest = []
        while not stream.no_event_within(0.3):
            rest.append(stream.next_event(1))
    assert missed.event == "relay-missed" and missed.json()["reason"] == "evicted"
    assert 2 <= len(rest) < 6 and [e.json()["n"] for e in rest] == list(range(12 - len(rest), 12))
    with server.sse("/events/sized", headers={"Last-Event-ID": ids[-2]}) as stream:
        assert stream.next_event(5).json()["n"] == 11  # within what is kept: no relay-missed
    assert server.health()["backbone"]["bytes"] <= 8192 + 2 * CHANNEL_OVERHEAD


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def test_a_worker_fed_64kb_bodies_of_empty_lists_grows_by_its_history_bytes_not_25_times_more(
        relay_server_factory):
    # End to end, HTTP as in the report: before, 100 such bodies grew the worker by ~170 MB.
    server = relay_server_factory({"history_bytes": MIB})
    with server.sse("/events/big") as stream:
        worker = int(stream.response_headers["x-relay-worker"])
    body = ('{"event":"e","data":[' + ",".join(["[]"] * 21830) + "]}").encode()  # 65,512 bytes
    assert len(body) <= 65536
    before = _rss(worker)
    for _ in range(100):
        status, _, answer = http_request(f"{server.url}/events/big", "POST", body,
                                         {"Content-Type": "application/json"})
        assert status == 202, answer
    grown = _rss(worker) - before
    print(f"\nworker RSS grew {grown:,} B for 100 x {len(body):,} B bodies; history {server.health()['backbone']}")
    assert grown < 32 * MIB
