"""The embedded store: one SQLite file shared by every worker of the host.

WAL mode lets the workers read while one writes. The claim that keeps one delivery per webhook
across workers (at-least-once, not exactly-once: see docs/webhooks.md) is the primary key:
``INSERT OR IGNORE`` of the same webhook-id by four workers leaves one row, and
``UPDATE … WHERE next_attempt_at <= now`` lets exactly one of them take it.

Every write that must survive a crash is committed before the method returns. sqlite3's calls
block in C (a write-lock wait of up to ``busy_timeout``, an fsync), where gevent cannot switch:
the sink therefore calls this store through :class:`InThread`, which runs each method in one OS
thread of the worker's own, so the gevent hub (every stream of the worker) goes on meanwhile.

Group commit: a commit waits for the disk (an fsync, ~0.5 ms here), which would cap a worker at
a few hundred webhook deliveries a second if each claim, result and enqueue had its own. Calls
that queue up while one runs (ten attempts finishing at once) run next as one group, in the
order they were made, in one transaction with a savepoint each: each is as atomic as alone (one
that raises is rolled back to its savepoint and raises to its caller; the others go on), and the
group shares one commit. Nothing returns before that commit (:meth:`SQLiteStore.run_group`).

The file holds endpoint secrets: the store and its -wal and -shm files are made 0600, whatever
the umask (see :func:`private_directory` for the directory).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import stat
import time
from typing import Any

import gevent
from gevent.event import AsyncResult

from plugins.webhooks.model import CANCELLED, DEAD, PENDING, SUCCEEDED, Attempt, Delivery, Endpoint
from plugins.webhooks.store import ATTEMPT_FIELDS, DELIVERY_FIELDS, ENDPOINT_DELETED, Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    id TEXT PRIMARY KEY,
    data TEXT NOT NULL,                  -- the endpoint's settings as JSON
    origin TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT NOT NULL DEFAULT '',
    failing_since REAL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,                 -- webhook-id: unique per (endpoint, channel, event id)
    endpoint_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    event_type TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT NOT NULL DEFAULT '',
    last_status INTEGER,
    last_error TEXT NOT NULL DEFAULT '',
    completed_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (endpoint_id, status, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_created ON deliveries (endpoint_id, created_at);
CREATE TABLE IF NOT EXISTS attempts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at REAL NOT NULL,
    status_code INTEGER,
    latency_ms REAL NOT NULL,
    error TEXT NOT NULL,
    response TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_endpoint ON attempts (endpoint_id, seq);
"""

log = logging.getLogger("relay.webhooks")
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700

_ATTEMPT_INSERT = (f"INSERT INTO attempts ({', '.join(ATTEMPT_FIELDS)}) "
                   f"VALUES ({', '.join('?' * len(ATTEMPT_FIELDS))})")


