-- login: POST /api/token with the right password for users spread over the
-- seeded ones (default PBKDF2 cost; run.sh turns throttling off).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local users = tonumber(bench.env("BENCH_USERS"))
local password = bench.env("BENCH_PASSWORD")
local n = 0

wrk.method = "POST"
wrk.path = "/api/token"
wrk.headers["Content-Type"] = "application/json"

function request()
  n = n + 1
  local body = string.format('{"username":"user%d","password":"%s"}',
                             (n * 7919) % users + 1, password)
  return wrk.format(nil, nil, nil, body)
end
