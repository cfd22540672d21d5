"""The live reactions page in real headless Chromium against relay under gunicorn's gevent worker.

Two pages (two browser contexts, as two browsers) join one room; what one does shows up in the
other through relay: the page publishes over relay's HTTP API and listens with the browser's
own EventSource. Failing tests leave screenshots in test-artifacts/.
"""

import json
import re

import pytest

pytest.register_assert_rewrite("browser_support")

from browser_support import save_screenshot, wait_connected
from kafka_support import create_topic, topic_name
from playwright.sync_api import expect

from relay.testing import http_request, wait_until


expect.set_options(timeout=10_000)
FAST_RETRY = {"RELAY_SSE_RETRY": "300"}  # the browser reconnects 300 ms after losing the stream


def room_url(server, room):
    return f"{server.url}/?room={room}"


def flying(page, emote):
    return page.locator(f'[data-testid="stage"] [data-testid="flying-emote"][data-emote="{emote}"]')


def picture_drawn(page, selector):
    """How many non-transparent pixels the ``img`` at ``selector`` draws on a canvas: the picture
    really renders, whatever fonts the machine has."""
    return page.locator(selector).first.evaluate("""img => {
        if (!img.complete || !img.naturalWidth) return 0;
        const canvas = document.createElement("canvas");
        canvas.width = canvas.height = 48;
        const context = canvas.getContext("2d");
        context.drawImage(img, 0, 0, 48, 48);
        const pixels = context.getImageData(0, 0, 48, 48).data;
        let drawn = 0;
        for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 128) drawn += 1;
        return drawn;
    }""")


REFUSED = r"status of 409 "  # the console line Chromium logs for a refused second vote


def no_page_errors(*pages, expected=None):
    """No uncaught errors and no console errors but network ones (and ``expected``, a regex)."""
    for page in pages:
        errors = [e for e in page.errors if not (expected and re.search(expected, e))]
        assert errors == [], errors


def test_a_dolphin_clicked_in_one_page_swims_in_the_other(relay_server, open_page):
    a = open_page(room_url(relay_server, "reef"))
    b = open_page(room_url(relay_server, "reef"))
    wait_connected(a)
    wait_connected(b)
    expect(b.get_by_test_id("channel")).to_have_text("room:reef")

    expect(b.get_by_test_id("emote-summary")).to_contain_text("Received 0 emotes ·")
    a.get_by_test_id("emote-dolphin").click()
    expect(flying(b, "dolphin")).to_have_count(1)
    expect(flying(b, "dolphin")).to_have_class(re.compile(r"\bswim\b"))
    expect(flying(b, "dolphin").locator("img")).to_have_attribute("src", "/demo/static/dolphin.svg")
    expect(b.get_by_test_id("emote-count")).to_have_text("1")
    expect(b.get_by_test_id("emote-summary")).to_contain_text("Received 1 emote ·")
    # The sender sees it too, because it comes back through relay, not from a local shortcut.
    expect(a.get_by_test_id("emote-count")).to_have_text("1")

    a.get_by_test_id("emote-applause").click()
    expect(flying(b, "applause")).to_have_count(1)
    expect(b.get_by_test_id("emote-count")).to_have_text("2")
    expect(b.get_by_test_id("emote-summary")).to_contain_text("Received 2 emotes ·")
    expect(b.get_by_test_id("last-emote")).to_have_text("applause")
    no_page_errors(a, b)


def test_a_vote_in_one_page_updates_the_tally_in_the_other(relay_server, open_page):
    a = open_page(room_url(relay_server, "polls"))
    b = open_page(room_url(relay_server, "polls"))
    wait_connected(a)
    wait_connected(b)
    expect(b.get_by_test_id("poll-question")).to_have_text("What should relay carry next?")
    expect(b.get_by_test_id("tally-Kafka")).to_have_text("0")

    a.get_by_test_id("vote-Kafka").click()
    expect(b.get_by_test_id("tally-Kafka")).to_have_text("1")
    expect(b.get_by_test_id("vote-summary")).to_contain_text("1 vote ·")
    b.get_by_test_id("vote-Redis").click()
    for page in (a, b):
        expect(page.get_by_test_id("tally-Kafka")).to_have_text("1")
        expect(page.get_by_test_id("tally-Redis")).to_have_text("1")
        expect(page.get_by_test_id("tally-Webhooks")).to_have_text("0")
        expect(page.get_by_test_id("vote-total")).to_have_text("2")
        expect(page.get_by_test_id("vote-summary")).to_contain_text("2 votes ·")
    no_page_errors(a, b)