class SQLiteStore(Store):
    """The :class:`~plugins.webhooks.store.Store` contract in one SQLite file (see above)."""

    kind = "sqlite"

    def __init__(self, path: str, synchronous: str = "full"):
        self.path = path
        self.synchronous = synchronous
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._grouped = False  # inside run_group: _write does not open a transaction of its own

    # -- connection ------------------------------------------------------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        # One connection per process, opened after fork: a connection must never cross a fork.
        # check_same_thread=False: InThread runs every call in one thread at a time, but that
        # thread may not be the one that first touched the store (a unit test, a new pool).
        if self._db is None or self._pid != os.getpid():
            private_directory(os.path.dirname(os.path.abspath(self.path)), tighten=False)
            _create_private(self.path)
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout = 10000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            db.executescript(SCHEMA)
            # SQLite gives -wal and -shm the database file's mode; files left by an older relay
            # (0644) are tightened here too.
            for suffix in ("", "-wal", "-shm"):
                _make_private(self.path + suffix)
            self._db, self._pid = db, os.getpid()
        return self._db

    def close(self) -> None:
        if self._db is not None and self._pid == os.getpid():
            self._db.close()
        self._db = None

    def ping(self) -> None:
        self.db.execute("SELECT 1").fetchone()

    def _write(self, statements: list[tuple[str, tuple]]) -> list[int]:
        """Run writes in one immediate transaction; returns each statement's rowcount."""
        with self._transaction():
            return [self.db.execute(sql, params).rowcount for sql, params in statements]

    @contextlib.contextmanager
    def _transaction(self):
        """An immediate transaction, committed on leaving; inside run_group, its own holds."""
        if self._grouped:  # run_group's transaction and savepoint hold it
            yield
            return
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def run_group(self, calls: list[tuple[Any, tuple, dict]]) -> list[tuple[bool, Any]]:
        """Run several calls of this store in one transaction, each in a savepoint of its own.

        Returns ``(True, value)`` or ``(False, exception)`` per call, once the transaction is
        committed: a call whose savepoint was rolled back failed alone; a failed commit fails
        them all (nothing of the group was stored).
        """
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        self._grouped = True
        outcomes: list[tuple[bool, Any]] = []
        try:
            for function, args, kwargs in calls:
                db.execute("SAVEPOINT call")
                try:
                    outcomes.append((True, function(*args, **kwargs)))
                except Exception as exc:  # noqa: BLE001 - raised to that call's caller alone
                    db.execute("ROLLBACK TO call")
                    outcomes.append((False, exc))
                db.execute("RELEASE call")
            db.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - the commit failed: raised to every caller of the group
            self._rollback()
            return [(False, exc)] * len(calls)
        except BaseException:  # interrupted: nothing of the group stays half-written
            self._rollback()
            raise
        finally:
            self._grouped = False
        return outcomes

    def _rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    # -- endpoints -------------------------------------------------------------------------------

    def _endpoint(self, row: sqlite3.Row) -> Endpoint:
        return self.stored_endpoint(row["data"], row["origin"], bool(row["enabled"]), row["disabled_reason"],
                                    row["failing_since"])

    def list_endpoints(self) -> list[Endpoint]:
        rows = self.db.execute("SELECT * FROM endpoints ORDER BY id").fetchall()
        return [self._endpoint(row) for row in rows]

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        row = self.db.execute("SELECT * FROM endpoints WHERE id = ?", (endpoint_id,)).fetchone()
        return self._endpoint(row) if row else None

    def save_endpoint(self, endpoint: Endpoint) -> None:
        """Create, or replace the settings of, an endpoint; keeps its health state if it exists."""
        self._write([(
            "INSERT INTO endpoints (id, data, origin, enabled, disabled_reason) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET data = excluded.data, origin = excluded.origin",
            (endpoint.id, self.endpoint_settings(endpoint), endpoint.origin, int(endpoint.enabled),
             endpoint.disabled_reason))])

    def delete_endpoint(self, endpoint_id: str) -> bool:
        counts = self._write([
            ("DELETE FROM endpoints WHERE id = ?", (endpoint_id,)),
            ("UPDATE deliveries SET status = ?, completed_at = ?, last_error = ? "
             "WHERE endpoint_id = ? AND status = ?", (CANCELLED, time.time(), ENDPOINT_DELETED, endpoint_id, PENDING)),
        ])
        return counts[0] > 0

    def set_enabled(self, endpoint_id: str, enabled: bool, reason: str = "") -> bool:
        # Enabling starts a fresh health record: the failure period counts from the next failure.
        counts = self._write([("UPDATE endpoints SET enabled = ?, disabled_reason = ?, failing_since = NULL "
                               "WHERE id = ?", (int(enabled), "" if enabled else reason, endpoint_id))])
        return counts[0] > 0

    def note_result(self, endpoint_id: str, ok: bool, now: float, disable_after: float) -> bool:
        """Track continuous failure; disable the endpoint once it lasted ``disable_after``.
        Returns True when this call disabled it."""
        if ok:
            self._write([("UPDATE endpoints SET failing_since = NULL WHERE id = ? AND failing_since IS NOT NULL",
                          (endpoint_id,))])
            return False
        reason = self.failure_reason(disable_after)
        counts = self._write([
            ("UPDATE endpoints SET failing_since = ? WHERE id = ? AND failing_since IS NULL", (now, endpoint_id)),
            ("UPDATE endpoints SET enabled = 0, disabled_reason = ? WHERE id = ? AND enabled = 1 "
             "AND failing_since IS NOT NULL AND ? - failing_since >= ?", (reason, endpoint_id, now, disable_after)),
        ])
        return counts[1] > 0

    # -- deliveries ------------------------------------------------------------------------------

    @staticmethod
    def _delivery(row: sqlite3.Row) -> Delivery:
        data = {k: row[k] for k in DELIVERY_FIELDS}
        data["body"] = bytes(data["body"])
        return Delivery(**data)

    def enqueue(self, deliveries: list[Delivery]) -> int:
        """Store new deliveries; one already stored (same webhook-id) is left as it is."""
        if not deliveries:
            return 0
        sql = (f"INSERT OR IGNORE INTO deliveries ({', '.join(DELIVERY_FIELDS)}) "
               f"VALUES ({', '.join('?' * len(DELIVERY_FIELDS))})")
        counts = self._write([(sql, tuple(getattr(d, c) for c in DELIVERY_FIELDS)) for d in deliveries])
        return sum(counts)

    def due(self, endpoint_id: str, now: float, limit: int) -> list[str]:
        rows = self.db.execute(
            "SELECT id FROM deliveries WHERE endpoint_id = ? AND status = ? AND next_attempt_at <= ? "
            "ORDER BY next_attempt_at LIMIT ?", (endpoint_id, PENDING, now, limit)).fetchall()
        return [row["id"] for row in rows]

    def claim(self, delivery_id: str, owner: str, now: float, lease: float) -> Delivery | None:
        """Take a due delivery for one attempt; ``None`` if another worker took it first."""
        counts = self._write([(
            "UPDATE deliveries SET lease_owner = ?, next_attempt_at = ?, attempts = attempts + 1 "
            "WHERE id = ? AND status = ? AND next_attempt_at <= ?", (owner, now + lease, delivery_id, PENDING, now))])
        if not counts[0]:
            return None
        return self.get_delivery(delivery_id)

    def claim_due(self, endpoint_id: str, owner: str, now: float, lease: float, limit: int) -> list[Delivery]:
        with self._transaction():  # one commit for the lot (the write lock also keeps other workers out)
            ids = self.due(endpoint_id, now, limit)
            if not ids:
                return []
            rows = self.db.execute(
                "UPDATE deliveries SET lease_owner = ?, next_attempt_at = ?, attempts = attempts + 1 "
                f"WHERE id IN ({', '.join('?' * len(ids))}) AND status = ? AND next_attempt_at <= ? RETURNING *",
                (owner, now + lease, *ids, PENDING, now)).fetchall()
        claimed = {row["id"]: self._delivery(row) for row in rows}
        return [claimed[i] for i in ids if i in claimed]  # soonest first, as due() listed them

    def finish(self, delivery: Delivery, owner: str, status: str, next_attempt_at: float,
               attempt: Attempt) -> bool:
        """Record an attempt and its consequence. False when the lease was lost meanwhile (the
        attempt is still logged; another worker owns the delivery now)."""
        completed = None if status == PENDING else time.time()
        counts = self._write([
            (_ATTEMPT_INSERT, tuple(self.attempt_record(attempt).values())),
            ("UPDATE deliveries SET status = ?, next_attempt_at = ?, lease_owner = '', last_status = ?, "
             "last_error = ?, completed_at = ? WHERE id = ? AND lease_owner = ? AND status = ?",
             (status, next_attempt_at, attempt.status_code, attempt.error, completed, delivery.id, owner, PENDING)),
        ])
        return counts[1] > 0

    def release(self, delivery_id: str, owner: str, now: float) -> None:
        """Give back a lease without an attempt result (shutdown): due again at once."""
        self._write([("UPDATE deliveries SET lease_owner = '', next_attempt_at = ? WHERE id = ? AND lease_owner = ? "
                      "AND status = ?", (now, delivery_id, owner, PENDING))])

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        row = self.db.execute("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
        return self._delivery(row) if row else None

    def deliveries(self, endpoint_id: str | None = None, status: str | None = None, since: float | None = None,
                   limit: int = 100) -> list[Delivery]:
        where, params = [], []
        for clause, value in (("endpoint_id = ?", endpoint_id), ("status = ?", status), ("created_at >= ?", since)):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = "SELECT * FROM deliveries" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self.db.execute(sql + " ORDER BY created_at DESC LIMIT ?", (*params, limit)).fetchall()
        return [self._delivery(row) for row in rows]

    def attempts(self, endpoint_id: str, delivery_id: str | None = None, limit: int = 100) -> list[Attempt]:
        sql, params = "SELECT * FROM attempts WHERE endpoint_id = ?", [endpoint_id]
        if delivery_id:
            sql, params = sql + " AND delivery_id = ?", params + [delivery_id]
        rows = self.db.execute(sql + " ORDER BY seq DESC LIMIT ?", (*params, limit)).fetchall()
        return [self.stored_attempt(row) for row in rows]

    def requeue(self, ids: list[str], now: float) -> int:
        """Send these deliveries again from the first attempt (same webhook-id). Pending ones and
        those of deleted endpoints are left alone."""
        statements = [("UPDATE deliveries SET status = ?, attempts = 0, next_attempt_at = ?, lease_owner = '', "
                       "completed_at = NULL WHERE id = ? AND status IN (?, ?)", (PENDING, now, i, SUCCEEDED, DEAD))
                      for i in ids]
        return sum(self._write(statements)) if statements else 0

    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT status, COUNT(*) FROM deliveries WHERE status IN (?, ?) GROUP BY status",
                               (PENDING, DEAD)).fetchall()
        found = {row[0]: row[1] for row in rows}
        return {"pending": found.get(PENDING, 0), "dead": found.get(DEAD, 0)}

    def prune(self, before: float) -> int:
        counts = self._write([
            ("DELETE FROM deliveries WHERE status != ? AND completed_at < ?", (PENDING, before)),
            ("DELETE FROM attempts WHERE started_at < ?", (before,)),
        ])
        return counts[0]

    def describe(self) -> dict[str, Any]:
        return {"store": "sqlite", "path": self.path}


