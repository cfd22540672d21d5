"""The demo's page, static files and votes API over real HTTP against gunicorn's gevent worker."""

import json
import re

import pytest

from relay.testing import RelayServer, free_port, http_request



def vote(server, room, option, poll="main", raw=None, cookie=None, full=False):
    """POST a vote; with ``cookie`` as a browser holding that Cookie header would. ``full`` also
    answers the response headers."""
    body = raw if raw is not None else json.dumps({"option": option}).encode()
    headers = {"Content-Type": "application/json", **({"Cookie": cookie} if cookie else {})}
    status, answer_headers, answer = http_request(f"{server.url}/demo/api/rooms/{room}/polls/{poll}/votes",
                                                  "POST", body, headers)
    return (status, json.loads(answer), answer_headers) if full else (status, json.loads(answer))


def tallies(server, room, poll="main", cookie=None):
    status, _, answer = http_request(f"{server.url}/demo/api/rooms/{room}/polls/{poll}",
                                     headers={"Cookie": cookie} if cookie else None)
    assert status == 200, answer
    return json.loads(answer)


def voter_cookie(headers) -> str:
    """The ``name=value`` of the voter cookie relay set, checking its attributes."""
    set_cookie = headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie and "Path=/demo/api/" in set_cookie
    return set_cookie.split(";")[0]


