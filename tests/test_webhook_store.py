"""The webhook store contract (:class:`plugins.webhooks.store.Store`), checked the same way
against both stores: SQLite in ``tmp_path`` and Redis on a real ``redis-server``. Several store
objects over one backing store stand for the workers of a relay; the race at the end uses real
processes. What the stores share (endpoint settings JSON, attempt records) is checked on its
own first."""

from __future__ import annotations

import json
import multiprocessing
import time

import pytest
from redis_support import start_redis
from webhook_support import SECRET

from plugins.webhooks import signing
from plugins.webhooks.model import CANCELLED, DEAD, PENDING, SUCCEEDED, Attempt, Delivery, Endpoint
from plugins.webhooks.store import ENDPOINT_DELETED, ENDPOINT_STATE, Store
from plugins.webhooks.store_redis import RedisStore
from plugins.webhooks.store_sqlite import InThread, SQLiteStore

pytestmark = pytest.mark.timeout(120)


# -- the shared pieces ----------------------------------------------------------------------------

def test_endpoint_settings_leave_out_the_health_state_and_round_trip():
    endpoint = Endpoint("ep_1", "http://x/hook", SECRET, ["demo", "orders.*"], events=["order"], description="d",
                        previous_secrets=[["whsec_old", 5.0]], max_concurrency=3, origin="config", enabled=False,
                        disabled_reason="by hand", failing_since=12.5)
    settings = Store.endpoint_settings(endpoint)
    assert not set(json.loads(settings)) & set(ENDPOINT_STATE)
    healthy = Endpoint(**{**endpoint.to_dict(), "enabled": True, "disabled_reason": "", "failing_since": None})
    assert Store.endpoint_settings(healthy) == settings, "the state is not part of the settings"
    again = Store.stored_endpoint(settings.encode(), "config", False, "by hand", 12.5)
    assert again == endpoint


def test_attempt_records_round_trip_and_the_failure_reason():
    attempt = Attempt("d1", "ep_1", 2, 100.5, None, 1.25, "timed out", "", "retry")
    record = Store.attempt_record(attempt)
    assert list(record) == list(Attempt.__dataclass_fields__)
    assert Store.stored_attempt(json.loads(json.dumps(record))) == attempt
    assert Store.failure_reason(60) == "failing continuously for more than 60s"
    assert Store.failure_reason(0.5) == "failing continuously for more than 0.5s"


def test_both_stores_implement_the_interface():
    assert issubclass(SQLiteStore, Store) and issubclass(RedisStore, Store)
    assert not SQLiteStore.__abstractmethods__ and not RedisStore.__abstractmethods__
    assert SQLiteStore.kind == "sqlite" and RedisStore.kind == "redis"


# -- the contract, against both stores --------------------------------------------------------------

@pytest.fixture(scope="module")
def redis_server():
    server = start_redis()
    yield server
    server.kill()


@pytest.fixture(params=["sqlite", "redis"])
def store_factory(request, tmp_path):
    """Builds store objects sharing one backing store, like the workers of one relay."""
    if request.param == "sqlite":
        yield lambda: SQLiteStore(str(tmp_path / "webhooks.sqlite3"))
    else:
        server = request.getfixturevalue("redis_server")
        prefix = f"test:{time.time_ns()}"
        yield lambda: RedisStore(server.url, prefix)


def _delivery(n: int, endpoint_id: str = "ep_1", at: float | None = None) -> Delivery:
    now = time.time() if at is None else at
    return Delivery(id=signing.webhook_id(endpoint_id, "demo", f"e{n}"), endpoint_id=endpoint_id, event_id=f"e{n}",
                    channel="demo", event_type="order", body=b'{"n":%d}' % n, created_at=now, status=PENDING,
                    next_attempt_at=now)


def _attempt(delivery: Delivery, outcome: str, status: int | None = 500) -> Attempt:
    return Attempt(delivery.id, delivery.endpoint_id, delivery.attempts, time.time(), status, 1.5, "", "", outcome)


