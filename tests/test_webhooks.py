"""The webhook sink end to end: a real relay under gunicorn's gevent worker delivering to real
HTTP receivers on loopback (allow-listed), every delivery verified with ``standardwebhooks``."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time

import pytest
from webhook_support import SECRET, TOKEN, Receiver, Reply, api, config_endpoint_id, endpoint, webhook_config

from relay.testing import wait_until

pytest_plugins = ["webhook_fixtures"]  # receiver
pytestmark = pytest.mark.timeout(120)


def attempts(server, endpoint_id, **query):
    path = f"/webhooks/{endpoint_id}/attempts" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    status, answer = api(server, "GET", path)
    assert status == 200, answer
    return answer["attempts"]


def test_every_event_on_the_channel_arrives_signed(relay_server_factory, receiver):
    """Point 2 and 'done when': a receiver for channel demo gets every event published to demo,
    and standardwebhooks.Webhook(secret).verify accepts each one."""
    server = relay_server_factory(config=webhook_config([endpoint(f"{receiver.url}/hook")]))
    published = [server.publish("demo", "emote", {"n": n, "text": "dolphin 🐬"}) for n in range(5)]
    server.publish("elsewhere", "emote", {"n": 99})
    got = receiver.wait_for(5)
    time.sleep(0.5)
    assert len(receiver.requests) == 5, "only the demo channel is delivered, once per event"
    for n, request in enumerate(sorted(got, key=lambda r: json.loads(r.body)["data"]["n"])):
        payload = request.verify(SECRET)
        assert payload["type"] == "emote" and payload["channel"] == "demo"
        assert payload["data"] == {"n": n, "text": "dolphin 🐬"}
        assert payload["timestamp"].endswith("Z") and "T" in payload["timestamp"]
        assert list(payload) == ["type", "timestamp", "channel", "id", "data"]
        assert request.headers["content-type"] == "application/json"
        assert request.headers["webhook-signature"].startswith("v1,")
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 30
        assert request.path == "/hook"
    assert len({r.id for r in got}) == 5
    assert all(r.id.startswith("msg_") for r in got)
    assert published[0]["id"]


def test_500_then_200_is_retried_with_the_same_id_and_a_fresh_signature(relay_server_factory, receiver):
    """Point 3: a 5xx is retried after the schedule's delay; the webhook-id stays, the timestamp
    and signature are the attempt's; point 6: each attempt is logged."""
    receiver.script = [Reply(500, body=b"boom " * 10000), Reply(200)]
    url = f"{receiver.url}/hook"
    server = relay_server_factory(config=webhook_config([endpoint(url)], retry_schedule=[0, 1.5],
                                                        response_max_bytes=100))
    server.publish("demo", "order", {"n": 1})
    first, second = receiver.wait_for(2)
    assert first.id == second.id
    assert second.at - first.at >= 1.4, "the second attempt waits for the schedule's delay"
    for request in (first, second):
        assert request.verify(SECRET)["data"] == {"n": 1}
    assert first.body == second.body, "the same bytes are sent on every attempt"
    assert int(second.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"]), "re-signed"
    assert second.headers["webhook-signature"] != first.headers["webhook-signature"]
    log = wait_until(lambda: (a := attempts(server, config_endpoint_id(url))) and len(a) == 2 and a, 5)
    newest, oldest = log
    assert (oldest["status_code"], oldest["outcome"], oldest["attempt"]) == (500, "retry", 1)
    assert (newest["status_code"], newest["outcome"], newest["attempt"]) == (200, "succeeded", 2)
    assert len(oldest["response"]) == 100, "stored response bodies are truncated"
    assert oldest["latency_ms"] >= 0 and oldest["started_at"].endswith("Z") and oldest["delivery_id"] == first.id


def test_a_hanging_receiver_times_out_and_is_retried(relay_server_factory, receiver):
    """Point 3: the per-attempt timeout ends an attempt to a receiver that does not answer."""
    receiver.script = [Reply(200, hang=5), Reply(200)]
    url = f"{receiver.url}/slow"
    server = relay_server_factory(config=webhook_config([endpoint(url)], timeout=0.5, retry_schedule=[0, 0.2]))
    server.publish("demo", "order", 1)
    first, second = receiver.wait_for(2, timeout=10)
    assert first.id == second.id and second.verify()
    assert 0.6 <= second.at - first.at < 4, "the timeout (0.5 s) + delay (0.2 s), not the 5 s hang"
    log = wait_until(lambda: (a := attempts(server, config_endpoint_id(url))) and len(a) == 2 and a, 5)
    assert log[1]["status_code"] is None and log[1]["error"].startswith("timeout")
    assert log[1]["latency_ms"] < 3000, "ended by the timeout, not by the receiver's 5 s hang"


def test_429_with_retry_after_is_honoured_and_bounded(relay_server_factory, receiver):
    """Point 3: Retry-After delays the retry beyond the schedule, but never past max_retry_after."""
    receiver.script = [Reply(429, {"Retry-After": "2"}), Reply(503, {"Retry-After": "86400"}), Reply(200)]
    server = relay_server_factory(config=webhook_config([endpoint(f"{receiver.url}/hook")],
                                                        retry_schedule=[0, 0.1, 0.1], max_retry_after=1.0))
    server.publish("demo", "order", 1)
    first, second, third = receiver.wait_for(3, timeout=15)
    assert first.id == second.id == third.id and third.verify()
    assert second.at - first.at >= 0.95, "Retry-After: 2 honoured up to max_retry_after (1 s), not 0.1 s"
    assert 0.95 <= third.at - second.at < 3, "Retry-After: 86400 capped at max_retry_after"


def test_other_4xx_and_redirects_are_final(relay_server_factory, receiver):
    """Point 3: other 4xx are not retried; point 8: redirects are not followed (3xx fails)."""
    receiver.script = lambda r: (Reply(410) if r.path == "/gone" else
                                 Reply(302, {"Location": f"{receiver.url}/elsewhere"}) if r.path == "/moved" else Reply())
    gone, moved = f"{receiver.url}/gone", f"{receiver.url}/moved"
    server = relay_server_factory(config=webhook_config([endpoint(gone), endpoint(moved)], retry_schedule=[0, 0.1, 0.1]))
    server.publish("demo", "order", 1)
    receiver.wait_for(1, path="/gone")
    receiver.wait_for(1, path="/moved")
    time.sleep(1.0)
    assert len(receiver.requests) == 2, "one attempt each, and nothing at the redirect target"
    status, answer = api(server, "GET", "/webhooks/dead-letters")
    assert status == 200
    by_endpoint = {d["endpoint_id"]: d for d in answer["dead_letters"]}
    assert by_endpoint[config_endpoint_id(gone)]["last_status"] == 410
    assert by_endpoint[config_endpoint_id(moved)]["last_status"] == 302
    assert by_endpoint[config_endpoint_id(moved)]["attempts"] == 1


@pytest.mark.parametrize("store, how", [("sqlite", "restart"), ("sqlite", "crash"), ("redis", "crash")])
def test_deliveries_survive_a_restart_while_the_receiver_is_down(redis_server, relay_server_factory, store, how):
    """Point 4 and 'done when': the receiver is down for longer than two retry steps, the relay
    restarts (gracefully, or killed with SIGKILL) in between; every event still arrives exactly
    once, with the webhook-id of its first attempt."""
    receiver = Receiver()  # not listening yet: connection refused
    url = f"{receiver.url}/hook"
    settings = {"store": redis_server.url} if store == "redis" else {}
    server = relay_server_factory(config=webhook_config([endpoint(url)], retry_schedule=[0, 0.3, 0.3, 2, 2, 2, 2],
                                                        **settings))
    for n in range(5):
        server.publish("demo", "order", {"n": n})
    endpoint_id = config_endpoint_id(url)

    def two_failures_each():
        log = attempts(server, endpoint_id, limit=100)
        per_delivery = {}
        for a in log:
            per_delivery.setdefault(a["delivery_id"], []).append(a)
        return per_delivery if len(per_delivery) == 5 and all(len(v) >= 2 for v in per_delivery.values()) else None

    before = wait_until(two_failures_each, 10, message="two failed attempts per delivery")
    assert all("Connection" in a["error"] or "refused" in a["error"].lower() for v in before.values() for a in v)
    if how == "crash":
        server.kill()
        server.start()
    else:
        server.restart()
    receiver.start()
    try:
        got = receiver.wait_for(5, timeout=15)
        time.sleep(2.5)  # one more retry step: nothing may come twice
        assert len(receiver.requests) == 5
        assert {r.id for r in got} == set(before), "the original webhook-ids"
        assert sorted(r.verify()["data"]["n"] for r in got) == [0, 1, 2, 3, 4]
    finally:
        receiver.stop()


def test_ssrf_guard_refuses_private_addresses_and_names(relay_server_factory, receiver):
    """Point 8: without an allow-list, loopback is refused, also through a name that resolves to
    127.0.0.1 (checked at connect time), and nothing reaches the receiver; the API refuses
    blocked literals, metadata addresses included, at once."""
    literal = f"http://127.0.0.1:{receiver.port}/literal"
    named = f"http://localhost:{receiver.port}/named"
    server = relay_server_factory(config=webhook_config([endpoint(literal), endpoint(named)], allow_networks=[]))
    server.publish("demo", "order", 1)

    def dead():
        _, answer = api(server, "GET", "/webhooks/dead-letters")
        return answer["dead_letters"] if len(answer["dead_letters"]) == 2 else None

    letters = wait_until(dead, 10, message="both deliveries refused and dead-lettered")
    for letter in letters:
        assert "refused by the SSRF guard" in letter["last_error"] and "loopback" in letter["last_error"]
        assert letter["attempts"] == 1, "a refusal is final"
    assert receiver.requests == []
    for url in ("http://169.254.169.254/latest/meta-data", "http://10.0.0.1/x", "http://[::1]:9/x",
                "http://100.64.0.1/x", "http://[fd00:ec2::254]/x", "http://0.0.0.0:80/"):
        status, answer = api(server, "POST", "/webhooks", {"url": url, "channels": ["demo"]})
        assert status == 422 and answer["error"] == "refused_address", (url, answer)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
@pytest.mark.parametrize("source", ["http", "pubsub"])
def test_four_workers_receiving_the_same_event_deliver_it_once(redis_server, relay_server_factory, receiver,
                                                                 store, source):
    """Point 5: 4 gunicorn workers: HTTP publishes through the Redis backbone (its durable log,
    read through a consumer group by the worker whose share it is, and heard by any worker with a
    client on the channel), or Redis pub/sub messages with an envelope id that each of the 4
    workers receives (PUBSUB NUMSUB shows the 4 subscriptions). Each endpoint gets each event
    exactly once, with the SQLite store and with the Redis store."""
    channel = "webhook-test"
    env = {"RELAY_BACKBONE": redis_server.url}  # several workers need a shared backbone
    if source == "pubsub":  # the Redis source: one subscription per worker, the same fan-out
        env.update({"RELAY_REDIS_URL": redis_server.url, "RELAY_REDIS_CHANNELS": channel})
    urls = [f"{receiver.url}/a", f"{receiver.url}/b"]
    settings = {"store": redis_server.url, "key_prefix": "wh"} if store == "redis" else {}
    server = relay_server_factory(config=webhook_config([endpoint(u) for u in urls], **settings), env=env, workers=4)
    client = redis_server.client()
    if source == "pubsub":
        wait_until(lambda: client.pubsub_numsub(channel)[0][1] == 4, 20, message="4 workers subscribed")
        for n in range(20):
            client.publish(channel, json.dumps({"id": f"order-{n}", "channel": "demo", "event": "order", "data": n}))
    else:
        wait_until(lambda: len(server.health()["backbone"]["durable_log"]["partitions"]) == 1, 20,
                   message="a worker reading the backbone's durable log")
        for n in range(20):
            server.publish("demo", "order", n)
    for path in ("/a", "/b"):
        receiver.wait_for(20, path=path, timeout=20)
    time.sleep(1.5)  # long enough for a duplicate to show up
    for path in ("/a", "/b"):
        got = receiver.for_path(path)
        assert len(got) == 20 and len({r.id for r in got}) == 20
        assert sorted(r.verify()["data"] for r in got) == list(range(20))
    webhooks = server.health()["components"]["webhooks"]
    assert webhooks["queue"] == 0 and webhooks["store"] == store


def test_dead_letters_then_resend_and_replay(relay_server_factory, receiver, tmp_path):
    """Point 6: after the last attempt a delivery is dead-lettered; the CLI and the API list and
    resend dead letters (same webhook-id) and replay an endpoint's deliveries since a time."""
    receiver.default = Reply(500)
    url = f"{receiver.url}/hook"
    endpoint_id = config_endpoint_id(url)
    server = relay_server_factory(config=webhook_config([endpoint(url)], retry_schedule=[0, 0.1]))
    since = time.time()
    server.publish("demo", "order", {"n": 1})
    server.publish("demo", "order", {"n": 2})
    receiver.wait_for(4)

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "relay.cli", "webhooks", "--url", server.url, "--token", TOKEN,
                               *args, "--json"], capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert [e["id"] for e in cli("list")["endpoints"]] == [endpoint_id]
    letters = wait_until(lambda: len(d := cli("dead-letters")["dead_letters"]) == 2 and d, 10)
    assert {d["status"] for d in letters} == {"dead"} and {d["attempts"] for d in letters} == {2}
    first_ids = {r.id for r in receiver.requests}
    assert {d["id"] for d in letters} == first_ids

    receiver.default = Reply(200)
    assert cli("resend", letters[0]["id"])["requeued"] == 1
    resent = receiver.wait_for(5)[-1]
    assert resent.id == letters[0]["id"] and resent.verify()
    status, answer = api(server, "POST", "/webhooks/dead-letters/resend", {"endpoint": endpoint_id})
    assert status == 200 and answer["requeued"] == 1
    receiver.wait_for(6)
    wait_until(lambda: not cli("dead-letters")["dead_letters"], 5, message="no dead letters left")

    # Replay since a time: both deliveries again, same ids; before `since` nothing.
    assert cli("replay", endpoint_id, "--since", str(time.time() + 60))["requeued"] == 0
    assert cli("replay", endpoint_id, "--since", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since - 1)))[
        "requeued"] == 2
    replayed = receiver.wait_for(8)[-2:]
    assert {r.id for r in replayed} == first_ids
    assert all(r.verify() for r in replayed)
    log = cli("attempts", endpoint_id)["attempts"]
    assert len(log) == 8 and {a["status_code"] for a in log} == {500, 200}