def test_one_vote_per_browser_enforced_by_relay(relay_server, open_page):
    """A second vote from the same browser is refused by relay (409), shown with relay's own
    message; reloading the page (or a second tab: the same cookie) does not give a new vote."""
    a = open_page(room_url(relay_server, "ballot"))
    b = open_page(room_url(relay_server, "ballot"))
    wait_connected(a)
    wait_connected(b)
    a.get_by_test_id("vote-Kafka").click()
    expect(b.get_by_test_id("tally-Kafka")).to_have_text("1")
    expect(a.get_by_test_id("vote-Kafka")).to_have_attribute("aria-pressed", "true")
    assert a.context.cookies()[0]["httpOnly"]  # the voter id: the page's script cannot read or change it
    assert a.evaluate("document.cookie") == ""

    a.get_by_test_id("vote-Webhooks").click()  # changing one's mind is a second vote: refused
    expect(a.get_by_test_id("error")).to_have_text(
        "Your vote was not counted: you already voted for Kafka in this poll; one vote per browser")
    a.get_by_test_id("vote-Kafka").click()
    expect(a.get_by_test_id("error")).to_contain_text("you already voted for Kafka")

    # Relay refuses it, not the page: the same browser's other tab, and a reload, are refused too.
    again = a.context.new_page()
    again.goto(room_url(relay_server, "ballot"))
    wait_connected(again)
    expect(again.get_by_test_id("vote-Kafka")).to_have_attribute("aria-pressed", "true")  # remembered by relay
    expect(again.get_by_test_id("vote-Redis")).to_have_attribute("aria-pressed", "false")
    again.get_by_test_id("vote-Redis").click()
    expect(again.get_by_test_id("error")).to_contain_text("you already voted for Kafka in this poll")
    status = again.evaluate("""async () => (await fetch("/demo/api/rooms/ballot/polls/main/votes", {
        method: "POST", headers: {"Content-Type": "application/json"}, body: '{"option": "Redis"}'})).status""")
    assert status == 409

    b.get_by_test_id("vote-Redis").click()  # another browser still has its vote
    for page in (a, b, again):
        expect(page.get_by_test_id("tally-Kafka")).to_have_text("1")
        expect(page.get_by_test_id("tally-Redis")).to_have_text("1")
        expect(page.get_by_test_id("tally-Webhooks")).to_have_text("0")
        expect(page.get_by_test_id("vote-total")).to_have_text("2")
    assert b.get_by_test_id("error").is_hidden()
    no_page_errors(a, b, expected=REFUSED)


def test_a_page_that_joins_late_shows_the_current_tallies(relay_server, open_page):
    for option in ("Redis", "Redis", "Webhooks"):
        answer = relay_server_vote(relay_server, "late", option)
    assert answer["total"] == 3
    late = open_page(room_url(relay_server, "late"))
    wait_connected(late)
    expect(late.get_by_test_id("tally-Redis")).to_have_text("2")
    expect(late.get_by_test_id("tally-Webhooks")).to_have_text("1")
    expect(late.get_by_test_id("vote-total")).to_have_text("3")
    no_page_errors(late)


