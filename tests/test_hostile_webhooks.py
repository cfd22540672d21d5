"""Issue 13, the webhook sink: a locked SQLite store must not stall the worker, event ids are
scoped to their channel, and secrets (endpoint URLs, the store file, the admin token) stay
secret. Real gunicorn, real HTTP receivers, real SQLite files and processes."""

from __future__ import annotations

import itertools
import json
import os
import stat
import subprocess
import sys
import threading
import time
import urllib.request

import gevent
import pytest
from webhook_support import SECRET, TOKEN, Reply, api, config_endpoint_id, endpoint, webhook_config

from plugins.webhooks import signing
from plugins.webhooks.model import PENDING, Delivery, Endpoint
from relay.config import ConfigError
from relay.event import Event
from relay.testing import http_request, wait_until

pytest_plugins = ["webhook_fixtures"]  # receiver
pytestmark = pytest.mark.timeout(60)

LOCK_SECONDS = 3.0


def hold_write_lock(path, seconds: float) -> subprocess.Popen:
    """Another process takes SQLite's write lock on ``path`` (as another worker mid-write would)
    and keeps it for ``seconds``; returns once the lock is held."""
    code = ("import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)\n"
            "db.execute('BEGIN IMMEDIATE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n"
            "db.execute('ROLLBACK')\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def raw_publish(server, channel: str, message: dict) -> tuple[int, bytes]:
    status, _, body = http_request(f"{server.url}/events/{urllib.request.quote(channel, safe='')}", "POST",
                                   json.dumps(message).encode(), {"Content-Type": "application/json"})
    return status, body


# -- the store off the gevent hub -----------------------------------------------------------------

def test_a_locked_store_stalls_neither_streams_nor_deliveries(relay_server_factory, receiver):
    """Issue 13, 'the webhook sink blocks the worker': another process holds the SQLite write lock
    for 3 s while an event for a webhook is published. The worker's SSE stream goes on: its
    heartbeats (every 0.05 s) keep coming and the event reaches the browser at once; the publish
    answers 202 only once the delivery is stored (after the lock is released), and the webhook
    is delivered. Before, the sqlite3 call froze the whole worker for the 3 s."""
    config = webhook_config([endpoint(f"{receiver.url}/hook")])
    config["sinks"]["sse"] = {"heartbeat": 0.05}
    server = relay_server_factory(config=config)
    server.publish("demo", "order", {"n": 0})
    receiver.wait_for(1)  # warm: the store is open and the endpoints are cached
    store = server.directory / "data" / "webhooks.sqlite3"

    arrivals: list[float] = []  # when each heartbeat or event arrived
    stop = threading.Event()
    with server.sse("/events/demo", timeout=5) as stream:
        wait_until(lambda: stream.read_some(0.1) and stream.comments, 5, message="a first heartbeat")

        def read():  # parses the stream, noting when each heartbeat or event arrives
            while not stop.is_set():
                before = len(stream.comments), len(stream._ready)
                stream.read_some(0.02)
                if (len(stream.comments), len(stream._ready)) != before:
                    arrivals.append(time.monotonic())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        holder = hold_write_lock(store, LOCK_SECONDS)
        locked_at = time.monotonic()
        answer: dict = {}

        def publish():
            answer["status"], _ = raw_publish(server, "demo", {"event": "order", "data": {"n": 1}})
            answer["at"] = time.monotonic()

        publisher = threading.Thread(target=publish)
        publisher.start()
        seen_during_lock = wait_until(lambda: [e for e in list(stream._ready) if e.event == "order"], 1.5,
                                      message="the event on the stream while the store is locked")
        assert holder.poll() is None, "seen while the lock was still held"
        holder.wait(10)
        released_at = time.monotonic()
        publisher.join(10)
        time.sleep(0.3)
        stop.set()
        reader.join(2)

    assert seen_during_lock[0].json() == {"n": 1}
    assert answer["status"] == 202 and answer["at"] >= released_at - 0.2, \
        "202 only once the delivery is stored, after the lock was released"
    during = [t for t in arrivals if locked_at <= t <= released_at]
    gaps = [b - a for a, b in zip([locked_at, *during], [*during, released_at])]
    assert len(during) >= 10 and max(gaps) < 0.15, \
        f"the stream went on while the store was locked: {len(during)} arrivals, largest gap {max(gaps):.3f}s"
    delivered = receiver.wait_for(2, timeout=10)[-1]
    assert delivered.verify()["data"] == {"n": 1}


def test_a_locked_store_does_not_hold_back_the_redis_backbone_reader(relay_server_factory, receiver, redis_server):
    """With the Redis backbone, one reader per worker delivers every event. A webhook store
    waiting on another process's write lock must not hold back that reader: events published
    while the lock is held reach the worker's SSE stream at once, one after another, and the
    webhooks follow once the lock is gone. Before, the reader ran the sinks itself and the
    second event waited for the lock."""
    config = webhook_config([endpoint(f"{receiver.url}/hook")])
    config["backbone"] = redis_server.url
    config["backbones"] = {"redis": {"prefix": f"lock{os.getpid()}:"}}
    server = relay_server_factory(config=config)
    server.publish("demo", "order", {"n": 0})
    receiver.wait_for(1)  # warm: the store is open and the endpoints are cached
    store = server.directory / "data" / "webhooks.sqlite3"
    with server.sse("/events/demo", timeout=5) as stream:
        holder = hold_write_lock(store, LOCK_SECONDS)
        try:
            for n in (1, 2, 3):
                published = time.monotonic()
                status, _ = raw_publish(server, "demo", {"event": "order", "data": {"n": n}})
                assert status == 202
                event = stream.next_event(timeout=2)
                assert event.json() == {"n": n}
                assert time.monotonic() - published < 0.5, f"event {n} waited for the store"
            assert holder.poll() is None, "all three arrived while the lock was held"
        finally:
            holder.wait(10)
    delivered = receiver.wait_for(4, timeout=15)
    assert sorted(d.verify()["data"]["n"] for d in delivered) == [0, 1, 2, 3]


def test_in_thread_store_calls_let_other_greenlets_run(tmp_path):
    """The same at the store level, in one gevent process: while a store call waits for the
    write lock held by another process, the other greenlets keep running; the call then returns
    with the rows committed (a fresh connection sees them), and a failure raises to the caller."""
    from plugins.webhooks.store_sqlite import InThread, SQLiteStore

    path = tmp_path / "webhooks.sqlite3"
    store = InThread(SQLiteStore(str(path)))
    store.ping()
    ticks: list[float] = []

    def ticker():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    holder = hold_write_lock(path, 1.0)
    running = gevent.spawn(ticker)
    try:
        started = time.monotonic()
        delivery = Delivery(id=signing.webhook_id("ep", "demo", "e1"), endpoint_id="ep", event_id="e1",
                            channel="demo", event_type="order", body=b"{}", created_at=time.time(), status=PENDING)
        assert store.enqueue([delivery]) == 1
        waited = time.monotonic() - started
    finally:
        running.kill()
        holder.wait(10)
    assert waited >= 0.5, "the call did wait for the lock"
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) > 20 and max(gaps) < 0.1, f"other greenlets ran meanwhile (largest gap {max(gaps):.3f}s)"
    assert SQLiteStore(str(path)).get_delivery(delivery.id) is not None, "committed when the call returned"
    SQLiteStore(str(path)).db.execute("DROP TABLE deliveries")
    with pytest.raises(Exception, match="no such table"):
        store.enqueue([delivery])


