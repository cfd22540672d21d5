"""POST /events/<channel> over real HTTP: accepted events get an id, bad ones a clear error."""

import json

import pytest

from relay.testing import http_request


def post(server, channel, body, content_type="application/json"):
    status, headers, raw = http_request(f"{server.url}/events/{channel}", "POST", body,
                                        {"Content-Type": content_type})
    return status, json.loads(raw)


def test_publish_returns_202_with_the_event_id(shared_relay_server):
    status, answer = post(shared_relay_server, "demo", b'{"event":"emote","data":{"emote":"dolphin"}}')
    assert status == 202 and answer["id"] and answer["channel"] == "demo"
    with shared_relay_server.sse("/events/demo", headers={"Last-Event-ID": answer["id"]}) as stream:
        status, second = post(shared_relay_server, "demo", b'{"event":"emote","data":2}')
        event = stream.next_event(5)
    assert event.id == second["id"] and event.json() == 2


def test_publisher_chosen_id_is_used(shared_relay_server):
    status, answer = post(shared_relay_server, "demo", b'{"event":"order","data":1,"id":"order-42"}')
    assert status == 202 and answer["id"] == "order-42"


BAD_INPUTS = [
    (b'{"event": "emote", "data": ', 400, "not valid JSON"),
    (b"\xff\xfe{}", 400, "not UTF-8"),
    (b'{"event": "emote", "data": NaN}', 400, "NaN is not valid JSON"),
    (b'["emote"]', 422, "must be a JSON object"),
    (b'{"data": 1}', 422, "event: is required"),
    (b'{"event": ""}', 422, "event: must not be empty"),
    (b'{"event": 7}', 422, "event: must be a string"),
    (b'{"event": "a\\nb"}', 422, "event: must not contain CR, LF or NUL"),
    (b'{"event": "a\\rb"}', 422, "event: must not contain CR, LF or NUL"),
    (b'{"event": "e", "id": "1\\u0000"}', 422, "id: must not contain CR, LF or NUL"),
    (b'{"event": "e", "id": "x\\ny"}', 422, "id: must not contain CR, LF or NUL"),
    (b'{"event": "e", "evnt": 1}', 422, "unknown field(s) evnt"),
]


@pytest.mark.parametrize("body,status,message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_publish_is_rejected_and_publishes_nothing(shared_relay_server, body, status, message):
    before = shared_relay_server.health()["backbone"]["last_seq"]
    got, answer = post(shared_relay_server, "demo", body)
    assert got == status and message in answer["message"], answer
    assert shared_relay_server.health()["backbone"]["last_seq"] == before


@pytest.mark.parametrize("channel", ["a%0Ab", "a%0Db", "a%00b"])
def test_channel_with_cr_lf_nul_is_rejected(shared_relay_server, channel):
    status, answer = post(shared_relay_server, channel, b'{"event":"e"}')
    assert status == 422 and "channel: must not contain CR, LF or NUL" in answer["message"]


def test_body_over_the_limit_is_413(relay_server_factory):
    server = relay_server_factory({"max_body_size": 1024})
    status, answer = post(server, "demo", json.dumps({"event": "e", "data": "x" * 2000}).encode())
    assert status == 413 and "1024 bytes" in answer["message"]
    assert server.health()["backbone"]["last_seq"] == 0
    status, _ = post(server, "demo", json.dumps({"event": "e", "data": "x" * 900}).encode())
    assert status == 202


def test_unknown_route_answers_json(shared_relay_server):
    status, _, body = http_request(f"{shared_relay_server.url}/nothing-here")
    assert status == 404 and json.loads(body)["error"] == "not_found"