def test_rooms_are_separate_and_the_picker_switches_room(relay_server, open_page):
    a = open_page(room_url(relay_server, "north"))
    b = open_page(room_url(relay_server, "south"))
    wait_connected(a)
    wait_connected(b)
    a.get_by_test_id("emote-heart").click()
    expect(flying(a, "heart")).to_have_count(1)
    a.get_by_test_id("vote-Redis").click()
    expect(a.get_by_test_id("tally-Redis")).to_have_text("1")

    # b's own room, south: two emotes and a vote, then b switches to north.
    b.get_by_test_id("emote-dolphin").click()
    b.get_by_test_id("emote-applause").click()
    b.get_by_test_id("vote-Kafka").click()
    expect(b.get_by_test_id("emote-count")).to_have_text("2")
    expect(b.get_by_test_id("tally-Kafka")).to_have_text("1")
    expect(b.get_by_test_id("vote-Kafka")).to_have_attribute("aria-pressed", "true")

    b.get_by_test_id("room-input").fill("north")
    b.get_by_test_id("room-join").click()
    expect(b.get_by_test_id("room-name")).to_have_text("north")
    assert b.url.endswith("?room=north")
    # Nothing of south is left: counters, the last emote, the flyers, the tallies, the vote.
    expect(b.get_by_test_id("emote-summary")).to_contain_text("Received 0 emotes · last: none yet")
    expect(b.locator('[data-testid="stage"] [data-testid="flying-emote"]')).to_have_count(0)
    wait_connected(b)
    expect(b.get_by_test_id("tally-Redis")).to_have_text("1")  # fetched on joining
    expect(b.get_by_test_id("tally-Kafka")).to_have_text("0")
    expect(b.get_by_test_id("vote-summary")).to_contain_text("1 vote ·")
    expect(b.get_by_test_id("vote-Kafka")).to_have_attribute("aria-pressed", "false")
    a.get_by_test_id("emote-rocket").click()
    expect(flying(b, "rocket")).to_have_count(1)
    # The heart was sent to north before b joined: it is not replayed as a new animation.
    expect(b.get_by_test_id("emote-summary")).to_contain_text("Received 1 emote · last: rocket")
    no_page_errors(a, b)


def test_emotes_published_by_any_producer_show_up(relay_server, open_page):
    page = open_page(room_url(relay_server, "producers"))
    wait_connected(page)
    relay_server.publish("room:producers", "emote", {"emote": "dolphin", "from": "a script"})
    relay_server.publish("room:producers", "emote", "applause")  # a raw string, as format="raw" sends
    relay_server.publish("room:producers", "emote", {"emote": "<b>octopus</b>"})  # unknown: shown as text
    expect(flying(page, "dolphin")).to_have_count(1)
    expect(flying(page, "applause")).to_have_count(1)
    expect(flying(page, "<b>octopus</b>")).to_have_text("<b>octopus</b>")
    expect(flying(page, "<b>octopus</b>").locator("img")).to_have_attribute("src", "/demo/static/sparkle.svg")
    expect(page.get_by_test_id("emote-count")).to_have_text("3")
    assert page.locator("[data-testid=stage] b").count() == 0  # text, never markup
    expect(page.get_by_test_id("last-emote")).to_have_text("<b>octopus</b>")
    # Malformed events from a careless producer are ignored without breaking the page.
    for data in ("garbage", None, {"room": "producers", "poll": "main", "total": 9, "totals": None},
                 {"emote": 42}, [1, 2]):
        relay_server.publish("room:producers", "votes", data)
        relay_server.publish("room:producers", "emote", data)
    relay_server.publish("room:producers", "emote", "rocket")
    expect(page.get_by_test_id("last-emote")).to_have_text("rocket")
    expect(page.get_by_test_id("emote-count")).to_have_text("5")  # "garbage" is a (strange) emote name
    expect(page.get_by_test_id("vote-total")).to_have_text("0")
    no_page_errors(page)


def test_after_a_network_outage_the_page_resumes_with_last_event_id(relay_server_factory, tcp_proxy, open_page):
    """Embedded default: relay keeps running, the browser's stream breaks; it resumes by itself
    and the in-memory history replays what was published during the outage."""
    server = relay_server_factory(env=FAST_RETRY)
    proxy = tcp_proxy(server.port)  # b reaches relay through a network that can fail
    a = open_page(room_url(server, "outage"))
    b = open_page(room_url(proxy, "outage"))
    wait_connected(a)
    wait_connected(b)
    a.get_by_test_id("emote-dolphin").click()
    expect(b.get_by_test_id("emote-count")).to_have_text("1")

    proxy.cut()
    wait_connected(b, "reconnecting")
    a.get_by_test_id("emote-rocket").click()
    a.get_by_test_id("emote-heart").click()
    a.get_by_test_id("vote-Kafka").click()
    expect(a.get_by_test_id("emote-count")).to_have_text("3")
    assert b.get_by_test_id("emote-count").inner_text() == "1"  # b really missed them
    proxy.restore()

    wait_connected(b)
    expect(flying(b, "rocket")).to_have_count(1)
    expect(flying(b, "heart")).to_have_count(1)
    expect(b.get_by_test_id("emote-count")).to_have_text("3")
    expect(b.get_by_test_id("tally-Kafka")).to_have_text("1")
    expect(b.get_by_test_id("notice")).to_be_hidden()  # everything was replayed: no relay-missed
    no_page_errors(a, b)