def test_durable_delivery_returns_after_the_commit_and_raises_on_failure(tmp_path, monkeypatch):
    """relay_deliver_durable (Kafka/Redis Streams groups) returns only once the rows are committed,
    and a store failure reaches the source (the sink is not counted as having taken the event)."""
    from relay import create_app

    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    relay = create_app(webhook_config([endpoint("http://127.0.0.1:9/hook")])).extensions["relay"]
    event = Event("demo", "order", {"n": 1}, id="7-0", source="kafka")
    assert relay.deliver_durable(event) == {"webhooks"}
    from plugins.webhooks.store_sqlite import SQLiteStore

    direct = SQLiteStore(str(tmp_path / "data" / "webhooks.sqlite3"))
    endpoint_id = relay.extensions["webhooks"].config_endpoints[0].id
    assert direct.get_delivery(signing.webhook_id(endpoint_id, "demo", "7-0")) is not None
    direct.db.execute("DROP TABLE deliveries")
    assert relay.deliver_durable(Event("demo", "order", 2, id="8-0", source="kafka")) == set(), \
        "a failed store raises, so the source offers the event again"


# -- ids scoped to their channel ------------------------------------------------------------------

@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_the_same_id_on_two_channels_is_two_deliveries(redis_server, relay_server_factory, receiver, store):
    """Issue 13, 'ids are one namespace': an endpoint on every channel gets the attacker's
    order-42 on channel a and the trusted order-42 on channel b, with different webhook-ids;
    the same id again on the same channel is still a duplicate."""
    settings = {"store": redis_server.url, "key_prefix": f"ids{time.time_ns()}"} if store == "redis" else {}
    url = f"{receiver.url}/hook"
    server = relay_server_factory(config=webhook_config([endpoint(url, channels=["*"])], **settings))
    server.publish("a", "order", {"from": "attacker"}, id="order-42")
    server.publish("b", "order", {"from": "trusted"}, id="order-42")
    got = receiver.wait_for(2)
    payloads = {r.verify()["channel"]: r.verify()["data"] for r in got}
    assert payloads == {"a": {"from": "attacker"}, "b": {"from": "trusted"}}
    assert len({r.id for r in got}) == 2
    endpoint_id = config_endpoint_id(url)
    for request in got:
        assert request.id == signing.webhook_id(endpoint_id, request.verify()["channel"], "order-42"), \
            "deterministic: every worker and every retry computes the same id"
    status, _ = raw_publish(server, "b", {"event": "order", "data": {"from": "replayed"}, "id": "order-42"})
    assert status in (202, 409, 422)
    time.sleep(1.0)
    assert len(receiver.requests) == 2, "an id already delivered on this channel is not delivered again"


