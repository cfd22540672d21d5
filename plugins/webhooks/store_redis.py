"""The Redis store (``store = "redis://…"``): for several hosts sharing one queue.

Keys, under ``key_prefix`` (P):

- ``P:endpoints`` set of ids; ``P:endpoint:<id>`` hash (``data`` JSON + health fields)
- ``P:d:<webhook-id>`` hash: one delivery; expires ``retention`` seconds after it finished
- ``P:due:<endpoint>`` sorted set of pending deliveries by next attempt time
- ``P:created:<endpoint>`` / ``P:dead:<endpoint>`` sorted sets by creation / dead-letter time
- ``P:attempts:<endpoint>`` list of attempt records, newest first, capped

Each step that must be atomic across workers (store once, claim once, finish, health) is a Lua
script. The claim moves the delivery's score in ``due`` to the end of its lease, so a delivery
whose worker died becomes due again by itself.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from plugins.webhooks.model import CANCELLED, DEAD, PENDING, Attempt, Delivery, Endpoint
from plugins.webhooks.store import ENDPOINT_DELETED, Store

_ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
"""

_CLAIM = """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[3]) then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[1], 'lease_owner', ARGV[2], 'next_attempt_at', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return 1
"""

_FINISH = """
redis.call('LPUSH', KEYS[4], ARGV[8])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[9]) - 1)
if redis.call('HGET', KEYS[1], 'lease_owner') ~= ARGV[2] or redis.call('HGET', KEYS[1], 'status') ~= 'pending' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'next_attempt_at', ARGV[4], 'lease_owner', '',
           'last_status', ARGV[5], 'last_error', ARGV[6], 'completed_at', ARGV[7])
if ARGV[3] == 'pending' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
  if ARGV[3] == 'dead' then redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1]) end
  redis.call('EXPIRE', KEYS[1], ARGV[10])
end
return 1
"""

_RELEASE = """
if redis.call('HGET', KEYS[1], 'lease_owner') ~= ARGV[2] or redis.call('HGET', KEYS[1], 'status') ~= 'pending' then
  return 0
end
redis.call('HSET', KEYS[1], 'lease_owner', '', 'next_attempt_at', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

_REQUEUE = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'succeeded' and status ~= 'dead' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'pending', 'attempts', 0, 'next_attempt_at', ARGV[2], 'lease_owner', '',
           'completed_at', '')
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

_NOTE_RESULT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '1' then
  redis.call('HDEL', KEYS[1], 'failing_since')
  return 0
end
local since = redis.call('HGET', KEYS[1], 'failing_since')
if not since then
  redis.call('HSET', KEYS[1], 'failing_since', ARGV[2])
  since = ARGV[2]
end
if redis.call('HGET', KEYS[1], 'enabled') == '1' and tonumber(ARGV[2]) - tonumber(since) >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'enabled', '0', 'disabled_reason', ARGV[4])
  return 1
end
return 0
"""

ATTEMPT_LOG_SIZE = 10000  # attempts kept per endpoint