def test_an_endpoint_failing_too_long_is_disabled_and_re_enabled(relay_server_factory, receiver):
    """Point 7: continuous failure for disable_after disables the endpoint, /healthz reports it,
    and the API re-enables it; its pending deliveries then go out."""
    receiver.default = Reply(503)
    url = f"{receiver.url}/hook"
    endpoint_id = config_endpoint_id(url)
    server = relay_server_factory(config=webhook_config([endpoint(url)], disable_after=1.0,
                                                        retry_schedule=[0] + [0.3] * 20))
    server.publish("demo", "order", 1)

    def disabled():
        webhooks = server.health()["components"]["webhooks"]
        return webhooks["disabled_endpoints"] if webhooks["disabled_endpoints"] else None

    reported = wait_until(disabled, 10, message="the endpoint to be disabled")
    assert reported[0]["id"] == endpoint_id and "failing continuously" in reported[0]["reason"]
    assert server.health()["components"]["webhooks"]["state"] == "degraded"
    status, answer = api(server, "GET", f"/webhooks/{endpoint_id}")
    assert status == 200 and answer["enabled"] is False and answer["failing_since"]
    count = len(receiver.requests)
    time.sleep(1.0)
    assert len(receiver.requests) == count, "a disabled endpoint gets no attempts"

    receiver.default = Reply(200)
    status, answer = api(server, "POST", f"/webhooks/{endpoint_id}/enable")
    assert status == 200 and answer["enabled"] is True and answer["failing_since"] is None
    last = receiver.wait_for(count + 1)[-1]
    assert last.verify()["data"] == 1
    wait_until(lambda: not server.health()["components"]["webhooks"]["disabled_endpoints"], 5)