# -- files and threads ---------------------------------------------------------------------------


def private_directory(path: str, tighten: bool) -> None:
    """Make sure ``path`` exists and no other user can read what is in it.

    A directory created here is made 0700 (whatever the umask). An existing one that others can
    enter is tightened to 0700 when ``tighten`` (relay's own ``data_dir``) and it belongs to
    relay's user, with a warning; when it belongs to another user, relay refuses to keep secrets
    there (:class:`PermissionError`). Without ``tighten`` (an explicit ``sqlite:///`` path, whose
    directory may be shared) an existing directory is left as it is: the files are 0600.
    """
    try:
        os.makedirs(path, mode=PRIVATE_DIR)
        os.chmod(path, PRIVATE_DIR)  # makedirs' mode is filtered by the umask
        return
    except FileExistsError:
        pass
    info = os.stat(path)
    mode = stat.S_IMODE(info.st_mode)
    if not tighten or not mode & 0o077:
        return
    if info.st_uid != os.geteuid():
        raise PermissionError(f"{path!r} is mode {mode:04o} and owned by uid {info.st_uid}, not by relay's user "
                              f"(uid {os.geteuid()}): other users could read the webhook secrets kept there; "
                              "make it 0700 and owned by relay's user, or point data_dir elsewhere")
    os.chmod(path, PRIVATE_DIR)
    log.warning("data_dir %s was mode %04o; made it 0700 (it holds webhook secrets)", path, mode)