class RedisStore(Store):
    """The :class:`~plugins.webhooks.store.Store` contract in Redis (see above)."""

    kind = "redis"

    def __init__(self, url: str, prefix: str = "relay:webhooks", retention: float = 7 * 86400):
        self.url = url
        self.prefix = prefix
        self.retention = int(retention)
        self._client = None
        self._pid = 0
        self._scripts: dict[str, Any] = {}

    @property
    def redis(self):
        # One client per process, created after fork (never share sockets across a fork).
        if self._client is None or self._pid != os.getpid():
            import redis

            # An explicit socket_timeout: redis 8.0.0's default broke long reads (PITFALLS.md).
            self._client = redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=5,
                                                health_check_interval=30)
            self._pid = os.getpid()
            self._scripts = {name: self._client.register_script(source) for name, source in (
                ("enqueue", _ENQUEUE), ("claim", _CLAIM), ("finish", _FINISH), ("release", _RELEASE),
                ("requeue", _REQUEUE), ("note_result", _NOTE_RESULT))}
        return self._client

    def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        self.redis  # noqa: B018 - make sure the client and its scripts exist in this process
        return self._scripts[name](keys=keys, args=args)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None

    def ping(self) -> None:
        self.redis.ping()

    # -- endpoints -------------------------------------------------------------------------------

    def _endpoint(self, fields: dict[bytes, bytes]) -> Endpoint | None:
        if not fields or b"data" not in fields:
            return None
        since = fields.get(b"failing_since")
        return self.stored_endpoint(fields[b"data"], fields.get(b"origin", b"api").decode(),
                                    fields.get(b"enabled", b"1") == b"1",
                                    fields.get(b"disabled_reason", b"").decode(), float(since) if since else None)

    def list_endpoints(self) -> list[Endpoint]:
        ids = sorted(i.decode() for i in self.redis.smembers(self._key("endpoints")))
        pipe = self.redis.pipeline(transaction=False)
        for endpoint_id in ids:
            pipe.hgetall(self._key("endpoint", endpoint_id))
        return [e for e in (self._endpoint(fields) for fields in pipe.execute()) if e is not None]

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        return self._endpoint(self.redis.hgetall(self._key("endpoint", endpoint_id)))

    def save_endpoint(self, endpoint: Endpoint) -> None:
        key = self._key("endpoint", endpoint.id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"data": self.endpoint_settings(endpoint), "origin": endpoint.origin})
        pipe.hsetnx(key, "enabled", "1" if endpoint.enabled else "0")  # keep the health state
        pipe.hsetnx(key, "disabled_reason", endpoint.disabled_reason)
        pipe.sadd(self._key("endpoints"), endpoint.id)
        pipe.execute()

    def delete_endpoint(self, endpoint_id: str) -> bool:
        removed = self.redis.srem(self._key("endpoints"), endpoint_id)
        self.redis.delete(self._key("endpoint", endpoint_id))
        due = self._key("due", endpoint_id)
        for raw in self.redis.zrange(due, 0, -1):
            key = self._key("d", raw.decode())
            self.redis.hset(key, mapping={"status": CANCELLED, "last_error": ENDPOINT_DELETED,
                                          "completed_at": time.time()})
            self.redis.expire(key, self.retention)
        self.redis.delete(due)
        return bool(removed)

    def set_enabled(self, endpoint_id: str, enabled: bool, reason: str = "") -> bool:
        key = self._key("endpoint", endpoint_id)
        if not self.redis.exists(key):
            return False
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"enabled": "1" if enabled else "0", "disabled_reason": "" if enabled else reason})
        pipe.hdel(key, "failing_since")
        pipe.execute()
        return True

    def note_result(self, endpoint_id: str, ok: bool, now: float, disable_after: float) -> bool:
        reason = self.failure_reason(disable_after)
        return bool(self._script("note_result", [self._key("endpoint", endpoint_id)],
                                 ["1" if ok else "0", repr(now), repr(disable_after), reason]))

    # -- deliveries ------------------------------------------------------------------------------

    @staticmethod
    def _delivery(fields: dict[bytes, bytes]) -> Delivery | None:
        if not fields:
            return None
        text = {k.decode(): v for k, v in fields.items()}

        def number(name: str, kind=float):
            value = text.get(name, b"")
            return kind(value) if value not in (b"", None) else None

        return Delivery(id=text["id"].decode(), endpoint_id=text["endpoint_id"].decode(),
                        event_id=text["event_id"].decode(), channel=text["channel"].decode(),
                        event_type=text["event_type"].decode(), body=text["body"],
                        created_at=number("created_at"), status=text["status"].decode(),
                        attempts=number("attempts", int) or 0, next_attempt_at=number("next_attempt_at") or 0.0,
                        lease_owner=text.get("lease_owner", b"").decode(), last_status=number("last_status", int),
                        last_error=text.get("last_error", b"").decode(), completed_at=number("completed_at"))

    def enqueue(self, deliveries: list[Delivery]) -> int:
        stored = 0
        for d in deliveries:
            fields = {"id": d.id, "endpoint_id": d.endpoint_id, "event_id": d.event_id, "channel": d.channel,
                      "event_type": d.event_type, "body": d.body, "created_at": repr(d.created_at),
                      "status": d.status, "attempts": d.attempts, "next_attempt_at": repr(d.next_attempt_at),
                      "lease_owner": "", "last_status": "", "last_error": "", "completed_at": ""}
            args: list[Any] = [d.id, repr(d.next_attempt_at), repr(d.created_at)]
            for name, value in fields.items():
                args += [name, value]
            stored += self._script("enqueue", [self._key("d", d.id), self._key("due", d.endpoint_id),
                                               self._key("created", d.endpoint_id)], args)
        return stored

    def due(self, endpoint_id: str, now: float, limit: int) -> list[str]:
        return [i.decode() for i in self.redis.zrangebyscore(self._key("due", endpoint_id), "-inf", now, 0, limit)]

    def claim(self, delivery_id: str, owner: str, now: float, lease: float) -> Delivery | None:
        key = self._key("d", delivery_id)
        endpoint_id = self.redis.hget(key, "endpoint_id")
        if endpoint_id is None:
            return None
        if not self._script("claim", [key, self._key("due", endpoint_id.decode())],
                            [delivery_id, owner, repr(now), repr(now + lease)]):
            return None
        return self.get_delivery(delivery_id)

    def finish(self, delivery: Delivery, owner: str, status: str, next_attempt_at: float,
               attempt: Attempt) -> bool:
        completed = "" if status == PENDING else repr(time.time())
        record = json.dumps(self.attempt_record(attempt))
        return bool(self._script(
            "finish",
            [self._key("d", delivery.id), self._key("due", delivery.endpoint_id),
             self._key("dead", delivery.endpoint_id), self._key("attempts", delivery.endpoint_id)],
            [delivery.id, owner, status, repr(next_attempt_at),
             "" if attempt.status_code is None else attempt.status_code, attempt.error, completed, record,
             ATTEMPT_LOG_SIZE, self.retention]))

    def release(self, delivery_id: str, owner: str, now: float) -> None:
        delivery = self.get_delivery(delivery_id)
        if delivery is not None:
            self._script("release", [self._key("d", delivery_id), self._key("due", delivery.endpoint_id)],
                         [delivery_id, owner, repr(now)])

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        return self._delivery(self.redis.hgetall(self._key("d", delivery_id)))

    def _endpoint_ids(self, endpoint_id: str | None) -> list[str]:
        if endpoint_id is not None:
            return [endpoint_id]
        return sorted(i.decode() for i in self.redis.smembers(self._key("endpoints")))

    def deliveries(self, endpoint_id: str | None = None, status: str | None = None, since: float | None = None,
                   limit: int = 100) -> list[Delivery]:
        found: list[Delivery] = []
        for eid in self._endpoint_ids(endpoint_id):
            if status == DEAD:
                index, low = self._key("dead", eid), "-inf"
            else:
                index, low = self._key("created", eid), since if since is not None else "-inf"
            ids = self.redis.zrevrangebyscore(index, "+inf", low)
            pipe = self.redis.pipeline(transaction=False)
            for raw in ids:
                pipe.hgetall(self._key("d", raw.decode()))
            for fields in pipe.execute():
                d = self._delivery(fields)
                if d and (status is None or d.status == status) and (since is None or d.created_at >= since):
                    found.append(d)
        found.sort(key=lambda d: d.created_at, reverse=True)
        return found[:limit]

    def attempts(self, endpoint_id: str, delivery_id: str | None = None, limit: int = 100) -> list[Attempt]:
        log = self.redis.lrange(self._key("attempts", endpoint_id), 0, -1)
        records = [self.stored_attempt(json.loads(raw)) for raw in log]
        if delivery_id:
            records = [a for a in records if a.delivery_id == delivery_id]
        return records[:limit]

    def requeue(self, ids: list[str], now: float) -> int:
        count = 0
        for delivery_id in ids:
            key = self._key("d", delivery_id)
            endpoint_id = self.redis.hget(key, "endpoint_id")
            if endpoint_id is None:
                continue
            eid = endpoint_id.decode()
            count += self._script("requeue", [key, self._key("due", eid), self._key("dead", eid)],
                                  [delivery_id, repr(now)])
        return count

    def counts(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        ids = self._endpoint_ids(None)
        for eid in ids:
            pipe.zcard(self._key("due", eid))
            pipe.zcard(self._key("dead", eid))
        values = pipe.execute()
        return {"pending": sum(values[0::2]), "dead": sum(values[1::2])}

    def prune(self, before: float) -> int:
        removed = 0
        for eid in self._endpoint_ids(None):
            # Delivery hashes expire by themselves; trim the indexes that point at them.
            removed += self.redis.zremrangebyscore(self._key("dead", eid), "-inf", before)
            self.redis.zremrangebyscore(self._key("created", eid), "-inf", before)
        return removed

    def describe(self) -> dict[str, Any]:
        return {"store": "redis", "prefix": self.prefix}