def test_when_the_browser_gives_up_the_page_reconnects_by_itself(relay_server_factory, open_page):
    """A 503 (relay at its connection limit) makes EventSource give up for good (readyState
    CLOSED); the page then opens a new one itself, with backoff, until relay has room."""
    server = relay_server_factory(config={"sinks": {"sse": {"max_connections": 1}}})
    a = open_page(room_url(server, "full"))
    wait_connected(a)
    b = open_page(room_url(server, "full"))
    wait_connected(b, "reconnecting")
    assert b.evaluate("state.source.readyState === EventSource.CLOSED")
    a.context.close()  # frees the one stream relay allows

    wait_connected(b)
    server.publish("room:full", "emote", {"emote": "dolphin"})
    expect(flying(b, "dolphin")).to_have_count(1)
    no_page_errors(b, expected=r"status of 503 ")


def test_page_reconnects_after_a_relay_restart_with_fresh_tallies(relay_server_factory, open_page):
    """Embedded default: history and in-memory tallies are lost; the page must say so and not lie."""
    server = relay_server_factory(env=FAST_RETRY)
    a = open_page(room_url(server, "restart"))
    b = open_page(room_url(server, "restart"))
    wait_connected(a)
    wait_connected(b)
    a.get_by_test_id("vote-Webhooks").click()
    b.get_by_test_id("vote-Webhooks").click()  # one vote per browser
    a.get_by_test_id("emote-dolphin").click()
    expect(b.get_by_test_id("tally-Webhooks")).to_have_text("2")
    expect(b.get_by_test_id("emote-count")).to_have_text("1")

    server.stop()
    wait_connected(b, "reconnecting")
    expect(b.get_by_test_id("connection")).to_have_text("reconnecting…")
    server.start()

    wait_connected(b)
    wait_connected(a)
    # b resumed with Last-Event-ID; the new process does not know that id and says so ...
    expect(b.get_by_test_id("notice")).to_contain_text("could not be replayed (unknown-id)")
    # ... and b refetched the tallies: the restarted in-memory store is empty, so no stale 2.
    expect(b.get_by_test_id("tally-Webhooks")).to_have_text("0")
    expect(b.get_by_test_id("vote-total")).to_have_text("0")

    # Events published after the restart arrive, and votes count from the new totals.
    server.publish("room:restart", "emote", {"emote": "rocket"})
    expect(flying(b, "rocket")).to_have_count(1)
    a.get_by_test_id("vote-Kafka").click()
    expect(b.get_by_test_id("tally-Kafka")).to_have_text("1")
    expect(b.get_by_test_id("vote-total")).to_have_text("1")
    no_page_errors(a, b)


def test_tallies_kept_in_redis_survive_a_restart_and_are_refetched(relay_server_factory, demo_redis, open_page):
    server = relay_server_factory(config={"demo": {"tallies": demo_redis.url}}, env=FAST_RETRY)
    a = open_page(room_url(server, "kept"))
    b = open_page(room_url(server, "kept"))
    wait_connected(a)
    wait_connected(b)
    a.get_by_test_id("vote-Redis").click()
    expect(b.get_by_test_id("tally-Redis")).to_have_text("1")

    server.stop()
    wait_connected(b, "reconnecting")
    # Votes counted elsewhere while this relay was down (another relay sharing the Redis).
    demo_redis.client(decode_responses=True).hincrby("relay:demo:votes:kept:main", "Redis", 4)
    demo_redis.client(decode_responses=True).hincrby("relay:demo:votes:kept:main", "Kafka", 2)
    server.start()

    wait_connected(b)
    expect(b.get_by_test_id("tally-Redis")).to_have_text("5")
    expect(b.get_by_test_id("tally-Kafka")).to_have_text("2")
    expect(b.get_by_test_id("vote-total")).to_have_text("7")
    expect(b.get_by_test_id("vote-Redis")).to_have_attribute("aria-pressed", "false")
    expect(a.get_by_test_id("vote-Redis")).to_have_attribute("aria-pressed", "true")
    a.get_by_test_id("vote-Kafka").click()  # who voted is kept in Redis too: a's second vote is refused
    expect(a.get_by_test_id("error")).to_contain_text("you already voted for Redis")
    b.get_by_test_id("vote-Kafka").click()
    expect(a.get_by_test_id("tally-Kafka")).to_have_text("3")
    no_page_errors(a, b, expected=REFUSED)


