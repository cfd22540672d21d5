"""Kafka cursors and exact resume, as logic: generated logs, workers and reconnects.

The broker-level proofs are in tests/test_kafka_resume.py; here hypothesis drives the parts that
decide what a resuming client gets (``ids``, the replay's start and order, ``Follow``) over logs
no test chose: several partitions, offset gaps (compaction, transaction markers), timestamps in
any order, two workers that interleave partitions differently and lag differently.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.kafka_source import broadcast, ids
from plugins.kafka_source.replay import Replayer, _start

TOPICS = ["emotes", "votes"]
SETTINGS = {"topics": TOPICS, "format": "envelope", "event_name": "message", "max_size": 65536, "channel_map": {},
            "replay_concurrency": 1}


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None = None
    headers: list = field(default_factory=list)

    @property
    def value(self) -> bytes:
        return json.dumps({"event": "n", "data": [self.topic, self.partition, self.offset], "channel": "c"}).encode()


class FakeRelay:
    @staticmethod
    def transform(event):
        return event


def publish_order(records_by_tp: dict, choices: list[int]):
    """One worker's order: partitions interleaved by ``choices``, each partition in its order;
    yields (record, cursor) as the broadcast reader builds them."""
    queues = {tp: list(rs) for tp, rs in records_by_tp.items() if rs}
    positions = ids.Positions(TOPICS)
    for tp, records in records_by_tp.items():  # a worker starting at ``earliest``
        positions[tp] = records[0].offset if records else 0
    n = 0
    while queues:
        tp = sorted(queues)[choices[n % len(choices)] % len(queues)]
        n += 1
        record = queues[tp].pop(0)
        if not queues[tp]:
            del queues[tp]
        positions[tp] = record.offset + 1
        yield record, positions.cursor(ids.make_id(record.topic, record.partition, record.offset))


def replay_from(cursor: str, records_by_tp: dict, ends: dict, limit: int = 10_000):
    """What the replay sends a client at ``cursor``: the plugin's own start and order logic over
    a log held in memory."""
    position = ids.parse(cursor, TOPICS)
    assert position is not None, cursor
    reached = dict(position.next)
    starts, by_partition = {}, {}
    for tp, records in records_by_tp.items():
        begin = records[0].offset if records else ends[tp]
        start, problem = _start(reached.get(tp), begin, ends[tp], limit)
        assert problem == "", (tp, problem)
        starts[tp] = reached[tp] = start
        by_partition[FakeTP(*tp)] = [r for r in records if r.offset >= start]
        reached[tp] = max(reached[tp], ends[tp])
    replay = Replayer(SETTINGS)._events(FakeRelay(), by_partition, {FakeTP(*tp): s for tp, s in starts.items()},
                                        {"c"}, position, reached, limit, True, "")
    return replay


class FakeTP(tuple):
    def __new__(cls, topic, partition):
        return super().__new__(cls, (topic, partition))

    topic = property(lambda self: self[0])
    partition = property(lambda self: self[1])


def key(event) -> tuple:
    return tuple(json.loads(event.text))


logs = st.lists(  # per (topic, partition): gaps between offsets and timestamps
    st.lists(st.tuples(st.integers(1, 3), st.integers(0, 50)), max_size=6), min_size=1, max_size=4)


def build_log(spec):
    records_by_tp, ends = {}, {}
    for n, records in enumerate(spec):
        tp = (TOPICS[n % 2], n // 2)
        offset = 0
        rows = []
        for gap, timestamp in records:
            offset += gap - 1  # gap 1: the next offset; more: a compacted record or a marker
            rows.append(Record(tp[0], tp[1], offset, 1_000 + timestamp))
            offset += 1
        records_by_tp[tp] = rows
        ends[tp] = offset + (1 if records and records[-1][0] == 3 else 0)  # sometimes a trailing marker
    return records_by_tp, ends


@settings(max_examples=300, deadline=None)
@given(spec=logs, order_a=st.lists(st.integers(0, 7), min_size=1, max_size=20),
       order_b=st.lists(st.integers(0, 7), min_size=1, max_size=20), data=st.data())
def test_a_client_moved_between_workers_gets_every_record_once_and_its_cursors_stay_exact(spec, order_a, order_b,
                                                                                          data):
    records_by_tp, ends = build_log(spec)
    everything = {(r.topic, r.partition, r.offset) for rs in records_by_tp.values() for r in rs}
    if not everything:
        return
    on_a = list(publish_order(records_by_tp, order_a))
    on_b = list(publish_order(records_by_tp, order_b))
    # The client read k events on worker A, left, and resumes on worker B, which had published j
    # records before the client subscribed. The replay reads the log as it is then (at least
    # what A and B had published, maybe more); later records, and B's lagging ones, reach the
    # client live.
    k = data.draw(st.integers(1, len(on_a)), label="events read on A")
    j = data.draw(st.integers(0, len(on_b)), label="records B published before the client came")
    cut_ends = {}
    for tp, records in records_by_tp.items():
        seen = [r.offset for r, _ in on_a[:k] + on_b[:j] if (r.topic, r.partition) == tp]
        at_least = sum(1 for r in records if r.offset <= max(seen, default=-1))
        present = data.draw(st.integers(at_least, len(records)), label=f"records of {tp} in the log at the replay")
        cut_ends[tp] = ends[tp] if present == len(records) else records[present].offset
    got = [(tuple(json.loads(ids_value(r))), cursor) for r, cursor in on_a[:k]]
    at_replay = {tp: [r for r in rs if r.offset < cut_ends[tp]] for tp, rs in records_by_tp.items()}
    replay = replay_from(got[-1][1], at_replay, cut_ends)
    got += [(key(e), e.cursor) for e in replay.events]
    for record, cursor in on_b[j:]:
        event = make_event(record, cursor)
        followed = replay.follow(event) if not replay.follow.done else event
        if followed is not None:
            got.append((key(followed), followed.cursor))
    keys = [g[0] for g in got]
    assert len(keys) == len(set(keys)), "a record came twice"
    assert set(keys) == everything, "a record was lost"
    for partition_keys in _by_partition(keys).values():
        assert partition_keys == sorted(partition_keys), "a partition out of order"
    # Every cursor the client holds resumes exactly: what came after it, nothing before.
    for n, (_, cursor) in enumerate(got):
        again = replay_from(cursor, records_by_tp, ends)
        assert sorted(key(e) for e in again.events) == sorted(keys[n + 1:]), f"resume from event {n}"


def ids_value(record: Record) -> str:
    return json.dumps([record.topic, record.partition, record.offset])


def make_event(record: Record, cursor: str):
    from plugins.kafka_source.records import to_event

    event = to_event(record, SETTINGS)
    event.cursor = cursor
    return event


def _by_partition(keys):
    out = {}
    for topic, partition, offset in keys:
        out.setdefault((topic, partition), []).append(offset)
    return out


# -- cursors ---------------------------------------------------------------------------------------

def test_a_cursor_names_the_record_and_the_next_offset_of_every_partition():
    positions = ids.Positions(TOPICS)
    positions[("emotes", 0)] = 17
    positions[("emotes", 2)] = 4096
    positions[("votes", 0)] = 1
    cursor = positions.cursor("kafka:emotes:0:16")
    assert cursor == "kafka:emotes:0:16~emotes=11..1000,votes=1"
    position = ids.parse(cursor, TOPICS)
    assert (position.topic, position.partition, position.offset) == ("emotes", 0, 16)
    assert position.next == {("emotes", 0): 17, ("emotes", 2): 4096, ("votes", 0): 1}


@pytest.mark.parametrize("cursor", [
    "kafka:emotes:0:16",  # an id without positions (a webhook's): not a place to resume from
    "kafka:emotes:0:16:1795706926773",  # the id form before cursors
    "kafka:emotes:0:16~emotes=12",  # does not place the client just after its own record
    "kafka:other:0:16~other=11",  # a topic not relayed
    "kafka:emotes:0:16~emotes=11,other=1",
    "kafka:emotes:0:16~emotes=zz",
    "kafka:emotes:x:16~emotes=11",
    "kafka:emotes:0:16~emotes=11" + ".1" * 600,  # longer than any cursor relay sends
])
def test_a_cursor_relay_cannot_have_sent_is_refused(cursor):
    assert ids.parse(cursor, TOPICS) is None


def test_long_topic_names_are_hashed_in_ids_and_cursors():
    topic = "t" * 200
    positions = ids.Positions([topic])
    positions[(topic, 0)] = 1
    cursor = positions.cursor(ids.make_id(topic, 0, 0))
    assert len(cursor) < 60 and ids.parse(cursor, [topic]).topic == topic


def test_a_cursor_too_long_to_send_is_left_out():
    positions = ids.Positions(TOPICS)
    for partition in range(200):
        positions[("emotes", partition)] = 2 ** 40
    assert positions.cursor("kafka:emotes:0:1") is None


@pytest.mark.parametrize("wanted, begin, end, limit, expected", [
    (5, 0, 10, 100, (5, "")),
    (None, 0, 10, 100, (0, "")),  # a partition created since: read whole
    (None, 0, 500, 100, (400, "evicted")),
    (11, 0, 10, 100, (0, "unknown-id")),  # beyond the end: a recreated topic
    (2, 4, 10, 100, (4, "evicted")),  # retention removed some
    (10, 0, 10, 100, (10, "")),
])
def test_where_a_partition_is_read_from(wanted, begin, end, limit, expected):
    assert _start(wanted, begin, end, limit) == expected


# -- a broker that reports a log end below the reader's position ------------------------------------

class FakeConsumer:
    def __init__(self):
        self.rereads = 0

    def seek_to_beginning(self, tp):
        self.rereads += 1


class FakeStats:
    def __init__(self):
        self.counts = {}

    def incr(self, name, **labels):
        self.counts[name] = self.counts.get(name, 0) + 1


def test_a_misreported_log_end_is_read_again_at_most_once_per_regression_with_backoff(monkeypatch, caplog):
    now = [1000.0]
    monkeypatch.setattr(broadcast.time, "monotonic", lambda: now[0])
    source = broadcast.BroadcastSource(dict(SETTINGS), dead_letters=False)
    relay = type("R", (), {"stats": FakeStats()})()
    consumer, tp = FakeConsumer(), FakeTP("emotes", 0)

    def probe(end, position=None):
        if position is not None:
            source.positions[tp] = position
        source._check_end(relay, consumer, tp, end)

    with caplog.at_level(logging.WARNING, "relay.source.kafka"):
        probe(5, position=100)  # the first regression: read again at once
        assert consumer.rereads == 1 and source.positions[tp] == 0
        probe(5, position=100)  # read past the (misreported) end again: a new regression...
        probe(5)
        probe(5)  # ...probed again and again: nothing more
        assert consumer.rereads == 1
        assert relay.stats.counts["kafka_offset_regressions"] == 2
        assert len([r for r in caplog.records if "before this worker's position" in r.getMessage()]) == 2
        now[0] += 31  # after the backoff the pending re-read happens, once
        probe(5)
        probe(5)
        assert consumer.rereads == 2
        probe(5, position=100)  # the next one waits twice as long
        now[0] += 31
        probe(5)
        assert consumer.rereads == 2
        now[0] += 30
        probe(5)
        assert consumer.rereads == 3
    probe(200, position=150)  # a log end past the position ends the regression quietly
    assert tp not in source.regressed
