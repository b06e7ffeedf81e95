-- Shared by every bench/lua/*.lua script (loaded with dofile): reads the
-- settings run.sh passes in the environment, and prints one JSON line
-- ("BENCHJSON {...}") with the figures run.sh aggregates.

bench = {}

function bench.env(name, default)
  local value = os.getenv(name)
  if value == nil or value == "" then
    if default == nil then
      error("bench: environment variable " .. name .. " is not set")
    end
    return default
  end
  return value
end

-- "1:tokA,2:tokB" -> { {id=1, token="tokA"}, ... }
function bench.pairs_list(text)
  local list = {}
  for id, token in string.gmatch(text, "(%d+):([^,]+)") do
    list[#list + 1] = { id = tonumber(id), token = token }
  end
  return list
end

local next_thread_id = 0

function setup(thread)
  next_thread_id = next_thread_id + 1
  thread:set("thread_id", next_thread_id)
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local errors = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"seconds":%.6f,"bytes":%d,' ..
    '"rps":%.3f,"mbps":%.6f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_ms":{"mean":%.3f,"p50":%.3f,"p90":%.3f,"p99":%.3f,"max":%.3f}}\n',
    summary.requests, seconds, summary.bytes,
    summary.requests / seconds, summary.bytes / seconds / 1e6,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.mean / 1e3, latency:percentile(50) / 1e3, latency:percentile(90) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3))
end
