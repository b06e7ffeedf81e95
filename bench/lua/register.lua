-- register: POST /api/users with a new unique username and email on every
-- request: a per-round random prefix (BENCH_PREFIX) + thread id + counter.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local prefix = bench.env("BENCH_PREFIX")
local password = bench.env("BENCH_PASSWORD")
local n = 0

wrk.method = "POST"
wrk.path = "/api/users"
wrk.headers["Content-Type"] = "application/json"

function request()
  n = n + 1
  local name = string.format("%s_%d_%d", prefix, thread_id or 0, n)
  local body = string.format(
    '{"username":"%s","email":"%s@example.com","password":"%s"}',
    name, name, password)
  return wrk.format(nil, nil, nil, body)
end
