"""Ids are scoped to their channel: a publisher of one channel cannot hide, move or duplicate the
events of another by reusing their ids (issue 13, "Ids are one namespace across channels").

Over real HTTP to a real gunicorn, with JWT tokens that allow publishing on one channel only,
as in the report; plus the core functions (id lookup, merging replays) without HTTP.
"""

import json
import time

import jwt
import pytest

from relay.backbone import MemoryBackbone, Replay, merge_replays
from relay.event import Event
from relay.testing import RelayServer, http_request

KEY = "a-long-random-secret-for-hostile-id-tests-0123456789"


def token(publish):
    return jwt.encode({"relay": {"publish": publish, "subscribe": []}, "exp": int(time.time()) + 600}, KEY,
                      algorithm="HS256")


TRUSTED = token(["b*", "t-*"])  # the producer of channel b
ATTACKER = token(["a*"])  # may publish on channel a only


def post(server, channel, event, data, id=None, who=TRUSTED):
    body = {"event": event, "data": data, **({"id": id} if id is not None else {})}
    status, _, answer = http_request(f"{server.url}/events/{channel}", "POST", json.dumps(body).encode(),
                                     {"Content-Type": "application/json", "Authorization": f"Bearer {who}"})
    return status, json.loads(answer)


def published(server, channel, event, data, id=None, who=TRUSTED):
    status, answer = post(server, channel, event, data, id, who)
    assert status == 202, answer
    return answer["id"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    relay = RelayServer({"auth": {"jwt_key": KEY, "public_channels": ["*"]}},
                        directory=tmp_path_factory.mktemp("hostile-ids")).start()
    yield relay
    relay.stop()


def test_an_id_reused_on_another_channel_does_not_move_a_resume(server):
    # The report: b-2 reused on a made a client of b resuming from b-2 miss b-3 and b-4, silently.
    for n in range(1, 5):
        published(server, "b1", "order", n, id=f"b-{n}")
    assert post(server, "b1", "order", "forged", id="b-9", who=ATTACKER)[0] == 403  # the token is scoped
    published(server, "a1", "order", "forged", id="b-2", who=ATTACKER)
    with server.sse("/events/b1", headers={"Last-Event-ID": "b-2"}) as stream:
        events = stream.events(2, 5)
        assert stream.no_event_within(0.3)
    assert [(e.event, e.id, e.data) for e in events] == [("order", "b-3", "3"), ("order", "b-4", "4")]


def test_a_stream_of_both_channels_resumes_from_the_earliest_event_with_that_id(server):
    for n in range(1, 5):
        published(server, "b2", "order", n, id=f"b-{n}")
    published(server, "a2", "order", "forged", id="b-2", who=ATTACKER)
    with server.sse("/events?channel=a2&channel=b2", headers={"Last-Event-ID": "b-2"}) as stream:
        events = stream.events(3, 5)
        assert stream.no_event_within(0.3)
    # b-2 on b2 came first: everything after it, on both channels; nothing missed, no relay-missed.
    assert [(e.id, e.data) for e in events] == [("b-3", "3"), ("b-4", "4"), ("b-2", "forged")]


def test_an_id_that_exists_only_on_another_channel_is_unknown_to_this_stream(server):
    published(server, "b3", "order", 1, id="b-1")
    published(server, "a3", "order", "forged", id="x-1", who=ATTACKER)
    published(server, "b3", "order", 2, id="b-2")
    with server.sse("/events/b3", headers={"Last-Event-ID": "x-1"}) as stream:
        missed = stream.next_event(5)
        assert stream.no_event_within(0.3)
    # The client of b3 never got x-1: it cannot be positioned by it, and is told so.
    assert missed.event == "relay-missed"
    assert missed.json() == {"last_event_id": "x-1", "reason": "unknown-id", "channels": ["b3"]}


def test_the_trusted_event_with_an_attackers_id_is_not_taken_for_a_duplicate(server):
    start = published(server, "b4", "start", 0)
    published(server, "a4", "order", "forged", id="order-42", who=ATTACKER)
    with server.sse("/events?channel=a4&channel=b4", headers={"Last-Event-ID": start}) as stream:
        forged = stream.next_event(5)  # replayed
        published(server, "b4", "order", "trusted", id="order-42")  # live, after the replay
        published(server, "b4", "order", "next")
        live = stream.events(2, 5)
    assert (forged.id, forged.data) == ("order-42", "forged")
    assert [(e.id, e.data) for e in live][0] == ("order-42", "trusted")
    assert live[1].data == "next"


def test_ids_in_relays_own_id_forms_are_refused_at_publish(server):
    own = published(server, "t-own", "e", 1)  # relay's numbering: <boot>-<n>
    boot = own.rpartition("-")[0]
    for chosen in ("1764170537000-0", "99999999999999-0", "kafka:orders:0:5:1764170537000", f"{boot}-999999"):
        status, answer = post(server, "t-own", "e", 2, id=chosen)
        assert status == 422, (chosen, answer)
        assert answer["message"].startswith("id: ") and "form of an id relay assigns" in answer["message"]
    for chosen in ("order-42", "b-2", "2026-12-01", f"{boot}-x", "kafka-7"):  # ordinary ids still go
        assert post(server, "t-own", "e", 3, id=chosen)[0] == 202, chosen


# -- the core, without HTTP -------------------------------------------------------------------


def test_a_forged_id_in_relays_own_form_cannot_position_other_channels():
    # Over a broker (no refusal there), an id that looks like one of ours but names a later seq.
    backbone = MemoryBackbone(100)
    backbone.append(Event("b", "e", 1))
    forged = backbone.append(Event("a", "e", "forged", id=f"{backbone.boot}-999999"))
    later = [backbone.append(Event("b", "e", n)) for n in (2, 3)]
    # A client of a and b that last saw the forged event resumes right after it.
    replay = backbone.replay(["a", "b"], forged.id, 100)
    assert replay.complete and [e.id for e in replay.events] == [e.id for e in later]
    # A client of b alone never saw it, and the number is beyond anything given: unknown.
    assert backbone.replay(["b"], forged.id, 100) is None


def test_an_id_repeated_on_one_channel_resumes_from_its_first_event():
    backbone = MemoryBackbone(100)
    backbone.append(Event("c", "e", 1, id="dup"))
    between = backbone.append(Event("c", "e", 2))
    backbone.append(Event("c", "e", 3, id="dup"))
    replay = backbone.replay(["c"], "dup", 100)
    assert between.id in [e.id for e in replay.events]  # some again rather than one lost


def test_merging_replays_keeps_events_of_different_channels_with_the_same_id():
    # A Redis Streams source and the Redis backbone number independently: ids may coincide.
    source = Replay([Event("a", "e", "from a", id="1700000000000-5")])
    stored = Replay([Event("b", "e", "from b", id="1700000000000-5"), Event("a", "e", "from a", id="1700000000000-5")])
    merged = merge_replays([source, stored], 10)
    assert sorted((e.channel, e.data) for e in merged.events) == [("a", "from a"), ("b", "from b")]
