"""What a webhook store is: the interface both stores implement, and the pieces they share.

:class:`Store` is the contract the sink (:mod:`~plugins.webhooks.delivery`), the admin API and
the ``relay webhooks`` command rely on; :class:`~plugins.webhooks.store_sqlite.SQLiteStore` (one
file per host) and :class:`~plugins.webhooks.store_redis.RedisStore` (several hosts) implement
it. Every method may be called by several workers (processes) at once, each with a store object
of its own over the same data: what must happen once across them (store a delivery, claim it,
finish it, disable an endpoint) is atomic in the backing store, not in Python.

Delivery states (:mod:`~plugins.webhooks.model`): ``pending`` until it succeeds (``succeeded``),
runs out of attempts (``dead``) or its endpoint is deleted (``cancelled``). A claimed delivery
stays ``pending`` with its ``next_attempt_at`` moved to the end of the lease, so a delivery whose
worker died is due again by itself.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

from plugins.webhooks.model import Attempt, Delivery, Endpoint

# What a store keeps of an endpoint in fields of their own (its origin and health state), beside
# the JSON of everything else, its settings (Store.endpoint_settings).
ENDPOINT_STATE = ("origin", "enabled", "disabled_reason", "failing_since")
DELIVERY_FIELDS = tuple(Delivery.__dataclass_fields__)
ATTEMPT_FIELDS = tuple(Attempt.__dataclass_fields__)
ENDPOINT_DELETED = "endpoint deleted"  # last_error of the deliveries cancelled with their endpoint


class Store(ABC):
    """The durable queue of webhook deliveries, the endpoints and the attempt log.

    A store object is created before the workers fork and connects lazily, once per process
    (a connection never crosses a fork). Times are seconds since the epoch, given by the caller
    where the contract depends on them (``now``), so that every worker agrees on what is due.
    """

    kind: str = ""  # "sqlite" or "redis"

    # -- what both stores keep alike ------------------------------------------------------------

    @staticmethod
    def endpoint_settings(endpoint: Endpoint) -> str:
        """The JSON a store keeps of an endpoint's settings: all but :data:`ENDPOINT_STATE`. Two
        endpoints with the same text have the same settings."""
        data = endpoint.to_dict()
        for key in ENDPOINT_STATE:
            data.pop(key)
        return json.dumps(data)

    @staticmethod
    def stored_endpoint(settings: str | bytes, origin: str, enabled: bool, disabled_reason: str,
                        failing_since: float | None) -> Endpoint:
        """An endpoint from what a store keeps: its settings JSON (:meth:`endpoint_settings`) and
        its state."""
        data = json.loads(settings)
        data.update(origin=origin, enabled=enabled, disabled_reason=disabled_reason, failing_since=failing_since)
        return Endpoint.from_dict(data)

    @staticmethod
    def attempt_record(attempt: Attempt) -> dict[str, Any]:
        """An attempt's fields by name (:data:`ATTEMPT_FIELDS`, in that order), as a store keeps them."""
        return {name: getattr(attempt, name) for name in ATTEMPT_FIELDS}

    @staticmethod
    def stored_attempt(record: Any) -> Attempt:
        """An attempt from a mapping of its fields (a row, a decoded record)."""
        return Attempt(**{name: record[name] for name in ATTEMPT_FIELDS})

    @staticmethod
    def failure_reason(disable_after: float) -> str:
        """Why :meth:`note_result` disabled an endpoint."""
        return f"failing continuously for more than {disable_after:g}s"

    # -- connection ------------------------------------------------------------------------------

    @abstractmethod
    def ping(self) -> None:
        """Connect if needed and check that the store answers; raises when it does not."""

    @abstractmethod
    def close(self) -> None:
        """Close this process's connection (a later call connects again)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What /healthz shows of the store (``store`` and where it is); no I/O, no secrets."""

    # -- endpoints -------------------------------------------------------------------------------

    @abstractmethod
    def list_endpoints(self) -> list[Endpoint]:
        """Every endpoint, by id."""

    @abstractmethod
    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        """One endpoint, or ``None`` when there is none of that id."""

    @abstractmethod
    def save_endpoint(self, endpoint: Endpoint) -> None:
        """Create an endpoint, or replace the settings (and origin) of an existing one: an
        existing endpoint keeps its health state (enabled, disabled_reason, failing_since)."""

    @abstractmethod
    def delete_endpoint(self, endpoint_id: str) -> bool:
        """Remove an endpoint and cancel its pending deliveries (``last_error`` is
        :data:`ENDPOINT_DELETED`); False when there was no such endpoint."""

    @abstractmethod
    def set_enabled(self, endpoint_id: str, enabled: bool, reason: str = "") -> bool:
        """Enable (clearing the reason), or disable with ``reason``; either way the failing
        period starts again. False when there is no such endpoint."""

    @abstractmethod
    def note_result(self, endpoint_id: str, ok: bool, now: float, disable_after: float) -> bool:
        """Track continuous failure: a success ends the failing period, a failure starts one
        (``failing_since = now``) unless one runs; once it has lasted ``disable_after`` seconds the
        endpoint is disabled (reason :meth:`failure_reason`). True only for the one call, across
        workers, that disabled it."""

    def sync_config_endpoints(self, endpoints: list[Endpoint]) -> None:
        """Make the store's ``config`` endpoints those of the configuration file: new ones are
        saved, changed ones get the file's settings (keeping their health state and creation
        time), ones no longer in the file are deleted; endpoints made through the API stay.
        An unchanged endpoint is not written, so workers starting together do not contend."""
        keep = {e.id for e in endpoints}
        for endpoint in endpoints:
            existing = self.get_endpoint(endpoint.id)
            if existing is not None:
                endpoint.created_at = existing.created_at
                if self.endpoint_settings(existing) == self.endpoint_settings(endpoint):
                    continue  # unchanged: no write, so four workers starting together do not contend
            self.save_endpoint(endpoint)
        for endpoint in self.list_endpoints():
            if endpoint.origin == "config" and endpoint.id not in keep:
                self.delete_endpoint(endpoint.id)

    # -- deliveries ------------------------------------------------------------------------------

    @abstractmethod
    def enqueue(self, deliveries: list[Delivery]) -> int:
        """Store new deliveries durably before returning; returns how many were new. Dedupes by
        webhook-id (``Delivery.id``): a delivery already stored, whatever its state, is left as
        it is, so every worker may enqueue the same event and it is stored once."""

    @abstractmethod
    def due(self, endpoint_id: str, now: float, limit: int) -> list[str]:
        """Ids of the endpoint's pending deliveries whose ``next_attempt_at <= now``, soonest
        first, at most ``limit``. Claimed ones are not due until their lease ends."""

    @abstractmethod
    def claim(self, delivery_id: str, owner: str, now: float, lease: float) -> Delivery | None:
        """Take a due delivery for one attempt: a lease, not a lock. Exactly one caller (across
        workers) gets it, with ``attempts`` counted up and ``lease_owner = owner``; it is due
        again at ``now + lease`` unless finished or released by then. ``None`` when it is not
        due, not pending, or someone else took it first."""

    def claim_due(self, endpoint_id: str, owner: str, now: float, lease: float, limit: int) -> list[Delivery]:
        """:meth:`due` and :meth:`claim` of each: the endpoint's due deliveries this caller took,
        soonest first, at most ``limit``. A store may do it in one transaction (SQLite does)."""
        claimed = (self.claim(delivery_id, owner, now, lease) for delivery_id in self.due(endpoint_id, now, limit))
        return [delivery for delivery in claimed if delivery is not None]

    @abstractmethod
    def finish(self, delivery: Delivery, owner: str, status: str, next_attempt_at: float,
               attempt: Attempt) -> bool:
        """Log ``attempt`` and, if ``owner`` still holds the lease, set the delivery's new status
        (``pending`` again at ``next_attempt_at`` for a retry, else finished). False when the
        lease was lost meanwhile: the attempt is still logged, the delivery is left as it is."""

    @abstractmethod
    def release(self, delivery_id: str, owner: str, now: float) -> None:
        """Give back ``owner``'s lease without an attempt result (shutdown): due again at
        ``now``, attempts unchanged. Nothing happens when ``owner`` no longer holds it."""

    @abstractmethod
    def get_delivery(self, delivery_id: str) -> Delivery | None:
        """One delivery, or ``None``."""

    @abstractmethod
    def deliveries(self, endpoint_id: str | None = None, status: str | None = None, since: float | None = None,
                   limit: int = 100) -> list[Delivery]:
        """Deliveries of one endpoint (or all), with that status, created at ``since`` or later,
        newest first, at most ``limit``."""

    @abstractmethod
    def attempts(self, endpoint_id: str, delivery_id: str | None = None, limit: int = 100) -> list[Attempt]:
        """The endpoint's attempt log (of one delivery if given), newest first, at most ``limit``."""

    @abstractmethod
    def requeue(self, ids: list[str], now: float) -> int:
        """Send finished deliveries (succeeded or dead) again from the first attempt, under the
        same webhook-id, due at ``now``; returns how many. Pending and cancelled ones (and
        unknown ids) are left alone."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """``{"pending": n, "dead": n}`` over every endpoint."""

    @abstractmethod
    def prune(self, before: float) -> int:
        """Forget finished deliveries completed before ``before`` and older attempts; returns how
        many dead letters (SQLite: finished deliveries) went."""
