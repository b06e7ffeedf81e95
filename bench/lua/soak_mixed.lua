-- soak_mixed: bench/soak.sh's mixed traffic. Every request picks, at random
-- with fixed weights (BENCH_WEIGHTS, "get,refresh,patch,list,register" in
-- percent; default 50,20,15,10,5):
--   get       GET /api/users/{random seeded id}       any pool token
--   refresh   POST /api/token/refresh                 a pool refresh token
--   patch     PATCH /api/users/{own id} {"level": n}  the owner's own token
--   list      GET /api/users?limit=50&offset=random   any pool token
--   register  POST /api/users, a new unique user      no token
-- The token pool (BENCH_TOKENS: a file, one "ID ACCESS REFRESH" a line) is
-- made by soak.sh before the run; each thread reads it in init().
-- response() counts every status, answers per second, and keeps the first
-- few non-2xx bodies; done() prints one "BENCHJSON {...}" line.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local users = tonumber(bench.env("BENCH_USERS"))
local prefix = bench.env("BENCH_PREFIX")
local password = bench.env("BENCH_PASSWORD")
local token_file = bench.env("BENCH_TOKENS")
local weights_text = bench.env("BENCH_WEIGHTS", "50,20,15,10,5")
local page = 50

local kinds = { "get", "refresh", "patch", "list", "register" }

-- cumulative weights -> pick(r) for r uniform in [0, total)
local cumulative, total = {}, 0
do
  local i = 0
  for w in string.gmatch(weights_text, "[^,]+") do
    i = i + 1
    total = total + tonumber(w)
    cumulative[i] = total
  end
  if i ~= #kinds or total <= 0 then
    error("bench: BENCH_WEIGHTS needs 5 non-negative numbers, got " .. weights_text)
  end
end

-- ------------------------------------------------------------- main state
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("thread_id", #threads)
end

-- ------------------------------------------------------------- per thread
local pool = {}
issued = {}        -- kind -> requests made (globals: read by done())
statuses = {}      -- "200" -> answers
per_second = {}    -- second since the thread started -> answers
samples = {}       -- first non-2xx answers: "STATUS body..."
local started = 0
local n = 0

function init(args)
  for line in io.lines(token_file) do
    local id, access, refresh = string.match(line, "^(%d+) (%S+) (%S+)$")
    if id then
      pool[#pool + 1] = { id = tonumber(id), access = access, refresh = refresh }
    end
  end
  if #pool == 0 then error("bench: no tokens in " .. token_file) end
  math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
  for _, k in ipairs(kinds) do issued[k] = 0 end
  started = os.time()
end

local function pick()
  local r = math.random() * total
  for i = 1, #kinds do
    if r < cumulative[i] then return kinds[i] end
  end
  return kinds[#kinds]
end

function request()
  n = n + 1
  local kind = pick()
  issued[kind] = issued[kind] + 1
  local who = pool[math.random(#pool)]
  if kind == "get" then
    return wrk.format("GET", "/api/users/" .. math.random(users),
                      { ["Authorization"] = "Bearer " .. who.access })
  elseif kind == "refresh" then
    return wrk.format("POST", "/api/token/refresh",
                      { ["Content-Type"] = "application/json" },
                      '{"refresh":"' .. who.refresh .. '"}')
  elseif kind == "patch" then
    return wrk.format("PATCH", "/api/users/" .. who.id,
                      { ["Authorization"] = "Bearer " .. who.access,
                        ["Content-Type"] = "application/json" },
                      string.format('{"level":%d}', math.random(0, 1000)))
  elseif kind == "list" then
    return wrk.format("GET", string.format("/api/users?limit=%d&offset=%d", page,
                                           math.random(0, math.max(users - page, 0))),
                      { ["Authorization"] = "Bearer " .. who.access })
  else
    local name = string.format("%s_%d_%d", prefix, thread_id or 0, n)
    return wrk.format("POST", "/api/users",
                      { ["Content-Type"] = "application/json" },
                      string.format('{"username":"%s","email":"%s@example.com","password":"%s"}',
                                    name, name, password))
  end
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  local second = os.time() - started
  per_second[second + 1] = (per_second[second + 1] or 0) + 1
  if (status < 200 or status > 299) and #samples < 5 then
    samples[#samples + 1] = key .. " " .. string.sub(body or "", 1, 200)
  end
end

-- ------------------------------------------------------------- report
local function json_string(s)
  s = string.gsub(s, '[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\" end
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
end

local function json_counts(t)
  local parts = {}
  for k, v in pairs(t) do parts[#parts + 1] = json_string(tostring(k)) .. ":" .. v end
  table.sort(parts)
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local all_status, all_issued, all_seconds, all_samples = {}, {}, {}, {}
  local last = 0
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses") or {}) do all_status[k] = (all_status[k] or 0) + v end
    for k, v in pairs(t:get("issued") or {}) do all_issued[k] = (all_issued[k] or 0) + v end
    for k, v in pairs(t:get("per_second") or {}) do
      all_seconds[k] = (all_seconds[k] or 0) + v
      if k > last then last = k end
    end
    for _, s in ipairs(t:get("samples") or {}) do all_samples[#all_samples + 1] = json_string(s) end
  end
  local series = {}
  for i = 1, last do series[i] = tostring(all_seconds[i] or 0) end
  local seconds = summary.duration / 1e6
  local errors = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"seconds":%.6f,"bytes":%d,"rps":%.3f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_ms":{"mean":%.3f,"stdev":%.3f,"p50":%.3f,"p90":%.3f,"p99":%.3f,"p999":%.3f,"max":%.3f},' ..
    '"statuses":%s,"issued":%s,"weights":%s,"answers_per_second":[%s],"non2xx_samples":[%s]}\n',
    summary.requests, seconds, summary.bytes, summary.requests / seconds,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.mean / 1e3, latency.stdev / 1e3, latency:percentile(50) / 1e3,
    latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency:percentile(99.9) / 1e3, latency.max / 1e3,
    json_counts(all_status), json_counts(all_issued), json_string(weights_text),
    table.concat(series, ","), table.concat(all_samples, ",")))
end