# -- secrets kept secret --------------------------------------------------------------------------

def test_health_readiness_and_logs_show_only_the_endpoint_origin(relay_server_factory, receiver):
    """Issue 13, 'secrets leak': an endpoint URL with a credential in its query string, failing
    and disabled: /healthz, /readyz and the log name it by scheme, host and port only; the
    authenticated admin API still shows the whole URL."""
    secret = "s3cr3t-query-credential"
    url = f"{receiver.url}/hook/{secret}?token={secret}"
    receiver.default = Reply(410)
    server = relay_server_factory(config=webhook_config([endpoint(url)], disable_after=0))
    server.publish("demo", "order", 1)
    receiver.wait_for(1)

    def disabled():
        return server.health()["components"]["webhooks"]["disabled_endpoints"]

    reported = wait_until(disabled, 10, message="the endpoint to be disabled")
    assert reported[0]["url"] == f"http://127.0.0.1:{receiver.port}"
    wait_until(lambda: "dead-lettered" in server.log() and "disabled" in server.log(), 5,
               message="the warnings in the log")
    for path in ("/healthz", "/readyz"):
        _, _, body = http_request(f"{server.url}{path}")
        assert secret not in body.decode() and f"127.0.0.1:{receiver.port}" in body.decode(), path
    log = server.log()
    assert secret not in log
    assert f"{config_endpoint_id(url)} (http://127.0.0.1:{receiver.port})" in log
    status, answer = api(server, "GET", f"/webhooks/{config_endpoint_id(url)}")
    assert status == 200 and answer["url"] == url, "the admin API (authenticated) keeps the whole URL"


