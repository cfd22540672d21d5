"""Accepting events and delivering them: the sink object and its dispatcher.

:class:`Sink` is the per-app state (``relay.extensions["webhooks"]``). Its :meth:`Sink.accept`
runs in the worker's sink greenlet (``relay_deliver``) or a durable source's greenlet
(``relay_deliver_durable``): it matches endpoints and stores one delivery per endpoint
(durably, before returning; the SQLite store's calls run in a thread of their own, so only that
greenlet waits for the disk, not the worker), then wakes the dispatcher. The :class:`Dispatcher`
is a relay source (supervised: restarted on failure, reported in /healthz) that claims due
deliveries from the store and runs each attempt in a greenlet of its own, at most
``max_concurrency`` per endpoint, so one slow endpoint never holds up the others.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections import Counter
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.pool

from plugins.webhooks import client, signing
from plugins.webhooks.model import DEAD, PENDING, SUCCEEDED, Attempt, Delivery, Endpoint
from plugins.webhooks.settings import config_endpoint_id, redact_url
from plugins.webhooks.ssrf import AddressPolicy
from relay.api import REDIS_URL_SCHEMES, ConfigError, Source, parse_retry_after

log = logging.getLogger("relay.webhooks")

ENDPOINT_REFRESH = 1.0  # seconds between reloads of the endpoint list (other workers' API changes)
PRUNE_EVERY = 600.0
SHUTDOWN_GRACE = 3.0  # seconds in-flight attempts get to finish when the worker stops
RETRYABLE_STATUS = frozenset({408, 429})


def open_store(settings: dict[str, Any], data_dir: str):
    url = settings["store"]
    if url.startswith(REDIS_URL_SCHEMES):
        from plugins.webhooks.store_redis import RedisStore

        return RedisStore(url, settings["key_prefix"], settings["retention"])
    from plugins.webhooks.store_sqlite import InThread, SQLiteStore, private_directory

    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") - 1:]
        private_directory(os.path.dirname(os.path.abspath(path)), tighten=False)
    else:
        path = os.path.join(data_dir, "webhooks.sqlite3")
        try:
            private_directory(data_dir, tighten=True)  # relay's own directory: made 0700
        except OSError as exc:  # refused (another user's), or cannot be created or tightened
            raise ConfigError([f"data_dir: {exc}"]) from None
    # SQLite blocks in C (lock waits, fsync): off the gevent hub. Redis is cooperative I/O.
    return InThread(SQLiteStore(path))


class Sink:
    """The webhook sink of one app."""

    def __init__(self, relay, settings: dict[str, Any], data_dir: str):
        self.relay = relay
        self.settings = settings
        self.schedule: list[float] = [float(s) for s in settings["retry_schedule"]]
        self.policy = AddressPolicy(settings["allow_networks"])
        self.store = open_store(settings, data_dir)
        self.config_endpoints = [self._config_endpoint(e) for e in settings["endpoints"]]
        self.wake = gevent.event.Event()  # set when a delivery may be due now
        self.dispatcher: Dispatcher | None = None
        self._endpoints: list[Endpoint] = []
        self._loaded_at = -ENDPOINT_REFRESH
        self._synced_pid = 0
        self._store_up = True  # as last seen by health(), to log changes only

    @staticmethod
    def _config_endpoint(table: dict[str, Any]) -> Endpoint:
        return Endpoint(id=config_endpoint_id(table), url=table["url"], secret=table["secret"],
                        previous_secrets=[[s, None] for s in table["previous_secrets"]],
                        channels=list(table["channels"]), events=list(table["events"]),
                        description=table["description"], max_concurrency=table["max_concurrency"],
                        origin="config")

    # -- endpoints -------------------------------------------------------------------------------

    def endpoints(self, fresh: bool = False) -> list[Endpoint]:
        """The endpoints, from a cache at most ``ENDPOINT_REFRESH`` seconds old."""
        now = time.monotonic()
        if fresh or now - self._loaded_at >= ENDPOINT_REFRESH:
            if self._synced_pid != os.getpid():
                # Once per worker: the configuration file owns the config endpoints.
                self.store.sync_config_endpoints(self.config_endpoints)
                self._synced_pid = os.getpid()
            self._endpoints = self.store.list_endpoints()
            self._loaded_at = now
        return self._endpoints

    def changed(self) -> None:
        """The admin API changed an endpoint: reload at the next look (this worker at once)."""
        self._loaded_at = -ENDPOINT_REFRESH
        self.wake.set()

    # -- accepting events ------------------------------------------------------------------------

    def accept(self, event) -> int:
        """Store a delivery of ``event`` for every enabled endpoint that wants it.

        Returns once the deliveries are stored (committed): an HTTP publish answers 202 after
        it, and a durable source commits its position after it. The same event seen by several
        workers maps to the same webhook-ids, and the store keeps the first: each endpoint gets
        one delivery.
        """
        return self.accept_batch([event])

    def accept_batch(self, events: list) -> int:
        """:meth:`accept` for several events, stored in one transaction (in their order)."""
        endpoints = [e for e in self.endpoints() if e.enabled]
        now = time.time()
        first = now + self.schedule[0]
        deliveries = []
        for event in events:
            targets = [e for e in endpoints if e.matches(event.channel, event.event)]
            if not targets:
                continue
            body = signing.build_body(event.event, event.timestamp, event.channel, event.id, event.data)
            deliveries += [Delivery(id=signing.webhook_id(e.id, event.channel, event.id), endpoint_id=e.id,
                                    event_id=event.id, channel=event.channel, event_type=event.event, body=body,
                                    created_at=now, status=PENDING, next_attempt_at=first) for e in targets]
        if not deliveries:
            return 0
        stored = self.store.enqueue(deliveries)
        self.relay.stats.incr("webhook_deliveries_stored", stored)
        if stored < len(deliveries):
            # Another worker (or an earlier delivery of the same broker message) stored it first.
            self.relay.stats.incr("webhook_deliveries_already_stored", len(deliveries) - stored)
        self.wake.set()
        return stored

    # -- retry policy ----------------------------------------------------------------------------

    def retry_delay(self, attempts_made: int, retry_after: str | None, now: float) -> float | None:
        """Seconds until the next attempt, or None when no attempt is left."""
        if attempts_made >= len(self.schedule):
            return None
        jitter = self.settings["jitter"]
        delay = self.schedule[attempts_made] * random.uniform(1 - jitter, 1 + jitter)
        asked = parse_retry_after(retry_after, now)
        if asked is not None:
            # Honour the receiver's wish, bounded: a huge Retry-After must not park it forever.
            delay = max(delay, min(asked, self.settings["max_retry_after"]))
        return delay

    def lease(self) -> float:
        """How long a claim lasts: longer than any attempt, so only a dead worker's claim expires."""
        return self.settings["timeout"] * 2 + 5

    def health(self) -> dict[str, Any]:
        try:
            counts = self.store.counts()
            # /healthz and /readyz answer anyone: the URL's origin only (the admin API has it all).
            disabled = [{"id": e.id, "url": redact_url(e.url), "reason": e.disabled_reason}
                        for e in self.endpoints() if not e.enabled]
        except Exception as exc:  # noqa: BLE001 - health must answer even when the store is down
            if self._store_up:  # log the change, not every probe
                log.warning("webhook store unreachable: %s", exc)
            self._store_up = False
            return {"state": "down", "detail": f"store: {type(exc).__name__}: {exc}", **self.store.describe()}
        if not self._store_up:
            log.info("webhook store reachable again")
        self._store_up = True
        dispatcher = self.dispatcher
        return {"state": "up" if not disabled else "degraded", "queue": counts["pending"], "dead": counts["dead"],
                "in_flight": sum(dispatcher.in_flight.values()) if dispatcher else 0,
                "endpoints": len(self._endpoints), "disabled_endpoints": disabled, **self.store.describe()}