def test_store_enqueue_is_idempotent_and_claim_is_exclusive(store_factory):
    one, two = store_factory(), store_factory()
    one.save_endpoint(Endpoint("ep_1", "http://x", SECRET, ["*"]))
    assert one.enqueue([_delivery(1), _delivery(2)]) == 2
    assert two.enqueue([_delivery(1)]) == 0, "the same webhook-id from another worker is ignored"
    now = time.time() + 0.01
    assert sorted(one.due("ep_1", now, 10)) == sorted([_delivery(1).id, _delivery(2).id])
    claimed = one.claim(_delivery(1).id, "w1", now, 30)
    assert claimed is not None and claimed.attempts == 1 and claimed.body == b'{"n":1}'
    assert two.claim(_delivery(1).id, "w2", now, 30) is None, "claimed once"
    assert two.due("ep_1", now, 10) == [_delivery(2).id], "a claimed delivery is not due during its lease"
    assert two.claim(_delivery(1).id, "w2", now + 31, 30) is not None, "an expired lease (dead worker) is due again"
    assert not one.finish(claimed, "w1", SUCCEEDED, 0, _attempt(claimed, "succeeded", 200)), "lease lost"


def test_store_retry_dead_letter_requeue_and_attempt_log(store_factory):
    store = store_factory()
    store.save_endpoint(Endpoint("ep_1", "http://x", SECRET, ["*"]))
    d = _delivery(1)
    store.enqueue([d])
    now = time.time() + 0.01
    claimed = store.claim(d.id, "w", now, 30)
    assert store.finish(claimed, "w", PENDING, now + 100, _attempt(claimed, "retry"))
    assert store.due("ep_1", now + 50, 10) == [] and store.due("ep_1", now + 101, 10) == [d.id]
    claimed = store.claim(d.id, "w", now + 101, 30)
    assert claimed.attempts == 2
    assert store.finish(claimed, "w", DEAD, 0, _attempt(claimed, "dead", 503))
    assert [x.id for x in store.deliveries("ep_1", DEAD)] == [d.id]
    assert store.counts() == {"pending": 0, "dead": 1}
    log = store.attempts("ep_1")
    assert [(a.attempt, a.outcome) for a in log] == [(2, "dead"), (1, "retry")]
    assert store.requeue([d.id], now + 200) == 1
    assert store.get_delivery(d.id).status == PENDING and store.get_delivery(d.id).attempts == 0
    assert store.deliveries("ep_1", DEAD) == [] and store.due("ep_1", now + 200, 10) == [d.id]
    assert store.requeue([d.id], now) == 0, "a pending delivery is not requeued twice"


def test_store_endpoint_health_and_sync(store_factory):
    store = store_factory()
    store.sync_config_endpoints([Endpoint("cfg_a", "http://a", SECRET, ["*"], origin="config"),
                                 Endpoint("cfg_b", "http://b", SECRET, ["*"], origin="config")])
    store.save_endpoint(Endpoint("ep_api", "http://c", SECRET, ["*"]))
    assert not store.note_result("cfg_a", False, 1000.0, 60)
    assert not store.note_result("cfg_a", False, 1059.0, 60)
    assert store.note_result("cfg_a", False, 1060.0, 60), "disabled after 60 s of failure"
    disabled = store.get_endpoint("cfg_a")
    assert not disabled.enabled and disabled.failing_since == 1000.0 and "failing" in disabled.disabled_reason
    assert not store.note_result("cfg_b", False, 1000.0, 60)
    store.note_result("cfg_b", True, 1030.0, 60)
    assert store.get_endpoint("cfg_b").failing_since is None, "a success ends the failing period"
    store.set_enabled("cfg_a", True)
    assert store.get_endpoint("cfg_a").enabled and store.get_endpoint("cfg_a").failing_since is None
    # A restart with a changed configuration: cfg_b is gone, cfg_a keeps its state, API ones stay.
    store.set_enabled("cfg_a", False, "by hand")
    store.sync_config_endpoints([Endpoint("cfg_a", "http://a2", SECRET, ["*"], origin="config")])
    assert [e.id for e in store.list_endpoints()] == ["cfg_a", "ep_api"]
    assert store.get_endpoint("cfg_a").url == "http://a2" and not store.get_endpoint("cfg_a").enabled