def test_the_page_and_its_files_are_served_by_relay(shared_relay_server):
    status, headers, page = http_request(f"{shared_relay_server.url}/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    html = page.decode()
    files = set(re.findall(r'(?:src|href)="(/demo/static/[^"]+)"', html))
    pictures = {f"/demo/static/{name}.svg" for name in ("dolphin", "applause", "heart", "rocket")}
    assert files == {"/demo/static/app.css", "/demo/static/app.js"} | pictures
    _, _, script = http_request(f"{shared_relay_server.url}/demo/static/app.js")
    for path in files | {"/demo/static/sparkle.svg"}:  # the sparkle stands for unknown emotes
        status, headers, body = http_request(f"{shared_relay_server.url}{path}")
        assert status == 200 and len(body) < 20_000, path
        # No CDN, no third-party origin: everything the page loads comes from relay. (An SVG
        # names its XML namespace with a URL, which is never fetched.)
        assert not re.search(rb"https?://", body.replace(b'xmlns="http://www.w3.org/2000/svg"', b"")), path
        if path.endswith(".svg"):
            # Pictures, not fonts: small, and nothing in them that runs.
            assert headers["Content-Type"].startswith("image/svg+xml") and len(body) < 2_000, path
            assert b"<script" not in body and b"<svg" in body, path
            assert path.removeprefix("/demo/static/").encode() in script + page, path
    assert not re.search(r"https?://", html)
    assert b"new EventSource(" in script
    assert b'addEventListener("emote"' in script and b'addEventListener("votes"' in script
    assert b'addEventListener("relay-presence"' in script and b'presence: "1"' in script


def test_config_describes_the_poll(shared_relay_server):
    status, _, body = http_request(f"{shared_relay_server.url}/demo/api/config")
    assert status == 200
    assert json.loads(body) == {"default_room": "lobby", "question": "What should relay carry next?",
                                "options": ["Redis", "Kafka", "Webhooks"], "channel_prefix": "room:",
                                "tallies": "memory"}


def test_votes_are_tallied_per_room_and_poll(shared_relay_server):
    server = shared_relay_server
    assert tallies(server, "t1") == {"room": "t1", "poll": "main", "your_vote": None,
                                     "totals": {"Redis": 0, "Kafka": 0, "Webhooks": 0}, "total": 0}
    for option in ("Kafka", "Kafka", "Redis"):  # no cookie sent back: three different voters
        status, answer = vote(server, "t1", option)
        assert status == 200
    assert answer["totals"] == {"Redis": 1, "Kafka": 2, "Webhooks": 0} and answer["total"] == 3
    assert answer["event_id"]
    vote(server, "t1", "Webhooks", poll="other")
    vote(server, "t2", "Redis")
    assert tallies(server, "t1")["totals"] == {"Redis": 1, "Kafka": 2, "Webhooks": 0}
    assert tallies(server, "t1", "other")["totals"] == {"Redis": 0, "Kafka": 0, "Webhooks": 1}
    assert tallies(server, "t2")["totals"] == {"Redis": 1, "Kafka": 0, "Webhooks": 0}


def test_each_vote_broadcasts_the_totals_as_a_votes_event(shared_relay_server):
    server = shared_relay_server
    with server.sse("/events/room:broadcast") as stream:
        _, first = vote(server, "broadcast", "Redis")
        _, second = vote(server, "broadcast", "Kafka")
        events = stream.events(2, 5)
    assert [e.event for e in events] == ["votes", "votes"]
    assert [e.id for e in events] == [first["event_id"], second["event_id"]]
    assert events[1].json() == {"room": "broadcast", "poll": "main",
                                "totals": {"Redis": 1, "Kafka": 1, "Webhooks": 0}, "total": 2}


def test_a_late_joiner_gets_the_current_totals(shared_relay_server):
    server = shared_relay_server
    _, first = vote(server, "latecomers", "Webhooks")
    vote(server, "latecomers", "Webhooks")
    # A page that opens now fetches the totals ...
    assert tallies(server, "latecomers")["totals"]["Webhooks"] == 2
    # ... and one that comes back with Last-Event-ID is replayed the votes it missed.
    with server.sse("/events/room:latecomers", headers={"Last-Event-ID": first["event_id"]}) as stream:
        missed = stream.next_event(5)
    assert missed.event == "votes" and missed.json()["totals"]["Webhooks"] == 2


BAD_VOTES = [
    (b"not json", 400, "invalid_json", "not UTF-8 JSON"),
    (b"\xff\xfe", 400, "invalid_json", "not UTF-8 JSON"),
    (b'["Kafka"]', 422, "invalid_vote", "must be a JSON object, got list"),
    (b"{}", 422, "invalid_vote", "option: is required"),
    (b'{"option": "Cobol"}', 422, "invalid_vote", "'Cobol' is not one of this poll's options"),
    (b'{"option": 1}', 422, "invalid_vote", "1 is not one of this poll's options"),
    (b'{"option": "Kafka", "weight": 100}', 422, "invalid_vote", "unknown field(s) weight"),
]


def test_one_vote_per_browser_per_poll(shared_relay_server):
    """The first vote sets an HttpOnly voter cookie; a second vote with it is a 409 that counts
    nothing and publishes nothing, in this poll only."""
    server = shared_relay_server
    status, answer, headers = vote(server, "once", "Kafka", full=True)
    assert status == 200 and answer["your_vote"] == "Kafka" and answer["totals"]["Kafka"] == 1
    cookie = voter_cookie(headers)
    assert tallies(server, "once", cookie=cookie)["your_vote"] == "Kafka"
    assert tallies(server, "once")["your_vote"] is None  # another browser has not voted

    before = server.health()["backbone"]["last_seq"]
    for option in ("Kafka", "Redis"):
        status, answer, headers = vote(server, "once", option, cookie=cookie, full=True)
        assert status == 409 and answer["error"] == "already_voted", answer
        assert answer["message"] == "you already voted for Kafka in this poll; one vote per browser"
        assert answer["your_vote"] == "Kafka" and "Set-Cookie" not in headers
    assert tallies(server, "once")["totals"] == {"Redis": 0, "Kafka": 1, "Webhooks": 0}
    assert server.health()["backbone"]["last_seq"] == before  # no votes event for a refused vote

    # The same browser votes once in every other poll and room, with the same cookie.
    for room, poll in (("once", "second"), ("elsewhere", "main")):
        status, answer, headers = vote(server, room, "Redis", poll=poll, cookie=cookie, full=True)
        assert status == 200 and answer["totals"]["Redis"] == 1 and "Set-Cookie" not in headers
    # Another browser (another cookie) still votes in the first poll.
    status, answer = vote(server, "once", "Redis", cookie=voter_cookie(vote(server, "other", "Redis", full=True)[2]))
    assert status == 200 and answer["totals"] == {"Redis": 1, "Kafka": 1, "Webhooks": 0}


def test_a_forged_voter_cookie_is_replaced_not_trusted(shared_relay_server):
    server = shared_relay_server
    for forged in ("relay_demo_voter=", "relay_demo_voter=short", "relay_demo_voter=" + "x;" * 40):
        status, answer, headers = vote(server, "forged", "Redis", cookie=forged, full=True)
        assert status == 200, answer
        assert voter_cookie(headers) != forged  # a fresh id of relay's own
    assert tallies(server, "forged")["total"] == 3


def test_a_vote_must_be_sent_as_json(shared_relay_server):
    """A cross-site form cannot send application/json: with it, no other site can vote for a visitor."""
    status, _, answer = http_request(f"{shared_relay_server.url}/demo/api/rooms/forms/polls/main/votes", "POST",
                                     b'{"option": "Kafka"}', {"Content-Type": "text/plain"})
    assert status == 415 and json.loads(answer)["error"] == "unsupported_media_type"
    assert tallies(shared_relay_server, "forms")["total"] == 0


@pytest.mark.parametrize("body,status,error,message", BAD_VOTES)
def test_a_bad_vote_gets_a_clear_error_and_changes_nothing(shared_relay_server, body, status, error, message):
    server = shared_relay_server
    before = server.health()["backbone"]["last_seq"]
    got_status, answer = vote(server, "strict", None, raw=body)
    assert (got_status, answer["error"]) == (status, error)
    assert message in answer["message"]
    if answer["message"].startswith("option:"):  # the answer lists what may be chosen
        assert answer["options"] == ["Redis", "Kafka", "Webhooks"]
    assert tallies(server, "strict")["total"] == 0
    assert server.health()["backbone"]["last_seq"] == before  # nothing was published


@pytest.mark.parametrize("room,poll,error", [("two%20words", "main", "invalid_room"), ("x" * 65, "main", "invalid_room"),
                                             ("ok", "semi%3Bcolon", "invalid_poll")])
def test_room_and_poll_names_are_checked(shared_relay_server, room, poll, error):
    status, answer = vote(shared_relay_server, room, "Kafka", poll=poll)
    assert status == 400 and answer["error"] == error and "A-Z a-z 0-9 _ . -" in answer["message"]
    status, _, body = http_request(f"{shared_relay_server.url}/demo/api/rooms/{room}/polls/{poll}")
    assert status == 400 and json.loads(body)["error"] == error


def test_poll_options_and_question_come_from_the_config(relay_server_factory):
    server = relay_server_factory(config={"demo": {"options": ["Yes", "No"], "question": "Ship it?",
                                                   "default_room": "talk"}})
    _, _, body = http_request(f"{server.url}/demo/api/config")
    assert json.loads(body)["options"] == ["Yes", "No"] and json.loads(body)["default_room"] == "talk"
    status, answer = vote(server, "talk", "Yes")
    assert status == 200 and answer["totals"] == {"Yes": 1, "No": 0}
    assert vote(server, "talk", "Kafka")[0] == 422


@pytest.mark.parametrize("demo,problem", [
    ({"tallies": "postgres://x"}, "demo.tallies: 'postgres://x' is not 'memory', a Redis URL"),
    ({"options": []}, "demo.options: a poll needs at least one option"),
    ({"colour": "blue"}, "demo.colour: unknown key"),
])
def test_a_bad_demo_config_stops_relay_with_the_key_named(tmp_path, demo, problem):
    server = RelayServer({"demo": demo}, directory=tmp_path)
    with pytest.raises(RuntimeError) as failure:
        server.start(timeout=15)
    assert problem in str(failure.value)


def test_tallies_in_redis_are_shared_and_survive_a_restart(relay_server_factory, demo_redis):
    config = {"demo": {"tallies": demo_redis.url}}
    one = relay_server_factory(config=config)
    two = relay_server_factory(config=config)
    vote(one, "shared", "Kafka")
    status, answer = vote(two, "shared", "Kafka")
    assert status == 200 and answer["totals"]["Kafka"] == 2
    assert demo_redis.client(decode_responses=True).hgetall("relay:demo:votes:shared:main") == {"Kafka": "2"}
    # Who voted is shared too: a browser that voted through one relay cannot vote again through the other.
    status, _, headers = vote(one, "shared", "Redis", poll="voters", full=True)
    cookie = voter_cookie(headers)
    status, answer = vote(two, "shared", "Kafka", poll="voters", cookie=cookie)
    assert status == 409 and answer["your_vote"] == "Redis"
    one.stop()
    one.start()
    assert tallies(one, "shared")["totals"] == {"Redis": 0, "Kafka": 2, "Webhooks": 0}
    assert vote(one, "shared", "Kafka", poll="voters", cookie=cookie)[0] == 409  # kept over the restart
    assert tallies(one, "shared", "voters", cookie=cookie)["your_vote"] == "Redis"
    assert one.health()["components"]["demo"] == {"state": "up", "tallies": demo_redis.url}


def test_an_unreachable_redis_is_a_clear_503_not_a_crash(relay_server_factory):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    server = relay_server_factory(config={"demo": {"tallies": url}})
    status, answer = vote(server, "down", "Kafka")
    assert status == 503 and answer["error"] == "tallies_unavailable"
    assert "the vote was not counted" in answer["message"] and "Redis at" in answer["message"]
    status, _, body = http_request(f"{server.url}/demo/api/rooms/down/polls/main")
    assert status == 503 and json.loads(body)["error"] == "tallies_unavailable"
    health = server.health()
    assert health["components"]["demo"]["state"] == "down" and health["status"] == "degraded"
    assert server.health()["backbone"]["last_seq"] == 0  # no votes event for an uncounted vote


def test_the_page_can_be_turned_off(relay_server_factory):
    server = relay_server_factory(config={"disable_plugins": ["demo"]})
    status, _, _ = http_request(f"{server.url}/")
    assert status == 404


def test_with_auth_on_votes_need_a_token_that_covers_the_room(relay_server_factory):
    import time

    import jwt

    key = "demo-secret-for-tests-only-0123456789abcdef"

    def bearer(claim):
        token = jwt.encode({"relay": claim, "exp": int(time.time()) + 300}, key, algorithm="HS256")
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    server = relay_server_factory(config={"auth": {"jwt_key": key, "public_channels": ["room:open"]}})
    url = f"{server.url}/demo/api/rooms/%s/polls/main"
    body = b'{"option": "Kafka"}'
    status, _, answer = http_request(url % "stage" + "/votes", "POST", body, {"Content-Type": "application/json"})
    assert status == 401 and json.loads(answer)["error"] == "unauthorized"
    status, _, answer = http_request(url % "stage" + "/votes", "POST", body, bearer({"publish": ["room:other"]}))
    assert status == 403 and json.loads(answer)["error"] == "forbidden"
    status, _, answer = http_request(url % "stage" + "/votes", "POST", body, bearer({"publish": ["room:*"]}))
    assert status == 200 and json.loads(answer)["totals"]["Kafka"] == 1
    # Reading tallies is subscribing: needs a token, unless the room's channel is public.
    assert http_request(url % "stage")[0] == 401
    assert http_request(url % "stage", headers=bearer({"subscribe": ["room:stage"]}))[0] == 200
    assert http_request(url % "open")[0] == 200