def test_admin_api(relay_server_factory, receiver):
    """Point 1: the /webhooks API adds, lists, gets, updates, deletes, disables and enables
    endpoints behind the admin token; config endpoints are read-only there. Secret rotation
    signs with both secrets."""
    config_url = f"{receiver.url}/config"
    server = relay_server_factory(config=webhook_config([endpoint(config_url)]))
    assert api(server, "GET", "/webhooks", token=None)[0] == 401
    assert api(server, "GET", "/webhooks", token="wrong")[0] == 401

    status, created = api(server, "POST", "/webhooks", {"url": f"{receiver.url}/api", "channels": ["news.*"],
                                                        "events": ["headline"], "description": "news desk"})
    assert status == 201 and created["secret"].startswith("whsec_") and created["origin"] == "api"
    new_id, secret = created["id"], created["secret"]
    status, listing = api(server, "GET", "/webhooks")
    assert {e["id"] for e in listing["endpoints"]} == {new_id, config_endpoint_id(config_url)}
    assert all("secret" not in e for e in listing["endpoints"])
    assert api(server, "GET", f"/webhooks/{new_id}")[1]["channels"] == ["news.*"]

    server.publish("news.world", "headline", {"n": 1})
    server.publish("news.world", "gossip", {"n": 2})  # filtered out by events
    first = receiver.wait_for(1, path="/api")[0]
    assert first.verify(secret)["data"] == {"n": 1}

    status, updated = api(server, "PATCH", f"/webhooks/{new_id}", {"events": [], "description": "all news"})
    assert status == 200 and updated["events"] == [] and updated["description"] == "all news"
    assert api(server, "PATCH", f"/webhooks/{new_id}", {"url": "ftp://x"})[0] == 422
    assert api(server, "PATCH", f"/webhooks/{new_id}", {"colour": "red"})[0] == 422

    status, rotated = api(server, "POST", f"/webhooks/{new_id}/rotate-secret")
    assert status == 200 and len(rotated["signing_secrets"]) == 2
    time.sleep(1.2)  # the other worker-side cache refreshes within a second
    server.publish("news.world", "gossip", {"n": 3})
    second = receiver.wait_for(2, path="/api")[-1]
    assert len(second.headers["webhook-signature"].split(" ")) == 2
    assert second.verify(secret)["data"] == {"n": 3} and second.verify(rotated["secret"])

    assert api(server, "POST", f"/webhooks/{new_id}/disable")[1]["enabled"] is False
    server.publish("news.world", "headline", {"n": 4})
    time.sleep(1.0)
    assert len(receiver.for_path("/api")) == 2, "disabled: not delivered"
    assert api(server, "POST", f"/webhooks/{new_id}/enable")[1]["enabled"] is True

    config_id = config_endpoint_id(config_url)
    assert api(server, "PATCH", f"/webhooks/{config_id}", {"channels": ["x"]})[0] == 409
    assert api(server, "DELETE", f"/webhooks/{config_id}")[0] == 409
    assert api(server, "POST", f"/webhooks/{config_id}/disable")[1]["enabled"] is False
    assert api(server, "DELETE", f"/webhooks/{new_id}")[0] == 204
    assert api(server, "GET", f"/webhooks/{new_id}")[0] == 404


