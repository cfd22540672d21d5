"""The Lua scripts, per partition: the Redis backbone's (plugins/redis_backbone.py), with the
partition's keys for the dataset's and ``SPUBLISH`` for the announcement. The restart detection
(``NOTE_RESTART``, ``CHECK_SCRIPT``) is the same and shared (plugins/redis_common.py); the
publish script differs (sharded announcement, the partition's durable log).

Every script names all its keys in ``KEYS`` (one slot: the partition's tag), so Redis Cluster
checks them and routes a stale client with ``MOVED``.
"""

from plugins.redis_common import CHECK_SCRIPT, NOTE_RESTART, RESTARTS_KEPT  # noqa: F401 - the same per partition

# Numbers the event from the partition's counter (ids order within the partition), appends it
# to the partition's durable log (for the durable sinks, when ARGV[4] > 0), keeps it in its
# channel's stream and announces it on the channel's sharded pub/sub channel, atomically.
# KEYS 5: the stream, 6: the announcement channel, 7: the durable log.
# ARGV: maxlen, max age (ms), body, log maxlen (0: no log), kept.
PUBLISH_SCRIPT = NOTE_RESTART + """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if ms < last then ms = last end
redis.call('SET', KEYS[1], ms)
local id = ms .. '-' .. redis.call('INCR', KEYS[2])
if tonumber(ARGV[4]) > 0 then  -- first: a refused XADD then leaves no stream entry behind
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[4], id, 'e', ARGV[3])
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[1], id, 'e', ARGV[3])
if tonumber(ARGV[2]) > 0 then
  redis.call('XTRIM', KEYS[5], 'MINID', '~', (ms - tonumber(ARGV[2])) .. '-0')
end
redis.call('SPUBLISH', KEYS[6], id .. '\\n' .. ARGV[3])
return id
"""
