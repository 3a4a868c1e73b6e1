-- wrk script for the agent-sized benchmark (bench/run.py drives it).
--
-- Each wrk thread gets its own server key from the file named by BENCH_KEYS_FILE (one key per
-- line). bench/run.py starts wrk with as many threads as connections, so every keep-alive
-- connection is one "agent" with its own key. Every request is one point of 20 float fields with
-- a fresh timestamp: the wall clock in microseconds (gettimeofday through LuaJIT's ffi), made
-- strictly increasing per key, so no point overwrites another, also across consecutive wrk runs.
-- Replies other than 204 are counted per thread and reported by done() as one JSON line.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_usec; } bench_timeval;
int gettimeofday(bench_timeval *tv, void *tz);
]]
local tv = ffi.new("bench_timeval")

local function now_us()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000000 + tonumber(tv.tv_usec)
end

local keys = {}
local threads = {}
local next_key = 1

local function load_keys()
  local path = os.getenv("BENCH_KEYS_FILE")
  if path == nil then
    error("BENCH_KEYS_FILE is not set")
  end
  for line in io.lines(path) do
    if #line > 0 then
      keys[#keys + 1] = line
    end
  end
  if #keys == 0 then
    error("no keys in " .. path)
  end
end

function setup(thread)
  if #keys == 0 then
    load_keys()
  end
  thread:set("api_key", keys[((next_key - 1) % #keys) + 1])
  thread:set("thread_no", next_key)
  next_key = next_key + 1
  table.insert(threads, thread)
end

-- BENCH_DELAY_MS > 0: each connection waits that long after a reply before its next request
-- (the soak's paced load); unset or 0, it sends as fast as replies come.
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

local nfields = tonumber(os.getenv("BENCH_AGENT_FIELDS") or "20")
local measurement = os.getenv("BENCH_MEASUREMENT") or "bench"
local headers = nil
local last_us = 0
sent = 0
not_204 = 0
statuses = ""

function init(args)
  headers = {
    ["Authorization"] = "Bearer " .. api_key,
    ["Content-Type"] = "application/json",
  }
  math.randomseed(os.time() + thread_no * 7919)
end

function request()
  local t = now_us()
  if t > last_us then
    last_us = t
  else
    last_us = last_us + 1
  end
  local parts = {}
  for i = 0, nfields - 1 do
    parts[#parts + 1] = string.format('"f%d":%.2f', i, math.random() * 100)
  end
  local body = string.format(
    '{"points":[{"measurement":"%s","timestamp":%.0f,"tags":{"cpu":"cpu-total"},"fields":{%s}}]}',
    measurement, last_us, table.concat(parts, ",")
  )
  sent = sent + 1
  return wrk.format("POST", "/api/v1/data", headers, body)
end

function response(status, hdrs, body)
  if status ~= 204 then
    not_204 = not_204 + 1
    if #statuses < 200 then
      statuses = statuses .. tostring(status) .. " "
    end
  end
end

function done(summary, latency, requests)
  local bad, sent_total, seen = 0, 0, ""
  for _, t in ipairs(threads) do
    bad = bad + (t:get("not_204") or 0)
    sent_total = sent_total + (t:get("sent") or 0)
    seen = seen .. (t:get("statuses") or "")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,"sent":%d,"not_204":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
    '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d},"bad_statuses":"%s"}\n',
    summary.duration, summary.requests, summary.bytes, sent_total, bad,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), seen
  ))
end
