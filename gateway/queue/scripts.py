"""The request queue's Lua scripts (``gateway.queue.stream``): every multi-key step is one script, so it is atomic.

Each script's comment says its KEYS, ARGV and reply. All keys of one model share its hash tag (``gateway.store.keys``).
"""

from __future__ import annotations

from gateway.queue.fence import REFUSE_IF_FENCED

#: Lua prelude of the scripts that charge or release the accounts (``gateway.queue.budget``). An account is a sorted
#: set of
#: charges (``held``: ``<body id>|<entries>|<bytes>`` scored by the request's deadline in ms) and their sums
#: (``usage``: requests, entries, bytes). A charge is released once (the ZREM that removes it), by the settle of its
#: request's last choice or, if that never comes (a gateway died), by the first charge after its deadline: a
#: leaked charge lapses instead of holding a quota forever. An account that holds nothing is deleted.
ACCOUNTS = """
local function release(held, usage, member)
  if redis.call('ZREM', held, member) == 0 then return end
  if redis.call('ZCARD', held) == 0 then redis.call('DEL', held, usage) return end
  local entries, bytes = string.match(member, '|(%d+)|(%d+)$')
  redis.call('HINCRBY', usage, 'requests', -1)
  redis.call('HINCRBY', usage, 'entries', -tonumber(entries))
  redis.call('HINCRBY', usage, 'bytes', -tonumber(bytes))
end
local function expire(held, usage, now)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', held, '-inf', now, 'LIMIT', 0, 64)) do
    release(held, usage, member)
  end
end
local function over(usage, field, add, limit)
  local used = tonumber(redis.call('HGET', usage, field) or '0')
  return used > 0 and used + add > limit
end
local function charge(held, usage, member, deadline, entries, bytes)
  redis.call('ZADD', held, deadline, member)
  redis.call('HINCRBY', usage, 'requests', 1)
  redis.call('HINCRBY', usage, 'entries', entries)
  redis.call('HINCRBY', usage, 'bytes', bytes)
end
"""

# KEYS: queue, activity, fence, body, model held, model usage[, key held, key usage: on one Redis; a Redis Cluster
# charges the key with ``CHARGE_KEY`` first, and passes the model's keys alone]. ARGV: max length, model's
# max bytes, key's max requests, max entries, max bytes, ttl ms, body id, bytes, prompts, work channel, work
# message, the prompts, then entry payload, prompt index, request id per entry. -> the entry ids; the fence's ms
# left if fenced; else why it was refused: 'full', 'model-bytes', 'key-requests', 'key-entries', 'key-bytes'.
# All of a request's choices or none: the body once, the charge on both accounts, an entry per choice. A charge is
# refused only if the account holds something already, so a request alone is always taken (its size is bounded
# at the door).
ENQUEUE = (
    ACCOUNTS
    + REFUSE_IF_FENCED
    + """
local prompts = tonumber(ARGV[9])
local first = 12 + prompts
local count = (#ARGV - first + 1) / 3
local bytes = tonumber(ARGV[8])
local keyed = #KEYS > 6
if redis.call('XLEN', KEYS[1]) + count > tonumber(ARGV[1]) then return 'full' end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
expire(KEYS[5], KEYS[6], now)
if over(KEYS[6], 'bytes', bytes, tonumber(ARGV[2])) then return 'model-bytes' end
if keyed then
  expire(KEYS[7], KEYS[8], now)
  if over(KEYS[8], 'requests', 1, tonumber(ARGV[3])) then return 'key-requests' end
  if over(KEYS[8], 'entries', count, tonumber(ARGV[4])) then return 'key-entries' end
  if over(KEYS[8], 'bytes', bytes, tonumber(ARGV[5])) then return 'key-bytes' end
end
local deadline = now + tonumber(ARGV[6])
local member = ARGV[7] .. '|' .. count .. '|' .. ARGV[8]
local body = {'left', count, 'm', member}
for i = 1, prompts do
  body[#body + 1] = tostring(i - 1)
  body[#body + 1] = ARGV[11 + i]
end
redis.call('HSET', KEYS[4], unpack(body))
redis.call('PEXPIREAT', KEYS[4], deadline)
charge(KEYS[5], KEYS[6], member, deadline, count, bytes)
if keyed then charge(KEYS[7], KEYS[8], member, deadline, count, bytes) end
redis.call('SET', KEYS[2], now)
local ids = {}
for at = first, #ARGV, 3 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'q', ARGV[at], 'b', ARGV[7], 'p', ARGV[at + 1], 'i', ARGV[at + 2])
end
redis.call('PUBLISH', ARGV[10], ARGV[11])
return ids
"""
)