class Dispatcher(Source):
    """Claims due deliveries and attempts them; runs as a supervised source in every worker."""

    name = "webhooks"

    def __init__(self, sink: Sink):
        super().__init__()
        self.sink = sink
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        self.in_flight: Counter[str] = Counter()  # endpoint id -> deliveries claimed and not finished here
        self.slots: dict[str, tuple[int, gevent.lock.Semaphore]] = {}  # endpoint id -> (max_concurrency, slots)
        self.attempts = gevent.pool.Group()
        self.connections = client.Connections()  # kept alive between attempts, per worker
        self._pruned_at = 0.0
        self._reported_at = 0.0

    def run(self, relay) -> None:
        sink = self.sink
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"  # after fork
        sink.store.ping()
        sink.endpoints(fresh=True)
        self.set_status("up")
        while not self.stopping.is_set():
            sink.wake.clear()
            self._dispatch_due()
            self._report_queue_now_and_then()
            self._prune_now_and_then()
            sink.wake.wait(sink.settings["poll_interval"])
        self._drain()

    def stop(self) -> None:
        super().stop()
        self.sink.wake.set()

    def _dispatch_due(self) -> None:
        sink = self.sink
        now = time.time()
        for endpoint in sink.endpoints():
            if not endpoint.enabled:
                continue
            limit = endpoint.max_concurrency or sink.settings["max_concurrency"]
            # Up to ``limit`` more than may run are claimed ahead: when a request ends, the next
            # one starts at once instead of after a store round trip (a commit). Each waits for
            # a slot at most about one attempt's time, well within its lease. Claimed in batches
            # of at least ``limit`` (once half are gone): one commit for many, not one per request.
            if self.in_flight[endpoint.id] > limit:
                continue  # this endpoint has work enough; the others go on
            free = 2 * limit - self.in_flight[endpoint.id]
            for delivery in sink.store.claim_due(endpoint.id, self.owner, now, sink.lease(), free):
                self.in_flight[endpoint.id] += 1
                self.attempts.spawn(self._attempt, delivery, endpoint, self._slots(endpoint.id, limit))

    def _slots(self, endpoint_id: str, limit: int) -> gevent.lock.Semaphore:
        """The endpoint's ``max_concurrency`` slots in this worker: requests in flight at once."""
        known = self.slots.get(endpoint_id)
        if known is None or known[0] != limit:  # new, or its max_concurrency changed
            known = self.slots[endpoint_id] = (limit, gevent.lock.Semaphore(limit))
        return known[1]

    def _attempt(self, delivery: Delivery, endpoint: Endpoint, slots: gevent.lock.Semaphore) -> None:
        sink, relay = self.sink, self.sink.relay
        held = [False]

        def free_slot() -> None:  # once the answer came: the slot bounds requests, not store writes
            if held[0]:
                held[0] = False
                slots.release()

        try:
            slots.acquire()
            held[0] = True
            self._deliver(delivery, endpoint, free_slot)
        except gevent.GreenletExit:
            # Stopped mid-attempt: hand the delivery back so the next worker retries it at once.
            self._release(delivery)
            raise
        except Exception:  # the store failed: the claim's lease expires and the delivery is retried
            log.exception("webhook delivery %s to %s failed outside the HTTP attempt", delivery.id, endpoint.label)
            relay.stats.incr("webhook_errors")
        finally:
            free_slot()
            self.in_flight[endpoint.id] -= 1
            sink.wake.set()  # room to claim more

    def _release(self, delivery: Delivery) -> None:
        try:
            self.sink.store.release(delivery.id, self.owner, time.time())
        except Exception:  # the lease expires by itself
            log.exception("could not release delivery %s; it is retried when its lease ends", delivery.id)

    def _deliver(self, delivery: Delivery, endpoint: Endpoint, answered=lambda: None) -> None:
        """One attempt: the POST, then its result stored; ``answered()`` is called in between."""
        sink, settings, relay = self.sink, self.sink.settings, self.sink.relay
        started = time.time()
        headers = signing.headers(delivery.id, delivery.body, endpoint.signing_secrets(started), started)
        headers["User-Agent"] = settings["user_agent"]
        result = client.post(endpoint.url, delivery.body, headers, timeout=settings["timeout"],
                             policy=sink.policy, max_response=settings["response_max_bytes"],
                             connections=self.connections)
        answered()
        ok = result.status is not None and 200 <= result.status < 300
        retryable = not ok and not result.refused and (
            result.status is None or result.status >= 500 or result.status in RETRYABLE_STATUS)
        now = time.time()
        delay = sink.retry_delay(delivery.attempts, result.retry_after, now) if retryable else None
        if ok:
            status, next_at, outcome = SUCCEEDED, 0.0, "succeeded"
        elif delay is not None:
            status, next_at, outcome = PENDING, now + delay, "retry"
        else:
            status, next_at, outcome = DEAD, 0.0, "dead"
        if result.status is not None and not ok and not result.error:
            result.error = f"HTTP {result.status}" + ("" if retryable else " (not retried)")
        attempt = Attempt(delivery.id, endpoint.id, delivery.attempts, started, result.status, result.latency_ms,
                          result.error, result.response.decode("utf-8", "replace"), outcome)
        if not sink.store.finish(delivery, self.owner, status, next_at, attempt):
            log.warning("delivery %s: lease lost during the attempt; another worker owns it now", delivery.id)
        relay.stats.incr("webhook_attempts", outcome=outcome)
        level = logging.DEBUG if ok else logging.INFO if outcome == "retry" else logging.WARNING
        log.log(level, "delivery %s to %s attempt %d: %s%s", delivery.id, endpoint.label, delivery.attempts,
                result.status or result.error, f"; next in {delay:.1f}s" if outcome == "retry" else
                "; dead-lettered" if outcome == "dead" else "")
        if ok and endpoint.failing_since is None:
            return  # nothing to clear (as this worker knows: its list is at most ENDPOINT_REFRESH old)
        disabled = sink.store.note_result(endpoint.id, ok, now, settings["disable_after"])
        endpoint.failing_since = None if ok else endpoint.failing_since or now
        if disabled:
            relay.stats.incr("webhook_endpoints_disabled")
            log.warning("webhook endpoint %s disabled: failing continuously for %gs; re-enable it with "
                        "POST /webhooks/%s/enable", endpoint.label, settings["disable_after"], endpoint.id)
            self.sink.changed()

    def _report_queue_now_and_then(self) -> None:
        """Keep the relay_webhook_queue_depth gauge current, at most once a second."""
        now = time.time()
        if now - self._reported_at < 1.0:
            return
        self._reported_at = now
        self.sink.relay.stats.set("webhook_queue", self.sink.store.counts()["pending"])

    def _prune_now_and_then(self) -> None:
        now = time.time()
        if now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        removed = self.sink.store.prune(now - self.sink.settings["retention"])
        if removed:
            log.info("pruned %d finished webhook deliveries older than the retention", removed)

    def _drain(self) -> None:
        """Let in-flight attempts finish for a moment, then stop them (they hand back their claims)."""
        self.attempts.join(timeout=SHUTDOWN_GRACE)
        if len(self.attempts):
            log.info("stopping %d webhook attempt(s) still in flight", len(self.attempts))
            self.attempts.kill(timeout=1)
        self.connections.close()