def relay_server_vote(server, room, option, poll="main"):
    status, _, body = http_request(f"{server.url}/demo/api/rooms/{room}/polls/{poll}/votes", "POST",
                                   json.dumps({"option": option}).encode(), {"Content-Type": "application/json"})
    assert status == 200, body
    return json.loads(body)


def test_with_the_redis_backbone_events_published_while_relay_was_down_are_shown(relay_server_factory, demo_redis,
                                                                                 open_page):
    """The replayable backbone: every event, the page's own emotes and the votes included, is a
    Redis stream entry. Page b's relay stops; page a, on a second relay sharing the backbone,
    keeps sending; b's relay starts again and b is replayed everything it missed, in order."""
    config = {"backbone": demo_redis.url, "backbones": {"redis": {"health_interval": 0.5}}}
    one = relay_server_factory(config=config, env=FAST_RETRY)  # b's relay: it will be restarted
    two = relay_server_factory(config=config, env=FAST_RETRY)  # a's relay: stays up
    for server in (one, two):
        wait_until(lambda server=server: server.health()["components"].get("source:redis-backbone", {})
                   .get("state") == "up", 10, message="the backbone subscription")
        assert server.health()["components"]["demo"]["tallies"] == demo_redis.url  # tallies follow the backbone
    a = open_page(room_url(two, "bay"))
    b = open_page(room_url(one, "bay"))
    wait_connected(a)
    wait_connected(b)
    a.get_by_test_id("vote-Redis").click()
    a.get_by_test_id("emote-dolphin").click()
    expect(flying(b, "dolphin")).to_have_count(1)
    expect(b.get_by_test_id("tally-Redis")).to_have_text("1")

    one.stop()
    wait_connected(b, "reconnecting")
    a.get_by_test_id("emote-rocket").click()
    expect(a.get_by_test_id("emote-count")).to_have_text("2")  # published before the vote below
    relay_server_vote(two, "bay", "Kafka")  # two more voters (a has had its vote)
    a.get_by_test_id("emote-heart").click()
    relay_server_vote(two, "bay", "Kafka")
    expect(a.get_by_test_id("emote-count")).to_have_text("3")
    expect(a.get_by_test_id("tally-Kafka")).to_have_text("2")
    assert b.get_by_test_id("emote-count").inner_text() == "1"
    one.start()

    wait_connected(b)
    expect(flying(b, "rocket")).to_have_count(1)
    expect(flying(b, "heart")).to_have_count(1)
    expect(b.get_by_test_id("emote-count")).to_have_text("3")
    expect(b.get_by_test_id("last-emote")).to_have_text("heart")  # replayed in order
    expect(b.get_by_test_id("tally-Kafka")).to_have_text("2")
    expect(b.get_by_test_id("tally-Redis")).to_have_text("1")
    expect(b.get_by_test_id("vote-total")).to_have_text("3")
    expect(b.get_by_test_id("notice")).to_be_hidden()  # nothing was lost
    a.get_by_test_id("emote-applause").click()  # and live events flow again
    expect(b.get_by_test_id("emote-count")).to_have_text("4")
    no_page_errors(a, b)


def xadd_emote(redis, room, emote, stream="reactions"):
    envelope = {"channel": f"room:{room}", "event": "emote", "data": {"emote": emote}}
    return redis.client(decode_responses=True).xadd(stream, {"payload": json.dumps(envelope)})


