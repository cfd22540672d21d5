"""The in-memory backbone's ids and history, without HTTP."""

from relay.backbone import MemoryBackbone
from relay.event import Event


def publish(backbone, channel, n=1, **kwargs):
    return [backbone.append(Event(channel, "e", i, **kwargs)) for i in range(n)]


def test_ids_are_assigned_in_order_and_name_this_boot():
    backbone = MemoryBackbone(10)
    a, b = publish(backbone, "c", 2)
    assert a.id == f"{backbone.boot}-1" and b.id == f"{backbone.boot}-2"
    assert backbone.position(b.id) == 2


def test_replay_after_a_known_id():
    backbone = MemoryBackbone(10)
    events = publish(backbone, "c", 5)
    replay = backbone.replay(["c"], events[1].id, 100)
    assert replay.complete and [e.id for e in replay.events] == [e.id for e in events[2:]]


def test_id_from_another_boot_or_garbage_is_unknown():
    backbone = MemoryBackbone(10)
    publish(backbone, "c", 3)
    assert backbone.replay(["c"], "zzz-1", 100) is None
    assert backbone.replay(["c"], "nonsense", 100) is None


def test_evicted_history_is_reported_incomplete_with_what_is_left():
    backbone = MemoryBackbone(3)
    events = publish(backbone, "c", 6)
    replay = backbone.replay(["c"], events[0].id, 100)
    assert not replay.complete and replay.reason == "evicted"
    assert [e.data for e in replay.events] == [3, 4, 5]


def test_several_channels_replay_in_publish_order():
    backbone = MemoryBackbone(10)
    first = backbone.append(Event("a", "e", 0))
    for i in range(1, 7):
        backbone.append(Event("a" if i % 2 else "b", "e", i))
    backbone.append(Event("other", "e", 99))
    replay = backbone.replay(["a", "b"], first.id, 100)
    assert [e.data for e in replay.events] == [1, 2, 3, 4, 5, 6]


def test_publisher_ids_are_kept_and_resumable_until_evicted():
    backbone = MemoryBackbone(2)
    backbone.append(Event("c", "e", 1, id="order-1"))
    backbone.append(Event("c", "e", 2, id="order-2"))
    assert [e.data for e in backbone.replay(["c"], "order-1", 10).events] == [2]
    backbone.append(Event("c", "e", 3, id="order-3"))
    assert backbone.replay(["c"], "order-1", 10) is None  # evicted: no longer known


def test_least_recently_used_channels_are_forgotten_beyond_the_limit():
    backbone = MemoryBackbone(10, max_channels=2)
    mark, _ = publish(backbone, "a", 2)
    publish(backbone, "b")
    publish(backbone, "c")  # forgets "a"
    replay = backbone.replay(["a"], mark.id, 10)
    assert not replay.complete
    assert backbone.stats()["channels"] == 2


def test_replay_is_capped_at_the_limit():
    backbone = MemoryBackbone(100)
    events = publish(backbone, "c", 50)
    replay = backbone.replay(["c"], events[0].id, 10)
    assert len(replay.events) == 10 and not replay.complete
    assert replay.events[-1].id == events[-1].id


def test_replays_from_a_source_and_the_backbone_merge_in_time_order():
    from relay.backbone import Replay, merge_replays

    source = Replay([Event("a", "e", 1, id="100-1"), Event("a", "e", 3, id="300-0")], complete=True)
    stored = Replay([Event("b", "e", 2, id="200-5"), Event("a", "e", 3, id="300-0")], complete=False,
                    reason="evicted")
    merged = merge_replays([source, stored], 10)
    assert [e.data for e in merged.events] == [1, 2, 3]
    assert (merged.complete, merged.reason) == (False, "evicted")