# KEYS: queue, settled, activity[, body, model held, model usage[, key held, key usage]]. ARGV: entry id, group,
# ttl ms, channel, final reply[, message to publish instead] -> 0 if settled already, else the charge released (a
# string) if it was the request's last choice, else 1. The first settle of a request's last choice deletes its body
# and releases its charges (an entry that carries its request inline passes no body); without the key's account in
# KEYS (a Redis Cluster) the caller releases the key's charge with ``RELEASE_KEY``.
SETTLE = (
    ACCOUNTS
    + """
local first = redis.call('SET', KEYS[2], ARGV[5], 'NX', 'PX', ARGV[3])
if ARGV[1] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[1], ARGV[1])
end
local t = redis.call('TIME')
redis.call('SET', KEYS[3], t[1] * 1000 + math.floor(t[2] / 1000))
if first then
  local member = #KEYS > 3 and redis.call('HGET', KEYS[4], 'm')
  local released = false
  if member and redis.call('HINCRBY', KEYS[4], 'left', -1) <= 0 then
    redis.call('DEL', KEYS[4])
    release(KEYS[5], KEYS[6], member)
    if #KEYS > 6 then release(KEYS[7], KEYS[8], member) end
    released = true
  end
  if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[6] or ARGV[5]) end
  if released then return member end
  return 1
end
return 0
"""
)

# The key's account as a step of its own, for a Redis Cluster, where it is in another slot than the model's keys
# (``gateway.queue.stream``, "Where the key's charge is taken"). KEYS: key held, key usage. ARGV: max requests, max
# entries, max bytes, ttl ms, charge (``<body id>|<entries>|<bytes>``, as ENQUEUE writes it), entries, bytes. -> 1 if
# charged, else why not: 'key-requests', 'key-entries', 'key-bytes' (as ENQUEUE's).
CHARGE_KEY = (
    ACCOUNTS
    + """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local entries, bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
expire(KEYS[1], KEYS[2], now)
if over(KEYS[2], 'requests', 1, tonumber(ARGV[1])) then return 'key-requests' end
if over(KEYS[2], 'entries', entries, tonumber(ARGV[2])) then return 'key-entries' end
if over(KEYS[2], 'bytes', bytes, tonumber(ARGV[3])) then return 'key-bytes' end
charge(KEYS[1], KEYS[2], ARGV[5], now + tonumber(ARGV[4]), entries, bytes)
return 1
"""
)

# KEYS: key held, key usage. ARGV: charge. -> 1. Releases a charge ``CHARGE_KEY`` took (once: a second release, or
# one of a charge that lapsed, changes nothing).
RELEASE_KEY = (
    ACCOUNTS
    + """
release(KEYS[1], KEYS[2], ARGV[1])
return 1
"""
)

# KEYS: queue, settled. ARGV: entry id, group, request id, work channel, work message, then the new entry's fields
# and values (its body reference kept). -> new entry id; false if the entry was not pending (someone else put it
# back already) or the request is settled.
REQUEUE = """
if redis.call('XACK', KEYS[1], ARGV[2], ARGV[1]) == 0 then return false end
redis.call('XDEL', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local id = redis.call('XADD', KEYS[1], '*', 'i', ARGV[3], unpack(ARGV, 6))
redis.call('PUBLISH', ARGV[4], ARGV[5])
return id
"""

# KEYS: queue. ARGV: group, consumer, count, settled-key prefix, body-key prefix. -> flat list: how many entries
# were read, then entry id, payload, prompt, request id, body id, ... per entry returned ('' for a field the entry
# lacks); -1 if the group is missing.
# Reads new entries without blocking (a dispatcher waits on its work signal instead), and acks and deletes at once
# those whose request is settled already (cancelled by its client before a dispatcher got to it), so a read is one
# round trip. ``payload`` is the entry's ``q`` (or an older gateway's whole request, ``r``); ``prompt`` is the
# prompt it refers to from its request's body (field ``b``), sent once per read (1: as for an earlier entry of this
# read; 0: the body is gone; -1: an entry with its request inline). The request id is '' for an entry without the
# request id field ``i`` (added by a gateway older than that field): the caller checks those itself. The request
# and body ids are what the caller settles an entry by if its payload or prompt does not parse. (A field a Lua table
# lacks must not be appended as nil: that would shift every later entry of the flat list.) The settled and body keys
# are not in KEYS, as the ids are known only here; they share the queue's hash tag, so on a Redis Cluster they live
# in the same slot as the declared key.
READ = """
local got = redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
if type(got) == 'table' and got.err then
  if string.find(got.err, 'NOGROUP') then return -1 end
  return got
end
local out, done, sent = {0}, {}, {}
if not got then return out end
out[1] = #got[1][2]
for _, entry in ipairs(got[1][2]) do
  local fields, payload, request, inline, body, prompt = entry[2], nil, nil, nil, nil, nil
  for i = 1, #fields, 2 do
    local name, value = fields[i], fields[i + 1]
    if name == 'q' then payload = value
    elseif name == 'r' then payload, inline = value, true
    elseif name == 'i' then request = value
    elseif name == 'b' then body = value
    elseif name == 'p' then prompt = value end
  end
  if request and redis.call('EXISTS', ARGV[4] .. request) == 1 then
    done[#done + 1] = entry[1]
  else
    local text = -1
    if not inline then
      local tag = tostring(body) .. ':' .. tostring(prompt)
      if sent[tag] then text = 1 else text = redis.call('HGET', ARGV[5] .. tostring(body), tostring(prompt)) or 0 end
      sent[tag] = true
    end
    out[#out + 1] = entry[1]
    out[#out + 1] = payload or ''
    out[#out + 1] = text
    out[#out + 1] = request or ''
    out[#out + 1] = body or ''
  end
end
if #done > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(done))
  redis.call('XDEL', KEYS[1], unpack(done))
end
return out
"""