def test_store_enqueue_leaves_a_stored_delivery_as_it_is_whatever_its_state(store_factory):
    store = store_factory()
    store.save_endpoint(Endpoint("ep_1", "http://x", SECRET, ["*"]))
    d = _delivery(1)
    assert store.enqueue([d]) == 1
    now = time.time() + 0.01
    claimed = store.claim(d.id, "w", now, 30)
    assert store.finish(claimed, "w", SUCCEEDED, 0, _attempt(claimed, "succeeded", 200))
    assert store.enqueue([_delivery(1)]) == 0, "the same webhook-id again (another worker, a replayed source)"
    kept = store.get_delivery(d.id)
    assert kept.status == SUCCEEDED and kept.attempts == 1
    assert store.due("ep_1", now + 1000, 10) == []


def test_store_release_gives_the_lease_back_only_to_its_owner(store_factory):
    one, two = store_factory(), store_factory()
    one.save_endpoint(Endpoint("ep_1", "http://x", SECRET, ["*"]))
    d = _delivery(1)
    one.enqueue([d])
    now = time.time() + 0.01
    claimed = one.claim(d.id, "w1", now, 30)
    two.release(d.id, "w2", now)
    assert two.due("ep_1", now + 1, 10) == [], "another worker cannot give back a lease it does not hold"
    one.release(d.id, "w1", now + 1)
    assert two.due("ep_1", now + 1, 10) == [d.id], "due again at once"
    retaken = two.claim(d.id, "w2", now + 1, 30)
    assert retaken is not None and retaken.lease_owner == "w2" and retaken.attempts == 2
    assert not one.finish(claimed, "w1", SUCCEEDED, 0, _attempt(claimed, "succeeded", 200)), "released: lease lost"
    assert two.finish(retaken, "w2", SUCCEEDED, 0, _attempt(retaken, "succeeded", 200))
    assert [(a.attempt, a.outcome) for a in two.attempts("ep_1", d.id)] == [(2, "succeeded"), (1, "succeeded")], \
        "an attempt whose lease was lost is still logged"
    assert two.get_delivery(d.id).status == SUCCEEDED


def test_store_counts_requeue_and_deleting_an_endpoint(store_factory):
    store = store_factory()
    store.save_endpoint(Endpoint("ep_1", "http://x", SECRET, ["*"]))
    store.save_endpoint(Endpoint("ep_2", "http://y", SECRET, ["*"]))
    assert store.counts() == {"pending": 0, "dead": 0}
    store.enqueue([_delivery(1), _delivery(2), _delivery(3, "ep_2")])
    assert store.counts() == {"pending": 3, "dead": 0}
    now = time.time() + 0.01
    done = store.claim(_delivery(1).id, "w", now, 30)
    store.finish(done, "w", SUCCEEDED, 0, _attempt(done, "succeeded", 200))
    dead = store.claim(_delivery(3, "ep_2").id, "w", now, 30)
    store.finish(dead, "w", DEAD, 0, _attempt(dead, "dead", 410))
    assert store.counts() == {"pending": 1, "dead": 1}
    assert store.requeue([_delivery(1).id, _delivery(2).id, "nope"], now) == 1, "only finished ones are requeued"
    assert store.counts() == {"pending": 2, "dead": 1}
    assert store.delete_endpoint("ep_1") and not store.delete_endpoint("ep_1")
    cancelled = store.get_delivery(_delivery(2).id)
    assert cancelled.status == CANCELLED and cancelled.last_error == ENDPOINT_DELETED
    assert store.requeue([cancelled.id], now) == 0, "a cancelled delivery stays cancelled"
    assert store.counts() == {"pending": 0, "dead": 1}
    assert [e.id for e in store.list_endpoints()] == ["ep_2"] and store.get_endpoint("ep_1") is None


def test_the_sqlite_store_in_its_thread_keeps_the_contract(tmp_path):
    store = InThread(SQLiteStore(str(tmp_path / "webhooks.sqlite3")))
    assert isinstance(store.store, Store) and store.describe()["store"] == "sqlite"
    store.save_endpoint(Endpoint("ep_1", "http://x", SECRET, ["*"]))
    assert store.enqueue([_delivery(1)]) == 1 and store.enqueue([_delivery(1)]) == 0
    assert store.claim(_delivery(1).id, "w", time.time() + 0.01, 30).attempts == 1