def _create_private(path: str) -> None:
    """Create the database file 0600 before SQLite does (SQLite would use 0644 & ~umask)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE))
    except FileExistsError:
        return
    os.chmod(path, PRIVATE_FILE)  # open's mode is filtered by the umask


def _make_private(path: str) -> None:
    try:
        if stat.S_IMODE(os.stat(path).st_mode) != PRIVATE_FILE:
            os.chmod(path, PRIVATE_FILE)
    except FileNotFoundError:
        pass  # no -shm/-wal yet


class InThread:
    """Calls a blocking store from greenlets without blocking the gevent hub.

    Each method runs in an OS thread of its own (one per process, from a gevent
    :class:`~gevent.threadpool.ThreadPool` of size 1) while the calling greenlet waits; every
    other greenlet of the worker (SSE streams, heartbeats, other requests) runs meanwhile. One
    thread: calls run one at a time and in order, as they did when they blocked the whole
    worker, so each method stays atomic within the process, and the connection is never used by
    two threads at once. A dedicated pool, not the hub's: that one resolves DNS (webhook
    attempts), which a store waiting 10 s on a lock must not starve.

    Calls made while the thread is busy wait in a queue; the next turn of the thread takes them
    all, in order, through the store's ``run_group`` (one commit for all: see the module's text).
    A call made while the thread is idle runs alone, as it would without this class.

    Results and exceptions come back to the caller; a ``gevent.Timeout`` (``hook_timeout``) ends
    the wait, not the call, which finishes in its thread.
    """

    INLINE = frozenset({"describe"})  # no I/O: called directly

    def __init__(self, store: Any):
        self.store = store
        self._pool = None
        self._pid = 0
        self._queued: list[tuple[Any, tuple, dict, AsyncResult]] = []
        self._runner: gevent.Greenlet | None = None  # the greenlet that hands turns to the thread

    def _thread(self):
        # A pool per process: threads do not survive a fork (created in the worker, after it).
        if self._pool is None or self._pid != os.getpid():
            from gevent.threadpool import ThreadPool

            self._pool, self._pid = ThreadPool(1), os.getpid()
            self._queued, self._runner = [], None
        return self._pool

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if name in self.INLINE or not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def in_thread(*args: Any, **kwargs: Any) -> Any:
            pool = self._thread()
            result = AsyncResult()
            self._queued.append((attribute, args, kwargs, result))
            if self._runner is None:
                self._runner = gevent.spawn(self._run_turns, pool)
            return result.get()

        return in_thread

    def _run_turns(self, pool) -> None:
        """Give the thread every queued call, turn after turn, until none is left."""
        turn: list = []
        try:
            while self._queued:
                turn, self._queued = self._queued, []
                if len(turn) == 1 or not hasattr(self.store, "run_group"):
                    for function, args, kwargs, result in turn:
                        try:
                            result.set(pool.apply(function, args, kwargs))
                        except Exception as exc:  # noqa: BLE001 - raised to its caller
                            result.set_exception(exc)
                    continue
                try:
                    outcomes = pool.apply(self.store.run_group, ([call[:3] for call in turn],))
                except Exception as exc:  # noqa: BLE001 - raised to every caller of the turn
                    outcomes = [(False, exc)] * len(turn)
                for (*_, result), (ok, value) in zip(turn, outcomes):
                    if ok:
                        result.set(value)
                    else:
                        result.set_exception(value)
        except BaseException:  # killed (shutdown): no caller may wait for an answer forever
            for *_, result in turn + self._queued:
                if not result.ready():
                    result.set_exception(RuntimeError("the store's thread was stopped before answering"))
            self._queued = []
            raise
        finally:
            self._runner = None
