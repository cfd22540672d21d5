"""Redis plumbing shared by the Redis backbone (:mod:`plugins.redis_backbone`) and the Redis
source (:mod:`plugins.redis_source`): one way to build a connection, one reconnect policy, one
way to watch a subscribed connection, one way to notice a Redis that came back with less than it
acknowledged.

A helper module, not a plugin (no entry point names it). What it decides, for all of them:

* **Connections** (:func:`connection_options`, :func:`make_pool`, :func:`make_connection`):
  RESP2 whatever the URL asks (relay needs nothing from RESP3, and redis-py turns on RESP3-only
  features by itself), a name for ``CLIENT LIST``, a bounded connect and a bounded read, TCP
  keepalive (not on a Unix socket, which has none), redis-py's own retries off: the loop that
  owns the connection decides when and how fast to reconnect.
* **Reconnecting** (:func:`keep_connected`, :func:`backoff`): connect, serve, close; after a
  failure, report it, wait a capped exponential delay with jitter (reset once the connection had
  been up), and connect again, until the owner stops. Exactly one connection at a time.
* **Noticing a Redis that came back with less** (:data:`NOTE_RESTART`, :data:`CHECK_SCRIPT`):
  the Lua that both backbones (one Redis, and each partition on a Redis Cluster) run first in
  every script, and the check of a resume against it.
* **Subscriptions** (:func:`read_subscribed`): read a SUBSCRIBE connection, and tell a live one
  from a half-open one: after ``interval`` seconds of silence send a PING and wait for the answer
  (redis-py's own health check sends one but never waits); none within another ``interval``
  raises :class:`LinkDead`.

Connections are not shared between the backbone and the source, even on the same URL: each
reconnect loop owns and closes its connection, their reads block for different times (XREAD
BLOCK, SUBSCRIBE), and a pub/sub connection serves one subscriber by nature.
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any, Callable

import gevent
import gevent.event
import redis
import redis.backoff
import redis.connection
import redis.retry

from relay.api import Event

# What a broken or refused connection raises: redis-py wraps most socket errors in ConnectionError
# or TimeoutError, a few OSErrors escape; a ResponseError (WRONGTYPE, NOPERM) is retried too,
# since an operator may fix it while relay runs.
CONNECTION_ERRORS = (redis.RedisError, OSError)

PING_TOKEN = "relay-health"
YIELD_EVERY = 100  # replies read in a row before letting other greenlets (SSE writers) run


class LinkDead(redis.ConnectionError):
    """The connection looks open but Redis stopped answering (a half-open TCP connection)."""


def connection_options(url: str, name: str, *, connect_timeout: float, read_timeout: float,
                       redis_retries: bool = False) -> dict[str, Any]:
    """redis-py's keyword arguments for a connection to ``url`` named ``name``.

    :param read_timeout: a bound on every read that is not an explicit wait, so a silent server
        cannot hang the caller: a reply that started arriving, the hello on connect, an XREAD BLOCK.
    :param redis_retries: keep redis-py's own retries, for commands sent from request greenlets
        that no reconnect loop watches (the backbone's publish and resume); off by default.
    """
    options = redis.connection.parse_url(url)  # host, port, db, password, TLS, unix socket
    options.update(
        protocol=2,
        client_name=name,
        socket_connect_timeout=connect_timeout,
        socket_timeout=read_timeout,
        health_check_interval=0,  # read_subscribed PINGs and waits for the answer (redis-py does not)
    )
    if not redis_retries:
        options["retry"] = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
    if options.get("connection_class") is not redis.UnixDomainSocketConnection:
        options["socket_keepalive"] = True  # the kernel notices a peer that vanished
    return options


def make_pool(url: str, name: str, *, connect_timeout: float, read_timeout: float, max_connections: int = 1,
              wait: float | None = None, redis_retries: bool = False) -> redis.ConnectionPool:
    """A connection pool of :func:`connection_options` connections.

    :param wait: when given, a :class:`redis.BlockingConnectionPool` whose callers wait at most
        this long for a free connection; else a pool that refuses past ``max_connections``.
    """
    options = connection_options(url, name, connect_timeout=connect_timeout, read_timeout=read_timeout,
                                 redis_retries=redis_retries)
    if wait is not None:
        return redis.BlockingConnectionPool(max_connections=max_connections, timeout=wait, **options)
    return redis.ConnectionPool(max_connections=max_connections, **options)


def make_connection(url: str, name: str, *, connect_timeout: float, read_timeout: float) -> redis.Connection:
    """One connection outside any pool (not yet connected), for a subscription."""
    options = connection_options(url, name, connect_timeout=connect_timeout, read_timeout=read_timeout)
    connection_class = options.pop("connection_class", redis.Connection)
    return connection_class(**options)


def backoff(failures: int, low: float, cap: float) -> float:
    """Seconds to wait after ``failures`` failures in a row (0 for the first): ``low`` doubling up to
    ``cap``, shortened by up to a quarter at random so many workers do not reconnect in step."""
    cap = max(low, cap)
    return min(cap, low * 2 ** min(failures, 30)) * random.uniform(0.75, 1.0)


def keep_connected(*, name: str, log: logging.Logger, stopping: gevent.event.Event,
                   connect: Callable[[], None], serve: Callable[[], None], close: Callable[[], None],
                   is_up: Callable[[], bool], failed: Callable[[BaseException], None],
                   reconnect_min: float, reconnect_max: float) -> None:
    """Keep one connection up until ``stopping`` is set; never raises for connection failures.

    ``connect`` opens and prepares it, ``serve`` loops until ``stopping`` is set (raising when the
    connection fails), ``close`` closes it (always, before the next ``connect``). ``failed(exc)``
    reports a failure (status, counters); ``is_up()``, asked then, says whether the connection had
    been up, which resets the backoff to ``reconnect_min``. Other exceptions (bugs) propagate.
    """
    failures = 0
    while not stopping.is_set():
        try:
            connect()
            serve()
        except CONNECTION_ERRORS as exc:
            if stopping.is_set():
                break
            failures = 0 if is_up() else failures
            failed(exc)
        finally:
            close()
        if stopping.is_set():
            break
        delay = backoff(failures, reconnect_min, reconnect_max)
        failures += 1
        log.info("redis %s: reconnecting in %.2fs", name, delay)
        stopping.wait(delay)


def read_subscribed(conn: redis.Connection, stopping: gevent.event.Event, interval: float,
                    handle: Callable[[Any], None]) -> None:
    """Read replies from a subscribed connection and ``handle`` each, until ``stopping`` is set.

    After ``interval`` seconds of silence, sends ``PING relay-health`` (its answer, a
    ``[b"pong", b"relay-health"]`` reply, is handled like any other).

    :raises LinkDead: when a PING stays unanswered for ``interval`` seconds.
    """
    last_heard = time.monotonic()
    ping_sent: float | None = None
    in_a_row = 0
    while not stopping.is_set():
        # can_read may return early under gevent: every pass re-checks the clock.
        if conn.can_read(timeout=min(1.0, interval / 2)):
            reply = conn.read_response(push_request=True)
            last_heard, ping_sent = time.monotonic(), None
            handle(reply)
            in_a_row += 1
            if in_a_row >= YIELD_EVERY:  # let the SSE writers run during a burst
                in_a_row = 0
                gevent.sleep(0)
            continue
        in_a_row = 0
        now = time.monotonic()
        if ping_sent is not None and now - ping_sent > interval:
            raise LinkDead(f"no answer to PING within {interval:g}s")
        if ping_sent is None and now - last_heard >= interval:
            conn.send_command("PING", PING_TOKEN)
            ping_sent = now


# Run first by every script that reads or writes the dataset. Redis gives a new run_id to every
# process it starts (a restart, a promoted replica); when it differs from the one stored with
# the data, Redis may have come back with less than it acknowledged. Write down where that data
# ends (S0: the counter found) and where new ids begin (R: after the clock found and now), in
# the hash KEYS[4] (field R, value "S0 L"; L, the highest counter known to have been issued
# before the restart, starts at S0 and grows when a worker reports having heard more).
# KEYS: 1 clock, 2 counter, 3 run_id of the process that holds the data, 4 restarts.
NOTE_RESTART = """
local info = redis.call('INFO', 'server')
local at = string.find(info, 'run_id:', 1, true)
if not at then return redis.error_reply('relay: INFO server shows no run_id, so a restart cannot be told') end
local run = string.sub(info, at + 7, at + 46)
if redis.call('GET', KEYS[3]) ~= run then
  local now = redis.call('TIME')
  local r = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local clock = tonumber(redis.call('GET', KEYS[1]) or '0')
  if r <= clock then r = clock + 1 end
  local s0 = redis.call('GET', KEYS[2]) or '0'
  redis.call('SET', KEYS[1], r)
  redis.call('HSET', KEYS[4], r, s0 .. ' ' .. s0)
  redis.call('SET', KEYS[3], run)
  if redis.call('HLEN', KEYS[4]) > tonumber(ARGV[#ARGV]) then
    local oldest = nil
    for _, field in ipairs(redis.call('HKEYS', KEYS[4])) do
      if oldest == nil or tonumber(field) < tonumber(oldest) then oldest = field end
    end
    redis.call('HDEL', KEYS[4], oldest)
  end
end
"""

# Was anything lost after the id ARGV[1]-ARGV[2]? It was, at a restart after it (ms < R), when
# the id itself is past what survived (counter > S0) or when more than survived is known to have
# been issued (L > S0). With ARGV[3] = 1 (a worker reporting its last heard id, never a client:
# a client's id is not trusted) the id raises L. Returns 1 (lost) or 0.
CHECK_SCRIPT = NOTE_RESTART + """
local ms, seq = tonumber(ARGV[1]), tonumber(ARGV[2])
local lost = 0
local restarts = redis.call('HGETALL', KEYS[4])
for i = 1, #restarts, 2 do
  local s0, known = string.match(restarts[i + 1], '^(%d+) (%d+)$')
  s0, known = tonumber(s0), tonumber(known)
  if ms < tonumber(restarts[i]) and (seq > s0 or known > s0) then
    lost = 1
    if ARGV[3] == '1' and seq > known then
      redis.call('HSET', KEYS[4], restarts[i], s0 .. ' ' .. ARGV[2])
    end
  end
end
return lost
"""

RESTARTS_KEPT = 100  # restarts remembered (per dataset): a resume from before older ones is not checked


# Presence and the durable log readers' shares: keep this worker listed until ARGV[2] ms from
# now (Redis' clock: hosts' clocks may differ), forget workers whose time has passed, and return
# the live ones. KEYS[1]: the sorted set.
REGISTER_SCRIPT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


def encode_event(event: Event) -> str:
    """An event as the Redis backbone keeps and announces it (JSON). The stream entry id is its
    position; an id the publisher chose is kept beside it (``"id"``), and is the event's id."""
    fields = {"channel": event.channel, "event": event.event, "data": event.data, "source": event.source,
              "timestamp": event.timestamp}
    if event.id is not None:
        fields["id"] = event.id
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


def decode_event(entry_id: str, body: str | bytes) -> Event:
    """The event :func:`encode_event` wrote; its id is the publisher's, else the entry id."""
    fields = json.loads(body)
    return Event(fields["channel"], fields["event"], fields.get("data"), id=fields.get("id") or entry_id,
                 source=fields.get("source", "http"), timestamp=fields.get("timestamp", time.time()))
