"""The Lua scripts, per partition: the Redis backbone's (plugins/redis_backbone.py), with the
partition's keys for the dataset's and ``SPUBLISH`` for the announcement. Copied rather than
imported: the single-Redis backbone may change its own scripts without moving this layout.

Every script names all its keys in ``KEYS`` (one slot: the partition's tag), so Redis Cluster
checks them and routes a stale client with ``MOVED``.
"""

# Run first by every script: a new Redis process (restart, promoted replica) may hold less than
# was acknowledged; write down where the partition's data ends (S0) and new ids begin (R).
# KEYS: 1 clock, 2 counter, 3 run id, 4 restart records. ARGV[#ARGV]: restart records kept.
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

# Was anything of the partition lost after the id ARGV[1]-ARGV[2] (a restart after it, the id
# past what survived)? ARGV[3] = 1: a worker reporting an id it heard (raises L). 1 or 0.
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

RESTARTS_KEPT = 100  # restarts remembered per partition