def test_events_produced_into_redis_streams_while_relay_was_down_are_shown(relay_server_factory, demo_redis,
                                                                            open_page):
    """A replayable backbone: emotes come from a Redis stream (entry ids are event ids), tallies
    live in Redis. Relay stops, emotes are produced and votes counted meanwhile, relay starts:
    the browser resumes with Last-Event-ID and relay replays the missed entries from the stream."""
    server = relay_server_factory(config={
        "sources": {"redis": {"url": demo_redis.url, "streams": ["reactions"], "stream_block": 0.1}},
        "demo": {"tallies": demo_redis.url},
    }, env=FAST_RETRY)
    a = open_page(room_url(server, "sea"))
    b = open_page(room_url(server, "sea"))
    wait_connected(a)
    wait_connected(b)
    a.get_by_test_id("vote-Redis").click()
    expect(b.get_by_test_id("tally-Redis")).to_have_text("1")
    # The same emote events, produced into Redis instead of POSTed: the page does not care.
    last_id = xadd_emote(demo_redis, "sea", "dolphin")
    expect(flying(b, "dolphin")).to_have_count(1)
    expect(b.get_by_test_id("emote-count")).to_have_text("1")
    assert b.evaluate("state.lastEventId") == last_id  # what the browser will resume from

    server.stop()
    wait_connected(b, "reconnecting")
    xadd_emote(demo_redis, "sea", "rocket")
    xadd_emote(demo_redis, "elsewhere", "heart")  # another room: not for b
    xadd_emote(demo_redis, "sea", "applause")
    demo_redis.client(decode_responses=True).hincrby("relay:demo:votes:sea:main", "Kafka", 3)  # counted by another relay
    server.start()

    wait_connected(b)
    expect(flying(b, "rocket")).to_have_count(1)
    expect(flying(b, "applause")).to_have_count(1)
    expect(b.get_by_test_id("emote-count")).to_have_text("3")
    expect(b.get_by_test_id("last-emote")).to_have_text("applause")  # replayed in order
    expect(b.get_by_test_id("tally-Redis")).to_have_text("1")
    expect(b.get_by_test_id("tally-Kafka")).to_have_text("3")
    expect(b.get_by_test_id("notice")).to_be_hidden()  # nothing was lost
    assert flying(b, "heart").count() == 0
    # And live entries still arrive after the restart.
    xadd_emote(demo_redis, "sea", "dolphin")
    expect(b.get_by_test_id("emote-count")).to_have_text("4")
    no_page_errors(a, b)


@pytest.mark.kafka_brokers("apache")
def test_emotes_produced_into_kafka_show_up_on_the_page(relay_server_factory, kafka_broker, producer,  # noqa: F811
                                                        open_page):
    topic = create_topic(kafka_broker, topic_name("reactions"))
    server = relay_server_factory(config={"sources": {"kafka": {
        "bootstrap_servers": [kafka_broker], "topics": [topic], "probe_interval": 0.5}}})
    wait_until(lambda: "1 partition(s)" in server.health()["components"].get("source:kafka", {}).get("detail", ""),
               15, message="the Kafka source to read its partition")
    page = open_page(room_url(server, "stage"))
    wait_connected(page)
    kafka = producer()
    kafka.send(topic, json.dumps({"channel": "room:stage", "event": "emote", "data": {"emote": "dolphin"}}))
    kafka.send(topic, json.dumps({"channel": "room:stage", "event": "emote", "data": {"emote": "applause"}}))
    expect(flying(page, "dolphin")).to_have_count(1)
    expect(flying(page, "applause")).to_have_count(1)
    expect(page.get_by_test_id("emote-count")).to_have_text("2")
    no_page_errors(page)


def test_presence_shows_how_many_are_here(relay_server, open_page):
    """ "N here" comes from relay's presence events (the stream is opened with presence=1): it
    counts the pages open on the room's channel and follows them joining, switching and leaving."""
    a = open_page(room_url(relay_server, "gathering"))
    wait_connected(a)
    expect(a.get_by_test_id("presence")).to_have_text("1 here")
    b = open_page(room_url(relay_server, "gathering"))
    wait_connected(b)
    for page in (a, b):
        expect(page.get_by_test_id("presence")).to_have_text("2 here")
    c = open_page(room_url(relay_server, "gathering"))
    expect(a.get_by_test_id("presence")).to_have_text("3 here")

    b.get_by_test_id("room-input").fill("quiet")  # b goes to another room
    b.get_by_test_id("room-join").click()
    expect(b.get_by_test_id("presence")).to_have_text("1 here")
    expect(a.get_by_test_id("presence")).to_have_text("2 here")
    c.context.close()  # c closes its browser
    expect(a.get_by_test_id("presence")).to_have_text("1 here")
    no_page_errors(a, b)


LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}
EMOJI = re.compile(r"[\U0001F300-\U0001FAFF\u2600-\u27BF\u2B50\u2764\uFE0F]")  # what needs an emoji font


@pytest.mark.parametrize("device,viewport", [("laptop", LAPTOP), ("phone", PHONE)])
def test_emotes_are_pictures_and_the_page_fills_the_screen(relay_server, open_page, device, viewport):
    """The test machine has no colour-emoji font: the emotes must still show, as the SVG pictures
    relay ships. The page uses the whole screen of a laptop and of a phone, without sideways
    scrolling. Screenshots: test-artifacts/screenshots/demo-<device>.png."""
    page = open_page(room_url(relay_server, f"show-{device}"), viewport=viewport)
    wait_connected(page)
    expect(page.get_by_test_id("presence")).to_have_text("1 here")
    for emote in ("dolphin", "applause", "heart", "rocket"):
        button = page.get_by_test_id(f"emote-{emote}")
        expect(button).to_have_attribute("aria-label", emote)
        expect(button).to_contain_text(emote)  # a visible label as well as the picture
        assert picture_drawn(page, f'[data-testid="emote-{emote}"] img') > 200, emote
        button.click()
        expect(flying(page, emote)).to_have_count(1)
    relay_server.publish(f"room:show-{device}", "emote", {"emote": "confetti"})
    expect(flying(page, "confetti")).to_have_count(1)
    assert picture_drawn(page, '[data-testid="flying-emote"][data-emote="dolphin"] img') > 200
    assert picture_drawn(page, '[data-testid="flying-emote"][data-emote="confetti"] img') > 200
    page.get_by_test_id("vote-Kafka").click()
    expect(page.get_by_test_id("vote-total")).to_have_text("1")
    assert not EMOJI.search(page.evaluate("document.body.innerText")), "text that needs an emoji font"

    box = page.evaluate("""() => {
        const rect = (id) => document.querySelector(`[data-testid="${id}"]`).getBoundingClientRect();
        const stage = rect("stage"), badge = rect("connection");
        return {stage: [stage.left, stage.top, stage.width, stage.height], badge_right: badge.right,
                scroll_width: document.documentElement.scrollWidth, width: innerWidth, height: innerHeight};
    }""")
    _, top, width, height = box["stage"]
    assert box["scroll_width"] <= box["width"], box  # nothing sticks out sideways
    assert box["badge_right"] <= box["width"], box  # the connection badge is on screen
    if device == "laptop":  # the stage fills the height left below the header, controls beside it
        assert top + height >= box["height"] - 40 and width >= box["width"] * 0.55, box
    else:  # the stage spans the phone's width and a good part of its height
        assert width >= box["width"] - 40 and height >= box["height"] * 0.3, box
    save_screenshot(page, f"demo-{device}")
    no_page_errors(page)


def test_errors_are_explained_not_raw_browser_text(relay_server_factory, open_page):
    """Relay down: sending says relay cannot be reached (not "Failed to fetch"); back up, the
    page recovers on its own. An error answer shows relay's own message (covered with the 409
    of a second vote in test_one_vote_per_browser_enforced_by_relay)."""
    server = relay_server_factory(env=FAST_RETRY)
    page = open_page(room_url(server, "outage-words"))
    wait_connected(page)
    server.stop()
    wait_connected(page, "reconnecting")
    expect(page.get_by_test_id("presence")).to_be_hidden()  # who is here is unknown meanwhile
    page.get_by_test_id("emote-dolphin").click()
    expect(page.get_by_test_id("error")).to_have_text(
        "Can't reach the relay — your dolphin was not sent. Is it running?")
    page.get_by_test_id("vote-Redis").click()
    expect(page.get_by_test_id("error")).to_have_text(
        "Can't reach the relay — your vote was not counted. Is it running?")
    save_screenshot(page, "demo-relay-down")
    assert "Failed to fetch" not in page.evaluate("document.body.innerText")

    server.start()
    wait_connected(page)
    expect(page.get_by_test_id("error")).to_be_hidden()  # cleared once relay answers again
    expect(page.get_by_test_id("presence")).to_have_text("1 here")
    page.get_by_test_id("emote-heart").click()
    expect(flying(page, "heart")).to_have_count(1)
    no_page_errors(page)