def test_admin_api_is_off_without_a_token(relay_server_factory, receiver):
    server = relay_server_factory(config=webhook_config([endpoint(f"{receiver.url}/hook")], admin_token=""))
    assert api(server, "GET", "/webhooks")[0] == 404
    server.publish("demo", "order", 1)
    assert receiver.wait_for(1)[0].verify()


def test_a_slow_endpoint_does_not_delay_the_others(relay_server_factory, receiver):
    """Point 3: per-endpoint concurrency: a hanging endpoint holds at most max_concurrency
    attempts, and a fast endpoint gets its events at once."""
    receiver.script = lambda r: Reply(200, hang=1.5) if r.path == "/slow" else Reply(200)
    slow, fast = f"{receiver.url}/slow", f"{receiver.url}/fast"
    server = relay_server_factory(config=webhook_config([endpoint(slow, max_concurrency=1), endpoint(fast)],
                                                        timeout=5))
    started = time.time()
    for n in range(4):
        server.publish("demo", "order", n)
    fast_got = receiver.wait_for(4, path="/fast", timeout=5)
    slow_got = receiver.wait_for(4, path="/slow", timeout=15)
    assert max(r.at for r in fast_got) < slow_got[1].at, "the fast endpoint is not held up by the slow one"
    assert max(r.at for r in fast_got) - started < 1.5
    gaps = [b.at - a.at for a, b in itertools.pairwise(slow_got)]
    assert min(gaps) >= 1.4, "one attempt at a time to the slow endpoint"


def test_shutdown_stops_attempts_in_flight_and_hands_them_back(relay_server_factory, receiver):
    """Background greenlets stop on shutdown: an attempt still waiting for a hanging receiver is
    stopped after a short grace, and its claim handed back, so the restarted relay retries it at
    once (not after the claim's 45 s lease) with the same webhook-id."""
    receiver.script = [Reply(200, hang=25)]
    server = relay_server_factory(config=webhook_config([endpoint(f"{receiver.url}/hook")], timeout=20))
    server.publish("demo", "order", 1)
    first = receiver.wait_for(1)[0]
    started = time.monotonic()
    server.stop()
    stop_took = time.monotonic() - started
    assert stop_took < 8, f"stopping took {stop_took:.1f}s"
    assert "stopping 1 webhook attempt(s) still in flight" in server.log()
    server.start()
    second = receiver.wait_for(2, timeout=10)[1]
    assert second.id == first.id and second.verify()