def _race(kind: str, location: str, prefix: str, worker: str, count: int, queue, barrier) -> None:
    """One 'worker' process: enqueue every delivery (as every worker sees every broker event),
    then claim what it can and report what it claimed."""
    if kind == "sqlite":
        store = SQLiteStore(location)
    else:
        store = RedisStore(location, prefix)
    store.ping()
    deliveries = [_delivery(n, at=1000.0) for n in range(count)]  # same event, same record in every worker
    barrier.wait(30)  # all four race from here
    stored = sum(store.enqueue([d]) for d in deliveries)
    claimed = []
    deadline = time.time() + 5
    while time.time() < deadline and len(claimed) < count:
        for delivery_id in store.due("ep_1", time.time(), count):
            if store.claim(delivery_id, worker, time.time(), 60):
                claimed.append(delivery_id)
        if not store.due("ep_1", time.time(), 1):
            break
    queue.put((worker, stored, claimed))


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_four_processes_store_and_claim_each_delivery_once(kind, tmp_path, redis_server):
    """Point 5 at the store level, with real processes racing: 4 workers each store the same 200
    deliveries; each is stored once and claimed by exactly one worker."""
    location = str(tmp_path / "race.sqlite3") if kind == "sqlite" else redis_server.url
    prefix = f"race:{time.time_ns()}"
    if kind == "sqlite":
        SQLiteStore(location).ping()  # create the schema once, as the first worker would
    context = multiprocessing.get_context("spawn")
    queue, barrier = context.Queue(), context.Barrier(4)
    processes = [context.Process(target=_race, args=(kind, location, prefix, f"w{i}", 200, queue, barrier))
                 for i in range(4)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(10)
    assert sum(stored for _, stored, _ in results) == 200
    claimed = [d for _, _, ids in results for d in ids]
    assert len(claimed) == 200 and len(set(claimed)) == 200
    print(kind, "stored/claimed per worker:", sorted((w, s, len(ids)) for w, s, ids in results))


def test_store_claim_due_takes_the_due_deliveries_once_soonest_first(store_factory):
    one, two = store_factory(), store_factory()
    one.save_endpoint(Endpoint("ep_1", "http://x", SECRET, ["*"]))
    now = time.time()
    one.enqueue([_delivery(n, at=now - 10 + n) for n in range(1, 6)] + [_delivery(9, at=now + 60)])
    first = one.claim_due("ep_1", "w1", now, 30, limit=3)
    assert [d.event_id for d in first] == ["e1", "e2", "e3"], "soonest first, at most the limit"
    assert all(d.attempts == 1 for d in first)
    rest = two.claim_due("ep_1", "w2", now, 30, limit=10)
    assert [d.event_id for d in rest] == ["e4", "e5"], "another worker gets only what is left; e9 is not due"
    assert one.claim_due("ep_1", "w1", now, 30, limit=10) == []
    assert two.finish(rest[0], "w2", SUCCEEDED, 0, _attempt(rest[0], "succeeded", 200)), "w2 holds the lease"


def test_sqlite_calls_made_together_share_one_commit_and_fail_alone(tmp_path):
    """InThread's group commit: calls queued while the thread is busy run as one transaction, one
    savepoint each; a call that raises is rolled back alone and raises to its own caller."""
    import gevent

    store = SQLiteStore(str(tmp_path / "webhooks.sqlite3"))
    store.save_endpoint(Endpoint("ep_1", "http://x", SECRET, ["*"]))
    groups = []
    run_group = store.run_group
    store.run_group = lambda calls: groups.append(len(calls)) or run_group(calls)

    def enqueue_then_fail(delivery):
        store.enqueue([delivery])
        raise ValueError("refused after writing")

    store.enqueue_then_fail = enqueue_then_fail
    threaded = InThread(store)
    calls = [gevent.spawn(threaded.enqueue, [_delivery(n)]) for n in range(20)]
    failing = gevent.spawn(threaded.enqueue_then_fail, _delivery(99))
    gevent.joinall(calls + [failing], timeout=30)
    assert [call.value for call in calls] == [1] * 20
    assert isinstance(failing.exception, ValueError)
    assert sum(groups) >= 20 and len(groups) <= 3, f"20 calls made together, in {len(groups)} group(s)"
    assert len(store.due("ep_1", time.time() + 1, 100)) == 20, "the failed call's write was rolled back"
    assert store.get_delivery(_delivery(99).id) is None
