"""The Lua scripts, per partition: the publish script (the partition's counter and clock, the
channel's stream, the partition's durable log, a sharded announcement) and the restart detection
(``NOTE_RESTART``, ``CHECK_SCRIPT``: plugins/redis_common.py explains the restart records), run
on each partition's dataset keys.

Every script names all its keys in ``KEYS`` (one slot: the partition's tag), so Redis Cluster
checks them and routes a stale client with ``MOVED``.
"""

from plugins.redis_common import CHECK_SCRIPT, NOTE_RESTART, RESTARTS_KEPT  # noqa: F401 - the same per partition

# Numbers the event from the partition's counter (ids order within the partition), appends it
# to the partition's durable log (for the durable sinks, as ARGV[4] says), keeps it in its
# channel's stream and announces it on the channel's sharded pub/sub channel, atomically.
# KEYS 5: the stream, 6: the announcement channel, 7: the durable log.
# ARGV: maxlen, max age (ms), body, log maxlen (0: no log; negative: only if the log exists), kept.
PUBLISH_SCRIPT = NOTE_RESTART + """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if ms < last then ms = last end
redis.call('SET', KEYS[1], ms)
local id = ms .. '-' .. redis.call('INCR', KEYS[2])
local log = tonumber(ARGV[4])
if log > 0 or (log < 0 and redis.call('EXISTS', KEYS[7]) == 1) then  -- first: a refused XADD
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', math.abs(log), id, 'e', ARGV[3])  -- leaves no entry
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[1], id, 'e', ARGV[3])
if tonumber(ARGV[2]) > 0 then
  redis.call('XTRIM', KEYS[5], 'MINID', '~', (ms - tonumber(ARGV[2])) .. '-0')
end
redis.call('SPUBLISH', KEYS[6], id .. '\\n' .. ARGV[3])
return id
"""
