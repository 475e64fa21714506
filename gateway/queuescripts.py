"""The request queue's Lua scripts (``gateway.queue``): every multi-key step is one script, so it is atomic.

Each script's comment says its KEYS, ARGV and reply. All keys of one model share its hash tag (``gateway.keys``).
"""

from __future__ import annotations

from gateway.fence import REFUSE_IF_FENCED

# KEYS: queue, activity, fence. ARGV: max length, payload, request id, work channel, work message. -> entry id;
# 0 if full; the fence's ms left if fenced.
ENQUEUE = (
    REFUSE_IF_FENCED
    + """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
local t = redis.call('TIME')
redis.call('SET', KEYS[2], t[1] * 1000 + math.floor(t[2] / 1000))
local id = redis.call('XADD', KEYS[1], '*', 'r', ARGV[2], 'i', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return id
"""
)

# KEYS: queue, settled, activity. ARGV: entry id, group, ttl ms, channel, final reply[, message to publish instead]
# -> 1 if first.
SETTLE = """
local first = redis.call('SET', KEYS[2], ARGV[5], 'NX', 'PX', ARGV[3])
if ARGV[1] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[1], ARGV[1])
end
local t = redis.call('TIME')
redis.call('SET', KEYS[3], t[1] * 1000 + math.floor(t[2] / 1000))
if first then
  if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[6] or ARGV[5]) end
  return 1
end
return 0
"""

# KEYS: queue, settled. ARGV: entry id, group, new payload, request id, work channel, work message. -> new entry
# id; false if the entry was not pending (someone else put it back already) or the request is settled.
REQUEUE = """
if redis.call('XACK', KEYS[1], ARGV[2], ARGV[1]) == 0 then return false end
redis.call('XDEL', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local id = redis.call('XADD', KEYS[1], '*', 'r', ARGV[3], 'i', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return id
"""

# KEYS: queue. ARGV: group, consumer, count, settled-key prefix. -> flat list: how many entries were read, then
# entry id, payload, request id, ... per entry returned ('' for a field the entry lacks); -1 if the group is missing.
# Reads new entries without blocking (a dispatcher waits on its work signal instead), and acks and deletes at once
# those whose request is settled already (cancelled by its client before a dispatcher got to it), so a read is one
# round trip. The request id is '' for an entry without the request id field ``i`` (added by a gateway older than
# that field): the caller checks those itself. (A field a Lua table lacks must not be appended as nil: that would
# shift every later entry of the flat list.) The settled keys are not in KEYS, as the ids are known only here;
# they share the queue's hash tag, so on a Redis Cluster they live in the same slot as the declared key.
READ = """
local got = redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
if type(got) == 'table' and got.err then
  if string.find(got.err, 'NOGROUP') then return -1 end
  return got
end
local out, done = {0}, {}
if not got then return out end
out[1] = #got[1][2]
for _, entry in ipairs(got[1][2]) do
  local fields, payload, request = entry[2], nil, nil
  for i = 1, #fields, 2 do
    if fields[i] == 'r' then payload = fields[i + 1] elseif fields[i] == 'i' then request = fields[i + 1] end
  end
  if request and redis.call('EXISTS', ARGV[4] .. request) == 1 then
    done[#done + 1] = entry[1]
  else
    out[#out + 1] = entry[1]
    out[#out + 1] = payload or ''
    out[#out + 1] = request or ''
  end
end
if #done > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(done))
  redis.call('XDEL', KEYS[1], unpack(done))
end
return out
"""