def test_bad_endpoint_urls_are_refused_without_repeating_them(tmp_path):
    from plugins.webhooks.settings import check_url

    for url in ("ftp://host/?token=s3cr3t", "http://host/a b?token=s3cr3t", "http://host:99999/?token=s3cr3t",
                "http://h\u00f4st/?token=s3cr3t"):
        problem = check_url(url)
        assert problem and "s3cr3t" not in problem, url


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_store_is_private_whatever_the_umask(relay_server_factory, receiver, tmp_path):
    """Issue 13, 'data dir 0755, store 0644': started with umask 000, a data_dir left 0777 and a
    store file left 0644 by an older relay, the data dir becomes 0700 (with a warning) and the
    store, its -wal and -shm 0600."""
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o777)
    old_store = data / "webhooks.sqlite3"
    old_store.touch()
    os.chmod(old_store, 0o644)
    previous = os.umask(0)
    try:
        server = relay_server_factory(config=webhook_config([endpoint(f"{receiver.url}/hook")]),
                                      env={"RELAY_DATA_DIR": str(data)})
    finally:
        os.umask(previous)
    server.publish("demo", "order", 1)
    receiver.wait_for(1)
    assert mode(data) == 0o700
    assert "data_dir" in server.log() and "made it 0700" in server.log()
    for suffix in ("", "-wal", "-shm"):
        assert mode(f"{old_store}{suffix}") == 0o600, suffix


def test_a_new_data_dir_and_store_are_private_whatever_the_umask(tmp_path):
    from plugins.webhooks.store_sqlite import SQLiteStore, private_directory

    previous = os.umask(0)
    try:
        private_directory(str(tmp_path / "new" / "dir"), tighten=True)
        store = SQLiteStore(str(tmp_path / "new" / "dir" / "webhooks.sqlite3"))
        store.ping()
        store.save_endpoint(Endpoint("ep", "http://x", SECRET, ["*"]))  # a write: -wal and -shm exist
    finally:
        os.umask(previous)
    assert mode(tmp_path / "new" / "dir") == 0o700
    for suffix in ("", "-wal", "-shm"):
        assert mode(f"{store.path}{suffix}") == 0o600, suffix


# CI runs as root, so there it always runs (and fails, not skips, if it ever is not root).
@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                    reason="needs root to give the directory to another user")
def test_a_data_dir_of_another_user_open_to_others_is_refused(tmp_path, monkeypatch):
    """relay tightens its own data_dir; one that belongs to another user and others can read is
    refused at start-up, naming data_dir (relay cannot make it private)."""
    from relay import create_app

    data = tmp_path / "shared"
    data.mkdir()
    os.chmod(data, 0o755)
    os.chown(data, 65534, 65534)
    monkeypatch.setenv("RELAY_DATA_DIR", str(data))
    with pytest.raises(ConfigError, match="data_dir.*owned by uid 65534"):
        create_app(webhook_config([endpoint("http://127.0.0.1:9/hook")]))
    assert mode(data) == 0o755, "left as it was"


@pytest.mark.parametrize("token, ok", [("x", False), ("a" * 31, False), ("é" * 16, True), ("a" * 32, True),
                                       ("", True)])
def test_admin_token_needs_32_bytes(tmp_path, monkeypatch, token, ok):
    """Issue 13: a 1-character admin_token passed the config check; shorter than 32 bytes is now
    refused at start-up, naming the key (an empty one turns the API off)."""
    from relay import create_app

    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    config = webhook_config([endpoint("http://127.0.0.1:9/hook")], admin_token=token)
    if ok:
        create_app(config)
        return
    with pytest.raises(ConfigError) as error:
        create_app(config)
    assert "sinks.webhooks.admin_token" in str(error.value) and "32" in str(error.value)


def test_a_short_admin_token_stops_start_up(tmp_path):
    """The same through `relay check-config`, which gunicorn runs before any worker starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update({"RELAY_WEBHOOKS_ADMIN_TOKEN": "short", "RELAY_DATA_DIR": str(tmp_path / "data")})
    done = subprocess.run([sys.executable, "-m", "relay", "check-config"], env=env, capture_output=True, text=True,
                          timeout=30, cwd=tmp_path, check=False)
    assert done.returncode == 1
    assert "sinks.webhooks.admin_token" in done.stderr and "RELAY_WEBHOOKS_ADMIN_TOKEN" in done.stderr
    assert TOKEN  # the suite's own token is long enough (webhook_support)
    assert len(TOKEN.encode()) >= 32
